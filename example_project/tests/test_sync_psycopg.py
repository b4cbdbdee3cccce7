"""A plain sync test with psycopg through `pgmig_dsn`: no event loop, any driver."""

from __future__ import annotations

import psycopg


def test_psycopg_sees_the_migrated_schema(pgmig_dsn: str) -> None:
    with psycopg.connect(pgmig_dsn) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM queues ORDER BY name")]
        assert names == ["default", "emails", "reports"]
        job_id = conn.execute(
            "INSERT INTO jobs (queue, payload) VALUES ('emails', %s) RETURNING id",
            ('{"to": "grace@example.com"}',),
        ).fetchone()[0]
        conn.execute(
            "UPDATE jobs SET status = 'running', locked_by = 'sync' WHERE id = %s", (job_id,)
        )
        events = conn.execute(
            "SELECT old_status, new_status FROM job_events WHERE job_id = %s ORDER BY id",
            (job_id,),
        ).fetchall()
        assert events == [(None, "queued"), ("queued", "running")]

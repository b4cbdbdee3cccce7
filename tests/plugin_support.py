"""Helpers for the plugin's pytester tests: tiny projects, direct SQL, run folders."""

from __future__ import annotations

import os
import re
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# pytester points HOME at a temporary folder: keep the embedded server's initdb cache where
# the real one is, or every embedded run of an inner pytest would pay for a fresh initdb.
REAL_CACHE = os.environ.get("PGMIG_CACHE_DIR") or str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytest-pgmig"
)

USERS_SQL = """\
CREATE TABLE {{tables.users}} (
    id serial PRIMARY KEY,
    name text NOT NULL
);
"""
ITEMS_SQL = """\
CREATE TABLE {{tables.items}} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id int NOT NULL REFERENCES {{tables.users}} (id),
    title text NOT NULL
);
INSERT INTO {{tables.users}} (name) VALUES ('seed');
"""
MIGRATIONS = {"001_users.sql": USERS_SQL, "002_items.sql": ITEMS_SQL}

INI_ASYNC = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

RUN_DIR = re.compile(r"^\d+-[0-9a-f]{8}$")


def write_migrations(
    folder: Path, files: dict[str, str] | None = None, name: str = "migrations"
) -> Path:
    """Create `folder/name` holding `files` (default: users, then items with a seed row)."""
    path = folder / name
    path.mkdir(parents=True, exist_ok=True)
    for filename, text in (MIGRATIONS if files is None else files).items():
        (path / filename).write_text(text)
    return path


def make_project(
    pytester: pytest.Pytester,
    tests: str,
    *,
    files: dict[str, str] | None = None,
    ini: str | None = INI_ASYNC,
    name: str = "test_project",
) -> Path:
    """A tiny project: migrations, one test module and (by default) a pytest.ini for asyncio."""
    folder = write_migrations(pytester.path, files)
    pytester.makepyfile(**{name: textwrap.dedent(tests)})
    if ini is not None:
        pytester.makeini(ini)
    return folder


def sql(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh autocommit psycopg connection; the rows, if any."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        cur = conn.execute(query, args or None)
        return list(cur.fetchall()) if cur.description else []


def schemas_like(dsn: str, pattern: str) -> set[str]:
    """Schema names on the server matching a LIKE pattern."""
    return {
        r[0] for r in sql(dsn, "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", pattern)
    }


def run_dirs(base: Path) -> list[Path]:
    """The embedded servers' run folders under a run base."""
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if RUN_DIR.match(p.name))


def role_dsn(server_dsn: str, attributes: str) -> Iterator[str]:
    """A DSN of a new role with `attributes`, in a database it owns; both dropped after."""
    name = f"role_{uuid.uuid4().hex[:6]}"
    sql(server_dsn, f'CREATE ROLE "{name}" LOGIN {attributes}')
    sql(server_dsn, f'CREATE DATABASE "{name}" OWNER "{name}"')
    try:
        yield server_dsn.replace(
            "postgresql://postgres@/postgres?", f"postgresql://{name}@/{name}?"
        )
    finally:
        drop_database(server_dsn, name)
        sql(server_dsn, f'DROP ROLE "{name}"')


def drop_database(server_dsn: str, name: str) -> None:
    """Drop a test's database, ending its sessions first (PostgreSQL 12 has no FORCE)."""
    import psycopg

    with psycopg.connect(server_dsn, autocommit=True) as conn:
        for _ in range(100):
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                return
            except psycopg.errors.ObjectInUse:
                time.sleep(0.02)  # an ended backend takes a moment to leave
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')

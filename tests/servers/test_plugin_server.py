"""The embedded server as the plugin runs it: one per run (also under -n 2), gone at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plugin_support import RUN_DIR, make_project, run_dirs

from pytest_pgmig.servers import binaries, runfolders

pytestmark = [
    pytest.mark.usefixtures("clean_env"),
    pytest.mark.skipif(binaries.find_bindir() is None, reason="no local PostgreSQL binaries"),
]

# Each test records what it saw: its worker, the server, its schema and the run folders.
RECORD = """
import json, os, time
from pathlib import Path

RUN_DIR = {run_dir!r}

def record(out, pgmig_server, schema, **extra):
    base = Path(os.environ["PGMIG_RUN_BASE"])
    runs = sorted(p.name for p in base.iterdir() if __import__("re").match(RUN_DIR, p.name))
    pid = int((base / runs[0] / "pg" / "data" / "postmaster.pid").read_text().split()[0])
    data = dict(
        worker=os.environ.get("PYTEST_XDIST_WORKER", "main"),
        dsn=pgmig_server.dsn,
        source=pgmig_server.source,
        schema=schema.name,
        runs=runs,
        pid=pid,
        **extra,
    )
    with open(out, "a") as f:
        f.write(json.dumps(data) + "\\n")

def both_workers_recorded(out):
    # keeps a worker's test running until the other worker has run one: both take part
    deadline = time.monotonic() + 30
    while len({{json.loads(line)["worker"] for line in open(out)}}) < 2:
        assert time.monotonic() < deadline, "the other worker never ran a test"
        time.sleep(0.02)
"""


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_recorder(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(recorder=RECORD.format(run_dir=RUN_DIR.pattern))


@pytest.mark.parametrize("outcome", ["passed", "failed"])
def test_run_folder_removed_after_the_run(
    pytester: pytest.Pytester, run_base: Path, outcome: str
) -> None:
    out = pytester.path / "seen.jsonl"
    write_recorder(pytester)
    make_project(
        pytester,
        f"""
        from recorder import record

        def test_it(pgmig_server, pgmig_schema):
            assert pgmig_server.source == "local"
            record({str(out)!r}, pgmig_server, pgmig_schema)
            assert {outcome == "passed"}
        """,
    )
    result = pytester.runpytest("--pgmig-migrations=migrations")
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*= pgmig =*", "server: local, PostgreSQL *, postgresql://*"])
    (seen,) = records(out)
    assert len(seen["runs"]) == 1  # type: ignore[arg-type]
    assert run_dirs(run_base) == []
    assert not (run_base / seen["runs"][0]).exists()  # type: ignore[index]
    assert not runfolders.pid_alive(seen["pid"])  # type: ignore[arg-type]


def test_run_folder_removed_after_sigint(pytester: pytest.Pytester, run_base: Path) -> None:
    out = pytester.path / "seen.jsonl"
    write_recorder(pytester)
    make_project(
        pytester,
        f"""
        import time
        from recorder import record

        def test_sleeps(pgmig_server, pgmig_schema):
            record({str(out)!r}, pgmig_server, pgmig_schema)
            time.sleep(120)
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--pgmig-migrations=migrations"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.05)
        (seen,) = records(out)
        assert run_dirs(run_base) == [run_base / seen["runs"][0]]  # type: ignore[index]
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt" in output
    assert run_dirs(run_base) == []
    assert not runfolders.pid_alive(seen["pid"])  # type: ignore[arg-type]


XDIST_TESTS = """
import pytest
from recorder import both_workers_recorded, record

@pytest.mark.parametrize("n", range(6))
def test_test_scope(pgmig_server, pgmig_schema, pgmig_dsn, n):
    import psycopg
    with psycopg.connect(pgmig_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
        conn.execute("INSERT INTO users (name) VALUES ('x')")
    record({out!r}, pgmig_server, pgmig_schema, scope="test")
    both_workers_recorded({out!r})

@pytest.mark.pgmig(scope="worker")
@pytest.mark.parametrize("n", range(6))
async def test_worker_scope(pgmig_server, pgmig_schema, pgmig_conn, n):
    assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 1
    await pgmig_conn.execute("INSERT INTO users (name) VALUES ('x')")
    record({out!r}, pgmig_server, pgmig_schema, scope="worker")
    both_workers_recorded({out!r})
"""


def test_xdist_two_workers_share_one_server_never_a_schema(
    pytester: pytest.Pytester, run_base: Path
) -> None:
    out = pytester.path / "seen.jsonl"
    write_recorder(pytester)
    make_project(pytester, XDIST_TESTS.format(out=str(out)))
    result = pytester.runpytest_subprocess("-n", "2", "--pgmig-migrations=migrations")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(
        ["*= pgmig =*", "server: local, PostgreSQL *", "schemas: * created, * dropped, 0 kept*"]
    )
    seen = records(out)
    assert len(seen) == 12
    # one server: every worker got the same address, and there was one run folder
    assert {s["dsn"] for s in seen} != set() and len({s["dsn"] for s in seen}) == 1
    assert {tuple(s["runs"]) for s in seen} == {tuple(seen[0]["runs"])}  # type: ignore[arg-type]
    assert len(seen[0]["runs"]) == 1  # type: ignore[arg-type]
    assert len({s["pid"] for s in seen}) == 1
    workers = {s["worker"] for s in seen}
    assert workers == {"gw0", "gw1"}
    # workers never share a schema, and each schema name carries its worker
    by_worker = {w: {s["schema"] for s in seen if s["worker"] == w} for w in workers}
    assert not by_worker["gw0"] & by_worker["gw1"]
    for worker, names in by_worker.items():
        assert all(worker in str(name) for name in names), names
    # worker scope: one schema per worker
    for worker in workers:
        names = {s["schema"] for s in seen if s["worker"] == worker and s["scope"] == "worker"}
        assert len(names) <= 1
    # the server and every folder of the run are gone
    assert not os.path.exists(run_base) or os.listdir(run_base) == []
    assert not runfolders.pid_alive(seen[0]["pid"])  # type: ignore[arg-type]

"""Per-test isolation cost: pytest-pgmig against a no-isolation floor and pytest-postgresql.

Generates a migration set (M files creating T tables: serial key, unique column, index,
foreign key to the previous table, timestamps, and a trigger function) and a suite of N
tests, each inserting a row into the first table and reading it back through psycopg. The
test bodies and driver are the same for every contender; only the `conn` fixture differs:

  a. floor       one pre-migrated schema, one connection, no isolation (a2: a connection
                 per test, to show what opening one costs)
  b. test        pytest-pgmig --pgmig-scope=test, a connection per test (b2: a connection
                 kept per schema DSN, which test scope allows: a schema keeps its name)
  c. worker      pytest-pgmig --pgmig-scope=worker, a connection per worker
  d. pg-postgresql  pytest-postgresql's postgresql_noproc + load, a database per test
  e. b and c under -n 2
  g. b, b' and c with --pgmig-isolation=database (a template database's copies, reset
                 in place like schemas)
  c'. worker scope, a connection per test, without the DDL log (a user's server)
  h. pgmig_psycopg (a connection kept per schema, reset between tests), without the DDL log
  i. pgmig_psycopg_tx (the test's work in a transaction rolled back: no reset), no DDL log

All on one embedded server started here; pytest-pgmig runs with --pgmig-dsn and
PGMIG_DDL_LOG=1 (the event-trigger DDL log it installs on a server of its own; the row
"test, no DDL log" shows the catalog-fingerprint path a shared server gets). Each figure is
the median of --repeat runs, measured side by side in one invocation: wall time, and the CPU
time each row uses per test beyond the floor's in the pytest process ("client cpu") and in
the bench server ("server cpu": its backends, the resets' among them). On this 2-core VM the
cores are busy during a run, so wall time follows the CPU time spent.

    python bench/suite_bench.py                 # default set, M=11 T=10, N=200
    python bench/suite_bench.py --large         # also M=51 T=50
    python bench/suite_bench.py --history       # also a long history, M=350 T=100
    python bench/suite_bench.py --baseline /tmp/old --only "a. floor" --only "b. pgmig test"
        # each pytest-pgmig row again, importing pytest_pgmig from another checkout
        # (e.g. `git worktree add /tmp/old <commit>`), to show a change's cost side by side

The last table sets each target of the performance issue next to what the run measured:
the rollback and psycopg rows against the floor, the no-DDL-log resets against the
connection-per-test floor, a larger set's per-test cost against the default set's, and
pgdbm's documented form's up-to-date check (`engine_bench.documented_form`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import engine_bench
import psycopg
from migration_sets import long_history, migration_files

from pytest_pgmig.servers.sources import start_local

ROOT = Path(__file__).resolve().parent.parent


TEST_BODY = """
import uuid

import pytest

RUN = uuid.uuid4().hex[:8]  # the floor keeps its rows between runs: names must not repeat


@pytest.mark.parametrize("i", range({n}))
def test_roundtrip(conn, i):
    name = f"n{{i}}-{{RUN}}"
    row = conn.execute("INSERT INTO t1 (name) VALUES (%s) RETURNING id", (name,)).fetchone()
    assert conn.execute("SELECT name FROM t1 WHERE id = %s", (row[0],)).fetchone()[0] == name
"""

FIRST_TEST_HOOK = """
import os, time
_seen = []
def pytest_runtest_call(item):
    if not _seen and os.environ.get("BENCH_FIRST"):
        _seen.append(1)
        with open(os.environ["BENCH_FIRST"], "a") as f:
            f.write(f"{time.time()}\\n")
"""

CONFTESTS = {
    "floor": """
import psycopg, pytest
@pytest.fixture(scope="session")
def _session_conn():
    c = psycopg.connect(os.environ["BENCH_FLOOR_DSN"], autocommit=True)
    yield c
    c.close()
@pytest.fixture
def conn(_session_conn):
    return _session_conn
""",
    "floor-connect": """
import psycopg, pytest
@pytest.fixture
def conn():
    c = psycopg.connect(os.environ["BENCH_FLOOR_DSN"], autocommit=True)
    yield c
    c.close()
""",
    "pgmig-test": """
import psycopg, pytest
@pytest.fixture
def conn(pgmig_dsn):
    c = psycopg.connect(pgmig_dsn, autocommit=True)
    yield c
    c.close()
""",
    "pgmig-worker": """
import psycopg, pytest
_conns = {}
@pytest.fixture
def conn(pgmig_dsn):
    c = _conns.get(pgmig_dsn)
    if c is None or c.closed:
        c = _conns[pgmig_dsn] = psycopg.connect(pgmig_dsn, autocommit=True)
    return c
""",
    "pytest-postgresql": """
import pathlib
import pytest
from pytest_postgresql import factories
postgresql_noproc_fx = factories.postgresql_noproc(
    host=os.environ["BENCH_HOST"], port=int(os.environ["BENCH_PORT"]), user="postgres",
    dbname="bench_ppg", load=[pathlib.Path(os.environ["BENCH_SQL"])],
)
postgresql = factories.postgresql("postgresql_noproc_fx")
@pytest.fixture
def conn(postgresql):
    return postgresql
""",
}


# b2 keeps a connection per schema DSN exactly as the worker contender does
CONFTESTS["pgmig-kept"] = CONFTESTS["pgmig-worker"]
# committed, like the other contenders' autocommit work, so the reset has rows to undo
CONFTESTS["pgmig-psycopg"] = """
import pytest
@pytest.fixture
def conn(pgmig_psycopg):
    yield pgmig_psycopg
    pgmig_psycopg.commit()
"""
# the rollback fixture: what the test wrote is rolled back, the schema not reset
CONFTESTS["pgmig-tx"] = """
import pytest
@pytest.fixture
def conn(pgmig_psycopg_tx):
    return pgmig_psycopg_tx
"""


def write_suite(folder: Path, kind: str, n: int) -> None:
    folder.mkdir(parents=True)
    (folder / "test_bench.py").write_text(TEST_BODY.format(n=n))
    (folder / "conftest.py").write_text("import os\n" + FIRST_TEST_HOOK + CONFTESTS[kind])


_TICK = os.sysconf("SC_CLK_TCK")
POSTMASTER = [0]  # the bench server's postmaster, whose backends' CPU a run is charged


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def server_cpu() -> float:
    """CPU seconds the bench server has used: its live processes' and its exited backends'
    (which the postmaster reaped). 0 when unknown."""
    if not POSTMASTER[0]:
        return 0.0
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat(int(entry))
        except OSError:
            continue
        if int(entry) == POSTMASTER[0]:
            total += sum(int(x) for x in fields[11:15]) / _TICK
        elif int(fields[1]) == POSTMASTER[0]:
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def run_once(folder: Path, args: list[str], env: dict[str, str]) -> tuple[float, ...]:
    """One run: wall seconds, seconds to the first test, client and server CPU seconds."""
    first = folder / "first.txt"
    first.unlink(missing_ok=True)
    env = {**env, "BENCH_FIRST": str(first)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    client, server = resource.getrusage(resource.RUSAGE_CHILDREN), server_cpu()
    start = time.time()
    proc = subprocess.run(cmd + args, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = after.ru_utime + after.ru_stime - client.ru_utime - client.ru_stime
    server_used = server_cpu() - server
    if proc.returncode != 0:
        sys.exit(
            f"benchmark run failed in {folder} {args}:\n{proc.stdout[:3000]}\n...\n"
            f"{proc.stdout[-1500:]}{proc.stderr[-2000:]}"
        )
    firsts = [float(x) for x in first.read_text().split()] if first.exists() else [start]
    return wall, min(firsts) - start, client_cpu, server_used


def bench_set(
    base: Path,
    dsn: str,
    host: str,
    port: int,
    *,
    files: int,
    tables: int,
    n: int,
    repeat: int,
    contenders: list[str],
    baseline: str | None = None,
    history: bool = False,
) -> dict[str, tuple[float, float]]:
    mig = base / "migrations"
    mig.mkdir(parents=True)
    sql = []
    made = long_history(files, tables) if history else migration_files(tables, files)
    for name, text in made:
        (mig / name).write_text(text)
        sql.append(text)
    schema_sql = base / "schema.sql"
    schema_sql.write_text("\n".join(sql))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench_floor CASCADE")
        conn.execute("CREATE SCHEMA bench_floor")
        conn.execute("SET search_path TO bench_floor")
        conn.execute("\n".join(sql))
    env = {
        **os.environ,
        "BENCH_FLOOR_DSN": f"{dsn}&options=-c%20search_path%3Dbench_floor",
        "BENCH_HOST": host,
        "BENCH_PORT": str(port),
        "BENCH_SQL": str(schema_sql),
        "PGMIG_DSN": dsn,
        "PGMIG_MIGRATIONS": str(mig),
        "PGMIG_DDL_LOG": "1",
    }
    plans = {
        "a. floor": ("floor", [], {}),
        "a2. floor, conn per test": ("floor-connect", [], {}),
        "b. pgmig test": ("pgmig-test", ["--pgmig-scope=test"], {}),
        "b'. pgmig test, no DDL log": (
            "pgmig-test",
            ["--pgmig-scope=test"],
            {"PGMIG_DDL_LOG": "0"},
        ),
        "b2. pgmig test, conn kept": ("pgmig-kept", ["--pgmig-scope=test"], {}),
        "c. pgmig worker": ("pgmig-worker", ["--pgmig-scope=worker"], {}),
        "c'. pgmig worker, no DDL log": (
            "pgmig-test",
            ["--pgmig-scope=worker"],
            {"PGMIG_DDL_LOG": "0"},
        ),
        "h. pgmig test, pgmig_psycopg, no DDL log": (
            "pgmig-psycopg",
            ["--pgmig-scope=test"],
            {"PGMIG_DDL_LOG": "0"},
        ),
        "h. pgmig worker, pgmig_psycopg, no DDL log": (
            "pgmig-psycopg",
            ["--pgmig-scope=worker"],
            {"PGMIG_DDL_LOG": "0"},
        ),
        "i. pgmig test, pgmig_psycopg_tx, no DDL log": (
            "pgmig-tx",
            ["--pgmig-scope=test"],
            {"PGMIG_DDL_LOG": "0"},
        ),
        "i. pgmig worker, pgmig_psycopg_tx, no DDL log": (
            "pgmig-tx",
            ["--pgmig-scope=worker"],
            {"PGMIG_DDL_LOG": "0"},
        ),
        "d. pytest-postgresql": ("pytest-postgresql", ["-p", "no:pgmig"], {}),
        "e. pgmig test -n 2": ("pgmig-test", ["--pgmig-scope=test", "-n", "2"], {}),
        "e. pgmig worker -n 2": ("pgmig-worker", ["--pgmig-scope=worker", "-n", "2"], {}),
        "f. pgmig test, embedded server": ("pgmig-test", ["--pgmig-scope=test"], {"PGMIG_DSN": ""}),
        "g. pgmig test, database isolation": (
            "pgmig-test",
            ["--pgmig-scope=test", "--pgmig-isolation=database"],
            {},
        ),
        "g'. pgmig test, database, no DDL log": (
            "pgmig-test",
            ["--pgmig-scope=test", "--pgmig-isolation=database"],
            {"PGMIG_DDL_LOG": "0"},
        ),
        "g. pgmig worker, database isolation": (
            "pgmig-worker",
            ["--pgmig-scope=worker", "--pgmig-isolation=database"],
            {},
        ),
    }
    plans = {k: v for k, v in plans.items() if k in contenders or not contenders}
    if baseline:
        for label, (kind, args, extra) in list(plans.items()):
            if kind.startswith("pgmig"):
                plans[f"{label} [baseline]"] = (kind, args, {**extra, "PYTHONPATH": baseline})
    folders = {}
    for label, (kind, _, _) in plans.items():
        folders[label] = base / label.split(".")[0] / kind
        if not folders[label].exists():
            write_suite(folders[label], kind, n)
    results: dict[str, list[tuple[float, ...]]] = {label: [] for label in plans}
    for _ in range(repeat):  # interleaved, so load on the machine hits every contender alike
        for label, (_, args, extra) in plans.items():
            run = run_once(folders[label], args, {**env, **extra})
            if extra.get("PGMIG_DSN") == "":  # a server of its own, not the bench's
                run = (*run[:3], float("nan"))
            results[label].append(run)
    # each column's median on its own: wall, first test, client CPU, server CPU
    return {
        label: tuple(statistics.median(column) for column in zip(*runs, strict=True))
        for label, runs in results.items()
    }


def table(title: str, res: dict[str, tuple[float, ...]], n: int) -> str:
    """The rows, with what each costs per test over the floor: wall time, and the CPU time of
    the pytest process (client) and of the bench server (server: nothing for rows that start
    a server of their own). On a machine whose cores are all busy, wall follows CPU."""
    zero = (0.0, 0.0, 0.0, 0.0)
    floor = res.get("a. floor", zero)
    ppg = res.get("d. pytest-postgresql", zero)[0]
    lines = [
        title,
        f"{'contender':40} {'wall s':>8} {'per-test ms':>12} {'x floor':>8} "
        f"{'x pytest-pg':>11} {'1st test s':>10} {'client cpu':>10} {'server cpu':>10}",
    ]
    for label, (wall, first, client, server) in res.items():
        over = (wall - floor[0]) / n * 1000 if floor[0] else float("nan")
        lines.append(
            f"{label:40} {wall:8.2f} {over:12.2f} {wall / floor[0] if floor[0] else 0:8.2f} "
            f"{wall / ppg if ppg else 0:11.2f} {first:10.2f} "
            f"{(client - floor[2]) / n * 1000:+10.2f} "
            + ("n/a".rjust(10) if server != server else f"{(server - floor[3]) / n * 1000:+10.2f}")
        )
    return "\n".join(lines)


# the performance issue's targets: (row, what is measured, its limit)
TARGETS = (
    ("i. pgmig test, pgmig_psycopg_tx, no DDL log", "x floor", 1.2),
    ("i. pgmig worker, pgmig_psycopg_tx, no DDL log", "x floor", 1.2),
    ("h. pgmig test, pgmig_psycopg, no DDL log", "x floor", 1.3),
    ("h. pgmig worker, pgmig_psycopg, no DDL log", "x floor", 1.3),
    ("b'. pgmig test, no DDL log", "ms over a2", 1.5),
    ("c'. pgmig worker, no DDL log", "ms over a2", 1.5),
)


def targets(
    res: dict[str, tuple[float, ...]],
    n: int,
    *,
    larger: dict[str, dict[str, tuple[float, ...]]] | None = None,
    documented: dict[str, float] | None = None,
) -> str:
    """Each target next to what this run measured (whole runs: fixed costs count): the rows'
    own, a larger set's per-test cost over the default set's (`larger`, by set name), and
    pgdbm's documented form's up-to-date check (`documented`, `engine_bench`)."""
    lines = ["\ntargets (whole runs, medians)"]
    floor, connect = res.get("a. floor"), res.get("a2. floor, conn per test")
    for label, what, limit in TARGETS:
        if label not in res:
            continue
        if what == "x floor" and floor:
            value = res[label][0] / floor[0]
        elif what == "ms over a2" and connect:
            value = (res[label][0] - connect[0]) / n * 1000
        else:
            continue
        met = "met" if value <= limit else "NOT met"
        lines.append(f"{label:48} {value:6.2f} {what:10} target <= {limit}: {met}")
    test, worker = res.get("b'. pgmig test, no DDL log"), res.get("c'. pgmig worker, no DDL log")
    if test and worker:
        met = "met" if worker[0] < test[0] else "NOT met"
        lines.append(
            f"{'no DDL log: worker scope faster than test scope':48} "
            f"{worker[0]:6.2f} s vs {test[0]:.2f} s    {met}"
        )
    for name, other in (larger or {}).items():
        for label in other:
            if label == "a. floor" or label not in res or "a. floor" not in other:
                continue
            over = (other[label][0] - other["a. floor"][0]) / (res[label][0] - res["a. floor"][0])
            met = "met" if over <= 1.3 else "NOT met"
            lines.append(f"{f'{name} set, {label}':48} {over:6.2f} x default  target <= 1.3: {met}")
    if documented is not None:
        value = documented["config"]
        met = "met" if value < 2 else "NOT met"
        lines.append(
            f"{'pgdbm DatabaseConfig form, up-to-date check':48} {value:6.2f} ms "
            f"(pool form {documented['pool']:.2f} ms)  target < 2: {met}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="also the large set, M=51 T=50")
    parser.add_argument(
        "--history",
        action="store_true",
        help="also a long history: M=350 files on T=100 tables (columns, indexes, views)",
    )
    parser.add_argument("--only", action="append", default=[], help="contender labels to run")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run each pgmig contender importing pytest_pgmig from this checkout",
    )
    args = parser.parse_args()
    handle = start_local(max_connections=300)
    try:
        info = handle.info
        with psycopg.connect(info.dsn) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            # the backend's parent, read while the backend is there
            POSTMASTER[0] = int(_stat(backend)[1])
        print(
            f"cores: {os.cpu_count()}; server: PostgreSQL "
            f"{'.'.join(map(str, info.version))}, embedded; "
            f"N={args.tests} tests; median of {args.repeat} runs"
        )
        with tempfile.TemporaryDirectory(prefix="pgmig-bench-") as tmp:

            def run_set(name: str, files: int, tables: int, **kw: object) -> dict:
                return bench_set(
                    Path(tmp) / name,
                    info.dsn,
                    info.host,
                    info.port,
                    files=files,
                    tables=tables,
                    n=args.tests,
                    repeat=args.repeat,
                    **kw,  # type: ignore[arg-type]
                )

            res = run_set("default", 11, 10, contenders=args.only, baseline=args.baseline)
            print(table("\ndefault set: M=11 files, T=10 tables", res, args.tests))
            extra = []
            if args.large:
                rows = ["a. floor", "b. pgmig test", "c. pgmig worker"]
                extra.append(("large set: M=51 files, T=50 tables", "large", 51, 50, rows, False))
            if args.history:
                rows = [
                    "a. floor",
                    "b. pgmig test",
                    "b'. pgmig test, no DDL log",
                    "i. pgmig test, pgmig_psycopg_tx, no DDL log",
                    "f. pgmig test, embedded server",
                ]
                extra.append(("long history: M=350, T=100", "history", 350, 100, rows, True))
            larger = {}
            for title, name, files, tables, rows, history in extra:
                larger[name] = run_set(
                    name,
                    files,
                    tables,
                    contenders=args.only or rows,
                    history=history,
                    baseline=args.baseline,
                )
                print(table(f"\n{title}", larger[name], args.tests))
            documented = asyncio.run(engine_bench.documented_form(info.dsn))
            print(targets(res, args.tests, larger=larger, documented=documented))
    finally:
        handle.stop()


if __name__ == "__main__":
    main()

"""pgdbm-fixture suites on pgdbm's fixtures against the same suites on pytest_pgmig.pgdbm_fixtures.

Two suites of N tests, each run side by side on one server started here with its data on the
RAM disk and listening on 127.0.0.1 (pgdbm's fixtures take a host and port), changing only
the conftest's import:

  data       pgdbm's documented examples: `test_db_with_data`, a query, an insert
  migrating  as real suites do: a fixture of the suite's own applies a 20-file set through
             pgdbm's AsyncMigrationManager into `test_db`, for every test

  pgdbm   `from pgdbm.fixtures.conftest import *`: a database created and dropped per test
  pgmig   `from pytest_pgmig.pgdbm_fixtures import *`: a database per test, a copy of a
          template reset in place; the suite's own migrations applied once per run
  native  (migrating only) the same tests on pytest-pgmig's own `pgmig_db`, the set given
          as `pgmig_migrations`

Each figure is the median wall time of --repeat runs of the whole pytest command.

    python bench/pgdbm_fixtures_bench.py            # N=100, 5 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pytest_pgmig.servers import binaries

PORT = 55439

TESTS = """
import pytest

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("i", range({n}))
async def test_agents_of_alpha(test_db_with_data, i):
    alpha = await test_db_with_data.fetch_value(
        "SELECT id FROM projects WHERE name = 'Project Alpha'"
    )
    await test_db_with_data.execute(
        "INSERT INTO agents (project_id, title) VALUES ($1, $2)", alpha, f"task {{i}}"
    )
    assert await test_db_with_data.fetch_value(
        "SELECT count(*) FROM agents WHERE project_id = $1", alpha
    ) == 4
"""
IMPORTS = {
    "pgdbm": "from pgdbm.fixtures.conftest import *\n",
    "pgmig": "from pytest_pgmig.pgdbm_fixtures import *\n",
}

MIGRATING_TESTS = """
import pytest

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("i", range({n}))
async def test_orders(app_db, i):
    await app_db.execute("INSERT INTO customers (name) VALUES ($1)", f"c{{i}}")
    await app_db.execute("INSERT INTO orders (customer_id) SELECT id FROM customers")
    assert await app_db.fetch_value("SELECT count(*) FROM orders") == 1
"""
MIGRATING_CONFTEST = """
from pathlib import Path

import pytest_asyncio
from pgdbm import AsyncMigrationManager

{imports}

@pytest_asyncio.fixture
async def app_db(test_db):
    folder = Path(__file__).parent / "migrations"
    manager = AsyncMigrationManager(test_db, migrations_path=str(folder), module_name="app")
    await manager.apply_pending_migrations()
    yield test_db
"""
NATIVE_CONFTEST = """
import pytest


@pytest.fixture
def app_db(pgmig_db):
    return pgmig_db
"""
# 20 files: the two tables the tests use, then 18 more with an index each
MIGRATION_SET = {
    "001_customers.sql": "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);",
    "002_orders.sql": (
        "CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL "
        "REFERENCES customers (id), placed timestamptz NOT NULL DEFAULT now());"
    ),
    **{
        f"{n:03d}_table_{n}.sql": (
            f"CREATE TABLE t{n} (id serial PRIMARY KEY, v text, at timestamptz DEFAULT now());\n"
            f"CREATE INDEX t{n}_v ON t{n} (v);"
        )
        for n in range(3, 21)
    },
}


def suites(n: int) -> dict[str, dict[str, dict[str, str]]]:
    """Each suite's contenders, each a folder's files."""
    ini = "[pytest]\nasyncio_mode = strict\n"
    data = {
        label: {"test_suite.py": TESTS.format(n=n), "conftest.py": line, "pytest.ini": ini}
        for label, line in IMPORTS.items()
    }
    migrating = {
        label: {
            "test_suite.py": MIGRATING_TESTS.format(n=n),
            "conftest.py": MIGRATING_CONFTEST.format(imports=line),
            "pytest.ini": ini,
            **{f"migrations/{name}": text for name, text in MIGRATION_SET.items()},
        }
        for label, line in IMPORTS.items()
    }
    migrating["native"] = {
        "test_suite.py": MIGRATING_TESTS.format(n=n),
        "conftest.py": NATIVE_CONFTEST,
        "pytest.ini": ini + "pgmig_migrations = migrations\n",
        **{f"migrations/{name}": text for name, text in MIGRATION_SET.items()},
    }
    return {"data": data, "migrating": migrating}


def run(folder: Path, env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run failed in {folder}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tests", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="pgmig-pgdbm-bench-", dir="/dev/shm"))
    stop = start_tcp_server(data)
    try:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PGMIG_")},
            # pgdbm's fixtures read TEST_DB_*; both contenders use the same server
            "TEST_DB_HOST": "127.0.0.1",
            "TEST_DB_PORT": str(PORT),
            "TEST_DB_USER": "postgres",
            "TEST_DB_PASSWORD": "postgres",
            "PGMIG_DSN": f"postgresql://postgres:postgres@127.0.0.1:{PORT}/postgres",
        }
        print(
            f"cores: {os.cpu_count()}; server: PostgreSQL from {binaries.find_bindir()}, data "
            f"in {data}; N={args.tests} tests; median of {args.repeat}"
        )
        with tempfile.TemporaryDirectory(prefix="pgmig-pgdbm-bench-") as tmp:
            folders: dict[tuple[str, str], Path] = {}
            for suite, contenders in suites(args.tests).items():
                for label, files in contenders.items():
                    folder = Path(tmp) / suite / label
                    for name, text in files.items():
                        (folder / name).parent.mkdir(parents=True, exist_ok=True)
                        (folder / name).write_text(text)
                    folders[(suite, label)] = folder
            walls: dict[tuple[str, str], list[float]] = {key: [] for key in folders}
            for _ in range(args.repeat):  # interleaved: load on the machine hits all alike
                for key, folder in folders.items():
                    walls[key].append(run(folder, env))
        medians = {key: statistics.median(w) for key, w in walls.items()}
        print(f"{'suite':10} {'fixtures':10} {'wall s':>8} {'per test ms':>12}")
        for (suite, label), wall in medians.items():
            print(f"{suite:10} {label:10} {wall:8.2f} {wall / args.tests * 1000:12.1f}")
        for suite in ("data", "migrating"):
            ratio = medians[(suite, "pgdbm")] / medians[(suite, "pgmig")]
            print(f"{suite}: pgdbm / pgmig (import switched) {ratio:.2f}x")
        native = medians[("migrating", "native")] / medians[("migrating", "pgmig")]
        print(f"migrating: native / switched {native:.2f}x (>= 1: the switch costs nothing)")
    finally:
        stop()
        subprocess.run(["rm", "-rf", str(data)], check=False)


def start_tcp_server(data: Path) -> Callable[[], None]:
    """initdb and start a server on 127.0.0.1:PORT with its data in `data` (as the cluster
    account when root); the function that stops it."""
    bindir = binaries.find_bindir()
    assert bindir is not None, "the benchmark needs local PostgreSQL server binaries"
    account = binaries.cluster_account()
    owner = {"user": account.uid, "group": account.gid} if account else {}
    if account:
        os.chown(data, account.uid, account.gid)
    pgdata = data / "data"
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
        **owner,
    )
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={PORT} -c unix_socket_directories='' "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    ctl = [str(bindir / "pg_ctl"), "-D", str(pgdata), "-w"]
    subprocess.run(
        [*ctl, "-o", options, "-l", str(data / "log"), "start"],
        check=True,
        capture_output=True,
        **owner,
    )
    return lambda: subprocess.run([*ctl, "-m", "fast", "stop"], capture_output=True, **owner)


if __name__ == "__main__":
    main()

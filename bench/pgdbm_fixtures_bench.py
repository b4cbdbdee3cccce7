"""A pgdbm-fixture suite on pgdbm's fixtures against the same suite on pytest_pgmig.pgdbm_fixtures.

Generates N tests in the shape of pgdbm's documented examples (`test_db_with_data`, a query,
an insert) and runs them twice per round, side by side on one server started here with its
data on the RAM disk and listening on 127.0.0.1 (pgdbm's fixtures take a host and port),
changing only the conftest's import:

  pgdbm   `from pgdbm.fixtures.conftest import *`: a database created and dropped per test
  pgmig   `from pytest_pgmig.pgdbm_fixtures import *`: a schema per test, reset for reuse

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
            folders = {}
            for label, line in IMPORTS.items():
                folder = Path(tmp) / label
                folder.mkdir()
                (folder / "test_suite.py").write_text(TESTS.format(n=args.tests))
                (folder / "conftest.py").write_text(line)
                (folder / "pytest.ini").write_text("[pytest]\nasyncio_mode = strict\n")
                folders[label] = folder
            walls: dict[str, list[float]] = {label: [] for label in folders}
            for _ in range(args.repeat):  # interleaved: load on the machine hits both alike
                for label, folder in folders.items():
                    walls[label].append(run(folder, env))
        medians = {label: statistics.median(w) for label, w in walls.items()}
        print(f"{'fixtures':10} {'wall s':>8} {'per test ms':>12}")
        for label, wall in medians.items():
            print(f"{label:10} {wall:8.2f} {wall / args.tests * 1000:12.1f}")
        print(f"pgdbm / pgmig: {medians['pgdbm'] / medians['pgmig']:.2f}x")
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

"""The embedded server from local binaries: privilege drop, socket only, folders, leftovers."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from server_support import short_base

from pytest_pgmig.servers import binaries, embedded, runfolders
from pytest_pgmig.servers.dsn import socket_dsn

pytestmark = pytest.mark.skipif(
    binaries.find_bindir() is None, reason="no local PostgreSQL server binaries"
)


@pytest.fixture
def base() -> Iterator[Path]:
    with short_base() as folder:
        yield folder


@pytest.fixture
def cluster(base: Path) -> Iterator[embedded.EmbeddedCluster]:
    started = embedded.start_cluster(base=base, max_connections=37)
    try:
        yield started
    finally:
        started.stop()


def dsn_of(cluster: embedded.EmbeddedCluster) -> str:
    return socket_dsn(
        str(cluster.socket_dir), port=cluster.port, user="postgres", database="postgres"
    )


def fetch(dsn: str, sql: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def expected_uid() -> int:
    if os.geteuid() != 0:
        return os.geteuid()
    account = binaries.cluster_account()
    assert account is not None
    return account.uid


def listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            found.add(target[len("socket:[") : -1])
    return found


def test_server_runs_as_the_unprivileged_account(cluster: embedded.EmbeddedCluster) -> None:
    status = Path(f"/proc/{cluster.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert {int(uid) for uid in uid_line.split()[1:]} == {expected_uid()}
    if os.geteuid() == 0:
        assert pwd.getpwuid(expected_uid()).pw_name in ("postgres", "nobody")
        assert fetch(dsn_of(cluster), "SELECT current_user") == "postgres"


def test_listens_on_the_unix_socket_only(cluster: embedded.EmbeddedCluster) -> None:
    dsn = dsn_of(cluster)
    assert fetch(dsn, "SHOW listen_addresses") == ""
    assert fetch(dsn, "SHOW max_connections") == "37"
    assert fetch(dsn, "SHOW fsync") == "off"
    assert fetch(dsn, "SHOW synchronous_commit") == "off"
    assert fetch(dsn, "SHOW full_page_writes") == "off"
    assert not socket_inodes(cluster.pid) & listening_tcp_inodes()
    port = int(str(fetch(dsn, "SHOW port")))
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # pragma: no cover - only reached if something listens there


def test_folders_are_private_to_the_cluster_account(cluster: embedded.EmbeddedCluster) -> None:
    uid = expected_uid()
    for folder in (cluster.socket_dir, cluster.data_dir):
        info = folder.stat()
        assert info.st_mode & 0o777 == 0o700, folder
        assert info.st_uid == uid, folder
    socket_file = cluster.socket_dir / f".s.PGSQL.{cluster.port}"
    assert socket_file.is_socket()
    assert len(os.fsencode(str(socket_file))) < 100


def test_stop_deletes_the_folder_and_is_idempotent(base: Path) -> None:
    cluster = embedded.start_cluster(base=base)
    pid = cluster.pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    segments = {Path(line.split()[-1]) for line in maps.splitlines() if "/dev/shm/" in line}
    cluster.stop()
    assert not cluster.run_dir.exists()
    assert not runfolders.pid_alive(pid)
    assert not [segment for segment in segments if segment.exists()]  # no /dev/shm leftovers
    cluster.stop()
    assert not base.exists() or not any(base.iterdir())


def test_stop_survives_an_interrupted_first_attempt(base: Path) -> None:
    cluster = embedded.start_cluster(base=base)
    # As if a signal struck after the kill but before the folder was removed.
    os.kill(cluster.pid, signal.SIGQUIT)
    cluster.process.wait(10)
    cluster.stop()
    assert not cluster.run_dir.exists()


START_AND_VANISH = """
import os, sys
from pathlib import Path
from pytest_pgmig.servers import binaries
from pytest_pgmig.servers import embedded
from pytest_pgmig.servers import runfolders
cluster = embedded.start_cluster(base=Path(sys.argv[1]))
print(cluster.run_dir, cluster.pid, flush=True)
os._exit(0)  # no atexit, no stop: the postmaster and its folder are left behind
"""


def start_and_vanish(base: Path) -> tuple[Path, int]:
    result = subprocess.run(
        [sys.executable, "-c", START_AND_VANISH, str(base)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    run_dir, pid = result.stdout.split()
    return Path(run_dir), int(pid)


def test_next_start_reaps_runs_whose_process_is_gone(base: Path) -> None:
    dead_run, postmaster = start_and_vanish(base)
    assert runfolders.pid_alive(postmaster)
    live = embedded.start_cluster(base=base)
    try:
        # A folder of a dead run without a postmaster, and an old unrelated file.
        crashed = base / "99999999-deadbeef"
        (crashed / "pg").mkdir(parents=True)
        (crashed / "owners").mkdir()
        (crashed / "owners" / "99999999").write_text("")
        unrelated = base / "notes.txt"
        unrelated.write_text("keep me")

        second = embedded.start_cluster(base=base)
        try:
            assert not dead_run.exists()
            deadline = time.monotonic() + 5
            while runfolders.pid_alive(postmaster) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not runfolders.pid_alive(postmaster)
            assert not crashed.exists()
            assert live.run_dir.is_dir() and runfolders.pid_alive(live.pid)
            assert fetch(dsn_of(live), "SELECT 1") == 1
            assert unrelated.exists()
        finally:
            second.stop()
    finally:
        live.stop()


def test_a_folder_being_created_is_not_reaped(base: Path) -> None:
    young = base / "12345-0badf00d"
    young.mkdir()
    assert runfolders.reap_stale(base) == []
    assert young.exists()
    old = time.time() - 120
    os.utime(young, (old, old))
    assert runfolders.reap_stale(base) == [young]


def test_without_the_initdb_cache(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGMIG_INITDB_CACHE", "0")
    cluster = embedded.start_cluster(base=base)
    try:
        assert cluster.made_by == "initdb"
        assert fetch(dsn_of(cluster), "SHOW server_encoding") == "UTF8"
        # (the database's collation: PostgreSQL 16 dropped the lc_collate setting)
        collate = "SELECT datcollate FROM pg_database WHERE datname = current_database()"
        assert fetch(dsn_of(cluster), collate) == "C"
    finally:
        cluster.stop()


def test_a_damaged_cache_entry_is_rebuilt(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = base / "cache"
    monkeypatch.setenv("PGMIG_CACHE_DIR", str(cache))
    first = embedded.start_cluster(base=base)
    first.stop()
    assert first.made_by == "initdb"
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1
    (entries[0] / "data" / "global" / "pg_control").write_bytes(b"garbage")
    second = embedded.start_cluster(base=base)
    try:
        assert second.made_by == "initdb"
        assert fetch(dsn_of(second), "SELECT 1") == 1
    finally:
        second.stop()
    third = embedded.start_cluster(base=base)
    try:
        assert third.made_by == "cache"
    finally:
        third.stop()

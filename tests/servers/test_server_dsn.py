"""The server layer on real servers: probe errors, the DSN source, one server for many processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest
from server_support import short_base

from pytest_pgmig.errors import ServerError
from pytest_pgmig.servers import binaries, probe, runfolders, shared, sources
from pytest_pgmig.servers.info import MIN_VERSION, ServerHandle, ServerInfo

pytestmark = pytest.mark.skipif(
    binaries.find_bindir() is None, reason="no local PostgreSQL server binaries"
)

NASTY = "p@ss/w%rd:x?y"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local() -> Iterator[ServerHandle]:
    """An embedded server of our own: these tests change its pg_hba.conf."""
    handle = sources.start_local()
    try:
        yield handle
    finally:
        handle.stop()


def run_sql(dsn: str, *statements: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def socket_url(handle: ServerHandle, user: str, database: str, password: str | None = None) -> str:
    secret = f":{password}" if password is not None else ""
    host = quote(handle.info.host, safe="")
    return f"postgresql://{user}{secret}@/{database}?host={host}&port={handle.info.port}"


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def probe_error(dsn: str, timeout: float = 5.0) -> tuple[str, float]:
    began = time.monotonic()
    with pytest.raises(ServerError) as info:
        probe.probe(dsn, timeout=timeout)
    return str(info.value), time.monotonic() - began


def assert_no_secret(message: str, secret: str = NASTY) -> None:
    assert secret not in message
    assert quote(secret, safe="") not in message


def test_probe_returns_the_version(local: ServerHandle) -> None:
    version = probe.probe(local.info.dsn)
    assert version == local.info.version
    assert version >= MIN_VERSION
    assert len(version) == 2


def test_dsn_source_describes_the_given_server(local: ServerHandle) -> None:
    dsn = socket_url(local, "postgres", "postgres")
    handle = sources.start_server(dsn=dsn)
    assert handle.info.source == "dsn"
    assert (handle.info.host, handle.info.port) == (local.info.host, local.info.port)
    assert handle.info.database == "postgres" and handle.info.user == "postgres"
    handle.stop()
    handle.stop()
    assert probe.probe(local.info.dsn)  # stopping a borrowed server does nothing


def test_dsn_with_explicit_local_is_a_usage_error(local: ServerHandle) -> None:
    with pytest.raises(ServerError, match="Unset one of them"):
        sources.start_server(requested="local", dsn=local.info.dsn)


def test_refused_tcp_port() -> None:
    port = unused_port()
    message, elapsed = probe_error(f"postgresql://app:{NASTY}@127.0.0.1:{port}/shop")
    assert f"127.0.0.1:{port}" in message
    assert "'shop'" in message and "refused" in message
    assert "Fix:" in message
    assert_no_secret(message)
    assert elapsed < 5


def test_socket_folder_that_does_not_exist() -> None:
    message, _ = probe_error("postgresql://postgres@/postgres?host=/nonexistent/pgmig&port=5432")
    assert "/nonexistent/pgmig/.s.PGSQL.5432" in message
    assert "does not exist" in message


def test_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)  # the kernel accepts; nobody ever speaks
        port = listener.getsockname()[1]
        message, elapsed = probe_error(
            f"postgresql://u:{quote(NASTY, safe='')}@127.0.0.1:{port}/d", timeout=1
        )
    assert "no answer within 1 s" in message
    assert_no_secret(message)
    assert elapsed < 4


def test_missing_database(local: ServerHandle) -> None:
    message, _ = probe_error(socket_url(local, "postgres", "no_such_db"))
    assert "database 'no_such_db' does not exist" in message
    assert local.info.host in message
    assert "createdb" in message


def test_missing_role(local: ServerHandle) -> None:
    message, _ = probe_error(socket_url(local, "no_such_role", "postgres", NASTY))
    assert 'role "no_such_role" does not exist' in message
    assert_no_secret(message)


@pytest.fixture
def password_role(local: ServerHandle) -> Iterator[str]:
    """A role that must log in with a password (scram) over the unix socket."""
    role = f"pw_{os.getpid()}"
    admin = local.info.dsn
    run_sql(admin, f"CREATE ROLE {role} LOGIN PASSWORD '{NASTY}'")
    hba = Path(local.info.host) / "data" / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"local all {role} scram-sha-256\n" + original)
    run_sql(admin, "SELECT pg_reload_conf()")
    # the postmaster reloads when it gets to the signal: wait until a wrong password fails
    deadline = time.monotonic() + 10
    while True:
        try:
            probe.probe(socket_url(local, role, "postgres", "not-it"), timeout=5)
        except ServerError:
            break
        assert time.monotonic() < deadline, "pg_hba.conf was never reloaded"
        time.sleep(0.02)
    try:
        yield role
    finally:
        hba.write_text(original)
        run_sql(admin, "SELECT pg_reload_conf()", f"DROP ROLE {role}")


def test_bad_password(local: ServerHandle, password_role: str) -> None:
    wrong = "wr@ng/p%ss:w?rd"
    message, _ = probe_error(socket_url(local, password_role, "postgres", wrong))
    assert f"password authentication failed for user '{password_role}'" in message
    assert "'postgres'" in message and local.info.host in message
    assert_no_secret(message, wrong)
    # The right password works even written unencoded, and the info keeps no raw secret.
    handle = sources.start_server(dsn=socket_url(local, password_role, "postgres", NASTY))
    assert handle.info.user == password_role
    assert NASTY not in repr(handle.info) and NASTY not in str(handle.info)
    assert probe.probe(handle.info.dsn) == local.info.version


def test_probe_works_inside_a_running_event_loop(local: ServerHandle) -> None:
    async def from_async_code() -> tuple[int, ...]:
        return probe.probe(local.info.dsn)

    assert asyncio.run(from_async_code()) == local.info.version


def test_local_server_info(local: ServerHandle) -> None:
    info = local.info
    assert info.source == "local"
    assert info.database == "postgres" and info.user == "postgres"
    assert info.to_dict()["version"] == list(info.version)
    assert ":" not in info.dsn.split("@")[0].removeprefix("postgresql:")  # no password at all
    assert ServerInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


# --- one server shared between processes ------------------------------------------------------

MEMBER = """
import json, sys
from pytest_pgmig.servers import shared, sources
info = shared.acquire_shared(sys.argv[1], sources.start_local)
print(json.dumps(info.to_dict()), flush=True)
command = sys.stdin.readline().strip()
if command.startswith("release"):
    shared.release_shared(sys.argv[1], keep=command == "release-keep")
    print("released", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with short_base() as folder:
        monkeypatch.setenv("PGMIG_RUN_BASE", str(folder))
        yield folder


class Member:
    def __init__(self, key: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", MEMBER, key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def info(self) -> ServerInfo:
        assert self.process.stdout is not None
        return ServerInfo.from_dict(json.loads(self.process.stdout.readline()))

    def say(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip() if line.startswith("release") else ""

    def finish(self) -> None:
        if self.process.poll() is None:
            self.say("bye")
        self.process.wait(30)


def run_dirs(base: Path) -> list[Path]:
    if not base.exists():
        return []
    return [p for p in base.iterdir() if re.fullmatch(r"\d+-[0-9a-f]{8}", p.name)]


def test_two_processes_share_exactly_one_server(base: Path) -> None:
    first, second = Member("run-a"), Member("run-a")
    try:
        info_a, info_b = first.info(), second.info()
        assert info_a == info_b and info_a.source == "local"
        assert len(run_dirs(base)) == 1
        postmaster = runfolders.postmaster_pid(Path(info_a.host) / "data")
        assert postmaster is not None

        assert first.say("release") == "released"
        first.finish()  # the starter is gone; the server stays for the other member
        assert probe.probe(info_a.dsn) == info_a.version

        assert second.say("release") == "released"
        assert not runfolders.pid_alive(postmaster)
        # everything the run made is gone; the PGMIG_RUN_BASE folder itself is the user's
        assert base.is_dir() and list(base.iterdir()) == []
    finally:
        first.finish()
        second.finish()


def test_dead_members_do_not_count_and_reap_stops_the_rest(base: Path) -> None:
    first = Member("run-b")
    info = first.info()
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    # The killed starter left its server; a newcomer reuses it and, as the last live
    # member, stops it on release.
    second = Member("run-b")
    try:
        assert second.info() == info
        assert second.say("release") == "released"
        assert not run_dirs(base)
    finally:
        second.finish()

    third = Member("run-c")
    info = third.info()
    third.process.send_signal(signal.SIGKILL)
    third.process.wait(10)
    postmaster = runfolders.postmaster_pid(Path(info.host) / "data")
    assert postmaster is not None and runfolders.pid_alive(postmaster)
    shared.reap_shared("run-c")
    assert not runfolders.pid_alive(postmaster)
    assert not run_dirs(base)
    assert base.is_dir() and list(base.iterdir()) == []  # the user's PGMIG_RUN_BASE stays


def test_a_kept_shared_server_outlives_its_members_until_reaped(base: Path) -> None:
    first, second = Member("run-d"), Member("run-d")
    try:
        info = first.info()
        assert second.info() == info
        assert first.say("release-keep") == "released"
        assert second.say("release") == "released"
        first.finish()
        second.finish()
        # Kept after both left (and after they exited: no atexit release stops it).
        assert probe.probe(info.dsn) == info.version
    finally:
        first.finish()
        second.finish()
        shared.reap_shared("run-d")
    assert not run_dirs(base)

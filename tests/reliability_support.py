"""Helpers for the reliability matrix: servers of its own, subprocess runs, dumps, secrets."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from plugin_support import sql

from pytest_pgmig.servers import binaries, runfolders
from pytest_pgmig.servers.info import ServerHandle
from pytest_pgmig.servers.sources import start_server

needs_binaries = pytest.mark.skipif(
    binaries.find_bindir() is None, reason="no local PostgreSQL server binaries"
)

# The plugin's own schema: the one thing a run may leave on a user's server.
REGISTRY = "pgmig_registry"


@contextmanager
def local_server(max_connections: int = 100) -> Iterator[ServerHandle]:
    """An embedded server of the caller's own, stopped (and its folder removed) afterwards."""
    handle = start_server(requested="local", max_connections=max_connections)
    try:
        yield handle
    finally:
        handle.stop()


def postmaster_pid(handle_or_host: ServerHandle | str) -> int:
    """The postmaster's pid of an embedded server, from its data folder."""
    host = handle_or_host if isinstance(handle_or_host, str) else handle_or_host.info.host
    return int((Path(host) / "data" / "postmaster.pid").read_text().split()[0])


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    """Poll `predicate` until it is true; generous, since CI machines are often loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def pgmig_schemas(dsn: str) -> set[str]:
    """Every schema of the plugin's naming on the server, the registry left out."""
    rows = sql(dsn, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pgmig\\_%'")
    return {r[0] for r in rows} - {REGISTRY}


def registered(dsn: str) -> set[str]:
    """The schemas pgmig_registry.schemas records (none if the registry does not exist yet)."""
    if not sql(dsn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", REGISTRY):
        return set()
    return {r[0] for r in sql(dsn, f"SELECT name FROM {REGISTRY}.schemas")}


def objects(dsn: str) -> set[tuple[str, str]]:
    """(schema, relation) of every relation outside the system and the plugin's schemas."""
    rows = sql(
        dsn,
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname NOT LIKE 'pg\\_%' "
        "AND n.nspname <> 'information_schema'",
    )
    return {(r[0], r[1]) for r in rows}


def tool(name: str) -> str:
    """A PostgreSQL client program (pg_dump, pg_dumpall, psql): the wheel's, the newest here,
    which reads every older server, else the server's own (the npm builds CI runs on other
    majors have no client programs), else the PATH's."""
    from pytest_pgmig.servers import wheel

    bindirs = []
    with contextlib.suppress(Exception):
        bindirs.append(wheel.wheel_bindir(binaries.cluster_account()))
    bindirs.append(binaries.find_bindir())
    for bindir in bindirs:
        if bindir is not None and (bindir / name).exists():
            return str(bindir / name)
    found = shutil.which(name)
    assert found is not None, f"no {name} on this machine"
    return found


def pg_dump(dsn: str, *, exclude: tuple[str, ...] = (REGISTRY,)) -> str:
    """The whole database as SQL, minus `exclude` schemas and pg_dump's per-dump random key."""
    args = [tool("pg_dump"), "--no-owner", f"--dbname={dsn}"]
    for schema in exclude:
        args += ["-N", schema]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return "\n".join(
        line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def text_of(result: pytest.RunResult) -> str:
    """Everything an inner run printed, stdout then stderr."""
    return "\n".join(result.outlines + result.errlines)


def usage_error(result: pytest.RunResult) -> str:
    """Assert the run stopped with a usage error and no traceback; its output."""
    text = text_of(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    return text


# --- pytest runs in processes of their own ---------------------------------------------------


def spawn_pytest(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `python -m pytest` in its own process group (so it and its workers die together)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120.0) -> str:
    """Wait for a spawned run and return its output; kill its group if it overstays."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out = proc.communicate()[0]
        raise AssertionError(f"the run did not end within {timeout:g} s:\n{out}") from None


def kill_group(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    """Signal a spawned run's whole process group (the run, its xdist workers)."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@contextmanager
def running(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Make sure a spawned run is gone when the test ends, however it ends."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            kill_group(proc)
            proc.communicate()


def wait_file(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """Wait for a file a spawned run writes; fail early with its output if the run ends."""

    def ready() -> bool:
        if proc.poll() is not None and not path.exists():
            raise AssertionError(f"the run ended before writing {path.name}:\n{finish(proc)}")
        return path.exists()

    wait_for(ready, timeout, f"{path.name} from the inner run")
    return path.read_text()


# --- secrets ---------------------------------------------------------------------------------

# '@', '/', ':' and '%' break naive URL parsing; the distinctive stem finds partial leaks.
SECRET_STEM = "Zq7s3cr3t"
PASSWORD = f"{SECRET_STEM}@/:%40x"


def assert_no_password(text: str, password: str = PASSWORD) -> None:
    """No spelling of the password (raw, percent-encoded, or its stem) appears in `text`."""
    for spelling in (password, quote(password), quote(password, safe=""), SECRET_STEM):
        assert spelling not in text, f"password leaked as {spelling!r}"


# --- a throwaway cluster that listens on TCP with password authentication --------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TcpCluster:
    """A cluster on 127.0.0.1 with scram-sha-256 for TCP, trust on its private socket."""

    base: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def socket_dir(self) -> Path:
        return self.base / "pg"

    @property
    def admin_dsn(self) -> str:
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://postgres@/postgres?host={host}&port={self.port}"

    def tcp_dsn(self, user: str, password: str, database: str) -> str:
        secret = quote(password, safe="")
        return f"postgresql://{user}:{secret}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        runfolders.remove_tree(self.base)


def start_tcp_cluster() -> TcpCluster:
    """initdb and start a cluster as the cluster account (root hands it to `postgres`)."""
    bindir = binaries.find_bindir()
    assert bindir is not None
    account = binaries.cluster_account()
    ids = dict(user=account.uid, group=account.gid, extra_groups=[]) if account else {}
    base = Path(tempfile.mkdtemp(prefix="pgr-", dir="/tmp"))
    os.chmod(base, 0o711)
    pg = base / "pg"
    pg.mkdir(mode=0o700)
    if account is not None:
        os.chown(pg, account.uid, account.gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    common: dict[str, object] = dict(env=env, cwd=pg, umask=0o077, **ids)
    subprocess.run(
        [
            *(str(bindir / "initdb"), "-D", str(pg / "data"), "--no-sync", "-U", "postgres"),
            *("--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"),
        ],
        check=True,
        capture_output=True,
        **common,  # type: ignore[call-overload]
    )
    port = free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(pg),
        "fsync": "off",
        "max_connections": "200",
        "password_encryption": "scram-sha-256",
    }
    cmd = [str(bindir / "postgres"), "-D", str(pg / "data")]
    for key, value in settings.items():
        cmd += ["-c", f"{key}={value}"]
    log = open(pg / "log", "ab")  # noqa: SIM115 - the server writes to it for its lifetime
    process = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **common
    )  # type: ignore[call-overload]
    log.close()
    cluster = TcpCluster(base=base, port=port, process=process)
    try:
        wait_for(lambda: _answers(cluster), 30, "the TCP cluster to start")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _answers(cluster: TcpCluster) -> bool:
    if cluster.process.poll() is not None:
        log = (cluster.socket_dir / "log").read_text(errors="replace")
        raise AssertionError(f"postgres exited while starting:\n{log}")
    try:
        sql(cluster.admin_dsn, "SELECT 1")
    except Exception:
        return False
    return True


def server_gone_message(text: str) -> bool:
    """True when `text` tells the user the server went away (not just a driver's exception)."""
    return bool(
        re.search(
            r"server\b.{0,80}\b(gone|went away|is down|stopped|died|not running|no longer|lost)",
            text,
            re.IGNORECASE,
        )
    )

"""A throwaway PostgreSQL cluster from local binaries: find them, start, stop, reap leftovers."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from pytest_pgmig.errors import EmbeddedError
from pytest_pgmig.servers.binaries import Account, cluster_account, find_bindir
from pytest_pgmig.servers.runfolders import (
    kill_postmaster,
    new_run_dir,
    prepare_base,
    reap_stale,
    remove_run_dir,
    remove_tree,
    run_base,
    stop_run_dir,
)

PORT = 5432  # The socket folder is private to the run, so the default port never collides.
_START_TIMEOUT = 30.0
_HBA = "# pytest-pgmig: unix socket only, in a folder only the cluster's account can enter\n"
_HBA += "local all all trust\n"


# --- finding the binaries -------------------------------------------------------------------


# --- accounts, pids, folders ----------------------------------------------------------------


# --- initdb and its cache -------------------------------------------------------------------


def _child_options(account: Account | None, out: IO[bytes], cwd: Path) -> dict[str, Any]:
    """What initdb and postgres are started with: the cluster account, a clean env, the log."""
    # PGDATA, PGPORT and friends would silently change what initdb and postgres do.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return {
        "stdin": subprocess.DEVNULL,
        "stdout": out,
        "stderr": subprocess.STDOUT,
        "cwd": cwd,
        "env": env,
        "umask": 0o077,
        "user": account.uid if account else None,
        "group": account.gid if account else None,
        "extra_groups": [] if account else None,
    }


def _chown(path: Path, account: Account | None) -> None:
    if account is not None:
        os.chown(path, account.uid, account.gid)


def _cache_root() -> Path | None:
    if os.environ.get("PGMIG_INITDB_CACHE", "1").lower() in ("0", "false", "no", "off"):
        return None
    if os.environ.get("PGMIG_CACHE_DIR"):
        return Path(os.environ["PGMIG_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    home = Path(xdg) if xdg else Path.home() / ".cache"
    return home / "pytest-pgmig"


def _cache_key(bindir: Path, account: Account | None) -> str:
    postgres = Path(os.path.realpath(bindir / "postgres"))
    info = postgres.stat()
    uid = account.uid if account else os.geteuid()
    text = f"{postgres}|{info.st_size}|{info.st_mtime_ns}|{uid}|v2"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a data folder keeping modes and owners (``cp -a`` is several times faster)."""
    cp = shutil.which("cp")
    if cp is not None and sys.platform.startswith("linux"):
        subprocess.run([cp, "-a", str(src), str(dst)], check=True, capture_output=True)
        return
    shutil.copytree(src, dst, symlinks=True)
    info = src.stat()
    for root, dirs, files in os.walk(dst):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), info.st_uid, info.st_gid)
    os.chown(dst, info.st_uid, info.st_gid)


def _valid_cluster(data_dir: Path) -> bool:
    return (data_dir / "PG_VERSION").is_file() and (data_dir / "global" / "pg_control").is_file()


def _initdb(bindir: Path, data_dir: Path, account: Account | None, log: Path) -> None:
    cmd = [
        str(bindir / "initdb"),
        "-D",
        str(data_dir),
        "--no-sync",
        # 1 MB WAL segments instead of 16: the fresh cluster (and each copy of it) shrinks
        # from ~39 MB to ~24 MB, and throwaway data never needs long WAL segments.
        "--wal-segsize=1",
        "-E",
        "UTF8",
        "--locale",
        "C",
        "-U",
        "postgres",
        "-A",
        "trust",
    ]
    with log.open("ab") as out:
        result = subprocess.run(cmd, check=False, **_child_options(account, out, data_dir.parent))
    if result.returncode != 0:
        raise EmbeddedError(
            f"initdb ({bindir / 'initdb'}) failed with exit code {result.returncode}:\n{_tail(log)}"
        )
    (data_dir / "pg_hba.conf").write_text(_HBA)


def _prepare_data(
    bindir: Path, data_dir: Path, account: Account | None, log: Path
) -> tuple[str, Path | None]:
    """Fill ``data_dir`` with a fresh cluster: a copy of the cached one, else initdb (+ cache it).

    Returns how it was made ("cache" or "initdb") and the cache entry used or written.
    """
    root = _cache_root()
    entry = None
    if root is not None:
        with contextlib.suppress(OSError):
            entry = root / _cache_key(bindir, account)
    if entry is not None and _valid_cluster(entry / "data"):
        try:
            _copy_tree(entry / "data", data_dir)
            return "cache", entry
        except (OSError, subprocess.CalledProcessError):
            remove_tree(data_dir)
    _initdb(bindir, data_dir, account, log)
    if entry is not None:
        _store_in_cache(data_dir, entry)
    return "initdb", entry


def _store_in_cache(data_dir: Path, entry: Path) -> None:
    """Keep a pristine copy of a just-initialised cluster; failures only cost speed."""
    try:
        entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with FileLock(str(entry) + ".lock", timeout=60):
            if _valid_cluster(entry / "data"):
                return
            tmp = entry.parent / f"{entry.name}.tmp-{os.getpid()}"
            remove_tree(tmp)
            tmp.mkdir(mode=0o700)
            _copy_tree(data_dir, tmp / "data")
            remove_tree(entry)
            os.replace(tmp, entry)
    except (OSError, Timeout, subprocess.CalledProcessError):
        pass


def _tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:])


# --- the cluster ----------------------------------------------------------------------------


@dataclass(kw_only=True, eq=False, repr=False)
class EmbeddedCluster:
    """A running throwaway cluster in its own run folder; :meth:`stop` removes everything.

    Example::

        >>> cluster = start_cluster(max_connections=50)
        >>> cluster.socket_dir, cluster.port
        (PosixPath('/tmp/pytest-pgmig-0/4242-1a2b3c4d/pg'), 5432)
        >>> cluster.stop()
    """

    bindir: Path
    run_dir: Path
    account: Account | None
    process: subprocess.Popen[bytes]
    made_by: str
    port: int = field(default=PORT, init=False)
    _stopped: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        atexit.register(self.stop)

    @property
    def pg_dir(self) -> Path:
        """The cluster account's private folder: the socket, ``data/`` and ``log``."""
        return self.run_dir / "pg"

    @property
    def socket_dir(self) -> Path:
        return self.pg_dir

    @property
    def data_dir(self) -> Path:
        return self.pg_dir / "data"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def user(self) -> str:
        return "postgres"

    def detach(self) -> None:
        """Stop owning the cluster's lifetime here (another process will stop it)."""
        atexit.unregister(self.stop)
        self._stopped = True

    def stop(self) -> None:
        """Stop the postmaster and delete the run folder. Idempotent.

        Safe to call again after an interruption (a signal handler, then atexit): every
        step tolerates having been done already, and it never blocks on a lock.
        """
        if self._stopped:
            return
        kill_postmaster(self.pid, self.data_dir, self.process)
        remove_run_dir(self.run_dir)
        self._stopped = True
        atexit.unregister(self.stop)

    def __repr__(self) -> str:
        return f"<EmbeddedCluster {self.run_dir} pid={self.pid}>"


def _wait_ready(process: subprocess.Popen[bytes], data_dir: Path, log: Path) -> None:
    """Wait until postmaster.pid says "ready" (what pg_ctl -w does, but polled every 5 ms)."""
    pidfile = data_dir / "postmaster.pid"
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedError(
                f"postgres exited with code {process.returncode} while starting:\n{_tail(log)}"
            )
        with contextlib.suppress(OSError):
            lines = pidfile.read_text().split("\n")
            if len(lines) > 7 and lines[7].strip() == "ready":
                return
        time.sleep(0.005)
    raise EmbeddedError(f"postgres did not become ready in {_START_TIMEOUT:.0f} s:\n{_tail(log)}")


def _spawn(
    bindir: Path, pg_dir: Path, account: Account | None, max_connections: int, log: Path
) -> subprocess.Popen[bytes]:
    settings = {
        "listen_addresses": "",
        "port": str(PORT),
        "unix_socket_directories": str(pg_dir),
        "unix_socket_permissions": "0700",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": str(max_connections),
    }
    cmd = [str(bindir / "postgres"), "-D", str(pg_dir / "data")]
    for key, value in settings.items():
        cmd += ["-c", f"{key}={value}"]
    with log.open("ab") as out:
        # Own session: Ctrl-C reaches pytest, which stops the server in order.
        return subprocess.Popen(cmd, start_new_session=True, **_child_options(account, out, pg_dir))


def start_cluster(
    *,
    bindir: Path | None = None,
    max_connections: int = 100,
    base: Path | None = None,
) -> EmbeddedCluster:
    """Create and start a cluster in a fresh run folder, listening on its unix socket only.

    Reaps folders of dead runs first. When root, the cluster runs as :func:`cluster_account`.
    Raises :class:`EmbeddedError` (with the server log) when it cannot start.
    """
    if bindir is None:
        bindir = find_bindir()
        if bindir is None:
            raise EmbeddedError("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found")
    base = run_base() if base is None else base
    account = cluster_account()
    prepare_base(base, account)
    reap_stale(base)
    run_dir = new_run_dir(base)
    try:
        pg_dir = run_dir / "pg"
        pg_dir.mkdir(mode=0o700)
        _chown(pg_dir, account)
        log = pg_dir / "log"
        log.touch(mode=0o600)
        _chown(log, account)
        made_by, entry = _prepare_data(bindir, pg_dir / "data", account, log)
        process = _spawn(bindir, pg_dir, account, max_connections, log)
        try:
            _wait_ready(process, pg_dir / "data", log)
        except EmbeddedError:
            kill_postmaster(process.pid, pg_dir / "data", process)
            if made_by != "cache" or entry is None:
                raise
            # A damaged cache entry: drop it and start once more from a fresh initdb.
            remove_tree(entry)
            remove_tree(pg_dir / "data")
            made_by, entry = _prepare_data(bindir, pg_dir / "data", account, log)
            process = _spawn(bindir, pg_dir, account, max_connections, log)
            _wait_ready(process, pg_dir / "data", log)
        return EmbeddedCluster(
            bindir=bindir, run_dir=run_dir, account=account, process=process, made_by=made_by
        )
    except BaseException:  # also Ctrl-C halfway through: leave nothing behind
        stop_run_dir(run_dir)
        raise

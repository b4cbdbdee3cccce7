"""A throwaway PostgreSQL cluster from local binaries: find them, start, stop, reap leftovers."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = [
    "Account",
    "EmbeddedCluster",
    "EmbeddedError",
    "add_owner",
    "bindir_candidates",
    "cluster_account",
    "find_bindir",
    "is_bindir",
    "live_owners",
    "pid_alive",
    "reap_stale",
    "remove_owner",
    "remove_tree",
    "run_base",
    "start_cluster",
    "stop_run_dir",
]

BINARIES = ("initdb", "pg_ctl", "postgres")
PORT = 5432  # The socket folder is private to the run, so the default port never collides.
SEARCH_ROOTS = (Path("/usr/lib/postgresql"),)
_RUN_DIR_RE = re.compile(r"^\d+-[0-9a-f]{8}$")
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
# A run folder without owner records this young may be one being created right now.
_CREATION_GRACE = 30.0
_HBA = "# pytest-pgmig: unix socket only, in a folder only the cluster's account can enter\n"
_HBA += "local all all trust\n"


class EmbeddedError(Exception):
    """The local cluster could not be created or started; the message says why and what to do."""


@dataclass(frozen=True)
class Account:
    """The unprivileged account a cluster runs as when the tests run as root."""

    name: str
    uid: int
    gid: int


# --- finding the binaries -------------------------------------------------------------------


def is_bindir(path: Path) -> bool:
    """True when ``path`` holds executable ``initdb``, ``pg_ctl`` and ``postgres``."""
    return all(os.access(path / name, os.X_OK) and (path / name).is_file() for name in BINARIES)


def _major_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (-1,)


def _pg_config_bindir(environ: Mapping[str, str]) -> Path | None:
    pg_config = shutil.which("pg_config", path=environ.get("PATH", os.defpath))
    if pg_config is None:
        return None
    try:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = result.stdout.strip()
    return Path(out) if result.returncode == 0 and out else None


def bindir_candidates(
    environ: Mapping[str, str] | None = None,
    *,
    search_roots: Sequence[Path] = SEARCH_ROOTS,
) -> Iterator[tuple[Path, str]]:
    """Yield (folder, how it was found) in search order; the folders are not checked yet.

    Order: ``PGMIG_PG_BINDIR``, ``pg_config --bindir``, the folder of ``initdb`` on ``PATH``
    (symlinks resolved first, then as found), then ``<root>/*/bin`` newest major first.
    """
    env = os.environ if environ is None else environ
    if env.get("PGMIG_PG_BINDIR"):
        yield Path(env["PGMIG_PG_BINDIR"]), "PGMIG_PG_BINDIR"
    from_config = _pg_config_bindir(env)
    if from_config is not None:
        yield from_config, "pg_config --bindir"
    initdb = shutil.which("initdb", path=env.get("PATH", os.defpath))
    if initdb is not None:
        yield Path(os.path.realpath(initdb)).parent, "PATH"
        yield Path(initdb).parent, "PATH"
    for root in search_roots:
        with contextlib.suppress(OSError):
            found = sorted(root.glob("*/bin"), key=_major_key, reverse=True)
            for folder in found:
                yield folder, str(root)


def find_bindir(
    environ: Mapping[str, str] | None = None,
    *,
    search_roots: Sequence[Path] = SEARCH_ROOTS,
) -> Path | None:
    """The first folder in search order holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Example::

        >>> find_bindir()
        PosixPath('/usr/lib/postgresql/15/bin')

    ``PGMIG_PG_BINDIR`` set to a folder without the three binaries is an error rather than
    silently ignored, so a typo does not start some other PostgreSQL.
    """
    env = os.environ if environ is None else environ
    for folder, how in bindir_candidates(env, search_roots=search_roots):
        if is_bindir(folder):
            return folder
        if how == "PGMIG_PG_BINDIR":
            raise EmbeddedError(
                f"PGMIG_PG_BINDIR={folder} does not hold {', '.join(BINARIES)}. "
                "Point it at the bin folder of a PostgreSQL server installation "
                "(e.g. /usr/lib/postgresql/16/bin) or unset it."
            )
    return None


# --- accounts, pids, folders ----------------------------------------------------------------


def cluster_account() -> Account | None:
    """The account to run the cluster as: None (ourselves) unless we are root.

    ``initdb`` and ``postgres`` refuse to run as root, so root hands the cluster to the
    ``postgres`` account where it exists, else to ``nobody``.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return Account(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    raise EmbeddedError(
        "running as root, and neither a 'postgres' nor a 'nobody' account exists to run "
        "PostgreSQL as (initdb and postgres refuse to run as root). Create one "
        "(e.g. `useradd --system postgres`) or run the tests as an ordinary user."
    )


def run_base() -> Path:
    """The folder holding run folders: short, because unix socket paths are limited to ~107 bytes.

    ``/dev/shm/pytest-pgmig-<uid>`` where /dev/shm is a RAM disk of 1 GiB or more (creating
    the cluster's files there is several times faster than on a disk, and its data is
    throwaway), else ``/tmp/pytest-pgmig-<uid>``; ``PGMIG_RUN_BASE`` overrides it. The choice
    rests on the RAM disk's size, not its free space, so every process of a run agrees.
    """
    override = os.environ.get("PGMIG_RUN_BASE")
    if override:
        return Path(override)
    name = f"pytest-pgmig-{os.geteuid()}"
    try:
        shm = os.statvfs("/dev/shm")
        if shm.f_blocks * shm.f_frsize >= 1 << 30 and os.access("/dev/shm", os.W_OK):
            return Path("/dev/shm") / name
    except OSError:
        pass
    return Path("/tmp") / name


def _users_base(base: Path) -> bool:
    """Whether `base` is the user's PGMIG_RUN_BASE: a folder the plugin must leave as it is."""
    override = os.environ.get("PGMIG_RUN_BASE")
    return bool(override) and Path(override or ".") == base


def _prepare_base(base: Path, account: Account | None) -> None:
    existed = base.is_dir()
    base.mkdir(mode=0o711, parents=True, exist_ok=True)
    info = base.lstat()
    if base.is_symlink() or info.st_uid != os.geteuid():
        raise EmbeddedError(
            f"{base} is not a folder owned by this user; remove it or set PGMIG_RUN_BASE "
            "to a short private folder."
        )
    if account is None:
        return
    # The cluster's account must be able to pass through to its own run folder.
    if info.st_mode & 0o011 != 0o011:
        if existed and _users_base(base):
            raise EmbeddedError(
                f"PGMIG_RUN_BASE {base} has mode {info.st_mode & 0o777:o}: the "
                f"{account.name!r} account the server runs as cannot enter it, and the plugin "
                f"does not change folders it did not create. Run `chmod go+x {base}`, or "
                "point PGMIG_RUN_BASE at another folder."
            )
        os.chmod(base, (info.st_mode & 0o777) | 0o011)
    for folder in base.resolve().parents:
        mode = folder.stat()
        if not (mode.st_mode & 0o001 or mode.st_uid == account.uid):
            raise EmbeddedError(
                f"the run folder base {base} is inside {folder}, which the {account.name!r} "
                "account the server runs as cannot enter. Set PGMIG_RUN_BASE to a short "
                "folder it can reach, e.g. /tmp/pytest-pgmig."
            )


def _proc_stat(pid: int) -> list[str]:
    """Fields 3.. of /proc/<pid>/stat (state first), or [] where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    return stat.rsplit(")", 1)[1].split()


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" where /proc is missing)."""
    fields = _proc_stat(pid)
    return fields[19] if len(fields) > 19 else ""


def pid_alive(pid: int, ticks: str = "") -> bool:
    """True when ``pid`` runs (and, given its recorded start ``ticks``, is the same process).

    A zombie counts as gone: an orphaned postmaster may wait a while for its reaper.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False
    if ticks and len(fields) > 19:
        return fields[19] == ticks  # a reused pid has another start time
    return True


def _owner_path(run_dir: Path, pid: int) -> Path:
    return run_dir / "owners" / str(pid)


def add_owner(run_dir: Path, pid: int | None = None) -> None:
    """Record ``pid`` (default: this process) as a user of the run folder; kept while it lives."""
    pid = os.getpid() if pid is None else pid
    owners = run_dir / "owners"
    owners.mkdir(mode=0o700, exist_ok=True)
    tmp = owners / f".{pid}.tmp"
    tmp.write_text(_start_ticks(pid))
    os.replace(tmp, _owner_path(run_dir, pid))


def remove_owner(run_dir: Path, pid: int | None = None) -> None:
    """Drop ``pid`` (default: this process) from the run folder's users."""
    with contextlib.suppress(OSError):
        _owner_path(run_dir, os.getpid() if pid is None else pid).unlink()


def live_owners(run_dir: Path) -> list[int]:
    """Pids recorded as users of ``run_dir`` whose process still runs."""
    alive = []
    try:
        entries = list((run_dir / "owners").iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            ticks = entry.read_text().strip()
        except OSError:
            continue
        if pid_alive(int(entry.name), ticks):
            alive.append(int(entry.name))
    return alive


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
    except OSError:
        return None
    return int(first) if first.strip().isdigit() else None


def _wait_gone(pid: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Popen.poll never blocks on its lock, so this is safe from a signal handler.
        if process is not None and process.poll() is not None:
            return True
        if process is None and not pid_alive(pid):
            return True
        time.sleep(0.01)
    return False


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """Guard against a reused pid: the process must be a postgres whose data folder is ours."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)  # no /proc: trust postmaster.pid
    return any(os.fsencode(str(data_dir)) == part for part in cmdline) or any(
        b"postgres" in part for part in cmdline[:1]
    )


def _kill_postmaster(pid: int, data_dir: Path, process: subprocess.Popen[bytes] | None) -> None:
    if process is None and not (pid_alive(pid) and _is_postmaster_of(pid, data_dir)):
        return
    # Fast shutdown: with fsync off its checkpoint is cheap, and unlike an immediate one
    # (SIGQUIT) it removes the cluster's dynamic shared memory from /dev/shm.
    steps = ((signal.SIGINT, _STOP_TIMEOUT), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0))
    for sig, wait in steps:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        if _wait_gone(pid, wait, process):
            return


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything in it, quietly; tolerates a half-deleted tree."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # e.g. a permission problem: try once more after making it writable
        for root, dirs, _ in os.walk(path):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(root, name), 0o700)
        shutil.rmtree(path, ignore_errors=True)


def _remove_run_dir(run_dir: Path) -> None:
    remove_tree(run_dir)
    # Leave no empty base of ours behind either (a run creating its folder right now
    # recreates it); the user's PGMIG_RUN_BASE stays.
    if not _users_base(run_dir.parent):
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()


def stop_run_dir(run_dir: Path) -> None:
    """Stop the postmaster of ``run_dir`` (if running) and delete the folder.

    Works from any process (used for leftovers and for a server shared between processes).
    """
    data_dir = run_dir / "pg" / "data"
    pid = _postmaster_pid(data_dir)
    if pid is not None:
        _kill_postmaster(pid, data_dir, None)
    _remove_run_dir(run_dir)


def reap_stale(base: Path | None = None) -> list[Path]:
    """Delete run folders left by runs whose processes are all gone; return what was removed.

    A folder with a live owner is never touched, nor one created in the last few seconds
    that has no owner record yet.
    """
    base = run_base() if base is None else base
    removed = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return []
    for entry in entries:
        is_run = bool(_RUN_DIR_RE.match(entry.name))
        if not (is_run or entry.name.startswith("shared-")):
            continue
        if not entry.is_dir() or entry.is_symlink() or live_owners(entry):
            continue
        try:
            young = time.time() - entry.stat().st_mtime < _CREATION_GRACE
            if young and not any((entry / "owners").iterdir()):
                continue
        except FileNotFoundError:
            if young:
                continue
        except OSError:
            continue
        if is_run:
            stop_run_dir(entry)
        else:
            # A shared folder whose processes all died; its server's run folder is reaped
            # by the same rule, since those processes were also its owners.
            remove_tree(entry)
        removed.append(entry)
    return removed


# --- initdb and its cache -------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    # PGDATA, PGPORT and friends would silently change what initdb and postgres do.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


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
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data_dir.parent,
            env=_child_env(),
            umask=0o077,
            check=False,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
        )
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


class EmbeddedCluster:
    """A running throwaway cluster in its own run folder; :meth:`stop` removes everything.

    Example::

        >>> cluster = start_cluster(max_connections=50)
        >>> cluster.socket_dir, cluster.port
        (PosixPath('/tmp/pytest-pgmig-0/4242-1a2b3c4d/pg'), 5432)
        >>> cluster.stop()
    """

    def __init__(
        self,
        *,
        bindir: Path,
        run_dir: Path,
        account: Account | None,
        process: subprocess.Popen[bytes],
        made_by: str,
    ) -> None:
        self.bindir = bindir
        self.run_dir = run_dir
        self.account = account
        self.process = process
        self.made_by = made_by
        self.port = PORT
        self._stopped = False
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
        _kill_postmaster(self.pid, self.data_dir, self.process)
        _remove_run_dir(self.run_dir)
        self._stopped = True
        atexit.unregister(self.stop)

    def __repr__(self) -> str:
        return f"<EmbeddedCluster {self.run_dir} pid={self.pid}>"


def _new_run_dir(base: Path) -> Path:
    while True:
        run_dir = base / f"{os.getpid()}-{secrets.token_hex(4)}"
        try:
            run_dir.mkdir(mode=0o711)
        except FileExistsError:
            continue
        except FileNotFoundError:  # another run's stop just removed the empty base
            base.mkdir(mode=0o711, parents=True, exist_ok=True)
            continue
        add_owner(run_dir)
        return run_dir


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
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=pg_dir,
            env=_child_env(),
            umask=0o077,
            # Own session: Ctrl-C reaches pytest, which stops the server in order.
            start_new_session=True,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
        )


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
    _prepare_base(base, account)
    reap_stale(base)
    run_dir = _new_run_dir(base)
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
            _kill_postmaster(process.pid, pg_dir / "data", process)
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

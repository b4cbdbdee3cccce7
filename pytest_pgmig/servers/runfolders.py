"""Run folders of embedded clusters: where they live, who owns them, stopping and reaping them."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from pytest_pgmig.errors import EmbeddedError
from pytest_pgmig.servers.binaries import Account

_STOP_TIMEOUT = 10.0
_RUN_DIR_RE = re.compile(r"^\d+-[0-9a-f]{8}$")


# A run folder without owner records this young may be one being created right now.
_CREATION_GRACE = 30.0


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


def prepare_base(base: Path, account: Account | None) -> None:
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


def postmaster_pid(data_dir: Path) -> int | None:
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


def kill_postmaster(pid: int, data_dir: Path, process: subprocess.Popen[bytes] | None) -> None:
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


def remove_run_dir(run_dir: Path) -> None:
    remove_tree(run_dir)
    remove_empty_base(run_dir.parent)


def remove_empty_base(base: Path) -> None:
    """Leave no empty base of ours behind (a run creating its folder right now recreates it);
    the user's PGMIG_RUN_BASE stays."""
    if not _users_base(base):
        with contextlib.suppress(OSError):
            base.rmdir()


def stop_run_dir(run_dir: Path) -> None:
    """Stop the postmaster of ``run_dir`` (if running) and delete the folder.

    Works from any process (used for leftovers and for a server shared between processes).
    """
    data_dir = run_dir / "pg" / "data"
    pid = postmaster_pid(data_dir)
    if pid is not None:
        kill_postmaster(pid, data_dir, None)
    remove_run_dir(run_dir)


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


def new_run_dir(base: Path) -> Path:
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

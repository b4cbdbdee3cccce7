"""One server for a run's processes (xdist workers): the first starts it, the last stops it."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from pytest_pgmig.servers import runfolders
from pytest_pgmig.servers.info import ServerHandle, ServerInfo


def _shared_dir(run_dir_key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_dir_key)[:40]
    digest = hashlib.sha256(run_dir_key.encode()).hexdigest()[:8]
    return runfolders.run_base() / f"shared-{safe}-{digest}"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the folder's lock; retry if the last user deleted the folder meanwhile."""
    while True:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = FileLock(str(folder / "lock"), timeout=120)
        with lock:
            if (folder / "lock").exists():
                yield
                return


def _live_users(folder: Path) -> list[int]:
    return runfolders.live_owners(folder)


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "server.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    tmp = folder / f".server.json.{os.getpid()}"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / "server.json")


_held: set[str] = set()


_atexit_registered = False


def _release_all() -> None:
    for key in sorted(_held):
        with contextlib.suppress(Exception):
            release_shared(key)


def acquire_shared(run_dir_key: str, start: Callable[[], ServerHandle]) -> ServerInfo:
    """Join the server shared by every process with this ``run_dir_key`` (e.g. xdist's testrunuid).

    The first process, under a file lock, calls ``start()`` and records the server; the others
    read the record. Each process is registered by pid (dead pids do not count); the last one
    to :func:`release_shared` stops the server. Also released at interpreter exit.
    """
    folder = _shared_dir(run_dir_key)
    with _locked(folder):
        record = _read_record(folder)
        if record is not None and not spec_alive(record["spec"]):
            stop_spec(record["spec"])
            record = None
        if record is None:
            handle = start()
            spec = handle.detach()
            record = {"info": handle.info.to_dict(), "spec": spec}
            _write_record(folder, record)
        runfolders.add_owner(folder)
        if record["spec"].get("kind") == "local":
            # The run folder must outlive whichever process started it.
            runfolders.add_owner(Path(record["spec"]["run_dir"]))
    global _atexit_registered
    _held.add(run_dir_key)
    if not _atexit_registered:
        atexit.register(_release_all)
        _atexit_registered = True
    return ServerInfo.from_dict(record["info"])


def release_shared(run_dir_key: str, *, keep: bool = False) -> None:
    """Leave the shared server; the last live process out stops it and removes its files.

    ``keep=True`` leaves the server running, also when another process is the last one
    out (e.g. so a user can inspect kept schemas); a later run reaps it once no owner
    process lives. :func:`reap_shared` still stops it.
    Calling it again, or without a matching :func:`acquire_shared`, does nothing.
    """
    if run_dir_key not in _held:
        return
    _held.discard(run_dir_key)
    folder = _shared_dir(run_dir_key)
    if not folder.is_dir():
        return
    with _locked(folder):
        runfolders.remove_owner(folder)
        record = _read_record(folder)
        if record is not None and record["spec"].get("kind") == "local":
            runfolders.remove_owner(Path(record["spec"]["run_dir"]))
        if keep:
            (folder / "keep").touch()
        if _live_users(folder) or (folder / "keep").exists():
            return
        if record is not None:
            stop_spec(record["spec"])
        _remove_shared(folder)


def _remove_shared(folder: Path) -> None:
    runfolders.remove_tree(folder)
    runfolders.remove_empty_base(folder.parent)


def reap_shared(run_dir_key: str) -> None:
    """Stop whatever server remains for ``run_dir_key`` (e.g. its workers were killed)."""
    folder = _shared_dir(run_dir_key)
    if not folder.is_dir():
        return
    with _locked(folder):
        record = _read_record(folder)
        if record is not None:
            stop_spec(record["spec"])
        _remove_shared(folder)


def stop_spec(spec: dict[str, Any]) -> None:
    """Stop a server described by a handle's ``spec``, from any process."""
    kind = spec.get("kind")
    if kind == "local":
        runfolders.stop_run_dir(Path(spec["run_dir"]))
    elif kind == "docker":
        with contextlib.suppress(Exception):
            import docker  # type: ignore[import-untyped, unused-ignore]

            client = docker.from_env(timeout=10)
            try:
                client.containers.get(spec["container_id"]).remove(force=True, v=True)
            finally:
                client.close()


def spec_alive(spec: dict[str, Any]) -> bool:
    """Whether the server a spec describes still runs (a container is taken to)."""
    if spec.get("kind") == "local":
        pid = runfolders.postmaster_pid(Path(spec["run_dir"]) / "pg" / "data")
        return pid is not None and runfolders.pid_alive(pid)
    return True

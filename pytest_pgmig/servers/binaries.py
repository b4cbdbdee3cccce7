"""Finding PostgreSQL server binaries, and the unprivileged account a cluster runs as under root."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_pgmig.errors import EmbeddedError

BINARIES = ("initdb", "pg_ctl", "postgres")


SEARCH_ROOTS = (Path("/usr/lib/postgresql"),)


@dataclass(frozen=True)
class Account:
    """The unprivileged account a cluster runs as when the tests run as root."""

    name: str
    uid: int
    gid: int


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

"""Migration formats: which tool a folder belongs to, and its migrations in that tool's order.

Each format is one module with ``detect(entries, texts)`` (why the folder is that tool's, or
None) and ``load(entries, texts)`` (its migrations, in the order the tool applies them).
Everything after this seam sees only `MigrationFile` objects: the engine runs and tracks
every format alike.

Example::

    for migration in load_migrations("db/migrations"):           # detects goose, Flyway, ...
        print(migration.version, migration.filename, migration.down is not None)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_pgmig.engine.files import MigrationFile, load_plain, load_scanned
from pytest_pgmig.engine.formats import (
    dbmate,
    diesel,
    flyway,
    foreign,
    goose,
    prisma,
    sqitch,
    yoyo,
)
from pytest_pgmig.engine.formats.common import (
    ALEMBIC,
    DEFAULT_READING,
    FORMATS,
    Listing,
    Reading,
    Texts,
    listing,
)
from pytest_pgmig.errors import InvalidMigrationFile

__all__ = [
    "ALEMBIC",
    "DEFAULT_READING",
    "FORMATS",
    "TOOL_TABLES",
    "Detection",
    "Reading",
    "detect",
    "load_migrations",
]

_Detector = Callable[[Listing, Texts], "str | None"]
# folder-per-migration formats first: their files hold no markers of their own
_BY_LAYOUT: tuple[tuple[str, _Detector], ...] = (
    ("sqitch", sqitch.detect),
    ("prisma", prisma.detect),
    ("diesel", diesel.detect),
)
_BY_CONTENT: tuple[tuple[str, _Detector], ...] = (
    ("goose", goose.detect),
    ("dbmate", dbmate.detect),
    ("yoyo", yoyo.detect),
    ("flyway", flyway.detect),
)
_RACY_NS = 2_000_000_000  # as in `pytest_pgmig.engine.files`
# tables a tool keeps its own history in (which `MigrationFile.record` writes, or Alembic)
TOOL_TABLES = frozenset({diesel.HISTORY, "alembic_version"})


@dataclass(frozen=True)
class Detection:
    """The format a folder is read as, and why: shown in the report header."""

    format: str
    why: str
    root: Path


def detect(path: str | os.PathLike[str], reading: Reading = DEFAULT_READING) -> Detection:
    """The folder's format: the one `reading` names, or the tool its files belong to.

    Raises `MigrationError` for a folder that mixes two tools' formats or belongs to a
    tool whose migrations are not SQL (Alembic, Liquibase, Go code); what its files hold
    is checked when they are loaded (`load_migrations`).
    """
    return _detection(Path(path).resolve(), reading)[0]


def load_migrations(
    path: str | os.PathLike[str], reading: Reading | None = None
) -> tuple[MigrationFile, ...]:
    """The folder's migrations, in the order its tool applies them (cached on the files'
    names, sizes and mtimes). Raises `MigrationError`, before anything runs, for what the
    tool itself would refuse."""
    return _read(Path(path), reading or DEFAULT_READING)


_Key = tuple[Path, Reading, int]
_detected: dict[tuple[Path, Reading], tuple[Listing, Detection]] = {}
_loaded: dict[_Key, tuple[Listing, tuple[MigrationFile, ...]]] = {}


def _fresh(entries: Listing, cached: Listing) -> bool:
    """Whether a cached reading of `cached` still holds for `entries` (none changed, and
    none so recent that it could change again within the filesystem's time granularity)."""
    now = time.time_ns()
    return cached == entries and all(now - e.mtime >= _RACY_NS for e in entries)


def _detection(folder: Path, reading: Reading) -> tuple[Detection, Listing, Texts]:
    if reading.format == "files":
        return Detection("files", "set", folder), (), Texts()
    home = sqitch.root(folder) if reading.format in ("auto", "sqitch") else None
    root = home or folder
    entries = listing(root)
    texts = Texts()
    hit = _detected.get((root, reading))
    if hit is not None and _fresh(entries, hit[0]):
        return hit[1], entries, texts
    found = _detect(root, entries, texts, reading.format)
    if len(_detected) > 64:
        _detected.clear()
    _detected[(root, reading)] = (entries, found)
    return found, entries, texts


def _read(path: Path, reading: Reading) -> tuple[MigrationFile, ...]:
    folder = path.resolve()
    if reading.format == "files":
        return load_plain(folder)
    now = time.time_ns()
    found, entries, texts = _detection(folder, reading)
    if found.format == "files":
        # the plain reader's own cache, from this scan: a folder is listed once a call
        sql = tuple(e[:4] for e in entries if "/" not in e.rel and e.rel.endswith(".sql"))
        return load_scanned(found.root, sql, now)
    # goose's ENVSUB reads the environment: a changed variable is a changed migration
    env = hash(frozenset(os.environ.items())) if found.format == "goose" else 0
    key = (found.root, reading, env)
    hit = _loaded.get(key)
    if hit is not None and _fresh(entries, hit[0]):
        return hit[1]
    result = tuple(_load(found.format, entries, texts, reading))
    if len(_loaded) > 64:
        _loaded.clear()
    _loaded[key] = (entries, result)
    return result


def _detect(root: Path, entries: Listing, texts: Texts, requested: str) -> Detection:
    if requested != "auto":
        return Detection(requested, "set", root)
    for name, detector in _BY_LAYOUT:
        why = detector(entries, texts)
        if why is not None:
            return Detection(name, why, root)
    refused = foreign.refuse(entries, texts)
    if refused is not None:
        raise refused
    found = [(name, why) for name, detector in _BY_CONTENT if (why := detector(entries, texts))]
    if len(found) > 1:
        (one, why_one), (other, why_other) = found[:2]
        raise InvalidMigrationFile(
            f"Migrations folder {str(root)!r} mixes formats: {one} ({why_one}) and {other} "
            f"({why_other}).",
            hint="Keep one tool's migrations in a folder, or name the format with "
            "--pgmig-format (ini pgmig_format) if the detection is wrong.",
        )
    if found:
        return Detection(found[0][0], found[0][1], root)
    return Detection("files", "plain .sql files", root)


def _load(name: str, entries: Listing, texts: Texts, reading: Reading) -> list[MigrationFile]:
    if name == "flyway":
        return flyway.load(entries, texts, dict(reading.placeholders))
    loaders = {
        "goose": goose.load,
        "dbmate": dbmate.load,
        "prisma": prisma.load,
        "diesel": diesel.load,
        "sqitch": sqitch.load,
        "yoyo": yoyo.load,
    }
    return loaders[name](entries, texts)

"""pgmig.lock: the checksum of every migration once locked, to catch edits of applied files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytest_pgmig.engine.files import checksum, decode, read_bytes
from pytest_pgmig.errors import MigrationError

LOCK_NAME = "pgmig.lock"
_HEADER = (
    "# pgmig.lock: sha256 of each migration, in the engine's checksum (CRLF to LF, stripped).\n"
    "# Written and extended by `pytest --pgmig-lock`; commit it. An edited or deleted locked\n"
    "# migration fails the run: add a new migration instead of editing an applied one.\n"
)


@dataclass(frozen=True)
class Drift:
    """A locked migration that no longer matches: `current` is None when it was deleted."""

    filename: str
    locked: str
    current: str | None


def current_checksums(folder: Path) -> dict[str, str]:
    """The engine's checksum of every `.sql` file in `folder`, by file name."""
    sums: dict[str, str] = {}
    for path in sorted(folder.glob("*.sql")):
        if path.is_file() and not path.name.startswith("."):
            sums[path.name] = checksum(decode(read_bytes(path), path.name))
    return sums


def read(folder: Path) -> dict[str, str] | None:
    """The locked checksums of `folder`, or None when it has no lock file."""
    lock = folder / LOCK_NAME
    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    locked: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, filename = line.partition("  ")
        if len(digest) != 64 or not filename.strip():
            raise MigrationError(
                f"{lock}:{number}: expected '<sha256>  <file name>', got {raw!r}.",
                hint=f"Fix the line, or delete {LOCK_NAME} and run `pytest --pgmig-lock`.",
            )
        locked[filename.strip()] = digest
    return locked


def check(folder: Path) -> list[Drift]:
    """Locked migrations of `folder` that were edited or deleted (new files are fine)."""
    locked = read(folder)
    if not locked:
        return []
    current = current_checksums(folder)
    return [
        Drift(name, digest, current.get(name))
        for name, digest in sorted(locked.items())
        if current.get(name) != digest
    ]


def write(folder: Path) -> list[str]:
    """Add every migration not yet locked to `folder`'s lock file; returns the names added.

    Entries already locked are never rewritten: an edited migration stays a failure until
    the edit is undone (or the user deletes its line on purpose).
    """
    locked = read(folder) or {}
    added = {n: s for n, s in current_checksums(folder).items() if n not in locked}
    if not added and (folder / LOCK_NAME).exists():
        return []
    entries = {**locked, **added}
    body = "".join(f"{entries[name]}  {name}\n" for name in sorted(entries))
    tmp = folder / f".{LOCK_NAME}.tmp"
    tmp.write_text(_HEADER + body, encoding="utf-8")
    tmp.replace(folder / LOCK_NAME)
    return sorted(added)


def describe(folder: Path, drift: list[Drift]) -> str:
    """The failure text for drift: each file with its locked and current checksum, and the fix."""
    lines = [f"pgmig.lock: {len(drift)} locked migration(s) in {folder} changed:"]
    for d in drift:
        now = d.current if d.current is not None else "(file deleted)"
        lines.append(f"  {d.filename}: locked {d.locked}, current {now}")
    lines.append(
        "An applied migration must not change: restore it (e.g. `git checkout -- <file>`) "
        "and put the change in a new migration. If the change is deliberate and no database "
        f"has applied it, delete its line from {LOCK_NAME} and run `pytest --pgmig-lock`."
    )
    return "\n".join(lines)

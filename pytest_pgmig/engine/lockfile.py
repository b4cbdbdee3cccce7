"""pgmig.lock: the checksum of every migration once locked, to catch edits of applied files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytest_pgmig.engine.files import checksum, decode, read_bytes
from pytest_pgmig.engine.formats import Reading, detect, load_migrations
from pytest_pgmig.errors import InvalidMigrationFile

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


def current_checksums(
    folder: Path, reading: Reading | None = None
) -> tuple[dict[str, str], set[str]]:
    """The engine's checksum of every migration of `folder` and of each down kept in a file
    of its own, by name; and the names of repeatable migrations (which may change). A plain
    folder's are its `.sql` files, by file name."""
    sums: dict[str, str] = {}
    if detect(folder, reading or Reading()).format == "files":
        for path in sorted(folder.glob("*.sql")):
            if path.is_file() and not path.name.startswith("."):
                sums[path.name] = checksum(decode(read_bytes(path), path.name))
        return sums, set()
    repeatable = set()
    for migration in load_migrations(folder, reading):
        sums[migration.filename] = migration.checksum
        if migration.repeatable:
            repeatable.add(migration.filename)
        down = migration.down
        if down is not None and down.path != migration.path:
            sums[down.name] = checksum(down.text)
    return sums, repeatable


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
            raise InvalidMigrationFile(
                f"{lock}:{number}: expected '<sha256>  <file name>', got {raw!r}.",
                hint=f"Fix the line, or delete {LOCK_NAME} and run `pytest --pgmig-lock`.",
            )
        locked[filename.strip()] = digest
    return locked


def check(folder: Path, reading: Reading | None = None) -> list[Drift]:
    """Locked migrations of `folder` that were edited or deleted (new files are fine, and
    so is a changed repeatable migration: its tool applies it again)."""
    locked = read(folder)
    if not locked:
        return []
    current, repeatable = current_checksums(folder, reading)
    return [
        Drift(name, digest, current.get(name))
        for name, digest in sorted(locked.items())
        if current.get(name) != digest and name not in repeatable
    ]


def write(folder: Path, reading: Reading | None = None) -> list[str]:
    """Add every migration not yet locked to `folder`'s lock file; returns the names added.

    Entries already locked are never rewritten (an edited migration stays a failure until
    the edit is undone, or the user deletes its line on purpose), but for a repeatable
    migration's, which records its new checksum.
    """
    locked = read(folder) or {}
    current, repeatable = current_checksums(folder, reading)
    added = {
        n: s for n, s in current.items() if n not in locked or (n in repeatable and locked[n] != s)
    }
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

"""dbmate: ``-- migrate:up`` / ``-- migrate:down`` blocks in one file a version."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_pgmig.engine.files import MigrationFile, Script
from pytest_pgmig.engine.formats import common
from pytest_pgmig.engine.formats.common import Listing, Texts, keep_lines

# as dbmate's own expressions: a marker at the very start of a line, options after it
_MARKER = re.compile(r"^--\s*migrate:(up|down)(?=\s|$)(.*)$")
_FILE = re.compile(r"(\d+).*\.sql")
_NO_TRANSACTION = re.compile(r"(?:^|\s)transaction:false(?:\s|$)")


def detect(entries: Listing, texts: Texts) -> str | None:
    """Why `entries` is a dbmate folder (a ``-- migrate:up`` line), or None."""
    for entry in entries:
        lines = texts.peek(entry).split("\n") if entry.top and entry.rel.endswith(".sql") else []
        if any(_MARKER.match(line) for line in lines):
            return f"'-- migrate:up' in {entry.rel}"
    return None


def load(entries: Listing, texts: Texts) -> list[MigrationFile]:
    """The folder's migrations in dbmate's order (file name); other files are ignored."""
    found: dict[object, str] = {}
    migrations = []
    for entry in entries:
        match = _FILE.fullmatch(entry.rel) if entry.top else None
        if match is None:
            continue
        version = match.group(1)
        common.claim(found, version, entry.rel, "dbmate", version)
        migrations.append(_read(entry.rel, entry.path, texts(entry), version))
    return migrations


def _read(name: str, path: Path, text: str, version: str) -> MigrationFile:
    lines = text.split("\n")
    up: list[int] = []
    down: list[int] = []
    current: list[int] | None = None
    options: dict[str, str] = {}
    for number, line in enumerate(lines):
        marker = _MARKER.match(line)
        if marker is not None:
            current = up if marker.group(1) == "up" else down
            options[marker.group(1)] = marker.group(2)
        elif current is not None:
            current.append(number)
        elif line.strip() and not line.lstrip().startswith("--"):
            raise _refused(name, f"line {number + 1} holds SQL outside the up and down blocks")
    if "up" not in options:
        raise _refused(name, "it has no '-- migrate:up' block")
    reason = None
    if _NO_TRANSACTION.search(options["up"]):
        reason = "transaction:false on -- migrate:up"
    down_script = Script(f"{name} (migrate:down)", path, keep_lines(text, down)) if down else None
    return common.migration(
        name, path, version, keep_lines(text, up), down=down_script, no_transaction=reason
    )


def _refused(name: str, what: str) -> Exception:
    return common.refused(
        "dbmate",
        name,
        what,
        "Write the file as dbmate's documentation does: '-- migrate:up' then its SQL, then "
        "'-- migrate:down' then the SQL that undoes it.",
    )

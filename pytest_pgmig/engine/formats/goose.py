"""goose: ``-- +goose Up`` / ``Down`` sections in one file a version, read as goose reads them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pytest_pgmig.engine.files import MigrationFile, Script
from pytest_pgmig.engine.formats.common import (
    Listing,
    Texts,
    claim,
    failure,
    keep_lines,
    migration,
    refused,
    substitute_env,
)

ANNOTATION = re.compile(r"^\s*--\s*\+goose\s+(.*?)\s*$", re.IGNORECASE)
_VERSION = re.compile(r"(\d+)_[^/]*\.(sql|go)")


def detect(entries: Listing, texts: Texts) -> str | None:
    """Why `entries` is a goose folder (a ``-- +goose Up`` line), or None."""
    for entry in entries:
        if entry.top and entry.rel.endswith(".sql"):
            for line in texts.peek(entry).split("\n"):
                match = ANNOTATION.match(line)
                if match and match.group(1).lower() == "up":
                    return f"'-- +goose Up' in {entry.rel}"
    return None


@dataclass
class _Sections:
    up: list[int] = field(default_factory=list)
    down: list[int] = field(default_factory=list)
    envsub: list[int] = field(default_factory=list)
    no_transaction: int | None = None


def load(entries: Listing, texts: Texts) -> list[MigrationFile]:
    """The folder's migrations in goose's order: by version number, Go migrations refused."""
    found: dict[int, MigrationFile] = {}
    names: dict[object, str] = {}
    for entry in entries:
        match = _VERSION.fullmatch(entry.rel) if entry.top else None
        if match is None or entry.rel.endswith("_test.go"):
            continue
        version = int(match.group(1))
        if match.group(2) == "go":
            raise failure(
                f"goose migration {entry.path}",
                f"version {version} is a Go migration, which goose runs compiled into your "
                "program: pytest-pgmig runs SQL only, and will not apply the versions after it "
                "as if it had run",
                "Write this migration in SQL (a goose .sql file), or apply the folder in a "
                "fixture of your own with goose's Go API.",
                file=entry.rel,
            )
        claim(names, version, entry.rel, "goose", str(version))
        found[version] = _read(entry.rel, entry.path, texts(entry))
    return [found[v] for v in sorted(found)]


def _read(name: str, path: Path, text: str) -> MigrationFile:
    sections = _parse(name, text)
    up = keep_lines(text, sections.up)
    down_text = keep_lines(text, sections.down)
    env = dict(os.environ)

    def where(line: int) -> str:
        return f"goose migration {name} line {line + 1}"

    if sections.envsub:
        up = substitute_env(up, sections.envsub, env, where)
        down_text = substitute_env(down_text, sections.envsub, env, where)
    reason = None
    if sections.no_transaction is not None:
        reason = f"line {sections.no_transaction + 1}: -- +goose NO TRANSACTION"
    down = Script(f"{name} (Down section)", path, down_text) if sections.down else None
    version = str(int(name.split("_", 1)[0]))
    return migration(name, path, version, up, down=down, no_transaction=reason)


def _parse(name: str, text: str) -> _Sections:
    """The line numbers of each section, as goose's parser finds them."""
    lines = text.split("\n")
    if not any((m := ANNOTATION.match(line)) and m.group(1).lower() == "up" for line in lines):
        raise failure(
            f"goose migration {name}",
            "it has no '-- +goose Up' annotation, which goose requires in every .sql file",
            "Add '-- +goose Up' above its SQL (and '-- +goose Down' above the SQL that undoes "
            "it), or move the file out of the folder.",
            file=name,
        )
    sections = _Sections()
    current: list[int] | None = None
    envsub = False
    begin: int | None = None
    for number, line in enumerate(lines):
        match = ANNOTATION.match(line)
        if match is None:
            if current is not None:
                current.append(number)
                if envsub:
                    sections.envsub.append(number)
            elif line.strip() and not line.lstrip().startswith("--"):
                raise _bad(name, number, "SQL before '-- +goose Up'")
            continue
        command = match.group(1).upper().split()
        head = " ".join(command)
        if head == "UP":
            if sections.up or current is sections.down:
                raise _bad(name, number, "a second '-- +goose Up', or Up after Down")
            current = sections.up
        elif head == "DOWN":
            current = sections.down
        elif head == "NO TRANSACTION":
            sections.no_transaction = number
        elif head in ("ENVSUB ON", "ENVSUB OFF"):
            envsub = head == "ENVSUB ON"
        elif head == "STATEMENTBEGIN":
            begin = number
        elif head == "STATEMENTEND":
            # the statement splitter already keeps a body's semicolons (quotes, dollar
            # quotes, BEGIN ATOMIC): the pair is only checked, as goose checks it
            if begin is None:
                raise _bad(name, number, "'-- +goose StatementEnd' without StatementBegin")
            begin = None
        else:
            raise _bad(name, number, f"unknown annotation '-- +goose {match.group(1)}'")
    if begin is not None:
        raise _bad(name, begin, "'-- +goose StatementBegin' is never ended")
    return sections


def _bad(name: str, line: int, what: str) -> Exception:
    return refused(
        "goose",
        name,
        what,
        "Fix the annotations as goose's documentation writes them: '-- +goose Up', then "
        "'-- +goose Down'; StatementBegin/StatementEnd in pairs.",
        at=f"line {line + 1}",
    )

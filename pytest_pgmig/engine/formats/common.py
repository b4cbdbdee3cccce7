"""What every format reader shares: settings, listing a folder, building a migration."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pytest_pgmig.engine.files import (
    MigrationFile,
    Script,
    checksum,
    decode,
    plan_for,
    read_bytes,
)
from pytest_pgmig.errors import InvalidMigrationFile, MigrationError

# the Reading of an Alembic history (its path: alembic.ini): applied by Alembic, not read here
ALEMBIC = "alembic"

FORMATS = ("auto", "files", "goose", "dbmate", "prisma", "diesel", "flyway", "sqitch", "yoyo")


@dataclass(frozen=True)
class Reading:
    """How to read a migrations folder: its ``format`` (``auto`` detects it from the files)
    and the values of Flyway-style ``${name}`` placeholders."""

    format: str = "auto"
    placeholders: tuple[tuple[str, str], ...] = ()

    @property
    def alembic(self) -> bool:
        """Whether the set is an Alembic history, applied by Alembic itself."""
        return self.format == ALEMBIC


DEFAULT_READING = Reading()


class Entry(NamedTuple):
    """A file under a migrations folder: its path relative to the folder (with ``/``), what
    says whether it changed, and the folder (a tuple: listings compare fast, as the
    up-to-date check compares one on every call)."""

    rel: str
    mtime: int
    size: int
    inode: int
    root: Path

    @property
    def path(self) -> Path:
        return self.root / self.rel

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]

    @property
    def top(self) -> bool:
        """Whether it lies in the folder itself, not in a subfolder."""
        return "/" not in self.rel


Listing = tuple[Entry, ...]

_DEPTH = 3  # Flyway scans locations recursively; the other tools use one level of folders


def listing(folder: Path) -> Listing:
    """Every file under `folder` down to a few levels, by relative path; dot names skipped."""
    found: list[Entry] = []

    def walk(where: str, prefix: str, depth: int) -> None:
        try:
            entries = list(os.scandir(where))
        except (FileNotFoundError, NotADirectoryError):
            if depth == 0:
                raise InvalidMigrationFile(
                    f"Migrations folder {where!r} does not exist or is not a folder.",
                    hint="Create it, or point the option at the folder that holds your migrations.",
                ) from None
            return
        for entry in entries:
            if entry.name.startswith(".") or entry.name in ("node_modules", "__pycache__"):
                continue
            if entry.is_dir():
                if depth < _DEPTH:
                    walk(entry.path, f"{prefix}{entry.name}/", depth + 1)
            elif entry.is_file():
                stat = entry.stat()
                rel = f"{prefix}{entry.name}"
                found.append(Entry(rel, stat.st_mtime_ns, stat.st_size, stat.st_ino, folder))

    walk(str(folder), "", 0)
    return tuple(sorted(found))


class Texts:
    """The decoded text of a listing's files, each read once."""

    def __init__(self) -> None:
        self._texts: dict[Path, str] = {}

    def __call__(self, entry: Entry) -> str:
        text = self._texts.get(entry.path)
        if text is None:
            text = self._texts[entry.path] = decode(read_bytes(entry.path), entry.rel)
        return text

    def peek(self, entry: Entry) -> str:
        """The text for detection: ``""`` for a file too large or not text (never raises)."""
        if entry.size > 1 << 20:
            return ""
        try:
            return self(entry)
        except MigrationError:
            return ""


def migration(
    name: str,
    path: Path,
    version: str,
    up: str,
    *,
    down: Script | None = None,
    verify: Script | None = None,
    no_transaction: str | None = None,
    repeatable: bool = False,
    record: str = "",
) -> MigrationFile:
    """A migration as the engine runs it. `no_transaction` is why the tool runs it outside a
    transaction (``-- +goose NO TRANSACTION``), or None to decide from its statements."""
    plan = plan_for(up, name)
    if no_transaction is not None and plan.transactional:
        plan = dataclasses.replace(plan, script=up, transactional=False, reason=no_transaction)
    return MigrationFile(
        name, path, version, up, checksum(up), plan, down, verify, repeatable, record
    )


def keep_lines(text: str, lines: Iterable[int]) -> str:
    """`text` with every line not in `lines` (0-based) emptied: positions of the kept lines
    move, but their line numbers stay the file's, so errors point into the file."""
    keep = set(lines)
    return "\n".join(line if number in keep else "" for number, line in enumerate(text.split("\n")))


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


def substitute_env(
    text: str, lines: Iterable[int], env: Mapping[str, str], where: Callable[[int], str]
) -> str:
    """``${VAR}`` (``${VAR:-default}``, ``${VAR-default}``) replaced on `lines` from `env`, as
    goose's ENVSUB does; a variable without a value and without a default raises."""
    chosen = set(lines)
    out = []
    for number, line in enumerate(text.split("\n")):
        if number in chosen and "${" in line:
            line = _VARIABLE.sub(functools.partial(_value, env=env, where=where(number)), line)
        out.append(line)
    return "\n".join(out)


def _value(match: re.Match[str], *, env: Mapping[str, str], where: str) -> str:
    name, operator, default = match.groups()
    value = env.get(name)
    if (operator == ":-" and not value) or (operator == "-" and value is None):
        value = default
    if value is None:
        raise InvalidMigrationFile(
            f"{where}: environment variable {name} is not set (ENVSUB is on for this line).",
            hint=f"Set {name} in the environment of the test run, or give a default as "
            f"${{{name}:-value}}.",
        )
    return value


def claim(seen: dict[object, str], key: object, name: str, tool: str, version: str) -> None:
    """Record `name` as the migration of version `key`; a second one is what each tool refuses."""
    if key in seen:
        raise failure(
            f"{tool} migration {name}",
            f"{seen[key]} has the same version {version}; {tool} would refuse the folder",
            "Give each migration its own version.",
            file=name,
        )
    seen[key] = name


def failure(where: str, what: str, hint: str, *, file: str | None = None) -> MigrationError:
    """A folder or file the tool itself would refuse: where, what rule, and the fix."""
    return InvalidMigrationFile(f"{where}: {what}", migration_file=file, hint=hint)


def refused(tool: str, name: str, what: str, fix: str, *, at: str = "") -> MigrationError:
    """A file `tool` itself would refuse (`at` where in it): what rule, and the fix."""
    where = f"{tool} migration {name}{f' {at}' if at else ''}"
    return failure(where, f"{what}; {tool} would refuse it", fix, file=name)

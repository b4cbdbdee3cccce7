"""Discovering, reading, ordering and checksumming migration files (cached, no database)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from pytest_pgmig.engine.sqltext import ScanError, ScriptPlan, analyze, excerpt, line_of
from pytest_pgmig.errors import InvalidMigrationFile, MigrationError

ACCEPTED_PATTERNS = (
    "001_name.sql, V1__name.sql (Flyway, dotted versions such as V1.2__name.sql too), "
    "20251025120000_name.sql (or 20251025_120000_name.sql, as create_migration() writes it), "
    "each optionally as a NAME.up.sql / NAME.down.sql pair"
)
_PATTERNS = (
    re.compile(r"(\d{8})_(\d{6})_.+\.sql"),  # create_migration(): date_time_name
    re.compile(r"(\d+)_.+\.sql"),  # 001_name, 20251025120000_name
    re.compile(r"V(\d+(?:[._]\d+)*)__.+\.sql"),  # Flyway: V1__, V1.1__, V1_1__
)
# sqlx, golang-migrate, Atlas and pop keep a reversible migration as two files
UP_SUFFIX = ".up.sql"
DOWN_SUFFIX = ".down.sql"
_BOM = b"\xef\xbb\xbf"
# A file modified this recently may change again within the filesystem's timestamp
# granularity without its size changing, so it is re-read instead of trusted from cache.
_RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class Script:
    """A script that goes with a migration without being one: its down, or its verification.

    ``name`` is what messages call it (``002_x.down.sql``, ``002_x.sql (Down section)``),
    ``path`` the file it comes from, ``text`` the SQL (other parts of a shared file blanked,
    so line numbers are the file's).
    """

    name: str
    path: Path
    text: str


@dataclass(frozen=True)
class MigrationFile:
    """One migration, read and analysed.

    ``filename`` is its name in the tracking table (a file name, or a tool's name for it:
    a Prisma or diesel folder, a sqitch change), ``path`` the file its up comes from,
    ``content`` the up's text (BOM dropped, line endings turned to LF), ``checksum``
    pgdbm's checksum of it and ``plan`` how to run it (see `pytest_pgmig.engine.sqltext.analyze`).
    """

    filename: str
    path: Path
    version: str
    content: str
    checksum: str
    plan: ScriptPlan = field(repr=False)
    down: Script | None = None
    """Its reverse (``NAME.down.sql`` beside ``NAME.up.sql``, or a tool's own), never run as a
    migration; a down of comments only marks an irreversible migration."""
    verify: Script | None = None
    """A script that must run without error once the migration is applied (sqitch's verify)."""
    repeatable: bool = False
    """Applied again whenever its checksum changes, after the versioned ones (Flyway's ``R__``)."""
    record: str = ""
    """SQL its tool runs beside it, in its transaction: the tool's own history row, for
    migrations that use that table (diesel's ``__diesel_schema_migrations``)."""

    @property
    def key(self) -> tuple[int, ...]:
        """The version as numbers, the order migrations are applied in (see `version_key`)."""
        return version_key(self.version)


def checksum(text: str) -> str:
    """pgdbm 0.5.0's checksum: sha256 of the text with CRLF turned to LF, stripped.

    >>> checksum("SELECT 1;\\r\\n") == checksum("SELECT 1;")
    True
    """
    return hashlib.sha256(text.replace("\r\n", "\n").strip().encode("utf-8")).hexdigest()


def parse_version(filename: str) -> str | None:
    """The version of a migration file name, or ``None`` if it matches no accepted pattern.

    >>> [parse_version(n) for n in ("001_a.sql", "V2__b.sql", "20251025_120000_c.sql", "x.sql")]
    ['001', '2', '20251025120000', None]
    >>> parse_version("V1_2__b.sql"), parse_version("0003_c.up.sql")
    ('1.2', '0003')
    """
    if filename.endswith(DOWN_SUFFIX):
        return None
    if filename.endswith(UP_SUFFIX):
        filename = filename[: -len(UP_SUFFIX)] + ".sql"
    for pattern in _PATTERNS:
        match = pattern.fullmatch(filename)
        if match:
            return "".join(match.groups()).replace("_", ".")
    return None


def version_key(version: str) -> tuple[int, ...]:
    """A version's numbers, compared as numbers; trailing zeros do not count (as in Flyway).

    >>> sorted(["10", "2", "1.10", "1.2", "1.2.0"], key=version_key)
    ['1.2', '1.2.0', '1.10', '2', '10']
    """
    parts = [int(part) for part in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def decode(data: bytes, filename: str) -> str:
    """Decode a migration file's bytes: UTF-8, BOM dropped, line endings turned to LF."""
    skipped = len(_BOM) if data.startswith(_BOM) else 0
    try:
        text = data[skipped:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + skipped
        line = data.count(b"\n", 0, offset) + 1
        raise InvalidMigrationFile(
            f"Migration '{filename}' is not valid UTF-8 (byte offset {offset}, line {line}).",
            migration_file=filename,
            line=line,
            hint="Save the file as UTF-8 and run the migrations again.",
        ) from None
    # The same universal-newline translation as pgdbm's Path.read_text().
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_bytes(path: Path) -> bytes:
    """A migration file's bytes; an unreadable file is a `MigrationError` naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidMigrationFile(
            f"Migration '{path.name}' cannot be read: {exc.strerror or exc}.",
            migration_file=path.name,
            hint=f"Check the permissions of {path} (the test run must be able to read it).",
        ) from None


def read_migration(path: Path) -> MigrationFile:
    """Read and analyse one migration file (no caching; see `load_plain`)."""
    filename = path.name
    version = parse_version(filename)
    if version is None:
        raise _bad_names(path.parent, [filename])
    content = decode(read_bytes(path), filename)
    return MigrationFile(
        filename, path, version, content, checksum(content), plan_for(content, filename)
    )


def read_script(path: Path, name: str | None = None) -> Script:
    """A down or verify file, read and decoded (errors name it)."""
    return Script(name or path.name, path, decode(read_bytes(path), path.name))


def plan_for(content: str, filename: str | None = None) -> ScriptPlan:
    """`sqltext.analyze` with its errors turned into a `MigrationError` naming the line."""
    try:
        return analyze(content)
    except ScanError as exc:
        line = line_of(content, exc.position)
        raise InvalidMigrationFile(
            f"Migration '{filename or '<text>'}' line {line}: {exc}.",
            migration_file=filename,
            line=line,
            excerpt=excerpt(content, exc.position),
            hint="Fix the file and run the migrations again.",
        ) from None


Signature = tuple[tuple[str, int, int, int], ...]
_file_cache: dict[Path, tuple[tuple[int, int, int], MigrationFile]] = {}
_folder_cache: dict[Path, tuple[Signature, tuple[MigrationFile, ...]]] = {}


def load_plain(path: str | os.PathLike[str]) -> tuple[MigrationFile, ...]:
    """All migrations of a plain folder, in order, read once and cached on names, sizes and
    mtimes (`pytest_pgmig.engine.formats.load_migrations` reads every format).

    Only ``*.sql`` files count; dotfiles, other files and folders are ignored; a
    ``NAME.down.sql`` is attached to its ``NAME.up.sql`` (`MigrationFile.down`). Raises
    `MigrationError`, before anything runs, for a missing folder, a ``.sql`` file whose name
    matches no accepted pattern, a down file without its up, two files sharing a version,
    invalid UTF-8 or unterminated SQL.

    Example::

        for migration in load_plain("migrations"):
            print(migration.version, migration.filename, migration.checksum[:12])
    """
    folder = Path(path).resolve()
    return load_scanned(folder, *_scan(folder))


def load_scanned(folder: Path, signature: Signature, now: int) -> tuple[MigrationFile, ...]:
    """`load_plain` of a folder already scanned: its ``.sql`` files as (name, mtime, size,
    inode) by name, and the time of the scan."""
    racy = any(now - mtime < _RACY_NS for _, mtime, _, _ in signature)
    cached = _folder_cache.get(folder)
    if cached is not None and cached[0] == signature and not racy:
        return cached[1]
    ups, downs = _check_names(folder, signature)
    migrations = []
    for name, mtime, size, inode in signature:
        if name in downs:
            continue
        migration = _read_cached(folder / name, (mtime, size, inode), now)
        down = name[: -len(UP_SUFFIX)] + DOWN_SUFFIX if name in ups else None
        if down in downs:
            migration = dataclasses.replace(migration, down=read_script(folder / down))
        migrations.append(migration)
    result = check_order(migrations)
    _folder_cache[folder] = (signature, result)
    return result


def _scan(folder: Path) -> tuple[Signature, int]:
    """The folder's ``.sql`` files as (name, mtime, size, inode), by name; and the time now."""
    try:
        entries = [
            entry
            for entry in os.scandir(folder)
            if entry.name.endswith(".sql") and not entry.name.startswith(".") and entry.is_file()
        ]
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidMigrationFile(
            f"Migrations folder {str(folder)!r} does not exist or is not a folder.",
            hint="Create it, or pass the folder that holds your .sql files as migrations_path.",
        ) from None
    now = time.time_ns()
    signature = []
    for entry in entries:
        stat = entry.stat()
        signature.append((entry.name, stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(sorted(signature)), now


def _check_names(folder: Path, signature: Signature) -> tuple[set[str], set[str]]:
    """The up and down files' names; raise for a name no pattern accepts or a lone down."""
    downs = {name for name, *_ in signature if name.endswith(DOWN_SUFFIX)}
    bad = [name for name, *_ in signature if name not in downs and parse_version(name) is None]
    if bad:
        raise _bad_names(folder, bad)
    ups = {name for name, *_ in signature if name.endswith(UP_SUFFIX)}
    orphans = sorted(d for d in downs if d[: -len(DOWN_SUFFIX)] + UP_SUFFIX not in ups)
    if orphans:
        raise InvalidMigrationFile(
            f"Down migration '{orphans[0]}' in {str(folder)!r} has no up migration beside it "
            f"(expected '{orphans[0][: -len(DOWN_SUFFIX)]}{UP_SUFFIX}').",
            migration_file=orphans[0],
            hint="Restore or rename its .up.sql file, or delete the .down.sql file.",
        )
    return ups, downs


def _read_cached(file_path: Path, stamp: tuple[int, int, int], now: int) -> MigrationFile:
    """One file, from the cache while its mtime, size and inode are unchanged (and not new)."""
    hit = _file_cache.get(file_path)
    if hit is not None and hit[0] == stamp and now - stamp[0] >= _RACY_NS:
        return hit[1]
    migration = read_migration(file_path)
    _file_cache[file_path] = (stamp, migration)
    return migration


_fingerprints: dict[int, tuple[tuple[MigrationFile, ...], str]] = {}


def fingerprint(migrations: tuple[MigrationFile, ...]) -> str:
    """sha256 of ``name:checksum`` lines in name order (what the tracking table should hold).

    Cached per `load_migrations` result, so the up-to-date check costs no hashing.
    """
    hit = _fingerprints.get(id(migrations))
    if hit is not None and hit[0] is migrations:
        return hit[1]
    ordered = sorted(migrations, key=lambda m: m.filename)
    lines = [f"{m.filename}:{m.checksum}" for m in ordered]
    digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    if len(_fingerprints) > 64:
        _fingerprints.clear()
    _fingerprints[id(migrations)] = (migrations, digest)
    return digest


def check_order(migrations: list[MigrationFile]) -> tuple[MigrationFile, ...]:
    """Sort by version, numbers compared as numbers; raise `MigrationError` if one repeats.

    Name order may differ (``V2__`` sorts after ``V10__`` as text): files are applied by
    version, as Flyway, sqlx and golang-migrate do, and tracked by file name, as pgdbm does.
    """
    by_version = sorted(migrations, key=lambda m: (m.key, m.filename))
    for before, after in itertools.pairwise(by_version):
        if before.key == after.key:
            raise InvalidMigrationFile(
                f"Migration files '{before.filename}' and '{after.filename}' share version "
                f"{'.'.join(map(str, before.key))}.",
                migration_file=after.filename,
                hint="Give each file its own version number, then run the migrations again.",
            )
    return tuple(by_version)


def _bad_names(folder: Path, names: list[str]) -> MigrationError:
    listed = ", ".join(repr(name) for name in names)
    return InvalidMigrationFile(
        f"Migration file name(s) {listed} in {str(folder)!r} match no accepted pattern: "
        f"{ACCEPTED_PATTERNS}.",
        migration_file=names[0],
        hint="Rename the file(s), or move them out of the migrations folder.",
    )

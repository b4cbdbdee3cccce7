"""Prisma Migrate: ``<timestamp>_<name>/migration.sql`` folders, applied in folder-name order."""

from __future__ import annotations

import re

from pytest_pgmig.engine.files import MigrationFile
from pytest_pgmig.engine.formats.common import Listing, Texts, failure, migration

LOCK = "migration_lock.toml"
_PROVIDER = re.compile(r'^\s*provider\s*=\s*"([^"]*)"', re.MULTILINE)


def detect(entries: Listing, texts: Texts) -> str | None:
    """Why `entries` is a Prisma folder (its lock file, or ``*/migration.sql``), or None."""
    for entry in entries:
        if entry.rel == LOCK:
            return LOCK
    for entry in entries:
        if entry.rel.count("/") == 1 and entry.name == "migration.sql":
            return f"{entry.rel} (a folder per migration)"
    return None


def load(entries: Listing, texts: Texts) -> list[MigrationFile]:
    """Each ``<folder>/migration.sql`` in folder-name order, as ``prisma migrate deploy``."""
    for entry in entries:
        if entry.rel == LOCK:
            provider = _PROVIDER.search(texts(entry))
            if provider is not None and provider.group(1) not in ("postgresql", "postgres"):
                raise failure(
                    f"Prisma migrations {entry.path.parent}",
                    f'{LOCK} says provider = "{provider.group(1)}", not "postgresql"',
                    "Point pytest-pgmig at your PostgreSQL migrations folder.",
                    file=LOCK,
                )
    folders = sorted({e.rel.split("/", 1)[0] for e in entries if e.rel.count("/") == 1})
    migrations = []
    for folder in folders:
        script = next((e for e in entries if e.rel == f"{folder}/migration.sql"), None)
        if script is None:
            raise failure(
                f"Prisma migration folder {folder}",
                "it has no migration.sql, which prisma migrate deploy would refuse",
                "Restore its migration.sql, or delete the folder.",
                file=folder,
            )
        version = folder.split("_", 1)[0]
        migrations.append(migration(folder, script.path, version, texts(script)))
    return migrations

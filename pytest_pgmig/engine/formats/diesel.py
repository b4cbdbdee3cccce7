"""diesel: ``<version>_<name>/up.sql`` (and ``down.sql``, ``metadata.toml``) folders."""

from __future__ import annotations

import re

from pytest_pgmig.engine.files import MigrationFile, Script
from pytest_pgmig.engine.formats.common import Entry, Listing, Texts, claim, failure, migration

# diesel records each migration in a table of its own, which some migrations use (a
# trigger forbidding diesel's CLI): kept as diesel keeps it, beside the engine's tracking
HISTORY = "__diesel_schema_migrations"
_RECORD = (
    f"CREATE TABLE IF NOT EXISTS {HISTORY} (version VARCHAR(50) PRIMARY KEY NOT NULL, "
    "run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);"
    f"INSERT INTO {HISTORY} (version) VALUES ('{{version}}') ON CONFLICT DO NOTHING"
)
_NO_TRANSACTION = re.compile(r"^\s*run_in_transaction\s*=\s*false\s*$", re.MULTILINE)


def detect(entries: Listing, texts: Texts) -> str | None:
    """Why `entries` is a diesel folder (``*/up.sql``), or None."""
    for entry in entries:
        if entry.rel.count("/") == 1 and entry.name == "up.sql":
            return f"{entry.rel} (a folder per migration)"
    return None


def load(entries: Listing, texts: Texts) -> list[MigrationFile]:
    """Each folder's ``up.sql`` in version order (the name before its first ``_``, without
    dashes), ``down.sql`` as its down, ``run_in_transaction = false`` honoured."""
    by_rel = {e.rel: e for e in entries}
    folders = sorted({e.rel.split("/", 1)[0] for e in entries if e.rel.count("/") == 1})
    found: dict[object, str] = {}
    migrations = []
    for folder in folders:
        up = by_rel.get(f"{folder}/up.sql")
        if up is None:
            raise failure(
                f"diesel migration folder {folder}",
                "it has no up.sql, which diesel requires",
                "Restore its up.sql, or delete the folder.",
                file=folder,
            )
        version = folder.split("_", 1)[0].replace("-", "")
        claim(found, version, folder, "diesel", version)
        migrations.append(
            migration(
                folder,
                up.path,
                version,
                texts(up),
                down=_script(by_rel.get(f"{folder}/down.sql"), texts),
                no_transaction=_no_transaction(by_rel.get(f"{folder}/metadata.toml"), texts),
                record=_RECORD.format(version=version),
            )
        )
    return sorted(migrations, key=lambda m: m.version)


def _script(entry: Entry | None, texts: Texts) -> Script | None:
    return None if entry is None else Script(entry.rel, entry.path, texts(entry))


def _no_transaction(entry: Entry | None, texts: Texts) -> str | None:
    if entry is not None and _NO_TRANSACTION.search(texts(entry)):
        return f"run_in_transaction = false in {entry.rel}"
    return None

"""Folders of tools whose migrations are not SQL files: named, with what to do instead."""

from __future__ import annotations

from pytest_pgmig.engine.formats.common import Listing, Texts, failure
from pytest_pgmig.errors import MigrationError


def refuse(entries: Listing, texts: Texts) -> MigrationError | None:
    """The error for a folder of Alembic, Liquibase or Go migrations, or None."""
    rels = {e.rel for e in entries}
    sql = any(rel.endswith(".sql") for rel in rels)
    alembic = [e.rel for e in entries if e.rel.endswith(".py") and "down_revision" in texts.peek(e)]
    if alembic or ("env.py" in rels and "script.py.mako" in rels):
        first = alembic[0] if alembic else "env.py"
        return failure(
            f"migrations folder ({first})",
            "this is an Alembic history (Python revisions), not a folder of SQL migrations",
            "Point the option at a folder of .sql files; for an Alembic project, `alembic "
            "upgrade head --sql > migrations/001_baseline.sql` writes its history as one SQL "
            "migration pytest-pgmig can apply.",
            file=first,
        )
    for entry in entries:
        if entry.rel.endswith((".xml", ".yaml", ".yml", ".json")) and (
            "databaseChangeLog" in texts.peek(entry)
        ):
            return failure(
                f"migrations folder ({entry.rel})",
                "this is a Liquibase changelog, not a folder of SQL migrations",
                "Run `liquibase update-sql` to write the changelog as SQL into a migrations "
                "folder, and point the option at that folder.",
                file=entry.rel,
            )
    go = sorted(e.rel for e in entries if e.top and e.rel.endswith(".go"))
    if go and not sql:
        return failure(
            f"migrations folder ({go[0]})",
            "it holds Go migrations only, which their tool runs compiled into your program: "
            "pytest-pgmig runs SQL migrations",
            "Point the option at a folder of .sql migrations (goose, golang-migrate, sqlx, "
            "Flyway, dbmate, ...).",
            file=go[0],
        )
    return None

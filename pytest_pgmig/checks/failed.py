"""How a check says that a file the server refused failed: where, PostgreSQL's words, the fix."""

from __future__ import annotations

from pytest_pgmig.errors import CheckFailed, MigrationError


def file_failed(what: str, exc: MigrationError, fix: str) -> CheckFailed:
    """A check failure for a file the server refused: where, PostgreSQL's words, the fix."""
    parts = [f"{what}: {exc.message}"]
    if exc.excerpt:
        parts.append(exc.excerpt)
    parts.append(fix)
    return CheckFailed("\n".join(parts))

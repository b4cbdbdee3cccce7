"""pytest-pgmig: a throwaway, fully migrated PostgreSQL schema for every test or xdist worker."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AsyncDatabaseManager",
    "AsyncMigrationManager",
    "ChecksumMismatch",
    "DatabaseConfig",
    "InvalidMigrationFile",
    "Migration",
    "MigrationError",
    "MigrationSQLError",
    "TransientMigrationError",
    "__version__",
]

if TYPE_CHECKING:
    from pytest_pgmig.engine.database import AsyncDatabaseManager, DatabaseConfig
    from pytest_pgmig.engine.migrations import AsyncMigrationManager, Migration
    from pytest_pgmig.errors import (
        ChecksumMismatch,
        InvalidMigrationFile,
        MigrationError,
        MigrationSQLError,
        TransientMigrationError,
    )

# The pytest11 entry point imports this package in every pytest run, including runs that use
# no pgmig fixture, so the engine (and asyncpg) is imported only when a name is first used.
_LAZY = {
    "AsyncDatabaseManager": "pytest_pgmig.engine.database",
    "DatabaseConfig": "pytest_pgmig.engine.database",
    "AsyncMigrationManager": "pytest_pgmig.engine.migrations",
    "Migration": "pytest_pgmig.engine.migrations",
    "MigrationError": "pytest_pgmig.errors",
    "ChecksumMismatch": "pytest_pgmig.errors",
    "InvalidMigrationFile": "pytest_pgmig.errors",
    "MigrationSQLError": "pytest_pgmig.errors",
    "TransientMigrationError": "pytest_pgmig.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_pgmig' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value

"""Two-way compatibility with pgdbm 0.5.0 on the same schema."""

# ruff: noqa: F811  (pytest fixtures imported from engine_support are redefined as arguments)

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from engine_support import admin_dsn, db, schema, write  # noqa: F401

from pytest_pgmig import AsyncDatabaseManager, AsyncMigrationManager
from pytest_pgmig.engine.files import checksum

pgdbm = pytest.importorskip("pgdbm")
pgdbm_migrations = pytest.importorskip("pgdbm.migrations")

pytestmark = pytest.mark.asyncio

FIRST: dict[str, str | bytes] = {
    "001_users.sql": (
        b"-- users, written on Windows\r\n"
        b"CREATE TABLE IF NOT EXISTS {{tables.users}} (\r\n"
        b"    id SERIAL PRIMARY KEY,\r\n    email VARCHAR(255) UNIQUE NOT NULL\r\n);\r\n"
    ),
    "002_posts.sql": "CREATE TABLE posts (id serial PRIMARY KEY, title text, "
    "user_id int REFERENCES {{tables.users}} (id));\n\n",
}
SECOND: dict[str, str | bytes] = {
    "003_index.sql": "-- pgdbm:no-transaction\n"
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS posts_title ON {{tables.posts}} (title);\n",
    "20251025_120000_seed.sql": "INSERT INTO {{tables.users}} (email) VALUES ('a@example.com')\n"
    "ON CONFLICT (email) DO NOTHING;\n",
}
ALL = {**FIRST, **SECOND}


@pytest_asyncio.fixture
async def pgdbm_db(admin_dsn: str, schema: str) -> AsyncIterator[Any]:
    config = pgdbm.DatabaseConfig(
        connection_string=admin_dsn, schema=schema, min_connections=1, max_connections=2
    )
    manager = pgdbm.AsyncDatabaseManager(config)
    await manager.connect()
    yield manager
    await manager.disconnect()


def expected_checksums(files: dict[str, str | bytes]) -> dict[str, str]:
    return {
        name: checksum((body.decode() if isinstance(body, bytes) else body).replace("\r\n", "\n"))
        for name, body in files.items()
    }


async def test_pgdbm_then_ours(db: AsyncDatabaseManager, pgdbm_db: Any, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", dict(ALL))
    theirs = pgdbm_migrations.AsyncMigrationManager(pgdbm_db, str(folder), module_name="app")
    assert (await theirs.apply_pending_migrations())["status"] == "success"

    ours = AsyncMigrationManager(db, str(folder), module_name="app")
    assert await ours.get_pending_migrations() == []
    result = await ours.apply_pending_migrations()
    assert result["status"] == "up_to_date"
    assert sorted(result["skipped"]) == sorted(ALL)
    history = await ours.get_migration_history(limit=10)
    stored = {entry["filename"]: entry["checksum"] for entry in history}
    assert stored == expected_checksums(ALL)
    assert {m.filename: m.checksum for m in await ours.find_migration_files()} == stored


async def test_ours_then_pgdbm(db: AsyncDatabaseManager, pgdbm_db: Any, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", dict(ALL))
    ours = AsyncMigrationManager(db, str(folder), module_name="app")
    assert (await ours.apply_pending_migrations())["status"] == "success"

    theirs = pgdbm_migrations.AsyncMigrationManager(pgdbm_db, str(folder), module_name="app")
    assert await theirs.get_pending_migrations() == []
    result = await theirs.apply_pending_migrations()
    assert result["status"] == "up_to_date"
    history = await theirs.get_migration_history(limit=10)
    assert {entry["filename"] for entry in history} == set(ALL)
    their_files = {m.filename: m.checksum for m in await theirs.find_migration_files()}
    assert their_files == expected_checksums(ALL)


@pytest.mark.parametrize("first", ["ours", "pgdbm"])
async def test_each_engine_continues_the_others_run(
    db: AsyncDatabaseManager, pgdbm_db: Any, tmp_path: Path, first: str
) -> None:
    early = write(tmp_path / "early", dict(FIRST))
    full = write(tmp_path / "full", dict(ALL))

    def ours(folder: Path) -> Any:
        return AsyncMigrationManager(db, str(folder), module_name="app")

    def theirs(folder: Path) -> Any:
        return pgdbm_migrations.AsyncMigrationManager(pgdbm_db, str(folder), module_name="app")

    start, finish = (ours, theirs) if first == "ours" else (theirs, ours)
    assert (await start(early).apply_pending_migrations())["status"] == "success"
    result = await finish(full).apply_pending_migrations()
    assert result["status"] == "success"
    assert sorted(m["filename"] for m in result["applied"]) == sorted(SECOND)
    for manager in (ours(full), theirs(full)):
        assert (await manager.apply_pending_migrations())["status"] == "up_to_date"
    assert await db.fetch_value("SELECT count(*) FROM {{tables.users}}") == 1

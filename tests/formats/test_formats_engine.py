"""The engine's API on a tool's folder: a Flyway repeatable applied again when it changes,
goose's sections through pgdbm's manager, and nothing else applied twice."""
# ruff: noqa: F811  (pytest fixtures imported from engine_support are redefined as arguments)

from __future__ import annotations

from pathlib import Path

import pytest
from engine_support import admin_dsn, db, schema  # noqa: F401
from format_sets import SETS

from pytest_pgmig import AsyncDatabaseManager, AsyncMigrationManager
from pytest_pgmig.errors import MigrationError

pytestmark = pytest.mark.asyncio


async def test_a_changed_repeatable_is_applied_again_and_its_row_replaced(
    db: AsyncDatabaseManager, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    files = {k: v.replace("${owner}", "team-a") for k, v in SETS["flyway"].files.items()}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    manager = AsyncMigrationManager(db, migrations_path=str(folder), module_name="app")
    first = await manager.apply_pending_migrations()
    assert [a["filename"] for a in first["applied"]][-1] == "R__user_names.sql"
    assert await db.fetch_value("SELECT name FROM user_names") == "SEED"
    assert (await manager.apply_pending_migrations())["status"] == "up_to_date"

    view = folder / "R__user_names.sql"
    view.write_text(view.read_text().replace("upper(name)", "lower(name)"))
    again = await manager.apply_pending_migrations()
    assert again["status"] == "success"
    assert [a["filename"] for a in again["applied"]] == ["R__user_names.sql"]
    assert await db.fetch_value("SELECT name FROM user_names") == "seed"
    rows = await manager.get_applied_migrations()
    assert len(rows) == 4  # one row a migration: the repeatable's was replaced
    assert (await manager.apply_pending_migrations())["status"] == "up_to_date"

    # an edited versioned script is still an error, as Flyway's validate says
    v1 = folder / "V1_1__owner.sql"
    v1.write_text(v1.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match=r"'V1_1__owner\.sql' has been modified"):
        await manager.apply_pending_migrations()


async def test_goose_sections_through_pgdbms_manager(
    db: AsyncDatabaseManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGMIG_TEST_OWNER", "team-a")
    folder = SETS["goose"].write(tmp_path / "migrations")
    manager = AsyncMigrationManager(db, migrations_path=str(folder), module_name="app")
    pending = await manager.get_pending_migrations()
    assert [m.filename for m in pending][:2] == ["00001_create_users.sql", "00002_functions.sql"]
    result = await manager.apply_pending_migrations()
    assert result["status"] == "success", result
    # the Down sections never ran: the tables are there
    assert await db.fetch_value("SELECT count(*) FROM users") == 1
    assert await db.fetch_value("SELECT value FROM settings WHERE key = 'owner'") == "team-a"

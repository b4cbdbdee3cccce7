"""Shared fixtures of the engine's server tests: an admin DSN and a throwaway schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
import pytest_asyncio

from pytest_pgmig.engine.database import AsyncDatabaseManager, DatabaseConfig


@pytest.fixture
def admin_dsn(pgmig_server: Any) -> str:
    """The admin DSN of the plugin's session server."""
    return str(pgmig_server.dsn)


@pytest_asyncio.fixture
async def schema(admin_dsn: str) -> AsyncIterator[str]:
    """A unique schema name, dropped (if created) after the test."""
    name = f"t_{uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def db(admin_dsn: str, schema: str) -> AsyncIterator[AsyncDatabaseManager]:
    """A connected AsyncDatabaseManager owning the test's schema."""
    manager = AsyncDatabaseManager(
        DatabaseConfig(connection_string=admin_dsn, schema=schema, max_connections=4)
    )
    await manager.connect()
    yield manager
    await manager.disconnect()


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    """Write migration files into ``folder`` (created) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder

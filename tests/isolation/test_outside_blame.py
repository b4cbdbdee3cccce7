"""The outside-write check blames a file for what its own transaction did, never another
session's roles, schemas and tables created and dropped at the same time."""

# ruff: noqa: F811  (pytest fixtures imported from engine_support are redefined as arguments)

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import asyncpg
import pytest
from engine_support import admin_dsn, write  # noqa: F401

from pytest_pgmig.engine.formats import Reading
from pytest_pgmig.errors import MigrationFailed
from pytest_pgmig.isolation import registry
from pytest_pgmig.isolation.base import MigrationSet
from pytest_pgmig.isolation.migrate import SetMigrator, in_schema

pytestmark = pytest.mark.asyncio

ROUNDS = 20

# everything inside its own schema; the second set drops what the first made (a view, a
# table with a toast table, a function, a column's default, a type), in a transaction of
# its own
CLEAN = {
    "001_tables.sql": "CREATE TABLE a (id serial PRIMARY KEY, body text DEFAULT 'x');\n"
    "CREATE TABLE b (id int, notes text);\nCREATE VIEW v AS SELECT * FROM a;\n"
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\n"
    "CREATE TYPE mood AS ENUM ('ok');\n",
}
DROPS_OWN = {
    "001_drops.sql": "DROP VIEW v;\nDROP TABLE b;\nDROP FUNCTION f();\nDROP TYPE mood;\n"
    "ALTER TABLE a ALTER COLUMN body DROP DEFAULT;\nALTER TABLE a ADD COLUMN n int;\n",
}
# each writes outside once, after work of its own
OUTSIDE = {
    "creates": ("CREATE TABLE public.leak_{n} (id int);", "table public.leak_{n} (created"),
    "drops": ("DROP TABLE public.victim_{n};", "relation victim_{n} (dropped"),
    "role": ("CREATE ROLE blame_role_{n};", "role blame_role_{n} (created"),
}


async def churn(dsn: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Another session's work, as fast as it goes: roles, schemas, tables made and dropped."""
    conn = await asyncpg.connect(dsn)
    try:
        n = 0
        while not stop.is_set():
            n += 1
            tag = f"{uuid.uuid4().hex[:6]}"
            await conn.execute(f"CREATE ROLE pgmig_mock_{tag}")
            await conn.execute(f"CREATE SCHEMA churn_{tag}")
            await conn.execute(f"CREATE TABLE churn_{tag}.t (id serial, body text)")
            await conn.execute(f"CREATE TABLE public.churn_{tag} (id int)")
            await asyncio.sleep(0)
            await conn.execute(f"DROP TABLE public.churn_{tag}")
            await conn.execute(f"DROP SCHEMA churn_{tag} CASCADE")
            await conn.execute(f"DROP ROLE pgmig_mock_{tag}")
            counts["rounds"] = n
    finally:
        await conn.close()


async def test_outside_writes_are_blamed_on_their_own_transaction_only(
    admin_dsn: str, tmp_path: Path
) -> None:
    control = await asyncpg.connect(admin_dsn)
    await registry.install(control, own_server=False)
    stop, counts = asyncio.Event(), {"rounds": 0}
    others = [asyncio.create_task(churn(admin_dsn, stop, counts)) for _ in range(2)]
    made: list[str] = []
    try:
        for n in range(ROUNDS):
            clean = MigrationSet("clean", write(tmp_path / f"clean{n}", CLEAN), Reading())
            own = MigrationSet("own", write(tmp_path / f"own{n}", DROPS_OWN), Reading())
            name = f"blame_{uuid.uuid4().hex[:8]}"
            made.append(name)
            await control.execute(f"CREATE SCHEMA {name}")
            # a new migrator each time: the check runs on a set's first migration only
            assert await SetMigrator().migrate(control, in_schema(name), (clean, own)) == 2
            for kind, (statement, said) in OUTSIDE.items():
                await control.execute(f"CREATE TABLE IF NOT EXISTS public.victim_{n} (id int)")
                files = {"001_own.sql": "CREATE TABLE mine (id int);\nDROP TABLE mine;\n"}
                files["002_out.sql"] = statement.format(n=n)
                mset = MigrationSet(kind, write(tmp_path / f"{kind}{n}", files), Reading())
                name = f"blame_{uuid.uuid4().hex[:8]}"
                made.append(name)
                await control.execute(f"CREATE SCHEMA {name}")
                with pytest.raises(MigrationFailed) as failed:
                    await SetMigrator().migrate(control, in_schema(name), (mset,))
                assert said.format(n=n) in failed.value.full, failed.value.full
                assert "002_out.sql" in failed.value.full
        assert counts["rounds"] > ROUNDS, "the other sessions hardly ran"
    finally:
        stop.set()
        await asyncio.gather(*others, return_exceptions=True)
        for name in made:
            await control.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        for n in range(ROUNDS):
            await control.execute(
                f"DROP TABLE IF EXISTS public.victim_{n}, public.leak_{n};"
                f"DROP ROLE IF EXISTS blame_role_{n}"
            )
        with contextlib.suppress(Exception):
            await control.close()

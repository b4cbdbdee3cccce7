"""Benchmark of the migration engine against `psql -f` (not a test; run it by hand).

    .venv/bin/python bench/engine_bench.py [--files 200] [--repeats 7]

Uses the server of PGMIG_DSN, else starts a throwaway local one (pytest_pgmig.servers.server).
Prints, side by side and as medians of the repeats:
  - applying N generated migrations to a fresh schema: our engine vs `psql -f` of the same
    SQL concatenated (each in a fresh schema, search_path set the same way);
  - apply_pending_migrations() on an up-to-date schema, through a pool of the caller's and
    through pgdbm's documented form (`DatabaseConfig(connection_string=..., schema=...)`),
    interleaved call by call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from uuid import uuid4

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_pgmig import AsyncDatabaseManager, AsyncMigrationManager, DatabaseConfig
from pytest_pgmig.servers.dsn import redact, with_search_path
from pytest_pgmig.servers.sources import start_server


def migration(n: int) -> str:
    return (
        f"CREATE TABLE item_{n} (\n"
        "    id serial PRIMARY KEY,\n"
        "    name text NOT NULL,\n"
        "    created_at timestamptz NOT NULL DEFAULT now()\n"
        ");\n"
        f"CREATE INDEX item_{n}_name ON item_{n} (name);\n"
        f"INSERT INTO item_{n} (name) VALUES ('a'), ('b'), ('c');\n"
    )


def find_psql() -> str:
    for candidate in (shutil.which("psql"), "/usr/lib/postgresql/15/bin/psql"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("psql not found")


async def fresh_schema(pool: asyncpg.Pool) -> str:
    name = f"bench_{uuid4().hex[:10]}"
    await pool.execute(f'CREATE SCHEMA "{name}"')
    return name


async def up_to_date_checks(
    dsn: str, pool: asyncpg.Pool, folder: Path, schema: str, checks: int
) -> dict[str, float]:
    """Median ms of `apply_pending_migrations()` on `schema`, migrated from `folder` already,
    through a pool of the caller's (``pool``) and through pgdbm's documented form
    (``config``: `DatabaseConfig(connection_string=..., schema=...)`), a new manager each
    call, the two forms interleaved call by call."""
    config = AsyncDatabaseManager(DatabaseConfig(connection_string=dsn, schema=schema))
    forms = {"pool": AsyncDatabaseManager(pool=pool, schema=schema), "config": config}
    await config.connect()
    times: dict[str, list[float]] = {form: [] for form in forms}
    try:
        for _ in range(checks):
            for form, db in forms.items():
                manager = AsyncMigrationManager(db, str(folder), module_name="bench")
                started = time.perf_counter()
                result = await manager.apply_pending_migrations()
                times[form].append((time.perf_counter() - started) * 1000)
                assert result["status"] == "up_to_date", result
    finally:
        await config.disconnect()
    return {form: statistics.median(values) for form, values in times.items()}


def write_folder(folder: Path, files: int) -> None:
    """`files` generated migrations, older than the loader's "racy" window, as in a real
    project."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, files + 1):
        (folder / f"{n:04d}_item_{n}.sql").write_text(migration(n))
    past = time.time() - 60
    for path in folder.iterdir():
        os.utime(path, (past, past))


async def documented_form(dsn: str, *, files: int = 200, checks: int = 300) -> dict[str, float]:
    """`up_to_date_checks` on a fresh schema migrated with `files` generated migrations."""
    folder = Path(tempfile.mkdtemp(prefix="pgmig-bench-"))
    write_folder(folder, files)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    schema = await fresh_schema(pool)
    try:
        db = AsyncDatabaseManager(pool=pool, schema=schema)
        await AsyncMigrationManager(db, str(folder), module_name="bench").apply_pending_migrations()
        return await up_to_date_checks(dsn, pool, folder, schema, checks)
    finally:
        await pool.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await pool.close()
        shutil.rmtree(folder, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--checks", type=int, default=500, help="up-to-date calls to time")
    args = parser.parse_args()

    handle = start_server(dsn=os.environ.get("PGMIG_DSN"))
    dsn = handle.info.dsn
    psql = find_psql()
    folder = Path(tempfile.mkdtemp(prefix="pgmig-bench-"))
    write_folder(folder, args.files)
    combined = folder.parent / f"{folder.name}.sql"
    combined.write_text("".join(migration(n) for n in range(1, args.files + 1)))

    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    ours_ms: list[float] = []
    psql_ms: list[float] = []
    schemas: list[str] = []
    try:
        for _ in range(args.repeats):
            schema = await fresh_schema(pool)
            schemas.append(schema)
            env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
            started = time.perf_counter()
            command = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(combined)]
            subprocess.run(
                [*command, "-d", with_search_path(dsn, schema)],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
            )
            psql_ms.append((time.perf_counter() - started) * 1000)

            schema = await fresh_schema(pool)
            schemas.append(schema)
            started = time.perf_counter()
            db = AsyncDatabaseManager(pool=pool, schema=schema)
            result = await AsyncMigrationManager(
                db, str(folder), module_name="bench"
            ).apply_pending_migrations()
            ours_ms.append((time.perf_counter() - started) * 1000)
            assert result["status"] == "success" and len(result["applied"]) == args.files

        check = await up_to_date_checks(dsn, pool, folder, schemas[-1], args.checks)
    finally:
        for schema in schemas:
            await pool.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await pool.close()
        shutil.rmtree(folder, ignore_errors=True)
        combined.unlink(missing_ok=True)
        handle.stop()

    ours, theirs = statistics.median(ours_ms), statistics.median(psql_ms)
    version = ".".join(map(str, handle.info.version))
    print(f"server: PostgreSQL {version} ({handle.info.source}) {redact(dsn)}")
    print(f"{args.files} migrations x 3 statements, median of {args.repeats} runs:")
    print(f"  {'what':<44} {'median ms':>10}  {'target':>10}")
    print(f"  {'psql -f (concatenated SQL)':<44} {theirs:>10.1f}")
    ratio = f"{ours / theirs:.2f}x"
    print(f"  {'pytest-pgmig apply_pending_migrations()':<44} {ours:>10.1f}  {ratio:>5} <=1.5x")
    label = f"up-to-date, pool=... (n={args.checks})"
    print(f"  {label:<44} {check['pool']:>10.2f}  {'<5 ms':>10}")
    label = f"up-to-date, DatabaseConfig(...) (n={args.checks})"
    print(f"  {label:<44} {check['config']:>10.2f}  {'<2 ms':>10}")


if __name__ == "__main__":
    asyncio.run(main())

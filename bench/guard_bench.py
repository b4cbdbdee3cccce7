"""What checking for writes outside the schema adds to migrating a set (not a test).

    .venv/bin/python bench/guard_bench.py [--tables 10 50 350] [--repeats 5]

Uses the server of PGMIG_DSN, else starts a throwaway local one. For each generated set
(T tables over T+1 files, the suite bench's shape), migrates fresh schemas alternately with and
without the check, file by file (pgdbm's way) and batched (the plugin's: consecutive
transactional files in one transaction), and prints the medians side by side and the check's
cost per file. The check runs the first time a process migrates a set, never per test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from uuid import uuid4

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from migration_sets import migration_files

from pytest_pgmig.engine.apply import ApplyOptions
from pytest_pgmig.engine.runner import Runner
from pytest_pgmig.isolation import registry
from pytest_pgmig.isolation.guard import Guard
from pytest_pgmig.servers.sources import start_server


async def migrate_once(
    conn: asyncpg.Connection, folder: Path, guarded: bool, *, batch: bool
) -> float:
    name = f"guard_{uuid4().hex[:10]}"
    await conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        options = ApplyOptions(
            skip=(("CREATE", "EXTENSION"),),
            check=Guard(name) if guarded else None,
            batch=batch,
        )
        runner = Runner(name, folder, name, options=options)
        started = time.perf_counter()
        await runner.upgrade(conn)
        return time.perf_counter() - started
    finally:
        await conn.execute("RESET ALL")
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')


async def run(dsn: str, tables: list[int], repeats: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await registry.install(conn, own_server=False)
        print(f"{'set':<22}{'how':<14}{'plain ms':>10}{'checked ms':>12}{'ratio':>8}{'ms/file':>9}")
        for count in tables:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                files = migration_files(count, count + 1, seed=True)
                for filename, text in files:
                    (folder / filename).write_text(text)
                kinds = [(batch, guarded) for batch in (False, True) for guarded in (False, True)]
                times: dict[tuple[bool, bool], list[float]] = {kind: [] for kind in kinds}
                for _ in range(repeats):
                    for batch, guarded in kinds:
                        elapsed = await migrate_once(conn, folder, guarded, batch=batch)
                        times[(batch, guarded)].append(elapsed)
                label = f"T={count}, {len(files)} files"
                for batch in (False, True):
                    plain = statistics.median(times[(batch, False)]) * 1000
                    checked = statistics.median(times[(batch, True)]) * 1000
                    how = "batched" if batch else "file by file"
                    print(
                        f"{label:<22}{how:<14}{plain:>10.0f}{checked:>12.0f}"
                        f"{checked / plain:>8.2f}{(checked - plain) / len(files):>9.2f}"
                    )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tables", type=int, nargs="+", default=[10, 50, 350])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dsn = os.environ.get("PGMIG_DSN")
    handle = None if dsn else start_server(requested="local", max_connections=200)
    try:
        asyncio.run(run(dsn or handle.info.dsn, args.tables, args.repeats))  # type: ignore[union-attr]
    finally:
        if handle is not None:
            handle.stop()


if __name__ == "__main__":
    main()

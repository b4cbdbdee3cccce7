"""An Alembic history against an SQL set of the same tables, and against Alembic alone.

Side by side on one server started here (data on the RAM disk, 127.0.0.1), medians of
--repeat runs:

  per test   the summary's median isolation cost per test: the same N tests on an SQL set
             and on the Alembic history, each in a schema per test
  first test the first test's set-up (the history applied into its schema, Alembic imported
             in the process) against `alembic upgrade heads` alone into a new database,
             Alembic's import included

    python bench/alembic_bench.py            # N=100, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgdbm_fixtures_bench as tcp

PORT = 55441
DSN = f"postgresql://postgres:postgres@127.0.0.1:{PORT}/postgres"
USERS = "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL);"
ITEMS = "CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL);"
SEED = "INSERT INTO items VALUES (1, 'seed');"
ENV_PY = """\
import os
from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""
REVISION = '''\
from alembic import op
revision = "{rev}"
down_revision = {down}
def upgrade():
    op.execute("""{sql}""")
def downgrade():
    pass
'''
TESTS = """
import psycopg, pytest

@pytest.mark.parametrize("n", range({n}))
def test_t(pgmig_dsn, n):
    with psycopg.connect(pgmig_dsn) as conn:
        conn.execute("INSERT INTO users (name) VALUES ('x')")
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 1
"""
UPGRADE_ALONE = """
import os, sys, time, uuid, psycopg
started = time.perf_counter()
name = "alone_" + uuid.uuid4().hex[:8]
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute(f'CREATE DATABASE "{name}"')
base = sys.argv[1].replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0]
os.environ["DATABASE_URL"] = base + "/" + name
from alembic import command
from alembic.config import Config
command.upgrade(Config(sys.argv[2]), "heads")
print(time.perf_counter() - started)
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute(f'DROP DATABASE "{name}"')
"""


def write(root: Path, n: int) -> tuple[Path, Path]:
    sql, alembic = root / "sql", root / "alembic"
    (sql / "migrations").mkdir(parents=True)
    (sql / "migrations" / "001_users.sql").write_text(USERS)
    (sql / "migrations" / "002_items.sql").write_text(f"{ITEMS}\n{SEED}")
    (sql / "pytest.ini").write_text("[pytest]\npgmig_migrations = migrations\n")
    versions = alembic / "migrations" / "versions"
    versions.mkdir(parents=True)
    (alembic / "migrations" / "env.py").write_text(ENV_PY)
    (versions / "a1.py").write_text(REVISION.format(rev="a1", down=None, sql=USERS))
    (versions / "b2.py").write_text(REVISION.format(rev="b2", down='"a1"', sql=f"{ITEMS} {SEED}"))
    (alembic / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (alembic / "pytest.ini").write_text(
        "[pytest]\npgmig_alembic = alembic.ini\npgmig_alembic_env = DATABASE_URL={url:psycopg}\n"
        "pgmig_check_down = off\n"
    )
    for folder in (sql, alembic):
        (folder / "test_t.py").write_text(TESTS.format(n=n))
    return sql, alembic


def run(folder: Path, env: dict[str, str]) -> tuple[float, float]:
    """The median isolation cost per test and the first test's set-up, in ms."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    cmd += [f"--pgmig-dsn={DSN}", "--durations=0", "--durations-min=0"]
    out = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True).stdout
    median = float(re.search(r"median ([\d.]+) ms per test", out).group(1))  # type: ignore[union-attr]
    first = float(re.search(r"([\d.]+)s setup +test_t.py::test_t\[0\]", out).group(1))  # type: ignore[union-attr]
    return median, first * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tests", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tcp.PORT = PORT
    data = Path(tempfile.mkdtemp(prefix="pgmig-alembic-bench-", dir="/dev/shm"))
    stop = tcp.start_tcp_server(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGMIG_")}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sql, alembic = write(Path(tmp), args.tests)
            rows: dict[str, list[float]] = {"sql": [], "alembic": [], "first": [], "alone": []}
            for _ in range(args.repeat):
                rows["sql"].append(run(sql, env)[0])
                median, first = run(alembic, env)
                rows["alembic"].append(median)
                rows["first"].append(first)
                alone = subprocess.run(
                    [sys.executable, "-c", UPGRADE_ALONE, DSN, str(alembic / "alembic.ini")],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                ).stdout
                rows["alone"].append(float(alone.strip().splitlines()[-1]) * 1000)
        m = {k: statistics.median(v) for k, v in rows.items()}
        print(f"N={args.tests}, medians of {args.repeat}, PostgreSQL on {data}")
        print(
            f"per test: SQL set {m['sql']:.1f} ms, Alembic history {m['alembic']:.1f} ms: "
            f"{m['alembic'] / m['sql']:.2f}x (target <= 1.2x)"
        )
        print(
            f"first test {m['first']:.0f} ms, alembic upgrade heads alone {m['alone']:.0f} ms: "
            f"{m['first'] / m['alone']:.2f}x (target <= 1.5x, the server's start on both sides)"
        )
    finally:
        stop()
        subprocess.run(["rm", "-rf", str(data)], check=False)


if __name__ == "__main__":
    main()

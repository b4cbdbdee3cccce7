"""Alembic projects of our own, in the shapes real projects' env.py files have."""

from __future__ import annotations

from pathlib import Path

INI = """\
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = .
path_separator = os
sqlalchemy.url = {url}

[loggers]
keys = root

[handlers]
keys =

[formatters]
keys =

[logger_root]
level = WARN
handlers =
"""

# the most common shape: env.py builds its engine from the application's settings, read from
# an environment variable, and ignores the ini's URL
ENV_SYNC = """\
import os

from alembic import context
from sqlalchemy import create_engine, pool

target_metadata = None


def run_migrations_online():
    engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""

# an async env.py on asyncpg (on a TCP server its URL may also be put together from separate
# POSTGRES_* variables: {host} names the server's socket folder otherwise)
ENV_ASYNC = """\
import asyncio
import os

from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine

target_metadata = None


def url():
    return os.environ["ASYNC_DATABASE_URL"]


def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations():
    engine = create_async_engine(url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


asyncio.run(run_async_migrations())
"""

# psycopg2, the URL put together from separate POSTGRES_* variables, as project templates do
# (with URL.create: {host} is a socket folder on a server the plugin started)
ENV_POSTGRES = """\
import os

from alembic import context
from sqlalchemy import URL, create_engine, pool

target_metadata = None


def url():
    e = os.environ
    return URL.create(
        "postgresql+psycopg2",
        username=e["POSTGRES_USER"],
        password=e["POSTGRES_PASSWORD"],
        host=e["POSTGRES_SERVER"],
        port=int(e["POSTGRES_PORT"]),
        database=e["POSTGRES_DB"],
    )


engine = create_engine(url(), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
"""
POSTGRES_ENV = """pgmig_alembic_env =
    POSTGRES_SERVER={host}
    POSTGRES_PORT={port}
    POSTGRES_USER={user}
    POSTGRES_PASSWORD={password}
    POSTGRES_DB={database}
"""

# an application that reads its settings once per process (a module-level settings object)
CACHED_SETTINGS = "import os\n\nDATABASE_URL = os.environ['DATABASE_URL']\n"
ENV_CACHED = ENV_SYNC.replace(
    'create_engine(os.environ["DATABASE_URL"]', "create_engine(appsettings.DATABASE_URL"
).replace("import os\n", "import appsettings\n")

REVISION_1 = '''\
"""users, searched by trigram"""
from alembic import op
import sqlalchemy as sa

revision = "a1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )
    op.execute("CREATE INDEX users_name_trgm ON users USING gin (name gin_trgm_ops)")


def downgrade():
    op.drop_table("users")
    op.execute("DROP EXTENSION pg_trgm")
'''

REVISION_2 = '''\
"""items, with a seed row"""
from alembic import op
import sqlalchemy as sa

revision = "b2"
down_revision = "a1"
branch_labels = None
depends_on = None


def upgrade():
    items = op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
    )
    op.bulk_insert(items, [{"id": 1, "title": "seed"}])
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY items_title ON items (title)")


def downgrade():
    op.drop_table("items")
'''

TESTS = """
import psycopg
import pytest
from sqlalchemy import text


@pytest.mark.parametrize("n", range(4))
def test_the_history_is_applied_and_reset(pgmig_dsn, n):
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT title FROM items").fetchall() == [("seed",)]
        conn.execute("INSERT INTO users (name) VALUES ('ada'), ('adam')")
        assert conn.execute("SELECT count(*) FROM users WHERE name % 'ada'").fetchone()[0] == 2
        conn.execute("INSERT INTO items (id, title) VALUES (2, 'mine')")
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        assert version == "b2"


def test_the_engine_sees_the_same(pgmig_engine):
    with pgmig_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM items")).scalar() == 1


async def test_the_async_engine_too(pgmig_async_engine):
    async with pgmig_async_engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM items"))).scalar() == 1
"""


def write_project(root: Path, env_py: str, *, url: str = "driver://user:pass@localhost/db") -> Path:
    """An Alembic project under `root`; its alembic.ini."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (root / "migrations" / "env.py").write_text(env_py)
    (versions / "a1_users.py").write_text(REVISION_1)
    (versions / "b2_items.py").write_text(REVISION_2)
    ini = root / "alembic.ini"
    ini.write_text(INI.format(url=url))
    return ini


# two branches from b2, merged; the second keeps its table in a fixed schema, seeds it
# through an ORM session that commits, and has a downgrade that cannot run
BRANCHES = {
    "c3_tags.py": """\
from alembic import op
import sqlalchemy as sa

revision = "c3"
down_revision = "b2"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("tags")
""",
    "d4_boards.py": """\
from alembic import op
import sqlalchemy as sa
from sqlalchemy.orm import Session, declarative_base

revision = "d4"
down_revision = "b2"
branch_labels = None
depends_on = None

Base = declarative_base()


class Board(Base):
    __tablename__ = "boards"
    __table_args__ = {"schema": "projects"}
    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.Text)


def upgrade():
    op.execute("CREATE SCHEMA projects")
    op.create_table(
        "boards",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text),
        schema="projects",
    )
    session = Session(bind=op.get_bind())
    session.add(Board(id=1, name="first"))
    session.commit()


def downgrade():
    op.drop_constraint(None, "boards")  # broken, as many are: never needed here
""",
}
MERGE = {
    "e5_merge.py": """\
revision = "e5"
down_revision = ("c3", "d4")
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
""",
}
BRANCH_TESTS = """
import psycopg


def test_both_branches_and_the_fixed_schema(pgmig_dsn):
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT name FROM projects.boards").fetchall() == [("first",)]
        assert conn.execute("SELECT count(*) FROM tags").fetchone()[0] == 0
        conn.execute("INSERT INTO projects.boards VALUES (2, 'mine')")
"""

# a Flask-Migrate project: `flask db init` puts alembic.ini (no script_location) and env.py
# (which needs the app context) in migrations/; the engine is the Flask app's
FLASK_APP = """\
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
migrate = Migrate()


class Note(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    body = db.Column(db.Text, nullable=False)


def create_app(url):
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db.init_app(app)
    migrate.init_app(app, db)
    return app
"""
FLASK_CONFTEST = """\
from flaskapp import create_app


def pytest_pgmig_alembic_config(config, target):
    return create_app(target.url("psycopg")).app_context()
"""
FLASK_REVISION = """\
from alembic import op
import sqlalchemy as sa

revision = "f1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "note", sa.Column("id", sa.Integer, primary_key=True), sa.Column("body", sa.Text)
    )


def downgrade():
    op.drop_table("note")
"""
FLASK_TESTS = """
import psycopg


def test_the_app_history(pgmig_dsn, pgmig_schema):
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT current_schema()").fetchone()[0] == pgmig_schema.name
        conn.execute("INSERT INTO note (body) VALUES ('x')")
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "f1"


async def test_a_second_schema_gets_its_own_app(pgmig_factory):
    other = await pgmig_factory()
    with psycopg.connect(other.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM note").fetchone()[0] == 0
"""


def write_flask_project(root: Path) -> None:
    """A Flask-Migrate project under `root`, made as `flask db init` makes it."""
    import flask_migrate

    template = Path(flask_migrate.__file__).parent / "templates" / "flask"
    migrations = root / "migrations"
    (migrations / "versions").mkdir(parents=True)
    for name in ("env.py", "script.py.mako"):
        (migrations / name).write_text((template / name).read_text())
    (migrations / "alembic.ini").write_text((template / "alembic.ini.mako").read_text())
    (migrations / "versions" / "f1_notes.py").write_text(FLASK_REVISION)
    (root / "flaskapp.py").write_text(FLASK_APP)
    (root / "conftest.py").write_text(FLASK_CONFTEST)
    (root / "test_flask.py").write_text(FLASK_TESTS)

"""Small migration folders of our own, one per tool, written as each tool's documentation
writes them; each with its tricky parts, a way to break its downs, and tests of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FormatSet:
    """A folder (relative path -> text), what its tests check, and a broken down."""

    name: str
    files: dict[str, str]
    tests: str
    broken_down: dict[str, str] = field(default_factory=dict)
    broken_says: str = ""  # what the down check's failure must name
    ini: str = ""

    def write(self, folder: Path, extra: dict[str, str] | None = None) -> Path:
        for rel, text in {**self.files, **(extra or {})}.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return folder


# Every set makes `users` (name text, a seed row 'seed'); each test module checks that the
# seed is there, that a row a test adds is gone for the next, and what is special to its tool.
COMMON_TESTS = """
import psycopg
import pytest


@pytest.mark.parametrize("n", range(4))
def test_fresh_schema_each_time(pgmig_dsn, n):
    with psycopg.connect(pgmig_dsn) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM users ORDER BY id")]
        assert names == SEED
        conn.execute("INSERT INTO users (name) VALUES (%s)", (f"added{n}",))
"""

GOOSE = FormatSet(
    "goose",
    {
        "00001_create_users.sql": """\
-- +goose Up
-- +goose StatementBegin
CREATE TABLE users (
    id serial PRIMARY KEY,
    name text NOT NULL
);
-- +goose StatementEnd
INSERT INTO users (name) VALUES ('seed');

-- +goose Down
DROP TABLE users;
""",
        # a body whose semicolons are outside dollar quotes: a quoted body, BEGIN ATOMIC
        "00002_functions.sql": """\
-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION shout(t text) RETURNS text LANGUAGE sql IMMUTABLE AS '
    SELECT upper(t);
';
-- +goose StatementEnd

-- +goose StatementBegin
CREATE PROCEDURE add_pair(n text) LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO users (name) VALUES (n);
    INSERT INTO users (name) VALUES (n || '2');
END;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DROP PROCEDURE add_pair(text);
DROP FUNCTION shout(text);
-- +goose StatementEnd
""",
        "00003_mood.sql": """\
-- +goose Up
CREATE TYPE mood AS ENUM ('ok');
ALTER TABLE users ADD COLUMN feeling mood;

-- +goose Down
ALTER TABLE users DROP COLUMN feeling;
DROP TYPE mood;
""",
        # adding an enum value and using it: only outside a transaction
        "00004_happy.sql": """\
-- +goose NO TRANSACTION
-- +goose Up
ALTER TYPE mood ADD VALUE 'happy';
UPDATE users SET feeling = 'happy' WHERE name = 'seed';

-- +goose Down
-- an enum value cannot be removed: irreversible
""",
        "00005_owner.sql": """\
-- +goose Up
-- +goose ENVSUB ON
CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO settings VALUES ('owner', '${PGMIG_TEST_OWNER}'),
    ('region', '${PGMIG_TEST_REGION:-eu}');
-- +goose ENVSUB OFF
INSERT INTO settings VALUES ('literal', '${NOT_SUBSTITUTED}');

-- +goose Down
DROP TABLE settings;
""",
    },
    COMMON_TESTS
    + """
SEED = ["seed"]


def test_goose_sections(pgmig_dsn):
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT shout('a')").fetchone()[0] == "A"
        conn.execute("CALL add_pair('x')")
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 3
        feeling = conn.execute("SELECT feeling::text FROM users WHERE name = 'seed'")
        assert feeling.fetchone()[0] == "happy"
        rows = dict(conn.execute("SELECT key, value FROM settings"))
        assert rows == {"owner": "team-a", "region": "eu", "literal": "${NOT_SUBSTITUTED}"}
""",
    broken_down={
        "00002_functions.sql": """\
-- +goose Up
CREATE FUNCTION shout(t text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT upper(t)';

-- +goose Down
SELECT 1;
"""
    },
    broken_says='function "shout"(t text) is still there after 00002_functions.sql (Down section)',
)

DBMATE = FormatSet(
    "dbmate",
    {
        # the up's last statement has no semicolon, as dbmate allows
        "20240101000000_create_users.sql": """\
-- migrate:up
create table users (
  id serial primary key,
  name text not null
);
insert into users (name) values ('seed')

-- migrate:down
drop table users;
""",
        "20240102000000_mood.sql": """\
-- migrate:up
create type mood as enum ('ok');
alter table users add column feeling mood;
  -- migrate:down  (indented: dbmate reads this as a comment of the up block)

-- migrate:down
alter table users drop column feeling;
drop type mood;
""",
        "20240103000000_happy.sql": """\
-- migrate:up transaction:false
alter type mood add value if not exists 'happy';
update users set feeling = 'happy' where name = 'seed';
create index concurrently users_name on users (name);

-- migrate:down transaction:false
-- pgmig:down-differs type mood 'happy'
drop index concurrently users_name;
""",
    },
    COMMON_TESTS
    + """
SEED = ["seed"]


def test_dbmate_blocks(pgmig_dsn):
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT feeling::text FROM users").fetchone()[0] == "happy"
        assert conn.execute("SELECT to_regclass('users_name') IS NOT NULL").fetchone()[0]
""",
    broken_down={
        "20240102000000_mood.sql": """\
-- migrate:up
create type mood as enum ('ok');
alter table users add column feeling mood;

-- migrate:down
alter table users drop column feeling;
"""
    },
    broken_says='type "mood" is still there after 20240102000000_mood.sql (migrate:down)',
)

PRISMA = FormatSet(
    "prisma",
    {
        "migration_lock.toml": (
            "# Please do not edit this file manually\n"
            "# It should be added in your version-control system (e.g., Git)\n"
            'provider = "postgresql"\n'
        ),
        "20240101000000_init/migration.sql": """\
-- CreateEnum
CREATE TYPE "Role" AS ENUM ('USER', 'ADMIN');

-- CreateTable
CREATE TABLE "User" (
    "id" SERIAL NOT NULL,
    "email" TEXT NOT NULL,
    "role" "Role" NOT NULL DEFAULT 'USER',

    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
""",
        "20240102000000_posts/migration.sql": """\
-- CreateTable
CREATE TABLE "Post" (
    "id" SERIAL NOT NULL,
    "title" TEXT NOT NULL,
    "authorId" INTEGER NOT NULL,

    CONSTRAINT "Post_pkey" PRIMARY KEY ("id")
);

-- AddForeignKey
ALTER TABLE "Post" ADD CONSTRAINT "Post_authorId_fkey" FOREIGN KEY ("authorId")
    REFERENCES "User"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- a view under the name the other sets' tests read
CREATE VIEW users AS SELECT "id" AS id, "email" AS name FROM "User";
INSERT INTO "User" ("email", "role") VALUES ('seed', 'ADMIN');
INSERT INTO "Post" ("title", "authorId") VALUES ('Hello', 1);
""",
    },
    """
import psycopg
import pytest

SEED = ["seed"]


@pytest.mark.parametrize("n", range(4))
def test_quoted_identifiers_reset(pgmig_dsn, n):
    with psycopg.connect(pgmig_dsn) as conn:
        assert [r[0] for r in conn.execute('SELECT "email" FROM "User" ORDER BY "id"')] == SEED
        assert conn.execute('SELECT count(*) FROM "Post"').fetchone()[0] == 1
        new = conn.execute(
            'INSERT INTO "User" ("email") VALUES (%s) RETURNING "id", "role"::text', (f"u{n}",)
        ).fetchone()
        assert new == (2, "USER")  # the sequence of a quoted table restarts too
        conn.execute('INSERT INTO "Post" ("title", "authorId") VALUES (\\'x\\', %s)', (new[0],))
""",
)

DIESEL = FormatSet(
    "diesel",
    {
        "00000000000000_diesel_initial_setup/up.sql": """\
-- This file was automatically created by Diesel to setup helper functions
-- and other internal bookkeeping.

CREATE OR REPLACE FUNCTION diesel_manage_updated_at(_tbl regclass) RETURNS VOID AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER set_updated_at BEFORE UPDATE ON %s
                    FOR EACH ROW EXECUTE PROCEDURE diesel_set_updated_at()', _tbl);
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION diesel_set_updated_at() RETURNS trigger AS $$
BEGIN
    IF NEW IS DISTINCT FROM OLD AND NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := current_timestamp;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
""",
        "00000000000000_diesel_initial_setup/down.sql": """\
DROP FUNCTION IF EXISTS diesel_manage_updated_at(_tbl regclass);
DROP FUNCTION IF EXISTS diesel_set_updated_at();
""",
        "2024-01-01-000000_create_users/up.sql": """\
CREATE TABLE users (
  id SERIAL PRIMARY KEY,
  name VARCHAR NOT NULL,
  updated_at TIMESTAMP NOT NULL DEFAULT '2000-01-01'
);
SELECT diesel_manage_updated_at('users');
INSERT INTO users (name) VALUES ('seed');
""",
        "2024-01-01-000000_create_users/down.sql": "DROP TABLE users;\n",
        "2024-01-02-000000_index_names/up.sql": (
            "CREATE INDEX CONCURRENTLY users_name ON users (name);\n"
        ),
        "2024-01-02-000000_index_names/down.sql": "DROP INDEX CONCURRENTLY users_name;\n",
        "2024-01-02-000000_index_names/metadata.toml": "run_in_transaction = false\n",
        # a migration that uses diesel's own history table, as large diesel projects do
        "2024-01-03-000000_guard_history/up.sql": """\
CREATE FUNCTION no_future() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE 'not from the future: %', NEW.version;
END $$;
CREATE TRIGGER no_future BEFORE INSERT ON __diesel_schema_migrations
    FOR EACH ROW WHEN (NEW.version > '3') EXECUTE FUNCTION no_future();
""",
        "2024-01-03-000000_guard_history/down.sql": (
            "DROP TRIGGER no_future ON __diesel_schema_migrations;\nDROP FUNCTION no_future();\n"
        ),
    },
    COMMON_TESTS
    + """
SEED = ["seed"]


def test_diesel_trigger_and_index(pgmig_dsn):
    with psycopg.connect(pgmig_dsn) as conn:
        conn.execute("UPDATE users SET name = 'renamed'")
        changed = conn.execute("SELECT updated_at > '2001-01-01' FROM users").fetchone()[0]
        assert changed
        assert conn.execute("SELECT to_regclass('users_name') IS NOT NULL").fetchone()[0]
""",
    broken_down={
        "2024-01-01-000000_create_users/down.sql": "ALTER TABLE users DROP COLUMN name;\n"
    },
    broken_says="2024-01-01-000000_create_users/down.sql does not undo",
)

FLYWAY = FormatSet(
    "flyway",
    {
        "V1__create_users.sql": """\
CREATE TABLE ${flyway:defaultSchema}.users (
    id serial PRIMARY KEY,
    name text NOT NULL
);
INSERT INTO users (name) VALUES ('seed');
COMMENT ON TABLE users IS 'made in ${flyway:defaultSchema}';
""",
        "V1_1__owner.sql": "ALTER TABLE users ADD COLUMN owner text DEFAULT '${owner}';\n",
        "U1_1__owner.sql": "ALTER TABLE users DROP COLUMN owner;\n",
        "V2__index.sql": "CREATE INDEX CONCURRENTLY users_name ON users (name);\n",
        "V2__index.sql.conf": "executeInTransaction=false\n",
        "R__user_names.sql": (
            "CREATE OR REPLACE VIEW user_names AS SELECT upper(name) AS name FROM users;\n"
        ),
    },
    COMMON_TESTS
    + """
SEED = ["seed"]


def test_flyway_scripts(pgmig_dsn, pgmig_schema):
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT owner FROM users").fetchone()[0] == "team-a"
        assert conn.execute("SELECT name FROM user_names").fetchone()[0] == "SEED"
        comment = conn.execute("SELECT obj_description('users'::regclass)").fetchone()[0]
        assert comment == f"made in {pgmig_schema.name}"
        assert conn.execute("SELECT to_regclass('users_name') IS NOT NULL").fetchone()[0]
""",
    broken_down={"U1_1__owner.sql": "SELECT 1;\n"},
    broken_says='column "owner" of users is still there after U1_1__owner.sql',
    ini="pgmig_placeholders = owner=team-a\n",
)

SQITCH = FormatSet(
    "sqitch",
    {
        "sqitch.conf": "[core]\n\tengine = pg\n",
        "sqitch.plan": """\
%syntax-version=1.0.0
%project=flipr
%uri=https://example.com/flipr/

users 2024-01-01T10:00:00Z Dev Eloper <dev@example.com> # Creates table to track our users.
shout [users] 2024-01-02T10:00:00Z Dev Eloper <dev@example.com> # A function.
@v1.0 2024-01-03T10:00:00Z Dev Eloper <dev@example.com> # Tag v1.0.

shout [shout@v1.0] 2024-01-04T10:00:00Z Dev Eloper <dev@example.com> # Louder.
""",
        "deploy/users.sql": """\
-- Deploy flipr:users to pg

BEGIN;

CREATE TABLE users (
    id serial PRIMARY KEY,
    name text NOT NULL
);
INSERT INTO users (name) VALUES ('seed');

COMMIT;
""",
        "revert/users.sql": (
            "-- Revert flipr:users from pg\n\nBEGIN;\n\nDROP TABLE users;\n\nCOMMIT;\n"
        ),
        "verify/users.sql": """\
-- Verify flipr:users on pg

BEGIN;

SELECT id, name FROM users WHERE FALSE;

ROLLBACK;
""",
        "deploy/shout@v1.0.sql": (
            "BEGIN;\nCREATE FUNCTION shout(t text) RETURNS text LANGUAGE sql "
            "AS $$ SELECT upper(t) $$;\nCOMMIT;\n"
        ),
        "revert/shout@v1.0.sql": "BEGIN;\nDROP FUNCTION shout(text);\nCOMMIT;\n",
        "verify/shout@v1.0.sql": "BEGIN;\nSELECT 1 / (shout('a') = 'A')::int;\nROLLBACK;\n",
        "deploy/shout.sql": (
            "BEGIN;\nCREATE OR REPLACE FUNCTION shout(t text) RETURNS text LANGUAGE sql "
            "AS $$ SELECT upper(t) || '!' $$;\nCOMMIT;\n"
        ),
        "revert/shout.sql": (
            "BEGIN;\nCREATE OR REPLACE FUNCTION shout(t text) RETURNS text LANGUAGE sql "
            "AS $$ SELECT upper(t) $$;\nCOMMIT;\n"
        ),
        "verify/shout.sql": "BEGIN;\nSELECT 1 / (shout('a') = 'A!')::int;\nROLLBACK;\n",
    },
    COMMON_TESTS
    + """
SEED = ["seed"]


def test_sqitch_plan_order(pgmig_dsn):
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT shout('a')").fetchone()[0] == "A!"
""",
    broken_down={"verify/shout.sql": "BEGIN;\nSELECT 1 / (shout('a') = 'A')::int;\nROLLBACK;\n"},
    broken_says="verify/shout.sql fails after shout: DivisionByZeroError",
)

YOYO = FormatSet(
    "yoyo",
    {
        # the first by id depends on the others: yoyo applies it last
        "20231231_01_zzzzz-seed.sql": (
            "-- seed the users\n-- depends: 20240101_01_abcde-create-users\n\n"
            "INSERT INTO users (name) VALUES ('seed');\n"
        ),
        "20231231_01_zzzzz-seed.rollback.sql": "DELETE FROM users WHERE name = 'seed';\n",
        "20240101_01_abcde-create-users.sql": (
            "-- create the users\n-- depends: \n\n"
            "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL);\n"
        ),
        "20240101_01_abcde-create-users.rollback.sql": "DROP TABLE users;\n",
        "20240102_01_fghij-index.sql": (
            "-- index names\n-- depends: 20240101_01_abcde-create-users\n"
            "-- transactional: false\n\nCREATE INDEX CONCURRENTLY users_name ON users (name);\n"
        ),
        "20240102_01_fghij-index.rollback.sql": "DROP INDEX users_name;\n",
    },
    COMMON_TESTS
    + """
SEED = ["seed"]


def test_yoyo_index(pgmig_dsn):
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT to_regclass('users_name') IS NOT NULL").fetchone()[0]
""",
    broken_down={"20240102_01_fghij-index.rollback.sql": "SELECT 1;\n"},
    broken_says=(
        'index "users_name" on users is still there after 20240102_01_fghij-index.rollback.sql'
    ),
)

SETS = {s.name: s for s in (GOOSE, DBMATE, PRISMA, DIESEL, FLYWAY, SQITCH, YOYO)}
ENV = {"PGMIG_TEST_OWNER": "team-a"}

"""Reliability matrix, safety: other data stays byte-identical; the embedded server is private."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from plugin_support import make_project, sql
from reliability_support import local_server, needs_binaries, pg_dump, pgmig_schemas

pytestmark = [pytest.mark.usefixtures("clean_env"), needs_binaries]


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with local_server(max_connections=200) as handle:
        yield handle.info.dsn


# The user's own objects, some named like the plugin's, some like its migrations' tables.
USER_DATA = """
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('ok', 'meh');
CREATE TABLE app.users (id serial PRIMARY KEY, name text NOT NULL, mood app.mood DEFAULT 'ok');
CREATE INDEX users_name ON app.users (name);
COMMENT ON TABLE app.users IS 'production data';
INSERT INTO app.users (name) SELECT 'user ' || n FROM generate_series(1, 500) AS n;
SELECT setval('app.users_id_seq', 1000);
CREATE TABLE app.items (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id int REFERENCES app.users (id),
    title text
);
INSERT INTO app.items (user_id, title) SELECT n, 'item ' || n FROM generate_series(1, 50) AS n;
CREATE VIEW app.busy AS SELECT user_id, count(*) FROM app.items GROUP BY user_id;
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.title := NEW.title || '!'; RETURN NEW; END $$;
CREATE TRIGGER items_touch BEFORE INSERT ON app.items FOR EACH ROW EXECUTE FUNCTION app.touch();
-- a tracking table of the same name and shape the engine uses, with rows of a "module"
CREATE TABLE app.schema_migrations (
    id serial PRIMARY KEY, filename text, checksum text, module_name text,
    applied_at timestamptz DEFAULT '2020-01-01'
);
INSERT INTO app.schema_migrations (filename, checksum, module_name)
VALUES ('001_users.sql', 'x', 'test_project_app');
-- names the plugin could mistake for its own
CREATE SCHEMA pgmig_lookalike;
CREATE TABLE pgmig_lookalike.users (name text);
INSERT INTO pgmig_lookalike.users VALUES ('keep me');
CREATE SCHEMA pgmig_deadbeef_gw0_s1;
CREATE TABLE pgmig_deadbeef_gw0_s1.users (id int);
CREATE TABLE public.users (id int, name text);
INSERT INTO public.users VALUES (1, 'public row');
"""

DROP_USER_DATA = (
    "DROP SCHEMA IF EXISTS app, pgmig_lookalike, pgmig_deadbeef_gw0_s1 CASCADE; "
    "DROP TABLE IF EXISTS public.users"
)

# A suite that does what suites do in their own schemas, failures included.
BUSY_SUITE = """
import psycopg
import pytest

@pytest.mark.parametrize("n", range(4))
async def test_writes(pgmig_conn, n):
    await pgmig_conn.execute("INSERT INTO users (name) VALUES ('x'); DELETE FROM items")
    await pgmig_conn.execute("TRUNCATE items")

async def test_changes_ddl(pgmig_conn):
    await pgmig_conn.execute("CREATE TABLE extra (n int); DROP TABLE items")
    await pgmig_conn.execute("ALTER TABLE users ADD c int")

def test_sync_driver(pgmig_dsn):
    with psycopg.connect(pgmig_dsn, autocommit=True) as conn:
        conn.execute("UPDATE users SET name = 'changed'")
        conn.execute("CREATE TABLE schema_migrations_copy AS TABLE schema_migrations")

async def test_migrations_again(pgmig_migrations):
    assert (await pgmig_migrations.apply_pending_migrations())["status"] == "up_to_date"

async def test_factory(pgmig_factory):
    await pgmig_factory()

def test_fails(pgmig_schema):
    assert False, "an ordinary failure"

@pytest.mark.pgmig(migrations="broken")
def test_broken_migrations(pgmig_schema):
    pass

@pytest.mark.pgmig(scope="worker")
@pytest.mark.parametrize("n", range(3))
async def test_worker_scope(pgmig_pool, n):
    await pgmig_pool.execute("INSERT INTO users (name) VALUES ('w')")
"""


def global_state(dsn: str) -> list[object]:
    """What a dump of one database misses: roles, databases, event triggers."""
    return [
        sql(dsn, "SELECT rolname, rolsuper, rolcanlogin FROM pg_roles ORDER BY 1"),
        sql(dsn, "SELECT datname FROM pg_database ORDER BY 1"),
        sql(dsn, "SELECT evtname FROM pg_event_trigger ORDER BY 1"),
    ]


def test_other_schemas_and_data_stay_byte_identical(pytester: pytest.Pytester, dsn: str) -> None:
    """pg_dump of the whole database, minus pgmig_registry (the plugin's own), before = after."""
    sql(dsn, DROP_USER_DATA)
    sql(dsn, USER_DATA)
    try:
        before, before_globals = pg_dump(dsn), global_state(dsn)
        assert "keep me" in before and "production data" in before
        make_project(pytester, BUSY_SUITE)
        broken = pytester.mkdir("broken")
        (broken / "001_bad.sql").write_text("CREATE TABLE t (id int);\nSELECT * FROM app_nope;\n")
        args = [f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations", "-p", "no:randomly"]
        for extra in (
            ["-n", "2", "--pgmig-scope=test"],
            ["-n", "2", "--pgmig-scope=worker", "--pgmig-keep"],
            [],  # serial; its start-up reaps what --pgmig-keep kept
        ):
            result = pytester.runpytest_subprocess(*args, *extra, timeout=120)
            result.assert_outcomes(passed=11, failed=2)
        assert pgmig_schemas(dsn) == {"pgmig_lookalike", "pgmig_deadbeef_gw0_s1"}
        assert pg_dump(dsn) == before
        assert global_state(dsn) == before_globals
    finally:
        sql(dsn, DROP_USER_DATA)


# --- the embedded server is private ----------------------------------------------------------

INSPECT = """
import json, os, socket, stat, subprocess
from pathlib import Path

def listening_tcp_inodes():
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        inodes |= {f.split()[9] for f in lines if f.split()[3] == "0A"}
    return inodes

def process_tree(root):
    pids = {root}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == root:
                pids.add(int(entry))
    return pids

def socket_inodes(pid):
    found = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found

def modes(base):
    out = {}
    for root, dirs, files in os.walk(base):
        for name in [root, *[os.path.join(root, d) for d in dirs]]:
            info = os.lstat(name)
            out[name] = [stat.S_IMODE(info.st_mode), info.st_uid]
    return out

def nobody_connects(path):
    code = (
        "import socket, sys\\n"
        "s = socket.socket(socket.AF_UNIX)\\n"
        "try:\\n    s.connect(sys.argv[1])\\nexcept OSError as e:\\n    print(type(e).__name__)\\n"
        "else:\\n    print('connected')\\n"
    )
    out = subprocess.run(
        ["/usr/bin/python3", "-c", code, path], capture_output=True, text=True,
        user=65534, group=65534, extra_groups=[],
    )
    return out.stdout.strip() or out.stderr.strip()

def test_inspect(pgmig_server, pgmig_dsn):
    import psycopg
    host = Path(pgmig_server.host)
    data = host / "data"
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    with psycopg.connect(pgmig_server.dsn) as conn:
        listen = conn.execute("SHOW listen_addresses").fetchone()[0]
        password = conn.execute(
            "SELECT rolname FROM pg_authid WHERE rolpassword IS NOT NULL"
        ).fetchall()
        hba = conn.execute(
            "SELECT type, auth_method FROM pg_hba_file_rules WHERE error IS NULL"
        ).fetchall()
    tcp = set()
    for pid in process_tree(postmaster):
        tcp |= socket_inodes(pid) & listening_tcp_inodes()
    facts = dict(
        worker=os.environ.get("PYTEST_XDIST_WORKER", "main"),
        listen=listen,
        tcp_listening=sorted(tcp),
        passwords=[r[0] for r in password],
        hba=[list(r) for r in hba],
        socket=str(host / f".s.PGSQL.{pgmig_server.port}"),
        nobody=nobody_connects(str(host / f".s.PGSQL.{pgmig_server.port}")),
        modes=modes(os.environ["PGMIG_RUN_BASE"]),
        host=str(host),
        data=str(data),
        postgres_uid=os.stat(data).st_uid,
    )
    with open(f"facts-{facts['worker']}.json", "w") as out:
        json.dump(facts, out)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="inspects other accounts' processes")
@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "n2"])
def test_embedded_server_is_private(pytester: pytest.Pytester, run_base: Path, xdist: bool) -> None:
    """No TCP port, folders closed to other accounts, no password; as the plugin starts it."""
    make_project(pytester, INSPECT)
    args = ["--pgmig-migrations=migrations", "-p", "no:randomly"]
    if xdist:
        result = pytester.runpytest_subprocess("-n", "2", "--dist=each", *args, timeout=120)
    else:
        result = pytester.runpytest_subprocess(*args, timeout=120)
    assert result.ret == pytest.ExitCode.OK, "\n".join(result.outlines)
    facts = [json.loads(p.read_text()) for p in pytester.path.glob("facts-*.json")]
    assert len(facts) == (2 if xdist else 1)
    assert len({f["host"] for f in facts}) == 1  # one server for the whole run
    for fact in facts:
        assert fact["listen"] == ""
        assert fact["tcp_listening"] == []
        assert fact["passwords"] == []  # no role has a password at all
        # only unix-socket lines: nothing is reachable over the network
        assert fact["hba"] and {entry[0] for entry in fact["hba"]} == {"local"}
        # another account cannot even reach the socket
        assert fact["nobody"] == "PermissionError", fact["nobody"]
        for path, (mode, _uid) in fact["modes"].items():
            assert mode & 0o022 == 0, f"{path} is writable by others: {oct(mode)}"
        for folder in (fact["host"], fact["data"]):
            mode, uid = fact["modes"][folder]
            assert mode == 0o700, (folder, oct(mode))
            assert uid == fact["postgres_uid"] and uid != 0

"""The statement splitter and transaction planner (no server)."""

from __future__ import annotations

import pytest

from pytest_pgmig.engine.sqltext import ScanError, analyze, excerpt, line_of, split


def texts(sql: str) -> list[str]:
    return [sql[s.start : s.end] for s in split(sql)]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1; SELECT 2", ["SELECT 1;", "SELECT 2"]),
        ("SELECT 'a;b''c'; SELECT 2;", ["SELECT 'a;b''c';", "SELECT 2;"]),
        (r"SELECT E'it\'s;'; SELECT 2;", [r"SELECT E'it\'s;';", "SELECT 2;"]),
        ('SELECT 1 AS "a;""b"; SELECT 2;', ['SELECT 1 AS "a;""b";', "SELECT 2;"]),
        ("SELECT $$a;b$$; SELECT $t$ $$; $t$;", ["SELECT $$a;b$$;", "SELECT $t$ $$; $t$;"]),
        ("SELECT $1; SELECT a$b$ FROM t;", ["SELECT $1;", "SELECT a$b$ FROM t;"]),
        ("-- a; comment\nSELECT 1; /* x; /* y; */ z; */ SELECT 2;", ["SELECT 1;", "SELECT 2;"]),
        ("SELECT 1;;  ; -- trailing", ["SELECT 1;"]),
        ("CREATE RULE r AS ON INSERT TO t DO (SELECT 1; SELECT 2); SELECT 3;", None),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
            "SELECT CASE WHEN true THEN 2 END; END; SELECT 3;",
            None,
        ),
    ],
)
def test_split_honours_quotes_comments_and_bodies(sql: str, expected: list[str] | None) -> None:
    got = texts(sql)
    if expected is None:
        assert len(got) == 2 and got[1] == "SELECT 3;"
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("sql", "what", "position"),
    [
        ("SELECT 'abc", "string literal", 7),
        ("SELECT E'ab\\'", "E'' string literal", 7),
        ('SELECT "abc', "quoted identifier", 7),
        ("SELECT $x$ abc $y$", "dollar-quoted", 7),
        ("SELECT 1; /* a /* b */", "comment", 10),
    ],
)
def test_unterminated_constructs_are_reported(sql: str, what: str, position: int) -> None:
    with pytest.raises(ScanError, match=what) as info:
        split(sql)
    assert info.value.position == position


def test_top_level_begin_commit_are_blanked_keeping_positions() -> None:
    sql = "BEGIN;\nCREATE TABLE t (a text DEFAULT 'COMMIT;');\nCOMMIT;\n"
    plan = analyze(sql)
    assert plan.transactional
    assert len(plan.script) == len(sql)
    assert plan.script.count("\n") == sql.count("\n")
    assert plan.script.split() == ["CREATE", "TABLE", "t", "(a", "text", "DEFAULT", "'COMMIT;');"]


@pytest.mark.parametrize(
    "control",
    ["BEGIN", "BEGIN WORK", "START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "begin transaction"],
)
def test_every_spelling_of_begin_is_stripped(control: str) -> None:
    plan = analyze(f"{control};\nSELECT 1;\nEND;")
    assert plan.script.split() == ["SELECT", "1;"]


def test_plpgsql_begin_and_commit_inside_dollar_quotes_stay() -> None:
    sql = "DO $$ BEGIN PERFORM 1; COMMIT; END $$;"
    assert analyze(sql).script == sql


def test_top_level_rollback_is_refused() -> None:
    with pytest.raises(ScanError, match="ROLLBACK"):
        analyze("BEGIN; SELECT 1; ROLLBACK;")
    assert analyze("SAVEPOINT a; SELECT 1; ROLLBACK TO SAVEPOINT a;").transactional


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE INDEX CONCURRENTLY i ON t (a)",
        "create unique index concurrently if not exists i on t (a)",
        "DROP INDEX CONCURRENTLY IF EXISTS i",
        "REINDEX TABLE CONCURRENTLY t",
        "REINDEX (VERBOSE, CONCURRENTLY) INDEX i",
        "REINDEX DATABASE app",
        "VACUUM ANALYZE t",
        "ALTER SYSTEM SET work_mem = '64MB'",
        "CREATE DATABASE other",
        "DROP DATABASE other",
        "ALTER TABLE p DETACH PARTITION c CONCURRENTLY",
    ],
)
def test_non_transactional_statements_are_detected(statement: str) -> None:
    plan = analyze(f"CREATE TABLE t (a int);\n{statement};\n")
    assert not plan.transactional
    assert plan.reason is not None and plan.reason.startswith("line 2:")


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX concurrently_idx ON t (a);",
        "-- CREATE INDEX CONCURRENTLY i ON t (a);\nSELECT 1;",
        "/* VACUUM */ SELECT 'VACUUM';",
        "CREATE INDEX i ON t (a); COMMENT ON INDEX i IS 'use CONCURRENTLY';",
        "ALTER TYPE mood ADD VALUE 'meh';",
        "DO $$ BEGIN EXECUTE 'VACUUM'; END $$;",
    ],
)
def test_lookalikes_stay_transactional(sql: str) -> None:
    assert analyze(sql).transactional


def test_marker_forces_autocommit() -> None:
    plan = analyze("SELECT 1;\n-- pgdbm:no-transaction\nSELECT 2;")
    assert not plan.transactional
    assert plan.reason == "line 2: -- pgdbm:no-transaction"
    assert analyze("SELECT 1; -- pgdbm:no-transaction").transactional  # not at line start


def test_line_and_excerpt() -> None:
    text = "SELECT 1;\n\tSELEC 2;\nSELECT 3;"
    index = text.index("SELEC 2")
    assert line_of(text, index) == 2
    assert excerpt(text, index) == "   1 | SELECT 1;\n   2 | \tSELEC 2;\n     |  ^"
    assert excerpt(text, 0) == "   1 | SELECT 1;\n     | ^"

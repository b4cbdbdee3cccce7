"""The reset function's SQL, built without a server: what it deletes, reseeds and compares."""

from __future__ import annotations

from pytest_pgmig.isolation.reset import Known, Table, Template, reset_function_sql

TABLES = [Table("orders", "id, total", "(r).id, (r).total"), Table("tags", "id", "(r).id")]
TEMPLATE = Template("tpl_1", {"orders": "abc123"}, ())
SEEN = Known((16400, 16410), (16420,), 16430)


def test_reset_builder_replica_deletes_and_reseeds_through_text() -> None:
    sql = reset_function_sql("s_1", TABLES, TEMPLATE, replica=True, seen=SEEN)
    assert 'DELETE FROM "s_1"."tags";' in sql
    assert "TRUNCATE" not in sql
    assert (
        'INSERT INTO "s_1"."orders" (id, total) OVERRIDING SYSTEM VALUE '
        'SELECT (r).id, (r).total FROM (SELECT s.r::"s_1"."orders" AS r '
        'FROM "tpl_1"."orders" AS s) AS seed;'
    ) in sql
    assert "IS DISTINCT FROM E'abc123'" in sql
    # the state reads the schema's catalog rows by oid
    assert "state_v2(E's_1', ARRAY[E'schema_migrations'], p_log, '{16400,16410}'" in sql


def test_reset_builder_without_superuser_truncates_what_holds_rows() -> None:
    sql = reset_function_sql("s_1", TABLES, TEMPLATE, replica=False, seen=SEEN)
    assert "EXECUTE 'TRUNCATE ' || array_to_string(dirty, ', ') || ' CASCADE';" in sql
    assert "DELETE FROM" not in sql
    assert sql.startswith('CREATE OR REPLACE FUNCTION pgmig_registry."reset_s_1"')

"""Generated migration sets for the benchmarks and the equivalence tests."""

from __future__ import annotations

import textwrap


def migration_files(tables: int, files: int, *, seed: bool = False) -> list[tuple[str, str]]:
    """M files: the first defines the trigger function, the others spread the T tables.

    With `seed`, a last data migration inserts rows into t1 and t2 (and so advances their
    sequences), as a real project's seed data would.
    """
    out = [
        (
            "001_functions.sql",
            textwrap.dedent(
                """\
                CREATE FUNCTION touch_updated_at() RETURNS trigger AS $$
                BEGIN
                    NEW.updated_at = now();
                    RETURN NEW;
                END;
                $$ LANGUAGE plpgsql;
                """
            ),
        )
    ]
    per_file = [[] for _ in range(files - 1)]
    for t in range(1, tables + 1):
        per_file[(t - 1) * (files - 1) // tables].append(t)
    for index, group in enumerate(per_file, start=2):
        body = []
        for t in group:
            fk = f",\n    parent_id integer REFERENCES t{t - 1} (id)" if t > 1 else ""
            body.append(
                f"CREATE TABLE t{t} (\n    id serial PRIMARY KEY,\n    name text UNIQUE NOT NULL,"
                f"\n    created_at timestamptz NOT NULL DEFAULT now(),\n"
                f"    updated_at timestamptz NOT NULL DEFAULT now(){fk}\n);\n"
                f"CREATE INDEX t{t}_created ON t{t} (created_at);\n"
                f"CREATE TRIGGER t{t}_touch BEFORE UPDATE ON t{t} "
                f"FOR EACH ROW EXECUTE FUNCTION touch_updated_at();\n"
            )
        out.append((f"{index:03d}_tables.sql", "".join(body) or "SELECT 1;\n"))
    if seed:
        rows = "INSERT INTO t1 (name) VALUES ('seed-1'), ('seed-2'), ('seed-3');\n"
        if tables > 1:
            rows += "INSERT INTO t2 (name, parent_id) VALUES ('seed-child', 2);\n"
        out.append((f"{files + 1:03d}_seed.sql", rows))
    return sorted(out)


def long_history(files: int, tables: int) -> list[tuple[str, str]]:
    """A project's long history in `files` files: the T tables of `migration_files`, one file
    each, then years of small changes to them (a column, its index, a default, a view)."""
    out = migration_files(tables, tables + 1)
    for index in range(tables + 2, files + 1):
        t = (index * 7) % tables + 1
        kind = index % 4
        if kind == 0:
            body = f"ALTER TABLE t{t} ADD COLUMN c{index} text;\n"
        elif kind == 1:
            body = f"ALTER TABLE t{t} ADD COLUMN c{index} integer NOT NULL DEFAULT 0;\n"
            body += f"CREATE INDEX t{t}_c{index} ON t{t} (c{index});\n"
        elif kind == 2:
            body = f"CREATE OR REPLACE VIEW v{t} AS SELECT id, name FROM t{t};\n"
        else:
            body = f"COMMENT ON TABLE t{t} IS 'changed in migration {index}';\n"
        out.append((f"{index:03d}_change.sql", body))
    return sorted(out)

"""A migration set with types of its own and seed rows that use them (enums, domains, ...)."""

from __future__ import annotations

from pathlib import Path

TYPED_FILES = {
    "001_types.sql": """
CREATE TYPE group_source AS ENUM ('user', 'oidc', 'scim');
CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
CREATE TYPE money_amount AS (currency char(3), cents bigint);
CREATE TYPE float_range AS RANGE (subtype = float8);
""",
    "002_tables.sql": """
CREATE TABLE groups (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    source group_source NOT NULL DEFAULT 'user',
    sources group_source[] NOT NULL DEFAULT '{}',
    contact email,
    budget money_amount,
    window_ float_range,
    slug text GENERATED ALWAYS AS (lower(name)) STORED
);
CREATE TABLE events (
    id serial,
    at date NOT NULL,
    kind group_source NOT NULL,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE members (
    group_id bigint NOT NULL REFERENCES groups (id),
    who email NOT NULL,
    PRIMARY KEY (group_id, who)
);
""",
    "003_seed.sql": """
INSERT INTO groups (name, source, sources, contact, budget, window_) VALUES
    ('Everyone', 'user', '{user,oidc}', 'all@example.com', ('EUR', 1250), '[0.5,2.5)'),
    ('Admins', 'scim', '{scim}', NULL, NULL, 'empty');
INSERT INTO events (at, kind) VALUES ('2025-06-01', 'oidc'), ('2026-02-01', 'scim');
INSERT INTO members VALUES (1, 'a@example.com');
CREATE MATERIALIZED VIEW group_counts AS
    SELECT g.source, count(*) AS n FROM groups g GROUP BY g.source;
""",
}

# What a test might do to such a schema: seed rows changed, removed and added to.
DIRTY_SQL = [
    "UPDATE groups SET source = 'oidc', sources = '{oidc}', budget = ('USD', 1) "
    "WHERE name = 'Everyone'",
    "DELETE FROM members",
    "DELETE FROM groups WHERE name = 'Admins'",
    "INSERT INTO groups (name, source) VALUES ('New', 'scim')",
    "INSERT INTO events (at, kind) VALUES ('2026-03-01', 'user')",
    "UPDATE events SET kind = 'user' WHERE at = '2025-06-01'",
]


def write_typed_set(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in TYPED_FILES.items():
        (folder / name).write_text(text)
    return folder

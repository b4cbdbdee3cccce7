-- auditlog's own tables. The library migrates whatever schema it is given, tracked as
-- module_name="auditlog_<schema>", so it can live beside an application or on its own.
CREATE TABLE IF NOT EXISTS {{tables.audit_entries}} (
    id         bigserial PRIMARY KEY,
    actor      text NOT NULL CHECK (actor <> ''),
    action     text NOT NULL,
    target     text,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS audit_entries_actor ON {{tables.audit_entries}} (actor, at DESC);

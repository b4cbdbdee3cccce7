-- Templated tables: {{tables.jobs}} renders to "<schema>".jobs, whatever schema is migrated.
CREATE TABLE {{tables.jobs}} (
    id          bigserial PRIMARY KEY,
    queue       text NOT NULL REFERENCES {{tables.queues}} (name) ON DELETE CASCADE,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    status      text NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'done', 'failed')),
    priority    integer NOT NULL DEFAULT 0,
    attempts    integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    run_after   timestamptz NOT NULL DEFAULT now(),
    locked_by   text,
    locked_at   timestamptz,
    last_error  text,
    dedupe_key  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- a running job always says who holds it
    CHECK ((status = 'running') = (locked_by IS NOT NULL))
);

-- At most one live job per (queue, dedupe_key): finished jobs free the key again.
CREATE UNIQUE INDEX jobs_dedupe_key ON {{tables.jobs}} (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');

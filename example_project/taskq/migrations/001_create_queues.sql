-- Plain SQL that names no schema: the engine runs every file with search_path set to the
-- schema it migrates, so `queues` lands in the test's (or the tenant's) schema.
CREATE TABLE queues (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]*$'),
    max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 100),
    paused       boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- A file that manages its own transaction: the engine runs it as written, so both
-- statements land together or not at all.
BEGIN;

CREATE TABLE {{tables.dead_letters}} (
    job_id      bigint PRIMARY KEY REFERENCES {{tables.jobs}} (id) ON DELETE CASCADE,
    queue       text NOT NULL,
    payload     jsonb NOT NULL,
    attempts    integer NOT NULL,
    last_error  text NOT NULL,
    died_at     timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE {{tables.queues}}
    ADD COLUMN retry_delay interval NOT NULL DEFAULT interval '30 seconds'
    CHECK (retry_delay >= interval '0');

COMMIT;

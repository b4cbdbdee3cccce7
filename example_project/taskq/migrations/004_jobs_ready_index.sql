-- CREATE INDEX CONCURRENTLY cannot run inside a transaction block: the engine sees it and
-- runs this file outside one (keep such files to the index alone).
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_ready
    ON {{tables.jobs}} (queue, priority DESC, run_after, id)
    WHERE status = 'queued';

-- A view the application reads its dashboard from: one row per queue, idle queues included.
CREATE VIEW {{tables.queue_stats}} AS
SELECT q.name AS queue,
       q.paused,
       count(j.id) FILTER (WHERE j.status = 'queued')  AS queued,
       count(j.id) FILTER (WHERE j.status = 'running') AS running,
       count(j.id) FILTER (WHERE j.status = 'done')    AS done,
       count(j.id) FILTER (WHERE j.status = 'failed')  AS failed
FROM {{tables.queues}} AS q
LEFT JOIN {{tables.jobs}} AS j ON j.queue = q.name
GROUP BY q.name, q.paused;

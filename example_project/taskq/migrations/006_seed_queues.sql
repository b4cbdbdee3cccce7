-- A data migration: the queues every installation starts with.
INSERT INTO {{tables.queues}} (name, max_attempts, retry_delay) VALUES
    ('default', 3, interval '30 seconds'),
    ('emails',  5, interval '1 minute'),
    ('reports', 1, interval '0')
ON CONFLICT (name) DO NOTHING;

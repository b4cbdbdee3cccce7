-- An audit trail written by triggers. The function bodies are dollar-quoted and hold
-- semicolons of their own; the engine's splitter keeps each body in one statement.
CREATE TABLE {{tables.job_events}} (
    id          bigserial PRIMARY KEY,
    job_id      bigint NOT NULL REFERENCES {{tables.jobs}} (id) ON DELETE CASCADE,
    old_status  text,
    new_status  text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION {{schema}}.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END;
$$;

-- The body names its table through a template: rendered when the migration runs, so the
-- trigger writes into its own schema whatever search_path the writer has.
CREATE FUNCTION {{schema}}.record_job_event() RETURNS trigger
LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {{tables.job_events}} (job_id, old_status, new_status)
        VALUES (NEW.id, NULL, NEW.status);
    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO {{tables.job_events}} (job_id, old_status, new_status)
        VALUES (NEW.id, OLD.status, NEW.status);
    END IF;
    RETURN NEW;
END;
$body$;

CREATE TRIGGER jobs_touch_updated_at
    BEFORE UPDATE ON {{tables.jobs}}
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.touch_updated_at();

CREATE TRIGGER jobs_record_event
    AFTER INSERT OR UPDATE OF status ON {{tables.jobs}}
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.record_job_event();

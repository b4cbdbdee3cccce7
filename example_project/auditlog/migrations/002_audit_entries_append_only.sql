-- The log is append-only: updates and deletes are refused by a trigger.
CREATE OR REPLACE FUNCTION {{schema}}.audit_entries_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_entries is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_entries_append_only
    BEFORE UPDATE OR DELETE ON {{tables.audit_entries}}
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.audit_entries_append_only();

-- A reversible migration, as sqlx and golang-migrate write them: NAME.up.sql is applied,
-- NAME.down.sql undoes it (never run as a migration). pgmig.down[taskq] checks that it does.
CREATE TABLE {{tables.job_labels}} (
    job_id  bigint NOT NULL REFERENCES {{tables.jobs}} (id) ON DELETE CASCADE,
    label   text   NOT NULL CHECK (label <> ''),
    PRIMARY KEY (job_id, label)
);
CREATE INDEX job_labels_by_label ON {{tables.job_labels}} (label);
COMMENT ON TABLE {{tables.job_labels}} IS 'free-form labels a job can be found by';

-- Undoes 008_job_labels.up.sql: the index and the comment go with the table.
DROP TABLE {{tables.job_labels}};

DROP TABLE scm_sources;
ALTER TABLE manifest_references DROP COLUMN size;

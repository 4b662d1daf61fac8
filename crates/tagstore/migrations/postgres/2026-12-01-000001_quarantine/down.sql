DROP TABLE quarantined_blobs;
ALTER TABLE audit_log DROP COLUMN kind;

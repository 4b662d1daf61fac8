ALTER TABLE audit_checkpoints DROP COLUMN frontier;
ALTER TABLE audit_checkpoints DROP COLUMN root;

-- Entries of the audit log have a kind: 'tag' (every entry before this migration, whose
-- hashes do not change) or 'quarantine' (a blob taken out of service by the scrub).
ALTER TABLE audit_log ADD COLUMN kind TEXT NOT NULL DEFAULT 'tag';

-- Blobs whose stored bytes did not hash to their digest, moved out of service by
-- `pierone-server scrub --quarantine`. Read only when a pull misses, to say why; a push of the
-- correct bytes removes the row.
CREATE TABLE quarantined_blobs (
    digest TEXT PRIMARY KEY NOT NULL,
    at BIGINT NOT NULL,
    principal TEXT NOT NULL,
    actual TEXT NOT NULL
);

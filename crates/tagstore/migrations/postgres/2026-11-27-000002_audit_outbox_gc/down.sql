DROP INDEX uploads_updated;
DROP INDEX manifest_references_reference;
DROP TABLE gc_candidates;
DROP TABLE outbox;
DROP TABLE audit_checkpoints;
DROP TABLE audit_head;
DROP TABLE audit_log;
CREATE TABLE tag_events (
    id BIGSERIAL PRIMARY KEY,
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    previous_digest TEXT,
    principal TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX tag_events_tag ON tag_events (repository, tag);

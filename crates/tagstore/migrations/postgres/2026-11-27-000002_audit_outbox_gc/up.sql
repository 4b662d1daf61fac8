-- The tamper-evident tag log replaces tag_events (which had no hashes); pierone had no
-- release before it, so there is nothing to carry over.
DROP TABLE tag_events;

-- Append-only hash chain: every tag creation and every move of a mutable tag, written in the
-- tag's own transaction. seq has no gaps; hash covers the row and prev_hash.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY NOT NULL,
    at BIGINT NOT NULL,
    principal TEXT NOT NULL,
    realm TEXT NOT NULL,
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    previous_digest TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_tag ON audit_log (repository, tag);

-- The chain's head. Every append updates this one row first, so concurrent appends (also
-- from other replicas) queue on its row lock and the chain never forks.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Signed statements of (size, head); kept forever so a later rewrite contradicts them.
CREATE TABLE audit_checkpoints (
    size BIGINT PRIMARY KEY NOT NULL,
    head TEXT NOT NULL,
    at BIGINT NOT NULL,
    public_key TEXT NOT NULL,
    signature TEXT NOT NULL
);

-- Transactional outbox: one row per (audit entry, webhook), written with the tag.
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    target TEXT NOT NULL,
    seq BIGINT NOT NULL REFERENCES audit_log (seq),
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    -- A deliverer owns the row until then; another replica takes over after a crash.
    locked_until BIGINT NOT NULL DEFAULT 0,
    delivered_at BIGINT,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox (delivered_at, next_attempt_at);

-- Blobs garbage collection found unreferenced: 'marked' first, 'deleting' once claimed.
-- A manifest push that references a marked blob removes the mark in its transaction; one
-- that finds it 'deleting' is refused.
CREATE TABLE gc_candidates (
    digest TEXT PRIMARY KEY NOT NULL,
    marked_at BIGINT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX manifest_references_reference ON manifest_references (reference);
CREATE INDEX uploads_updated ON uploads (updated_at);

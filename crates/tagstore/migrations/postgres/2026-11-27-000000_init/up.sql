CREATE TABLE repositories (
    name TEXT PRIMARY KEY NOT NULL,
    team TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX repositories_team ON repositories (team);

-- Manifest bytes exactly as pushed; content-addressed, shared by repositories.
CREATE TABLE manifests (
    digest TEXT PRIMARY KEY NOT NULL,
    media_type TEXT NOT NULL,
    body BYTEA NOT NULL,
    subject TEXT,
    artifact_type TEXT,
    config_digest TEXT,
    annotations TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX manifests_subject ON manifests (subject);

-- Which repositories a manifest was pushed to: a digest is only served where it was pushed.
CREATE TABLE repository_manifests (
    repository TEXT NOT NULL REFERENCES repositories (name),
    digest TEXT NOT NULL REFERENCES manifests (digest),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);

-- Blobs and child manifests a manifest references, for garbage collection and integrity.
CREATE TABLE manifest_references (
    manifest TEXT NOT NULL REFERENCES manifests (digest),
    reference TEXT NOT NULL,
    PRIMARY KEY (manifest, reference)
);

CREATE TABLE tags (
    id BIGSERIAL PRIMARY KEY,
    repository TEXT NOT NULL REFERENCES repositories (name),
    name TEXT NOT NULL,
    digest TEXT NOT NULL REFERENCES manifests (digest),
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    -- The unique constraint is what decides a race between two pushes of one tag.
    UNIQUE (repository, name)
);

-- Append-only: every tag creation and every move of a mutable tag.
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

CREATE TABLE uploads (
    id TEXT PRIMARY KEY NOT NULL,
    repository TEXT NOT NULL,
    received BIGINT NOT NULL,
    hash_state BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Every request of an upload writes a blob-store part of its own. The session records the parts
-- whose progress it accepted, in the same compare-and-set as its offset, and only those parts
-- are ever published. Sessions from before have no recorded parts: the registry refuses to
-- finish them (the client starts again) and garbage collection removes them.
CREATE TABLE upload_parts (
    upload_id TEXT NOT NULL,
    start BIGINT NOT NULL,
    part_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (upload_id, start)
);
-- Sessions belong to the principal that started them.
ALTER TABLE uploads ADD COLUMN owner TEXT NOT NULL DEFAULT '';

-- Sizes of referenced blobs, for image sizes and storage statistics.
ALTER TABLE manifest_references ADD COLUMN size BIGINT NOT NULL DEFAULT 0;

-- Where a tag's image was built from: the X-SCM-Source header of its push, or a
-- scm-source.json found in its layers.
CREATE TABLE scm_sources (
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    url TEXT NOT NULL,
    revision TEXT NOT NULL,
    author TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository, tag)
);

DROP TABLE uploads;
DROP TABLE tag_events;
DROP TABLE tags;
DROP TABLE manifest_references;
DROP TABLE repository_manifests;
DROP TABLE manifests;
DROP TABLE repositories;

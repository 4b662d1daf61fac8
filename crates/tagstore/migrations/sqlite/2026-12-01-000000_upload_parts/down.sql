ALTER TABLE uploads DROP COLUMN owner;
DROP TABLE upload_parts;

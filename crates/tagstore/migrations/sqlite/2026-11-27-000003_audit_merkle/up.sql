-- Checkpoints also sign the Merkle root over the entries; the frontier (roots of the perfect
-- subtrees, space-separated) lets the next checkpoint extend the tree without re-reading it.
ALTER TABLE audit_checkpoints ADD COLUMN root TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_checkpoints ADD COLUMN frontier TEXT NOT NULL DEFAULT '';

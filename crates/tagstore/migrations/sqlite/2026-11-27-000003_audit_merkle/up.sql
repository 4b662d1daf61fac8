-- Checkpoints also sign the Merkle root over the entries; the frontier (roots of the perfect
-- subtrees, space-separated) lets the next checkpoint extend the tree without re-reading it.
-- Checkpoints signed before (without a root) cannot be checked by v2 verifiers; the next
-- signing run verifies the whole chain again and signs it.
DELETE FROM audit_checkpoints;
ALTER TABLE audit_checkpoints ADD COLUMN root TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_checkpoints ADD COLUMN frontier TEXT NOT NULL DEFAULT '';

-- Issue 15.7: an envelope delivered from a peer is known by its origin and the digest of its
-- bytes, not by its id alone, so a second envelope under a known id (from another domain,
-- or with other bytes) is refused instead of acknowledged and dropped. Rows from before
-- carry empty values and count as the same envelope.
ALTER TABLE federated_seen ADD COLUMN origin TEXT NOT NULL DEFAULT '';
ALTER TABLE federated_seen ADD COLUMN digest BLOB NOT NULL DEFAULT x'';

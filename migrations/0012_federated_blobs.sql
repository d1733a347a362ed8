-- Issue 17.2: blobs cross domains (PROTOCOL.md §17.5a). A blob another domain brought for
-- an envelope of its sender's is kept like a local upload, under that sender as owner;
-- `origin` names the domain that brought it (NULL: uploaded here by a local user), so
-- what one peer can make this server hold before any envelope names it is bounded per
-- peer.
ALTER TABLE blobs ADD COLUMN origin TEXT;
CREATE INDEX blobs_by_origin ON blobs (origin, state) WHERE origin IS NOT NULL;

-- A queued envelope's blob bytes count in its sender's queued bytes, beside its size.
ALTER TABLE federation_envelopes ADD COLUMN blob_bytes INTEGER NOT NULL DEFAULT 0;
DROP TRIGGER federation_envelope_counted;
DROP TRIGGER federation_envelope_uncounted;
CREATE TRIGGER federation_envelope_counted AFTER INSERT ON federation_envelopes
BEGIN
    INSERT OR IGNORE INTO federation_queued (sender, bytes) VALUES (NEW.sender, 0);
    UPDATE federation_queued SET bytes = bytes + NEW.size + NEW.blob_bytes
     WHERE sender = NEW.sender;
END;
CREATE TRIGGER federation_envelope_uncounted AFTER DELETE ON federation_envelopes
BEGIN
    UPDATE federation_queued SET bytes = bytes - OLD.size - OLD.blob_bytes
     WHERE sender = OLD.sender;
    DELETE FROM federation_queued WHERE sender = OLD.sender AND bytes <= 0;
END;

-- Issue 17.2: the blobs an envelope's header names (PROTOCOL.md §5, version 2). A blob is
-- kept while an envelope that names it is pending for a local recipient or queued for
-- another domain; its readers are its uploader and those recipients.
CREATE TABLE envelope_blobs (
    envelope_id BLOB NOT NULL,             -- messages.id, or federation_queue.envelope_id
    blob        BLOB NOT NULL REFERENCES blobs (id),
    PRIMARY KEY (envelope_id, blob)
) STRICT, WITHOUT ROWID;
CREATE INDEX envelope_blobs_by_blob ON envelope_blobs (blob);

-- 0: uploaded, named by no envelope yet (counts against the uploader's blob limit);
-- 1: named by an envelope (counts against each local recipient's quota instead);
-- 2: released, every envelope that named it gone (deleted by the purge, in batches).
ALTER TABLE blobs ADD COLUMN state INTEGER NOT NULL DEFAULT 0;
CREATE INDEX blobs_by_state ON blobs (state, created);

-- A stored message's blob bytes, counted in each recipient's usage beside its size.
ALTER TABLE messages ADD COLUMN blob_bytes INTEGER NOT NULL DEFAULT 0;

-- For the trigger below: is a message that goes still queued for another domain?
CREATE INDEX federation_queue_by_envelope ON federation_queue (envelope_id);

-- Only messages that name blobs (a sealed blob is at least a 16-byte tag) look further.
CREATE TRIGGER message_blobs_released AFTER DELETE ON messages
    WHEN OLD.blob_bytes > 0
     AND NOT EXISTS (SELECT 1 FROM federation_queue WHERE envelope_id = OLD.id)
BEGIN
    DELETE FROM envelope_blobs WHERE envelope_id = OLD.id;
END;
CREATE TRIGGER queued_blobs_released AFTER DELETE ON federation_queue
    WHEN NOT EXISTS (SELECT 1 FROM federation_queue WHERE body = OLD.body)
     AND NOT EXISTS (SELECT 1 FROM messages WHERE id = OLD.envelope_id)
BEGIN
    DELETE FROM envelope_blobs WHERE envelope_id = OLD.envelope_id;
END;
CREATE TRIGGER blob_released AFTER DELETE ON envelope_blobs
    WHEN NOT EXISTS (SELECT 1 FROM envelope_blobs WHERE blob = OLD.blob)
BEGIN
    UPDATE blobs SET state = 2 WHERE id = OLD.blob;
END;

-- Issue 15.4: an envelope for several domains is stored once. `federation_queue` keeps one
-- row per (envelope, destination) with the recipients still to deliver there; the bytes
-- move to `federation_envelopes`, which a trigger empties when the last row for an
-- envelope goes. `size` and `sender` let the API cap a user's queued bytes and the worker
-- cut batches by bytes without reading any envelope.
CREATE TABLE federation_envelopes (
    id        INTEGER PRIMARY KEY,
    sender    TEXT NOT NULL,
    size      INTEGER NOT NULL,
    envelope  BLOB NOT NULL
) STRICT;

INSERT INTO federation_envelopes (id, sender, size, envelope)
    SELECT min(id), sender, length(envelope), envelope FROM federation_queue GROUP BY envelope_id;
ALTER TABLE federation_queue ADD COLUMN body INTEGER REFERENCES federation_envelopes (id);
-- Only for the update below, which would otherwise scan the queue once per row.
CREATE INDEX federation_queue_envelope ON federation_queue (envelope_id, id);
UPDATE federation_queue SET body = (
    SELECT min(q.id) FROM federation_queue q WHERE q.envelope_id = federation_queue.envelope_id
);
DROP INDEX federation_queue_envelope;
ALTER TABLE federation_queue DROP COLUMN envelope;
CREATE INDEX federation_queue_body ON federation_queue (body);

-- Issue 15.8: the witness keeps at most `MAX_WITNESSED` domains, forgetting the one seen
-- longest ago first.
CREATE INDEX kt_witness_by_time ON kt_witness (seen_at);

-- Each sender's queued bytes, kept by triggers so the API's check is one lookup rather
-- than a sum over every envelope the sender has queued.
CREATE TABLE federation_queued (
    sender TEXT PRIMARY KEY,
    bytes  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO federation_queued (sender, bytes)
    SELECT sender, sum(size) FROM federation_envelopes GROUP BY sender;
CREATE TRIGGER federation_envelope_counted AFTER INSERT ON federation_envelopes
BEGIN
    INSERT OR IGNORE INTO federation_queued (sender, bytes) VALUES (NEW.sender, 0);
    UPDATE federation_queued SET bytes = bytes + NEW.size WHERE sender = NEW.sender;
END;
CREATE TRIGGER federation_envelope_uncounted AFTER DELETE ON federation_envelopes
BEGIN
    UPDATE federation_queued SET bytes = bytes - OLD.size WHERE sender = OLD.sender;
    DELETE FROM federation_queued WHERE sender = OLD.sender AND bytes <= 0;
END;

CREATE TRIGGER federation_envelope_done AFTER DELETE ON federation_queue
    WHEN NOT EXISTS (SELECT 1 FROM federation_queue WHERE body = OLD.body)
BEGIN
    DELETE FROM federation_envelopes WHERE id = OLD.body;
END;

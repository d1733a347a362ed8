-- Issue 17.2: a blob counts once in its sender's queued bytes, however many queued
-- envelopes name it (a message with Bcc recipients is one envelope per Bcc). Each queued
-- envelope's blobs are listed here with the sender and size; a blob's size is added when
-- the first of its sender's envelopes names it and taken off when the last one goes.
CREATE TABLE federation_envelope_blobs (
    body   INTEGER NOT NULL,              -- federation_envelopes.id
    blob   BLOB NOT NULL,
    sender TEXT NOT NULL,
    size   INTEGER NOT NULL,              -- sealed bytes
    PRIMARY KEY (body, blob)
) STRICT, WITHOUT ROWID;
CREATE INDEX federation_envelope_blobs_by_sender ON federation_envelope_blobs (sender, blob);

-- What is queued now, listed from the envelopes' blob links.
INSERT OR IGNORE INTO federation_envelope_blobs (body, blob, sender, size)
    SELECT q.body, eb.blob, e.sender, b.size
      FROM federation_queue q
      JOIN federation_envelopes e ON e.id = q.body
      JOIN envelope_blobs eb ON eb.envelope_id = q.envelope_id
      JOIN blobs b ON b.id = eb.blob;

DROP TRIGGER federation_envelope_counted;
DROP TRIGGER federation_envelope_uncounted;
CREATE TRIGGER federation_envelope_counted AFTER INSERT ON federation_envelopes
BEGIN
    INSERT OR IGNORE INTO federation_queued (sender, bytes) VALUES (NEW.sender, 0);
    UPDATE federation_queued SET bytes = bytes + NEW.size WHERE sender = NEW.sender;
END;
CREATE TRIGGER federation_envelope_uncounted AFTER DELETE ON federation_envelopes
BEGIN
    UPDATE federation_queued SET bytes = bytes - OLD.size WHERE sender = OLD.sender;
    DELETE FROM federation_envelope_blobs WHERE body = OLD.id;
    DELETE FROM federation_queued WHERE sender = OLD.sender AND bytes <= 0;
END;
CREATE TRIGGER federation_blob_counted AFTER INSERT ON federation_envelope_blobs
    WHEN NOT EXISTS (SELECT 1 FROM federation_envelope_blobs
                      WHERE sender = NEW.sender AND blob = NEW.blob AND body != NEW.body)
BEGIN
    UPDATE federation_queued SET bytes = bytes + NEW.size WHERE sender = NEW.sender;
END;
CREATE TRIGGER federation_blob_uncounted AFTER DELETE ON federation_envelope_blobs
    WHEN NOT EXISTS (SELECT 1 FROM federation_envelope_blobs
                      WHERE sender = OLD.sender AND blob = OLD.blob)
BEGIN
    UPDATE federation_queued SET bytes = bytes - OLD.size WHERE sender = OLD.sender;
END;

-- The counts again, each blob once per sender.
DELETE FROM federation_queued;
INSERT INTO federation_queued (sender, bytes)
    SELECT sender, sum(bytes) FROM (
        SELECT sender, size AS bytes FROM federation_envelopes
        UNION ALL
        SELECT sender, max(size) FROM federation_envelope_blobs GROUP BY sender, blob
    ) GROUP BY sender;

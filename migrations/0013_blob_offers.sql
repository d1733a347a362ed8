-- Issue 17.2, review of the federated blobs (PROTOCOL.md §17.5a, §19a).
--
-- A blob its holder begins again while envelopes name it (another envelope of its is on
-- its way: a Bcc copy, a retried delivery) is kept as an upload when the last of them
-- goes, rather than released, so that envelope still finds it.
ALTER TABLE blobs ADD COLUMN reoffered INTEGER NOT NULL DEFAULT 0;
DROP TRIGGER blob_released;
CREATE TRIGGER blob_released AFTER DELETE ON envelope_blobs
    WHEN NOT EXISTS (SELECT 1 FROM envelope_blobs WHERE blob = OLD.blob)
BEGIN
    UPDATE blobs SET state = CASE reoffered WHEN 1 THEN 0 ELSE 2 END, reoffered = 0
     WHERE id = OLD.blob;
END;

-- Someone other than its owner began it too (another domain bringing the same blob, a
-- user holding its chunks): its owner may no longer give it up, others may rely on it.
ALTER TABLE blobs ADD COLUMN shared INTEGER NOT NULL DEFAULT 0;

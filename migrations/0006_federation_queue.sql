-- One name per queue (issue 14): federation's queue of envelopes for other letter.me
-- domains was the table `outbound`, the same word as `[outbound]`, which is mail to
-- ordinary addresses (`smtp_queue`). Renamed; rows, columns and ids are kept.
ALTER TABLE outbound RENAME TO federation_queue;
DROP INDEX outbound_due;
DROP INDEX outbound_txid;
CREATE INDEX federation_queue_due ON federation_queue (destination, next_attempt);
CREATE INDEX federation_queue_txid ON federation_queue (txid);

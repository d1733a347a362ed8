-- Deleting a message checks that no delivery still references it (foreign_keys is on).
-- Without an index led by deliveries.message_id that check scanned the whole table, once
-- per acknowledged message: a 1,000-message acknowledgement cost a million row visits.
CREATE INDEX deliveries_by_message ON deliveries (message_id);

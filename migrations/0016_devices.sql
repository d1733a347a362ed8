-- Issue 18: several devices per account (DECISIONS D83). Each device has a key of its own
-- and receives every envelope: a delivery is kept per device until that device
-- acknowledged it, and the message until the last of its deliveries goes. The usage of a
-- recipient counts the envelope once, however many devices it waits for.

-- An account's devices. The device of an account from before devices is its identity key
-- with the account's encryption key, and has no statement until that device certifies
-- itself (the first time a device is linked).
CREATE TABLE devices (
    id              INTEGER PRIMARY KEY,
    account         TEXT NOT NULL REFERENCES accounts(address),
    device_key      BLOB NOT NULL,             -- Ed25519
    encryption_key  BLOB NOT NULL,             -- X25519
    statement       TEXT,                      -- the certificate and binding (JSON); NULL: see above
    added           INTEGER NOT NULL,
    removed         INTEGER,                   -- when removed: NULL while current
    UNIQUE (account, device_key)               -- a removed device key is not added again
) STRICT;
CREATE INDEX devices_current ON devices (account) WHERE removed IS NULL;

INSERT INTO devices (account, device_key, encryption_key, statement, added)
    SELECT address, identity_key, encryption_key, NULL, registered_at FROM accounts;

-- Deliveries, now one per recipient's device.
CREATE TABLE deliveries_by_device (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient   TEXT NOT NULL,
    device      INTEGER NOT NULL,              -- devices.id
    message_id  BLOB NOT NULL REFERENCES messages(id),
    received    INTEGER NOT NULL,
    UNIQUE (recipient, device, message_id)
) STRICT;
INSERT INTO deliveries_by_device (seq, recipient, device, message_id, received)
    SELECT d.seq, d.recipient, v.id, d.message_id, d.received
      FROM deliveries d JOIN devices v ON v.account = d.recipient;
-- Clients list from the last sequence number they saw: numbering goes on where it was.
DELETE FROM sqlite_sequence WHERE name = 'deliveries_by_device';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'deliveries_by_device', seq FROM sqlite_sequence WHERE name = 'deliveries';
DROP TABLE deliveries;
ALTER TABLE deliveries_by_device RENAME TO deliveries;
CREATE INDEX deliveries_by_device ON deliveries (recipient, device, seq);
CREATE INDEX deliveries_by_message ON deliveries (message_id);
CREATE INDEX deliveries_by_time ON deliveries (received);

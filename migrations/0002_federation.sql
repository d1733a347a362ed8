-- Federation (DESIGN.md §6): the durable outbound queue, the transactions received from
-- peers (so a retried PUT gets the same answer and never a second copy), and block lists.
-- Only ciphertext and routing metadata, as in 0001.

-- One row per (sealed envelope, destination domain) still to deliver.
CREATE TABLE outbound (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    destination  TEXT NOT NULL,
    envelope_id  BLOB NOT NULL,
    sender       TEXT NOT NULL,
    recipients   TEXT NOT NULL,           -- recipients at the destination still to deliver, '\n'-separated
    envelope     BLOB NOT NULL,           -- canonical sealed envelope bytes
    queued_at    INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    txid         BLOB,                    -- the batch it was last sent in; a retry resends that batch
    last_error   TEXT,
    UNIQUE (destination, envelope_id)
) STRICT;
CREATE INDEX outbound_due ON outbound (destination, next_attempt);
CREATE INDEX outbound_txid ON outbound (txid);

-- Deliveries from peers, answered again verbatim when the same transaction id comes back.
CREATE TABLE received_transactions (
    origin      TEXT NOT NULL,
    txid        BLOB NOT NULL,
    digest      BLOB NOT NULL,            -- SHA-256 of the body: the same id with other content is refused
    report      TEXT NOT NULL,            -- the JSON answer
    received    INTEGER NOT NULL,
    PRIMARY KEY (origin, txid)
) STRICT, WITHOUT ROWID;
CREATE INDEX received_transactions_by_time ON received_transactions (received);

-- (envelope, recipient) pairs delivered from peers: a second copy is never stored.
CREATE TABLE federated_seen (
    envelope_id BLOB NOT NULL,
    recipient   TEXT NOT NULL,
    seen_at     INTEGER NOT NULL,
    PRIMARY KEY (envelope_id, recipient)
) STRICT, WITHOUT ROWID;
CREATE INDEX federated_seen_by_time ON federated_seen (seen_at);

-- Per-user block lists: 'someone@example.com' or '@example.com'.
CREATE TABLE blocks (
    owner       TEXT NOT NULL,
    entry       TEXT NOT NULL,
    created     INTEGER NOT NULL,
    PRIMARY KEY (owner, entry)
) STRICT, WITHOUT ROWID;

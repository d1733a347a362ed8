-- Outbound delivery to ordinary addresses over SMTP (issue 6).

-- One message a user handed over for addresses outside letter.me. `sealed` is the RFC 5322
-- message sealed under the server's queue key (never plaintext on disk); notices carry no
-- content at all.
CREATE TABLE smtp_messages (
    id         INTEGER PRIMARY KEY,
    sender     TEXT    NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('relay', 'notice')),
    sealed     BLOB,
    size       INTEGER NOT NULL,
    queued_at  INTEGER NOT NULL
);

-- One row per message and destination domain: what is left to deliver there.
CREATE TABLE smtp_queue (
    id           INTEGER PRIMARY KEY,
    message      INTEGER NOT NULL REFERENCES smtp_messages(id) ON DELETE CASCADE,
    domain       TEXT    NOT NULL,
    recipients   TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    last_error   TEXT
);
CREATE INDEX smtp_queue_due ON smtp_queue (next_attempt);
CREATE INDEX smtp_queue_message ON smtp_queue (message);

-- Recipients outside letter.me per user and UTC day, for the daily cap.
CREATE TABLE smtp_usage (
    sender TEXT    NOT NULL,
    day    INTEGER NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (sender, day)
);

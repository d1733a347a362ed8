-- letter.me native server schema, version 1.
-- The server stores only ciphertext (sealed envelopes) and routing metadata:
-- sender, recipients, size, time. Never a subject or a body.

CREATE TABLE server_keys (
    name        TEXT PRIMARY KEY,          -- 'domain'
    public_key  BLOB NOT NULL,             -- Ed25519 public key
    sealed      BLOB NOT NULL,             -- secret key, XChaCha20-Poly1305 under the key-encryption key
    kdf         TEXT NOT NULL,             -- 'keyfile' or 'argon2id:<salt b64>'
    created     INTEGER NOT NULL
) STRICT;

CREATE TABLE accounts (
    address             TEXT PRIMARY KEY,
    identity_key        BLOB NOT NULL,
    encryption_key      BLOB NOT NULL,
    key_created         INTEGER NOT NULL,
    key_version         INTEGER NOT NULL,
    binding_signature   BLOB NOT NULL,
    attestation_sig     BLOB NOT NULL,
    registered_at       INTEGER NOT NULL,
    usage_bytes         INTEGER NOT NULL DEFAULT 0
) STRICT;

-- One row per sealed envelope; shared by its local recipients.
CREATE TABLE messages (
    id          BLOB PRIMARY KEY,          -- envelope id (16 bytes)
    sender      TEXT NOT NULL,
    envelope    BLOB NOT NULL,             -- canonical sealed envelope bytes
    size        INTEGER NOT NULL,
    received    INTEGER NOT NULL,
    pending     INTEGER NOT NULL           -- deliveries not yet acknowledged
) STRICT;

CREATE TABLE deliveries (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient   TEXT NOT NULL,
    message_id  BLOB NOT NULL REFERENCES messages(id),
    received    INTEGER NOT NULL,
    UNIQUE (recipient, message_id)
) STRICT;
CREATE INDEX deliveries_by_recipient ON deliveries (recipient, seq);
CREATE INDEX deliveries_by_time ON deliveries (received);

-- Envelope ids already accepted, kept past deletion so a replay is refused.
CREATE TABLE seen_envelopes (
    id          BLOB PRIMARY KEY,
    seen_at     INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX seen_envelopes_by_time ON seen_envelopes (seen_at);

-- Invite tokens consumed (the tokens themselves live in the config).
CREATE TABLE used_invites (
    token_hash  BLOB PRIMARY KEY,
    address     TEXT NOT NULL,
    used_at     INTEGER NOT NULL
) STRICT;

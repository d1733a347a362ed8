-- Key transparency (issue 7): the domain's append-only log of key operations.
-- `entry` is the canonical encoding (PROTOCOL.md), `label` its VRF label, for lookups.
CREATE TABLE kt_log (
    idx   INTEGER PRIMARY KEY,
    label BLOB    NOT NULL,
    entry BLOB    NOT NULL
);
CREATE INDEX kt_log_label ON kt_log (label, idx);

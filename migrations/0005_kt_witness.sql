-- Key-transparency witnessing (issue 7): the newest checkpoint of each other domain's log
-- this server has seen and found consistent, and the evidence of every fork it caught
-- (two checkpoints, both signed by the domain, that cannot both be true).
CREATE TABLE kt_witness (
    domain      TEXT PRIMARY KEY,
    checkpoint  TEXT NOT NULL,     -- JSON, as the API shows it
    seen_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE kt_forks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    domain      TEXT NOT NULL,
    held        TEXT NOT NULL,     -- the checkpoint this server held (JSON)
    other       TEXT NOT NULL,     -- the one that contradicts it (JSON)
    source      TEXT NOT NULL,     -- where the other came from
    reason      TEXT NOT NULL,
    detected_at INTEGER NOT NULL
) STRICT;
CREATE INDEX kt_forks_by_domain ON kt_forks (domain, id);

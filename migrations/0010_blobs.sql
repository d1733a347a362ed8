-- Blobs (PROTOCOL.md §19a): large attachments sealed by their sender, stored once however
-- many recipients, chunk by chunk as they are uploaded; each chunk checked against the
-- manifest the upload declared.
CREATE TABLE blobs (
    id          BLOB PRIMARY KEY,          -- SHA-256 of the manifest (32 bytes)
    owner       TEXT NOT NULL,             -- the account that uploads it
    size        INTEGER NOT NULL,          -- sealed bytes
    manifest    BLOB NOT NULL,             -- each sealed chunk's SHA-256, 32 bytes each, in order
    created     INTEGER NOT NULL
) STRICT;
CREATE INDEX blobs_by_owner ON blobs (owner);
CREATE INDEX blobs_by_created ON blobs (created);

CREATE TABLE blob_chunks (
    blob        BLOB NOT NULL REFERENCES blobs (id) ON DELETE CASCADE,
    n           INTEGER NOT NULL,          -- from 0; every n of the manifest: complete
    data        BLOB NOT NULL,
    UNIQUE (blob, n)
) STRICT;

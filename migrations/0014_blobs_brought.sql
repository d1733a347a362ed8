-- Issue 17.2: what all other domains together have brought that no envelope named yet is
-- bounded too (`federation.blob_bytes_all_peers`); this index sums it without reading the
-- blobs themselves.
CREATE INDEX blobs_brought ON blobs (state, size) WHERE origin IS NOT NULL;

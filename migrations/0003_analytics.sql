-- no-transaction
-- Analytics: the ingest view reads the readings that arrived in its window (received_at). Rows
-- are inserted in received_at order, so a BRIN index finds the window in a few pages of index
-- and costs ingest next to nothing (no B-tree on the hottest table). Built CONCURRENTLY (hence
-- no transaction), so a large table keeps taking readings while it is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS emotion_readings_received_brin
    ON emotion_readings USING brin (received_at);

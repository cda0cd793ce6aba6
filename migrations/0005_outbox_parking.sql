-- An outbox event that keeps failing is parked after cloud::offers::MAX_APPLY_ATTEMPTS tries,
-- with its last error, instead of being retried forever; `ecs-cloud outbox retry` puts it back.
ALTER TABLE outbox ADD COLUMN parked_at timestamptz;
ALTER TABLE outbox ADD CONSTRAINT outbox_parked_unprocessed
    CHECK (parked_at IS NULL OR processed_at IS NULL);
-- What the worker scans: due, unprocessed, not parked.
DROP INDEX outbox_pending_idx;
CREATE INDEX outbox_due_idx ON outbox (available_at) WHERE processed_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked_idx ON outbox (parked_at) WHERE parked_at IS NOT NULL;

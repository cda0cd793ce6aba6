-- no-transaction
-- The readings whose thoughts are still in the clear, found at once by the background sealer
-- (cloud::privacy::thoughts::seal_legacy); empty once everything is sealed. Built CONCURRENTLY
-- (hence no transaction), so a large table keeps taking readings while it is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS emotion_readings_thoughts_in_clear_idx
    ON emotion_readings (user_id) WHERE cardinality(intents) > 0;

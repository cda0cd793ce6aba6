-- A reading's thoughts (intents and their confidences) sealed with the person's data key
-- (cloud::privacy::thoughts): nonce (12 bytes) || one (code, confidence) byte pair per thought
-- (1 to 4) || tag (16 bytes), bound to the person, the field and the reading's (device_id, seq).
-- NULL when the reading had no thoughts. `intents` and `intent_confidence` stay only for rows
-- written before this migration, which the cloud seals in the background (then they hold '{}').
ALTER TABLE emotion_readings ADD COLUMN thoughts_sealed bytea
    CHECK (length(thoughts_sealed) BETWEEN 12 + 2 + 16 AND 12 + 2 * 4 + 16);
ALTER TABLE emotion_readings ADD CONSTRAINT emotion_readings_thoughts_once
    CHECK (thoughts_sealed IS NULL OR cardinality(intents) = 0);
-- The readings still to seal, found at once by the background task; empty once it is done.
CREATE INDEX emotion_readings_thoughts_in_clear_idx ON emotion_readings (user_id)
    WHERE cardinality(intents) > 0;

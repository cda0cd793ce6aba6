-- A reading's thoughts (intents and their confidences) sealed with the person's data key
-- (cloud::privacy::thoughts): nonce (12 bytes) || one (code, confidence) byte pair per thought
-- (1 to 4) || tag (16 bytes), bound to the person, the field and the reading's (device_id, seq).
-- NULL when the reading had no thoughts. `intents` and `intent_confidence` stay only for rows
-- written before this migration (or by an older replica during a rolling upgrade), which the
-- cloud seals in the background (then they hold '{}').
--
-- Cheap on a big table: the column has no default (no rewrite), and the constraints are added
-- NOT VALID, so no scan runs under the table's exclusive lock; they hold for every row written
-- from now on, and every earlier row (thoughts_sealed NULL) satisfies them anyway.
ALTER TABLE emotion_readings ADD COLUMN thoughts_sealed bytea;
ALTER TABLE emotion_readings ADD CONSTRAINT emotion_readings_thoughts_sealed_length
    CHECK (length(thoughts_sealed) BETWEEN 12 + 2 + 16 AND 12 + 2 * 4 + 16) NOT VALID;
ALTER TABLE emotion_readings ADD CONSTRAINT emotion_readings_thoughts_once
    CHECK (thoughts_sealed IS NULL OR cardinality(intents) = 0) NOT VALID;

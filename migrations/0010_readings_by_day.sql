-- Readings partitioned by the day (UTC) they were taken, so that retention drops a whole day's
-- table (no dead rows, no vacuum debt) instead of deleting millions of rows a day, and the
-- person's features (emotion_features, another table) are untouched by it.
--
-- The key. A partitioned table's unique keys must hold the partition column, so the key becomes
-- (device_id, seq, recorded_at). It still absorbs every resend because a reading's time is a fixed
-- fact from the moment the phone buffers it: the agent stores each reading's exact time and a
-- batch carries it exactly (a batch ends where the phone's clock stepped back; it never clamps),
-- so every send of a reading carries the same recorded_at. What would still break it: a reading
-- re-sent with another time (an agent older than this migration, which clamped times after a
-- clock step, or a buffer file edited by hand) is stored a second time under the same
-- (device_id, seq). docs/ARCHITECTURE.md, "Ingest", says the same.
--
-- Partitions are created ahead by the cloud (cloud::partitions, at start and every hour, under an
-- advisory lock) through ecs_create_reading_partition below, the one place that knows how. A
-- reading outside every day's partition (older than the partitions kept, or after the cloud could
-- not create partitions for a week) lands in emotion_readings_default, so an insert never fails
-- for want of a partition; creating that day's partition later moves those rows into it.
--
-- Existing rows are copied in this migration's transaction (the old table is locked meanwhile):
-- on a large installation, plan the upgrade for a quiet hour. Phones keep their readings until
-- they are acknowledged, so ingest paused by the lock loses nothing.

ALTER TABLE emotion_readings RENAME TO emotion_readings_unpartitioned;
ALTER INDEX emotion_readings_pkey RENAME TO emotion_readings_unpartitioned_pkey;
ALTER INDEX emotion_readings_user_time_idx RENAME TO emotion_readings_unpartitioned_user_time_idx;
ALTER INDEX IF EXISTS emotion_readings_recorded_idx
    RENAME TO emotion_readings_unpartitioned_recorded_idx;
ALTER INDEX IF EXISTS emotion_readings_received_brin
    RENAME TO emotion_readings_unpartitioned_received_brin;
ALTER INDEX IF EXISTS emotion_readings_thoughts_in_clear_idx
    RENAME TO emotion_readings_unpartitioned_thoughts_in_clear_idx;

CREATE TABLE emotion_readings (
    device_id    text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    seq          bigint NOT NULL CHECK (seq >= 0),
    user_id      uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    recorded_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    joy          smallint NOT NULL CHECK (joy BETWEEN 0 AND 100),
    trust        smallint NOT NULL CHECK (trust BETWEEN 0 AND 100),
    fear         smallint NOT NULL CHECK (fear BETWEEN 0 AND 100),
    surprise     smallint NOT NULL CHECK (surprise BETWEEN 0 AND 100),
    sadness      smallint NOT NULL CHECK (sadness BETWEEN 0 AND 100),
    disgust      smallint NOT NULL CHECK (disgust BETWEEN 0 AND 100),
    anger        smallint NOT NULL CHECK (anger BETWEEN 0 AND 100),
    anticipation smallint NOT NULL CHECK (anticipation BETWEEN 0 AND 100),
    valence      smallint NOT NULL CHECK (valence BETWEEN -100 AND 100),
    arousal      smallint NOT NULL CHECK (arousal BETWEEN 0 AND 100),
    dominance    smallint NOT NULL CHECK (dominance BETWEEN 0 AND 100),
    stress       smallint NOT NULL CHECK (stress BETWEEN 0 AND 100),
    focus        smallint NOT NULL CHECK (focus BETWEEN 0 AND 100),
    -- Thoughts in the clear: only rows written before 0008 (sealed in the background since).
    intents           smallint[] NOT NULL DEFAULT '{}',
    intent_confidence smallint[] NOT NULL DEFAULT '{}',
    -- See 0008: nonce || (code, confidence) pairs || tag, sealed with the person's data key.
    thoughts_sealed   bytea,
    PRIMARY KEY (device_id, seq, recorded_at),
    CHECK (cardinality(intents) = cardinality(intent_confidence)),
    CONSTRAINT emotion_readings_thoughts_sealed_length
        CHECK (length(thoughts_sealed) BETWEEN 12 + 2 + 16 AND 12 + 2 * 4 + 16),
    CONSTRAINT emotion_readings_thoughts_once
        CHECK (thoughts_sealed IS NULL OR cardinality(intents) = 0)
) PARTITION BY RANGE (recorded_at);
-- A person's readings by time: the dashboard, exports and erasure walk this. (The index on
-- recorded_at alone is gone: retention drops partitions, and the partition bounds find a day.)
CREATE INDEX emotion_readings_user_time_idx ON emotion_readings (user_id, recorded_at);
-- Analytics' ingest view (see 0003): rows arrive in received_at order within each partition.
CREATE INDEX emotion_readings_received_brin ON emotion_readings USING brin (received_at);
-- The background sealer's worklist (see 0009).
CREATE INDEX emotion_readings_thoughts_in_clear_idx
    ON emotion_readings (user_id) WHERE cardinality(intents) > 0;

CREATE TABLE emotion_readings_default PARTITION OF emotion_readings DEFAULT;

-- Creates the partition for readings taken on `day` (UTC), emotion_readings_pYYYYMMDD, unless it
-- exists; moves the rows of that day the default partition holds into it. Returns whether it
-- created one. The table is made apart and then attached, which locks the parent only in SHARE
-- UPDATE EXCLUSIVE mode (CREATE TABLE … PARTITION OF would take ACCESS EXCLUSIVE and stop
-- ingest while it waits), and scans the default partition once to check no row of the day is
-- left there.
CREATE FUNCTION ecs_create_reading_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    name text := format('emotion_readings_p%s', to_char(day, 'YYYYMMDD'));
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(format('%I', name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- Rows inserted into the default partition between the move and the attach would make the
    -- attach fail; none can be while this transaction holds it.
    LOCK TABLE emotion_readings_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format(
        'CREATE TABLE %I (LIKE emotion_readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
        name);
    EXECUTE format(
        'WITH moved AS (DELETE FROM emotion_readings_default
                        WHERE recorded_at >= %L AND recorded_at < %L RETURNING *)
         INSERT INTO %I SELECT * FROM moved',
        low, high, name);
    EXECUTE format(
        'ALTER TABLE emotion_readings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        name, low, high);
    RETURN true;
END
$$;

-- The days the existing rows were taken on (at most 400 back; older rows go to the default
-- partition, where retention deletes them row by row), today and tomorrow. The cloud creates the
-- rest of the week ahead when it starts.
DO $$
BEGIN
    PERFORM ecs_create_reading_partition(day::date)
    FROM generate_series(
        GREATEST(
            LEAST((SELECT min(recorded_at) FROM emotion_readings_unpartitioned), now())
                AT TIME ZONE 'UTC',
            (now() AT TIME ZONE 'UTC') - interval '400 days')::date::timestamp,
        ((now() AT TIME ZONE 'UTC') + interval '1 day')::date::timestamp,
        interval '1 day') AS day;
END
$$;

INSERT INTO emotion_readings
    (device_id, seq, user_id, recorded_at, received_at, joy, trust, fear, surprise, sadness,
     disgust, anger, anticipation, valence, arousal, dominance, stress, focus, intents,
     intent_confidence, thoughts_sealed)
SELECT device_id, seq, user_id, recorded_at, received_at, joy, trust, fear, surprise, sadness,
     disgust, anger, anticipation, valence, arousal, dominance, stress, focus, intents,
     intent_confidence, thoughts_sealed
FROM emotion_readings_unpartitioned;

DROP TABLE emotion_readings_unpartitioned;

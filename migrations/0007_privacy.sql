-- Privacy in code (cloud::keys, cloud::privacy): envelope encryption with a key per person kept
-- apart from the data, an append-only consent history, and an access trail.

-- The key store. A schema of its own, with no foreign key into the data: it is backed up on its
-- own schedule (`pg_dump --schema=keystore`), and the data's backups (`--exclude-schema=keystore`)
-- never hold a key. Each person's data key is stored wrapped (ChaCha20-Poly1305) by a master key
-- that lives outside the database; erasing a person destroys their row here first, after which
-- every copy of their sealed fields, in any backup, is noise.
CREATE SCHEMA keystore;
CREATE TABLE keystore.person_keys (
    user_id       uuid PRIMARY KEY,
    -- Which master key wraps it (cloud::keys::MasterKey::id), so rotation knows what is left.
    master_key_id text NOT NULL CHECK (length(master_key_id) BETWEEN 1 AND 64),
    -- nonce (12 bytes) || ciphertext and tag of the 32-byte data key.
    wrapped_key   bytea NOT NULL CHECK (length(wrapped_key) = 12 + 32 + 16),
    created_at    timestamptz NOT NULL DEFAULT now(),
    rotated_at    timestamptz
);
CREATE INDEX person_keys_master_idx ON keystore.person_keys (master_key_id);

-- The person's name, sealed with their data key. `display_name` stays only for rows written
-- before this migration, which the cloud seals at start (then the column holds NULL).
ALTER TABLE users ADD COLUMN display_name_sealed bytea;
ALTER TABLE users ALTER COLUMN display_name DROP NOT NULL;
ALTER TABLE users ADD CONSTRAINT users_name_once
    CHECK ((display_name IS NULL) <> (display_name_sealed IS NULL));

-- Consent as an append-only history (LGPD Art. 8 §2: the controller proves consent): every
-- grant and withdrawal, with its purpose and who recorded it. Rows are never changed; they go
-- only with the person (erasure).
CREATE TABLE consent_events (
    event_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    purpose      text NOT NULL CHECK (purpose IN ('emotional_data')),
    granted      boolean NOT NULL,
    -- 'self' (the person's own token), 'admin', or 'migration' (reconstructed from what
    -- `users` held when this history began: who recorded it is not known).
    recorded_by  text NOT NULL CHECK (recorded_by IN ('self', 'admin', 'migration')),
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_events_user_idx ON consent_events (user_id, event_id);

-- Every read of a person's data by the admin/service token: who, when, what.
CREATE TABLE data_access_log (
    access_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    principal    text NOT NULL CHECK (principal IN ('admin')),
    -- What was read: the route template, e.g. GET /v1/users/{user_id}/export.
    resource     text NOT NULL CHECK (length(resource) BETWEEN 1 AND 200),
    request_id   text CHECK (length(request_id) <= 200),
    accessed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX data_access_log_user_idx ON data_access_log (user_id, access_id);

-- Append-only, enforced by the database: an UPDATE is refused, and a DELETE only when the
-- person is being erased (their users row is gone by the time the cascade reaches these rows).
CREATE FUNCTION refuse_history_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND NOT EXISTS (SELECT 1 FROM users WHERE user_id = OLD.user_id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER consent_events_append_only BEFORE UPDATE OR DELETE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER data_access_log_append_only BEFORE UPDATE OR DELETE ON data_access_log
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();

-- The history so far: what `users` knows of each person's consent, in time order (only the
-- latest grant and the latest withdrawal are known; a withdrawal older than the latest grant
-- was followed by that grant).
INSERT INTO consent_events (user_id, purpose, granted, recorded_by, recorded_at)
SELECT user_id, 'emotional_data', granted, 'migration', at
FROM (
    SELECT user_id, true AS granted, consent_recorded_at AS at
    FROM users WHERE consent_recorded_at IS NOT NULL
    UNION ALL
    SELECT user_id, false, consent_withdrawn_at
    FROM users WHERE consent_withdrawn_at IS NOT NULL
) known
ORDER BY user_id, at, granted;

-- The names still in the clear (rows from before this migration), for the sealing at start.
CREATE INDEX users_name_in_clear_idx ON users (user_id) WHERE display_name IS NOT NULL;

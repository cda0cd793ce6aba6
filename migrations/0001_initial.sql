-- Empathic Credit System: initial schema.
--
-- Conventions: money is integer cents (bigint), rates are integer basis points (1 bp = 0.01 %),
-- timestamps are timestamptz in UTC, ids are UUIDs except device ids (alphanumeric text, because
-- they are also certificate tenants and topic segments). Every table that belongs to a person
-- references users(user_id) ON DELETE CASCADE, so erasing a person (LGPD Art. 18) is one DELETE.

CREATE TABLE users (
    user_id              uuid PRIMARY KEY,
    -- The name the person gave; personal data, never logged (logs carry user_id only).
    display_name         text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    -- LGPD Art. 11: emotional data is sensitive; it is collected and used only with this consent.
    emotional_data_consent boolean NOT NULL,
    consent_recorded_at  timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT emotional_data_consent OR consent_recorded_at IS NOT NULL)
);

CREATE TABLE devices (
    device_id     text PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9]{1,32}$'),
    user_id       uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    registered_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz,
    -- Start of the device's current run of contact: set by ingest when a batch arrives after a
    -- silence (cloud::ingest::DEVICE_RETURN_GAP). A notification published before it went to a
    -- phone that was offline, so the notifier re-publishes it at once instead of waiting.
    online_since  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX devices_user_idx ON devices (user_id);

-- The person's financial history, as reported by the bank's core systems.
CREATE TABLE transactions (
    transaction_id uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    -- Idempotency: the same external reference posted twice is one transaction.
    external_ref   text NOT NULL CHECK (length(external_ref) BETWEEN 1 AND 100),
    direction      text NOT NULL CHECK (direction IN ('inflow', 'outflow')),
    amount_cents   bigint NOT NULL CHECK (amount_cents > 0),
    category       text NOT NULL CHECK (length(category) BETWEEN 1 AND 50),
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, external_ref)
);
CREATE INDEX transactions_user_time_idx ON transactions (user_id, occurred_at DESC);

-- One row per sensor sample. (device_id, seq) is the device's own numbering, so a batch that is
-- delivered twice (resend after a lost ack) is absorbed by the primary key.
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
    -- "Thoughts": intent codes (protocol Intent::code) and their confidences, index-aligned.
    intents           smallint[] NOT NULL DEFAULT '{}',
    intent_confidence smallint[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (device_id, seq),
    CHECK (cardinality(intents) = cardinality(intent_confidence))
);
-- A person's readings by time: the dashboard, exports and retention all walk this.
CREATE INDEX emotion_readings_user_time_idx ON emotion_readings (user_id, recorded_at);
-- Retention deletes by age across all people.
CREATE INDEX emotion_readings_recorded_idx ON emotion_readings (recorded_at);

-- Rolling emotional features, updated in the same transaction as the readings they summarise, so
-- a credit decision reads one row instead of scanning history.
CREATE TABLE emotion_features (
    user_id             uuid PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    readings_count      bigint NOT NULL CHECK (readings_count >= 0),
    -- Total decayed weight of the readings so far, relative to last_reading_at; the next fold
    -- weighs new readings against it.
    ew_weight           double precision NOT NULL CHECK (ew_weight > 0),
    -- Exponentially weighted means (see cloud::features for the half-life).
    mean_valence        double precision NOT NULL,
    valence_variance    double precision NOT NULL CHECK (valence_variance >= 0),
    mean_arousal        double precision NOT NULL,
    mean_stress         double precision NOT NULL,
    stress_share        double precision NOT NULL CHECK (stress_share BETWEEN 0 AND 1),
    impulsivity         double precision NOT NULL CHECK (impulsivity BETWEEN 0 AND 1),
    purchase_intent     double precision NOT NULL CHECK (purchase_intent BETWEEN 0 AND 1),
    financial_worry     double precision NOT NULL CHECK (financial_worry BETWEEN 0 AND 1),
    saving_intent       double precision NOT NULL CHECK (saving_intent BETWEEN 0 AND 1),
    first_reading_at    timestamptz NOT NULL,
    last_reading_at     timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Every model evaluation, with its inputs and explanation (LGPD Art. 20: a person can see why).
CREATE TABLE risk_assessments (
    assessment_id          uuid PRIMARY KEY,
    user_id                uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    model_name             text NOT NULL,
    model_version          text NOT NULL,
    probability_of_default double precision NOT NULL CHECK (probability_of_default BETWEEN 0 AND 1),
    features               jsonb NOT NULL,
    contributions          jsonb NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX risk_assessments_user_time_idx ON risk_assessments (user_id, created_at DESC);

CREATE TABLE credit_offers (
    offer_id           uuid PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    assessment_id      uuid NOT NULL REFERENCES risk_assessments (assessment_id) ON DELETE CASCADE,
    approved           boolean NOT NULL,
    -- offered -> accepted -> applied; declined and expired are final.
    status             text NOT NULL CHECK (status IN ('offered', 'declined', 'accepted', 'applied', 'expired')),
    credit_limit_cents bigint NOT NULL CHECK (credit_limit_cents >= 0),
    interest_rate_bps  integer NOT NULL CHECK (interest_rate_bps BETWEEN 0 AND 10000),
    credit_type        text NOT NULL CHECK (credit_type IN ('short_term', 'long_term')),
    term_months        integer NOT NULL CHECK (term_months BETWEEN 1 AND 120),
    reason_codes       text[] NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    accepted_at        timestamptz,
    applied_at         timestamptz,
    CHECK (approved OR (status = 'declined' AND credit_limit_cents = 0)),
    CHECK (status NOT IN ('accepted', 'applied') OR accepted_at IS NOT NULL),
    CHECK (status <> 'applied' OR applied_at IS NOT NULL),
    CHECK (expires_at > created_at)
);
CREATE INDEX credit_offers_user_time_idx ON credit_offers (user_id, created_at DESC);

-- The person's current credit line.
CREATE TABLE credit_limits (
    user_id            uuid PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    credit_limit_cents bigint NOT NULL CHECK (credit_limit_cents >= 0),
    interest_rate_bps  integer NOT NULL CHECK (interest_rate_bps BETWEEN 0 AND 10000),
    credit_type        text NOT NULL CHECK (credit_type IN ('short_term', 'long_term')),
    offer_id           uuid NOT NULL REFERENCES credit_offers (offer_id),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Every change of a credit line. UNIQUE (offer_id) makes applying an offer idempotent.
CREATE TABLE credit_limit_history (
    change_id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                  uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    offer_id                 uuid NOT NULL UNIQUE REFERENCES credit_offers (offer_id) ON DELETE CASCADE,
    previous_limit_cents     bigint CHECK (previous_limit_cents >= 0),
    new_limit_cents          bigint NOT NULL CHECK (new_limit_cents >= 0),
    interest_rate_bps        integer NOT NULL CHECK (interest_rate_bps BETWEEN 0 AND 10000),
    changed_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_limit_history_user_idx ON credit_limit_history (user_id, changed_at DESC);

-- Transactional outbox: written in the same transaction as the state change it announces, drained
-- by the offer worker (FOR UPDATE SKIP LOCKED), so work is never lost between commit and queue.
CREATE TABLE outbox (
    event_id      uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('offer_accepted')),
    user_id       uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    available_at  timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error    text,
    processed_at  timestamptz
);
CREATE INDEX outbox_pending_idx ON outbox (available_at) WHERE processed_at IS NULL;

-- Messages for a person's phone. Delivery is at least once: the notifier re-publishes until the
-- device's receipt sets delivered_at; the phone drops duplicates by notification_id.
CREATE TABLE notifications (
    notification_id   uuid PRIMARY KEY,
    user_id           uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    device_id         text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    kind              text NOT NULL CHECK (kind IN ('offer_made', 'offer_applied')),
    offer_id          uuid NOT NULL REFERENCES credit_offers (offer_id) ON DELETE CASCADE,
    body              jsonb NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    publish_attempts  integer NOT NULL DEFAULT 0 CHECK (publish_attempts >= 0),
    last_published_at timestamptz,
    delivered_at      timestamptz,
    -- One notification of a kind per offer and device: re-running the worker cannot duplicate it.
    UNIQUE (offer_id, device_id, kind)
);
CREATE INDEX notifications_undelivered_idx ON notifications (device_id, created_at) WHERE delivered_at IS NULL;
CREATE INDEX notifications_user_idx ON notifications (user_id, created_at DESC);

-- Uplink payloads that could not be decoded or failed validation, kept with the reason. Ingest
-- never stops for one of these.
CREATE TABLE dead_letters (
    dead_letter_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at    timestamptz NOT NULL DEFAULT now(),
    topic          text NOT NULL,
    device_id      text,
    reason         text NOT NULL,
    payload        bytea NOT NULL
);
CREATE INDEX dead_letters_received_idx ON dead_letters (received_at DESC);

-- Per-user API tokens. Only the SHA-256 of a token is stored; the token itself is shown once.
CREATE TABLE api_tokens (
    token_id     uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_user_idx ON api_tokens (user_id);

-- Idempotency-Key: the answer of a create, recorded in the same transaction as what it created.
-- The client's key is never stored: lookup_sha256 is a digest of (caller, key) and the answer is
-- sealed under another derivation of it (cloud::idempotency), so this table reveals nothing a
-- replay would show, not even a new person's token. Erased with the person.
CREATE TABLE idempotency_keys (
    lookup_sha256  bytea PRIMARY KEY CHECK (length(lookup_sha256) = 32),
    user_id        uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    -- Digest of the path and body: the same key for a different request is refused.
    request_sha256 bytea NOT NULL CHECK (length(request_sha256) = 32),
    status         smallint NOT NULL,
    nonce          bytea NOT NULL,
    sealed_answer  bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_user_idx ON idempotency_keys (user_id);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- What the person asked for, and the offer's price as a Brazilian lender must show it (monthly
-- rate, IOF, CET, the installment schedule; cloud::pricing). Stored as shown: the record of what
-- was offered does not change when the pricing code does. NULL for declined offers.
ALTER TABLE credit_offers ADD COLUMN requested_amount_cents bigint
    CHECK (requested_amount_cents > 0);
ALTER TABLE credit_offers ADD COLUMN pricing jsonb;

-- Assessments per person per period are counted under the person's lock.
-- (risk_assessments_user_time_idx already serves that count.)

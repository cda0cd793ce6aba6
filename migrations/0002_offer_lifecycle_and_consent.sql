-- A person has at most one open offer: a new assessment supersedes (or expires) the open one, so
-- a stale, more generous offer can never be accepted after a newer, protective decision.
ALTER TABLE credit_offers DROP CONSTRAINT credit_offers_status_check;
ALTER TABLE credit_offers ADD CONSTRAINT credit_offers_status_check
    CHECK (status IN ('offered', 'declined', 'accepted', 'applied', 'expired', 'superseded'));
CREATE UNIQUE INDEX credit_offers_one_open_per_user ON credit_offers (user_id) WHERE status = 'offered';

-- Consent can be withdrawn (LGPD Art. 8 §5); when it was is part of the record.
ALTER TABLE users ADD COLUMN consent_withdrawn_at timestamptz;

-- Proactive offers (cloud::proactive): offers the cloud makes by itself when a person's stream
-- crosses the policy's threshold, and the record that the trigger fired.

-- Who asked: the person (through the API) or the cloud. A proactive offer keeps the signal that
-- triggered it, which the person sees with the offer.
ALTER TABLE credit_offers
    ADD COLUMN origin text NOT NULL DEFAULT 'requested'
        CHECK (origin IN ('requested', 'proactive')),
    ADD COLUMN proactive_signal jsonb,
    ADD CONSTRAINT credit_offers_signal_of_proactive
        CHECK ((origin = 'proactive') = (proactive_signal IS NOT NULL));

-- Every time the trigger fired for a person, whatever came of it: at most one per person per
-- period (checked under the person's lock), so a person is assessed proactively at most once a
-- period however often the stream crosses the threshold, and however many replicas scan.
CREATE TABLE proactive_checks (
    check_id               uuid PRIMARY KEY,
    user_id                uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    created_at             timestamptz NOT NULL DEFAULT now(),
    -- The features that met the rule, as they were (cloud::proactive::Signal).
    signal                 jsonb NOT NULL,
    -- offered: an offer was made and the phone notified; declined: the policy declined;
    -- guarded: the policy saw signs of distress, so nothing was offered.
    outcome                text NOT NULL CHECK (outcome IN ('offered', 'declined', 'guarded')),
    offer_id               uuid REFERENCES credit_offers (offer_id) ON DELETE CASCADE,
    probability_of_default double precision NOT NULL
        CHECK (probability_of_default BETWEEN 0 AND 1),
    reason_codes           text[] NOT NULL DEFAULT '{}',
    CHECK ((outcome = 'offered') = (offer_id IS NOT NULL))
);
CREATE INDEX proactive_checks_user_time_idx ON proactive_checks (user_id, created_at DESC);

-- The trigger's scan looks only at people whose stream moved recently.
CREATE INDEX emotion_features_last_reading_idx ON emotion_features (last_reading_at);

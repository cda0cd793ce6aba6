//! The people's mobile app (`ecs-simulator mobile`): for every person of a fleet's roster, what
//! the app on their phone does with the credit API.
//!
//! Every round, for each person: catch up on the notifications since the last ones it saw (all
//! of them after a start: what the person missed while the app was away), print each, and look
//! at every offer a notification announced (its reasons, and for a proactive one the signal
//! behind it), accepting it with `--auto-accept`; then, with `--request-offers`, ask for an
//! offer, and accept an approved one with `--auto-accept`. An assessment refused for the
//! person's allowance (429) is not an error: the app asks again later.

use std::{collections::HashSet, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{ApiClient, NotificationItem, Offer};
use crate::fleet::RosterEntry;

/// What the app does on its own.
#[derive(Debug, Clone)]
pub struct MobileOptions {
    pub interval: Duration,
    /// Accept every open, approved offer the person sees (a demo's shortcut for a person
    /// tapping "accept").
    pub auto_accept: bool,
    /// Ask for an offer every round.
    pub request_offers: bool,
}

/// One person's app: where their notifications were read up to, and the offers it has looked
/// at (one notification per phone announces the same offer).
struct PersonApp {
    entry: RosterEntry,
    api: ApiClient,
    cursor: Option<String>,
    seen_offers: HashSet<Uuid>,
    /// Announced, but not read yet (the read failed).
    pending_offers: HashSet<Uuid>,
}

pub async fn run(
    api_url: &str,
    roster_file: &std::path::Path,
    options: MobileOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let roster: Vec<RosterEntry> = loop {
        match std::fs::read_to_string(roster_file) {
            Ok(raw) => break serde_json::from_str(&raw)?,
            Err(_) => {
                tracing::info!(file = %roster_file.display(), "waiting for the fleet's roster");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    let mut people = Vec::new();
    for entry in roster {
        people.push(PersonApp {
            api: ApiClient::new(api_url, &entry.api_token)?,
            entry,
            cursor: None,
            seen_offers: HashSet::new(),
            pending_offers: HashSet::new(),
        });
    }
    let mut ticker = tokio::time::interval(options.interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        for person in &mut people {
            person.round(&options).await;
        }
    }
}

impl PersonApp {
    async fn round(&mut self, options: &MobileOptions) {
        let user_id = self.entry.user_id;
        // Announced offers to look at: the new ones, and those whose read failed before (the
        // cursor has moved past their notification).
        for n in self.catch_up().await {
            if n.kind == "offer_made" && !self.seen_offers.contains(&n.offer_id) {
                self.pending_offers.insert(n.offer_id);
            }
        }
        for offer_id in self.pending_offers.clone() {
            match self.api.offer(offer_id).await {
                Ok(offer) => {
                    self.pending_offers.remove(&offer_id);
                    self.seen_offers.insert(offer_id);
                    self.consider(&offer, options).await;
                }
                Err(super::ApiError::Status { status, .. })
                    if status == reqwest::StatusCode::NOT_FOUND =>
                {
                    // Gone (the person was erased): nothing to show, ever.
                    self.pending_offers.remove(&offer_id);
                }
                Err(e) => tracing::warn!(%user_id, %offer_id, error = %e,
                    "cannot read the announced offer; trying again next round"),
            }
        }
        if !options.request_offers {
            return;
        }
        match self.api.request_offer(user_id).await {
            Ok(offer) => {
                self.seen_offers.insert(offer.offer_id);
                self.consider(&offer, options).await;
            }
            Err(e) if e.is_rate_limited() => {
                tracing::info!(%user_id, "assessments for this hour used up; asking again later")
            }
            Err(e) => tracing::warn!(%user_id, error = %e, "offer request failed"),
        }
    }

    /// Shows an offer as the person would see it, and accepts it when told to.
    async fn consider(&self, offer: &Offer, options: &MobileOptions) {
        let user_id = self.entry.user_id;
        tracing::info!(%user_id, offer_id = %offer.offer_id, origin = %offer.origin,
            approved = offer.approved, status = %offer.status,
            limit_cents = offer.credit_limit_cents, rate_bps = offer.interest_rate_bps,
            reasons = ?offer.reason_codes, signal = ?offer.proactive_signal, "offer");
        if !(options.auto_accept && offer.approved && offer.status == "offered") {
            return;
        }
        match self.api.accept_offer(offer.offer_id).await {
            Ok(accepted) => tracing::info!(%user_id, offer_id = %offer.offer_id,
                status = %accepted.status, "offer accepted"),
            Err(e) => tracing::warn!(%user_id, offer_id = %offer.offer_id, error = %e,
                "accept failed"),
        }
    }

    /// The person's notifications after the cursor, page by page, printed as they come; moves
    /// the cursor on. A failure leaves it where it was: the next round asks again from there.
    async fn catch_up(&mut self) -> Vec<NotificationItem> {
        let user_id = self.entry.user_id;
        let mut new = Vec::new();
        loop {
            match self
                .api
                .notifications(user_id, self.cursor.as_deref())
                .await
            {
                Ok(page) => {
                    for n in &page.notifications {
                        tracing::info!(%user_id, notification_id = %n.notification_id,
                            kind = %n.kind, offer_id = %n.offer_id, device_id = %n.device_id,
                            delivered = n.delivered_at.is_some(), "notification");
                    }
                    new.extend(page.notifications);
                    if page.next_after.is_some() {
                        self.cursor = page.next_after;
                    }
                    if !page.more {
                        return new;
                    }
                }
                Err(e) => {
                    tracing::warn!(%user_id, error = %e, "notifications unavailable");
                    return new;
                }
            }
        }
    }
}

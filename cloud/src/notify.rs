//! Phone notifications, delivered at least once.
//!
//! A notification is a row first ([`create_for_user`], in the transaction of the state change it
//! announces), a message second: the [`Notifier`] publishes undelivered rows and keeps
//! re-publishing them every `resend_after` until the phone's receipt (handled by
//! [`ingest`](crate::ingest)) sets `delivered_at`. The phone drops duplicates by
//! `notification_id`. There is no attempt limit: a phone may be offline for days, and a
//! publish to an offline phone costs the broker next to nothing.
//!
//! A notification published while its phone was offline is lost (QoS 1 to a clean session does
//! not wait for the subscriber), so waiting a full `resend_after` after the phone comes back would
//! be wasted time. Ingest marks a device's return in `devices.online_since` and wakes the
//! notifier, which re-publishes at once what it published before that moment.
//!
//! The notifier shares the broker link's request queue with ingest's acks, and acks matter more:
//! a dropped ack costs a device a resend of a whole batch. So the notifier publishes at most
//! [`PUBLISHES_PER_TICK`] notifications per [`TICK`] (wakes included), and only into free room
//! of the queue (it never waits for room). A backlog — thousands of notifications for phones that
//! are offline — drains at that rate instead of flooding the queue; at-least-once is unaffected,
//! since whatever is not published now is published at a later pass.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use ecs_protocol::{DeviceId, Downlink, Notification, NotificationKind, encode_downlink, topic};
use rumqttc::{AsyncClient, QoS};
use sqlx::{PgPool, types::Json};
use tokio::{sync::Notify, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::{Error, error::Result};

/// Most notifications published (claimed, to be exact) per [`TICK`], by all passes of the tick
/// together, woken or not. Tune it against the broker link's request queue (1,024 requests):
/// at 200 a second, notifications alone can never fill it within a tick while the link is up, so
/// acks always find room; a backlog of 10,000 drains in under a minute.
pub const PUBLISHES_PER_TICK: usize = 200;
/// Passes run at least this often, woken or not: the database is the truth, a wake only hurries.
/// The publishing budget is renewed at each tick.
pub const TICK: Duration = Duration::from_secs(1);

/// Creates one notification per non-revoked device of the person, in the caller's transaction.
///
/// Returns the ids of the notifications created now. Idempotent: `(offer_id, device_id, kind)` is
/// unique, so replaying the state change that announces the offer creates nothing twice (and
/// returns no ids).
pub async fn create_for_user(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    offer_id: Uuid,
    kind: &NotificationKind,
) -> Result<Vec<Uuid>> {
    if kind.offer_id() != offer_id {
        return Err(Error::Internal(format!(
            "notification for offer {offer_id} carries offer {}",
            kind.offer_id()
        )));
    }
    let ids = sqlx::query_scalar(
        "INSERT INTO notifications (notification_id, user_id, device_id, kind, offer_id, body)
         SELECT gen_random_uuid(), d.user_id, d.device_id, $2, $3, $4
         FROM devices d
         WHERE d.user_id = $1 AND d.revoked_at IS NULL
         ON CONFLICT (offer_id, device_id, kind) DO NOTHING
         RETURNING notification_id",
    )
    .bind(user_id)
    .bind(kind.name())
    .bind(offer_id)
    .bind(Json(kind))
    .fetch_all(conn)
    .await?;
    Ok(ids)
}

/// Publishes undelivered notifications until their receipts arrive.
///
/// Safe to run in every replica: a pass claims its rows with `FOR UPDATE SKIP LOCKED` and stamps
/// them (`publish_attempts`, `last_published_at`) in the same statement, so replicas never publish
/// the same notification within one resend window.
pub struct Notifier {
    pool: PgPool,
    client: AsyncClient,
    resend_after: Duration,
    wake: Arc<Notify>,
    per_tick: usize,
}

/// One notification claimed for publishing.
#[derive(sqlx::FromRow)]
struct Claimed {
    notification_id: Uuid,
    device_id: String,
    /// Decoded per row, so one unreadable body cannot block every other notification.
    body: Json<serde_json::Value>,
    created_at: DateTime<Utc>,
    publish_attempts: i32,
}

struct Pass {
    claimed: usize,
    published: usize,
}

/// Why a pass ended early: the rows it claimed but did not publish are due again after
/// `resend_after` (they count as published once).
#[derive(Debug)]
enum PassError {
    /// The database failed: nothing of the pass happened.
    Database(Error),
    /// The broker link's request queue is full (or the link is gone): the pass stopped publishing
    /// to leave the room to acks.
    QueueFull { claimed: usize, published: usize },
}

impl Notifier {
    pub fn new(pool: PgPool, client: AsyncClient, resend_after: Duration) -> Self {
        Self {
            pool,
            client,
            resend_after,
            wake: Arc::new(Notify::new()),
            per_tick: PUBLISHES_PER_TICK,
        }
    }

    /// Publishes at most `n` notifications per tick instead of [`PUBLISHES_PER_TICK`].
    pub fn with_publishes_per_tick(mut self, n: usize) -> Self {
        self.per_tick = n.max(1);
        self
    }

    /// A handle that wakes the notifier for an immediate pass (`notify_one`). Cheap to clone; a
    /// wake while a pass runs is remembered, so none is lost.
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs a pass at every tick and on every wake until `shutdown`, within a budget of
    /// [`PUBLISHES_PER_TICK`] per tick: a wake once the tick's budget is spent is served at the
    /// next tick (whose pass finds what the wake was for). A failing pass (Postgres down, the
    /// request queue full) is logged and ends the tick's publishing.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        info!(
            resend_after_ms = self.resend_after.as_millis() as u64,
            per_tick = self.per_tick,
            "notifier started"
        );
        let mut budget = 0;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => budget = self.per_tick,
                _ = self.wake.notified() => {}
            }
            if budget == 0 {
                continue;
            }
            match self.pass(budget).await {
                Ok(pass) => budget -= pass.claimed.min(budget),
                Err(PassError::QueueFull { claimed, published }) => {
                    budget = 0;
                    warn!(
                        claimed,
                        published,
                        "MQTT request queue full; the rest of the pass waits for its resend"
                    );
                }
                Err(PassError::Database(e)) => {
                    budget = 0;
                    warn!(error = %e, "notification pass failed; retrying at the next tick");
                }
            }
        }
        info!("notifier stopped");
    }

    /// One pass of at most [`PUBLISHES_PER_TICK`] (or the configured number): publishes the
    /// notifications that are due, returns how many it published.
    pub async fn deliver_pending(&self) -> Result<usize> {
        match self.pass(self.per_tick).await {
            Ok(pass) => Ok(pass.published),
            Err(PassError::Database(e)) => Err(e),
            Err(PassError::QueueFull { .. }) => Err(Error::Unavailable("broker")),
        }
    }

    /// Claims at most `limit` due notifications and publishes them.
    async fn pass(&self, limit: usize) -> Result<Pass, PassError> {
        // Due: never published; or published longer than `resend_after` ago; or published before
        // the device came back online (that publish went nowhere).
        let claimed: Vec<Claimed> = sqlx::query_as(
            "WITH due AS (
                 SELECT n.notification_id
                 FROM notifications n JOIN devices d ON d.device_id = n.device_id
                 WHERE n.delivered_at IS NULL
                   AND d.revoked_at IS NULL
                   AND (n.last_published_at IS NULL
                        OR n.last_published_at < now() - make_interval(secs => $1)
                        OR n.last_published_at < d.online_since)
                 ORDER BY n.last_published_at NULLS FIRST, n.created_at
                 LIMIT $2
                 FOR UPDATE OF n SKIP LOCKED
             )
             UPDATE notifications n
             SET publish_attempts = n.publish_attempts + 1, last_published_at = now()
             FROM due
             WHERE n.notification_id = due.notification_id
             RETURNING n.notification_id, n.device_id, n.body, n.created_at, n.publish_attempts",
        )
        .bind(self.resend_after.as_secs_f64())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| PassError::Database(e.into()))?;
        let mut published = 0;
        let mut queue_full = false;
        for notification in &claimed {
            match self.publish(notification) {
                Ok(true) => published += 1,
                Ok(false) => {
                    metrics::counter!("ecs_notifications_publish_failures_total",
                        "reason" => "unpublishable")
                    .increment(1);
                }
                Err(()) => {
                    queue_full = true;
                    break;
                }
            }
        }
        if published > 0 {
            metrics::counter!("ecs_notifications_published_total").increment(published as u64);
            debug!(published, "notifications published");
        }
        if queue_full {
            return Err(PassError::QueueFull {
                claimed: claimed.len(),
                published,
            });
        }
        Ok(Pass {
            claimed: claimed.len(),
            published,
        })
    }

    /// Queues one claimed notification for publishing, without waiting for room. `Ok(false)` for
    /// a row that can never be published (it is logged and left to an operator); `Err` when the
    /// request queue is full or the link is gone, which ends the pass.
    fn publish(&self, claimed: &Claimed) -> Result<bool, ()> {
        let id = claimed.notification_id;
        let device = match DeviceId::parse(claimed.device_id.as_str()) {
            Ok(device) => device,
            Err(e) => {
                error!(notification_id = %id, error = %e, "notification for an invalid device id");
                return Ok(false);
            }
        };
        let kind: NotificationKind = match serde_json::from_value(claimed.body.0.clone()) {
            Ok(kind) => kind,
            Err(e) => {
                error!(notification_id = %id, error = %e, "unreadable notification body");
                return Ok(false);
            }
        };
        let message = Downlink::NotificationV1(Notification {
            notification_id: id,
            created_at_ms: claimed.created_at.timestamp_millis(),
            kind,
        });
        let payload = match encode_downlink(&message) {
            Ok(payload) => payload,
            Err(e) => {
                error!(notification_id = %id, error = %e, "cannot encode a notification");
                return Ok(false);
            }
        };
        if let Err(e) =
            self.client
                .try_publish(topic::downlink(&device), QoS::AtLeastOnce, false, payload)
        {
            debug!(notification_id = %id, error = %e, "notification not queued");
            metrics::counter!("ecs_notifications_publish_failures_total", "reason" => "queue_full")
                .increment(1);
            return Err(());
        }
        let attempts = claimed.publish_attempts;
        if attempts >= 10 && is_power_of_ten(attempts) {
            warn!(notification_id = %id, device_id = %device, attempts, "notification still undelivered");
        }
        Ok(true)
    }
}

/// 10, 100, 1000…: a warning at each decade of attempts says "still trying" without a log line
/// per resend.
fn is_power_of_ten(mut n: i32) -> bool {
    while n >= 10 && n % 10 == 0 {
        n /= 10;
    }
    n == 1
}

/// A position in a person's notifications, for `GET /v1/users/{id}/notifications?after=`.
/// Clients treat it as opaque; it is the last notification's time and id, so a page never skips
/// or repeats one, whatever arrives meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    created_at: DateTime<Utc>,
    notification_id: Uuid,
}

impl Cursor {
    /// Parses `<microseconds since the epoch>.<notification id>`.
    pub fn parse(raw: &str) -> Result<Self> {
        let bad = || Error::invalid("after", "not a cursor this API returned");
        let (micros, id) = raw.split_once('.').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
        let notification_id = Uuid::try_parse(id).map_err(|_| bad())?;
        Ok(Self {
            created_at,
            notification_id,
        })
    }

    pub fn encode(&self) -> String {
        format!(
            "{}.{}",
            self.created_at.timestamp_micros(),
            self.notification_id
        )
    }
}

/// One notification as the person's app sees it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct NotificationView {
    pub notification_id: Uuid,
    /// The phone it was addressed to (one notification per phone).
    pub device_id: String,
    /// `offer_made` or `offer_applied`.
    pub kind: String,
    pub offer_id: Uuid,
    /// What the phone receives (the protocol's `NotificationKind`).
    #[schema(value_type = Object)]
    pub body: Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    /// When the phone acknowledged it; absent until then.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A page of a person's notifications, oldest first.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NotificationPage {
    pub notifications: Vec<NotificationView>,
    /// Pass as `after` for the next page, and later for what arrived since (absent when there
    /// are none yet).
    pub next_after: Option<String>,
    /// True when the page is full: ask again with `next_after` at once.
    pub more: bool,
}

/// Most notifications one page holds.
pub const MAX_PAGE: i64 = 100;

/// The person's notifications after `after` (from the first when `None`), oldest first.
pub async fn page(
    pool: &PgPool,
    user_id: Uuid,
    after: Option<Cursor>,
    limit: i64,
) -> Result<NotificationPage> {
    let limit = limit.clamp(1, MAX_PAGE);
    let (since, since_id) = after.map_or((None, None), |c| {
        (Some(c.created_at), Some(c.notification_id))
    });
    let notifications: Vec<NotificationView> = sqlx::query_as(
        "SELECT notification_id, device_id, kind, offer_id, body, created_at, delivered_at
         FROM notifications
         WHERE user_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, notification_id) > ($2, $3::uuid))
         ORDER BY created_at, notification_id
         LIMIT $4",
    )
    .bind(user_id)
    .bind(since)
    .bind(since_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    if notifications.is_empty() {
        // Nothing for a person, or no such person: the API tells them apart.
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
        exists.ok_or(Error::NotFound("user"))?;
    }
    let more = notifications.len() as i64 == limit;
    let next_after = notifications
        .last()
        .map(|n| Cursor {
            created_at: n.created_at,
            notification_id: n.notification_id,
        })
        .or(after)
        .map(|c| c.encode());
    Ok(NotificationPage {
        notifications,
        next_after,
        more,
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    use ecs_protocol::CreditType;

    use super::*;

    /// A fresh open offer for `user_id` and the notification kind announcing it.
    pub(crate) async fn offer(pool: &PgPool, user_id: Uuid) -> NotificationKind {
        let assessment_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO risk_assessments (assessment_id, user_id, model_name, model_version,
                 probability_of_default, features, contributions)
             VALUES ($1, $2, 'test', '1', 0.05, '{}', '[]')",
        )
        .bind(assessment_id)
        .bind(user_id)
        .execute(pool)
        .await
        .unwrap();
        let offer_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO credit_offers (offer_id, user_id, assessment_id, approved, status,
                 credit_limit_cents, interest_rate_bps, credit_type, term_months, expires_at)
             VALUES ($1, $2, $3, true, 'offered', 500000, 250, 'short_term', 12,
                 now() + interval '3 days')",
        )
        .bind(offer_id)
        .bind(user_id)
        .bind(assessment_id)
        .execute(pool)
        .await
        .unwrap();
        NotificationKind::OfferMade {
            offer_id,
            credit_limit_cents: 500_000,
            interest_rate_bps: 250,
            credit_type: CreditType::ShortTerm,
            expires_at_ms: Utc::now().timestamp_millis() + 3 * 86_400_000,
        }
    }

    /// Creates an offer and its notifications (one per device) in one transaction.
    pub(crate) async fn notify_offer(
        pool: &PgPool,
        user_id: Uuid,
    ) -> (NotificationKind, Vec<Uuid>) {
        let kind = offer(pool, user_id).await;
        let mut tx = pool.begin().await.unwrap();
        let ids = create_for_user(&mut tx, user_id, kind.offer_id(), &kind)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (kind, ids)
    }
}

#[cfg(test)]
mod tests {
    use ecs_protocol::{NotificationReceipt, Uplink, decode_downlink, encode_uplink};

    use super::{fixtures::*, *};
    use crate::{
        ingest::{Ingest, Outcome, fixtures::*},
        mqtt::testing::{TestClient, WAIT},
    };

    const QUIET: Duration = Duration::from_millis(300);

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_person_pages_through_their_notifications_without_gaps_or_repeats(pool: PgPool) {
        let (user_id, _device) = user_with_device(&pool).await;
        let empty = page(&pool, user_id, None, 10).await.unwrap();
        assert!(empty.notifications.is_empty() && empty.next_after.is_none() && !empty.more);
        // One open offer per person: each new one supersedes the last, as assessments do.
        let supersede = async || {
            sqlx::query("UPDATE credit_offers SET status = 'superseded' WHERE user_id = $1 AND status = 'offered'")
                .bind(user_id)
                .execute(&pool)
                .await
                .unwrap();
        };
        let mut made = Vec::new();
        for _ in 0..3 {
            supersede().await;
            made.extend(notify_offer(&pool, user_id).await.1);
        }
        let first = page(&pool, user_id, None, 2).await.unwrap();
        assert!(first.more);
        let after = Cursor::parse(first.next_after.as_deref().unwrap()).unwrap();
        let second = page(&pool, user_id, Some(after), 2).await.unwrap();
        assert!(!second.more);
        let seen: Vec<Uuid> = first
            .notifications
            .iter()
            .chain(&second.notifications)
            .map(|n| n.notification_id)
            .collect();
        let mut expected = made.clone();
        expected.sort();
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, expected, "every notification once");
        // Caught up: nothing new, and the cursor stays where it was.
        let last = second.next_after.clone().unwrap();
        let caught_up = page(&pool, user_id, Some(Cursor::parse(&last).unwrap()), 2)
            .await
            .unwrap();
        assert!(caught_up.notifications.is_empty());
        assert_eq!(caught_up.next_after.as_deref(), Some(last.as_str()));
        // Then one more arrives: it is the next page.
        supersede().await;
        let (_, newer) = notify_offer(&pool, user_id).await;
        let next = page(&pool, user_id, Some(Cursor::parse(&last).unwrap()), 10)
            .await
            .unwrap();
        let ids: Vec<Uuid> = next
            .notifications
            .iter()
            .map(|n| n.notification_id)
            .collect();
        assert_eq!(ids, newer);

        assert!(matches!(
            Cursor::parse("nonsense"),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            Cursor::parse("12.not-a-uuid"),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            page(&pool, Uuid::new_v4(), None, 10).await,
            Err(Error::NotFound(_))
        ));
    }

    async fn next_notification(phone: &mut TestClient) -> Notification {
        let message = phone
            .next_within(WAIT)
            .await
            .expect("no notification arrived");
        match decode_downlink(&message.payload).unwrap() {
            Downlink::NotificationV1(n) => n,
            other => panic!("expected a notification, got {other:?}"),
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn one_notification_per_live_device_and_never_twice(pool: PgPool) {
        let (user_id, _phone) = user_with_device(&pool).await;
        let tablet = add_device(&pool, user_id).await;
        let revoked = add_device(&pool, user_id).await;
        sqlx::query("UPDATE devices SET revoked_at = now() WHERE device_id = $1")
            .bind(revoked.as_str())
            .execute(&pool)
            .await
            .unwrap();
        let (kind, ids) = notify_offer(&pool, user_id).await;
        assert_eq!(ids.len(), 2);

        let mut tx = pool.begin().await.unwrap();
        let replay = create_for_user(&mut tx, user_id, kind.offer_id(), &kind)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(replay.is_empty());

        let body: Json<NotificationKind> = sqlx::query_scalar(
            "SELECT body FROM notifications WHERE device_id = $1 AND kind = 'offer_made'",
        )
        .bind(tablet.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(body.0, kind);

        let mut tx = pool.begin().await.unwrap();
        let mismatch = create_for_user(&mut tx, user_id, Uuid::new_v4(), &kind).await;
        assert!(matches!(mismatch, Err(Error::Internal(_))));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_notification_is_republished_until_its_receipt_arrives(pool: PgPool) {
        let (user_id, device) = user_with_device(&pool).await;
        let mut phone = TestClient::connect(Some(&topic::downlink(&device))).await;
        let cloud = TestClient::connect(None).await;
        let (kind, ids) = notify_offer(&pool, user_id).await;
        let notifier = Notifier::new(pool.clone(), cloud.client.clone(), QUIET);

        assert_eq!(notifier.deliver_pending().await.unwrap(), 1);
        let first = next_notification(&mut phone).await;
        assert_eq!(first.notification_id, ids[0]);
        assert_eq!(first.kind, kind);
        // Within the resend window nothing is due.
        assert_eq!(notifier.deliver_pending().await.unwrap(), 0);

        // No receipt: after the window it comes again, same id.
        tokio::time::sleep(QUIET + Duration::from_millis(100)).await;
        assert_eq!(notifier.deliver_pending().await.unwrap(), 1);
        assert_eq!(next_notification(&mut phone).await.notification_id, ids[0]);

        // The phone's receipt ends it.
        let receipt = encode_uplink(&Uplink::NotificationReceiptV1(NotificationReceipt {
            notification_ids: ids.clone(),
        }))
        .unwrap();
        let outcome = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral())
            .handle(&topic::uplink(&device), &receipt)
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            Outcome::ReceiptApplied { delivered: 1, .. }
        ));
        tokio::time::sleep(QUIET + Duration::from_millis(100)).await;
        assert_eq!(notifier.deliver_pending().await.unwrap(), 0);
        assert!(phone.next_within(QUIET).await.is_none());

        let attempts: i32 = sqlx::query_scalar(
            "SELECT publish_attempts FROM notifications WHERE notification_id = $1",
        )
        .bind(ids[0])
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(attempts, 2);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_phone_back_online_gets_its_notifications_at_once(pool: PgPool) {
        let (user_id, device) = user_with_device(&pool).await;
        let cloud = TestClient::connect(None).await;
        let (_, ids) = notify_offer(&pool, user_id).await;
        // A resend window far longer than the test: only the return can bring it forward.
        let notifier = Notifier::new(
            pool.clone(),
            cloud.client.clone(),
            Duration::from_secs(3600),
        );
        // Published while the phone is offline (nobody subscribed): lost.
        assert_eq!(notifier.deliver_pending().await.unwrap(), 1);
        assert_eq!(notifier.deliver_pending().await.unwrap(), 0);

        // The phone comes back and sends its buffered readings.
        let mut phone = TestClient::connect(Some(&topic::downlink(&device))).await;
        let wake = notifier.wake_handle();
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral())
            .with_device_seen(wake.clone());
        ingest
            .handle(&topic::uplink(&device), &encode(batch(&device, 0, 3)))
            .await
            .unwrap();
        tokio::time::timeout(WAIT, wake.notified())
            .await
            .expect("ingest did not wake the notifier");
        assert_eq!(notifier.deliver_pending().await.unwrap(), 1);
        assert_eq!(next_notification(&mut phone).await.notification_id, ids[0]);
        assert_eq!(notifier.deliver_pending().await.unwrap(), 0);

        // The next batch a moment later is not a return: no wake, nothing due.
        ingest
            .handle(&topic::uplink(&device), &encode(batch(&device, 3, 3)))
            .await
            .unwrap();
        assert!(tokio::time::timeout(QUIET, wake.notified()).await.is_err());
        assert_eq!(notifier.deliver_pending().await.unwrap(), 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn the_running_notifier_publishes_on_wake_and_stops_on_shutdown(pool: PgPool) {
        let (user_id, device) = user_with_device(&pool).await;
        let mut phone = TestClient::connect(Some(&topic::downlink(&device))).await;
        let cloud = TestClient::connect(None).await;
        let notifier = Notifier::new(
            pool.clone(),
            cloud.client.clone(),
            Duration::from_secs(3600),
        );
        let wake = notifier.wake_handle();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(notifier.run(shutdown.clone()));

        let (_, ids) = notify_offer(&pool, user_id).await;
        wake.notify_one();
        assert_eq!(next_notification(&mut phone).await.notification_id, ids[0]);

        shutdown.cancel();
        tokio::time::timeout(WAIT, running)
            .await
            .expect("notifier did not stop")
            .unwrap();
    }

    async fn published_so_far(pool: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE last_published_at IS NOT NULL")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_backlog_drains_at_the_budget_per_tick_however_often_woken(pool: PgPool) {
        // One offer (a person has one open offer at most), one notification per device.
        let (user_id, _device) = user_with_device(&pool).await;
        for _ in 1..7 {
            add_device(&pool, user_id).await;
        }
        notify_offer(&pool, user_id).await;
        let cloud = TestClient::connect(None).await;
        let notifier = Notifier::new(
            pool.clone(),
            cloud.client.clone(),
            Duration::from_secs(3600),
        )
        .with_publishes_per_tick(3);
        let wake = notifier.wake_handle();
        let shutdown = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let running = tokio::spawn(notifier.run(shutdown.clone()));
        let wake_often = async {
            loop {
                wake.notify_one();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let at = |ms: u64| tokio::time::sleep_until(started + Duration::from_millis(ms));
        // Ticks at 0 s, 1 s, 2 s: 3, then 3 more, then the last one.
        let counts = tokio::select! {
            () = wake_often => unreachable!(),
            counts = async {
                let mut counts = Vec::new();
                for ms in [500, 1_500, 2_500] {
                    at(ms).await;
                    counts.push(published_so_far(&pool).await);
                }
                counts
            } => counts,
        };
        assert_eq!(counts, vec![3, 6, 7]);
        shutdown.cancel();
        tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_full_request_queue_ends_the_pass_without_waiting(pool: PgPool) {
        let (user_id, _device) = user_with_device(&pool).await;
        for _ in 1..3 {
            add_device(&pool, user_id).await;
        }
        notify_offer(&pool, user_id).await;
        // Room for one request, and nobody draining it.
        let options = rumqttc::MqttOptions::new("never-connected", "127.0.0.1", 1);
        let (client, _eventloop) = AsyncClient::new(options, 1);
        let notifier = Notifier::new(pool.clone(), client, Duration::from_secs(3600));
        let pass = tokio::time::timeout(Duration::from_secs(1), notifier.deliver_pending())
            .await
            .expect("the pass waited for room");
        assert!(matches!(pass, Err(Error::Unavailable(_))), "{pass:?}");
        // All three were claimed (and are due again after the resend interval); one is queued.
        assert_eq!(published_so_far(&pool).await, 3);
    }

    #[test]
    fn decades_of_attempts_are_recognised() {
        let decades: Vec<i32> = (1..=1000).filter(|n| is_power_of_ten(*n)).collect();
        assert_eq!(decades, vec![1, 10, 100, 1000]);
        assert!(!is_power_of_ten(0));
    }
}

//! Ingest: device uplinks in; committed readings, updated features and application acks out.
//!
//! [`Ingest::handle`] is the whole decision for one message and needs only Postgres, so it is
//! tested without a broker; [`Ingest::run`] feeds it from the [`BrokerLink`](crate::mqtt) and
//! publishes the acks.
//!
//! # Guarantees
//!
//! * **Exactly once in the database.** A batch is stored in one transaction: one `INSERT …
//!   SELECT FROM UNNEST(…) ON CONFLICT (device_id, seq, recorded_at) DO NOTHING RETURNING seq`
//!   for all its readings (a reading's time is fixed when the phone buffers it, so every send of
//!   it carries the same `recorded_at`; see migration 0010), the person's features folded forward with *only the readings that insert
//!   returned*, and the device's `last_seen_at`. A resent batch therefore changes nothing twice.
//! * **Ack after commit.** The ack names the batch's exact range `first_seq..=last_seq`, and is
//!   produced only after the commit, so a device deletes nothing the cloud does not hold.
//! * **Who before what.** A message on a device's uplink topic is judged by its sender first:
//!   an undecodable payload, or a batch, is looked at only after the registration (and the
//!   person's consent) allows it. What is decided below about bad payloads therefore only ever
//!   concerns registered devices of consenting people.
//! * **Unregistered and revoked devices are not accepted at all**: no storage, no dead letter, no
//!   ack ([`Outcome::NotAccepted`]) — whatever they send, valid or not. The phone keeps its
//!   readings (its buffer is bounded) — a device whose registration is still on its way delivers
//!   them later — and the cloud keeps no emotional data of someone it has no registration (and
//!   so no consent) for. On a shared broker, a cloud never makes another cloud's devices forget
//!   their data. A person erased while their batch is being processed counts as unregistered:
//!   the batch's insert then fails on the foreign key to the erased device, and nothing is kept.
//! * **Without consent, nothing is kept**: a batch of a person who has not consented to
//!   emotional data is discarded — valid or not, it is neither stored nor dead-lettered — and
//!   acked when its range is known, so the phone forgets it ([`Outcome::DiscardedWithoutConsent`]).
//! * **Ingest never stops for a bad payload.** Anything from an accepted device that can never be
//!   stored (undecodable, invalid, implausibly timed, refused by a database constraint) goes to
//!   `dead_letters` with a readable reason and the raw payload, as does anything on a topic that
//!   is not a device's uplink topic. The dead letter is written only while the device is still
//!   registered, not revoked and its person consenting (checked in the same statement, with the
//!   device row locked against a concurrent erasure).
//!   When the payload reveals its range, the range is **acked once the dead letter is committed**:
//!   the payload is kept there for an operator, and without the ack the device would resend the
//!   same poison batch forever and keep it in its bounded buffer.
//! * **Transient failures are not acked.** When Postgres is unavailable, [`Ingest::handle`]
//!   returns `Err`, nothing is acked and the device resends later.
//! * **A replayed dead letter is decided like a live uplink** ([`Ingest::replay`], driven by
//!   [`dead_letters`](crate::dead_letters)): what is valid now is stored (once, by the same
//!   transaction); what is still refused stays in its own row, never a second one.
//!   [`Ingest::dry_run`] takes the same decision and writes nothing.

mod delivery;
mod group;
pub mod queue;
mod runner;
mod store;

pub use group::GroupCommitter;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use ecs_protocol::{
    Ack, DecodeError, DeviceId, NotificationReceipt, ReadingBatch, Uplink, ValidationError,
    decode_uplink, topic,
};
use sqlx::PgPool;
use tokio::sync::Notify;
use tracing::{Span, debug, field, info, warn};
use uuid::Uuid;

use self::delivery::Delivery;
pub use self::delivery::{DeadLetterId, DeadLetterIdError};
use crate::{Error, error::Result, keys::KeyCache, privacy::thoughts};

/// Readings taken longer ago than this are refused: no phone buffers a month of data, so such a
/// timestamp means a broken clock, and stale data must not move today's features.
pub const MAX_READING_AGE: TimeDelta = TimeDelta::days(30);
/// Readings may be stamped at most this far ahead of the cloud's clock (phone clocks drift).
pub const MAX_CLOCK_AHEAD: TimeDelta = TimeDelta::minutes(5);
/// A device silent for longer than this was offline: notifications published meanwhile did not
/// reach it, so its next batch opens a new `online_since` and wakes the notifier.
pub const DEVICE_RETURN_GAP: TimeDelta = TimeDelta::seconds(30);

/// Why an uplink can never be stored. The `Display` text is the dead letter's `reason`.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("the topic is not a device uplink topic")]
    NotUplinkTopic,
    #[error("undecodable: {0}")]
    Undecodable(#[from] DecodeError),
    #[error("invalid batch: {0}")]
    Invalid(#[from] ValidationError),
    #[error("the batch names device {payload} but arrived on the topic of device {topic}")]
    DeviceMismatch { topic: DeviceId, payload: DeviceId },
    #[error("implausible reading time: {0}")]
    ImplausibleTime(String),
    #[error("the device is not registered")]
    UnknownDevice,
    #[error("the device has been revoked")]
    RevokedDevice,
    #[error("the database refused the batch: {0}")]
    RefusedByDatabase(String),
}

impl Rejection {
    /// Short stable name, for metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::NotUplinkTopic => "not_uplink_topic",
            Rejection::Undecodable(_) => "undecodable",
            Rejection::Invalid(_) => "invalid",
            Rejection::DeviceMismatch { .. } => "device_mismatch",
            Rejection::ImplausibleTime(_) => "implausible_time",
            Rejection::UnknownDevice => "unknown_device",
            Rejection::RevokedDevice => "revoked_device",
            Rejection::RefusedByDatabase(_) => "refused_by_database",
        }
    }
}

/// What [`Ingest::handle`] did with one message. Everything here is committed (except after
/// [`Ingest::dry_run`], which says what would be, and writes nothing).
#[derive(Debug)]
pub enum Outcome {
    /// `inserted` readings of the batch were new (the other `duplicates` were stored before).
    Stored {
        device_id: DeviceId,
        user_id: Uuid,
        inserted: usize,
        duplicates: usize,
        ack: Ack,
    },
    /// Every reading of the batch was already stored: a resend after a lost ack. Acked again.
    AllDuplicates {
        device_id: DeviceId,
        user_id: Uuid,
        readings: usize,
        ack: Ack,
    },
    /// The person has not consented (or has withdrawn consent) to emotional data: the payload is
    /// not stored, not even as a dead letter, valid or not. `readings` is how many it held (0 when
    /// it could not be decoded); `ack` is its range when known, so the phone forgets it.
    DiscardedWithoutConsent {
        device_id: DeviceId,
        user_id: Uuid,
        readings: usize,
        ack: Option<Ack>,
    },
    /// Stored in `dead_letters` with `reason`; `ack` is the batch's range when it is known.
    DeadLettered {
        device_id: Option<DeviceId>,
        reason: Rejection,
        ack: Option<Ack>,
    },
    /// The device is not registered, or revoked: nothing stored, nothing acked.
    NotAccepted {
        device_id: DeviceId,
        reason: Rejection,
    },
    /// A receipt marked `delivered` notifications as delivered (others were already, or were
    /// not this device's).
    ReceiptApplied { device_id: DeviceId, delivered: u64 },
}

impl Outcome {
    /// The ack to publish, and to which device, if any.
    pub fn ack(&self) -> Option<(&DeviceId, Ack)> {
        match self {
            Outcome::Stored { device_id, ack, .. }
            | Outcome::AllDuplicates { device_id, ack, .. } => Some((device_id, *ack)),
            Outcome::DiscardedWithoutConsent {
                device_id,
                ack: Some(ack),
                ..
            }
            | Outcome::DeadLettered {
                device_id: Some(device_id),
                ack: Some(ack),
                ..
            } => Some((device_id, *ack)),
            Outcome::DiscardedWithoutConsent { .. }
            | Outcome::DeadLettered { .. }
            | Outcome::NotAccepted { .. }
            | Outcome::ReceiptApplied { .. } => None,
        }
    }
}

/// The ingest stage. Cheap to clone (a pool handle and an optional wake-up).
#[derive(Debug, Clone)]
pub struct Ingest {
    pool: PgPool,
    /// The people's data keys, which seal each reading's thoughts before it is stored.
    keys: KeyCache,
    device_seen: Option<Arc<Notify>>,
    /// When set, batches are committed in groups (see [`GroupCommitter`]); else each alone.
    committer: Option<GroupCommitter>,
}

impl Ingest {
    pub fn new(pool: PgPool, keys: KeyCache) -> Self {
        Self {
            pool,
            keys,
            device_seen: None,
            committer: None,
        }
    }

    /// Commits batches in groups through `committer` (whose task the caller runs) instead of a
    /// transaction each.
    pub fn with_group_commit(mut self, committer: GroupCommitter) -> Self {
        self.committer = Some(committer);
        self
    }

    /// Wakes `notifier` (the [`Notifier`](crate::notify::Notifier)'s handle) after committing a
    /// batch from a device that has come back online — silent for more than
    /// [`DEVICE_RETURN_GAP`] — while notifications for it are undelivered, so they reach the
    /// phone now rather than at the next resend interval.
    pub fn with_device_seen(mut self, notifier: Arc<Notify>) -> Self {
        self.device_seen = Some(notifier);
        self
    }

    /// Handles one message received on `topic`. `Ok` means the outcome is committed (including a
    /// dead letter); `Err` means nothing was decided and the message should come again.
    #[tracing::instrument(name = "uplink", skip_all, fields(device_id = field::Empty, user_id = field::Empty))]
    pub async fn handle(&self, topic: &str, payload: &[u8]) -> Result<Outcome> {
        self.decide(topic, payload, Delivery::Live).await
    }

    /// Handles dead letter `id` again, as if its `payload` had just arrived on `topic`: the same
    /// decision as [`Ingest::handle`]. A payload that is still refused does not become a second
    /// dead letter: row `id` stays, with the reason it is refused for now (an `Err` when that row
    /// is gone meanwhile). Deleting the row once the payload is stored is the caller's business,
    /// after this has committed.
    #[tracing::instrument(name = "dead_letter_replay", skip_all, fields(dead_letter_id = %id, device_id = field::Empty, user_id = field::Empty))]
    pub async fn replay(&self, id: DeadLetterId, topic: &str, payload: &[u8]) -> Result<Outcome> {
        self.decide(topic, payload, Delivery::Replay(id)).await
    }

    /// The decision [`Ingest::handle`] would take, with nothing written. It reads the
    /// registration and the readings already stored; a refusal by a database constraint is only
    /// found by the insert itself, so such a batch comes out as [`Outcome::Stored`].
    #[tracing::instrument(name = "uplink_dry_run", skip_all, fields(device_id = field::Empty, user_id = field::Empty))]
    pub async fn dry_run(&self, topic: &str, payload: &[u8]) -> Result<Outcome> {
        self.decide(topic, payload, Delivery::DryRun).await
    }

    async fn decide(&self, topic: &str, payload: &[u8], delivery: Delivery) -> Result<Outcome> {
        let Some(device) = topic::device_of_uplink(topic) else {
            return self.dead_letter_foreign(topic, payload, delivery).await;
        };
        Span::current().record("device_id", field::display(&device));
        match decode_uplink(payload) {
            // Nothing tells whose data this is but the topic: the dead letter is kept only for
            // a registered device of a consenting person.
            Err(e) => {
                self.dead_letter(topic, device, payload, e.into(), None, 0, delivery)
                    .await
            }
            Ok(Uplink::ReadingBatchV1(batch)) => {
                self.ingest_batch(topic, device, payload, batch, delivery)
                    .await
            }
            // Delta-coded on the wire; the same batch, the same rules, once unpacked. (V3 differs
            // only in the ack its sender reads, which the runner chooses.)
            Ok(Uplink::ReadingBatchV2(packed) | Uplink::ReadingBatchV3(packed)) => {
                match packed.unpack() {
                    Ok(batch) => {
                        self.ingest_batch(topic, device, payload, batch, delivery)
                            .await
                    }
                    Err(e) => {
                        let reason = DecodeError::from(e).into();
                        self.dead_letter(topic, device, payload, reason, None, 0, delivery)
                            .await
                    }
                }
            }
            Ok(Uplink::NotificationReceiptV1(receipt)) => {
                self.apply_receipt(device, receipt, delivery).await
            }
        }
    }

    async fn ingest_batch(
        &self,
        topic: &str,
        device: DeviceId,
        payload: &[u8],
        batch: ReadingBatch,
        delivery: Delivery,
    ) -> Result<Outcome> {
        let readings = batch.readings.len();
        // Who first: the registration and the consent decide whether this batch may be looked at
        // at all; only then is it validated (and, if invalid, kept as a dead letter).
        let user_id = match self.standing(&device).await? {
            Standing::NotAccepted(reason) => return Ok(not_accepted(device, reason)),
            Standing::WithoutConsent(user_id) => {
                return Ok(discarded(device, user_id, readings, known_range(&batch)));
            }
            Standing::Accepted(user_id) => user_id,
        };
        Span::current().record("user_id", field::display(user_id));
        let checked = match check_batch(&device, &batch, Utc::now()) {
            Ok(checked) => checked,
            Err(rejection) => {
                let ack = known_range(&batch);
                return self
                    .dead_letter(topic, device, payload, rejection, ack, readings, delivery)
                    .await;
            }
        };
        let ack = checked.ack;
        if let Delivery::DryRun = delivery {
            let present = delivery::already_stored(&self.pool, &device, ack).await?;
            let inserted = readings.saturating_sub(present);
            return Ok(committed(device, user_id, readings, inserted, ack));
        }
        let newest = checked.taken_at.iter().max().copied();
        // Sealed before the batch's transaction: a data key made for it is committed on its
        // own, never undone by a batch that rolls back (see `KeyCache`).
        let first_seq = i64::try_from(batch.first_seq)
            .map_err(|_| Error::Internal("validated batch has first_seq above i64::MAX".into()))?;
        let Some(thoughts) = thoughts::seal_batch(
            &self.keys,
            &self.pool,
            user_id,
            &device,
            first_seq,
            batch.readings.iter().map(|r| r.thoughts.as_slice()),
        )
        .await?
        else {
            return Ok(not_accepted(device, Rejection::UnknownDevice));
        };
        let stored = match &self.committer {
            Some(committer) => {
                committer
                    .store(device.clone(), user_id, batch, checked.taken_at, thoughts)
                    .await
            }
            None => {
                store::store_batch(
                    &self.pool,
                    store::ToStore {
                        device: &device,
                        user_id,
                        batch: &batch,
                        taken_at: &checked.taken_at,
                        thoughts: &thoughts,
                    },
                )
                .await
            }
        };
        let stored = match stored {
            Ok(store::StoreOutcome::Stored(stored)) => stored,
            Ok(store::StoreOutcome::WithoutConsent) => {
                return Ok(discarded(device, user_id, readings, Some(ack)));
            }
            Ok(store::StoreOutcome::RegistrationGone) => {
                return Ok(not_accepted(device, Rejection::UnknownDevice));
            }
            // The registration read above is not part of the batch's transaction: the person
            // was erased (or the device deleted) in between. Nothing of theirs is kept.
            Err(Error::Database(e)) if store::registration_gone(&e) => {
                return Ok(not_accepted(device, Rejection::UnknownDevice));
            }
            Err(Error::Database(e)) if store::refused_by_database(&e) => {
                let rejection = Rejection::RefusedByDatabase(e.to_string());
                return self
                    .dead_letter(
                        topic,
                        device,
                        payload,
                        rejection,
                        Some(ack),
                        readings,
                        delivery,
                    )
                    .await;
            }
            Err(e) => return Err(e),
        };
        if stored.came_back_with_mail
            && let Some(notifier) = &self.device_seen
        {
            notifier.notify_one();
        }
        if let Some(newest) = newest {
            // From the sensor's clock to the commit: the lag a phone's newest reading saw.
            let lag = (Utc::now() - newest).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!("ecs_ingest_lag_seconds").record(lag);
        }
        debug!(inserted = stored.inserted, readings, "batch committed");
        Ok(committed(device, user_id, readings, stored.inserted, ack))
    }

    /// Whether uplinks of `device` are accepted now, and whose they are.
    async fn standing(&self, device: &DeviceId) -> Result<Standing> {
        let registration: Option<Registration> = sqlx::query_as(
            "SELECT d.user_id, d.revoked_at IS NOT NULL AS revoked, u.emotional_data_consent
             FROM devices d JOIN users u ON u.user_id = d.user_id
             WHERE d.device_id = $1",
        )
        .bind(device.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match registration {
            None => Standing::NotAccepted(Rejection::UnknownDevice),
            Some(r) if r.revoked => Standing::NotAccepted(Rejection::RevokedDevice),
            Some(r) if !r.emotional_data_consent => Standing::WithoutConsent(r.user_id),
            Some(r) => Standing::Accepted(r.user_id),
        })
    }

    async fn apply_receipt(
        &self,
        device: DeviceId,
        receipt: NotificationReceipt,
        delivery: Delivery,
    ) -> Result<Outcome> {
        if let Delivery::DryRun = delivery {
            let delivered =
                delivery::deliverable(&self.pool, &device, &receipt.notification_ids).await?;
            return Ok(Outcome::ReceiptApplied {
                device_id: device,
                delivered,
            });
        }
        // `device_id = $2`: a device can only confirm its own notifications.
        let done = sqlx::query(
            "UPDATE notifications SET delivered_at = now()
             WHERE notification_id = ANY($1) AND device_id = $2 AND delivered_at IS NULL",
        )
        .bind(&receipt.notification_ids)
        .bind(device.as_str())
        .execute(&self.pool)
        .await?;
        debug!(
            delivered = done.rows_affected(),
            "notification receipt applied"
        );
        metrics::counter!("ecs_notifications_delivered_total").increment(done.rows_affected());
        Ok(Outcome::ReceiptApplied {
            device_id: device,
            delivered: done.rows_affected(),
        })
    }

    /// Keeps a payload from `device` that can never be stored, with `reason` — if, at that very
    /// moment, the device is registered, not revoked and its person consenting. The device row is
    /// locked (`FOR KEY SHARE`) by the statement, so an erasure either happens before (and
    /// nothing is kept) or waits for it (and then finds the dead letter to delete).
    ///
    /// When the device is no longer accepted, the outcome says why instead, exactly as if that
    /// had been known from the start: nothing kept, and an ack only for a person without consent.
    ///
    /// A replay keeps the payload in its existing row instead (see [`Delivery`]); a dry run only
    /// reads the registration.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        topic: &str,
        device: DeviceId,
        payload: &[u8],
        reason: Rejection,
        ack: Option<Ack>,
        readings: usize,
        delivery: Delivery,
    ) -> Result<Outcome> {
        let kept = match delivery {
            Delivery::Live => sqlx::query(
                "INSERT INTO dead_letters (topic, device_id, reason, payload)
                 SELECT $1, d.device_id, $3, $4
                 FROM devices d JOIN users u ON u.user_id = d.user_id
                 WHERE d.device_id = $2 AND d.revoked_at IS NULL AND u.emotional_data_consent
                 FOR KEY SHARE OF d",
            )
            .bind(topic)
            .bind(device.as_str())
            .bind(reason.to_string())
            .bind(payload)
            .execute(&self.pool)
            .await?
            .rows_affected(),
            Delivery::Replay(id) => {
                delivery::keep_again(&self.pool, id, Some(&device), &reason.to_string()).await?
            }
            Delivery::DryRun => match self.standing(&device).await? {
                Standing::Accepted(_) => 1,
                Standing::NotAccepted(_) | Standing::WithoutConsent(_) => 0,
            },
        };
        if kept == 0 {
            return match self.standing(&device).await? {
                Standing::NotAccepted(reason) => Ok(not_accepted(device, reason)),
                Standing::WithoutConsent(user_id) => Ok(discarded(device, user_id, readings, ack)),
                Standing::Accepted(_) => Err(match delivery {
                    Delivery::Replay(id) => gone_while_replayed(id),
                    // Registered again between the two statements: let the device send it again.
                    Delivery::Live | Delivery::DryRun => Error::Conflict(
                        "the device's registration changed while its uplink was processed".into(),
                    ),
                }),
            };
        }
        log_dead_letter(delivery, &reason, topic, payload.len());
        // An ack goes to the topic's device: that is who publishes (the broker confines a device
        // to its own topic) and who would otherwise resend.
        Ok(Outcome::DeadLettered {
            device_id: Some(device),
            reason,
            ack,
        })
    }

    /// Keeps a message that arrived on a topic that is not a device's uplink topic: it names no
    /// device, so it can be neither attributed nor acked.
    async fn dead_letter_foreign(
        &self,
        topic: &str,
        payload: &[u8],
        delivery: Delivery,
    ) -> Result<Outcome> {
        // Postgres text cannot hold NUL, and a topic that is not ours was never validated.
        let topic = topic.replace('\0', "\u{fffd}");
        let reason = Rejection::NotUplinkTopic;
        match delivery {
            Delivery::Live => {
                sqlx::query(
                    "INSERT INTO dead_letters (topic, device_id, reason, payload) VALUES ($1, NULL, $2, $3)",
                )
                .bind(&topic)
                .bind(reason.to_string())
                .bind(payload)
                .execute(&self.pool)
                .await?;
            }
            Delivery::Replay(id) => {
                if delivery::keep_again(&self.pool, id, None, &reason.to_string()).await? == 0 {
                    return Err(gone_while_replayed(id));
                }
            }
            Delivery::DryRun => {}
        }
        log_dead_letter(delivery, &reason, &topic, payload.len());
        Ok(Outcome::DeadLettered {
            device_id: None,
            reason,
            ack: None,
        })
    }
}

/// Whether a device's uplinks are taken, as its registration says now.
enum Standing {
    NotAccepted(Rejection),
    /// Registered, but its person has not consented to emotional data.
    WithoutConsent(Uuid),
    Accepted(Uuid),
}

/// A batch's outcome once its transaction has committed `inserted` of its `readings`.
fn committed(
    device: DeviceId,
    user_id: Uuid,
    readings: usize,
    inserted: usize,
    ack: Ack,
) -> Outcome {
    if inserted == 0 {
        Outcome::AllDuplicates {
            device_id: device,
            user_id,
            readings,
            ack,
        }
    } else {
        Outcome::Stored {
            device_id: device,
            user_id,
            inserted,
            duplicates: readings - inserted,
            ack,
        }
    }
}

/// A live dead letter is news (a warning); a replayed one still refused is what the operator
/// asked about, and the replay's report counts it.
fn log_dead_letter(delivery: Delivery, reason: &Rejection, topic: &str, bytes: usize) {
    match delivery {
        Delivery::Live => warn!(%reason, %topic, bytes, "uplink dead-lettered"),
        Delivery::Replay(_) => info!(%reason, %topic, bytes, "replayed dead letter still refused"),
        Delivery::DryRun => debug!(%reason, %topic, bytes, "uplink would be dead-lettered"),
    }
}

/// The replayed row was deleted meanwhile (by another replay, retention or an erasure).
fn gone_while_replayed(id: DeadLetterId) -> Error {
    Error::Conflict(format!(
        "dead letter {id} was deleted while it was replayed"
    ))
}

fn not_accepted(device: DeviceId, reason: Rejection) -> Outcome {
    warn!(%reason, "uplink from a device that is not accepted");
    Outcome::NotAccepted {
        device_id: device,
        reason,
    }
}

fn discarded(device: DeviceId, user_id: Uuid, readings: usize, ack: Option<Ack>) -> Outcome {
    Span::current().record("user_id", field::display(user_id));
    // LGPD Art. 11: without consent, emotional data is not collected at all.
    debug!(readings, "no consent to emotional data; uplink discarded");
    Outcome::DiscardedWithoutConsent {
        device_id: device,
        user_id,
        readings,
        ack,
    }
}

#[derive(sqlx::FromRow)]
struct Registration {
    user_id: Uuid,
    revoked: bool,
    emotional_data_consent: bool,
}

/// A batch that passed every check that needs no database.
struct CheckedBatch {
    ack: Ack,
    /// When each reading was taken, index-aligned with the readings.
    taken_at: Vec<DateTime<Utc>>,
}

/// Structure (`validate`), identity (payload device = topic device) and time plausibility.
fn check_batch(
    device: &DeviceId,
    batch: &ReadingBatch,
    now: DateTime<Utc>,
) -> Result<CheckedBatch, Rejection> {
    batch.validate()?;
    if batch.device_id != *device {
        return Err(Rejection::DeviceMismatch {
            topic: device.clone(),
            payload: batch.device_id.clone(),
        });
    }
    let implausible = |what: String| Rejection::ImplausibleTime(what);
    let taken_at = batch
        .readings
        .iter()
        .map(|r| {
            batch
                .base_time_ms
                .checked_add(i64::from(r.offset_ms))
                .and_then(DateTime::from_timestamp_millis)
                .ok_or_else(|| {
                    implausible(format!(
                        "base_time_ms {} + offset_ms {} is not a representable time",
                        batch.base_time_ms, r.offset_ms
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Offsets never go backwards (validated), so the first and last readings bound the batch.
    if let (Some(first), Some(last)) = (taken_at.first(), taken_at.last()) {
        if *first < now - MAX_READING_AGE {
            return Err(implausible(format!(
                "readings start at {first}, more than {} days before the cloud's clock ({now})",
                MAX_READING_AGE.num_days()
            )));
        }
        if *last > now + MAX_CLOCK_AHEAD {
            return Err(implausible(format!(
                "readings end at {last}, more than {} minutes after the cloud's clock ({now})",
                MAX_CLOCK_AHEAD.num_minutes()
            )));
        }
    }
    Ok(CheckedBatch {
        ack: Ack {
            first_seq: batch.first_seq,
            up_to_seq: batch.last_seq(),
        },
        taken_at,
    })
}

/// The batch's sequence range, when it is meaningful and storable, even if the batch is not.
fn known_range(batch: &ReadingBatch) -> Option<Ack> {
    let len = u64::try_from(batch.readings.len()).ok()?;
    let up_to_seq = batch.first_seq.checked_add(len.checked_sub(1)?)?;
    (up_to_seq <= i64::MAX as u64).then_some(Ack {
        first_seq: batch.first_seq,
        up_to_seq,
    })
}

/// Rows the DB tests need: a person and a phone.
#[cfg(test)]
pub(crate) mod fixtures {
    use ecs_protocol::Reading;

    use super::*;

    /// A consenting user with one registered device.
    pub(crate) async fn user_with_device(pool: &PgPool) -> (Uuid, DeviceId) {
        let user_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO users (user_id, display_name, emotional_data_consent, consent_recorded_at)
             VALUES ($1, 'Ana', true, now())",
        )
        .bind(user_id)
        .execute(pool)
        .await
        .unwrap();
        let device = add_device(pool, user_id).await;
        (user_id, device)
    }

    pub(crate) async fn add_device(pool: &PgPool, user_id: Uuid) -> DeviceId {
        let device = DeviceId::random();
        sqlx::query("INSERT INTO devices (device_id, user_id) VALUES ($1, $2)")
            .bind(device.as_str())
            .bind(user_id)
            .execute(pool)
            .await
            .unwrap();
        device
    }

    pub(crate) fn reading(offset_ms: u32, valence: i8, stress: u8) -> Reading {
        Reading {
            offset_ms,
            emotions: ecs_protocol::Emotions {
                joy: 40,
                fear: 10,
                ..Default::default()
            },
            valence,
            arousal: 60,
            dominance: 50,
            stress,
            focus: 70,
            thoughts: vec![ecs_protocol::Thought {
                intent: ecs_protocol::Intent::PurchaseIntent,
                confidence: 80,
            }],
        }
    }

    /// A valid batch of `len` readings taken a minute ago, 100 ms apart.
    /// Reading `seq` of every fixture batch was taken at this instant + `seq` × 100 ms, as a
    /// phone fixes a reading's time when it buffers it: a resend, or an overlapping batch,
    /// carries the same times. An hour ago, fixed once per test process.
    fn epoch_ms() -> i64 {
        static EPOCH: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(|| (Utc::now() - TimeDelta::hours(1)).timestamp_millis())
    }

    pub(crate) fn batch(device: &DeviceId, first_seq: u64, len: u32) -> ReadingBatch {
        ReadingBatch {
            device_id: device.clone(),
            first_seq,
            base_time_ms: epoch_ms() + i64::try_from(first_seq % 30_000).unwrap() * 100,
            readings: (0..len).map(|i| reading(i * 100, 20, 30)).collect(),
        }
    }

    pub(crate) fn encode(batch: ReadingBatch) -> Vec<u8> {
        ecs_protocol::encode_uplink(&Uplink::ReadingBatchV1(batch)).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ecs_protocol::encode_uplink;

    use super::{fixtures::*, *};
    use crate::features;

    async fn count(pool: &PgPool, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
    }

    async fn dead_letters(pool: &PgPool) -> Vec<(Option<String>, String)> {
        sqlx::query_as("SELECT device_id, reason FROM dead_letters ORDER BY dead_letter_id")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_valid_batch_is_stored_and_acked_with_its_exact_range(pool: PgPool) {
        let (user_id, device) = user_with_device(&pool).await;
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        let outcome = ingest
            .handle(&topic::uplink(&device), &encode(batch(&device, 10, 3)))
            .await
            .unwrap();
        let expected = Ack {
            first_seq: 10,
            up_to_seq: 12,
        };
        assert!(
            matches!(&outcome, Outcome::Stored { inserted: 3, duplicates: 0, ack, .. } if *ack == expected),
            "{outcome:?}"
        );
        assert_eq!(outcome.ack(), Some((&device, expected)));

        let rows: Vec<(i64, i16, i32, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, valence, cardinality(intents), coalesce(thoughts_sealed, '')
             FROM emotion_readings ORDER BY seq",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), 3);
        let (seq, valence, clear, sealed) = &rows[0];
        assert_eq!((*seq, *valence), (10, 20));
        // The thought is sealed with the person's key, bound to this reading.
        assert_eq!(*clear, 0, "thoughts in the clear");
        assert!(!sealed.is_empty(), "the reading's thought is not sealed");
        let key = crate::keys::KeyCache::ephemeral()
            .key_for(&pool, user_id)
            .await
            .unwrap()
            .unwrap();
        let opened = thoughts::open(&key, device.as_str(), 10, sealed).unwrap();
        assert_eq!((opened.intents, opened.confidences), (vec![1], vec![80]));
        assert!(
            thoughts::open(&key, device.as_str(), 11, sealed).is_err(),
            "another reading's"
        );
        let features = features::load(&pool, user_id).await.unwrap().unwrap();
        assert_eq!(features.readings_count, 3);
        assert_eq!(features.mean_valence, 20.0);
        let seen = count(
            &pool,
            "SELECT count(*) FROM devices WHERE last_seen_at IS NOT NULL AND online_since IS NOT NULL",
        )
        .await;
        assert_eq!(seen, 1);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_resent_batch_stores_nothing_new_and_is_acked_again(pool: PgPool) {
        let (user_id, device) = user_with_device(&pool).await;
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        let payload = encode(batch(&device, 0, 5));
        ingest
            .handle(&topic::uplink(&device), &payload)
            .await
            .unwrap();
        let before = features::load(&pool, user_id).await.unwrap();

        let again = ingest
            .handle(&topic::uplink(&device), &payload)
            .await
            .unwrap();
        assert!(
            matches!(again, Outcome::AllDuplicates { readings: 5, .. }),
            "{again:?}"
        );
        assert_eq!(
            again.ack(),
            Some((
                &device,
                Ack {
                    first_seq: 0,
                    up_to_seq: 4
                }
            ))
        );
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            5
        );
        assert_eq!(features::load(&pool, user_id).await.unwrap(), before);

        // A batch overlapping the stored one folds only its new readings.
        let overlapping = ingest
            .handle(&topic::uplink(&device), &encode(batch(&device, 3, 4)))
            .await
            .unwrap();
        assert!(
            matches!(
                overlapping,
                Outcome::Stored {
                    inserted: 2,
                    duplicates: 2,
                    ..
                }
            ),
            "{overlapping:?}"
        );
        let after = features::load(&pool, user_id).await.unwrap().unwrap();
        assert_eq!(after.readings_count, 7);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_packed_batch_is_stored_as_its_readings_and_a_broken_one_dead_lettered(pool: PgPool) {
        let (user_id, device) = user_with_device(&pool).await;
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        let up = topic::uplink(&device);
        let packed = ecs_protocol::PackedBatch::pack(&batch(&device, 5, 4)).unwrap();
        let payload = encode_uplink(&Uplink::ReadingBatchV2(packed.clone())).unwrap();
        let outcome = ingest.handle(&up, &payload).await.unwrap();
        assert!(
            matches!(
                &outcome,
                Outcome::Stored {
                    inserted: 4,
                    duplicates: 0,
                    ..
                }
            ),
            "{outcome:?}"
        );
        // The same readings as V1 are duplicates: one key, whatever the envelope.
        let again = ingest
            .handle(&up, &encode(batch(&device, 5, 4)))
            .await
            .unwrap();
        assert!(
            matches!(&again, Outcome::AllDuplicates { readings: 4, .. }),
            "{again:?}"
        );
        let features = features::load(&pool, user_id).await.unwrap().unwrap();
        assert_eq!(features.readings_count, 4);

        let mut broken = packed;
        broken.packed.truncate(3);
        let payload = encode_uplink(&Uplink::ReadingBatchV2(broken)).unwrap();
        ingest.handle(&up, &payload).await.unwrap();
        let letters = dead_letters(&pool).await;
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert!(letters[0].1.contains("packed"), "{letters:?}");
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn bad_payloads_are_dead_lettered_and_ingest_carries_on(pool: PgPool) {
        let (_, device) = user_with_device(&pool).await;
        let (_, other) = user_with_device(&pool).await;
        let stranger = DeviceId::random();
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        let up = topic::uplink(&device);

        // Garbage: no range is known, so nothing to ack.
        let garbage = ingest
            .handle(&up, b"\xff\xff\xffnot postcard")
            .await
            .unwrap();
        assert!(
            matches!(
                garbage,
                Outcome::DeadLettered {
                    reason: Rejection::Undecodable(_),
                    ack: None,
                    ..
                }
            ),
            "{garbage:?}"
        );

        // Invalid: the range is known, so it is acked after the dead letter is committed.
        let mut invalid = batch(&device, 100, 2);
        invalid.readings[1].valence = 120;
        let invalid = ingest.handle(&up, &encode(invalid)).await.unwrap();
        assert!(
            matches!(
                invalid,
                Outcome::DeadLettered {
                    reason: Rejection::Invalid(_),
                    ..
                }
            ),
            "{invalid:?}"
        );
        assert_eq!(
            invalid.ack(),
            Some((
                &device,
                Ack {
                    first_seq: 100,
                    up_to_seq: 101
                }
            ))
        );

        // A batch naming another device, published on this device's topic.
        let mismatch = ingest
            .handle(&up, &encode(batch(&other, 0, 1)))
            .await
            .unwrap();
        assert!(
            matches!(
                mismatch,
                Outcome::DeadLettered {
                    reason: Rejection::DeviceMismatch { .. },
                    ..
                }
            ),
            "{mismatch:?}"
        );
        assert_eq!(mismatch.ack().map(|(d, _)| d), Some(&device));

        // Readings from last year.
        let mut stale = batch(&device, 200, 1);
        stale.base_time_ms -= TimeDelta::days(365).num_milliseconds();
        let stale = ingest.handle(&up, &encode(stale)).await.unwrap();
        assert!(
            matches!(
                stale,
                Outcome::DeadLettered {
                    reason: Rejection::ImplausibleTime(_),
                    ..
                }
            ),
            "{stale:?}"
        );

        // A device nobody registered.
        let unknown = ingest
            .handle(&topic::uplink(&stranger), &encode(batch(&stranger, 0, 1)))
            .await
            .unwrap();
        assert!(
            matches!(
                unknown,
                Outcome::NotAccepted {
                    reason: Rejection::UnknownDevice,
                    ..
                }
            ),
            "{unknown:?}"
        );
        assert_eq!(unknown.ack(), None, "a stranger's phone keeps its readings");

        // Not an uplink topic at all.
        let foreign = ingest.handle("/tenants/x/ecs/v1/down", b"x").await.unwrap();
        assert!(
            matches!(
                foreign,
                Outcome::DeadLettered {
                    reason: Rejection::NotUplinkTopic,
                    device_id: None,
                    ack: None
                }
            ),
            "{foreign:?}"
        );

        let letters = dead_letters(&pool).await;
        assert_eq!(letters.len(), 5, "{letters:?}");
        assert_eq!(letters[0].0.as_deref(), Some(device.as_str()));
        assert!(letters[0].1.starts_with("undecodable"), "{letters:?}");
        assert!(letters[1].1.contains("valence = 120"), "{letters:?}");
        assert!(letters[2].1.contains(other.as_str()), "{letters:?}");
        assert!(letters[3].1.contains("days before"), "{letters:?}");
        assert_eq!(letters[4].0, None);
        let payload: Vec<u8> =
            sqlx::query_scalar("SELECT payload FROM dead_letters ORDER BY dead_letter_id LIMIT 1")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(payload, b"\xff\xff\xffnot postcard");

        // Nothing of that was stored, and the next good batch goes through.
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            0
        );
        let good = ingest
            .handle(&up, &encode(batch(&device, 0, 2)))
            .await
            .unwrap();
        assert!(
            matches!(good, Outcome::Stored { inserted: 2, .. }),
            "{good:?}"
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_revoked_device_is_refused(pool: PgPool) {
        let (_, device) = user_with_device(&pool).await;
        sqlx::query("UPDATE devices SET revoked_at = now() WHERE device_id = $1")
            .bind(device.as_str())
            .execute(&pool)
            .await
            .unwrap();
        let outcome = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral())
            .handle(&topic::uplink(&device), &encode(batch(&device, 0, 1)))
            .await
            .unwrap();
        assert!(
            matches!(
                outcome,
                Outcome::NotAccepted {
                    reason: Rejection::RevokedDevice,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(outcome.ack(), None);
        assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 0);
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            0
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn without_consent_nothing_is_kept(pool: PgPool) {
        let (user_id, device) = user_with_device(&pool).await;
        sqlx::query("UPDATE users SET emotional_data_consent = false WHERE user_id = $1")
            .bind(user_id)
            .execute(&pool)
            .await
            .unwrap();
        let outcome = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral())
            .handle(&topic::uplink(&device), &encode(batch(&device, 0, 3)))
            .await
            .unwrap();
        assert!(
            matches!(
                outcome,
                Outcome::DiscardedWithoutConsent { readings: 3, .. }
            ),
            "{outcome:?}"
        );
        assert!(outcome.ack().is_some());
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            0
        );
        assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 0);
        assert_eq!(features::load(&pool, user_id).await.unwrap(), None);
    }

    /// An invalid batch (valence out of range) whose range is known.
    fn invalid_batch(device: &DeviceId) -> Vec<u8> {
        let mut invalid = batch(device, 40, 3);
        invalid.readings[2].valence = 120;
        encode(invalid)
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn nothing_a_device_that_is_not_accepted_sends_is_kept_valid_or_not(pool: PgPool) {
        let (_, revoked) = user_with_device(&pool).await;
        sqlx::query("UPDATE devices SET revoked_at = now() WHERE device_id = $1")
            .bind(revoked.as_str())
            .execute(&pool)
            .await
            .unwrap();
        let stranger = DeviceId::random();
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        for (device, expected) in [(&stranger, "unknown_device"), (&revoked, "revoked_device")] {
            let up = topic::uplink(device);
            for payload in [invalid_batch(device), b"\xff\xffnot postcard".to_vec()] {
                let outcome = ingest.handle(&up, &payload).await.unwrap();
                assert!(
                    matches!(&outcome, Outcome::NotAccepted { reason, .. } if reason.code() == expected),
                    "{outcome:?}"
                );
                assert_eq!(outcome.ack(), None);
            }
        }
        assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn without_consent_not_even_an_invalid_payload_is_kept(pool: PgPool) {
        let (user_id, device) = user_with_device(&pool).await;
        sqlx::query("UPDATE users SET emotional_data_consent = false WHERE user_id = $1")
            .bind(user_id)
            .execute(&pool)
            .await
            .unwrap();
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        let up = topic::uplink(&device);

        // Invalid, with a known range: discarded and acked like a valid batch.
        let invalid = ingest.handle(&up, &invalid_batch(&device)).await.unwrap();
        assert!(
            matches!(
                invalid,
                Outcome::DiscardedWithoutConsent { readings: 3, .. }
            ),
            "{invalid:?}"
        );
        assert_eq!(
            invalid.ack(),
            Some((
                &device,
                Ack {
                    first_seq: 40,
                    up_to_seq: 42
                }
            ))
        );
        // Undecodable: discarded; its range is unknown, so there is nothing to ack.
        let garbage = ingest.handle(&up, b"\xff\xffnot postcard").await.unwrap();
        assert!(
            matches!(
                garbage,
                Outcome::DiscardedWithoutConsent {
                    readings: 0,
                    ack: None,
                    ..
                }
            ),
            "{garbage:?}"
        );
        assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 0);
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            0
        );
    }

    /// Erases `user_id` in a transaction left open (its rows stay locked, its deletion invisible
    /// to others), runs `uplink` until it waits for those locks, then commits the erasure.
    async fn erase_during(
        pool: &PgPool,
        user_id: Uuid,
        uplink: impl Future<Output = Outcome>,
    ) -> Outcome {
        let mut erasure = pool.begin().await.unwrap();
        sqlx::query("DELETE FROM users WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *erasure)
            .await
            .unwrap();
        let blocked = async {
            loop {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(pool)
                .await
                .unwrap();
                if waiting > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let commit_once_blocked = async move {
            tokio::time::timeout(Duration::from_secs(10), blocked)
                .await
                .expect("the uplink never waited for the erasure");
            erasure.commit().await.unwrap();
        };
        tokio::join!(uplink, commit_once_blocked).0
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_person_erased_while_their_batch_is_stored_is_not_accepted(pool: PgPool) {
        let (user_id, device) = user_with_device(&pool).await;
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        let payload = encode(batch(&device, 0, 3));
        // The registration is read before the erasure commits; the insert waits for it, then
        // fails on the foreign key: nothing kept, not even a dead letter, and no ack.
        let outcome = erase_during(&pool, user_id, async {
            ingest
                .handle(&topic::uplink(&device), &payload)
                .await
                .unwrap()
        })
        .await;
        assert!(
            matches!(
                outcome,
                Outcome::NotAccepted {
                    reason: Rejection::UnknownDevice,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(outcome.ack(), None);
        assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 0);
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            0
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_person_erased_while_their_bad_batch_is_dead_lettered_is_not_accepted(pool: PgPool) {
        let (user_id, device) = user_with_device(&pool).await;
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        let payload = invalid_batch(&device);
        let outcome = erase_during(&pool, user_id, async {
            ingest
                .handle(&topic::uplink(&device), &payload)
                .await
                .unwrap()
        })
        .await;
        assert!(
            matches!(
                outcome,
                Outcome::NotAccepted {
                    reason: Rejection::UnknownDevice,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn two_phones_of_one_person_feed_one_feature_row(pool: PgPool) {
        let (user_id, phone) = user_with_device(&pool).await;
        let tablet = add_device(&pool, user_id).await;
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        let (phone_topic, tablet_topic) = (topic::uplink(&phone), topic::uplink(&tablet));
        let (phone_batch, tablet_batch) =
            (encode(batch(&phone, 0, 50)), encode(batch(&tablet, 0, 30)));
        let (a, b) = tokio::join!(
            ingest.handle(&phone_topic, &phone_batch),
            ingest.handle(&tablet_topic, &tablet_batch),
        );
        assert!(matches!(a.unwrap(), Outcome::Stored { inserted: 50, .. }));
        assert!(matches!(b.unwrap(), Outcome::Stored { inserted: 30, .. }));
        let features = features::load(&pool, user_id).await.unwrap().unwrap();
        assert_eq!(features.readings_count, 80);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn an_unavailable_database_is_an_error_not_a_dead_letter(pool: PgPool) {
        let (_, device) = user_with_device(&pool).await;
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        pool.close().await;
        let result = ingest
            .handle(&topic::uplink(&device), &encode(batch(&device, 0, 1)))
            .await;
        assert!(result.is_err(), "{result:?}");
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn receipts_mark_only_the_devices_own_notifications_delivered(pool: PgPool) {
        let (user_id, device) = user_with_device(&pool).await;
        let other = add_device(&pool, user_id).await;
        let (_, ids) = crate::notify::fixtures::notify_offer(&pool, user_id).await;
        assert_eq!(ids.len(), 2);
        let ingest = Ingest::new(pool.clone(), crate::keys::KeyCache::ephemeral());
        let receipt = |ids: Vec<Uuid>| {
            encode_uplink(&Uplink::NotificationReceiptV1(NotificationReceipt {
                notification_ids: ids,
            }))
            .unwrap()
        };

        // Both ids, sent by `device`: only its own one is marked.
        let outcome = ingest
            .handle(&topic::uplink(&device), &receipt(ids.clone()))
            .await
            .unwrap();
        assert!(
            matches!(outcome, Outcome::ReceiptApplied { delivered: 1, .. }),
            "{outcome:?}"
        );
        assert_eq!(outcome.ack(), None);
        // Again: already delivered, nothing changes.
        let again = ingest
            .handle(&topic::uplink(&device), &receipt(ids.clone()))
            .await
            .unwrap();
        assert!(matches!(
            again,
            Outcome::ReceiptApplied { delivered: 0, .. }
        ));
        let undelivered: Vec<String> =
            sqlx::query_scalar("SELECT device_id FROM notifications WHERE delivered_at IS NULL")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(undelivered, vec![other.as_str().to_owned()]);
    }

    #[test]
    fn the_time_window_is_enforced_on_both_sides() {
        let device = DeviceId::random();
        let now = Utc::now();
        let ok = batch(&device, 0, 2);
        assert!(check_batch(&device, &ok, now).is_ok());

        let mut future = batch(&device, 0, 2);
        future.base_time_ms = (now + TimeDelta::minutes(4)).timestamp_millis();
        future.readings[1].offset_ms = 2 * 60 * 1000; // ends 6 minutes ahead
        assert!(matches!(
            check_batch(&device, &future, now),
            Err(Rejection::ImplausibleTime(_))
        ));

        let mut unrepresentable = batch(&device, 0, 1);
        unrepresentable.base_time_ms = i64::MAX;
        assert!(matches!(
            check_batch(&device, &unrepresentable, now),
            Err(Rejection::ImplausibleTime(_))
        ));
    }

    #[test]
    fn a_range_is_known_only_when_it_is_storable() {
        let device = DeviceId::random();
        let mut b = batch(&device, 5, 3);
        assert_eq!(
            known_range(&b),
            Some(Ack {
                first_seq: 5,
                up_to_seq: 7
            })
        );
        b.first_seq = u64::MAX - 1;
        assert_eq!(known_range(&b), None);
        b.readings.clear();
        assert_eq!(known_range(&b), None);
    }
}

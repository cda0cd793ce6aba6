//! Dead letters: what ingest could never store, for an operator to look at and replay
//! (`ecs-cloud dead-letters list|show|replay`).
//!
//! Ingest writes the `dead_letters` rows (see [`crate::ingest`]): the topic, the device when the
//! topic names one, the [`Rejection`](crate::ingest::Rejection)'s text as the reason and the raw
//! payload. This stage reads them and replays them.
//!
//! # Guarantees of a replay
//!
//! * **The live decision.** Each payload goes through [`Ingest::replay`], the same decision as
//!   [`Ingest::handle`], on the uplink topic of the device the row names. After a fix (a device's
//!   clock, a validation rule, a constraint) what is valid now is stored; nothing else is.
//! * **Stored once.** The readings' primary key absorbs what was stored before, so replaying a
//!   batch twice, or one whose readings were resent meanwhile, stores nothing twice.
//! * **Never lost.** A dead letter is deleted only after the transaction that stored its batch
//!   has committed. A crash in between leaves it to be replayed again, which then finds only
//!   duplicates and deletes it.
//! * **Never doubled.** A payload that is still refused stays in its own row, with the reason it
//!   is refused for now: the replay tells ingest which row it is replaying, and ingest updates
//!   that row instead of inserting a new one. (The other way — delete the row, let ingest insert
//!   a new one, in one transaction — is not open: ingest commits its own transactions, and a
//!   replayed row would lose its id and its `received_at`.)
//! * **Kept unless stored.** A letter whose device is no longer accepted (revoked, unknown) or
//!   whose person has withdrawn consent is left alone: a replay only ever moves a payload into
//!   the readings. Erasure and retention delete dead letters; a replay does not.

mod render;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ecs_protocol::{DeviceId, Uplink, decode_uplink, topic};
use serde::Serialize;
use sqlx::PgPool;

pub use self::render::{details, details_json, json_lines, replay_report, table};
pub use crate::ingest::DeadLetterId;
use crate::{
    Error,
    error::Result,
    ingest::{Ingest, Outcome},
    keys::KeyCache,
};

/// Most rows [`list`] returns at once.
pub const MAX_LIST: u16 = 1000;
/// Dead letters a replay loads at a time (each holds a payload of up to 64 KiB).
const REPLAY_PAGE: i64 = 100;

/// What kind of refusal a dead letter records: the stable code of the ingest
/// [`Rejection`](crate::ingest::Rejection) whose text is its `reason`. Only the rejections that
/// ingest dead-letters are here (an unregistered or revoked device's uplink is never kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ReasonCode {
    NotUplinkTopic,
    Undecodable,
    Invalid,
    DeviceMismatch,
    ImplausibleTime,
    RefusedByDatabase,
}

impl ReasonCode {
    const ALL: [ReasonCode; 6] = [
        ReasonCode::NotUplinkTopic,
        ReasonCode::Undecodable,
        ReasonCode::Invalid,
        ReasonCode::DeviceMismatch,
        ReasonCode::ImplausibleTime,
        ReasonCode::RefusedByDatabase,
    ];

    /// The same string as `Rejection::code`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::NotUplinkTopic => "not_uplink_topic",
            ReasonCode::Undecodable => "undecodable",
            ReasonCode::Invalid => "invalid",
            ReasonCode::DeviceMismatch => "device_mismatch",
            ReasonCode::ImplausibleTime => "implausible_time",
            ReasonCode::RefusedByDatabase => "refused_by_database",
        }
    }

    /// How the rejection's text (its `Display`, stored as the reason) begins. The table stores
    /// that text only, so this is how a reason is classified and filtered; a test keeps the two
    /// in step with `Rejection`.
    fn prefix(self) -> &'static str {
        match self {
            ReasonCode::NotUplinkTopic => "the topic is not a device uplink topic",
            ReasonCode::Undecodable => "undecodable: ",
            ReasonCode::Invalid => "invalid batch: ",
            ReasonCode::DeviceMismatch => "the batch names device ",
            ReasonCode::ImplausibleTime => "implausible reading time: ",
            ReasonCode::RefusedByDatabase => "the database refused the batch: ",
        }
    }

    /// The code of a stored reason; `None` for a text no rejection writes.
    pub fn of_reason(reason: &str) -> Option<ReasonCode> {
        Self::ALL
            .into_iter()
            .find(|code| reason.starts_with(code.prefix()))
    }
}

/// Which dead letters [`list`] shows.
#[derive(Debug, Clone)]
pub struct Filter {
    pub reason: Option<ReasonCode>,
    pub device: Option<DeviceId>,
    /// At most [`MAX_LIST`] (a larger value is capped).
    pub limit: u16,
}

/// One dead letter, without its payload.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: DeadLetterId,
    pub received_at: DateTime<Utc>,
    pub device_id: Option<String>,
    pub reason_code: Option<ReasonCode>,
    pub reason: String,
    pub payload_bytes: usize,
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    dead_letter_id: DeadLetterId,
    received_at: DateTime<Utc>,
    device_id: Option<String>,
    reason: String,
    payload_bytes: i32,
}

/// Dead letters matching `filter`, newest first.
pub async fn list(pool: &PgPool, filter: &Filter) -> Result<Vec<Summary>> {
    let rows: Vec<SummaryRow> = sqlx::query_as(
        "SELECT dead_letter_id, received_at, device_id, reason, octet_length(payload) AS payload_bytes
         FROM dead_letters
         WHERE ($1::text IS NULL OR starts_with(reason, $1))
           AND ($2::text IS NULL OR device_id = $2)
         ORDER BY received_at DESC, dead_letter_id DESC
         LIMIT $3",
    )
    .bind(filter.reason.map(ReasonCode::prefix))
    .bind(filter.device.as_ref().map(DeviceId::as_str))
    .bind(i64::from(filter.limit.min(MAX_LIST)))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Summary {
            id: r.dead_letter_id,
            received_at: r.received_at,
            reason_code: ReasonCode::of_reason(&r.reason),
            device_id: r.device_id,
            reason: r.reason,
            payload_bytes: usize::try_from(r.payload_bytes).unwrap_or(0),
        })
        .collect())
}

/// One dead letter, everything about it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetter {
    #[sqlx(rename = "dead_letter_id")]
    pub id: DeadLetterId,
    pub received_at: DateTime<Utc>,
    pub topic: String,
    pub device_id: Option<String>,
    pub reason: String,
    pub payload: Vec<u8>,
}

impl DeadLetter {
    pub fn reason_code(&self) -> Option<ReasonCode> {
        ReasonCode::of_reason(&self.reason)
    }

    /// The uplink topic of the device the row names, which is what ingest judged it on; the
    /// stored topic when it names none (or a device id that no longer parses).
    pub fn replay_topic(&self) -> String {
        self.device_id
            .as_deref()
            .and_then(|d| DeviceId::parse(d).ok())
            .map(|d| topic::uplink(&d))
            .unwrap_or_else(|| self.topic.clone())
    }

    /// What the payload says, as far as it decodes.
    pub fn contents(&self) -> Contents {
        match decode_uplink(&self.payload) {
            Ok(Uplink::ReadingBatchV1(batch)) => batch_contents(&batch),
            // A delta-coded batch is shown as the batch it packs.
            Ok(Uplink::ReadingBatchV2(packed) | Uplink::ReadingBatchV3(packed)) => {
                match packed.unpack() {
                    Ok(batch) => batch_contents(&batch),
                    Err(e) => Contents::Undecodable {
                        error: ecs_protocol::DecodeError::from(e).to_string(),
                    },
                }
            }
            Ok(Uplink::NotificationReceiptV1(receipt)) => Contents::NotificationReceipt {
                notifications: receipt.notification_ids.len(),
            },
            Err(e) => Contents::Undecodable {
                error: e.to_string(),
            },
        }
    }
}

/// What a decoded batch says, for [`DeadLetter::contents`].
fn batch_contents(batch: &ecs_protocol::ReadingBatch) -> Contents {
    let at = |offset_ms: u32| {
        batch
            .base_time_ms
            .checked_add(i64::from(offset_ms))
            .and_then(DateTime::from_timestamp_millis)
    };
    Contents::ReadingBatch {
        device_id: batch.device_id.to_string(),
        first_seq: batch.first_seq,
        readings: batch.readings.len(),
        base_time_ms: batch.base_time_ms,
        first_taken_at: batch.readings.first().and_then(|r| at(r.offset_ms)),
        last_taken_at: batch.readings.last().and_then(|r| at(r.offset_ms)),
    }
}

/// A dead letter's payload, decoded when it decodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Contents {
    ReadingBatch {
        device_id: String,
        first_seq: u64,
        readings: usize,
        base_time_ms: i64,
        /// `None` when the time is not representable.
        first_taken_at: Option<DateTime<Utc>>,
        last_taken_at: Option<DateTime<Utc>>,
    },
    NotificationReceipt {
        notifications: usize,
    },
    Undecodable {
        error: String,
    },
}

/// Dead letter `id`, if there is one.
pub async fn get(pool: &PgPool, id: DeadLetterId) -> Result<Option<DeadLetter>> {
    Ok(sqlx::query_as(
        "SELECT dead_letter_id, received_at, topic, device_id, reason, payload
         FROM dead_letters WHERE dead_letter_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Which dead letters a replay takes.
#[derive(Debug, Clone)]
pub enum Selection {
    Ids(Vec<DeadLetterId>),
    Reason(ReasonCode),
    All,
}

/// Whether a replay writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Replay,
    /// Decide only ([`Ingest::dry_run`]): nothing is stored, updated or deleted.
    DryRun,
}

/// What a replay did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// `inserted` readings were stored (the rest were already); the dead letter is deleted.
    Stored { inserted: usize },
    /// Every reading was already stored; the dead letter is deleted.
    AlreadyStored,
    /// A notification receipt that now decodes was applied; the dead letter is deleted.
    ReceiptApplied,
    /// Refused again, for this reason now; the dead letter stays (its reason updated).
    StillRefused(Option<ReasonCode>),
    /// The person has withdrawn consent: nothing stored, the dead letter stays.
    WithoutConsent,
    /// The device is revoked or no longer registered: nothing stored, the dead letter stays.
    NotAccepted(&'static str),
    /// Something changed under the replay (the row was deleted meanwhile, a registration
    /// changed); running it again decides it.
    Skipped(String),
}

impl Replayed {
    fn from_outcome(outcome: Outcome) -> Replayed {
        match outcome {
            Outcome::Stored { inserted, .. } => Replayed::Stored { inserted },
            Outcome::AllDuplicates { .. } => Replayed::AlreadyStored,
            Outcome::ReceiptApplied { .. } => Replayed::ReceiptApplied,
            Outcome::DeadLettered { reason, .. } => {
                Replayed::StillRefused(ReasonCode::of_reason(&reason.to_string()))
            }
            Outcome::DiscardedWithoutConsent { .. } => Replayed::WithoutConsent,
            Outcome::NotAccepted { reason, .. } => Replayed::NotAccepted(reason.code()),
        }
    }

    /// Whether the payload is in the database now, so its dead letter goes.
    fn is_done(&self) -> bool {
        matches!(
            self,
            Replayed::Stored { .. } | Replayed::AlreadyStored | Replayed::ReceiptApplied
        )
    }
}

/// Per-outcome counts of a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// Dead letters looked at.
    pub replayed: u64,
    /// Batches with new readings, and how many readings that was.
    pub stored: u64,
    pub readings_stored: u64,
    pub already_stored: u64,
    pub receipts_applied: u64,
    /// Dead letters deleted because their payload is in the database now (0 in a dry run).
    pub deleted: u64,
    /// Still refused, by reason code (`unknown` for a reason no rejection writes).
    pub still_refused: BTreeMap<&'static str, u64>,
    pub without_consent: u64,
    /// Device revoked or no longer registered, by reason code.
    pub not_accepted: BTreeMap<&'static str, u64>,
    pub skipped: u64,
    /// The replay stopped at this dead letter on an error (Postgres gone, say). Those before it
    /// are done; running the replay again takes up the rest.
    pub stopped: Option<Stopped>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stopped {
    pub id: DeadLetterId,
    pub error: String,
}

impl ReplayReport {
    fn count(&mut self, replayed: &Replayed) {
        self.replayed += 1;
        match replayed {
            Replayed::Stored { inserted } => {
                self.stored += 1;
                self.readings_stored += *inserted as u64;
            }
            Replayed::AlreadyStored => self.already_stored += 1,
            Replayed::ReceiptApplied => self.receipts_applied += 1,
            Replayed::StillRefused(code) => {
                let code = code.map_or("unknown", ReasonCode::as_str);
                *self.still_refused.entry(code).or_default() += 1;
            }
            Replayed::WithoutConsent => self.without_consent += 1,
            Replayed::NotAccepted(code) => *self.not_accepted.entry(code).or_default() += 1,
            Replayed::Skipped(_) => self.skipped += 1,
        }
    }
}

/// Replays the dead letters `selection` names, oldest first, through the live ingest decision,
/// and deletes those whose payload is in the database now (see the module's guarantees).
///
/// Explicit ids that do not exist are an error before anything is replayed. Dead letters that
/// arrive while the replay runs are not taken (it stops at the newest id it saw at the start).
/// An error on one dead letter stops the replay there, reported in [`ReplayReport::stopped`].
pub async fn replay(
    pool: &PgPool,
    keys: &KeyCache,
    selection: &Selection,
    mode: Mode,
) -> Result<ReplayReport> {
    let ids: Option<Vec<i64>> = match selection {
        Selection::Ids(ids) => {
            let missing = missing(pool, ids).await?;
            if !missing.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "no dead letter with id {}; nothing was replayed",
                    missing
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Some(ids.iter().map(|id| id.get()).collect())
        }
        Selection::Reason(_) | Selection::All => None,
    };
    let reason = match selection {
        Selection::Reason(code) => Some(code.prefix()),
        Selection::Ids(_) | Selection::All => None,
    };
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(dead_letter_id) FROM dead_letters")
        .fetch_one(pool)
        .await?;
    let mut report = ReplayReport {
        dry_run: mode == Mode::DryRun,
        ..ReplayReport::default()
    };
    let Some(newest) = newest else {
        return Ok(report);
    };
    let ingest = Ingest::new(pool.clone(), keys.clone());
    let mut after = 0_i64;
    loop {
        let page: Vec<DeadLetter> = sqlx::query_as(
            "SELECT dead_letter_id, received_at, topic, device_id, reason, payload
             FROM dead_letters
             WHERE dead_letter_id > $1 AND dead_letter_id <= $2
               AND ($3::bigint[] IS NULL OR dead_letter_id = ANY($3))
               AND ($4::text IS NULL OR starts_with(reason, $4))
             ORDER BY dead_letter_id
             LIMIT $5",
        )
        .bind(after)
        .bind(newest)
        .bind(ids.as_deref())
        .bind(reason)
        .bind(REPLAY_PAGE)
        .fetch_all(pool)
        .await?;
        let Some(last) = page.last() else {
            return Ok(report);
        };
        after = last.id.get();
        for letter in &page {
            match replay_one(pool, &ingest, letter, mode).await {
                Ok(replayed) => {
                    if replayed.is_done() && mode == Mode::Replay {
                        report.deleted += 1;
                    }
                    report.count(&replayed);
                }
                Err(e) => {
                    report.stopped = Some(Stopped {
                        id: letter.id,
                        error: e.to_string(),
                    });
                    return Ok(report);
                }
            }
        }
    }
}

/// Decides one dead letter again and, when its payload is in the database now, deletes it —
/// strictly after the decision committed.
async fn replay_one(
    pool: &PgPool,
    ingest: &Ingest,
    letter: &DeadLetter,
    mode: Mode,
) -> Result<Replayed> {
    let topic = letter.replay_topic();
    let decided = match mode {
        Mode::Replay => ingest.replay(letter.id, &topic, &letter.payload).await,
        Mode::DryRun => ingest.dry_run(&topic, &letter.payload).await,
    };
    let replayed = match decided {
        Ok(outcome) => Replayed::from_outcome(outcome),
        // Deleted meanwhile, or a registration changed between two statements.
        Err(Error::Conflict(why)) => return Ok(Replayed::Skipped(why)),
        Err(e) => return Err(e),
    };
    if replayed.is_done() && mode == Mode::Replay {
        sqlx::query("DELETE FROM dead_letters WHERE dead_letter_id = $1")
            .bind(letter.id)
            .execute(pool)
            .await?;
    }
    Ok(replayed)
}

/// Those of `ids` that name no dead letter.
async fn missing(pool: &PgPool, ids: &[DeadLetterId]) -> Result<Vec<DeadLetterId>> {
    let raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    let found: Vec<DeadLetterId> = sqlx::query_scalar(
        "SELECT dead_letter_id FROM dead_letters WHERE dead_letter_id = ANY($1)",
    )
    .bind(&raw)
    .fetch_all(pool)
    .await?;
    let mut missing: Vec<DeadLetterId> = ids
        .iter()
        .copied()
        .filter(|id| !found.contains(id))
        .collect();
    missing.sort();
    missing.dedup();
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use ecs_protocol::ValidationError;

    use super::*;
    use crate::{
        features,
        ingest::{Rejection, fixtures::*},
    };

    async fn count(pool: &PgPool, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
    }

    async fn dead_letter_ids(pool: &PgPool) -> Vec<DeadLetterId> {
        sqlx::query_scalar("SELECT dead_letter_id FROM dead_letters ORDER BY dead_letter_id")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    /// A dead letter as ingest wrote it when `reason` held (e.g. before a phone's clock, or the
    /// cloud's, was corrected).
    async fn dead_letter(
        pool: &PgPool,
        device: &DeviceId,
        reason: &str,
        payload: &[u8],
    ) -> DeadLetterId {
        sqlx::query_scalar(
            "INSERT INTO dead_letters (topic, device_id, reason, payload)
             VALUES ($1, $2, $3, $4) RETURNING dead_letter_id",
        )
        .bind(topic::uplink(device))
        .bind(device.as_str())
        .bind(reason)
        .bind(payload)
        .fetch_one(pool)
        .await
        .unwrap()
    }

    /// Valence 120 in the third reading: invalid whatever is fixed elsewhere.
    fn invalid_batch(device: &DeviceId) -> Vec<u8> {
        let mut invalid = batch(device, 40, 3);
        invalid.readings[2].valence = 120;
        encode(invalid)
    }

    const CLOCK_WAS_OFF: &str = "implausible reading time: readings end at 2026-01-01 12:00:00 UTC, \
                                 more than 5 minutes after the cloud's clock (2026-01-01 11:50:00 UTC)";

    fn id(raw: i64) -> DeadLetterId {
        raw.to_string().parse().unwrap()
    }

    fn ids(ids: &[DeadLetterId]) -> Selection {
        Selection::Ids(ids.to_vec())
    }

    #[test]
    fn reason_codes_are_the_codes_of_the_rejections_ingest_dead_letters() {
        let undecodable = decode_uplink(b"\xff").unwrap_err();
        let kept = [
            Rejection::NotUplinkTopic,
            Rejection::Undecodable(undecodable),
            Rejection::Invalid(ValidationError::EmptyBatch),
            Rejection::DeviceMismatch {
                topic: DeviceId::random(),
                payload: DeviceId::random(),
            },
            Rejection::ImplausibleTime("readings start at …".into()),
            Rejection::RefusedByDatabase("new row violates check constraint".into()),
        ];
        for rejection in &kept {
            let code = ReasonCode::of_reason(&rejection.to_string());
            assert_eq!(code.map(ReasonCode::as_str), Some(rejection.code()));
        }
        let codes: Vec<&str> = kept.iter().map(Rejection::code).collect();
        let all: Vec<&str> = ReasonCode::ALL.map(ReasonCode::as_str).to_vec();
        assert_eq!(
            codes, all,
            "every code names a rejection that is dead-lettered"
        );
        for never_kept in [Rejection::UnknownDevice, Rejection::RevokedDevice] {
            assert_eq!(ReasonCode::of_reason(&never_kept.to_string()), None);
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn list_shows_the_newest_first_and_filters_by_reason_and_device(pool: PgPool) {
        let (_, phone) = user_with_device(&pool).await;
        let (_, tablet) = user_with_device(&pool).await;
        let ingest = Ingest::new(pool.clone(), KeyCache::ephemeral());
        let garbage = b"\xff\xff\xffnot postcard".as_slice();
        ingest
            .handle(&topic::uplink(&phone), garbage)
            .await
            .unwrap();
        ingest
            .handle(&topic::uplink(&phone), &invalid_batch(&phone))
            .await
            .unwrap();
        // The phone's batch on the tablet's topic.
        ingest
            .handle(&topic::uplink(&tablet), &encode(batch(&phone, 0, 2)))
            .await
            .unwrap();
        ingest.handle("/somewhere/else", b"hello").await.unwrap();
        let written = dead_letter_ids(&pool).await;
        assert_eq!(written.len(), 4);

        let all = |limit| Filter {
            reason: None,
            device: None,
            limit,
        };
        let newest_first = list(&pool, &all(50)).await.unwrap();
        let listed: Vec<DeadLetterId> = newest_first.iter().map(|l| l.id).collect();
        assert_eq!(listed, written.iter().rev().copied().collect::<Vec<_>>());
        let foreign = &newest_first[0];
        assert_eq!(foreign.device_id, None);
        assert_eq!(foreign.reason_code, Some(ReasonCode::NotUplinkTopic));
        assert_eq!(foreign.payload_bytes, 5);
        assert_eq!(newest_first[1].device_id.as_deref(), Some(tablet.as_str()));
        assert_eq!(
            newest_first[1].reason_code,
            Some(ReasonCode::DeviceMismatch)
        );
        assert_eq!(newest_first[3].payload_bytes, garbage.len());

        let two = list(&pool, &all(2)).await.unwrap();
        assert_eq!(two.iter().map(|l| l.id).collect::<Vec<_>>(), listed[..2]);

        let invalid = list(
            &pool,
            &Filter {
                reason: Some(ReasonCode::Invalid),
                ..all(50)
            },
        )
        .await
        .unwrap();
        assert_eq!(invalid.len(), 1);
        assert_eq!(invalid[0].device_id.as_deref(), Some(phone.as_str()));
        assert!(invalid[0].reason.contains("valence = 120"), "{invalid:?}");

        let phones = list(
            &pool,
            &Filter {
                device: Some(phone.clone()),
                ..all(50)
            },
        )
        .await
        .unwrap();
        let codes: Vec<_> = phones.iter().map(|l| l.reason_code).collect();
        assert_eq!(
            codes,
            [Some(ReasonCode::Invalid), Some(ReasonCode::Undecodable)]
        );
        let both = Filter {
            reason: Some(ReasonCode::Undecodable),
            device: Some(tablet.clone()),
            limit: 50,
        };
        assert!(list(&pool, &both).await.unwrap().is_empty());

        let lines = json_lines(&newest_first);
        let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(first["reason_code"], "not_uplink_topic");
        assert_eq!(first["device_id"], serde_json::Value::Null);
        assert_eq!(lines.lines().count(), 4);
        assert_eq!(
            table(&newest_first).lines().count(),
            5,
            "a header and a line each"
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn show_decodes_a_batch_and_dumps_the_start_of_an_undecodable_payload(pool: PgPool) {
        let (_, phone) = user_with_device(&pool).await;
        let ingest = Ingest::new(pool.clone(), KeyCache::ephemeral());
        let up = topic::uplink(&phone);
        ingest.handle(&up, &invalid_batch(&phone)).await.unwrap();
        ingest
            .handle(&up, b"\xff\xff\xffnot postcard")
            .await
            .unwrap();
        let [invalid, garbage] = dead_letter_ids(&pool).await[..] else {
            panic!("two dead letters expected");
        };

        let letter = get(&pool, invalid).await.unwrap().unwrap();
        assert_eq!(letter.reason_code(), Some(ReasonCode::Invalid));
        assert_eq!(letter.topic, up);
        let Contents::ReadingBatch {
            device_id,
            first_seq: 40,
            readings: 3,
            first_taken_at: Some(first),
            last_taken_at: Some(last),
            ..
        } = letter.contents()
        else {
            panic!("{:?}", letter.contents());
        };
        assert_eq!(device_id, phone.as_str());
        assert_eq!(last - first, chrono::TimeDelta::milliseconds(200));
        let text = details(&letter);
        assert!(text.contains("40..=42"), "{text}");
        assert!(!text.contains("hex dump"), "{text}");

        let letter = get(&pool, garbage).await.unwrap().unwrap();
        assert!(matches!(letter.contents(), Contents::Undecodable { .. }));
        let text = details(&letter);
        assert!(text.contains("hex dump"), "{text}");
        assert!(text.contains("ff ff ff 6e 6f 74"), "{text}");
        assert!(text.contains("|...not postcard|"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&details_json(&letter)).unwrap();
        assert_eq!(json["payload_hex_prefix"], "ffffff6e6f7420706f737463617264");
        assert_eq!(json["contents"]["kind"], "undecodable");
        assert_eq!(json["reason_code"], "undecodable");

        let unknown = id(garbage.get() + 1_000);
        assert!(get(&pool, unknown).await.unwrap().is_none());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_batch_whose_time_is_plausible_now_is_stored_once_and_its_dead_letter_deleted(
        pool: PgPool,
    ) {
        let (user_id, phone) = user_with_device(&pool).await;
        let payload = encode(batch(&phone, 7, 3));
        let id = dead_letter(&pool, &phone, CLOCK_WAS_OFF, &payload).await;

        let report = replay(&pool, &KeyCache::ephemeral(), &ids(&[id]), Mode::Replay)
            .await
            .unwrap();
        assert_eq!(
            (report.replayed, report.stored, report.readings_stored),
            (1, 1, 3)
        );
        assert_eq!(report.deleted, 1);
        assert_eq!(report.stopped, None);
        assert!(dead_letter_ids(&pool).await.is_empty());
        let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM emotion_readings ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(seqs, [7, 8, 9]);
        let folded = features::load(&pool, user_id).await.unwrap().unwrap();
        assert_eq!(folded.readings_count, 3);

        // Again: nothing is left to replay, and nothing changes.
        let again = replay(&pool, &KeyCache::ephemeral(), &Selection::All, Mode::Replay)
            .await
            .unwrap();
        assert_eq!(again.replayed, 0);
        // The same payload dead-lettered twice (it was resent): its copy is all duplicates,
        // deleted, and folds nothing a second time.
        dead_letter(&pool, &phone, CLOCK_WAS_OFF, &payload).await;
        let copy = replay(&pool, &KeyCache::ephemeral(), &Selection::All, Mode::Replay)
            .await
            .unwrap();
        assert_eq!((copy.already_stored, copy.deleted, copy.stored), (1, 1, 0));
        assert!(dead_letter_ids(&pool).await.is_empty());
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            3
        );
        assert_eq!(features::load(&pool, user_id).await.unwrap(), Some(folded));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_batch_the_database_refused_is_stored_once_the_constraint_is_fixed(pool: PgPool) {
        let (_, phone) = user_with_device(&pool).await;
        // A constraint shipped with a bug: it refuses a perfectly good focus of 70.
        sqlx::query("ALTER TABLE emotion_readings ADD CONSTRAINT too_strict CHECK (focus < 70)")
            .execute(&pool)
            .await
            .unwrap();
        let ingest = Ingest::new(pool.clone(), KeyCache::ephemeral());
        let refused = ingest
            .handle(&topic::uplink(&phone), &encode(batch(&phone, 0, 4)))
            .await
            .unwrap();
        assert!(
            matches!(refused, Outcome::DeadLettered { ref reason, .. } if reason.code() == "refused_by_database"),
            "{refused:?}"
        );
        let [id] = dead_letter_ids(&pool).await[..] else {
            panic!("one dead letter expected");
        };

        // Before the fix: refused again, and still that one row.
        let before = replay(
            &pool,
            &KeyCache::ephemeral(),
            &Selection::Reason(ReasonCode::RefusedByDatabase),
            Mode::Replay,
        )
        .await
        .unwrap();
        assert_eq!(
            before.still_refused,
            BTreeMap::from([("refused_by_database", 1)])
        );
        assert_eq!(dead_letter_ids(&pool).await, [id]);

        sqlx::query("ALTER TABLE emotion_readings DROP CONSTRAINT too_strict")
            .execute(&pool)
            .await
            .unwrap();
        let after = replay(
            &pool,
            &KeyCache::ephemeral(),
            &Selection::Reason(ReasonCode::RefusedByDatabase),
            Mode::Replay,
        )
        .await
        .unwrap();
        assert_eq!(
            (after.stored, after.readings_stored, after.deleted),
            (1, 4, 1)
        );
        assert!(dead_letter_ids(&pool).await.is_empty());
        let again = replay(&pool, &KeyCache::ephemeral(), &ids(&[id]), Mode::Replay).await;
        assert!(matches!(again, Err(Error::InvalidInput(_))), "{again:?}");
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            4
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_still_invalid_batch_stays_one_dead_letter_with_todays_reason(pool: PgPool) {
        let (_, phone) = user_with_device(&pool).await;
        Ingest::new(pool.clone(), KeyCache::ephemeral())
            .handle(&topic::uplink(&phone), &invalid_batch(&phone))
            .await
            .unwrap();
        // Dead-lettered long ago for another reason; invalid too, as a replay finds now.
        let stale = dead_letter(&pool, &phone, CLOCK_WAS_OFF, &invalid_batch(&phone)).await;
        let before: Vec<(DeadLetterId, DateTime<Utc>)> = sqlx::query_as(
            "SELECT dead_letter_id, received_at FROM dead_letters ORDER BY dead_letter_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();

        for _ in 0..2 {
            let report = replay(&pool, &KeyCache::ephemeral(), &Selection::All, Mode::Replay)
                .await
                .unwrap();
            assert_eq!(report.replayed, 2);
            assert_eq!(report.still_refused, BTreeMap::from([("invalid", 2)]));
            assert_eq!((report.stored, report.deleted), (0, 0));
        }
        let after: Vec<(DeadLetterId, DateTime<Utc>)> = sqlx::query_as(
            "SELECT dead_letter_id, received_at FROM dead_letters ORDER BY dead_letter_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(after, before, "the same rows, received when they were");
        let stale = get(&pool, stale).await.unwrap().unwrap();
        assert_eq!(stale.reason_code(), Some(ReasonCode::Invalid), "{stale:?}");
        assert!(stale.reason.contains("valence = 120"), "{stale:?}");
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            0
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_dry_run_decides_and_writes_nothing(pool: PgPool) {
        let (_, phone) = user_with_device(&pool).await;
        let valid = dead_letter(&pool, &phone, CLOCK_WAS_OFF, &encode(batch(&phone, 0, 3))).await;
        let invalid = dead_letter(&pool, &phone, CLOCK_WAS_OFF, &invalid_batch(&phone)).await;
        let foreign: DeadLetterId = sqlx::query_scalar(
            "INSERT INTO dead_letters (topic, reason, payload)
             VALUES ('/somewhere/else', 'the topic is not a device uplink topic', '\\x00')
             RETURNING dead_letter_id",
        )
        .fetch_one(&pool)
        .await
        .unwrap();

        let report = replay(&pool, &KeyCache::ephemeral(), &Selection::All, Mode::DryRun)
            .await
            .unwrap();
        assert!(report.dry_run);
        assert_eq!(
            (report.replayed, report.stored, report.readings_stored),
            (3, 1, 3)
        );
        assert_eq!(
            report.still_refused,
            BTreeMap::from([("invalid", 1), ("not_uplink_topic", 1)])
        );
        assert_eq!(report.deleted, 0);
        assert_eq!(dead_letter_ids(&pool).await, [valid, invalid, foreign]);
        let reasons: Vec<String> =
            sqlx::query_scalar("SELECT reason FROM dead_letters WHERE device_id IS NOT NULL")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(
            reasons,
            [CLOCK_WAS_OFF, CLOCK_WAS_OFF],
            "not even a reason is updated"
        );
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            0
        );
        assert!(replay_report(&report).starts_with("dry run"));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn replaying_an_unknown_id_replays_nothing(pool: PgPool) {
        let (_, phone) = user_with_device(&pool).await;
        let valid = dead_letter(&pool, &phone, CLOCK_WAS_OFF, &encode(batch(&phone, 0, 3))).await;
        let unknown = id(valid.get() + 1);
        let err = replay(
            &pool,
            &KeyCache::ephemeral(),
            &ids(&[valid, unknown]),
            Mode::Replay,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains(&format!("no dead letter with id {unknown}")),
            "{err}"
        );
        assert_eq!(dead_letter_ids(&pool).await, [valid]);
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            0
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn the_dead_letters_of_a_revoked_device_or_a_person_without_consent_stay(pool: PgPool) {
        let (_, revoked) = user_with_device(&pool).await;
        let (withdrawn, phone) = user_with_device(&pool).await;
        let of_revoked = dead_letter(
            &pool,
            &revoked,
            CLOCK_WAS_OFF,
            &encode(batch(&revoked, 0, 2)),
        )
        .await;
        let of_withdrawn =
            dead_letter(&pool, &phone, CLOCK_WAS_OFF, &encode(batch(&phone, 0, 2))).await;
        let garbage = dead_letter(&pool, &revoked, "undecodable: x", b"\xff").await;
        sqlx::query("UPDATE devices SET revoked_at = now() WHERE device_id = $1")
            .bind(revoked.as_str())
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE users SET emotional_data_consent = false WHERE user_id = $1")
            .bind(withdrawn)
            .execute(&pool)
            .await
            .unwrap();

        let report = replay(&pool, &KeyCache::ephemeral(), &Selection::All, Mode::Replay)
            .await
            .unwrap();
        assert_eq!(report.not_accepted, BTreeMap::from([("revoked_device", 2)]));
        assert_eq!(report.without_consent, 1);
        assert_eq!(report.deleted, 0);
        assert_eq!(
            dead_letter_ids(&pool).await,
            [of_revoked, of_withdrawn, garbage]
        );
        let reason: String =
            sqlx::query_scalar("SELECT reason FROM dead_letters WHERE dead_letter_id = $1")
                .bind(garbage)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(reason, "undecodable: x", "left alone");
        assert_eq!(
            count(&pool, "SELECT count(*) FROM emotion_readings").await,
            0
        );
    }
}

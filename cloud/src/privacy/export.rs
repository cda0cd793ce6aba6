//! Everything the system holds about a person, in one JSON document (LGPD Art. 18 II and V).
//!
//! The document is streamed: the sections about the person (profile, consent history, devices,
//! transactions, features, assessments with their inputs and reasons, offers, the credit line
//! and its history, notifications, the outbox, proactive checks, the access trail, tokens,
//! idempotency keys, dead letters of their phones) are read first, one statement each, and then
//! the readings within retention are written page by page, so a person with months of readings
//! costs memory for one page, not for all of them. A failure halfway ends the body early: the
//! client sees a document that does not parse, never one that silently lacks a part.
//!
//! [`SECTIONS`] names the table behind each section; a test compares it with the schema, so a
//! new table about people cannot be added without being exported (or being listed in
//! [`NOT_EXPORTED`] with the reason).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::thoughts;
use crate::{
    error::Result,
    keys::{DataKey, Keyring},
    people,
};

/// Readings written per page.
const READINGS_PAGE: i64 = 5_000;
/// Exports running at once in this replica, and per person: an export holds a connection of the
/// pool while it reads and memory while the client reads, so a token cannot open many.
pub const MAX_EXPORTS: usize = 4;
/// Longest a write may wait for the client to read: one that stopped reading ends its export.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The exports running now: a permit each, at most one per person.
pub struct ExportGate {
    running: tokio::sync::Semaphore,
    people: std::sync::Mutex<std::collections::HashSet<Uuid>>,
}

/// Held while an export runs; frees its place when dropped.
pub struct ExportSlot {
    _permit: tokio::sync::SemaphorePermit<'static>,
    user_id: Uuid,
}

impl Drop for ExportSlot {
    fn drop(&mut self) {
        if let Ok(mut people) = gate().people.lock() {
            people.remove(&self.user_id);
        }
    }
}

fn gate() -> &'static ExportGate {
    static GATE: std::sync::OnceLock<ExportGate> = std::sync::OnceLock::new();
    GATE.get_or_init(|| ExportGate {
        running: tokio::sync::Semaphore::new(MAX_EXPORTS),
        people: Default::default(),
    })
}

/// A place for one export of `user_id`, or 429 when theirs is already running or the replica
/// runs as many as it takes.
pub fn admit(user_id: Uuid) -> Result<ExportSlot> {
    let busy = |what| crate::Error::RateLimited {
        what,
        retry_after: std::time::Duration::from_secs(5),
    };
    let permit = gate()
        .running
        .try_acquire()
        .map_err(|_| busy("as many exports as this server runs at once are running"))?;
    let mut people = gate()
        .people
        .lock()
        .map_err(|_| crate::Error::Internal("the export gate is poisoned".into()))?;
    if !people.insert(user_id) {
        return Err(busy("an export of this person is already running"));
    }
    Ok(ExportSlot {
        _permit: permit,
        user_id,
    })
}

/// The sections besides the profile and the readings: (section name, table, the statement that
/// makes it as one JSON array; `$1` is the person).
pub const SECTIONS: &[(&str, &str, &str)] = &[
    (
        "consent_history",
        "consent_events",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id' ORDER BY t.event_id), '[]')
         FROM consent_events t WHERE t.user_id = $1",
    ),
    (
        "devices",
        "devices",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id' ORDER BY t.registered_at), '[]')
         FROM devices t WHERE t.user_id = $1",
    ),
    (
        "transactions",
        "transactions",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id' ORDER BY t.occurred_at), '[]')
         FROM transactions t WHERE t.user_id = $1",
    ),
    (
        "emotional_features",
        "emotion_features",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id'), '[]')
         FROM emotion_features t WHERE t.user_id = $1",
    ),
    (
        "risk_assessments",
        "risk_assessments",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id' ORDER BY t.created_at), '[]')
         FROM risk_assessments t WHERE t.user_id = $1",
    ),
    (
        "credit_offers",
        "credit_offers",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id' ORDER BY t.created_at), '[]')
         FROM credit_offers t WHERE t.user_id = $1",
    ),
    (
        "credit_line",
        "credit_limits",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id'), '[]')
         FROM credit_limits t WHERE t.user_id = $1",
    ),
    (
        "credit_line_history",
        "credit_limit_history",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id' ORDER BY t.changed_at), '[]')
         FROM credit_limit_history t WHERE t.user_id = $1",
    ),
    (
        "notifications",
        "notifications",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id' ORDER BY t.created_at), '[]')
         FROM notifications t WHERE t.user_id = $1",
    ),
    (
        "outbox_events",
        "outbox",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id' ORDER BY t.created_at), '[]')
         FROM outbox t WHERE t.user_id = $1",
    ),
    (
        "proactive_checks",
        "proactive_checks",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id' ORDER BY t.created_at), '[]')
         FROM proactive_checks t WHERE t.user_id = $1",
    ),
    (
        "access_log",
        "data_access_log",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'user_id' ORDER BY t.access_id), '[]')
         FROM data_access_log t WHERE t.user_id = $1",
    ),
    // Only that they exist and when: the digests identify nothing and open nothing.
    (
        "api_tokens",
        "api_tokens",
        "SELECT coalesce(jsonb_agg(jsonb_build_object('token_id', t.token_id,
                     'created_at', t.created_at, 'revoked_at', t.revoked_at)
                 ORDER BY t.created_at), '[]')
         FROM api_tokens t WHERE t.user_id = $1",
    ),
    // The requests made with an Idempotency-Key: when and how they were answered (the stored
    // answers are sealed under the client's key, which the server does not keep).
    (
        "idempotency_keys",
        "idempotency_keys",
        "SELECT coalesce(jsonb_agg(jsonb_build_object('created_at', t.created_at,
                     'status', t.status) ORDER BY t.created_at), '[]')
         FROM idempotency_keys t WHERE t.user_id = $1",
    ),
    // What the person's phones sent that could not be stored: when, why, and the raw payload
    // as hex (it is the phone's binary wire format).
    (
        "dead_letters",
        "dead_letters",
        "SELECT coalesce(jsonb_agg(jsonb_build_object('received_at', t.received_at,
                     'topic', t.topic, 'device_id', t.device_id, 'reason', t.reason,
                     'payload_hex', encode(t.payload, 'hex')) ORDER BY t.received_at), '[]')
         FROM dead_letters t
         WHERE t.device_id IN (SELECT device_id FROM devices WHERE user_id = $1)",
    ),
];

/// Tables about people that are not a section of their own, and why.
pub const NOT_EXPORTED: &[(&str, &str)] = &[
    ("users", "the profile section (with the name opened)"),
    (
        "emotion_readings",
        "the readings section, streamed page by page",
    ),
];

/// One reading as exported: its position, and itself as JSON text (never parsed here).
#[derive(sqlx::FromRow)]
struct ReadingRow {
    recorded_at: DateTime<Utc>,
    device_id: String,
    seq: i64,
    reading: String,
    /// Its thoughts, sealed ([`thoughts`]); opened into `intents` and `intent_confidence`.
    thoughts_sealed: Option<Vec<u8>>,
}

/// Writes `bytes`, giving up when the client does not read for [`WRITE_TIMEOUT`].
async fn send(out: &mut (impl tokio::io::AsyncWrite + Unpin), bytes: &[u8]) -> Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, out.write_all(bytes)).await {
        Ok(written) => written.map_err(io),
        Err(_) => Err(crate::Error::Internal(
            "the client stopped reading its export".into(),
        )),
    }
}

/// Writes the person's export into `out`. The caller has checked the person exists and may be
/// read by the caller.
pub async fn write(
    pool: &PgPool,
    keyring: &Keyring,
    user_id: Uuid,
    mut out: impl tokio::io::AsyncWrite + Unpin,
) -> Result<()> {
    let profile = people::view(pool, keyring, user_id).await?;
    let mut head = serde_json::Map::new();
    head.insert("format".into(), Value::from("ecs-export-v1"));
    head.insert("exported_at".into(), Value::from(Utc::now().to_rfc3339()));
    head.insert("user_id".into(), Value::from(user_id.to_string()));
    head.insert(
        "profile".into(),
        serde_json::to_value(&profile).map_err(json)?,
    );
    for (section, _, sql) in SECTIONS {
        // `sql` is one of this module's constants: `*sql` is the `&'static str` literal.
        let value: Value = sqlx::query_scalar(*sql)
            .bind(user_id)
            .fetch_one(pool)
            .await?;
        head.insert((*section).into(), value);
    }
    // The head without its closing brace, then the readings as the last member.
    let head = serde_json::to_string(&Value::Object(head)).map_err(json)?;
    let open = head.strip_suffix('}').unwrap_or(&head);
    send(&mut out, open.as_bytes()).await?;
    send(&mut out, b",\"readings\":[").await?;
    let key = keyring.load(pool, user_id).await?;
    let mut after: Option<(DateTime<Utc>, String, i64)> = None;
    let mut first = true;
    loop {
        // Two statements, so each is a plain range scan of the (user_id, recorded_at) index.
        let page: Vec<ReadingRow> = match &after {
            None => {
                sqlx::query_as(
                    "SELECT r.recorded_at, r.device_id, r.seq,
                            (to_jsonb(r) - 'user_id' - 'thoughts_sealed')::text AS reading,
                            r.thoughts_sealed
                     FROM emotion_readings r
                     WHERE r.user_id = $1
                     ORDER BY r.recorded_at, r.device_id, r.seq
                     LIMIT $2",
                )
                .bind(user_id)
                .bind(READINGS_PAGE)
                .fetch_all(pool)
                .await?
            }
            Some((at, device, seq)) => {
                sqlx::query_as(
                    "SELECT r.recorded_at, r.device_id, r.seq,
                            (to_jsonb(r) - 'user_id' - 'thoughts_sealed')::text AS reading,
                            r.thoughts_sealed
                     FROM emotion_readings r
                     WHERE r.user_id = $1 AND (r.recorded_at, r.device_id, r.seq) > ($2, $3, $4)
                     ORDER BY r.recorded_at, r.device_id, r.seq
                     LIMIT $5",
                )
                .bind(user_id)
                .bind(at)
                .bind(device)
                .bind(seq)
                .bind(READINGS_PAGE)
                .fetch_all(pool)
                .await?
            }
        };
        let mut chunk = Vec::new();
        for row in &page {
            if !first {
                chunk.push(b',');
            }
            first = false;
            match &row.thoughts_sealed {
                None => chunk.extend_from_slice(row.reading.as_bytes()),
                Some(sealed) => {
                    let opened_text = with_thoughts(key.as_ref(), row, sealed)?;
                    chunk.extend_from_slice(opened_text.as_bytes());
                }
            }
        }
        send(&mut out, &chunk).await?;
        match page.last() {
            Some(last) if page.len() as i64 == READINGS_PAGE => {
                after = Some((last.recorded_at, last.device_id.clone(), last.seq));
            }
            _ => break,
        }
    }
    send(&mut out, b"]}").await?;
    out.shutdown().await.map_err(io)?;
    Ok(())
}

/// The reading's JSON with its sealed thoughts opened, in the columns that held them in the
/// clear (so every reading of the export has the same shape).
fn with_thoughts(key: Option<&DataKey>, row: &ReadingRow, sealed: &[u8]) -> Result<String> {
    let key = key.ok_or_else(|| {
        crate::Error::Internal("a person with sealed thoughts has no data key".into())
    })?;
    let opened = thoughts::open(key, &row.device_id, row.seq, sealed)?;
    let mut reading: serde_json::Map<String, Value> =
        serde_json::from_str(&row.reading).map_err(json)?;
    reading.insert("intents".into(), Value::from(opened.intents));
    reading.insert("intent_confidence".into(), Value::from(opened.confidences));
    serde_json::to_string(&reading).map_err(json)
}

fn io(e: std::io::Error) -> crate::Error {
    crate::Error::Internal(format!("writing the export: {e}"))
}

fn json(e: serde_json::Error) -> crate::Error {
    crate::Error::Internal(format!("encoding the export: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_export_per_person_and_a_few_per_replica() {
        let someone = Uuid::new_v4();
        let first = admit(someone).unwrap();
        assert!(
            admit(someone).is_err(),
            "a second export of the same person"
        );
        drop(first);
        let again = admit(someone).unwrap();
        let others: Vec<_> = (1..MAX_EXPORTS)
            .map(|_| admit(Uuid::new_v4()).unwrap())
            .collect();
        assert!(admit(Uuid::new_v4()).is_err(), "more than the replica runs");
        drop((again, others));
        assert!(admit(Uuid::new_v4()).is_ok());
    }
}

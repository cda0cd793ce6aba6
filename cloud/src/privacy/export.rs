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

use crate::{error::Result, keys::Keyring, people};

/// Readings written per page.
const READINGS_PAGE: i64 = 5_000;

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

/// One reading as exported.
#[derive(sqlx::FromRow)]
struct ReadingRow {
    recorded_at: DateTime<Utc>,
    device_id: String,
    seq: i64,
    reading: Value,
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
    out.write_all(open.as_bytes()).await.map_err(io)?;
    out.write_all(b",\"readings\":[").await.map_err(io)?;
    let mut after: Option<(DateTime<Utc>, String, i64)> = None;
    let mut first = true;
    loop {
        let page: Vec<ReadingRow> = sqlx::query_as(
            "SELECT r.recorded_at, r.device_id, r.seq,
                    to_jsonb(r) - 'user_id' AS reading
             FROM emotion_readings r
             WHERE r.user_id = $1
               AND ($2::timestamptz IS NULL OR (r.recorded_at, r.device_id, r.seq) > ($2, $3, $4))
             ORDER BY r.recorded_at, r.device_id, r.seq
             LIMIT $5",
        )
        .bind(user_id)
        .bind(after.as_ref().map(|a| a.0))
        .bind(after.as_ref().map(|a| a.1.clone()))
        .bind(after.as_ref().map(|a| a.2))
        .bind(READINGS_PAGE)
        .fetch_all(pool)
        .await?;
        let mut chunk = Vec::new();
        for row in &page {
            if !first {
                chunk.push(b',');
            }
            first = false;
            chunk.extend_from_slice(
                serde_json::to_string(&row.reading)
                    .map_err(json)?
                    .as_bytes(),
            );
        }
        out.write_all(&chunk).await.map_err(io)?;
        match page.last() {
            Some(last) if page.len() as i64 == READINGS_PAGE => {
                after = Some((last.recorded_at, last.device_id.clone(), last.seq));
            }
            _ => break,
        }
    }
    out.write_all(b"]}").await.map_err(io)?;
    out.shutdown().await.map_err(io)?;
    Ok(())
}

fn io(e: std::io::Error) -> crate::Error {
    crate::Error::Internal(format!("writing the export: {e}"))
}

fn json(e: serde_json::Error) -> crate::Error {
    crate::Error::Internal(format!("encoding the export: {e}"))
}

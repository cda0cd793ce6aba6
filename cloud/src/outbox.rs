//! The outbox as an operator sees it: what waits, what failed, what was parked, and putting
//! parked events back (`ecs-cloud outbox list|retry`). The worker that drains it is
//! [`crate::offers::OfferWorker`]; this module only reads it and un-parks.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{error::Result, offers::OUTBOX_CHANNEL};

/// Most events one `list` shows.
pub const MAX_LIST: i64 = 1_000;
const TIME: &str = "%Y-%m-%d %H:%M:%S%.3fZ";

/// One event as listed.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Event {
    pub event_id: Uuid,
    pub kind: String,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub available_at: DateTime<Utc>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub parked_at: Option<DateTime<Utc>>,
}

/// Which events to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Not yet processed: waiting, failing or parked.
    Pending,
    /// Parked only.
    Parked,
}

/// Unprocessed events, oldest first.
pub async fn list(pool: &PgPool, filter: Filter, limit: i64) -> Result<Vec<Event>> {
    let parked_only = filter == Filter::Parked;
    Ok(sqlx::query_as(
        "SELECT event_id, kind, user_id, created_at, available_at, attempts, last_error, parked_at
         FROM outbox
         WHERE processed_at IS NULL AND (NOT $1 OR parked_at IS NOT NULL)
         ORDER BY created_at
         LIMIT $2",
    )
    .bind(parked_only)
    .bind(limit.clamp(1, MAX_LIST))
    .fetch_all(pool)
    .await?)
}

/// Which parked events to put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<Uuid>),
    AllParked,
}

/// Puts parked events back in the queue with a fresh allowance of tries (their last error is
/// kept until the next try replaces it) and wakes the workers. Returns how many were parked.
/// An id that is not parked (processed, waiting, unknown) is left as it is.
pub async fn retry(pool: &PgPool, selection: &Selection) -> Result<u64> {
    let ids: Option<Vec<Uuid>> = match selection {
        Selection::Ids(ids) => Some(ids.clone()),
        Selection::AllParked => None,
    };
    let mut tx = pool.begin().await?;
    let retried = sqlx::query(
        "UPDATE outbox SET parked_at = NULL, attempts = 0, available_at = now()
         WHERE parked_at IS NOT NULL AND processed_at IS NULL
           AND ($1::uuid[] IS NULL OR event_id = ANY($1))",
    )
    .bind(ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(OUTBOX_CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(retried)
}

/// The outbox's health as gauges: events waiting (due or backing off), the age of the oldest,
/// events parked. One indexed query; the worker runs it every pass.
pub async fn export_gauges(pool: &PgPool) -> Result<()> {
    let (waiting, oldest_secs, parked): (i64, Option<f64>, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE parked_at IS NULL),
                EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL))::float8,
                count(*) FILTER (WHERE parked_at IS NOT NULL)
         FROM outbox WHERE processed_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    metrics::gauge!("ecs_outbox_depth").set(waiting as f64);
    metrics::gauge!("ecs_outbox_oldest_event_seconds").set(oldest_secs.unwrap_or(0.0));
    metrics::gauge!("ecs_outbox_parked").set(parked as f64);
    Ok(())
}

/// A human table, one event a line.
pub fn table(events: &[Event]) -> String {
    if events.is_empty() {
        return "no pending events\n".to_owned();
    }
    let mut out = format!(
        "{:<36}  {:<14}  {:<24}  {:>8}  {:<7}  LAST ERROR\n",
        "EVENT", "KIND", "CREATED (UTC)", "ATTEMPTS", "STATE"
    );
    for e in events {
        let state = if e.parked_at.is_some() {
            "parked"
        } else if e.attempts > 0 {
            "failing"
        } else {
            "waiting"
        };
        let _ = writeln!(
            out,
            "{:<36}  {:<14}  {:<24}  {:>8}  {:<7}  {}",
            e.event_id,
            e.kind,
            e.created_at.format(TIME).to_string(),
            e.attempts,
            state,
            e.last_error.as_deref().unwrap_or("-"),
        );
    }
    out
}

/// One JSON object a line.
pub fn json_lines(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .map(|line| line + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Notify;

    use super::*;
    use crate::offers::{ExecutionOutcome, MAX_APPLY_ATTEMPTS, OfferWorker};

    /// An accepted-offer event whose offer cannot be applied (it was never accepted): it fails
    /// every time, until an operator fixes the cause.
    async fn broken_event(pool: &PgPool) -> (Uuid, Uuid) {
        let user = Uuid::new_v4();
        sqlx::query("INSERT INTO users (user_id, display_name, emotional_data_consent) VALUES ($1, 'x', false)")
            .bind(user)
            .execute(pool)
            .await
            .unwrap();
        // An open offer, never accepted.
        let offer = crate::notify::fixtures::offer(pool, user).await.offer_id();
        let event = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO outbox (event_id, kind, user_id, payload)
             VALUES ($1, 'offer_accepted', $2, jsonb_build_object('offer_id', $3::uuid))",
        )
        .bind(event)
        .bind(user)
        .bind(offer)
        .execute(pool)
        .await
        .unwrap();
        (event, offer)
    }

    fn worker(pool: &PgPool) -> OfferWorker {
        OfferWorker {
            pool: pool.clone(),
            notifier: Arc::new(Notify::new()),
            poll_interval: std::time::Duration::from_millis(10),
        }
    }

    /// Makes every backed-off event due now, as time would.
    async fn time_passes(pool: &PgPool) {
        sqlx::query("UPDATE outbox SET available_at = now()")
            .execute(pool)
            .await
            .unwrap();
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_failing_event_is_parked_after_its_tries_then_retried_by_an_operator(pool: PgPool) {
        let (event, offer) = broken_event(&pool).await;
        let worker = worker(&pool);
        for _ in 0..MAX_APPLY_ATTEMPTS {
            time_passes(&pool).await;
            assert_eq!(
                worker.process_next().await.unwrap(),
                ExecutionOutcome::TaskFailed
            );
        }
        // Parked: the worker no longer takes it, however due it is.
        time_passes(&pool).await;
        assert_eq!(
            worker.process_next().await.unwrap(),
            ExecutionOutcome::EmptyQueue
        );
        let parked = list(&pool, Filter::Parked, 10).await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].event_id, event);
        assert_eq!(parked[0].attempts, MAX_APPLY_ATTEMPTS);
        assert!(
            parked[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("only accepted offers")),
            "{parked:?}"
        );
        assert!(table(&parked).contains("parked"));
        assert_eq!(json_lines(&parked).lines().count(), 1);
        export_gauges(&pool).await.unwrap();

        // The operator fixes the cause and puts it back: applied once.
        sqlx::query(
            "UPDATE credit_offers SET status = 'accepted', accepted_at = now() WHERE offer_id = $1",
        )
        .bind(offer)
        .execute(&pool)
        .await
        .unwrap();
        assert_eq!(
            retry(&pool, &Selection::Ids(vec![Uuid::new_v4()]))
                .await
                .unwrap(),
            0
        );
        assert_eq!(retry(&pool, &Selection::AllParked).await.unwrap(), 1);
        assert_eq!(
            worker.process_next().await.unwrap(),
            ExecutionOutcome::TaskCompleted
        );
        assert!(list(&pool, Filter::Pending, 10).await.unwrap().is_empty());
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_limit_history")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(applied, 1);
        // Nothing parked is left to retry.
        assert_eq!(retry(&pool, &Selection::AllParked).await.unwrap(), 0);
    }
}

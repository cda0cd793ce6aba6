//! Sensor-to-commit lag, seen from outside: how long after a phone took a reading its row could
//! be read in Postgres.
//!
//! Postgres records no commit time per row unless `track_commit_timestamp` is on (it is off by
//! default and needs a restart), so the lag is found by polling. Every poll asks, in one
//! statement (one snapshot), for each phone's rows with a seq above what the previous poll saw,
//! using the primary key `(device_id, seq)`. A row found by a poll was committed after the
//! previous poll's snapshot and before this one's, so
//!
//! * **visible lag** = `clock_timestamp()` when the row is read − `recorded_at` is an *upper
//!   bound* of its commit lag, too high by at most one poll period (plus the poll's own time);
//! * **insert lag** = `received_at` (`now()` of the inserting transaction, i.e. when it began)
//!   − `recorded_at` is a *lower bound*: the commit came after it.
//!
//! Only every [`SAMPLE_EVERY`]th seq is sampled (the seqs of a phone are consecutive), which
//! keeps the poll cheap next to the load it measures. A row committed out of order (a resend
//! of an earlier range after a later one was stored) is not seen; with acks in order that is
//! rare. The first poll only sets the starting point: its rows were committed before the
//! measurement began.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde::Serialize;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bench::latency::{Latencies, LatencySummary};

/// One reading in this many is sampled (by seq).
pub const SAMPLE_EVERY: i64 = 10;
/// Longest a poll may take before the measurement is called failed.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the poller found.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LagFigures {
    /// Upper bound of the sensor-to-commit lag (seen by a poll).
    pub visible: Option<LatencySummary>,
    /// Lower bound (the inserting transaction's start).
    pub insert: Option<LatencySummary>,
    /// Polls that recorded samples.
    pub polls: u64,
    /// Mean time from one poll to the next: the resolution of `visible`.
    pub poll_period_ms: Option<f64>,
}

/// Polls in the background until [`LagPoller::finish`].
pub struct LagPoller {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<LagFigures>>,
}

impl LagPoller {
    /// Starts polling the rows of `devices` every `every`; the first poll happens at once and
    /// only sets the starting point.
    pub fn start(pool: PgPool, devices: Vec<String>, every: Duration) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(poll(pool, devices, every, stop.clone()));
        Self { stop, task }
    }

    pub async fn finish(self) -> anyhow::Result<LagFigures> {
        self.stop.cancel();
        self.task
            .await
            .map_err(|e| anyhow!("the lag poller failed: {e}"))?
    }
}

/// One phone's newly visible rows: the highest seq, and the sampled lags in milliseconds.
#[derive(sqlx::FromRow)]
struct Seen {
    max_seq: Option<i64>,
    visible_ms: Option<Vec<f64>>,
    insert_ms: Option<Vec<f64>>,
}

const POLL: &str = "
    SELECT n.max_seq, n.visible_ms, n.insert_ms
    FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS w(device_id, after_seq, i)
    CROSS JOIN LATERAL (
        SELECT max(e.seq) AS max_seq,
            array_agg((extract(epoch FROM clock_timestamp() - e.recorded_at) * 1000)::float8)
                FILTER (WHERE e.seq % $3 = 0) AS visible_ms,
            array_agg((extract(epoch FROM e.received_at - e.recorded_at) * 1000)::float8)
                FILTER (WHERE e.seq % $3 = 0) AS insert_ms
        FROM emotion_readings e
        WHERE e.device_id = w.device_id AND e.seq > w.after_seq
    ) n
    ORDER BY w.i";

async fn poll(
    pool: PgPool,
    devices: Vec<String>,
    every: Duration,
    stop: CancellationToken,
) -> anyhow::Result<LagFigures> {
    let mut after: Vec<i64> = vec![-1; devices.len()];
    let mut visible = Latencies::default();
    let mut insert = Latencies::default();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut polls, mut first, mut last): (u64, Option<Instant>, Option<Instant>) = (0, None, None);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        let seen: Vec<Seen> = tokio::time::timeout(
            POLL_TIMEOUT,
            sqlx::query_as(POLL)
                .bind(&devices)
                .bind(&after)
                .bind(SAMPLE_EVERY)
                .fetch_all(&pool),
        )
        .await
        .map_err(|_| anyhow!("a lag poll took more than {POLL_TIMEOUT:?}"))?
        .context("polling for newly committed readings")?;
        let baseline = first.is_none();
        first.get_or_insert(started);
        for (watermark, seen) in after.iter_mut().zip(seen) {
            if let Some(max) = seen.max_seq {
                *watermark = (*watermark).max(max);
            }
            if baseline {
                continue;
            }
            record(&mut visible, seen.visible_ms.unwrap_or_default());
            record(&mut insert, seen.insert_ms.unwrap_or_default());
        }
        if !baseline {
            polls += 1;
            last = Some(started);
        }
    }
    let poll_period_ms = match (first, last) {
        (Some(first), Some(last)) if polls > 0 => {
            Some(last.duration_since(first).as_secs_f64() * 1000.0 / polls as f64)
        }
        _ => None,
    };
    Ok(LagFigures {
        visible: visible.summary(),
        insert: insert.summary(),
        polls,
        poll_period_ms,
    })
}

/// Records lags given in milliseconds; a negative one (a reading stamped a little ahead of the
/// database's clock) counts as zero, a value that is not a number is skipped.
fn record(latencies: &mut Latencies, millis: Vec<f64>) {
    for ms in millis.into_iter().filter(|ms| ms.is_finite()) {
        if let Ok(lag) = Duration::try_from_secs_f64(ms.max(0.0) / 1000.0) {
            latencies.record(lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lags_from_postgres_never_panic() {
        let mut latencies = Latencies::default();
        record(
            &mut latencies,
            vec![250.0, -3.0, f64::NAN, f64::INFINITY, 750.0],
        );
        let summary = latencies.summary().unwrap();
        assert_eq!(summary.samples, 3);
        assert_eq!(summary.p50_ms, 250.0);
        assert_eq!(summary.max_ms, 750.0);
    }
}

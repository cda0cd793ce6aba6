//! Draining a full buffer into the real cloud: the `ecs-edge-agent` process started on the file
//! the append phase filled, its sensor at the lowest rate the agent accepts (one reading at
//! start, then one every 1 000 s, numbered above the filled range and not counted), timed from
//! the spawn until Postgres holds every filled reading; then the reference, a plain COPY of the
//! same rows into the same table.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::DateTime;
use ecs_edge_agent::AgentConfig;
use ecs_protocol::Reading;
use serde::Serialize;
use sqlx::PgPool;

use super::agent::{AgentChild, Usage};
use crate::bench::ingest::copy::{CopyFigures, copy_rows};
use crate::bench::ingest::uplinks::{BenchDevice, CopyText, copy_row};
use crate::bench::ingest::window::{per_second, truncate_readings};
use crate::bench::progress::Progress;

/// How often Postgres is asked how far the drain has come: `max(seq)`, one index descent.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// What the drain did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DrainFigures {
    pub readings: u64,
    /// From spawning the agent to Postgres holding every reading (the agent's start, its TLS
    /// connection and every batch's round trip included).
    pub seconds: f64,
    pub per_s: f64,
    /// The agent's resident memory at its peak while draining, in KiB, and its CPU time.
    pub rss_kb_peak: u64,
    pub cpu_s: Option<f64>,
    pub batches_sent: u64,
    pub batches_resent: u64,
    pub bytes_published: u64,
}

/// Starts the agent on `config.db_path` (already holding seqs `first_seq..=last_seq`) and waits
/// at most `timeout` for the cloud to store them all.
pub async fn run(
    binary: &Path,
    config: &AgentConfig,
    pool: &PgPool,
    (first_seq, last_seq): (u64, u64),
    timeout: Duration,
    log: &Path,
    progress: &Progress,
) -> anyhow::Result<DrainFigures> {
    let readings = last_seq - first_seq + 1;
    let (first, last) = (i64::try_from(first_seq)?, i64::try_from(last_seq)?);
    let device = config.device_id.to_string();
    let bar = progress.counter("drain", readings);
    let started = Instant::now();
    let mut agent = AgentChild::start(binary, config, log)?;
    let mut usage: Usage;
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        usage = agent.usage().context("watching the draining agent")?;
        let highest: Option<i64> = sqlx::query_scalar(
            "SELECT max(seq) FROM emotion_readings WHERE device_id = $1 AND seq BETWEEN $2 AND $3",
        )
        .bind(&device)
        .bind(first)
        .bind(last)
        .fetch_one(pool)
        .await
        .context("asking how far the drain has come")?;
        bar.set_position(highest.map_or(0, |h| (h - first + 1) as u64));
        // Batches commit nearly in order (a window of them in flight): once the last one is
        // in, count them all, and go on waiting if a resent one is still missing.
        if highest == Some(last) {
            let stored: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM emotion_readings \
                 WHERE device_id = $1 AND seq BETWEEN $2 AND $3",
            )
            .bind(&device)
            .bind(first)
            .bind(last)
            .fetch_one(pool)
            .await
            .context("counting the drained readings")?;
            if stored as u64 == readings {
                break;
            }
        }
        if started.elapsed() > timeout {
            bail!(
                "the cloud had not stored all {readings} readings {timeout:?} after the agent \
                 started"
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let stats = agent.stop().await?;
    let cpu_s = crate::bench::ingest::usage::clock_ticks_per_second()
        .map(|per_s| usage.cpu_ticks as f64 / per_s);
    Ok(DrainFigures {
        readings,
        seconds,
        per_s: per_second(readings, seconds),
        rss_kb_peak: usage.hwm_kb,
        cpu_s,
        batches_sent: stats.batches_sent,
        batches_resent: stats.batches_resent,
        bytes_published: stats.bytes_published,
    })
}

/// The reference: `emotion_readings` emptied, then the same rows (device, seqs, times,
/// values; a sealed-thoughts value of the right length) by one COPY.
pub async fn copy_reference(
    pool: &PgPool,
    device: BenchDevice,
    first_seq: u64,
    rows: &[(i64, Reading)],
) -> anyhow::Result<CopyFigures> {
    truncate_readings(pool).await?;
    let text = copy_text(&device, first_seq, rows)?;
    copy_rows(pool, text).await
}

/// COPY text for `rows`, numbered from `first_seq`, for `device`.
pub fn copy_text(
    device: &BenchDevice,
    first_seq: u64,
    rows: &[(i64, Reading)],
) -> anyhow::Result<CopyText> {
    let mut out = CopyText {
        text: Vec::with_capacity(rows.len() * 120),
        rows: 0,
    };
    let mut line = String::new();
    for ((taken_at_ms, reading), seq) in rows.iter().zip(first_seq..) {
        let at = DateTime::from_timestamp_millis(*taken_at_ms)
            .with_context(|| format!("reading {seq} has no valid time"))?;
        line.clear();
        copy_row(&mut line, device, seq, at, reading);
        out.text.extend_from_slice(line.as_bytes());
        out.rows += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use ecs_protocol::DeviceId;
    use uuid::Uuid;

    use super::*;
    use crate::bench::edge::append::readings;

    #[test]
    fn the_copy_rows_carry_the_buffers_seqs_and_times() {
        let device = BenchDevice {
            id: DeviceId::parse("phone1").unwrap(),
            user_id: Uuid::nil(),
        };
        let rows = readings(5, 3, 1_800_000_000_020);
        let copy = copy_text(&device, 1_000, &rows).unwrap();
        assert_eq!(copy.rows, 3);
        let text = String::from_utf8(copy.text).unwrap();
        let keys: Vec<(&str, &str, &str)> = text
            .lines()
            .map(|l| {
                let mut f = l.split('\t');
                let (d, s) = (f.next().unwrap(), f.next().unwrap());
                (d, s, f.nth(1).unwrap())
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("phone1", "1000", "2027-01-15 08:00:00.000+00"),
                ("phone1", "1001", "2027-01-15 08:00:00.010+00"),
                ("phone1", "1002", "2027-01-15 08:00:00.020+00"),
            ]
        );
    }
}

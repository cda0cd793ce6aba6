//! The reference: the same rows, written by one plain `COPY … FROM STDIN` (text format) into the
//! same table, with its indexes and foreign keys (the devices and people exist), on one
//! connection, in one transaction. The text is made before the clock starts, so the figure is
//! Postgres's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use sqlx::PgPool;

use super::uplinks::{COPY_STATEMENT, CopyText, Uplinks};
use super::usage::{CpuFigures, CpuMark};
use super::window::per_second;

/// Bytes sent per CopyData message.
const CHUNK_BYTES: usize = 1 << 20;
/// Longest the COPY may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
pub struct CopyFigures {
    pub rows: u64,
    pub bytes: usize,
    pub seconds: f64,
    pub rows_per_s: f64,
    pub cpu: CpuFigures,
}

/// COPYs the first `rows` readings of `uplinks` (whole batches) into `emotion_readings`.
pub async fn run(pool: &PgPool, uplinks: Arc<Uplinks>, rows: u64) -> anyhow::Result<CopyFigures> {
    if rows == 0 {
        bail!("nothing to COPY: the cloud-only phase committed no readings");
    }
    let copy = tokio::task::spawn_blocking(move || uplinks.copy_text(rows))
        .await
        .context("the COPY text task failed")??;
    copy_rows(pool, copy).await
}

/// Sends `copy` (made by the caller, outside the clock) by one COPY into `emotion_readings`, and
/// times it.
pub async fn copy_rows(pool: &PgPool, copy: CopyText) -> anyhow::Result<CopyFigures> {
    let mut conn = pool.acquire().await.context("a connection for the COPY")?;
    let cpu_before = CpuMark::take(pool).await;
    let started = Instant::now();
    let copied = tokio::time::timeout(COPY_TIMEOUT, async {
        let mut stream = conn.copy_in_raw(COPY_STATEMENT).await?;
        for chunk in copy.text.chunks(CHUNK_BYTES) {
            stream.send(chunk).await?;
        }
        stream.finish().await
    })
    .await
    .map_err(|_| anyhow!("the COPY took more than {COPY_TIMEOUT:?}"))?
    .context("COPY into emotion_readings")?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuMark::take(pool).await.since(&cpu_before);
    if copied != copy.rows {
        bail!("COPY reported {copied} rows, {} were sent", copy.rows);
    }
    Ok(CopyFigures {
        rows: copied,
        bytes: copy.text.len(),
        seconds,
        rows_per_s: per_second(copied, seconds),
        cpu,
    })
}

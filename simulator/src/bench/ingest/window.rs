//! The measurement window of a phase: what is counted at its start and at its end, and the
//! table reset between phases.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use sqlx::PgPool;

use super::usage::{CpuFigures, CpuMark};

/// Longest a count or a TRUNCATE may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The counts at one edge of the window.
#[derive(Debug, Clone)]
pub struct Mark {
    /// When the count's snapshot was taken (just before the statement went out).
    pub at: Instant,
    /// Rows in `emotion_readings`.
    pub committed: u64,
    cpu: CpuMark,
}

/// What happened between two marks.
#[derive(Debug, Clone, Copy)]
pub struct Interval {
    pub seconds: f64,
    pub committed: u64,
    pub committed_per_s: f64,
    pub cpu: CpuFigures,
}

impl Mark {
    pub async fn take(pool: &PgPool) -> anyhow::Result<Self> {
        let cpu = CpuMark::take(pool).await;
        let at = Instant::now();
        let committed = committed(pool).await?;
        Ok(Self { at, committed, cpu })
    }

    /// From `start` to `self`.
    pub fn since(&self, start: &Mark) -> Interval {
        let seconds = self.at.duration_since(start.at).as_secs_f64();
        let committed = self.committed.saturating_sub(start.committed);
        Interval {
            seconds,
            committed,
            committed_per_s: per_second(committed, seconds),
            cpu: self.cpu.since(&start.cpu),
        }
    }
}

/// `count` events over `seconds`, per second; 0 for an empty interval.
pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Rows in `emotion_readings` now.
pub async fn committed(pool: &PgPool) -> anyhow::Result<u64> {
    let count: i64 = tokio::time::timeout(
        STATEMENT_TIMEOUT,
        sqlx::query_scalar("SELECT count(*) FROM emotion_readings").fetch_one(pool),
    )
    .await
    .map_err(|_| anyhow!("counting the readings took more than {STATEMENT_TIMEOUT:?}"))?
    .context("counting the readings")?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Empties `emotion_readings`, so every phase starts from the same table.
pub async fn truncate_readings(pool: &PgPool) -> anyhow::Result<()> {
    tokio::time::timeout(
        STATEMENT_TIMEOUT,
        sqlx::query("TRUNCATE emotion_readings").execute(pool),
    )
    .await
    .map_err(|_| anyhow!("TRUNCATE emotion_readings took more than {STATEMENT_TIMEOUT:?}"))?
    .context("emptying emotion_readings")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_nothing_are_zero() {
        assert_eq!(per_second(100, 0.0), 0.0);
        assert_eq!(per_second(100, 4.0), 25.0);
    }
}

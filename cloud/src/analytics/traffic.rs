//! Traffic (the operator's dashboard): readings arriving minute by minute, their lag from the
//! sensor, and the phones connected now. A minute's figures are shown only when its readings
//! come from at least `k` distinct people ([`MinGroupSize::reveal`](super::MinGroupSize::reveal)):
//! when a phone is active says something about its owner too.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Analytics, Minutes, round1};
use crate::{error::Result, ingest::DEVICE_RETURN_GAP};

/// Readings arriving, minute by minute, and the phones connected now.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestView {
    pub min_group_size: u32,
    pub window_minutes: u32,
    /// Every minute of the window by arrival time, oldest first, the current (partial) minute
    /// last.
    pub series: Vec<IngestMinute>,
    pub connected: ConnectedPhones,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestMinute {
    /// Start of the minute (UTC), by the cloud's arrival time.
    pub minute: DateTime<Utc>,
    /// Readings of fewer than `min_group_size` people (possibly none) arrived in this minute.
    pub suppressed: bool,
    pub readings: Option<i64>,
    pub readings_per_second: Option<f64>,
    /// Median time from the sensor's reading to its storage, in milliseconds (buffering while
    /// offline included).
    pub lag_p50_ms: Option<f64>,
    /// 95th percentile of that lag, in milliseconds.
    pub lag_p95_ms: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectedPhones {
    /// A phone counts as connected when a batch of it arrived this many seconds ago or less
    /// (and it is not revoked).
    pub seen_within_secs: i64,
    /// The connected phones belong to fewer than `min_group_size` people (possibly none).
    pub suppressed: bool,
    pub phones: Option<i64>,
    /// Median time the connected phones have been online without a break, in seconds.
    pub median_online_secs: Option<f64>,
}

#[derive(sqlx::FromRow)]
struct IngestRow {
    minute: DateTime<Utc>,
    people: i64,
    readings: i64,
    lag_p50_ms: Option<f64>,
    lag_p95_ms: Option<f64>,
}

impl Analytics {
    /// Readings stored per minute of the window, their lag, and the phones connected now.
    pub async fn ingest(&self, window: Minutes) -> Result<IngestView> {
        // received_at has a BRIN index (rows arrive in its order), so the window is read alone.
        let rows: Vec<IngestRow> = sqlx::query_as(
            "WITH minutes AS (
                 SELECT generate_series(
                     date_trunc('minute', now()) - make_interval(mins => $1 - 1),
                     date_trunc('minute', now()),
                     interval '1 minute') AS minute
             ), r AS (
                 SELECT date_trunc('minute', received_at) AS minute, user_id,
                        extract(epoch FROM received_at - recorded_at) * 1000 AS lag_ms
                 FROM emotion_readings
                 WHERE received_at >= date_trunc('minute', now()) - make_interval(mins => $1 - 1)
             )
             SELECT m.minute, count(DISTINCT r.user_id) AS people, count(r.user_id) AS readings,
                    (percentile_cont(0.5) WITHIN GROUP (ORDER BY r.lag_ms))::float8 AS lag_p50_ms,
                    (percentile_cont(0.95) WITHIN GROUP (ORDER BY r.lag_ms))::float8 AS lag_p95_ms
             FROM minutes m LEFT JOIN r USING (minute)
             GROUP BY m.minute ORDER BY m.minute",
        )
        .bind(window.sql())
        .fetch_all(&self.pool)
        .await?;
        let seen_within_secs = DEVICE_RETURN_GAP.num_seconds();
        let (phones, people, median_online_secs): (i64, i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT user_id),
                    (percentile_cont(0.5) WITHIN GROUP (
                        ORDER BY extract(epoch FROM now() - online_since)))::float8
             FROM devices
             WHERE revoked_at IS NULL AND last_seen_at >= now() - make_interval(secs => $1)",
        )
        .bind(seen_within_secs as f64)
        .fetch_one(&self.pool)
        .await?;
        let k = self.min_group;
        let series = rows
            .into_iter()
            .map(|r| IngestMinute {
                minute: r.minute,
                suppressed: !k.admits(r.people),
                readings: k.reveal(r.people, r.readings),
                readings_per_second: k.reveal(r.people, round1(r.readings as f64 / 60.0)),
                lag_p50_ms: k.reveal(r.people, r.lag_p50_ms).flatten().map(round1),
                lag_p95_ms: k.reveal(r.people, r.lag_p95_ms).flatten().map(round1),
            })
            .collect();
        Ok(IngestView {
            min_group_size: k.get(),
            window_minutes: window.get(),
            series,
            connected: ConnectedPhones {
                seen_within_secs,
                suppressed: !k.admits(people),
                phones: k.reveal(people, phones),
                median_online_secs: k.reveal(people, median_online_secs).flatten().map(round1),
            },
        })
    }
}

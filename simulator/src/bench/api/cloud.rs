//! The cloud under test: the benchmarks' [`BenchCloud`], with the API's rate limits raised and
//! the database pool sized for the load (see [`start`]).

use crate::bench::cloud::BenchCloud;

/// What the API's rate limits are raised to: far above what one process on this machine can
/// send, so no request of the load is refused with 429 while every request still goes through
/// the limiters' checks, as in production.
pub const RAISED_LIMIT: u32 = 1_000_000;

/// Starts broker and cloud on the scratch database and waits for `/readyz`; the certificates go
/// into the system's temporary directory.
///
/// The settings are the demo's with three changes. `api_rate_admin`, `api_rate_per_user` and
/// `assessments_per_hour` are raised to [`RAISED_LIMIT`]: the load sends thousands of requests
/// a second with the admin token and assesses each person many times an hour, which the
/// production limits (there to stop one caller from taking the service) would refuse; raised,
/// their checks still run on every request, so their cost is in the figures. And
/// `db_max_connections` is `db_connections`, so that the pool is not what the load queues on.
pub async fn start(database_url: &str, db_connections: u32) -> anyhow::Result<BenchCloud> {
    BenchCloud::start(database_url, &std::env::temp_dir(), |settings| {
        settings.api_rate_admin = RAISED_LIMIT;
        settings.api_rate_per_user = RAISED_LIMIT;
        settings.assessments_per_hour = RAISED_LIMIT;
        settings.db_max_connections = db_connections;
    })
    .await
}

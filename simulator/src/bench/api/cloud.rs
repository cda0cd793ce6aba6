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
/// `assessments_per_hour` are raised to [`RAISED_LIMIT`]. The seeding sends as fast as it can
/// with the admin token; the load sends each request with the token of the person it is about,
/// so each person gets the load's rate divided by `--people` (past the production 20 a second
/// when people are few) and is assessed many times an hour (the production limit is 10). The
/// production limits are there to stop one caller from taking the service, and would refuse
/// the load; raised, their checks still run on every request, so their cost is in the figures.
/// And `db_max_connections` is `db_connections`, so that the pool is not what the load queues
/// on.
pub async fn start(database_url: &str, db_connections: u32) -> anyhow::Result<BenchCloud> {
    BenchCloud::start(database_url, &std::env::temp_dir(), |settings| {
        settings.api_rate_admin = RAISED_LIMIT;
        settings.api_rate_per_user = RAISED_LIMIT;
        settings.assessments_per_hour = RAISED_LIMIT;
        settings.db_max_connections = db_connections;
    })
    .await
}

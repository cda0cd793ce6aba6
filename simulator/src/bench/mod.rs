//! Benchmarks: each kind stands up the component under test the way it runs in production and
//! drives it with simulated clients until it reports figures a target can be checked against.
//!
//! [`broker`], [`ingest`], [`api`], [`notify`] and [`edge`] exist so far. What they share lives
//! here, below all of them:
//! [`latency`] (percentiles), [`progress`] (bars on a terminal only), [`open_files`] (the
//! descriptor limit a benchmark with thousands of sockets needs), [`scratch`] (a database of
//! the run's own, dropped however the run ends), [`cloud`] (the embedded broker and the
//! cloud in this process, ready), [`sibling`] (a binary built next to this one, run as a
//! child process that dies with the bench) and [`http1`] (a lean HTTP/1.1 keep-alive client
//! for load that shares the cores with what it measures).

pub mod api;
pub mod broker;
pub mod cloud;
pub mod edge;
pub mod http1;
pub mod ingest;
pub mod latency;
pub mod notify;
pub mod open_files;
pub mod progress;
pub mod scratch;
pub mod sibling;

/// Which component to benchmark.
#[derive(Debug, clap::Subcommand)]
pub enum BenchKind {
    /// The MQTT broker as a child process: connect a fleet of phones over mutual TLS, publish,
    /// restart it under them, and compare with Mosquitto.
    Broker(broker::BrokerBenchArgs),
    /// Phones to Postgres in this process, the cloud alone, and a plain COPY of the same rows:
    /// readings per second, sensor-to-commit lag, CPU and memory, on a scratch database.
    Ingest(ingest::IngestBenchArgs),
    /// The cloud's REST API in this process: credit assessments and person reads per second
    /// and their latency, at most and at half rate, against pgbench on the same Postgres.
    Api(api::ApiBenchArgs),
    /// From an offer accepted to the phone holding the notification that the limit is in
    /// force, at a steady rate of accepts, against one MQTT hop through Mosquitto.
    Notify(notify::NotifyBenchArgs),
    /// One edge agent as its own process: memory and CPU at 100 Hz, bytes per reading on the
    /// wire against JSON, buffer appends against plain SQLite, and a full buffer drained into
    /// the cloud against a plain COPY.
    Edge(edge::EdgeBenchArgs),
}

/// Warns on stderr when this binary was built without optimisations: the figures of a debug
/// build say nothing about production.
pub fn warn_if_debug_build() {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; benchmark figures are meaningless. \
             Build with cargo build --release -p ecs-simulator -p ecs-broker"
        );
    }
}

/// Parses a benchmark's arguments as the command line gives them, for the benches' tests.
#[cfg(test)]
pub(crate) fn parse_args<A: clap::Args>(args: &[&str]) -> Result<A, clap::Error> {
    #[derive(clap::Parser)]
    struct Cli<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    Ok(<Cli<A> as clap::Parser>::try_parse_from([&["bench"], args].concat())?.args)
}

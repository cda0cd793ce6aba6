//! Benchmarks: each kind stands up the component under test the way it runs in production and
//! drives it with simulated clients until it reports figures a target can be checked against.
//!
//! [`broker`] and [`ingest`] exist so far; `api`, `edge` and `notify` are meant to join them as
//! sibling modules and [`BenchKind`] variants. What they share lives here, below all of them:
//! [`latency`] (percentiles), [`progress`] (bars on a terminal only) and [`open_files`] (the
//! descriptor limit a benchmark with thousands of sockets needs).

pub mod broker;
pub mod ingest;
pub mod latency;
pub mod open_files;
pub mod progress;

/// Which component to benchmark.
#[derive(Debug, clap::Subcommand)]
pub enum BenchKind {
    /// The MQTT broker as a child process: connect a fleet of phones over mutual TLS, publish,
    /// restart it under them, and compare with Mosquitto.
    Broker(broker::BrokerBenchArgs),
    /// Phones to Postgres in this process, the cloud alone, and a plain COPY of the same rows:
    /// readings per second, sensor-to-commit lag, CPU and memory, on a scratch database.
    Ingest(ingest::IngestBenchArgs),
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

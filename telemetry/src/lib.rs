//! Process-wide setup shared by every ECS binary: structured logs on stdout and the one TLS
//! crypto provider of the build.
//!
//! Logs are one JSON object per line by default (`ECS_LOG_FORMAT=json`), so a log pipeline can
//! index `request_id`, `user_id` and `device_id` fields; `pretty` is for a human at a terminal.
//! Filtering follows `RUST_LOG` (default `info`).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (the default: for machines).
    #[default]
    Json,
    /// Human-readable, coloured when stdout is a terminal.
    Pretty,
}

/// Installs the global log subscriber. Call once, first thing in `main`; a second call (tests
/// that start several components in one process) is a no-op.
pub fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init(),
    };
    // Already initialised: keep the first subscriber.
    drop(result);
}

/// Installs ring as the process-wide rustls crypto provider.
///
/// rustls 0.23 refuses to pick a provider by itself when the build could contain two; we build
/// with ring only and install it explicitly at the start of every binary and test. Idempotent.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

//! Process-wide setup shared by every ECS binary: structured logs on stdout, the one TLS
//! crypto provider of the build, and graceful-shutdown signals.
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

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Services log to stdout (the platform collects it).
    Stdout,
    /// Interactive tools (the demo) keep stdout for their own report.
    Stderr,
}

/// Installs the global log subscriber on stdout. Call once, first thing in `main`; a second call
/// (tests that start several components in one process) is a no-op.
pub fn init_logs(format: LogFormat) {
    init_logs_with(format, LogTarget::Stdout, "info");
}

/// Like [`init_logs`], choosing the target and the filter used when `RUST_LOG` is unset.
pub fn init_logs_with(format: LogFormat, target: LogTarget, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let writer = move || -> Box<dyn std::io::Write> {
        match target {
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::Stderr => Box::new(std::io::stderr()),
        }
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .with_writer(writer)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(fmt::layer().with_writer(writer).compact())
            .try_init(),
    };
    // Already initialised: keep the first subscriber.
    drop(result);
}

/// Sends panics to the log as one JSON object (message, location, thread) instead of plain
/// text on stderr, so a log pipeline sees them. For binaries, after [`init_logs`]; tests keep
/// the default hook, which the test harness shows with the failure.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        let location = info.location().map(|l| l.to_string());
        let thread = std::thread::current();
        tracing::error!(panic = message, location, thread = thread.name(), "panic");
    }));
}

/// Installs ring as the process-wide rustls crypto provider.
///
/// rustls 0.23 refuses to pick a provider by itself when the build could contain two; we build
/// with ring only and install it explicitly at the start of every binary and test. Idempotent.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what `docker stop` and Kubernetes send), so every
/// binary shuts down gracefully on either.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            // Without a SIGTERM handler, Ctrl-C still works.
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Writing the Prometheus text format (version 0.0.4) by hand, for the components that keep
/// their counters in their own atomics: one `# HELP`/`# TYPE` header per metric, then samples.
pub mod prometheus {
    use std::fmt::Write;

    /// The content type of the format.
    pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

    /// The `# HELP` and `# TYPE` lines of the metric `name` (`kind`: `counter` or `gauge`).
    pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    }

    /// A metric with its header and one sample labelled `labels` (`key="value"` pairs, already
    /// escaped; empty for none).
    pub fn single(
        out: &mut String,
        name: &str,
        kind: &str,
        help: &str,
        labels: &str,
        value: impl std::fmt::Display,
    ) {
        header(out, name, kind, help);
        let _ = if labels.is_empty() {
            writeln!(out, "{name} {value}")
        } else {
            writeln!(out, "{name}{{{labels}}} {value}")
        };
    }
}

//! The model service (`ecs-cloud model-server`): an in-process model served over HTTP, the
//! remote end of [`super::HttpModel`].
//!
//! `POST /v1/score` takes a [`FeatureVector`] and answers a [`RiskScore`]; `GET /healthz` and
//! `GET /metrics` as everywhere. Errors use the cloud's one error type and its one mapping to
//! HTTP (`error.rs`): malformed JSON is a 400, a body of the wrong shape or a vector of another
//! feature schema a 422, an injected failure a 503 with `Retry-After`.
//!
//! Fault injection ([`Faults`]) makes the network's failure modes reproducible for chaos tests
//! and demos: a share of requests answered 503 and a delay added to every request. Both can be
//! changed while the server runs.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::header,
    response::IntoResponse,
    routing::{get, post},
};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tracing::{Instrument, info, info_span, warn};

use super::{FeatureVector, ModelError, RiskModel, RiskScore, build_local};
use crate::{Error, api::ApiJson, app::metrics_handle, config::ModelServerSettings, error::Result};

/// The fail rate is kept in millionths so it fits an atomic integer.
const PER_MILLION: f64 = 1_000_000.0;

/// Failures injected on purpose. Shared with the running server, so a test or an operator can
/// turn them up and down without a restart.
#[derive(Debug, Default)]
pub struct Faults {
    fail_per_million: AtomicU32,
    latency_ms: AtomicU64,
}

impl Faults {
    pub fn new(fail_rate: f64, latency: Duration) -> Self {
        let faults = Self::default();
        faults.set_fail_rate(fail_rate);
        faults.set_latency(latency);
        faults
    }

    /// Share of requests answered 503, clamped to 0–1 (NaN counts as 0).
    pub fn set_fail_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.fail_per_million
            .store((rate * PER_MILLION).round() as u32, Ordering::Relaxed);
    }

    /// Delay added to every scoring request, before it is answered.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms.store(
            u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }

    fn should_fail(&self) -> bool {
        let per_million = self.fail_per_million.load(Ordering::Relaxed);
        per_million > 0 && rand::random_range(0..1_000_000) < per_million
    }
}

#[derive(Clone)]
struct ServerState {
    model: Arc<dyn RiskModel>,
    faults: Arc<Faults>,
    /// Scoring requests received, whatever became of them (tests assert a breaker sent none).
    requests: Arc<AtomicU64>,
}

/// The model service's routes.
fn router(state: ServerState) -> Router {
    Router::new()
        .route("/v1/score", post(score))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .with_state(state)
        .layer(TraceLayer::new_for_http())
}

async fn score(
    State(state): State<ServerState>,
    body: Result<ApiJson<FeatureVector>, Error>,
) -> Result<Json<RiskScore>> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let latency = state.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if state.faults.should_fail() {
        metrics::counter!("ecs_model_server_requests_total", "outcome" => "injected_failure")
            .increment(1);
        return Err(Error::Unavailable("risk model (injected failure)"));
    }
    let ApiJson(features) = body.inspect_err(|_| {
        metrics::counter!("ecs_model_server_requests_total", "outcome" => "refused").increment(1);
    })?;
    let scored = state.model.score(&features).await;
    let scored = scored.and_then(|s| s.validate().map(|()| s));
    let outcome = match &scored {
        Ok(_) => "scored",
        Err(ModelError::SchemaMismatch { .. }) => "refused",
        Err(_) => "error",
    };
    metrics::counter!("ecs_model_server_requests_total", "outcome" => outcome).increment(1);
    Ok(Json(scored.map_err(into_error)?))
}

/// A model's error as the service's answer: the caller's mistake is a 422 that says what is
/// wrong; the model's own trouble is a 503 or a 500 whose details stay in the log.
fn into_error(e: ModelError) -> Error {
    match e {
        ModelError::SchemaMismatch { .. } => Error::InvalidInput(e.to_string()),
        ModelError::Unavailable(_) => {
            warn!(error = %e, "local model unavailable");
            Error::Unavailable("risk model")
        }
        ModelError::InvalidScore(_) => Error::Internal(e.to_string()),
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    model_name: String,
    model_version: String,
}

async fn healthz(State(state): State<ServerState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        model_name: state.model.name().to_owned(),
        model_version: state.model.version().to_owned(),
    })
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            ecs_telemetry::prometheus::CONTENT_TYPE,
        )],
        metrics_handle().render(),
    )
}

async fn not_found() -> Error {
    Error::NotFound("route")
}

/// A running model service.
pub struct RunningModelServer {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    requests: Arc<AtomicU64>,
    shutdown: CancellationToken,
    /// `None` once it has been awaited to the end (a finished handle must not be polled again).
    task: Option<JoinHandle<()>>,
}

impl RunningModelServer {
    /// The injected failures, adjustable while running.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Scoring requests received so far.
    pub fn requests_seen(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resolves when the server stops by itself (only on a fatal error).
    pub async fn wait(&mut self) {
        if let Some(task) = &mut self.task {
            let _ = task.await;
            self.task = None;
        }
    }

    /// Stops accepting, lets requests in flight finish (at most 10 s), then ends.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let Some(mut task) = self.task.take() else {
            return;
        };
        if tokio::time::timeout(Duration::from_secs(10), &mut task)
            .await
            .is_err()
        {
            warn!("model server did not stop within 10 s; aborting it");
            task.abort();
        }
    }
}

/// Starts the service described by `settings` (for `ecs-cloud model-server`).
pub async fn spawn(settings: &ModelServerSettings) -> Result<RunningModelServer> {
    let model = build_local(settings.kind, settings.file.as_deref(), settings.seed)?;
    let faults = Faults::new(settings.fail_rate, settings.latency());
    start(model, settings.addr, faults).await
}

/// Serves `model` on `addr` (port 0 picks a free one) until stopped.
pub async fn start(
    model: Arc<dyn RiskModel>,
    addr: SocketAddr,
    faults: Faults,
) -> Result<RunningModelServer> {
    // Install the process's metrics recorder now, so counts start with the first request
    // rather than with the first scrape.
    let _ = metrics_handle();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::InvalidInput(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let state = ServerState {
        model,
        faults: Arc::new(faults),
        requests: Arc::new(AtomicU64::new(0)),
    };
    info!(
        %addr,
        model = state.model.name(),
        version = state.model.version(),
        fail_rate = f64::from(state.faults.fail_per_million.load(Ordering::Relaxed)) / PER_MILLION,
        latency_ms = state.faults.latency().as_millis() as u64,
        "model server started"
    );
    let faults = state.faults.clone();
    let requests = state.requests.clone();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let app = router(state);
    let task = tokio::spawn(
        async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "model server failed");
            }
        }
        .instrument(info_span!("model_server")),
    );
    Ok(RunningModelServer {
        addr,
        faults,
        requests,
        shutdown,
        task: Some(task),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rates_are_clamped_and_extremes_are_exact() {
        let faults = Faults::new(1.0, Duration::ZERO);
        assert!((0..1_000).all(|_| faults.should_fail()));
        faults.set_fail_rate(0.0);
        assert!((0..1_000).all(|_| !faults.should_fail()));
        faults.set_fail_rate(7.0);
        assert!(faults.should_fail());
        faults.set_fail_rate(f64::NAN);
        assert!(!faults.should_fail());
        faults.set_latency(Duration::from_millis(250));
        assert_eq!(faults.latency(), Duration::from_millis(250));
    }
}

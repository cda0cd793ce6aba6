//! The admin endpoint, on a loopback address: `GET /metrics` (Prometheus text), `GET /healthz`
//! (the device listener accepts connections), `GET /status` (JSON for `ecs-broker status`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::door::Door;

/// How long `/healthz` waits for the device listener to take its probe connection.
const PROBE_WAIT: Duration = Duration::from_secs(2);
/// Connections listed as top talkers in `/status`.
const TOP_TALKERS: usize = 10;

#[derive(Clone)]
struct AdminState {
    door: Arc<Door>,
    device_addr: SocketAddr,
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    door: Arc<Door>,
    device_addr: SocketAddr,
    shutdown: CancellationToken,
) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .with_state(AdminState { door, device_addr });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "admin endpoint stopped");
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            ecs_telemetry::prometheus::CONTENT_TYPE,
        )],
        state.door.metrics.render(),
    )
}

/// 200 when the device listener took a probe connection within [`PROBE_WAIT`], else 503: a
/// listener that stopped accepting is a broker to restart.
async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.door.probes.probe(state.device_addr, PROBE_WAIT).await {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the device listener is not accepting connections\n",
        )
    }
}

async fn status(State(state): State<AdminState>) -> impl IntoResponse {
    axum::Json(state.door.metrics.status(TOP_TALKERS))
}

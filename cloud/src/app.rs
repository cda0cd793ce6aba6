//! Wiring: builds every part of the cloud from [`Settings`] and runs them until shutdown.
//!
//! Tests and the all-in-one demo start the very same app on ephemeral ports ([`spawn`]), so what
//! they exercise is what production runs.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::{PgPool, migrate::MigrateDatabase, postgres::PgPoolOptions};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    Error,
    api::{self, AppState},
    auth::Authenticator,
    config::Settings,
    error::Result,
    ingest::Ingest,
    model,
    mqtt::BrokerLink,
    notify::Notifier,
    offers::{Assessor, OfferWorker},
    policy::CreditPolicy,
};

/// Capacity of the queue between the broker link and ingest: when full, the link stops reading
/// from the broker (backpressure) instead of buffering without bound.
const INBOUND_QUEUE: usize = 1_024;

/// Creates the database if it does not exist, then applies pending migrations.
pub async fn migrate(database_url: &str) -> Result<()> {
    if !sqlx::Postgres::database_exists(database_url).await? {
        info!("creating database");
        sqlx::Postgres::create_database(database_url).await?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await?;
    crate::MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| Error::Internal(format!("migration failed: {e}")))?;
    pool.close().await;
    info!("migrations applied");
    Ok(())
}

/// The Prometheus recorder is process-global; install it once and share the handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding several components);
            // then this handle renders nothing, which only affects /metrics of that process.
            if metrics::set_global_recorder(recorder).is_err() {
                warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// A running cloud replica.
pub struct RunningApp {
    pub http_addr: SocketAddr,
    pub pool: PgPool,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningApp {
    /// Resolves when any task ends by itself (which only happens on shutdown or a fatal error).
    pub async fn wait(&mut self) {
        let _ = self.tasks.join_next().await;
    }

    /// Stops every task gracefully: in-flight requests and messages finish first.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("tasks did not stop within 10 s; aborting them");
            self.tasks.abort_all();
        }
        self.pool.close().await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts a replica: HTTP API, broker link, ingest, offer worker and notifier.
///
/// Postgres being down at start is not fatal: the pool connects lazily, `/readyz` says 503, and
/// every part retries (so is a model service being down: the circuit breaker handles it). A
/// missing admin token, an unreadable secret file or a bad model file is fatal.
pub async fn spawn(settings: Settings) -> Result<RunningApp> {
    let admin_token = settings
        .admin_token()
        .map_err(|e| Error::InvalidInput(format!("cannot read the admin token file: {e}")))?
        .ok_or_else(|| {
            Error::InvalidInput("ECS_ADMIN_TOKEN (or ECS_ADMIN_TOKEN_FILE) must be set".into())
        })?;
    // Before anything connects: a bad model file is a configuration error, reported at once.
    let model = model::build(&settings.model)?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&settings.database_url)?;
    let auth = Arc::new(Authenticator::new(&admin_token, pool.clone())?);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let link = BrokerLink::start(&settings.mqtt, inbound_tx, shutdown.clone()).await?;
    let client = link.client();

    let notifier = Notifier::new(pool.clone(), client.clone(), settings.notify_resend());
    let notifier_wake = notifier.wake_handle();
    tasks.spawn(
        notifier
            .run(shutdown.clone())
            .instrument(info_span!("notifier")),
    );

    let ingest = Ingest::new(pool.clone()).with_device_seen(notifier_wake.clone());
    tasks.spawn(
        ingest
            .run(
                client,
                inbound_rx,
                settings.ingest_concurrency,
                shutdown.clone(),
            )
            .instrument(info_span!("ingest")),
    );

    let worker = OfferWorker {
        pool: pool.clone(),
        notifier: notifier_wake,
        poll_interval: settings.worker_poll(),
    };
    tasks.spawn(
        worker
            .run(shutdown.clone())
            .instrument(info_span!("offer_worker")),
    );

    let assessor = Arc::new(Assessor {
        pool: pool.clone(),
        model,
        policy: CreditPolicy::default(),
        offer_ttl: Duration::from_secs(u64::from(settings.offer_ttl_hours) * 3600),
    });
    let link = Arc::new(link);
    let state = AppState {
        pool: pool.clone(),
        auth,
        assessor,
        broker_connected: Arc::new(move || link.is_connected()),
        metrics: metrics_handle(),
    };
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .map_err(|e| {
            Error::InvalidInput(format!("cannot listen on {}: {e}", settings.http_addr))
        })?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let router = api::router(state);
    let stop = shutdown.clone();
    tasks.spawn(
        async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }
        .instrument(info_span!("http_server")),
    );
    info!(%http_addr, mqtt = %settings.mqtt.url, model = ?settings.model.kind, "cloud started");
    Ok(RunningApp {
        http_addr,
        pool,
        shutdown,
        tasks,
    })
}

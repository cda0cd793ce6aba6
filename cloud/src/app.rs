//! Wiring: builds every part of the cloud from [`Settings`] and runs them until shutdown.
//!
//! Tests and the all-in-one demo start the very same app on ephemeral ports ([`spawn`]), so what
//! they exercise is what production runs.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::{PgPool, migrate::MigrateDatabase, postgres::PgPoolOptions};
use tokio::task::{self, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::{
    Error,
    analytics::Analytics,
    api::{self, AppState},
    auth::{ApiRates, Authenticator},
    config::Settings,
    error::Result,
    ingest::Ingest,
    model,
    mqtt::BrokerLink,
    notify::Notifier,
    offers::{AssessmentLimit, Assessor, OfferWorker},
    policy::CreditPolicy,
    revocations::RevocationPublisher,
};

/// Capacity of the queue between the broker link and ingest: when full, the link stops reading
/// from the broker (backpressure) instead of buffering without bound.
/// Messages waiting and none taken by ingest for this long: `/readyz` answers 503.
const INGEST_STALL: Duration = Duration::from_secs(30);

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

/// How long [`RunningApp::stop`] lets the components finish before aborting them.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often names and thoughts found in the clear are sealed after the pass at start (a lookup
/// by a partial index that is empty once everything is sealed).
const SEAL_LEGACY_EVERY: Duration = Duration::from_secs(600);
/// How long [`RunningApp::kill`] waits for the database connections to close.
const KILL_POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// A running cloud replica. Every long-running part of it (HTTP server, broker link, ingest,
/// offer worker, notifier, retention, revocation publisher) is one task here: none lives on its own. End it with
/// [`stop`](Self::stop); dropping it aborts every component without waiting.
pub struct RunningApp {
    pub http_addr: SocketAddr,
    pub pool: PgPool,
    shutdown: CancellationToken,
    components: Components,
}

/// A component ended while the replica was meant to be running.
#[derive(Debug)]
pub struct ComponentStopped {
    /// Which one: `http_server`, `mqtt_link`, `ingest`, `offer_worker`, `notifier`, `retention`,
    /// `revocation_publisher`, `token_revocations`, ...
    pub component: &'static str,
    /// The panic message, when it panicked.
    pub panic: Option<String>,
}

impl std::fmt::Display for ComponentStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "component {} stopped unexpectedly", self.component)?;
        match &self.panic {
            Some(panic) => write!(f, ": it panicked: {panic}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ComponentStopped {}

impl RunningApp {
    /// Resolves when a component ends by itself, and names it. Before [`stop`](Self::stop) that
    /// is always a failure (a panic, or a component that gave up): the replica no longer does all
    /// of its work, and the process should stop and be restarted.
    pub async fn wait(&mut self) -> ComponentStopped {
        match self.components.next().await {
            Some((component, Err(e))) if e.is_panic() => ComponentStopped {
                component,
                panic: Some(panic_message(e)),
            },
            Some((component, _)) => ComponentStopped {
                component,
                panic: None,
            },
            None => std::future::pending().await,
        }
    }

    /// Stops every component gracefully: in-flight requests and messages finish (and are acked),
    /// the broker link leaves the broker last, after ingest's last acks. Components still running
    /// after 10 s are aborted.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(STOP_TIMEOUT, async {
            while let Some((component, done)) = self.components.next().await {
                if let Err(e) = done
                    && e.is_panic()
                {
                    error!(component, panic = %panic_message(e), "a component panicked while stopping");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(still_running = ?self.components.running(), "components did not stop within 10 s; aborting them");
            self.components.abort_all().await;
        }
        self.pool.close().await;
    }

    /// Ends the replica the way a crash would, **for tests and chaos experiments only** (a
    /// process that must stop calls [`stop`](Self::stop)).
    ///
    /// Every component is aborted at once, with nothing drained or finished: batches committed
    /// but not yet acked stay unacked, messages queued between the broker link and ingest are
    /// lost, notifications being published are not. The broker connection is dropped without a
    /// DISCONNECT (the broker sees the TCP connection close, and its clean session, subscription
    /// included, goes with it: no half-alive client keeps taking a share of the uplinks). Returns
    /// once every component is gone; the database pool is then closed.
    ///
    /// Only the HTTP connections already accepted may outlive it briefly (axum serves each on a
    /// task of its own); they find the pool closed.
    pub async fn kill(mut self) {
        self.components.abort_all().await;
        // Nothing of ours is left to react to it; a helper a component spawned on its own (the
        // offer worker's outbox listener) ends on it.
        self.shutdown.cancel();
        let _ = tokio::time::timeout(KILL_POOL_TIMEOUT, self.pool.close()).await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// The replica's tasks, by name.
#[derive(Default)]
struct Components {
    tasks: JoinSet<()>,
    names: HashMap<task::Id, &'static str>,
}

impl Components {
    fn spawn(&mut self, name: &'static str, component: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(component);
        self.names.insert(handle.id(), name);
    }

    /// The next component to end, and how it ended.
    async fn next(&mut self) -> Option<(&'static str, Result<(), task::JoinError>)> {
        let (id, done) = match self.tasks.join_next_with_id().await? {
            Ok((id, ())) => (id, Ok(())),
            Err(e) => (e.id(), Err(e)),
        };
        Some((self.names.remove(&id).unwrap_or("component"), done))
    }

    fn running(&self) -> Vec<&'static str> {
        self.names.values().copied().collect()
    }

    /// Aborts every task and returns once all of them are gone (their futures dropped).
    async fn abort_all(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.names.clear();
    }
}

fn panic_message(e: task::JoinError) -> String {
    let panic = e.into_panic();
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

/// Starts a replica: HTTP API, broker link, ingest, offer worker, notifier, retention and the
/// revocation publisher.
///
/// Postgres being down at start is not fatal: the pool connects lazily, `/readyz` says 503, and
/// every part retries (so is a model service being down: the circuit breaker handles it). A
/// missing admin token, an unreadable secret file or a bad model file is fatal.
pub async fn spawn(settings: Settings) -> Result<RunningApp> {
    let pool = crate::db::pool(&settings.database_url, settings.db_max_connections)?;
    start(settings, pool).await
}

/// [`spawn`] on a pool of the caller's (`settings.database_url` is not used).
async fn start(settings: Settings, pool: PgPool) -> Result<RunningApp> {
    let admin_token = settings
        .admin_token()
        .map_err(|e| Error::InvalidInput(format!("cannot read the admin token file: {e}")))?
        .ok_or_else(|| {
            Error::InvalidInput("ECS_ADMIN_TOKEN (or ECS_ADMIN_TOKEN_FILE) must be set".into())
        })?;
    // Before anything connects: a bad model file or a missing master key is a configuration
    // error, reported at once.
    let model = model::build(&settings.model)?;
    let keyring = Arc::new(settings.keys.keyring()?);
    let rates = ApiRates {
        per_user: f64::from(settings.api_rate_per_user),
        per_user_burst: 2.0 * f64::from(settings.api_rate_per_user),
        admin: f64::from(settings.api_rate_admin),
        admin_burst: 2.0 * f64::from(settings.api_rate_admin),
    };
    let auth = Arc::new(Authenticator::with_rates(
        &admin_token,
        pool.clone(),
        rates,
    )?);
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .map_err(|e| {
            Error::InvalidInput(format!("cannot listen on {}: {e}", settings.http_addr))
        })?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let shutdown = CancellationToken::new();
    let mut components = Components::default();

    // Resolved tokens are remembered only while this listens for their revocations.
    components.spawn(
        "token_revocations",
        crate::auth::cache::listen(auth.tokens().clone(), pool.clone(), shutdown.clone())
            .instrument(info_span!("token_revocations")),
    );

    // Two connections: uplinks in (held back while ingest's queue is full), and everything this
    // replica publishes out, so an ack never waits behind inbound traffic.
    let (intake, dispatch) = crate::ingest::queue::channel();
    let (link, driver) = BrokerLink::new(&settings.mqtt, intake.clone(), shutdown.clone())?;
    components.spawn("mqtt_link", driver.run());
    let publishers_done = CancellationToken::new();
    let (out_link, out_driver) =
        BrokerLink::publisher(&settings.mqtt, publishers_done.clone(), shutdown.clone())?;
    let client = out_link.client();
    components.spawn("mqtt_publisher", out_driver.run());

    let revocations =
        RevocationPublisher::new(pool.clone(), &out_link, settings.revocation_resend());
    components.spawn(
        "revocation_publisher",
        revocations
            .run(shutdown.clone())
            .instrument(info_span!("revocation_publisher")),
    );

    let notifier = Notifier::new(pool.clone(), client.clone(), settings.notify_resend());
    let notifier_wake = notifier.wake_handle();
    components.spawn(
        "notifier",
        notifier
            .run(shutdown.clone())
            .instrument(info_span!("notifier")),
    );

    // Group commit: many devices' batches per transaction. Its task ends after ingest's last
    // batch (when ingest, the only holder of the committer, has stopped).
    let (committer, commit_task) = crate::ingest::GroupCommitter::new(pool.clone());
    components.spawn(
        "group_commit",
        commit_task.instrument(info_span!("group_commit")),
    );
    let keys = crate::keys::KeyCache::new(keyring.clone());
    let ingest = Ingest::new(pool.clone(), keys.clone())
        .with_device_seen(notifier_wake.clone())
        .with_group_commit(committer);
    let ingest_run = ingest.run(
        client,
        dispatch,
        settings.ingest_concurrency,
        shutdown.clone(),
    );
    components.spawn(
        "ingest",
        async move {
            ingest_run.await;
            // Ingest's last acks are queued: the publisher link may send them and leave.
            publishers_done.cancel();
        }
        .instrument(info_span!("ingest")),
    );

    let worker = OfferWorker {
        pool: pool.clone(),
        notifier: notifier_wake.clone(),
        poll_interval: settings.worker_poll(),
    };
    components.spawn(
        "offer_worker",
        worker
            .run(shutdown.clone())
            .instrument(info_span!("offer_worker")),
    );

    let retention = crate::retention::Retention {
        readings_days: settings.reading_retention_days,
        dead_letters_days: settings.dead_letter_retention_days,
    };
    components.spawn(
        "retention",
        retention
            .run(pool.clone(), shutdown.clone())
            .instrument(info_span!("retention")),
    );

    let assessor = Arc::new(Assessor {
        pool: pool.clone(),
        model,
        policy: CreditPolicy::default(),
        offer_ttl: Duration::from_secs(u64::from(settings.offer_ttl_hours) * 3600),
        limit: AssessmentLimit {
            max: settings.assessments_per_hour,
            period: Duration::from_secs(3600),
        },
    });
    // Group commit of the API's assessments: its task ends after the last group, once the
    // HTTP server (whose state holds the recorder) has stopped.
    let (offers, offers_task) = crate::offers::Recorder::new(assessor.clone());
    components.spawn(
        "assessment_commit",
        offers_task.instrument(info_span!("assessment_commit")),
    );
    // Names and thoughts stored in the clear before encryption existed are sealed in the
    // background (reads open either form meanwhile), so a big table does not hold the
    // replica's start. Again every few minutes: during a rolling upgrade, replicas of the older
    // version still write them in the clear until they stop.
    {
        let (pool, keyring, stop) = (pool.clone(), keyring.clone(), shutdown.clone());
        components.spawn(
            "seal_legacy",
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        sealed = crate::keys::seal_legacy_names(&pool, &keyring) => match sealed {
                            Ok(0) => {}
                            Ok(n) => info!(sealed = n, "sealed names stored in the clear"),
                            Err(e) => warn!(error = %e, "sealing names stored in the clear failed; trying again later"),
                        },
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        sealed = crate::privacy::thoughts::seal_legacy(&pool, &keys) => match sealed {
                            Ok(done) if done == Default::default() => {}
                            Ok(done) => info!(
                                readings = done.sealed,
                                people_skipped = done.people_skipped,
                                "sealed thoughts stored in the clear"
                            ),
                            Err(e) => warn!(error = %e, "sealing thoughts stored in the clear failed; trying again later"),
                        },
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(SEAL_LEGACY_EVERY) => {}
                    }
                }
            }
            .instrument(info_span!("seal_legacy")),
        );
    }
    if settings.proactive.enabled {
        let proactive = crate::proactive::ProactiveOffers {
            assessor: assessor.clone(),
            rule: settings.proactive.rule(),
            notifier: notifier_wake.clone(),
            scan_interval: settings.proactive.scan_interval(),
            batch: 100,
            deferred: Default::default(),
        };
        components.spawn(
            "proactive_offers",
            proactive
                .run(shutdown.clone())
                .instrument(info_span!("proactive_offers")),
        );
    }
    let (link, out_link) = (Arc::new(link), Arc::new(out_link));
    let state = AppState {
        pool: pool.clone(),
        auth,
        assessor,
        offers,
        // Ready means receiving (connected *and* subscribed to the uplinks) and able to publish
        // acks, with ingest taking messages (not stalled with a queue waiting).
        broker_connected: Arc::new(move || link.is_ready() && out_link.is_ready()),
        ingest_flowing: Arc::new(move || !intake.stalled(INGEST_STALL)),
        metrics: metrics_handle(),
        analytics: Analytics::new(pool.clone(), settings.analytics_min_group),
        idempotency: crate::idempotency::ServerKey::derive_from(&admin_token),
        keyring,
    };
    let router = api::router(state);
    let (stop, http_limits) = (shutdown.clone(), settings.listener.limits());
    components.spawn(
        "http_server",
        async move {
            crate::http_server::serve(listener, router, http_limits, stop).await;
        }
        .instrument(info_span!("http_server")),
    );
    info!(%http_addr, mqtt = %settings.mqtt.url, model = ?settings.model.kind, "cloud started");
    Ok(RunningApp {
        http_addr,
        pool,
        shutdown,
        components,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::mqtt::testing::{
        TestClient, WAIT, assert_only_subscriber_of, settings as mqtt_settings,
    };

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    /// A replica on the test broker (in a shared-subscription group of its own) and `pool`.
    async fn replica(pool: PgPool, group: &str) -> RunningApp {
        let mut settings = Cli::try_parse_from([
            "ecs-cloud",
            "--admin-token",
            "admin-secret-0123456789",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .unwrap()
        .settings;
        settings.keys.master_key = Some(crate::keys::MasterKey::random().to_hex());
        settings.mqtt = mqtt_settings(group);
        start(settings, pool).await.unwrap()
    }

    /// Polls `/readyz` until it answers 200, and returns its body.
    async fn ready(app: &RunningApp) -> serde_json::Value {
        let url = format!("http://{}/readyz", app.http_addr);
        let http = reqwest::Client::new();
        tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(response) = http.get(&url).send().await
                    && response.status().is_success()
                {
                    return response.json().await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the replica never became ready")
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_killed_replica_is_gone_from_the_broker_at_once(pool: PgPool) {
        let group = format!("test{}", uuid::Uuid::new_v4().simple());
        let app = replica(pool, &group).await;
        let readiness = ready(&app).await;
        assert_eq!(readiness["broker"], true, "{readiness}");
        let addr = app.http_addr;

        tokio::time::timeout(WAIT, app.kill())
            .await
            .expect("kill did not return");
        // No half-alive connection keeps taking a share of the group's uplinks, and the API no
        // longer listens.
        assert_only_subscriber_of(&group).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_stopped_replica_has_left_the_broker_when_stop_returns(pool: PgPool) {
        let group = format!("test{}", uuid::Uuid::new_v4().simple());
        let app = replica(pool, &group).await;
        ready(&app).await;
        tokio::time::timeout(Duration::from_secs(15), app.stop())
            .await
            .expect("stop did not return");
        assert_only_subscriber_of(&group).await;
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_device_revoked_through_the_api_is_cut_off_at_the_broker(pool: PgPool) {
        use ecs_protocol::{Control, decode_control, topic};

        let mut broker = TestClient::connect(Some(&topic::revocations())).await;
        let (user_id, phone) = crate::ingest::fixtures::user_with_device(&pool).await;
        let app = replica(pool, &format!("test{}", uuid::Uuid::new_v4().simple())).await;
        ready(&app).await;

        let revoked = reqwest::Client::new()
            .delete(format!(
                "http://{}/v1/users/{user_id}/devices/{phone}",
                app.http_addr
            ))
            .bearer_auth("admin-secret-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(revoked.status(), reqwest::StatusCode::NO_CONTENT);

        // The broker hears of it (other tests publish their lists on the same topic).
        tokio::time::timeout(WAIT, async {
            loop {
                let message = broker.received.recv().await.expect("test client stopped");
                let Control::RevocationsV1(list) = decode_control(&message.payload).unwrap();
                if list.device_ids.contains(&phone) {
                    return;
                }
            }
        })
        .await
        .expect("the broker was not told of the revocation");
        app.stop().await;
    }

    #[test]
    fn a_stopped_component_is_named_and_its_panic_told() {
        let stopped = ComponentStopped {
            component: "ingest",
            panic: Some("boom".into()),
        };
        assert_eq!(
            stopped.to_string(),
            "component ingest stopped unexpectedly: it panicked: boom"
        );
    }

    #[tokio::test]
    async fn components_are_named_when_they_end() {
        let mut components = Components::default();
        components.spawn("quiet", std::future::pending());
        components.spawn("crashing", async { panic!("boom") });
        let (name, done) = components.next().await.unwrap();
        assert_eq!(name, "crashing");
        assert_eq!(panic_message(done.unwrap_err()), "boom");
        assert_eq!(components.running(), vec!["quiet"]);
        components.abort_all().await;
        assert!(components.running().is_empty());
    }
}

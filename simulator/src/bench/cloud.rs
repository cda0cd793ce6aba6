//! The cloud under test, for the benchmarks that run it in this process: the embedded broker
//! (fresh certificate authority and service password, free loopback ports) and
//! `ecs_cloud::app::spawn` with the settings the demo's stack uses, which a bench may adjust
//! (see [`BenchCloud::start`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use ecs_broker::{RunningBroker, Secret};
use ecs_cloud::{
    app::{self, RunningApp},
    config::{ModelSettings, Settings},
    model::ModelKind,
};

use crate::stack::{EmbeddedBroker, random_secret};

/// How long the cloud gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker gets to stop.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom a client logs in to the broker's service listener (plain MQTT on
/// loopback, as the cloud does).
#[derive(Debug, Clone)]
pub struct ServiceLogin {
    pub addr: SocketAddr,
    pub username: String,
    pub password: Secret,
}

/// A running broker and cloud, and how to reach them.
pub struct BenchCloud {
    app: RunningApp,
    broker: RunningBroker,
    /// Holds the broker's certificates until the broker has stopped.
    _pki_dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub base_url: String,
    /// The API's address (`base_url`'s), for clients that take no URL.
    pub http_addr: std::net::SocketAddr,
    pub admin_token: String,
    /// The broker's service listener, with the login the cloud uses.
    pub service: ServiceLogin,
}

impl BenchCloud {
    /// Starts broker and cloud on `database_url` and waits for `/readyz`. The certificates go
    /// into a fresh directory in `pki_parent`, removed when the cloud is dropped.
    ///
    /// The cloud's settings are the demo's (scorecard model, seed 7, a random admin token),
    /// passed through `adjust` before the cloud starts.
    pub async fn start(
        database_url: &str,
        pki_parent: &Path,
        adjust: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        let pki_dir = tempfile::Builder::new()
            .prefix("ecs-bench-pki-")
            .tempdir_in(pki_parent)
            .with_context(|| {
                format!(
                    "creating a directory for the certificates in {}",
                    pki_parent.display()
                )
            })?;
        let embedded = EmbeddedBroker::start(pki_dir.path().join("pki")).await?;
        let service = ServiceLogin {
            addr: embedded.broker.service_addr(),
            username: embedded.username.clone(),
            password: Secret::new(embedded.password.clone()),
        };
        let admin_token = random_secret();
        let settings = settings(database_url, &embedded, admin_token.clone());
        let broker = embedded.broker;
        let app = match settings {
            Ok(mut settings) => {
                adjust(&mut settings);
                app::spawn(settings).await.context("starting the cloud")
            }
            Err(e) => Err(e),
        };
        let app = match app {
            Ok(app) => app,
            Err(e) => {
                stop_broker(broker).await;
                return Err(e);
            }
        };
        let cloud = Self {
            base_url: format!("http://{}", app.http_addr),
            http_addr: app.http_addr,
            app,
            broker,
            _pki_dir: pki_dir,
            admin_token,
            service,
        };
        if let Err(e) = crate::stack::wait_ready(&cloud.base_url, READY_TIMEOUT).await {
            cloud.stop().await;
            return Err(e);
        }
        Ok(cloud)
    }

    /// Stops the cloud, then the broker it is connected to.
    pub async fn stop(self) {
        self.app.stop().await;
        stop_broker(self.broker).await;
    }
}

/// The settings `Stack::start` gives the demo's cloud, on this broker.
fn settings(
    database_url: &str,
    broker: &EmbeddedBroker,
    admin_token: String,
) -> anyhow::Result<Settings> {
    let model = ModelSettings {
        kind: ModelKind::Scorecard,
        seed: Some(7),
        ..ModelSettings::default()
    };
    crate::stack::cloud_settings(database_url, admin_token, broker.cloud_login(), model)
}

async fn stop_broker(broker: RunningBroker) {
    let stopped = tokio::time::timeout(
        BROKER_STOP_TIMEOUT,
        tokio::task::spawn_blocking(move || broker.stop()),
    )
    .await;
    if stopped.is_err() {
        tracing::warn!("the broker did not stop within {BROKER_STOP_TIMEOUT:?}");
    }
}

//! A fleet of phones against a running system (docker-compose, a staging cloud): provisions
//! people and devices through the API once, then keeps their edge agents streaming.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use chrono::Utc;
use ecs_broker::PkiDir;
use ecs_edge_agent::{Agent, AgentConfig, BrokerUrl, TlsFiles, sensor::Archetype};
use ecs_protocol::DeviceId;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{history, mobile::ApiClient};

/// One provisioned person and phone. The roster file holds the users' API tokens, so the
/// mobile-app simulator can act as them; keep it as private as the tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RosterEntry {
    pub name: String,
    pub user_id: Uuid,
    pub api_token: String,
    pub device_id: String,
    /// The kind of person simulated ([`Archetype::for_index`] of the entry's place). Known to
    /// the simulator only: the cloud is never told. Absent in rosters written before archetypes
    /// (those phones keep the persona drawn from their seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archetype: Option<Archetype>,
}

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub api_url: String,
    pub admin_token: String,
    pub mqtt_url: BrokerUrl,
    /// The CA (certificate and key) that issues device certificates; needed for mqtts://.
    pub pki_dir: Option<PathBuf>,
    pub devices: usize,
    /// SQLite buffers, device certificates and `roster.json` live here.
    pub dir: PathBuf,
    pub sample_rate_hz: f64,
    pub seed: u64,
}

pub fn roster_path(dir: &std::path::Path) -> PathBuf {
    dir.join("roster.json")
}

/// Reads the roster, or provisions one through the API and writes it (so a restarted fleet
/// keeps its people and devices).
async fn roster(options: &FleetOptions) -> anyhow::Result<Vec<RosterEntry>> {
    let path = roster_path(&options.dir);
    if path.exists() {
        let raw = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_str(&raw).with_context(|| format!("parsing {}", path.display()));
    }
    let admin = ApiClient::new(&options.api_url, &options.admin_token)?;
    let mut roster = Vec::new();
    for i in 0..options.devices {
        let seed = options.seed.wrapping_add(i as u64);
        let archetype = Archetype::for_index(i);
        let name = format!("Fleet person {}", i + 1);
        let user = admin.create_user(&name, true).await?;
        admin
            .record_transactions(
                user.user_id,
                &history::generate(archetype, seed, Utc::now()),
            )
            .await?;
        let device = admin.register_device(user.user_id, None).await?;
        roster.push(RosterEntry {
            name,
            user_id: user.user_id,
            api_token: user.api_token,
            device_id: device.device_id,
            archetype: Some(archetype),
        });
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&roster)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    Ok(roster)
}

/// Issues (once) the device's certificate from the CA into the fleet directory.
fn device_tls(options: &FleetOptions, device: &DeviceId) -> anyhow::Result<Option<TlsFiles>> {
    let Some(pki_dir) = &options.pki_dir else {
        return Ok(None);
    };
    let pki = PkiDir::new(pki_dir.clone());
    let certs = options.dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let cert_file = certs.join(format!("{device}.pem"));
    let key_file = certs.join(format!("{device}.key"));
    if !cert_file.exists() || !key_file.exists() {
        let issued = pki.load_ca()?.issue_device(device)?;
        std::fs::write(&cert_file, issued.cert_pem)?;
        write_private(&key_file, issued.key_pem.as_bytes())?;
    }
    Ok(Some(TlsFiles {
        ca_file: pki.ca_cert_path(),
        cert_file,
        key_file,
    }))
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// Provisions (if needed) and runs the fleet until `shutdown`.
pub async fn run(options: FleetOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let roster = roster(&options).await?;
    let mut agents = Vec::new();
    for (i, entry) in roster.iter().enumerate() {
        let device = DeviceId::parse(entry.device_id.clone())?;
        let mut config = AgentConfig::new(device.clone(), options.mqtt_url.clone());
        config.tls = device_tls(&options, &device)?;
        config.db_path = options.dir.join(format!("phone-{device}.db"));
        config.sample_rate_hz = options.sample_rate_hz;
        config.sensor_seed = Some(options.seed.wrapping_add(i as u64));
        config.sensor_archetype = entry.archetype;
        agents.push(Agent::start(config).await?);
        let archetype = entry
            .archetype
            .map_or("drawn from the seed", Archetype::as_str);
        tracing::info!(device_id = %device, user_id = %entry.user_id, archetype, "phone started");
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                for (agent, entry) in agents.iter().zip(&roster) {
                    let s = agent.stats();
                    tracing::info!(device_id = %entry.device_id, produced = s.readings_produced,
                        acked = s.readings_acked, buffered = s.readings_buffered,
                        connected = s.connected, "phone status");
                }
            }
        }
    }
    for (agent, entry) in agents.into_iter().zip(&roster) {
        if let Err(e) = agent.shutdown().await {
            tracing::warn!(device_id = %entry.device_id, error = %e, "phone did not shut down cleanly");
        }
    }
    Ok(())
}

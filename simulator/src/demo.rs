//! The all-in-one demo: the story of the system, told by running it.
//!
//! Starts the broker and the cloud, gives a few people a financial history and a phone (each of
//! a known [`Archetype`], dealt round robin: a calm saver, an anxious worrier, …), streams
//! their emotions, asks for an offer for each, accepts the approved ones, waits for the phones to
//! hear that their new limit is in force, and checks that every reading produced was stored
//! exactly once.

use std::{collections::HashSet, time::Duration};

use anyhow::Context;
use chrono::Utc;
use ecs_edge_agent::{Agent, AgentConfig, AgentHandle, sensor::Archetype};
use ecs_protocol::{DeviceId, NotificationKind};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    history,
    mobile::{ApiClient, Offer},
    stack::{Stack, StackOptions},
};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub stack: StackOptions,
    pub devices: usize,
    pub duration: Duration,
    pub sample_rate_hz: f64,
    /// Seed for people's histories and sensors; person `i` is of [`Archetype::for_index`]`(i)`.
    pub seed: u64,
    /// How long to wait for acks and notifications before calling the run a failure.
    pub settle_timeout: Duration,
}

/// What happened, in numbers. The demo's `--json` line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DemoReport {
    pub devices: usize,
    pub readings_produced: u64,
    pub readings_stored: u64,
    pub readings_dropped_on_phone: u64,
    pub offers_created: u64,
    pub offers_approved: u64,
    pub offers_accepted: u64,
    pub offers_applied: u64,
    pub notifications_received: u64,
    /// True when every produced reading is stored exactly once and every accepted offer's
    /// notification reached its phone.
    pub ok: bool,
    pub problems: Vec<String>,
}

struct Person {
    name: String,
    user_id: Uuid,
    api: ApiClient,
    device_id: DeviceId,
    agent: AgentHandle,
    offer: Option<Offer>,
}

const NAMES: [&str; 8] = [
    "Ana", "Bruno", "Carla", "Diego", "Elisa", "Fábio", "Gabriela", "Heitor",
];

/// Runs the story; `say` receives the human-readable account line by line.
pub async fn run(options: &DemoOptions, say: &mut dyn FnMut(String)) -> anyhow::Result<DemoReport> {
    say("Starting the broker, the cloud and the certificate authority…".into());
    let stack = Stack::start(&options.stack).await?;
    stack.wait_ready(Duration::from_secs(30)).await?;
    say(format!("Cloud API at {}", stack.api_base));
    let result = story(&stack, options, say).await;
    stack.stop().await;
    result
}

async fn story(
    stack: &Stack,
    options: &DemoOptions,
    say: &mut dyn FnMut(String),
) -> anyhow::Result<DemoReport> {
    let admin = ApiClient::new(&stack.api_base, &stack.admin_token)?;
    let mut people = Vec::new();
    for i in 0..options.devices {
        let name = format!("{} #{}", NAMES[i % NAMES.len()], i + 1);
        let seed = options.seed.wrapping_add(i as u64);
        let archetype = Archetype::for_index(i);
        // The archetype stays here: the cloud is told a name, never what kind of person it is.
        let user = admin.create_user(&name, true).await?;
        let history = history::generate(archetype, seed, Utc::now());
        admin.record_transactions(user.user_id, &history).await?;
        let api = admin.with_token(&user.api_token);
        // The person registers their own phone, with their own token.
        let device = api.register_device(user.user_id, None).await?;
        let device_id = DeviceId::parse(device.device_id)?;
        let (broker, tls) = stack.device_access(&device_id)?;
        let mut config = AgentConfig::new(device_id.clone(), broker);
        config.tls = tls;
        config.db_path = stack.workdir().join(format!("phone-{device_id}.db"));
        config.sample_rate_hz = options.sample_rate_hz;
        config.sensor_seed = Some(seed);
        config.sensor_archetype = Some(archetype);
        config.flush_interval = Duration::from_millis(500);
        config.ack_timeout = Duration::from_secs(3);
        let agent = Agent::start(config)
            .await
            .with_context(|| format!("starting the phone of {name}"))?;
        say(format!(
            "{name} (simulated as: {}): user {}, {} transactions over 90 days, phone {device_id} streaming",
            archetype.describe(),
            user.user_id,
            history.len()
        ));
        people.push(Person {
            name,
            user_id: user.user_id,
            api,
            device_id,
            agent,
            offer: None,
        });
    }

    say(format!(
        "Streaming emotions for {} s at {} Hz per phone…",
        options.duration.as_secs(),
        options.sample_rate_hz
    ));
    tokio::time::sleep(options.duration).await;
    for p in &people {
        p.agent.stop_sensor();
    }
    let mut report = DemoReport {
        devices: people.len(),
        ..Default::default()
    };
    for p in &people {
        if !p.agent.wait_drained(options.settle_timeout).await {
            report.problems.push(format!(
                "{}: phone still holds unacknowledged readings",
                p.name
            ));
        }
        let stats = p.agent.stats();
        report.readings_produced += stats.readings_produced;
        report.readings_dropped_on_phone += stats.readings_dropped;
    }
    let device_ids: Vec<String> = people.iter().map(|p| p.device_id.to_string()).collect();
    let (stored, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (device_id, seq)) FROM emotion_readings WHERE device_id = ANY($1)",
    )
    .bind(&device_ids)
    .fetch_one(&stack.pool)
    .await?;
    report.readings_stored = u64::try_from(stored).unwrap_or(0);
    if stored != distinct {
        report
            .problems
            .push(format!("{stored} rows but {distinct} distinct readings"));
    }
    say(format!(
        "Phones produced {} readings; the cloud stored {} (acknowledged end to end).",
        report.readings_produced, report.readings_stored
    ));

    for p in &people {
        let e = p.api.emotional_profile(p.user_id).await?;
        say(format!(
            "{}: mood from {} readings: valence {:+.0}, stress {:.0} (high {:.0}% of the time), \
             impulsivity {:.2}, money worry {:.2}, saving intent {:.2}",
            p.name,
            e.readings_count,
            e.mean_valence,
            e.mean_stress,
            e.stress_share * 100.0,
            e.impulsivity,
            e.financial_worry,
            e.saving_intent
        ));
    }

    let mut accepted = HashSet::new();
    for p in &mut people {
        let offer = p.api.request_offer(p.user_id).await?;
        report.offers_created += 1;
        let risk = offer.risk.as_ref().map(describe_risk).unwrap_or_default();
        let reasons = if offer.reason_codes.is_empty() {
            String::new()
        } else {
            format!(" [{}]", offer.reason_codes.join(", "))
        };
        if offer.approved {
            report.offers_approved += 1;
            say(format!(
                "{}: {risk} → approved, R$ {:.2} {} at {:.2}% a year for {} months{reasons}",
                p.name,
                offer.credit_limit_cents as f64 / 100.0,
                offer.credit_type.replace('_', "-"),
                f64::from(offer.interest_rate_bps) / 100.0,
                offer.term_months,
            ));
            let accepted_offer = p.api.accept_offer(offer.offer_id).await?;
            report.offers_accepted += 1;
            accepted.insert(offer.offer_id);
            say(format!(
                "{}: accepted offer → {}",
                p.name, accepted_offer.status
            ));
        } else {
            say(format!("{}: {risk} → declined{reasons}", p.name));
        }
        p.offer = Some(offer);
    }

    // Wait for each phone to hear that its accepted offer was applied.
    let deadline = tokio::time::Instant::now() + options.settle_timeout;
    let mut heard: HashSet<Uuid> = HashSet::new();
    loop {
        heard.clear();
        for p in &people {
            for n in p.agent.notifications().await? {
                if let NotificationKind::OfferApplied { offer_id, .. } = n.kind
                    && accepted.contains(&offer_id)
                {
                    heard.insert(offer_id);
                }
            }
        }
        if heard.len() == accepted.len() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.notifications_received = heard.len() as u64;
    for p in &people {
        if let Some(offer) = &p.offer
            && accepted.contains(&offer.offer_id)
        {
            let now = p.api.offer(offer.offer_id).await?;
            if now.status == "applied" {
                report.offers_applied += 1;
            }
            let got = heard.contains(&offer.offer_id);
            say(format!(
                "{}: offer {} is {}; phone notified: {}",
                p.name,
                offer.offer_id,
                now.status,
                if got { "yes" } else { "NO" }
            ));
        }
    }
    for p in people {
        if let Err(e) = p.agent.shutdown().await {
            report
                .problems
                .push(format!("{}: phone did not shut down cleanly: {e}", p.name));
        }
    }

    if report.readings_produced == 0 {
        report.problems.push("no readings were produced".into());
    }
    if report.readings_stored != report.readings_produced {
        report.problems.push(format!(
            "{} readings produced but {} stored",
            report.readings_produced, report.readings_stored
        ));
    }
    if report.notifications_received < report.offers_accepted {
        report.problems.push(format!(
            "{} offers accepted but only {} phones were notified",
            report.offers_accepted, report.notifications_received
        ));
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

/// "PD 7.2% (score 928, scorecard v1; most weight: months_with_inflow −0.41, …)".
fn describe_risk(r: &crate::mobile::Risk) -> String {
    let mut top: Vec<_> = r.contributions.iter().collect();
    top.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
    let why: Vec<String> = top
        .iter()
        .take(3)
        .map(|c| format!("{} {:+.2}", c.name, c.value))
        .collect();
    let why = if why.is_empty() {
        String::new()
    } else {
        format!("; most weight: {}", why.join(", "))
    };
    format!(
        "PD {:.1}% (score {}, {} v{}{why})",
        r.probability_of_default * 100.0,
        r.risk_score,
        r.model_name,
        r.model_version
    )
}

//! The simulated population, written into the cloud through the cloud's own code: people and
//! phones as the API creates them (`PersonTx`, `devices::register`), transactions through
//! `finance::record`, and readings through [`Ingest::handle`] — the very function the broker's
//! messages reach, so features are folded as in production and every plausibility check runs.
//!
//! Time is simulated: readings carry the simulated times they were "taken" over the days before
//! the run, one every [`Plan::reading_interval`], and nothing waits for real time. The cloud
//! accepts readings up to 30 days old, so a run of up to four weeks goes through ingest as is.

use anyhow::{Context, bail};
use chrono::{DateTime, TimeDelta, Timelike, Utc};
use ecs_cloud::{
    devices, finance,
    ingest::{Ingest, Outcome},
    keys::KeyCache,
    people::{NewPersonRow, PersonTx},
};
use ecs_edge_agent::sensor::{Archetype, Sensor};
use ecs_protocol::{
    DeviceId, Intent, MAX_READINGS_PER_BATCH, Reading, ReadingBatch, Uplink, encode_uplink, topic,
};
use rand::{SeedableRng, rngs::StdRng};
use sqlx::PgPool;
use uuid::Uuid;

use crate::bench::progress::Progress;
use crate::history::{self, Transaction};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    /// People of each [`Archetype`]; person `i` is of [`Archetype::for_index`]`(i)`.
    pub people_per_archetype: usize,
    /// Simulated days of readings, ending at `end`.
    pub days: u32,
    /// Simulated time between two readings of one phone (the mood walk steps once per reading).
    pub reading_interval: TimeDelta,
    /// The end of the simulated stretch (at most the cloud's clock, which refuses the future).
    pub end: DateTime<Utc>,
}

impl Plan {
    pub fn people(&self) -> usize {
        self.people_per_archetype * Archetype::ALL.len()
    }

    pub fn start(&self) -> DateTime<Utc> {
        self.end - TimeDelta::days(i64::from(self.days))
    }

    fn readings_per_person(&self) -> i64 {
        let interval = self.reading_interval.num_seconds().max(1);
        TimeDelta::days(i64::from(self.days)).num_seconds() / interval
    }
}

/// One simulated person as the simulator knows them (the cloud knows only the `user_id`).
#[derive(Debug, Clone)]
pub struct Person {
    pub user_id: Uuid,
    pub archetype: Archetype,
    pub seed: u64,
}

/// Counts of what went in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    pub readings: u64,
    pub transactions: u64,
    /// Of `transactions`, those the stream's purchase intents caused.
    pub purchases_after_intent: u64,
}

/// Creates every person of `plan`, with history, phone and stream, in the cloud at `pool`.
pub async fn simulate(
    pool: &PgPool,
    plan: &Plan,
    keys: &KeyCache,
    progress: &Progress,
) -> anyhow::Result<(Vec<Person>, Written)> {
    if plan.reading_interval < TimeDelta::seconds(1) {
        bail!("the reading interval must be at least a second");
    }
    let ingest = Ingest::new(pool.clone(), keys.clone());
    let keyring = keys.keyring();
    let bar = progress.counter("simulated people", plan.people() as u64);
    let mut people = Vec::with_capacity(plan.people());
    let mut written = Written::default();
    for index in 0..plan.people() {
        let person = Person {
            user_id: Uuid::new_v4(),
            archetype: Archetype::for_index(index),
            seed: plan.seed.wrapping_add(index as u64),
        };
        let device = DeviceId::parse(format!("insights{index}"))?;
        // Up to the stretch's end, like the cloud's 90-day window at assessment: the history's
        // last weeks and the stream overlap, as a real person's would.
        let past = history::generate(person.archetype, person.seed, plan.end);
        let monthly_income = past
            .iter()
            .filter(|t| t.direction == "inflow")
            .map(|t| t.amount_cents)
            .sum::<i64>()
            / history::MONTHS;
        provision(pool, keyring, &person, index, &device, &past).await?;
        let bought = stream(&ingest, plan, &person, &device, monthly_income).await?;
        record(pool, person.user_id, &bought).await?;
        written.readings += plan.readings_per_person() as u64;
        written.transactions += (past.len() + bought.len()) as u64;
        written.purchases_after_intent += bought.len() as u64;
        people.push(person);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((people, written))
}

/// The person, with consent, their phone and their financial history.
async fn provision(
    pool: &PgPool,
    keyring: &ecs_cloud::keys::Keyring,
    person: &Person,
    index: usize,
    device: &DeviceId,
    past: &[Transaction],
) -> anyhow::Result<()> {
    // A name, as anyone registering gives one; never the archetype.
    let name = format!("Simulated person {}", index + 1);
    let mut tx = PersonTx::insert(
        pool,
        keyring,
        &NewPersonRow {
            user_id: person.user_id,
            display_name: &name,
            consent: true,
        },
    )
    .await?;
    devices::register(&mut tx, device.clone()).await?;
    finance::record(&mut tx, &checked(past)?).await?;
    tx.finish().await?;
    Ok(())
}

/// Records transactions in requests of at most the API's size.
async fn record(pool: &PgPool, user_id: Uuid, txs: &[Transaction]) -> anyhow::Result<()> {
    for chunk in txs.chunks(finance::MAX_TRANSACTIONS_PER_REQUEST) {
        let mut tx = PersonTx::lock(pool, user_id).await?;
        finance::record(&mut tx, &checked(chunk)?).await?;
        tx.finish().await?;
    }
    Ok(())
}

/// The simulator's transactions as the cloud's checked type (the checks the API applies).
fn checked(txs: &[Transaction]) -> anyhow::Result<Vec<finance::Transaction>> {
    txs.iter()
        .enumerate()
        .map(|(i, t)| {
            let direction = finance::Direction::parse(t.direction)
                .with_context(|| format!("direction {:?}", t.direction))?;
            Ok(finance::Transaction::parse(
                &format!("transactions[{i}]"),
                &t.external_ref,
                direction,
                t.amount_cents,
                t.category,
                t.occurred_at,
            )?)
        })
        .collect()
}

/// Streams the person's readings into ingest in full batches and returns the purchases their
/// purchase intents led to (those before the stretch's end: the cloud refuses the future).
async fn stream(
    ingest: &Ingest,
    plan: &Plan,
    person: &Person,
    device: &DeviceId,
    monthly_income: i64,
) -> anyhow::Result<Vec<Transaction>> {
    let mut sensor = Sensor::for_archetype(person.seed, person.archetype);
    let mut purchases_rng = StdRng::seed_from_u64(person.seed ^ 0x0B0D_6E7E_0000_0001);
    let mut bought = Vec::new();
    let uplink = topic::uplink(device);
    let total = plan.readings_per_person();
    let mut seq = 0;
    while seq < total {
        let len = (total - seq).min(MAX_READINGS_PER_BATCH as i64);
        let base = plan.start() + plan.reading_interval * (seq as i32);
        let mut readings = Vec::with_capacity(len as usize);
        for k in 0..len {
            let at = base + plan.reading_interval * (k as i32);
            let hour = f64::from(at.hour()) + f64::from(at.minute()) / 60.0;
            let reading = Reading {
                offset_ms: u32::try_from((at - base).num_milliseconds())
                    .context("a batch spans more than 49 days")?,
                ..sensor.sample_at(hour)
            };
            for t in reading
                .thoughts
                .iter()
                .filter(|t| t.intent == Intent::PurchaseIntent)
            {
                let reference = format!("{}-{}", person.seed, seq + k);
                if let Some(purchase) = history::purchase_after_intent(
                    &mut purchases_rng,
                    t.confidence,
                    at,
                    monthly_income,
                    &reference,
                ) && purchase.occurred_at < plan.end
                {
                    bought.push(purchase);
                }
            }
            readings.push(reading);
        }
        let batch = ReadingBatch {
            device_id: device.clone(),
            first_seq: u64::try_from(seq)?,
            base_time_ms: base.timestamp_millis(),
            readings,
        };
        let payload = encode_uplink(&Uplink::ReadingBatchV1(batch))?;
        match ingest.handle(&uplink, &payload).await? {
            Outcome::Stored { inserted, .. } if inserted == len as usize => {}
            other => bail!("ingest did not store batch {seq} of {device}: {other:?}"),
        }
        seq += len;
    }
    Ok(bought)
}

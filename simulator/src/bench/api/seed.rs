//! The people the load asks about, created through the API as the bank's back office would:
//! a consenting user, then three monthly salaries (as the cloud's tests' `person` does), so
//! every assessment has a financial history to score.
//!
//! Seeding is the admin's work (only the admin token may create a person or record their
//! transactions); the load that follows is each person's own: creating a person answers their
//! API token, kept here with their id, and the load asks about each person with that token, as
//! the phone app does (see [`super::load`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::bench::cloud::BenchCloud;
use crate::bench::progress::Progress;
use crate::history::Transaction;
use crate::mobile::ApiClient;

/// Seeding requests in flight at most: enough to keep the cloud busy, few enough that seeding
/// never measures anything or queues on the pool.
const MAX_SEEDERS: usize = 8;

/// One seeded person: who they are and the token they call the API with.
#[derive(Clone)]
pub struct Person {
    pub id: Uuid,
    /// The person's API token, as `POST /v1/users` answered it.
    pub token: String,
}

/// Without the token: it is a credential.
impl std::fmt::Debug for Person {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Person")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Creates `count` people with `connections.min(MAX_SEEDERS)` requests in flight; returns them
/// (id and token) in creation order. Any refused request fails the seeding: the load needs
/// them all.
pub async fn people(
    cloud: &BenchCloud,
    count: usize,
    connections: usize,
    progress: &Progress,
) -> anyhow::Result<Arc<[Person]>> {
    let admin = ApiClient::new(&cloud.base_url, &cloud.admin_token)
        .context("building the seeding client")?;
    let bar = progress.counter("seeding", count as u64);
    let next = Arc::new(AtomicUsize::new(0));
    let now = Utc::now();
    let mut seeders = JoinSet::new();
    for _ in 0..connections.clamp(1, MAX_SEEDERS) {
        let (admin, next, bar) = (admin.clone(), Arc::clone(&next), bar.clone());
        seeders.spawn(async move {
            let mut made = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return anyhow::Ok(made);
                }
                made.push((n, person(&admin, n, now).await?));
                bar.inc(1);
            }
        });
    }
    let mut seeded: Vec<Option<Person>> = vec![None; count];
    while let Some(joined) = seeders.join_next().await {
        // The first failure ends the seeding; dropping the set aborts the other seeders.
        for (n, person) in joined.context("a seeding task failed")?? {
            seeded[n] = Some(person);
        }
    }
    bar.finish_and_clear();
    // Every n below `count` was taken by a seeder that returned, so none is missing; checked
    // all the same rather than assumed.
    let people = seeded
        .into_iter()
        .enumerate()
        .map(|(n, person)| person.with_context(|| format!("person {n} was never seeded")))
        .collect::<anyhow::Result<Arc<[Person]>>>()?;
    progress.note(&format!("seeded {count} people through the API"));
    Ok(people)
}

/// Person `n`: `Bench n`, consenting, with three salaries of 5 000.00 in the last three months;
/// returned with the token the API answered for them.
async fn person(admin: &ApiClient, n: usize, now: DateTime<Utc>) -> anyhow::Result<Person> {
    let user = admin
        .create_user(&format!("Bench {n}"), true)
        .await
        .with_context(|| format!("creating person {n}"))?;
    let recorded = admin
        .record_transactions(user.user_id, &salaries(now))
        .await
        .with_context(|| format!("recording person {n}'s salaries"))?;
    anyhow::ensure!(
        recorded.inserted == 3,
        "person {n}: {} of 3 salaries recorded",
        recorded.inserted
    );
    Ok(Person {
        id: user.user_id,
        token: user.api_token,
    })
}

/// Three monthly salary inflows, the latest an hour ago.
fn salaries(now: DateTime<Utc>) -> Vec<Transaction> {
    (0..3)
        .map(|m| Transaction {
            external_ref: format!("salary-{}", m + 1),
            direction: "inflow",
            amount_cents: 500_000,
            category: "salary",
            // A calendar month apart, as the demo's people's (`people::provision`): 30 days
            // apart, two could fall in one 31-day month and the person would have 2 months of
            // income, not 3.
            occurred_at: now
                .checked_sub_months(chrono::Months::new(m))
                .unwrap_or(now)
                - chrono::Duration::hours(1),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_distinct_monthly_salaries_in_the_past() {
        let now = Utc::now();
        let txs = salaries(now);
        assert_eq!(txs.len(), 3);
        assert!(
            txs.iter()
                .all(|t| t.occurred_at < now && t.direction == "inflow")
        );
        let refs: std::collections::HashSet<_> = txs.iter().map(|t| &t.external_ref).collect();
        assert_eq!(
            refs.len(),
            3,
            "external refs must differ or the API de-duplicates them"
        );
    }
}

//! The one discipline for every change about a person: a [`PersonTx`].
//!
//! A `PersonTx` is a transaction that has locked the person's `users` row before anything else.
//! Every person-scoped write (consent, tokens, devices, transactions, assessments, accepting an
//! offer, applying it, erasure) takes a `&mut PersonTx`, and none can be had without taking that
//! lock, so
//! changes about one person serialise on one row and are never waiting on each other in opposite
//! orders.
//!
//! Lock order, wherever more than the person is locked:
//!   1. the person's `users` row (this type);
//!   2. the person's rows in other tables (devices, offers, outbox events), in any order, since
//!      nobody else may lock them without holding (1);
//!   3. foreign-key checks on `users` (KEY SHARE), which the lock in (1) already covers.
//!
//! A group commit ([`crate::group_commit`]) locks several people in one transaction: a
//! [`PeopleTx`] for assessments, `ingest::store` for device batches. Both take the rows in
//! `user_id` order, in one statement, before anything else, and give up after a short wait, so
//! they cannot close a cycle; the group is then done person by person.
//! Two writes about a person run without it, on purpose: a phone's notification receipt (one
//! `UPDATE` of rows the receipt names) and retention's chunked deletes of old readings. Neither
//! holds anything while waiting, so the worst they can do is make an erasure a deadlock victim,
//! which [`retry`] runs again.
//!
//! Postgres still picks a victim now and then (a serialisation failure, a deadlock with a
//! cascade it did not foresee): [`retry`] runs the work again, a bounded number of times, and
//! then answers [`Error::Busy`] (503 with `Retry-After`), never 500.
//!
//! (The work is written inline in the attempt rather than passed as a closure taking the
//! transaction: a closure over `&mut PersonTx` makes the handler's future higher-ranked, which
//! axum's `Send` bound cannot prove today.)

use std::{future::Future, time::Duration};

use rand::RngExt;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::{Error, error::Result};

/// How many times a transaction chosen as a victim is run again before the caller is told to
/// retry later.
pub const MAX_ATTEMPTS: u32 = 5;

/// The transaction's first statement, with the longest wait for a lock: past it the request is
/// answered 503 `busy` rather than queueing behind a stuck transaction until the request times
/// out. One simple-protocol round trip for both.
const BEGIN: &str = "BEGIN; SET LOCAL lock_timeout = '5s'";

/// A transaction holding the lock on one person's row. Dropped without [`PersonTx::finish`], it
/// rolls back.
pub struct PersonTx {
    tx: Transaction<'static, Postgres>,
    user_id: Uuid,
    consent: bool,
    /// Set when the work decided that nothing it did may stay (a replayed idempotent request).
    discard: bool,
}

impl PersonTx {
    /// Begins a transaction and locks the person's row; `NotFound` when there is no such person.
    pub async fn lock(pool: &PgPool, user_id: Uuid) -> Result<Self> {
        let mut tx = pool.begin_with(BEGIN).await?;
        let consent: Option<bool> = sqlx::query_scalar(
            "SELECT emotional_data_consent FROM users WHERE user_id = $1 FOR UPDATE",
        )
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let consent = consent.ok_or(Error::NotFound("user"))?;
        Ok(Self {
            tx,
            user_id,
            consent,
            discard: false,
        })
    }

    /// Begins a transaction and creates the person's row in it: the new row is locked by its
    /// insert, so the discipline holds from the first statement. The person's data key is made
    /// in the same transaction, and their name is stored sealed with it.
    pub async fn insert(
        pool: &PgPool,
        keyring: &crate::keys::Keyring,
        person: &NewPersonRow<'_>,
    ) -> Result<Self> {
        let mut tx = pool.begin_with(BEGIN).await?;
        let key = keyring.create_for(&mut tx, person.user_id).await?;
        let name = key.seal_text(crate::keys::NAME_FIELD, person.display_name)?;
        sqlx::query(
            "INSERT INTO users (user_id, display_name_sealed, emotional_data_consent,
                 consent_recorded_at)
             VALUES ($1, $2, $3, CASE WHEN $3 THEN now() END)",
        )
        .bind(person.user_id)
        .bind(&name)
        .bind(person.consent)
        .execute(&mut *tx)
        .await?;
        if person.consent {
            crate::people::record_consent(&mut tx, person.user_id, true, ConsentBy::Admin).await?;
        }
        Ok(Self {
            tx,
            user_id: person.user_id,
            consent: person.consent,
            discard: false,
        })
    }

    /// Wraps a transaction the caller has already locked the person's row in (the offer
    /// worker, which finds the person and locks them in one statement).
    pub(crate) fn locked(tx: Transaction<'static, Postgres>, user_id: Uuid, consent: bool) -> Self {
        Self {
            tx,
            user_id,
            consent,
            discard: false,
        }
    }

    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    /// The person's consent to emotional data, as of the lock (nobody can change it meanwhile).
    pub fn consents_to_emotional_data(&self) -> bool {
        self.consent
    }

    /// The connection, for the statements of the stage doing the work.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Makes the transaction roll back instead of committing when the work is done.
    pub fn discard(&mut self) {
        self.discard = true;
    }

    /// Commits, or rolls back when [`PersonTx::discard`] was called.
    pub async fn finish(self) -> Result<()> {
        if self.discard {
            self.tx.rollback().await?;
        } else {
            self.tx.commit().await?;
        }
        Ok(())
    }
}

/// A transaction holding the locks on several people's rows, taken in `user_id` order before
/// anything else: the [`PersonTx`] of a group commit. Dropped without [`PeopleTx::commit`], it
/// rolls back.
pub struct PeopleTx {
    tx: Transaction<'static, Postgres>,
    /// The people found, with their consent to emotional data as of the lock.
    consents: std::collections::HashMap<Uuid, bool>,
}

/// A group's first statement: a group waits a shorter time than a person's own transaction
/// ([`BEGIN`]), since it holds others' rows meanwhile; past it, its people are each done alone.
const BEGIN_GROUP: &str = "BEGIN; SET LOCAL lock_timeout = '1s'";

impl PeopleTx {
    /// Begins a transaction and locks the rows of `people` (in any order, duplicates allowed).
    /// A person without a row (never created, or erased) is simply not locked:
    /// [`PeopleTx::consent`] says so.
    pub async fn lock(pool: &PgPool, people: &[Uuid]) -> Result<Self> {
        let mut ids = people.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut tx = pool.begin_with(BEGIN_GROUP).await?;
        // ORDER BY sorts below the row locks: the rows are locked in this order.
        let consents: Vec<(Uuid, bool)> = sqlx::query_as(
            "SELECT user_id, emotional_data_consent FROM users
             WHERE user_id = ANY($1)
             ORDER BY user_id
             FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        Ok(Self {
            tx,
            consents: consents.into_iter().collect(),
        })
    }

    /// The person's consent to emotional data, as of the lock; `None` when there is no such
    /// person (nothing about them may be written in this transaction).
    pub fn consent(&self, user_id: Uuid) -> Option<bool> {
        self.consents.get(&user_id).copied()
    }

    /// The connection, for the statements of the stage doing the work; they must write only
    /// about the people [`PeopleTx::consent`] found.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Who recorded a consent change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentBy {
    /// The person, with their own token.
    Person,
    Admin,
}

impl ConsentBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentBy::Person => "self",
            ConsentBy::Admin => "admin",
        }
    }
}

/// What [`PersonTx::insert`] inserts.
pub struct NewPersonRow<'a> {
    pub user_id: Uuid,
    pub display_name: &'a str,
    pub consent: bool,
}

/// Runs `attempt` until it succeeds, fails for a reason other than a transient conflict, or
/// has been tried [`MAX_ATTEMPTS`] times; then a transient conflict is [`Error::Busy`]. Each
/// attempt takes its own [`PersonTx`], so a victim starts again from a clean transaction:
///
/// ```ignore
/// people::retry(|| async move {
///     let mut tx = PersonTx::lock(pool, user_id).await?;
///     let done = stage(&mut tx).await?;
///     tx.finish().await?;
///     Ok(done)
/// })
/// ```
pub async fn retry<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match attempt().await {
            Err(e) if e.is_transient_conflict() => {
                metrics::counter!("ecs_person_tx_conflicts_total").increment(1);
                if n >= MAX_ATTEMPTS {
                    tracing::warn!(error = %e, attempts = n, "giving up on a contended change");
                    return Err(Error::Busy);
                }
                // Jittered, so the two victims of one deadlock do not meet again at once.
                let ms = rand::rng().random_range(5..=20u64) << (n - 1);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_victim_every_time_is_answered_busy_after_the_last_attempt(pool: PgPool) {
        // Postgres's own serialisation failure (40001), raised on every attempt.
        let tries = AtomicU32::new(0);
        let tries = &tries;
        let pool = &pool;
        let out: Result<()> = retry(|| async move {
            tries.fetch_add(1, Ordering::Relaxed);
            sqlx::query(
                "DO $$ BEGIN RAISE EXCEPTION 'victim' USING ERRCODE = 'serialization_failure'; END $$",
            )
            .execute(pool)
            .await?;
            Ok(())
        })
        .await;
        assert!(matches!(out, Err(Error::Busy)), "{out:?}");
        assert_eq!(tries.load(Ordering::Relaxed), MAX_ATTEMPTS);
        // Other failures are not retried.
        let once = AtomicU32::new(0);
        let once = &once;
        let out: Result<()> = retry(|| async move {
            once.fetch_add(1, Ordering::Relaxed);
            Err(Error::NotFound("user"))
        })
        .await;
        assert!(matches!(out, Err(Error::NotFound(_))));
        assert_eq!(once.load(Ordering::Relaxed), 1);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_real_deadlock_is_retried_until_it_succeeds(pool: PgPool) {
        // Two transactions locking two rows in opposite orders: Postgres aborts one with 40P01,
        // and `retry` runs it again once the other has committed.
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for id in [a, b] {
            sqlx::query(
                "INSERT INTO users (user_id, display_name, emotional_data_consent) VALUES ($1, 'x', false)",
            )
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let run = |first: Uuid, second: Uuid| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            let tries = std::sync::Arc::new(AtomicU32::new(0));
            let counted = tries.clone();
            let task = tokio::spawn(async move {
                let (pool, barrier, counted) = (&pool, &barrier, &counted);
                retry(|| async move {
                    let n = counted.fetch_add(1, Ordering::Relaxed);
                    let mut tx = pool.begin().await?;
                    for (i, id) in [first, second].into_iter().enumerate() {
                        sqlx::query("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        if i == 0 && n == 0 {
                            barrier.wait().await;
                        }
                    }
                    tx.commit().await?;
                    Ok(())
                })
                .await
            });
            (task, tries)
        };
        let (one, one_tries) = run(a, b);
        let (two, two_tries) = run(b, a);
        one.await.unwrap().unwrap();
        two.await.unwrap().unwrap();
        let total = one_tries.load(Ordering::Relaxed) + two_tries.load(Ordering::Relaxed);
        assert!(
            total >= 3,
            "one of the two must have been a victim and retried ({total})"
        );
    }
}

//! Group commit of device batches ([`crate::group_commit`]): batches of many devices share one
//! transaction, one commit, one fsync.
//!
//! Ingest tasks hand their batch's transaction work to the [`GroupCommitter`] instead of
//! committing it alone. A group (up to [`MAX_GROUP`] batches, [`COMMITTERS`] groups in flight)
//! is one transaction of five statements (`store::store_in`: lock the persons, read their
//! features, insert every reading, store the features, mark the devices seen).
//!
//! * **Locks in one order.** A group takes its persons' rows in `user_id` order, so two groups
//!   never wait on each other in a cycle; one device has at most one batch in flight (the queue
//!   sees to it), so sorting never reorders a device's batches.
//! * **One batch's trouble costs only itself.** When anything in the group fails (a person's row
//!   held past the lock wait, a constraint, the connection), the group is rolled back and each
//!   of its batches is committed alone, with the same classification of errors as before: only
//!   the batch at fault is refused or retried.
//! * **Acks after commit**, as ever: a batch's outcome is handed back only once its group (or its
//!   own transaction) has committed.

use chrono::{DateTime, Utc};
use ecs_protocol::{DeviceId, ReadingBatch};
use sqlx::PgPool;
use uuid::Uuid;

use super::store::{self, StoreOutcome, ToStore};
use crate::{
    error::Result,
    group_commit::{Committer, Shape, Work},
};

/// Batches per transaction at most.
pub const MAX_GROUP: usize = 64;
/// Group transactions in flight at once.
pub const COMMITTERS: usize = 3;
/// Requests waiting for a committer before ingest tasks wait to hand theirs in.
const WAITING: usize = 1_024;

/// One batch's transaction work.
struct Request {
    device: DeviceId,
    user_id: Uuid,
    batch: ReadingBatch,
    taken_at: Vec<DateTime<Utc>>,
    thoughts: Vec<Option<Vec<u8>>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("device", &self.device)
            .field("first_seq", &self.batch.first_seq)
            .finish_non_exhaustive()
    }
}

impl Request {
    fn to_store(&self) -> ToStore<'_> {
        ToStore {
            device: &self.device,
            user_id: self.user_id,
            batch: &self.batch,
            taken_at: &self.taken_at,
            thoughts: &self.thoughts,
        }
    }
}

/// Storing device batches, as group-commit work.
struct Batches {
    pool: PgPool,
}

impl Work for Batches {
    type Item = Request;
    type Outcome = Result<StoreOutcome>;
    const NAME: &'static str = "ingest";

    fn person(request: &Request) -> Uuid {
        request.user_id
    }

    /// Every batch of the group in one transaction; an error undoes all of them.
    async fn together(&self, group: &[Request]) -> Result<Vec<Result<StoreOutcome>>> {
        let mut tx = store::begin(&self.pool).await?;
        let items: Vec<ToStore<'_>> = group.iter().map(Request::to_store).collect();
        let outcomes = store::store_in(&mut tx, &items).await?;
        tx.commit().await?;
        Ok(outcomes.into_iter().map(Ok).collect())
    }

    async fn alone(&self, request: &Request) -> Result<StoreOutcome> {
        store::store_batch(&self.pool, request.to_store()).await
    }
}

/// Where ingest tasks hand in their batches. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GroupCommitter {
    committer: Committer<Batches>,
}

impl GroupCommitter {
    /// The committer and the task that must run for it to commit anything; the task ends when
    /// every handle is dropped and the last group is committed.
    pub fn new(pool: PgPool) -> (GroupCommitter, impl Future<Output = ()> + Send + 'static) {
        let (committer, task) = Committer::new(
            Batches { pool },
            Shape {
                max_group: MAX_GROUP,
                committers: COMMITTERS,
                waiting: WAITING,
            },
        );
        (GroupCommitter { committer }, task)
    }

    /// Stores one batch in the next group; the same outcomes and errors as
    /// [`store::store_batch`].
    pub(super) async fn store(
        &self,
        device: DeviceId,
        user_id: Uuid,
        batch: ReadingBatch,
        taken_at: Vec<DateTime<Utc>>,
        thoughts: Vec<Option<Vec<u8>>>,
    ) -> Result<StoreOutcome> {
        self.committer
            .submit(Request {
                device,
                user_id,
                batch,
                taken_at,
                thoughts,
            })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;
    use crate::{
        Error,
        group_commit::{Pending, commit},
        ingest::fixtures::{batch, user_with_device},
    };

    fn request(
        device: &DeviceId,
        user_id: Uuid,
        len: u32,
    ) -> (Pending<Batches>, oneshot::Receiver<Result<StoreOutcome>>) {
        let batch = batch(device, 1, len);
        let taken_at = batch
            .readings
            .iter()
            .map(|r| {
                DateTime::from_timestamp_millis(batch.base_time_ms + i64::from(r.offset_ms))
                    .unwrap()
            })
            .collect();
        Pending::new(Request {
            device: device.clone(),
            user_id,
            thoughts: vec![None; batch.readings.len()],
            batch,
            taken_at,
        })
    }

    fn batches(pool: &PgPool) -> Arc<Batches> {
        Arc::new(Batches { pool: pool.clone() })
    }

    async fn stored(pool: &PgPool, device: &DeviceId) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM emotion_readings WHERE device_id = $1")
            .bind(device.as_str())
            .fetch_one(pool)
            .await
            .unwrap()
    }

    fn inserted(outcome: Result<StoreOutcome>) -> Option<usize> {
        match outcome {
            Ok(StoreOutcome::Stored(s)) => Some(s.inserted),
            _ => None,
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_group_stores_each_batch_once_and_a_faulty_one_costs_only_itself(pool: PgPool) {
        let (a_user, a) = user_with_device(&pool).await;
        let (b_user, b) = user_with_device(&pool).await;
        // A device nobody registered, for a real person: its insert breaks the foreign key.
        let ghost = DeviceId::random();
        let (ra, oa) = request(&a, a_user, 5);
        let (rg, og) = request(&ghost, b_user, 5);
        let (rb, ob) = request(&b, b_user, 7);

        commit(batches(&pool), vec![ra, rg, rb]).await;

        assert_eq!(inserted(oa.await.unwrap()), Some(5));
        assert_eq!(inserted(ob.await.unwrap()), Some(7));
        assert!(
            matches!(og.await.unwrap(), Err(Error::Database(e)) if store::registration_gone(&e)),
            "the faulty batch keeps its own classification"
        );
        assert_eq!((stored(&pool, &a).await, stored(&pool, &b).await), (5, 7));

        // The same batches again: nothing twice.
        let (ra, oa) = request(&a, a_user, 5);
        let (rb, ob) = request(&b, b_user, 7);
        commit(batches(&pool), vec![ra, rb]).await;
        assert_eq!(inserted(oa.await.unwrap()), Some(0));
        assert_eq!(inserted(ob.await.unwrap()), Some(0));
        assert_eq!((stored(&pool, &a).await, stored(&pool, &b).await), (5, 7));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn two_phones_of_one_person_in_one_group_fold_into_the_features_once_each(pool: PgPool) {
        let (user, phone) = user_with_device(&pool).await;
        let other_phone = crate::ingest::fixtures::add_device(&pool, user).await;
        let (someone, theirs) = user_with_device(&pool).await;
        let (r1, o1) = request(&phone, user, 4);
        let (r2, o2) = request(&other_phone, user, 6);
        let (r3, o3) = request(&theirs, someone, 3);
        commit(batches(&pool), vec![r1, r2, r3]).await;
        assert_eq!(inserted(o1.await.unwrap()), Some(4));
        assert_eq!(inserted(o2.await.unwrap()), Some(6));
        assert_eq!(inserted(o3.await.unwrap()), Some(3));
        let count = |user: Uuid| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT readings_count FROM emotion_features WHERE user_id = $1",
                )
                .bind(user)
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        assert_eq!((count(user).await, count(someone).await), (10, 3));
        let seen: i64 =
            sqlx::query_scalar("SELECT count(*) FROM devices WHERE last_seen_at IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(seen, 3, "every phone of the group is marked seen");
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_person_held_locked_does_not_hold_back_the_rest_of_the_group(pool: PgPool) {
        let (a_user, a) = user_with_device(&pool).await;
        let (held_user, held) = user_with_device(&pool).await;
        let mut holder = pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE")
            .bind(held_user)
            .execute(&mut *holder)
            .await
            .unwrap();
        let (ra, oa) = request(&a, a_user, 3);
        let (rh, oh) = request(&held, held_user, 3);

        let committing = tokio::spawn({
            let pool = pool.clone();
            async move { commit(batches(&pool), vec![ra, rh]).await }
        });
        // The free person's batch is committed (alone, after the group gave up on the lock)
        // while the other row is still held.
        assert_eq!(inserted(oa.await.unwrap()), Some(3));
        assert_eq!(stored(&pool, &a).await, 3);
        // The held person's batch gives up after its own wait: not stored, to be resent.
        assert!(oh.await.unwrap().is_err());
        holder.rollback().await.unwrap();
        committing.await.unwrap();
        assert_eq!(stored(&pool, &held).await, 0);
    }

    #[tokio::test]
    async fn a_committer_whose_task_is_gone_says_so() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let (committer, task) = GroupCommitter::new(pool);
        drop(task);
        let device = DeviceId::random();
        let outcome = committer
            .store(
                device.clone(),
                Uuid::new_v4(),
                batch(&device, 1, 1),
                Vec::new(),
                Vec::new(),
            )
            .await;
        assert!(matches!(outcome, Err(Error::Unavailable(_))));
    }
}

//! Group commit: many callers' work about people shares one transaction, one commit, one fsync.
//!
//! Callers hand their work to a [`Committer`] instead of running a transaction each. The
//! committer takes whatever is waiting (up to [`Shape::max_group`] items), does the whole
//! group's work in one transaction ([`Work::together`]) and commits once. An item is never held
//! back to wait for company (a lone item is done at once, [`Work::alone`]), so latency stays low
//! when load is low and groups grow by themselves when it is high. [`Shape::committers`] groups
//! are in flight at a time, on as many connections, so Postgres keeps more than one core busy.
//!
//! Per transaction, Postgres pays for much more than the rows: a round trip and a plan per
//! statement, relation locks beyond its fast path, a WAL flush per commit. A group pays those
//! once for all its items. Ingest's device batches ([`crate::ingest`]) and the API's
//! assessments ([`crate::offers`]) are committed this way.
//!
//! * **Locks in one order.** A group is sorted by person before its work runs (a stable sort:
//!   one person's items keep their order), so a group that locks its persons' rows in that
//!   order never waits on another group in a cycle.
//! * **One item's trouble costs only itself.** When the group's transaction fails (a person's
//!   row held past the lock wait, a constraint, a deadlock, the connection), it is rolled back
//!   and each of its items is done alone, concurrently, with the classification of errors it
//!   would have had on its own: only the item at fault is refused or retried.
//! * **Outcomes after commit.** An item's outcome is handed back only once its group (or its
//!   own transaction) has committed.

use std::{future::Future, sync::Arc, time::Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::{Error, error::Result};

/// Work that can be committed in groups.
pub trait Work: Send + Sync + 'static {
    type Item: Send + 'static;
    /// What the caller gets back for an item.
    type Outcome: Send + 'static;
    /// Names the work in metrics (`work` label) and logs.
    const NAME: &'static str;

    /// The person an item is about: the group is sorted by it.
    fn person(item: &Self::Item) -> Uuid;

    /// Every item of a group (two or more, sorted by person) in one transaction, which it
    /// commits; outcomes index-aligned with `items`. An error undoes every item, and each is
    /// then done [`Work::alone`].
    fn together(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Outcome>>> + Send;

    /// One item in a transaction of its own.
    fn alone(&self, item: &Self::Item) -> impl Future<Output = Self::Outcome> + Send;
}

/// How many items a group takes and how many groups are in flight.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Items per transaction at most.
    pub max_group: usize,
    /// Group transactions in flight at once (each on a connection of its own).
    pub committers: usize,
    /// Items waiting for a committer before callers wait to hand theirs in.
    pub waiting: usize,
}

/// An item handed in, and where its outcome goes.
pub(crate) struct Pending<W: Work> {
    item: W::Item,
    reply: oneshot::Sender<W::Outcome>,
}

impl<W: Work> Pending<W> {
    /// An item and the receiver its outcome arrives on.
    pub(crate) fn new(item: W::Item) -> (Self, oneshot::Receiver<W::Outcome>) {
        let (reply, outcome) = oneshot::channel();
        (Self { item, reply }, outcome)
    }
}

/// Where callers hand in their items. Cheap to clone.
pub struct Committer<W: Work> {
    requests: mpsc::Sender<Pending<W>>,
}

impl<W: Work> Clone for Committer<W> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

impl<W: Work> std::fmt::Debug for Committer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").field("work", &W::NAME).finish()
    }
}

impl<W: Work> Committer<W> {
    /// The committer and the task that must run for it to commit anything; the task ends when
    /// every handle is dropped and the last group is committed. Dropped (or aborted) before
    /// that, every item waiting or in flight is answered [`Error::Unavailable`] and its
    /// transaction, not committed, is rolled back.
    pub fn new(work: W, shape: Shape) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (requests, waiting) = mpsc::channel(shape.waiting.max(1));
        (Self { requests }, run(Arc::new(work), shape, waiting))
    }

    /// Does `item` in the next group and answers its outcome once committed.
    pub async fn submit(&self, item: W::Item) -> Result<W::Outcome> {
        let (pending, outcome) = Pending::new(item);
        self.requests
            .send(pending)
            .await
            .map_err(|_| Error::Unavailable(W::NAME))?;
        outcome.await.map_err(|_| Error::Unavailable(W::NAME))
    }
}

async fn run<W: Work>(work: Arc<W>, shape: Shape, mut waiting: mpsc::Receiver<Pending<W>>) {
    let committers = Arc::new(Semaphore::new(shape.committers.max(1)));
    let mut groups = tokio::task::JoinSet::new();
    // A committer first, then whatever waits by then: the longer all committers are busy, the
    // larger the next group.
    while let Ok(permit) = committers.clone().acquire_owned().await {
        let Some(first) = waiting.recv().await else {
            break;
        };
        let mut group = vec![first];
        while group.len() < shape.max_group {
            match waiting.try_recv() {
                Ok(pending) => group.push(pending),
                Err(_) => break,
            }
        }
        let work = work.clone();
        groups.spawn(async move {
            commit(work, group).await;
            drop(permit);
        });
        while groups.try_join_next().is_some() {}
    }
    while groups.join_next().await.is_some() {}
}

/// One group's work: together, or each alone when together fails.
pub(crate) async fn commit<W: Work>(work: Arc<W>, mut group: Vec<Pending<W>>) {
    metrics::histogram!("ecs_group_commit_items", "work" => W::NAME).record(group.len() as f64);
    let started = Instant::now();
    if group.len() == 1 {
        let pending = group.remove(0);
        let outcome = work.alone(&pending.item).await;
        seconds::<W>(started);
        let _ = pending.reply.send(outcome);
        return;
    }
    group.sort_by_key(|p| W::person(&p.item));
    let (items, replies): (Vec<W::Item>, Vec<_>) =
        group.into_iter().map(|p| (p.item, p.reply)).unzip();
    match work.together(&items).await {
        Ok(outcomes) if outcomes.len() == items.len() => {
            seconds::<W>(started);
            debug!(work = W::NAME, items = items.len(), "group committed");
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        failed => {
            let error = match failed {
                Err(e) => e.to_string(),
                Ok(outcomes) => format!("{} outcomes for {} items", outcomes.len(), items.len()),
            };
            metrics::counter!("ecs_group_commit_fallbacks_total", "work" => W::NAME).increment(1);
            warn!(work = W::NAME, %error, items = items.len(),
                "group commit failed; doing each item alone");
            let mut alone_each = tokio::task::JoinSet::new();
            for (item, reply) in items.into_iter().zip(replies) {
                let work = work.clone();
                alone_each.spawn(async move {
                    let started = Instant::now();
                    let outcome = work.alone(&item).await;
                    seconds::<W>(started);
                    let _ = reply.send(outcome);
                });
            }
            while alone_each.join_next().await.is_some() {}
        }
    }
}

fn seconds<W: Work>(started: Instant) {
    metrics::histogram!("ecs_group_commit_seconds", "work" => W::NAME)
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what it was asked to do; `together` fails when a group holds `poison`.
    struct Recording {
        groups: Mutex<Vec<Vec<u128>>>,
        poison: u128,
    }

    impl Work for Recording {
        type Item = u128;
        type Outcome = std::result::Result<&'static str, u128>;
        const NAME: &'static str = "recording";

        fn person(item: &u128) -> Uuid {
            Uuid::from_u128(*item)
        }

        async fn together(&self, items: &[u128]) -> Result<Vec<Self::Outcome>> {
            self.groups.lock().unwrap().push(items.to_vec());
            if items.contains(&self.poison) {
                return Err(Error::Internal("poisoned".into()));
            }
            Ok(items.iter().map(|_| Ok("together")).collect())
        }

        async fn alone(&self, item: &u128) -> Self::Outcome {
            if *item == self.poison {
                Err(*item)
            } else {
                Ok("alone")
            }
        }
    }

    fn recording(poison: u128) -> Arc<Recording> {
        Arc::new(Recording {
            groups: Mutex::new(Vec::new()),
            poison,
        })
    }

    #[tokio::test]
    async fn a_group_is_sorted_by_person_and_a_failing_one_is_done_item_by_item() {
        let work = recording(7);
        let (group, outcomes): (Vec<_>, Vec<_>) =
            [3u128, 1, 2].into_iter().map(Pending::new).unzip();
        commit(work.clone(), group).await;
        for outcome in outcomes {
            assert_eq!(outcome.await.unwrap(), Ok("together"));
        }
        assert_eq!(work.groups.lock().unwrap()[0], vec![1, 2, 3]);

        let (group, outcomes): (Vec<_>, Vec<_>) =
            [5u128, 7, 6].into_iter().map(Pending::new).unzip();
        commit(work.clone(), group).await;
        let mut got = Vec::new();
        for outcome in outcomes {
            got.push(outcome.await.unwrap());
        }
        // Index-aligned with what each caller handed in, whatever the sort did.
        assert_eq!(got, vec![Ok("alone"), Err(7), Ok("alone")]);
    }

    #[tokio::test]
    async fn a_committer_whose_task_is_gone_says_so() {
        let (committer, task) = Committer::new(
            Recording {
                groups: Mutex::new(Vec::new()),
                poison: 0,
            },
            Shape {
                max_group: 4,
                committers: 1,
                waiting: 4,
            },
        );
        drop(task);
        assert!(matches!(
            committer.submit(1).await,
            Err(Error::Unavailable("recording"))
        ));
    }
}

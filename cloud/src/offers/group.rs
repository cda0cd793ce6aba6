//! Recording assessments by group commit ([`crate::group_commit`]): under load, several
//! people's assessments share one transaction of a fixed number of statements, however many
//! they are.
//!
//! A group does what each assessment would do in its own [`PersonTx`], with the same checks in
//! the same order, only for many people at once (a [`PeopleTx`]):
//!
//! 1. lock the people's rows, in `user_id` order, reading their consent: a person erased since
//!    the assessment was prepared is `404`, a consent changed meanwhile `409`;
//! 2. claim the requests' idempotency keys: a key answered before replays its first answer
//!    and does nothing else;
//! 3. the allowance, authoritative under the lock, and each person's open offer superseded
//!    when it holds (`429` when it does not; a key claimed for such a request is let go, as
//!    its own transaction would have rolled back);
//! 4. every assessment and its offer inserted;
//! 5. the answers stored with their keys; commit.
//!
//! Two assessments of one person in one group are recorded one after the other in the same
//! transaction (steps 3–5 again for the second), so the second sees the first's assessment in
//! the allowance and supersedes its offer, as it would have in a transaction of its own.

use std::sync::Arc;

use axum::http::StatusCode;
use chrono::Utc;
use uuid::Uuid;

use super::{Assessor, CreditOffer, OfferView, Prepared, consent_changed, created, insert_offers};
use crate::{
    Error,
    error::Result,
    group_commit::{Committer, Shape, Work},
    idempotency::{self, Answer, Once},
    people::{self, PeopleTx, PersonTx},
};

/// Assessments per transaction at most.
pub const MAX_GROUP: usize = 32;
/// Group transactions in flight at once.
pub const COMMITTERS: usize = 3;
/// Assessments waiting for a committer before requests wait to hand theirs in.
const WAITING: usize = 1_024;

/// A prepared assessment to record, with the request's idempotency key if it had one.
pub struct ToRecord {
    prepared: Prepared,
    once: Option<Once>,
}

impl ToRecord {
    pub fn new(prepared: Prepared, once: Option<Once>) -> Self {
        Self { prepared, once }
    }
}

/// Where requests hand in their assessments to be recorded. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    committer: Committer<Assessments>,
}

impl Recorder {
    /// The recorder and the task that must run for it to record anything; the task ends when
    /// every handle is dropped and the last group is committed.
    pub fn new(assessor: Arc<Assessor>) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (committer, task) = Committer::new(
            Assessments { assessor },
            Shape {
                max_group: MAX_GROUP,
                committers: COMMITTERS,
                waiting: WAITING,
            },
        );
        (Self { committer }, task)
    }

    /// Records the assessment and answers `201` with the offer (or replays the first answer to
    /// its idempotency key), once committed.
    pub async fn submit(&self, item: ToRecord) -> Result<Answer> {
        self.committer.submit(item).await?
    }
}

/// Recording assessments, as group-commit work.
struct Assessments {
    assessor: Arc<Assessor>,
}

impl Work for Assessments {
    type Item = ToRecord;
    type Outcome = Result<Answer>;
    const NAME: &'static str = "assessments";

    fn person(item: &ToRecord) -> Uuid {
        item.prepared.user_id
    }

    async fn together(&self, items: &[ToRecord]) -> Result<Vec<Result<Answer>>> {
        let assessor = &*self.assessor;
        let people: Vec<Uuid> = items.iter().map(|i| i.prepared.user_id).collect();
        let mut tx = PeopleTx::lock(&assessor.pool, &people).await?;
        let mut outcomes: Vec<Option<Result<Answer>>> = items.iter().map(|_| None).collect();
        for (item, outcome) in items.iter().zip(outcomes.iter_mut()) {
            match tx.consent(item.prepared.user_id) {
                None => *outcome = Some(Err(Error::NotFound("user"))),
                Some(consent) if consent != item.prepared.consent => {
                    *outcome = Some(Err(consent_changed()))
                }
                Some(_) => {}
            }
        }

        let keyed: Vec<(usize, &Once)> = items
            .iter()
            .enumerate()
            .filter(|(i, _)| outcomes[*i].is_none())
            .filter_map(|(i, item)| item.once.as_ref().map(|once| (i, once)))
            .collect();
        let claims: Vec<(&Once, Uuid)> = keyed
            .iter()
            .map(|&(i, once)| (once, items[i].prepared.user_id))
            .collect();
        let replays = idempotency::claim_many(&mut tx, &claims).await?;
        for (&(i, _), replay) in keyed.iter().zip(replays) {
            if replay.is_some() {
                outcomes[i] = replay;
            }
        }

        let mut left: Vec<usize> = (0..items.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        while !left.is_empty() {
            // One assessment per person per round: a person's next one sees this one.
            let (mut round, mut later) = (Vec::new(), Vec::new());
            for i in left {
                let person = items[i].prepared.user_id;
                if round
                    .iter()
                    .any(|&j: &usize| items[j].prepared.user_id == person)
                {
                    later.push(i);
                } else {
                    round.push(i);
                }
            }
            left = later;
            record_round(assessor, &mut tx, items, &round, &mut outcomes).await?;
        }
        tx.commit().await?;
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Err(Error::Internal("an assessment had no outcome".into())))
            })
            .collect())
    }

    /// The assessment in the person's own transaction, retried when Postgres picks it as a
    /// victim.
    async fn alone(&self, item: &ToRecord) -> Result<Answer> {
        let (assessor, prepared, once) = (&*self.assessor, &item.prepared, item.once.as_ref());
        people::retry(|| async move {
            let mut tx = PersonTx::lock(&assessor.pool, prepared.user_id).await?;
            let answer = idempotency::answer_once!(once, &mut tx, StatusCode::CREATED, {
                let offer = assessor.record(&mut tx, prepared).await?;
                OfferView::assessed(offer, prepared.score())
            });
            tx.finish().await?;
            Ok(answer)
        })
        .await
    }
}

/// Steps 3–5 for `round` (indices into `items`, one per person), setting their outcomes.
async fn record_round(
    assessor: &Assessor,
    tx: &mut PeopleTx,
    items: &[ToRecord],
    round: &[usize],
    outcomes: &mut [Option<Result<Answer>>],
) -> Result<()> {
    let checked_at = Utc::now();
    let people: Vec<Uuid> = round.iter().map(|&i| items[i].prepared.user_id).collect();
    let allowances = assessor
        .supersede_within_allowance(tx.conn(), &people, checked_at)
        .await?;
    let mut recording: Vec<(usize, CreditOffer)> = Vec::with_capacity(round.len());
    let mut released: Vec<&Once> = Vec::new();
    for &i in round {
        let prepared = &items[i].prepared;
        let (used, oldest) = allowances
            .iter()
            .find(|a| a.user_id == prepared.user_id)
            .map_or((0, None), |a| (a.used, a.oldest));
        let offer = assessor
            .within_allowance(used, oldest, checked_at)
            .and_then(|()| assessor.offer_for(prepared));
        match offer {
            Ok(offer) => recording.push((i, offer)),
            Err(e) => {
                released.extend(items[i].once.as_ref());
                outcomes[i] = Some(Err(e));
            }
        }
    }
    idempotency::release_many(tx, &released).await?;
    let rows: Vec<(&CreditOffer, &Prepared)> = recording
        .iter()
        .map(|(i, offer)| (offer, &items[*i].prepared))
        .collect();
    if !rows.is_empty() {
        insert_offers(tx.conn(), &rows).await?;
    }
    let mut answers: Vec<(usize, Answer)> = Vec::with_capacity(recording.len());
    for (i, offer) in recording {
        let prepared = &items[i].prepared;
        created(&offer, prepared);
        let view = OfferView::assessed(offer, prepared.score());
        answers.push((i, Answer::fresh(StatusCode::CREATED, &view)?));
    }
    let keyed: Vec<(&Once, &Answer)> = answers
        .iter()
        .filter_map(|(i, answer)| items[*i].once.as_ref().map(|once| (once, answer)))
        .collect();
    idempotency::record_many(tx, &keyed).await?;
    for (i, answer) in answers {
        outcomes[i] = Some(Ok(answer));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::PgPool;

    use super::*;
    use crate::{
        auth::Principal,
        idempotency::{IdempotencyKey, ServerKey},
        model::scorecard::Scorecard,
        offers::AssessmentLimit,
        policy::CreditPolicy,
    };

    fn assessor(pool: &PgPool, max: u32) -> Arc<Assessor> {
        Arc::new(Assessor {
            pool: pool.clone(),
            model: Arc::new(Scorecard::built_in().unwrap()),
            policy: CreditPolicy::default(),
            offer_ttl: Duration::from_secs(3600),
            limit: AssessmentLimit {
                max,
                period: Duration::from_secs(3600),
            },
        })
    }

    /// A person with three months of salary (so their offers are approved and open).
    async fn salaried(pool: &PgPool) -> Uuid {
        let user_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO users (user_id, display_name, emotional_data_consent) VALUES ($1, 'x', false)",
        )
        .bind(user_id)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO transactions (transaction_id, user_id, external_ref, direction,
                 amount_cents, category, occurred_at)
             SELECT gen_random_uuid(), $1, 'salary-' || m, 'inflow', 800000, 'salary',
                 now() - make_interval(months => m) - interval '1 hour'
             FROM generate_series(0, 2) m",
        )
        .bind(user_id)
        .execute(pool)
        .await
        .unwrap();
        user_id
    }

    fn once(user_id: Uuid, key: &str, body: &str) -> Once {
        Once::new(
            &ServerKey::derive_from("test"),
            Principal::User(user_id),
            &IdempotencyKey::parse(key.as_bytes()).unwrap(),
            "/v1/users/x/credit-offers",
            &body,
        )
    }

    async fn item(assessor: &Assessor, user_id: Uuid, once: Option<Once>) -> ToRecord {
        let prepared = assessor.prepare(user_id, Default::default()).await.unwrap();
        ToRecord::new(prepared, once)
    }

    /// Records `items` as one group's transaction, sorted by person as the committer sorts
    /// them, and answers their outcomes in the order given. Without the committer's fallback:
    /// a group whose transaction failed would be done person by person and hide it.
    async fn group(assessor: &Arc<Assessor>, items: Vec<ToRecord>) -> Vec<Result<Answer>> {
        let mut indexed: Vec<(usize, ToRecord)> = items.into_iter().enumerate().collect();
        indexed.sort_by_key(|(_, item)| item.prepared.user_id);
        let (order, sorted): (Vec<usize>, Vec<ToRecord>) = indexed.into_iter().unzip();
        let work = Assessments {
            assessor: assessor.clone(),
        };
        let outcomes = work
            .together(&sorted)
            .await
            .expect("the group's transaction commits");
        let mut answers: Vec<Option<Result<Answer>>> = order.iter().map(|_| None).collect();
        for (i, outcome) in order.into_iter().zip(outcomes) {
            answers[i] = Some(outcome);
        }
        answers.into_iter().map(Option::unwrap).collect()
    }

    async fn count(pool: &PgPool, sql: &'static str, user_id: Uuid) -> i64 {
        sqlx::query_scalar(sql)
            .bind(user_id)
            .fetch_one(pool)
            .await
            .unwrap()
    }

    fn offer_of(answer: &Answer) -> serde_json::Value {
        serde_json::from_slice(&answer.body).unwrap()
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_group_keeps_each_persons_checks_and_orders_one_persons_two(pool: PgPool) {
        let assessor = assessor(&pool, 100);
        let (a, erased, withdrawn, twice) = (
            salaried(&pool).await,
            salaried(&pool).await,
            salaried(&pool).await,
            salaried(&pool).await,
        );
        let items = vec![
            item(&assessor, twice, None).await,
            item(&assessor, a, None).await,
            item(&assessor, erased, None).await,
            item(&assessor, withdrawn, None).await,
            item(&assessor, twice, None).await,
        ];
        // Between the preparation and the record: one person erased, one consenting.
        sqlx::query("DELETE FROM users WHERE user_id = $1")
            .bind(erased)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE users SET emotional_data_consent = true, consent_recorded_at = now()
             WHERE user_id = $1",
        )
        .bind(withdrawn)
        .execute(&pool)
        .await
        .unwrap();

        let answers = group(&assessor, items).await;
        assert!(
            matches!(&answers[2], Err(Error::NotFound("user"))),
            "{:?}",
            answers[2]
        );
        assert!(
            matches!(&answers[3], Err(Error::Conflict(_))),
            "{:?}",
            answers[3]
        );
        for i in [0, 1, 4] {
            let answer = answers[i].as_ref().unwrap();
            assert_eq!(answer.status, StatusCode::CREATED);
            assert_eq!(offer_of(answer)["status"], "offered", "{i}");
        }
        // The answer is the offer as stored.
        let first = offer_of(answers[1].as_ref().unwrap());
        let stored =
            super::super::find(&pool, first["offer_id"].as_str().unwrap().parse().unwrap())
                .await
                .unwrap();
        assert_eq!(
            serde_json::to_value(OfferView::from(stored)).unwrap(),
            serde_json::Value::Object(
                first
                    .as_object()
                    .unwrap()
                    .clone()
                    .into_iter()
                    .filter(|(k, _)| k != "risk")
                    .collect()
            )
        );
        // One person's two: both recorded, the second superseding the first.
        let (one, two) = (
            offer_of(answers[0].as_ref().unwrap()),
            offer_of(answers[4].as_ref().unwrap()),
        );
        let status = |id: &serde_json::Value| {
            let pool = pool.clone();
            let id: Uuid = id.as_str().unwrap().parse().unwrap();
            async move {
                sqlx::query_scalar::<_, String>(
                    "SELECT status FROM credit_offers WHERE offer_id = $1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        let mut statuses = vec![
            status(&one["offer_id"]).await,
            status(&two["offer_id"]).await,
        ];
        statuses.sort();
        assert_eq!(statuses, ["offered", "superseded"]);
        let assessed = "SELECT count(*) FROM risk_assessments WHERE user_id = $1";
        assert_eq!(count(&pool, assessed, twice).await, 2);
        assert_eq!(count(&pool, assessed, a).await, 1);
        assert_eq!(count(&pool, assessed, withdrawn).await, 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn in_a_group_a_key_replays_and_a_refused_request_lets_its_key_go(pool: PgPool) {
        let assessor = assessor(&pool, 2);
        let (keyed, spent, other) = (
            salaried(&pool).await,
            salaried(&pool).await,
            salaried(&pool).await,
        );
        let key = "key-0123456789abcdef";
        // Prepared while `spent`'s allowance holds; by the record it is used up.
        let late = item(
            &assessor,
            spent,
            Some(once(spent, "key-of-the-spent-one", "{}")),
        )
        .await;
        for _ in 0..2 {
            let used = group(&assessor, vec![item(&assessor, spent, None).await]).await;
            assert!(used[0].is_ok());
        }
        let first = item(&assessor, keyed, Some(once(keyed, key, "{}"))).await;
        let answers = group(&assessor, vec![first, late]).await;
        let created = answers[0].as_ref().unwrap();
        assert!(!created.replayed);
        assert!(
            matches!(&answers[1], Err(Error::RateLimited { .. })),
            "{:?}",
            answers[1]
        );
        let keys = "SELECT count(*) FROM idempotency_keys WHERE user_id = $1";
        assert_eq!(
            count(&pool, keys, spent).await,
            0,
            "the refused request's key is let go"
        );
        assert_eq!(count(&pool, keys, keyed).await, 1);

        // The same key and body again, racing past the handler's replay into a group: the
        // first answer, and nothing new.
        let again = group(
            &assessor,
            vec![
                item(&assessor, keyed, Some(once(keyed, key, "{}"))).await,
                item(&assessor, other, None).await,
            ],
        )
        .await;
        let replayed = again[0].as_ref().unwrap();
        assert!(replayed.replayed);
        assert_eq!(replayed.body, created.body);
        assert!(again[1].is_ok());
        let assessed = "SELECT count(*) FROM risk_assessments WHERE user_id = $1";
        assert_eq!(count(&pool, assessed, keyed).await, 1);

        // The same key with another body: refused.
        let reused = group(
            &assessor,
            vec![
                item(&assessor, keyed, Some(once(keyed, key, "another"))).await,
                item(&assessor, other, None).await,
            ],
        )
        .await;
        assert!(
            matches!(&reused[0], Err(Error::IdempotencyKeyReused)),
            "{:?}",
            reused[0]
        );
        assert!(reused[1].is_ok());
        assert_eq!(count(&pool, assessed, keyed).await, 1);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_recorder_stopped_mid_group_answers_unavailable_and_writes_nothing(pool: PgPool) {
        let assessor = assessor(&pool, 100);
        let (held, free) = (salaried(&pool).await, salaried(&pool).await);
        // A transaction holding one person's row: the group waits on it (up to its lock wait).
        let mut holder = pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE")
            .bind(held)
            .execute(&mut *holder)
            .await
            .unwrap();
        let (recorder, task) = Recorder::new(assessor.clone());
        let task = tokio::spawn(task);
        let submit = |user_id: Uuid| {
            let (recorder, assessor) = (recorder.clone(), assessor.clone());
            tokio::spawn(async move {
                let prepared = assessor.prepare(user_id, Default::default()).await?;
                recorder.submit(ToRecord::new(prepared, None)).await
            })
        };
        // Every committer waits on the held person; the free person's assessments queue
        // behind them.
        let mut waiting = Vec::new();
        for _ in 0..COMMITTERS {
            waiting.push(submit(held));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        waiting.extend([submit(free), submit(free)]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        task.abort();
        for request in waiting {
            let outcome = request.await.unwrap();
            assert!(
                matches!(outcome, Err(Error::Unavailable("assessments"))),
                "{outcome:?}"
            );
        }
        holder.rollback().await.unwrap();
        // Nothing was committed, and the stopped transactions hold no lock.
        let assessed = "SELECT count(*) FROM risk_assessments WHERE user_id = $1";
        assert_eq!(count(&pool, assessed, held).await, 0);
        assert_eq!(count(&pool, assessed, free).await, 0);
        let relocked = tokio::time::timeout(Duration::from_secs(3), PersonTx::lock(&pool, held));
        assert!(relocked.await.unwrap().is_ok());
        // A recorder whose task is gone says so at once.
        let prepared = assessor.prepare(free, Default::default()).await.unwrap();
        assert!(matches!(
            recorder.submit(ToRecord::new(prepared, None)).await,
            Err(Error::Unavailable("assessments"))
        ));
    }
}

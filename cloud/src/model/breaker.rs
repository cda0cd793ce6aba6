//! A circuit breaker around any [`RiskModel`].
//!
//! When the model keeps failing, calling it anyway only makes every credit request wait for a
//! timeout and piles load on a service that is trying to recover. The breaker counts consecutive
//! failures; at [`BreakerSettings::failure_threshold`] it *opens*, and calls fail at once with
//! [`ModelError::Unavailable`] without touching the model. After
//! [`BreakerSettings::open_for`] it is *half-open*: exactly one trial call goes through while
//! every other call still fails fast. The trial's success closes the breaker; its failure opens
//! it for another cool-down.
//!
//! Invariant: while half-open, at most one call is in flight to the model. A trial whose caller
//! gives up (its future is dropped) hands the trial to the next caller, so the breaker cannot
//! stay half-open forever. Results of calls admitted before a state change are ignored, so a slow
//! success from before the breaker opened cannot close it.
//!
//! Only failures of the model count: [`ModelError::Unavailable`] and
//! [`ModelError::InvalidScore`]. A [`ModelError::SchemaMismatch`] means the model answered and
//! the caller sent the wrong thing, so it counts as the model being up.
//!
//! Time is `tokio::time::Instant`, so tests pause the clock instead of sleeping through the
//! cool-down. Transitions are logged (with the model's name) and exported as metrics, each
//! labelled with `model`: `ecs_model_breaker_state` (0 closed, 1 open, 2 half-open),
//! `ecs_model_calls_total{outcome}` (`success`; `failure`; `refused`: the model turned the
//! request down; `rejected`: failed fast, the model was not called) and
//! `ecs_model_call_duration_seconds` (calls that reached the model).

use std::{
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;
use tracing::{info, warn};

use super::{FeatureVector, ModelError, RiskModel, RiskScore, ScoreFuture};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (at least 1).
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets a trial call through.
    pub open_for: Duration,
}

/// The breaker's state as observed from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the `ecs_model_breaker_state` gauge.
    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A trial call is in flight.
    HalfOpen,
}

impl State {
    fn public(self) -> BreakerState {
        match self {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

struct Shared {
    state: State,
    /// Bumped on every transition; a call remembers the value it was admitted under, and its
    /// result counts only if nothing changed meanwhile.
    generation: u64,
}

/// Wraps `M`, failing fast while `M` is known to be down.
pub struct Breaker<M> {
    inner: M,
    settings: BreakerSettings,
    shared: Mutex<Shared>,
}

/// What the model's answer says about the model's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Healthy,
    Failing,
}

impl Verdict {
    fn of(result: &Result<RiskScore, ModelError>) -> Self {
        match result {
            Ok(_) | Err(ModelError::SchemaMismatch { .. }) => Verdict::Healthy,
            Err(ModelError::Unavailable(_) | ModelError::InvalidScore(_)) => Verdict::Failing,
        }
    }
}

impl<M: RiskModel> Breaker<M> {
    pub fn new(inner: M, settings: BreakerSettings) -> Self {
        let settings = BreakerSettings {
            failure_threshold: settings.failure_threshold.max(1),
            ..settings
        };
        metrics::gauge!("ecs_model_breaker_state", "model" => inner.name().to_owned())
            .set(BreakerState::Closed.gauge());
        Self {
            inner,
            settings,
            shared: Mutex::new(Shared {
                state: State::Closed { failures: 0 },
                generation: 0,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state.public()
    }

    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// Every critical section is a few assignments and never panics midway, so a poisoned lock
    /// still holds a consistent state.
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transition(&self, shared: &mut Shared, to: State) {
        let from = shared.state.public();
        shared.state = to;
        shared.generation += 1;
        let model = self.inner.name();
        let to = to.public();
        metrics::gauge!("ecs_model_breaker_state", "model" => model.to_owned()).set(to.gauge());
        match to {
            BreakerState::Open => warn!(
                model,
                from = from.as_str(),
                to = to.as_str(),
                open_for_ms = self.settings.open_for.as_millis() as u64,
                "circuit breaker opened: calls fail fast"
            ),
            BreakerState::HalfOpen => info!(
                model,
                from = from.as_str(),
                to = to.as_str(),
                "circuit breaker half-open: one trial call"
            ),
            BreakerState::Closed => info!(
                model,
                from = from.as_str(),
                to = to.as_str(),
                "circuit breaker closed"
            ),
        }
    }

    /// Lets a call through (returning the generation it runs under and whether it is the
    /// trial), or says why not.
    fn admit(&self) -> Result<(u64, bool), String> {
        let mut shared = self.lock();
        match shared.state {
            State::Closed { .. } => Ok((shared.generation, false)),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    self.transition(&mut shared, State::HalfOpen);
                    Ok((shared.generation, true))
                } else {
                    Err(format!(
                        "circuit open for model {}; next trial in {} ms",
                        self.inner.name(),
                        until.duration_since(now).as_millis()
                    ))
                }
            }
            State::HalfOpen => Err(format!(
                "circuit half-open for model {}; a trial call is in flight",
                self.inner.name()
            )),
        }
    }

    fn record(&self, generation: u64, verdict: Verdict) {
        let mut shared = self.lock();
        if shared.generation != generation {
            return;
        }
        let reopen = State::Open {
            until: Instant::now() + self.settings.open_for,
        };
        match (shared.state, verdict) {
            (State::Closed { failures }, Verdict::Healthy) => {
                if failures > 0 {
                    shared.state = State::Closed { failures: 0 };
                }
            }
            (State::Closed { failures }, Verdict::Failing) => {
                let failures = failures + 1;
                if failures >= self.settings.failure_threshold {
                    self.transition(&mut shared, reopen);
                } else {
                    shared.state = State::Closed { failures };
                }
            }
            (State::HalfOpen, Verdict::Healthy) => {
                self.transition(&mut shared, State::Closed { failures: 0 })
            }
            (State::HalfOpen, Verdict::Failing) => self.transition(&mut shared, reopen),
            // Leaving Open bumps the generation, so no admitted call finds it open.
            (State::Open { .. }, _) => {}
        }
    }

    /// The trial's caller gave up before an answer: that says nothing about the model, so the
    /// next caller may try at once.
    fn abandon_trial(&self, generation: u64) {
        let mut shared = self.lock();
        if shared.generation == generation && matches!(shared.state, State::HalfOpen) {
            warn!(
                model = self.inner.name(),
                "trial call abandoned by its caller"
            );
            self.transition(
                &mut shared,
                State::Open {
                    until: Instant::now(),
                },
            );
        }
    }

    async fn call(&self, features: &FeatureVector) -> Result<RiskScore, ModelError> {
        let model = self.inner.name().to_owned();
        let (generation, trial) = match self.admit() {
            Ok(admitted) => admitted,
            Err(reason) => {
                let outcome = "rejected";
                metrics::counter!("ecs_model_calls_total", "model" => model, "outcome" => outcome)
                    .increment(1);
                return Err(ModelError::Unavailable(reason));
            }
        };
        let mut guard = TrialGuard {
            breaker: self,
            generation,
            armed: trial,
        };
        let started = Instant::now();
        let result = self.inner.score(features).await;
        guard.armed = false;
        let verdict = Verdict::of(&result);
        self.record(generation, verdict);
        let outcome = match (&result, verdict) {
            (Ok(_), _) => "success",
            (Err(_), Verdict::Healthy) => "refused",
            (Err(_), Verdict::Failing) => "failure",
        };
        metrics::histogram!("ecs_model_call_duration_seconds", "model" => model.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("ecs_model_calls_total", "model" => model, "outcome" => outcome)
            .increment(1);
        result
    }
}

/// Hands the trial on if the trial call's future is dropped before the model answered.
struct TrialGuard<'a, M: RiskModel> {
    breaker: &'a Breaker<M>,
    generation: u64,
    armed: bool,
}

impl<M: RiskModel> Drop for TrialGuard<'_, M> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.abandon_trial(self.generation);
        }
    }
}

impl<M: RiskModel> RiskModel for Breaker<M> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> &str {
        self.inner.version()
    }

    fn score<'a>(&'a self, features: &'a FeatureVector) -> ScoreFuture<'a> {
        Box::pin(self.call(features))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use tokio::sync::Semaphore;

    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(10);

    /// A model that counts its calls, fails while `failing`, and (when `gated`) answers only
    /// once the test adds a permit to `gate`.
    struct Fake {
        calls: AtomicUsize,
        failing: AtomicBool,
        gated: AtomicBool,
        gate: Semaphore,
    }

    impl Fake {
        fn new() -> Self {
            Self {
                calls: AtomicUsize::new(0),
                failing: AtomicBool::new(false),
                gated: AtomicBool::new(false),
                gate: Semaphore::new(0),
            }
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        fn fail(&self, failing: bool) {
            self.failing.store(failing, Ordering::SeqCst);
        }
    }

    impl RiskModel for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn version(&self) -> &str {
            "test"
        }
        fn score<'a>(&'a self, _features: &'a FeatureVector) -> ScoreFuture<'a> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self.gated.load(Ordering::SeqCst) {
                    let _ = self.gate.acquire().await.map(|p| p.forget());
                }
                if self.failing.load(Ordering::SeqCst) {
                    Err(ModelError::Unavailable("fake outage".into()))
                } else {
                    Ok(RiskScore {
                        probability_of_default: 0.1,
                        model_name: "fake".into(),
                        model_version: "test".into(),
                        contributions: Vec::new(),
                    })
                }
            })
        }
    }

    fn breaker(threshold: u32) -> (Arc<Fake>, Arc<Breaker<Arc<Fake>>>) {
        let fake = Arc::new(Fake::new());
        let breaker = Breaker::new(
            fake.clone(),
            BreakerSettings {
                failure_threshold: threshold,
                open_for: OPEN_FOR,
            },
        );
        (fake, Arc::new(breaker))
    }

    fn features() -> FeatureVector {
        FeatureVector::new([("x", 1.0)])
    }

    async fn open(fake: &Fake, breaker: &Breaker<Arc<Fake>>, threshold: u32) {
        fake.fail(true);
        for _ in 0..threshold {
            assert!(breaker.score(&features()).await.is_err());
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    fn is_fast_failure(result: Result<RiskScore, ModelError>, says: &str) -> bool {
        matches!(result, Err(ModelError::Unavailable(reason)) if reason.contains(says))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_consecutive_failures_then_fails_fast_without_calling() {
        let (fake, breaker) = breaker(3);
        fake.fail(true);
        for _ in 0..2 {
            assert!(breaker.score(&features()).await.is_err());
            assert_eq!(breaker.state(), BreakerState::Closed);
        }
        assert!(breaker.score(&features()).await.is_err());
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(fake.calls(), 3);
        fake.fail(false);
        for _ in 0..10 {
            assert!(is_fast_failure(
                breaker.score(&features()).await,
                "circuit open"
            ));
        }
        assert_eq!(fake.calls(), 3, "an open breaker never calls the model");
    }

    #[tokio::test(start_paused = true)]
    async fn only_consecutive_failures_count() {
        let (fake, breaker) = breaker(3);
        for failing in [true, true, false, true, true, false, true, true] {
            fake.fail(failing);
            let _ = breaker.score(&features()).await;
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cool_down_a_successful_trial_closes_it() {
        let (fake, breaker) = breaker(2);
        open(&fake, &breaker, 2).await;
        fake.fail(false);
        tokio::time::advance(OPEN_FOR - Duration::from_millis(1)).await;
        assert!(is_fast_failure(
            breaker.score(&features()).await,
            "circuit open"
        ));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(breaker.score(&features()).await.is_ok());
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(fake.calls(), 3);
        assert!(breaker.score(&features()).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_opens_it_for_another_cool_down() {
        let (fake, breaker) = breaker(2);
        open(&fake, &breaker, 2).await;
        tokio::time::advance(OPEN_FOR).await;
        assert!(is_fast_failure(
            breaker.score(&features()).await,
            "fake outage"
        ));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(fake.calls(), 3);
        tokio::time::advance(OPEN_FOR / 2).await;
        assert!(is_fast_failure(
            breaker.score(&features()).await,
            "circuit open"
        ));
        assert_eq!(fake.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_exactly_one_trial_through() {
        let (fake, breaker) = breaker(1);
        open(&fake, &breaker, 1).await;
        fake.fail(false);
        fake.gated.store(true, Ordering::SeqCst);
        tokio::time::advance(OPEN_FOR).await;
        let trial = tokio::spawn({
            let breaker = breaker.clone();
            async move { breaker.score(&features()).await }
        });
        while fake.calls() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let others: Vec<_> = (0..20)
            .map(|_| {
                let breaker = breaker.clone();
                tokio::spawn(async move { breaker.score(&features()).await })
            })
            .collect();
        for other in others {
            assert!(is_fast_failure(other.await.unwrap(), "half-open"));
        }
        assert_eq!(fake.calls(), 2, "one trial only");
        fake.gate.add_permits(1);
        assert!(trial.await.unwrap().is_ok());
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_trial_hands_the_trial_to_the_next_caller() {
        let (fake, breaker) = breaker(1);
        open(&fake, &breaker, 1).await;
        fake.fail(false);
        fake.gated.store(true, Ordering::SeqCst);
        tokio::time::advance(OPEN_FOR).await;
        let gave_up =
            tokio::time::timeout(Duration::from_millis(100), breaker.score(&features())).await;
        assert!(gave_up.is_err());
        assert_eq!(breaker.state(), BreakerState::Open);
        fake.gated.store(false, Ordering::SeqCst);
        assert!(breaker.score(&features()).await.is_ok());
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_success_from_before_the_opening_does_not_close_it() {
        let (fake, breaker) = breaker(1);
        fake.gated.store(true, Ordering::SeqCst);
        let slow = tokio::spawn({
            let breaker = breaker.clone();
            async move { breaker.score(&features()).await }
        });
        while fake.calls() < 1 {
            tokio::task::yield_now().await;
        }
        fake.gated.store(false, Ordering::SeqCst);
        open(&fake, &breaker, 1).await;
        fake.fail(false);
        fake.gate.add_permits(1);
        assert!(slow.await.unwrap().is_ok());
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_request_is_not_a_model_failure() {
        struct Picky;
        impl RiskModel for Picky {
            fn name(&self) -> &str {
                "picky"
            }
            fn version(&self) -> &str {
                "1"
            }
            /// Refuses every vector, as a model does with one of another schema.
            fn score<'a>(&'a self, f: &'a FeatureVector) -> ScoreFuture<'a> {
                Box::pin(std::future::ready(Err(ModelError::SchemaMismatch {
                    model: "picky".into(),
                    expected: "another schema".into(),
                    got: f.schema.clone(),
                })))
            }
        }
        let breaker = Breaker::new(
            Picky,
            BreakerSettings {
                failure_threshold: 1,
                open_for: OPEN_FOR,
            },
        );
        for _ in 0..3 {
            assert!(matches!(
                breaker.score(&features()).await,
                Err(ModelError::SchemaMismatch { .. })
            ));
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}

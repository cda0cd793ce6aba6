//! Per-person rolling emotional features: one row per person, folded forward by every committed
//! batch of readings, so a credit decision reads one row instead of scanning history.
//!
//! # The statistics
//!
//! Every feature is an **exponentially weighted** statistic over the person's readings, with
//! weights that decay with the *time the reading was taken* (not with its position in the stream):
//! a reading [`HALF_LIFE`] older than the newest one counts half as much, two half-lives a
//! quarter, and so on. The state is a weighted mean (plus a weighted variance for valence) and the
//! total weight `ew_weight` of everything folded in so far, all relative to the newest reading
//! time (`last_reading_at`).
//!
//! Weighting by time rather than by count makes the features independent of the sampling rate
//! (a 1 Hz and a 10 Hz sensor describe the same person) and lets a long silence fade the past by
//! itself. It also makes the fold **order-independent**: a reading taken at `t` always enters with
//! weight `2^-(T - t)/HALF_LIFE` relative to the newest time `T`, whether it arrives before or after
//! newer readings, so a batch resent late (after a lost ack) or readings from a person's second
//! phone give the same features as in-order arrival, up to floating-point rounding.
//!
//! # Why six hours
//!
//! Psychology separates momentary *emotions* (seconds to minutes) from *moods* (hours to days).
//! Credit should react to mood, never to a momentary spike: an offer timed to a burst of
//! impulsivity would exploit the person, which is exactly what the policy's vulnerability rules
//! must prevent. A six-hour half-life lets a day's mood dominate (yesterday counts about 6 %),
//! while a minute of agitation moves nothing.

use chrono::{DateTime, TimeDelta, Utc};
use ecs_protocol::{Intent, Reading};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgExecutor, Row};
use uuid::Uuid;

use crate::error::Result;

/// Time after which a reading's weight has halved. See the module docs for the choice.
pub const HALF_LIFE: TimeDelta = TimeDelta::hours(6);

/// A reading with stress at or above this level counts as "stressed" for [`EmotionFeatures::stress_share`].
pub const HIGH_STRESS: u8 = 70;

/// A person's emotional features: exactly the columns of the `emotion_features` table.
///
/// Means keep the sensor's units (valence −100..=100, arousal and stress 0..=100); shares and
/// intent rates are 0..=1. [`EmotionFeatures::as_named_vector`] is the normalised view a risk
/// model consumes.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow, utoipa::ToSchema)]
pub struct EmotionFeatures {
    /// Readings folded in so far (a plain count, not decayed).
    pub readings_count: i64,
    /// Total decayed weight of those readings, relative to `last_reading_at` (≥ 1 once a reading
    /// exists: the newest reading alone weighs 1). Kept so the next fold can weigh new readings
    /// against the past correctly. Internal bookkeeping: not shown in the API.
    #[serde(skip_serializing)]
    #[schema(ignore)]
    pub ew_weight: f64,
    /// Weighted mean valence, −100..=100.
    pub mean_valence: f64,
    /// Weighted (population) variance of valence: how much the person's mood swings.
    pub valence_variance: f64,
    /// Weighted mean arousal, 0..=100.
    pub mean_arousal: f64,
    /// Weighted mean stress, 0..=100.
    pub mean_stress: f64,
    /// Weighted share of readings with stress ≥ [`HIGH_STRESS`], 0..=1.
    pub stress_share: f64,
    /// Weighted mean of (purchase-intent confidence × arousal), both scaled to 0..=1: wanting to
    /// buy while agitated.
    pub impulsivity: f64,
    /// Weighted mean confidence of a purchase-intent thought (0 for readings without one), 0..=1.
    pub purchase_intent: f64,
    /// Weighted mean confidence of a financial-worry thought, 0..=1.
    pub financial_worry: f64,
    /// Weighted mean confidence of a saving-intent thought, 0..=1.
    pub saving_intent: f64,
    pub first_reading_at: DateTime<Utc>,
    /// The newest reading time seen; the reference time of `ew_weight`.
    pub last_reading_at: DateTime<Utc>,
}

/// What one reading contributes to each statistic, in the statistic's units.
#[derive(Debug, Clone, Copy)]
struct Observation {
    valence: f64,
    arousal: f64,
    stress: f64,
    stressed: f64,
    impulsivity: f64,
    purchase_intent: f64,
    financial_worry: f64,
    saving_intent: f64,
}

impl Observation {
    /// Inputs are clamped to the sensor's ranges, so the fold keeps the table's CHECKs even for a
    /// reading that skipped validation.
    fn of(reading: &Reading) -> Self {
        let level = |v: u8| f64::from(v.min(100));
        let confidence = |intent: Intent| {
            reading
                .thoughts
                .iter()
                .filter(|t| t.intent == intent)
                .map(|t| f64::from(t.confidence.min(100)) / 100.0)
                .fold(0.0, f64::max)
        };
        let arousal = level(reading.arousal);
        let purchase_intent = confidence(Intent::PurchaseIntent);
        Self {
            valence: f64::from(reading.valence.clamp(-100, 100)),
            arousal,
            stress: level(reading.stress),
            stressed: if reading.stress >= HIGH_STRESS {
                1.0
            } else {
                0.0
            },
            impulsivity: purchase_intent * arousal / 100.0,
            purchase_intent,
            financial_worry: confidence(Intent::FinancialWorry),
            saving_intent: confidence(Intent::SavingIntent),
        }
    }
}

/// Weight of a reading `elapsed` older than the reference time: `2^(-elapsed / HALF_LIFE)`.
fn decay(elapsed: TimeDelta) -> f64 {
    let elapsed_secs = elapsed.num_milliseconds() as f64 / 1000.0;
    let half_life_secs = HALF_LIFE.num_seconds() as f64;
    (-elapsed_secs / half_life_secs).exp2()
}

impl EmotionFeatures {
    /// Folds `readings` (each with the time it was taken) into `prev`.
    ///
    /// `None` only when there is nothing at all: no previous features and no readings. The result
    /// does not depend on the order of `readings`, nor on how they are split between calls (up to
    /// floating-point rounding); the caller must pass each reading once (ingest passes only the
    /// readings its insert actually stored).
    pub fn update(
        prev: Option<&EmotionFeatures>,
        readings: &[(DateTime<Utc>, &Reading)],
    ) -> Option<EmotionFeatures> {
        let mut rest = readings.iter();
        let mut features = match prev {
            Some(prev) => prev.clone(),
            None => {
                let (at, reading) = rest.next()?;
                Self::first(*at, reading)
            }
        };
        for (at, reading) in rest {
            features.add(*at, reading);
        }
        features.clamp_to_bounds();
        Some(features)
    }

    fn first(at: DateTime<Utc>, reading: &Reading) -> Self {
        let x = Observation::of(reading);
        Self {
            readings_count: 1,
            ew_weight: 1.0,
            mean_valence: x.valence,
            valence_variance: 0.0,
            mean_arousal: x.arousal,
            mean_stress: x.stress,
            stress_share: x.stressed,
            impulsivity: x.impulsivity,
            purchase_intent: x.purchase_intent,
            financial_worry: x.financial_worry,
            saving_intent: x.saving_intent,
            first_reading_at: at,
            last_reading_at: at,
        }
    }

    /// One step of the weighted (West) update: a reading newer than everything so far moves the
    /// reference time forward and decays the past; an older one enters with its decayed weight.
    fn add(&mut self, at: DateTime<Utc>, reading: &Reading) {
        let weight = if at > self.last_reading_at {
            self.ew_weight *= decay(at - self.last_reading_at);
            self.last_reading_at = at;
            1.0
        } else {
            decay(self.last_reading_at - at)
        };
        self.readings_count = self.readings_count.saturating_add(1);
        self.first_reading_at = self.first_reading_at.min(at);
        if weight <= 0.0 {
            // Older than ~1000 half-lives: it counts, but moves no statistic.
            return;
        }
        let x = Observation::of(reading);
        let total = self.ew_weight + weight;
        let share = weight / total;
        let step = |mean: &mut f64, value: f64| *mean += share * (value - *mean);

        let delta = x.valence - self.mean_valence;
        step(&mut self.mean_valence, x.valence);
        self.valence_variance = (self.valence_variance * self.ew_weight
            + weight * delta * (x.valence - self.mean_valence))
            / total;
        step(&mut self.mean_arousal, x.arousal);
        step(&mut self.mean_stress, x.stress);
        step(&mut self.stress_share, x.stressed);
        step(&mut self.impulsivity, x.impulsivity);
        step(&mut self.purchase_intent, x.purchase_intent);
        step(&mut self.financial_worry, x.financial_worry);
        step(&mut self.saving_intent, x.saving_intent);
        self.ew_weight = total;
    }

    /// Rounding can overshoot a bound by an ulp; the table's CHECKs must never fail for that.
    fn clamp_to_bounds(&mut self) {
        self.mean_valence = self.mean_valence.clamp(-100.0, 100.0);
        self.valence_variance = self.valence_variance.clamp(0.0, 100.0 * 100.0);
        self.mean_arousal = self.mean_arousal.clamp(0.0, 100.0);
        self.mean_stress = self.mean_stress.clamp(0.0, 100.0);
        for share in [
            &mut self.stress_share,
            &mut self.impulsivity,
            &mut self.purchase_intent,
            &mut self.financial_worry,
            &mut self.saving_intent,
        ] {
            *share = share.clamp(0.0, 1.0);
        }
    }

    /// The features as a risk model sees them: stable names, every value normalised to −1..=1 or
    /// 0..=1 so model coefficients are comparable. Appending a name is a feature-schema change
    /// (see `model::FEATURE_SCHEMA`); renaming or reordering one breaks trained models.
    pub fn as_named_vector(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("mean_valence", self.mean_valence / 100.0),
            ("valence_volatility", self.valence_variance.sqrt() / 100.0),
            ("mean_arousal", self.mean_arousal / 100.0),
            ("mean_stress", self.mean_stress / 100.0),
            ("stress_share", self.stress_share),
            ("impulsivity", self.impulsivity),
            ("purchase_intent", self.purchase_intent),
            ("financial_worry", self.financial_worry),
            ("saving_intent", self.saving_intent),
        ]
    }

    /// The same names with "no information" values, for a person without emotional data (or
    /// without consent): neutral valence, mid-scale arousal and stress, no stress episodes and no
    /// thoughts. A model centred on these values is unmoved by their absence.
    pub fn neutral_named_vector() -> Vec<(&'static str, f64)> {
        vec![
            ("mean_valence", 0.0),
            ("valence_volatility", 0.0),
            ("mean_arousal", 0.5),
            ("mean_stress", 0.5),
            ("stress_share", 0.0),
            ("impulsivity", 0.0),
            ("purchase_intent", 0.0),
            ("financial_worry", 0.0),
            ("saving_intent", 0.0),
        ]
    }
}

/// The columns of [`EmotionFeatures`] in `emotion_features`, as a literal for `concat!`: the
/// assessment reads them in the same statement as the rest of its inputs
/// (`offers::Assessor::prepare`).
macro_rules! emotion_feature_columns {
    () => {
        "readings_count, ew_weight, mean_valence, valence_variance, mean_arousal, mean_stress, \
         stress_share, impulsivity, purchase_intent, financial_worry, saving_intent, \
         first_reading_at, last_reading_at"
    };
}
pub(crate) use emotion_feature_columns;

/// The person's current features, if any reading was ever stored.
pub async fn load(executor: impl PgExecutor<'_>, user_id: Uuid) -> Result<Option<EmotionFeatures>> {
    let features = sqlx::query_as(concat!(
        "SELECT ",
        emotion_feature_columns!(),
        " FROM emotion_features WHERE user_id = $1"
    ))
    .bind(user_id)
    .fetch_optional(executor)
    .await?;
    Ok(features)
}

/// The features of `user_ids` that have any, for a read-modify-write in the caller's
/// transaction, which must hold every one of their `users` rows (`FOR NO KEY UPDATE`, which does
/// not block inserts that merely reference the person) and have taken them before this
/// statement. The lock is the person's row, not the features row: before the first reading there
/// is no features row to lock, and two first batches of one person (two phones) would both start
/// from nothing and the second store would overwrite the first. Every writer of
/// `emotion_features` holds the person's row, so that row is the one lock that serialises them.
pub async fn load_many(
    conn: &mut PgConnection,
    user_ids: &[Uuid],
) -> Result<Vec<(Uuid, EmotionFeatures)>> {
    let rows = sqlx::query(concat!(
        "SELECT user_id, ",
        emotion_feature_columns!(),
        " FROM emotion_features WHERE user_id = ANY($1)"
    ))
    .bind(user_ids)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("user_id")?, EmotionFeatures::from_row(row)?)))
        .collect()
}

/// Inserts or replaces the person's features. Call within the transaction that stored the
/// readings, after [`load_many`].
pub async fn store(
    conn: &mut PgConnection,
    user_id: Uuid,
    features: &EmotionFeatures,
) -> Result<()> {
    store_many(conn, &[(user_id, features)]).await
}

/// [`store`] for several persons in one statement (ingest's group commit), each holding their
/// `users` row's lock.
pub async fn store_many(
    conn: &mut PgConnection,
    people: &[(Uuid, &EmotionFeatures)],
) -> Result<()> {
    if people.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&EmotionFeatures) -> f64| -> Vec<f64> {
        people.iter().map(|(_, features)| f(features)).collect()
    };
    sqlx::query(
        "INSERT INTO emotion_features (user_id, readings_count, ew_weight, mean_valence,
             valence_variance, mean_arousal, mean_stress, stress_share, impulsivity,
             purchase_intent, financial_worry, saving_intent, first_reading_at, last_reading_at)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::float8[], $4::float8[],
             $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[],
             $10::float8[], $11::float8[], $12::float8[], $13::timestamptz[],
             $14::timestamptz[])
         ON CONFLICT (user_id) DO UPDATE SET
             readings_count = EXCLUDED.readings_count,
             ew_weight = EXCLUDED.ew_weight,
             mean_valence = EXCLUDED.mean_valence,
             valence_variance = EXCLUDED.valence_variance,
             mean_arousal = EXCLUDED.mean_arousal,
             mean_stress = EXCLUDED.mean_stress,
             stress_share = EXCLUDED.stress_share,
             impulsivity = EXCLUDED.impulsivity,
             purchase_intent = EXCLUDED.purchase_intent,
             financial_worry = EXCLUDED.financial_worry,
             saving_intent = EXCLUDED.saving_intent,
             first_reading_at = EXCLUDED.first_reading_at,
             last_reading_at = EXCLUDED.last_reading_at,
             updated_at = now()",
    )
    .bind(people.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(
        people
            .iter()
            .map(|(_, f)| f.readings_count)
            .collect::<Vec<_>>(),
    )
    .bind(column(|f| f.ew_weight))
    .bind(column(|f| f.mean_valence))
    .bind(column(|f| f.valence_variance))
    .bind(column(|f| f.mean_arousal))
    .bind(column(|f| f.mean_stress))
    .bind(column(|f| f.stress_share))
    .bind(column(|f| f.impulsivity))
    .bind(column(|f| f.purchase_intent))
    .bind(column(|f| f.financial_worry))
    .bind(column(|f| f.saving_intent))
    .bind(
        people
            .iter()
            .map(|(_, f)| f.first_reading_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        people
            .iter()
            .map(|(_, f)| f.last_reading_at)
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use ecs_protocol::{Emotions, Thought};

    use super::*;

    fn reading(valence: i8, arousal: u8, stress: u8, thoughts: &[(Intent, u8)]) -> Reading {
        Reading {
            offset_ms: 0,
            emotions: Emotions::default(),
            valence,
            arousal,
            dominance: 50,
            stress,
            focus: 50,
            thoughts: thoughts
                .iter()
                .map(|&(intent, confidence)| Thought { intent, confidence })
                .collect(),
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_750_000_000 + seconds, 0).unwrap()
    }

    fn fold(prev: Option<&EmotionFeatures>, readings: &[(i64, Reading)]) -> EmotionFeatures {
        let timed: Vec<_> = readings.iter().map(|(s, r)| (at(*s), r)).collect();
        EmotionFeatures::update(prev, &timed).unwrap()
    }

    /// A deterministic stream of readings across the whole sensor range.
    fn stream(seed: u64, len: usize, start: i64) -> Vec<(i64, Reading)> {
        let mut state = seed;
        let mut next = move |modulo: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % modulo
        };
        (0..len)
            .map(|i| {
                let thoughts = match next(4) {
                    0 => vec![(Intent::PurchaseIntent, next(101) as u8)],
                    1 => vec![(Intent::FinancialWorry, 100), (Intent::SavingIntent, 0)],
                    _ => vec![],
                };
                let r = reading(
                    (next(201) as i16 - 100) as i8,
                    next(101) as u8,
                    next(101) as u8,
                    &thoughts,
                );
                (start + i as i64 * next(600) as i64, r)
            })
            .collect()
    }

    fn assert_within_table_checks(f: &EmotionFeatures) {
        assert!(f.readings_count >= 0);
        assert!(f.ew_weight > 0.0 && f.ew_weight.is_finite());
        assert!((-100.0..=100.0).contains(&f.mean_valence), "{f:?}");
        assert!((0.0..=10_000.0).contains(&f.valence_variance), "{f:?}");
        assert!((0.0..=100.0).contains(&f.mean_arousal), "{f:?}");
        assert!((0.0..=100.0).contains(&f.mean_stress), "{f:?}");
        for v in [
            f.stress_share,
            f.impulsivity,
            f.purchase_intent,
            f.financial_worry,
            f.saving_intent,
        ] {
            assert!((0.0..=1.0).contains(&v), "{f:?}");
        }
        assert!(f.first_reading_at <= f.last_reading_at);
    }

    fn assert_close(a: &EmotionFeatures, b: &EmotionFeatures) {
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * (1.0 + x.abs().max(y.abs()));
        assert_eq!(a.readings_count, b.readings_count);
        assert_eq!(a.first_reading_at, b.first_reading_at);
        assert_eq!(a.last_reading_at, b.last_reading_at);
        for ((name, x), (_, y)) in a.as_named_vector().into_iter().zip(b.as_named_vector()) {
            assert!(close(x, y), "{name}: {x} vs {y}");
        }
        assert!(close(a.ew_weight, b.ew_weight), "{a:?} vs {b:?}");
    }

    #[test]
    fn nothing_folds_into_nothing() {
        assert_eq!(EmotionFeatures::update(None, &[]), None);
        let one = fold(None, &[(0, reading(10, 10, 10, &[]))]);
        assert_eq!(EmotionFeatures::update(Some(&one), &[]), Some(one));
    }

    #[test]
    fn the_first_reading_is_the_whole_story() {
        let f = fold(
            None,
            &[(0, reading(-40, 80, 75, &[(Intent::PurchaseIntent, 50)]))],
        );
        assert_eq!(f.readings_count, 1);
        assert_eq!(f.mean_valence, -40.0);
        assert_eq!(f.valence_variance, 0.0);
        assert_eq!(f.stress_share, 1.0);
        assert_eq!(f.purchase_intent, 0.5);
        assert!((f.impulsivity - 0.4).abs() < 1e-12);
        assert_eq!(f.financial_worry, 0.0);
    }

    #[test]
    fn a_reading_one_half_life_older_counts_half() {
        let h = HALF_LIFE.num_seconds();
        let f = fold(
            None,
            &[(0, reading(-50, 0, 0, &[])), (h, reading(50, 0, 0, &[]))],
        );
        // (0.5 * -50 + 1 * 50) / 1.5
        assert!((f.mean_valence - 50.0 / 3.0).abs() < 1e-9, "{f:?}");
        assert!((f.ew_weight - 1.5).abs() < 1e-12);
        // Weighted variance of {-50 (w 0.5), 50 (w 1)} around 16.67.
        let m = 50.0 / 3.0;
        let expected = (0.5 * (-50.0 - m) * (-50.0 - m) + (50.0 - m) * (50.0 - m)) / 1.5;
        assert!((f.valence_variance - expected).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn features_stay_within_the_table_checks() {
        let mut features = None;
        for seed in 0..20 {
            let readings = stream(seed, 200, seed as i64 * 10_000);
            let next = fold(features.as_ref(), &readings);
            assert_within_table_checks(&next);
            features = Some(next);
        }
        // Extremes only.
        let extremes = [
            (0, reading(-100, 0, 0, &[])),
            (1, reading(100, 100, 100, &[(Intent::PurchaseIntent, 100)])),
            (2, reading(127, 255, 255, &[(Intent::PurchaseIntent, 255)])),
        ];
        assert_within_table_checks(&fold(None, &extremes));
    }

    #[test]
    fn a_stressed_stream_raises_stress_share() {
        let calm: Vec<_> = (0..100).map(|i| (i, reading(30, 20, 20, &[]))).collect();
        let before = fold(None, &calm);
        assert_eq!(before.stress_share, 0.0);
        let stressed: Vec<_> = (100..200)
            .map(|i| (i, reading(-60, 90, 90, &[(Intent::FinancialWorry, 80)])))
            .collect();
        let after = fold(Some(&before), &stressed);
        assert!(after.stress_share > 0.4, "{after:?}");
        assert!(after.mean_stress > before.mean_stress);
        assert!(after.mean_valence < before.mean_valence);
        assert!(after.financial_worry > 0.3);
        assert!(after.valence_variance > 0.0);
        assert_eq!(after.readings_count, 200);
    }

    #[test]
    fn the_fold_is_deterministic() {
        let readings = stream(7, 500, 0);
        let a = fold(None, &readings);
        let b = fold(None, &readings);
        assert_eq!(a, b);
    }

    #[test]
    fn two_batches_give_the_same_features_in_either_order() {
        let older = stream(1, 300, 0);
        let newer = stream(2, 300, 50_000);
        let in_order = fold(Some(&fold(None, &older)), &newer);
        let late = fold(Some(&fold(None, &newer)), &older);
        assert_close(&in_order, &late);
        assert_eq!(in_order.first_reading_at, at(0));
        // And the same as one batch holding both.
        let all: Vec<_> = older.iter().chain(&newer).cloned().collect();
        assert_close(&in_order, &fold(None, &all));
    }

    #[test]
    fn a_long_silence_lets_the_past_fade() {
        let past: Vec<_> = (0..1000).map(|i| (i, reading(-80, 0, 0, &[]))).collect();
        let before = fold(None, &past);
        let week = 7 * 24 * 3600;
        let after = fold(Some(&before), &[(week, reading(80, 0, 0, &[]))]);
        assert!(after.mean_valence > 79.0, "{after:?}");
    }

    #[test]
    fn the_named_vectors_share_one_layout() {
        let f = fold(None, &stream(3, 10, 0));
        let names: Vec<_> = f.as_named_vector().into_iter().map(|(n, _)| n).collect();
        let neutral: Vec<_> = EmotionFeatures::neutral_named_vector()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, neutral);
        for (_, v) in f.as_named_vector() {
            assert!((-1.0..=1.0).contains(&v));
        }
    }
}

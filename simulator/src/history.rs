//! Synthetic financial histories: income, rent and everyday spending over the last months,
//! shaped by the person's [`Archetype`] so that finances and emotional stream tell one story.
//!
//! Built in by design (see [`FinanceProfile`]): a calm saver spends well under a regular
//! salary; an anxious worrier spends about all of a modest one, some months more; an impulsive
//! spender spends much of it on discretionary things, with spikes; an irregular earner's income
//! varies and sometimes skips a month. [`purchase_after_intent`] couples the stream to spending
//! where a simulation has both (the insights run): a purchase intent may become a purchase.

use chrono::{DateTime, Datelike, Duration, Months, Utc};
use ecs_edge_agent::sensor::Archetype;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::Serialize;

/// One transaction as the API takes it.
#[derive(Debug, Clone, Serialize)]
pub struct Transaction {
    pub external_ref: String,
    pub direction: &'static str,
    pub amount_cents: i64,
    pub category: &'static str,
    pub occurred_at: DateTime<Utc>,
}

/// Months of history [`generate`] writes (the cloud's financial window is 90 days).
pub const MONTHS: i64 = 3;

/// Spending the cloud reads as discretionary (its `finance::DISCRETIONARY`) and as essential.
const DISCRETIONARY: [&str; 3] = ["entertainment", "shopping", "travel"];
const ESSENTIAL: [&str; 3] = ["groceries", "transport", "utilities"];

/// How an archetype earns and spends. Ratios are of the month's *usual* income.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinanceProfile {
    /// Usual monthly income, cents (a range the person's income is drawn from).
    pub income_cents: (i64, i64),
    /// Each month's income is the usual one times a factor drawn from this range.
    pub income_factor: (f64, f64),
    /// Chance that a month brings no income at all.
    pub skip_month: f64,
    /// Rent as a share of usual income.
    pub rent_share: (f64, f64),
    /// Everything spent in a month (rent included) as a share of usual income.
    pub spend_share: (f64, f64),
    /// Share of the non-rent spending that goes to discretionary categories.
    pub discretionary_share: f64,
    /// Chance per month of one spike: a discretionary purchase of 20–40 % of the income.
    pub spike: f64,
}

impl FinanceProfile {
    /// The steady middle-of-the-road person, whom the other archetypes differ from.
    const STEADY: FinanceProfile = FinanceProfile {
        income_cents: (300_000, 800_000),
        income_factor: (1.0, 1.0),
        skip_month: 0.0,
        rent_share: (0.25, 0.35),
        spend_share: (0.7, 0.8),
        discretionary_share: 0.35,
        spike: 0.05,
    };

    pub fn of(archetype: Archetype) -> Self {
        let steady = Self::STEADY;
        match archetype {
            Archetype::SteadyMiddle => steady,
            Archetype::CalmSaver => Self {
                income_cents: (500_000, 1_200_000),
                rent_share: (0.2, 0.25),
                spend_share: (0.45, 0.6),
                discretionary_share: 0.15,
                spike: 0.0,
                ..steady
            },
            Archetype::AnxiousWorrier => Self {
                income_cents: (250_000, 500_000),
                rent_share: (0.35, 0.45),
                spend_share: (0.95, 1.12),
                discretionary_share: 0.2,
                spike: 0.0,
                ..steady
            },
            Archetype::ImpulsiveSpender => Self {
                income_cents: (350_000, 900_000),
                rent_share: (0.2, 0.3),
                spend_share: (0.8, 0.95),
                discretionary_share: 0.65,
                spike: 0.5,
                ..steady
            },
            Archetype::IrregularEarner => Self {
                income_cents: (300_000, 900_000),
                income_factor: (0.4, 1.6),
                skip_month: 0.3,
                spend_share: (0.7, 0.85),
                discretionary_share: 0.3,
                spike: 0.1,
                ..steady
            },
        }
    }
}

/// [`MONTHS`] months of a person's finances up to `now`, reproducible from `archetype`, `seed`
/// and the day of `now`. Income arrives on [`pay_days`].
pub fn generate(archetype: Archetype, seed: u64, now: DateTime<Utc>) -> Vec<Transaction> {
    let profile = FinanceProfile::of(archetype);
    let mut rng = StdRng::seed_from_u64(seed);
    let usual = rng.random_range(profile.income_cents.0..=profile.income_cents.1);
    let share = |rng: &mut StdRng, (lo, hi): (f64, f64)| {
        if lo < hi {
            rng.random_range(lo..hi)
        } else {
            lo
        }
    };
    let rent = cents(usual as f64 * share(&mut rng, profile.rent_share));
    let irregular = profile.skip_month > 0.0;
    let mut out = Vec::new();
    let mut paid_months = 0;
    for (month, paid_at) in (0..MONTHS).zip(pay_days(now)) {
        // Each month's spending spreads over 28 of the 30 days ending 30 × month days before
        // `now`, the two oldest days left out: the whole history stays inside the cloud's
        // 90-day window for two days after `now` (an assessment a while after the history was
        // written sees all of it), and the window holds as many months of spending as of pay.
        let month_start = now - Duration::days(30 * (month + 1) - 2);
        let skipped = rng.random_bool(profile.skip_month);
        // Never every month skipped: a person with no income at all is another story.
        if !skipped || (month == MONTHS - 1 && paid_months == 0) {
            paid_months += 1;
            let income = cents(usual as f64 * share(&mut rng, profile.income_factor));
            out.push(Transaction {
                external_ref: format!("income-{seed}-{month}"),
                direction: "inflow",
                amount_cents: income.max(1),
                category: if irregular { "freelance" } else { "salary" },
                occurred_at: paid_at,
            });
        }
        out.push(Transaction {
            external_ref: format!("rent-{seed}-{month}"),
            direction: "outflow",
            amount_cents: rent.max(1),
            category: "rent",
            occurred_at: month_start + Duration::days(3),
        });
        let budget = (usual as f64 * share(&mut rng, profile.spend_share) - rent as f64).max(0.0);
        let purchases = rng.random_range(10..25_usize);
        let weights: Vec<f64> = (0..purchases).map(|_| rng.random_range(0.2..1.0)).collect();
        let total: f64 = weights.iter().sum();
        for (n, w) in weights.iter().enumerate() {
            let category = if rng.random_bool(profile.discretionary_share) {
                DISCRETIONARY[rng.random_range(0..DISCRETIONARY.len())]
            } else {
                ESSENTIAL[rng.random_range(0..ESSENTIAL.len())]
            };
            out.push(Transaction {
                external_ref: format!("card-{seed}-{month}-{n}"),
                direction: "outflow",
                amount_cents: cents(budget * w / total).max(100),
                category,
                occurred_at: month_start + Duration::minutes(rng.random_range(0..60 * 24 * 28)),
            });
        }
        if rng.random_bool(profile.spike) {
            out.push(Transaction {
                external_ref: format!("spike-{seed}-{month}"),
                direction: "outflow",
                amount_cents: cents(usual as f64 * rng.random_range(0.2..0.4)).max(100),
                category: "shopping",
                occurred_at: month_start + Duration::minutes(rng.random_range(0..60 * 24 * 28)),
            });
        }
    }
    out
}

/// One pay day in each of the last [`MONTHS`] calendar months before `now`, newest first, at
/// 09:00 UTC on one day of the month: the day before `now`'s (at most the 28th, which every
/// month has), or the 28th of the months before when `now` is on the 1st. Payroll follows the
/// calendar, and so does the cloud, which counts income months as calendar months: this way
/// each pay day is in a month of its own and all are well inside the cloud's 90-day window
/// (at most about 65 days old), whatever the date.
pub fn pay_days(now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let today = now.date_naive();
    let (latest_month, day) = if today.day() >= 2 {
        (today.with_day(1), (today.day() - 1).min(28))
    } else {
        (
            today
                .with_day(1)
                .and_then(|d| d.checked_sub_months(Months::new(1))),
            28,
        )
    };
    (0..MONTHS)
        .map(|k| {
            latest_month
                .and_then(|m| m.checked_sub_months(Months::new(k as u32)))
                .and_then(|m| m.with_day(day))
                .and_then(|d| d.and_hms_opt(9, 0, 0))
                .map(|t| t.and_utc())
                // Only at the ends of chrono's calendar: then 30-day steps will do.
                .unwrap_or(now - Duration::days(30 * k + 2))
        })
        .collect()
}

/// Chance that a purchase intent of full confidence becomes a purchase (scaled by confidence).
pub const INTENT_TO_PURCHASE: f64 = 0.3;

/// The purchase a purchase-intent thought (of `confidence`, 0–100, at `at`) may turn into:
/// with chance [`INTENT_TO_PURCHASE`] × confidence, a discretionary purchase within the next
/// hour of 0.5–3 % of `monthly_income_cents`. This is the coupling of stream and spending that
/// the simulator builds in by design; `reference` makes the transaction's external id unique.
pub fn purchase_after_intent(
    rng: &mut StdRng,
    confidence: u8,
    at: DateTime<Utc>,
    monthly_income_cents: i64,
    reference: &str,
) -> Option<Transaction> {
    let chance = INTENT_TO_PURCHASE * f64::from(confidence.min(100)) / 100.0;
    if !rng.random_bool(chance) {
        return None;
    }
    Some(Transaction {
        external_ref: format!("impulse-{reference}"),
        direction: "outflow",
        amount_cents: cents(monthly_income_cents as f64 * rng.random_range(0.005..0.03)).max(100),
        category: DISCRETIONARY[rng.random_range(0..DISCRETIONARY.len())],
        occurred_at: at + Duration::seconds(rng.random_range(0..3600)),
    })
}

/// Money is whole cents; the simulation's shares are floats until here.
fn cents(x: f64) -> i64 {
    x.round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000, 0).unwrap()
    }

    /// Sums over `people` histories of `archetype`: (monthly incomes, outflow / inflow,
    /// discretionary share of non-rent outflow).
    fn figures(archetype: Archetype, people: u64) -> (Vec<f64>, f64, f64) {
        let (mut incomes, mut inflow, mut outflow, mut spend, mut discretionary) =
            (Vec::new(), 0, 0, 0, 0);
        for seed in 0..people {
            let h = generate(archetype, seed, now());
            for month in 0..MONTHS {
                let paid: i64 = h
                    .iter()
                    .filter(|t| t.external_ref == format!("income-{seed}-{month}"))
                    .map(|t| t.amount_cents)
                    .sum();
                incomes.push(paid as f64);
            }
            for t in &h {
                match (t.direction, t.category) {
                    ("inflow", _) => inflow += t.amount_cents,
                    (_, "rent") => outflow += t.amount_cents,
                    (_, category) => {
                        outflow += t.amount_cents;
                        spend += t.amount_cents;
                        if DISCRETIONARY.contains(&category) {
                            discretionary += t.amount_cents;
                        }
                    }
                }
            }
        }
        (
            incomes,
            outflow as f64 / inflow as f64,
            discretionary as f64 / spend as f64,
        )
    }

    /// Coefficient of variation of each person's monthly income, averaged over people.
    fn income_cv(incomes: &[f64]) -> f64 {
        let per_person: Vec<f64> = incomes
            .chunks(MONTHS as usize)
            .map(|months| {
                let mean = months.iter().sum::<f64>() / months.len() as f64;
                let var =
                    months.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / months.len() as f64;
                var.sqrt() / mean
            })
            .collect();
        per_person.iter().sum::<f64>() / per_person.len() as f64
    }

    #[test]
    fn histories_are_reproducible_and_have_income_in_the_past() {
        for archetype in Archetype::ALL {
            let a = generate(archetype, 3, now());
            let b = generate(archetype, 3, now());
            assert_eq!(a.len(), b.len());
            assert!(
                a.iter()
                    .zip(&b)
                    .all(|(x, y)| x.amount_cents == y.amount_cents
                        && x.external_ref == y.external_ref)
            );
            assert!(a.iter().any(|t| t.direction == "inflow"), "{archetype}");
            assert!(
                a.iter()
                    .all(|t| t.amount_cents > 0 && t.occurred_at < now()),
                "{archetype}"
            );
            assert!(
                a.iter().all(|t| t.occurred_at > now() - Duration::days(90)),
                "{archetype}: everything inside the cloud's window"
            );
        }
        assert_eq!(
            generate(Archetype::CalmSaver, 3, now())
                .iter()
                .filter(|t| t.category == "salary")
                .count(),
            3
        );
    }

    #[test]
    fn pay_days_fall_in_distinct_calendar_months_inside_the_window_on_any_date() {
        let mut day = now();
        for _ in 0..800 {
            let paid = pay_days(day);
            assert_eq!(paid.len(), MONTHS as usize);
            let months: std::collections::BTreeSet<_> =
                paid.iter().map(|p| (p.year(), p.month())).collect();
            assert_eq!(months.len(), paid.len(), "{day}: {paid:?}");
            for p in &paid {
                assert!(*p < day && *p > day - Duration::days(70), "{day}: {p}");
            }
            day += Duration::hours(13);
        }
    }

    #[test]
    fn irregular_income_varies_and_skips_months() {
        let (irregular, ..) = figures(Archetype::IrregularEarner, 40);
        let (steady, ..) = figures(Archetype::SteadyMiddle, 40);
        assert_eq!(income_cv(&steady), 0.0);
        assert!(income_cv(&irregular) > 0.3, "{}", income_cv(&irregular));
        let skipped = irregular.iter().filter(|x| **x == 0.0).count();
        assert!(skipped >= 10, "{skipped} of {} months", irregular.len());
    }

    #[test]
    fn savers_spend_well_under_income_and_the_worried_about_all_of_it() {
        let (_, saver, _) = figures(Archetype::CalmSaver, 40);
        let (_, anxious, _) = figures(Archetype::AnxiousWorrier, 40);
        let (_, steady, _) = figures(Archetype::SteadyMiddle, 40);
        assert!(saver < 0.65, "saver spends {saver}");
        assert!(anxious > 0.95, "anxious spends {anxious}");
        assert!(
            saver < steady && steady < anxious,
            "{saver} {steady} {anxious}"
        );
    }

    #[test]
    fn impulsive_spending_is_mostly_discretionary() {
        let (_, _, impulsive) = figures(Archetype::ImpulsiveSpender, 40);
        for other in Archetype::ALL
            .into_iter()
            .filter(|a| *a != Archetype::ImpulsiveSpender)
        {
            let (_, _, share) = figures(other, 40);
            assert!(impulsive > share + 0.2, "{other}: {share} vs {impulsive}");
        }
    }

    #[test]
    fn confident_intents_turn_into_purchases_more_often() {
        let mut rng = StdRng::seed_from_u64(1);
        let bought = |rng: &mut StdRng, confidence: u8| {
            (0..5_000)
                .filter_map(|i| {
                    purchase_after_intent(rng, confidence, now(), 500_000, &i.to_string())
                })
                .inspect(|t| {
                    assert!(DISCRETIONARY.contains(&t.category));
                    assert!(t.occurred_at >= now() && t.occurred_at < now() + Duration::hours(1));
                })
                .count()
        };
        let (weak, strong) = (bought(&mut rng, 20), bought(&mut rng, 90));
        assert!(strong > 3 * weak, "{strong} vs {weak}");
        assert_eq!(bought(&mut rng, 0), 0);
    }
}

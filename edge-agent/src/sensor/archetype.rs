//! Named kinds of people for simulations whose findings must be checkable: each [`Archetype`]
//! is a [`Persona`] at a known centre plus a small per-person jitter from the seed, so a
//! population has structure (the anxious worry more than the calm) without being identical
//! copies.
//!
//! What an archetype builds in *by design* (and a simulation run can only rediscover): resting
//! stress and valence, impulsivity, saving habit and the [`DailyRhythm`] below. The simulator's
//! finances (`ecs_simulator::history`) follow the same archetype. The cloud is never told the
//! label: it sees readings and transactions, as it would of a real person.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::Persona;

/// How the time of day moves a person's stress and purchase impulses, on top of their mood.
///
/// Hours are local time, `0.0 <= h < 24.0`. By design: stress rises during working hours
/// (09–18) by `work_stress`, and late at night (23–04) by `night_worry` (rumination);
/// what drives purchase impulses is `1 + evening_impulse` times as strong in the evening (19–23)
/// and a third as strong in the small hours (01–07, mostly asleep).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DailyRhythm {
    /// Extra stress (0–1 scale) in working hours.
    pub work_stress: f64,
    /// Extra stress late at night.
    pub night_worry: f64,
    /// Extra evening purchase impulses, as a multiple of the base rate.
    pub evening_impulse: f64,
}

impl DailyRhythm {
    /// The rhythm of a persona drawn from a bare seed: a mild working-day bump and nothing else.
    pub const COMMON: DailyRhythm = DailyRhythm {
        work_stress: 0.05,
        night_worry: 0.0,
        evening_impulse: 0.3,
    };

    /// Stress added at `hour`.
    pub fn stress_offset(&self, hour: f64) -> f64 {
        let hour = hour.rem_euclid(24.0);
        let mut offset = 0.0;
        if (9.0..18.0).contains(&hour) {
            offset += self.work_stress;
        }
        if !(4.0..23.0).contains(&hour) {
            offset += self.night_worry;
        }
        offset
    }

    /// How many times as strong the drive to a purchase intent is at `hour` as at a neutral hour.
    pub fn purchase_factor(&self, hour: f64) -> f64 {
        let hour = hour.rem_euclid(24.0);
        if (19.0..23.0).contains(&hour) {
            1.0 + self.evening_impulse
        } else if (1.0..7.0).contains(&hour) {
            1.0 / 3.0
        } else {
            1.0
        }
    }
}

/// A kind of simulated person, whose stream and finances differ from the others' in known ways.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Archetype {
    /// Low stress, cheerful, saves often, rarely impulsive; spends well under a regular income.
    CalmSaver,
    /// High stress with night-time rumination, gloomy, worries about money; spends about all
    /// of a modest income, sometimes more.
    AnxiousWorrier,
    /// Cheerful and aroused, strongly impulsive (evenings above all), saves little; spends
    /// most of the income, much of it on discretionary things, with spikes.
    ImpulsiveSpender,
    /// Middling stress with some night worry; income that varies a lot and sometimes skips a
    /// month (gig work).
    IrregularEarner,
    /// Middle of the road in everything: the reference the others differ from.
    SteadyMiddle,
}

impl Archetype {
    /// Every archetype, in the order [`Archetype::for_index`] deals them out.
    pub const ALL: [Archetype; 5] = [
        Archetype::CalmSaver,
        Archetype::AnxiousWorrier,
        Archetype::ImpulsiveSpender,
        Archetype::IrregularEarner,
        Archetype::SteadyMiddle,
    ];

    /// The archetype of the `index`-th simulated person: round robin over [`Archetype::ALL`],
    /// so any run of five or more people has every kind, in known numbers.
    pub fn for_index(index: usize) -> Self {
        Self::ALL[index % Self::ALL.len()]
    }

    /// A stable identifier (`calm_saver`, …), as in files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Archetype::CalmSaver => "calm_saver",
            Archetype::AnxiousWorrier => "anxious_worrier",
            Archetype::ImpulsiveSpender => "impulsive_spender",
            Archetype::IrregularEarner => "irregular_earner",
            Archetype::SteadyMiddle => "steady_middle",
        }
    }

    /// Words for people: "calm saver", ….
    pub fn describe(self) -> &'static str {
        match self {
            Archetype::CalmSaver => "calm saver",
            Archetype::AnxiousWorrier => "anxious, worried about money",
            Archetype::ImpulsiveSpender => "impulsive spender",
            Archetype::IrregularEarner => "irregular income",
            Archetype::SteadyMiddle => "steady, middle of the road",
        }
    }

    /// The persona at this archetype's centre (no jitter).
    pub fn centre(self) -> Persona {
        let (baseline_valence, baseline_stress, impulsivity, saving_habit, rhythm) = match self {
            Archetype::CalmSaver => (0.4, 0.15, 0.1, 0.85, rhythm(0.05, 0.0, 0.2)),
            Archetype::AnxiousWorrier => (-0.25, 0.6, 0.3, 0.25, rhythm(0.12, 0.25, 0.3)),
            Archetype::ImpulsiveSpender => (0.35, 0.3, 0.9, 0.1, rhythm(0.05, 0.02, 1.5)),
            Archetype::IrregularEarner => (0.05, 0.42, 0.45, 0.35, rhythm(0.08, 0.12, 0.5)),
            Archetype::SteadyMiddle => (0.15, 0.3, 0.4, 0.5, rhythm(0.07, 0.03, 0.4)),
        };
        Persona {
            baseline_valence,
            baseline_stress,
            impulsivity,
            saving_habit,
            rhythm,
        }
    }

    /// The persona of one person of this archetype: the centre, each trait moved by up to
    /// ±0.05 (uniform, from `seed`), so people of one kind differ a little and never cross into
    /// another kind's range. The jitter has its own stream, so it is not correlated with the
    /// noise a sensor seeded with the same `seed` draws.
    pub fn persona(self, seed: u64) -> Persona {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5EED_0FA4_C4E7_E5A1);
        let mut jitter =
            |x: f64, lo: f64, hi: f64| (x + rng.random_range(-0.05..0.05)).clamp(lo, hi);
        let c = self.centre();
        Persona {
            baseline_valence: jitter(c.baseline_valence, -1.0, 1.0),
            baseline_stress: jitter(c.baseline_stress, 0.0, 1.0),
            impulsivity: jitter(c.impulsivity, 0.0, 1.0),
            saving_habit: jitter(c.saving_habit, 0.0, 1.0),
            rhythm: c.rhythm,
        }
    }
}

fn rhythm(work_stress: f64, night_worry: f64, evening_impulse: f64) -> DailyRhythm {
    DailyRhythm {
        work_stress,
        night_worry,
        evening_impulse,
    }
}

impl std::fmt::Display for Archetype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use ecs_protocol::{DeviceId, Intent, MAX_READINGS_PER_BATCH, Reading, ReadingBatch};

    use super::*;
    use crate::sensor::Sensor;

    const SAMPLES: usize = 20_000;

    /// What a stream of `SAMPLES` readings of a person of `archetype` averages to.
    #[derive(Debug, Default)]
    struct Summary {
        stress: f64,
        valence: f64,
        /// Share of readings with the intent.
        worry: f64,
        purchase: f64,
        saving: f64,
    }

    fn summarise(archetype: Archetype, seed: u64) -> Summary {
        let mut sensor = Sensor::for_archetype(seed, archetype);
        let mut s = Summary::default();
        let has = |r: &Reading, intent: Intent| r.thoughts.iter().any(|t| t.intent == intent);
        for i in 0..SAMPLES {
            // Every hour of the day alike.
            let r = sensor.sample_at((i % 24) as f64);
            s.stress += f64::from(r.stress);
            s.valence += f64::from(r.valence);
            s.worry += f64::from(u8::from(has(&r, Intent::FinancialWorry)));
            s.purchase += f64::from(u8::from(has(&r, Intent::PurchaseIntent)));
            s.saving += f64::from(u8::from(has(&r, Intent::SavingIntent)));
        }
        let n = SAMPLES as f64;
        Summary {
            stress: s.stress / n,
            valence: s.valence / n,
            worry: s.worry / n,
            purchase: s.purchase / n,
            saving: s.saving / n,
        }
    }

    #[test]
    fn the_anxious_are_more_stressed_and_worried_than_the_calm() {
        let calm = summarise(Archetype::CalmSaver, 1);
        let anxious = summarise(Archetype::AnxiousWorrier, 1);
        assert!(
            anxious.stress > calm.stress + 25.0,
            "{anxious:?} vs {calm:?}"
        );
        assert!(
            anxious.valence < calm.valence - 30.0,
            "{anxious:?} vs {calm:?}"
        );
        assert!(anxious.worry > 3.0 * calm.worry, "{anxious:?} vs {calm:?}");
        assert!(
            calm.saving > 2.0 * anxious.saving,
            "{calm:?} vs {anxious:?}"
        );
    }

    #[test]
    fn the_impulsive_want_to_buy_more_than_anyone() {
        let impulsive = summarise(Archetype::ImpulsiveSpender, 2);
        for other in Archetype::ALL
            .into_iter()
            .filter(|a| *a != Archetype::ImpulsiveSpender)
        {
            let o = summarise(other, 2);
            assert!(
                impulsive.purchase > 1.5 * o.purchase,
                "{other}: {impulsive:?} vs {o:?}"
            );
        }
    }

    #[test]
    fn the_anxious_are_most_stressed_at_night_and_impulses_peak_in_the_evening() {
        let mean_stress = |archetype: Archetype, hour: f64| {
            let mut sensor = Sensor::for_archetype(3, archetype);
            (0..SAMPLES)
                .map(|_| f64::from(sensor.sample_at(hour).stress))
                .sum::<f64>()
                / SAMPLES as f64
        };
        // Same seed, same walk: only the hour differs.
        let night = mean_stress(Archetype::AnxiousWorrier, 1.0);
        let afternoon = mean_stress(Archetype::AnxiousWorrier, 15.0);
        let morning = mean_stress(Archetype::AnxiousWorrier, 7.0);
        assert!(
            night > afternoon + 5.0,
            "night {night} vs afternoon {afternoon}"
        );
        assert!(
            afternoon > morning + 5.0,
            "afternoon {afternoon} vs morning {morning}"
        );

        let purchases = |hour: f64| {
            let mut sensor = Sensor::for_archetype(4, Archetype::ImpulsiveSpender);
            (0..SAMPLES)
                .filter(|_| {
                    sensor
                        .sample_at(hour)
                        .thoughts
                        .iter()
                        .any(|t| t.intent == Intent::PurchaseIntent)
                })
                .count()
        };
        let (evening, noon, small_hours) = (purchases(21.0), purchases(12.0), purchases(3.0));
        // The factor scales the drive, not the small base chance every intent has, so the
        // counts differ by less than the factor.
        assert!(evening > 2 * noon, "evening {evening} vs noon {noon}");
        assert!(
            2 * noon > 3 * small_hours,
            "noon {noon} vs 3 am {small_hours}"
        );
    }

    #[test]
    fn people_of_one_archetype_differ_a_little_and_reproducibly() {
        let a = Archetype::IrregularEarner.persona(10);
        assert_eq!(a, Archetype::IrregularEarner.persona(10));
        assert_ne!(a, Archetype::IrregularEarner.persona(11));
        let c = Archetype::IrregularEarner.centre();
        for (x, y) in [
            (a.baseline_valence, c.baseline_valence),
            (a.baseline_stress, c.baseline_stress),
            (a.impulsivity, c.impulsivity),
            (a.saving_habit, c.saving_habit),
        ] {
            assert!((x - y).abs() <= 0.05, "{a:?} vs {c:?}");
        }
    }

    #[test]
    fn archetypes_are_dealt_round_robin_and_named_stably() {
        let dealt: Vec<_> = (0..10).map(Archetype::for_index).collect();
        assert_eq!(&dealt[..5], &Archetype::ALL);
        assert_eq!(&dealt[5..], &Archetype::ALL);
        let names: Vec<_> = Archetype::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            names,
            [
                "calm_saver",
                "anxious_worrier",
                "impulsive_spender",
                "irregular_earner",
                "steady_middle"
            ]
        );
    }

    #[test]
    fn every_archetype_at_every_hour_reads_valid() {
        let device = DeviceId::random();
        for archetype in Archetype::ALL {
            let mut sensor = Sensor::for_archetype(5, archetype);
            let readings: Vec<Reading> = (0..MAX_READINGS_PER_BATCH)
                .map(|i| Reading {
                    offset_ms: i as u32 * 100,
                    ..sensor.sample_at(i as f64 * 0.024)
                })
                .collect();
            let batch = ReadingBatch {
                device_id: device.clone(),
                first_seq: 0,
                base_time_ms: 1_700_000_000_000,
                readings,
            };
            assert_eq!(batch.validate(), Ok(()), "{archetype}");
        }
    }
}

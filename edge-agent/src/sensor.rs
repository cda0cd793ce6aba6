//! The simulated brain sensor.
//!
//! There is no real device, so the agent simulates one that behaves like a person rather than
//! like white noise: a [`Persona`] (drawn from the seed) sets resting levels, a mood drifts
//! around them as a mean-reverting random walk, Plutchik's emotions are derived from the mood
//! (pleasant and activated ⇒ joy, unpleasant and activated without control ⇒ fear, …), and
//! "thoughts" appear with probabilities that depend on the mood (stress ⇒ financial worry, joy
//! with high arousal in an impulsive person ⇒ purchase intent). Downstream features and credit
//! decisions therefore have real signal to find.
//!
//! Named [`Archetype`]s (a calm saver, an anxious person under financial worry, …) give personas
//! whose differences are known in advance, so that what the cloud finds in their data can be
//! checked against what was built in; [`Sensor::sample_at`] adds a [`DailyRhythm`] for
//! simulations that know the time of day.
//!
//! Guarantees: the same seed gives the same persona and the same sequence of readings (the
//! generator is xoshiro256++, which rand documents as portable and reproducible), and every
//! reading is within the ranges [`ecs_protocol::ReadingBatch::validate`] checks.

mod archetype;

pub use archetype::{Archetype, DailyRhythm};

use ecs_protocol::{Emotions, Intent, MAX_THOUGHTS_PER_READING, Reading, Thought};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// The stable traits of the simulated person.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Persona {
    /// Resting pleasantness, −1 (gloomy) to 1 (cheerful).
    pub baseline_valence: f64,
    /// Resting stress, 0 to 1.
    pub baseline_stress: f64,
    /// 0 to 1: how readily excitement turns into spending or risk.
    pub impulsivity: f64,
    /// 0 to 1: how often calm moments turn into saving.
    pub saving_habit: f64,
    /// How stress and purchase impulses move with the hour (used by [`Sensor::sample_at`]).
    pub rhythm: DailyRhythm,
}

impl Persona {
    /// The persona a [`Sensor`] with this seed simulates.
    pub fn from_seed(seed: u64) -> Self {
        Self::draw(&mut Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    fn draw(rng: &mut Xoshiro256PlusPlus) -> Self {
        Self {
            baseline_valence: rng.random_range(-0.5..0.6),
            baseline_stress: rng.random_range(0.1..0.7),
            impulsivity: rng.random_range(0.0..1.0),
            saving_habit: rng.random_range(0.0..1.0),
            // Not drawn, so a seed's persona and readings are what they were before rhythms.
            rhythm: DailyRhythm::COMMON,
        }
    }
}

/// The momentary state, each dimension in 0..=1 except valence in −1..=1.
#[derive(Debug, Clone, Copy)]
struct Mood {
    valence: f64,
    arousal: f64,
    dominance: f64,
    stress: f64,
    focus: f64,
}

/// A seeded, reproducible source of [`Reading`]s.
#[derive(Debug, Clone)]
pub struct Sensor {
    rng: Xoshiro256PlusPlus,
    persona: Persona,
    mood: Mood,
}

impl Sensor {
    /// A sensor simulating the persona drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let persona = Persona::draw(&mut rng);
        Self::start(rng, persona)
    }

    /// A sensor simulating a given persona (for experiments and tests); `seed` drives the noise.
    pub fn with_persona(seed: u64, persona: Persona) -> Self {
        Self::start(Xoshiro256PlusPlus::seed_from_u64(seed), persona)
    }

    /// A sensor simulating a person of `archetype`, with traits jittered by `seed` (which also
    /// drives the noise): [`Archetype::persona`].
    pub fn for_archetype(seed: u64, archetype: Archetype) -> Self {
        Self::with_persona(seed, archetype.persona(seed))
    }

    fn start(rng: Xoshiro256PlusPlus, persona: Persona) -> Self {
        let mood = Mood {
            valence: persona.baseline_valence,
            arousal: 0.3 + 0.4 * persona.baseline_stress,
            dominance: 0.6,
            stress: persona.baseline_stress,
            focus: 0.6,
        };
        Self { rng, persona, mood }
    }

    pub fn persona(&self) -> &Persona {
        &self.persona
    }

    /// Advances the mood by one step and reads it. `offset_ms` is 0: the time a reading was
    /// taken is the caller's business (the buffer stores it beside the reading).
    pub fn sample(&mut self) -> Reading {
        self.step_mood();
        self.read(self.mood, 1.0)
    }

    /// [`Sensor::sample`] at `hour_of_day` (0 ≤ h < 24, local time): the persona's
    /// [`DailyRhythm`] lays the hour's stress over the mood and scales purchase impulses. The
    /// overlay does not feed back into the mood's walk, so the day's shape shows as it is built
    /// (the walk reverts over hundreds of samples and would smear it).
    pub fn sample_at(&mut self, hour_of_day: f64) -> Reading {
        self.step_mood();
        let rhythm = self.persona.rhythm;
        let mood = Mood {
            stress: (self.mood.stress + rhythm.stress_offset(hour_of_day)).clamp(0.0, 1.0),
            ..self.mood
        };
        self.read(mood, rhythm.purchase_factor(hour_of_day))
    }

    /// The reading of `m`, with purchase intents `purchase_factor` times as likely to be driven.
    fn read(&mut self, m: Mood, purchase_factor: f64) -> Reading {
        let emotions = self.emotions(m);
        let thoughts = self.thoughts(m, &emotions, purchase_factor);
        Reading {
            offset_ms: 0,
            emotions: Emotions {
                joy: percent(emotions[0]),
                trust: percent(emotions[1]),
                fear: percent(emotions[2]),
                surprise: percent(emotions[3]),
                sadness: percent(emotions[4]),
                disgust: percent(emotions[5]),
                anger: percent(emotions[6]),
                anticipation: percent(emotions[7]),
            },
            valence: signed_percent(m.valence),
            arousal: percent(m.arousal),
            dominance: percent(m.dominance),
            stress: percent(m.stress),
            focus: percent(m.focus),
            thoughts,
        }
    }

    /// One step of a mean-reverting random walk (Ornstein–Uhlenbeck, discretised): each
    /// dimension is pulled towards a target that depends on the persona and on the other
    /// dimensions, plus Gaussian noise. Rare "events" spike stress, as life does.
    fn step_mood(&mut self) {
        let p = self.persona;
        let m = &mut self.mood;
        let event = if self.rng.random_bool(0.002) {
            0.3
        } else {
            0.0
        };
        m.stress = (m.stress
            + 0.01 * (p.baseline_stress - m.stress)
            + 0.03 * normal(&mut self.rng)
            + event)
            .clamp(0.0, 1.0);
        let valence_target = p.baseline_valence - 0.6 * (m.stress - p.baseline_stress);
        m.valence =
            (m.valence + 0.02 * (valence_target - m.valence) + 0.04 * normal(&mut self.rng))
                .clamp(-1.0, 1.0);
        let arousal_target = 0.25 + 0.45 * m.stress + 0.25 * m.valence.abs();
        m.arousal =
            (m.arousal + 0.03 * (arousal_target - m.arousal) + 0.04 * normal(&mut self.rng))
                .clamp(0.0, 1.0);
        let dominance_target = 0.6 - 0.4 * m.stress + 0.2 * m.valence;
        m.dominance =
            (m.dominance + 0.03 * (dominance_target - m.dominance) + 0.03 * normal(&mut self.rng))
                .clamp(0.0, 1.0);
        let focus_target = 0.75 - 0.5 * m.stress * m.arousal;
        m.focus = (m.focus + 0.03 * (focus_target - m.focus) + 0.03 * normal(&mut self.rng))
            .clamp(0.0, 1.0);
    }

    /// Plutchik's eight emotions (in [`ecs_protocol::EMOTION_NAMES`] order) as 0..=1
    /// intensities, placed on the valence/arousal/dominance circumplex.
    fn emotions(&mut self, mood: Mood) -> [f64; 8] {
        let Mood {
            valence,
            arousal: a,
            dominance: d,
            stress,
            ..
        } = mood;
        let pleasant = valence.max(0.0);
        let unpleasant = (-valence).max(0.0);
        let clean = [
            pleasant * (0.4 + 0.6 * a),                                  // joy
            pleasant * (0.5 + 0.4 * d) + 0.1 * d,                        // trust
            unpleasant * a * (1.0 - d) * 1.3 + 0.3 * stress * (1.0 - d), // fear
            0.3 * a,                                                     // surprise
            unpleasant * (1.0 - 0.7 * a),                                // sadness
            0.4 * unpleasant,                                            // disgust
            unpleasant * a * d * 1.3,                                    // anger
            a * (0.3 + 0.5 * pleasant),                                  // anticipation
        ];
        clean.map(|x| x + 0.04 * normal(&mut self.rng))
    }

    /// Intents recognised in this sample: each fires independently with a mood-dependent
    /// probability, with a confidence that grows with what drove it.
    fn thoughts(&mut self, m: Mood, emotions: &[f64; 8], purchase_factor: f64) -> Vec<Thought> {
        let p = self.persona;
        let (joy, trust) = (emotions[0].clamp(0.0, 1.0), emotions[1].clamp(0.0, 1.0));
        let candidates = [
            (
                Intent::FinancialWorry,
                m.stress * m.stress * (1.2 - 0.5 * p.saving_habit),
            ),
            (
                Intent::PurchaseIntent,
                p.impulsivity * joy * m.arousal * purchase_factor,
            ),
            (
                Intent::SavingIntent,
                p.saving_habit * (1.0 - m.arousal) * (0.5 + 0.5 * m.dominance),
            ),
            (
                Intent::RiskTaking,
                p.impulsivity * m.arousal * m.dominance * (1.0 - 0.5 * m.stress),
            ),
            (Intent::Gratitude, m.valence.max(0.0) * trust),
        ];
        let mut thoughts: Vec<Thought> = Vec::new();
        for (intent, drive) in candidates {
            let drive = drive.clamp(0.0, 1.0);
            if self.rng.random_bool(0.003 + 0.1 * drive) {
                let confidence = 0.45 + 0.5 * drive + 0.05 * normal(&mut self.rng);
                thoughts.push(Thought {
                    intent,
                    confidence: percent(confidence),
                });
            }
        }
        // All five firing at once is possible but the wire allows fewer: keep the strongest.
        thoughts.sort_by_key(|t| std::cmp::Reverse(t.confidence));
        thoughts.truncate(MAX_THOUGHTS_PER_READING);
        thoughts
    }
}

/// A standard normal variate (Box–Muller); `1 - u` keeps the logarithm's argument in (0, 1].
fn normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// 0..=1 to 0..=100. Clamping first makes any float (even NaN, which `as` maps to 0) valid.
fn percent(x: f64) -> u8 {
    (x.clamp(0.0, 1.0) * 100.0).round() as u8
}

/// −1..=1 to −100..=100.
fn signed_percent(x: f64) -> i8 {
    (x.clamp(-1.0, 1.0) * 100.0).round() as i8
}

#[cfg(test)]
mod tests {
    use ecs_protocol::{DeviceId, MAX_READINGS_PER_BATCH, ReadingBatch};

    use super::*;

    fn count(sensor: &mut Sensor, samples: usize, intent: Intent) -> usize {
        (0..samples)
            .map(|_| sensor.sample())
            .filter(|r| r.thoughts.iter().any(|t| t.intent == intent))
            .count()
    }

    #[test]
    fn same_seed_same_readings_different_seed_different_readings() {
        let mut a = Sensor::new(42);
        let mut b = Sensor::new(42);
        let mut c = Sensor::new(43);
        let from_a: Vec<_> = (0..2_000).map(|_| a.sample()).collect();
        let from_b: Vec<_> = (0..2_000).map(|_| b.sample()).collect();
        let from_c: Vec<_> = (0..2_000).map(|_| c.sample()).collect();
        assert_eq!(a.persona(), b.persona());
        assert_eq!(*a.persona(), Persona::from_seed(42));
        assert_eq!(from_a, from_b);
        assert_ne!(from_a, from_c);
    }

    #[test]
    fn every_reading_passes_protocol_validation() {
        let device = DeviceId::random();
        for seed in 0..20 {
            let mut sensor = Sensor::new(seed);
            for chunk in 0..5 {
                let readings: Vec<Reading> = (0..MAX_READINGS_PER_BATCH)
                    .map(|i| Reading {
                        offset_ms: i as u32 * 100,
                        ..sensor.sample()
                    })
                    .collect();
                let batch = ReadingBatch {
                    device_id: device.clone(),
                    first_seq: (chunk * MAX_READINGS_PER_BATCH) as u64,
                    base_time_ms: 1_700_000_000_000,
                    readings,
                };
                assert_eq!(batch.validate(), Ok(()), "seed {seed}");
            }
        }
    }

    #[test]
    fn stress_brings_financial_worry() {
        let calm = Persona {
            baseline_valence: 0.3,
            baseline_stress: 0.1,
            impulsivity: 0.5,
            saving_habit: 0.5,
            rhythm: DailyRhythm::COMMON,
        };
        let stressed = Persona {
            baseline_stress: 0.8,
            ..calm
        };
        let calm_worries = count(
            &mut Sensor::with_persona(7, calm),
            20_000,
            Intent::FinancialWorry,
        );
        let stressed_worries = count(
            &mut Sensor::with_persona(7, stressed),
            20_000,
            Intent::FinancialWorry,
        );
        assert!(
            stressed_worries > 2 * calm_worries,
            "stressed {stressed_worries} vs calm {calm_worries}"
        );
    }

    #[test]
    fn impulsive_joy_brings_purchase_intent() {
        let restrained = Persona {
            baseline_valence: 0.5,
            baseline_stress: 0.3,
            impulsivity: 0.05,
            saving_habit: 0.5,
            rhythm: DailyRhythm::COMMON,
        };
        let impulsive = Persona {
            impulsivity: 0.95,
            ..restrained
        };
        let few = count(
            &mut Sensor::with_persona(9, restrained),
            20_000,
            Intent::PurchaseIntent,
        );
        let many = count(
            &mut Sensor::with_persona(9, impulsive),
            20_000,
            Intent::PurchaseIntent,
        );
        assert!(many > 2 * few, "impulsive {many} vs restrained {few}");
    }

    #[test]
    fn emotions_follow_valence() {
        let mean = |persona: Persona| {
            let mut sensor = Sensor::with_persona(3, persona);
            let (mut joy, mut sadness) = (0u64, 0u64);
            for _ in 0..10_000 {
                let r = sensor.sample();
                joy += u64::from(r.emotions.joy);
                sadness += u64::from(r.emotions.sadness);
            }
            (joy / 10_000, sadness / 10_000)
        };
        let cheerful = Persona {
            baseline_valence: 0.5,
            baseline_stress: 0.2,
            impulsivity: 0.5,
            saving_habit: 0.5,
            rhythm: DailyRhythm::COMMON,
        };
        let gloomy = Persona {
            baseline_valence: -0.5,
            ..cheerful
        };
        let (cheerful_joy, cheerful_sadness) = mean(cheerful);
        let (gloomy_joy, gloomy_sadness) = mean(gloomy);
        assert!(
            cheerful_joy > gloomy_joy + 10,
            "{cheerful_joy} vs {gloomy_joy}"
        );
        assert!(
            gloomy_sadness > cheerful_sadness + 10,
            "{gloomy_sadness} vs {cheerful_sadness}"
        );
    }
}

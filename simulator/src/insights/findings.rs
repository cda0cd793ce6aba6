//! What an insights run found: the numbers `findings.json` holds, docs/INSIGHTS.md quotes and
//! the charts draw. Floats are rounded (see [`round`]) so a re-run with the same seed writes
//! the same file, whatever order Postgres happened to sum in.

use serde::Serialize;

/// Everything, in the order INSIGHTS.md tells it.
#[derive(Debug, Clone, Serialize)]
pub struct Findings {
    pub run: RunFacts,
    pub archetypes: Vec<ArchetypeFigures>,
    pub spending: SpendingFindings,
    pub hours: Vec<HourFigures>,
    /// Mean stress by hour of day, one series per archetype (24 values each).
    pub stress_by_hour: Vec<ArchetypeSeries>,
    pub credit: CreditFindings,
    pub guard: GuardFindings,
    /// Per person, for the scatter charts.
    pub people: Vec<PersonPoint>,
}

/// How the run was made.
#[derive(Debug, Clone, Serialize)]
pub struct RunFacts {
    pub seed: u64,
    pub people: usize,
    pub people_per_archetype: usize,
    pub days: u32,
    pub reading_interval_minutes: i64,
    pub readings_stored: i64,
    pub transactions_stored: i64,
    /// Of those, purchases the simulator derived from purchase intents in the stream.
    pub purchases_after_intent: u64,
    pub model: String,
}

/// Means over the people of one archetype.
#[derive(Debug, Clone, Serialize)]
pub struct ArchetypeFigures {
    pub archetype: String,
    pub people: i64,
    /// Over the simulated days' readings (sensor units: stress 0–100, valence −100–100).
    pub mean_stress: f64,
    pub mean_valence: f64,
    /// Share of readings at or above the cloud's high-stress level.
    pub high_stress_share: f64,
    /// Shares of readings carrying each thought.
    pub purchase_intent_share: f64,
    pub financial_worry_share: f64,
    pub saving_intent_share: f64,
    /// Over the cloud's 90-day financial window at assessment.
    pub outflow_to_inflow: f64,
    /// Discretionary share of spending other than rent.
    pub discretionary_share: f64,
    /// Coefficient of variation of income over the three 30-day periods before the stretch's end.
    pub income_cv: f64,
    /// Probability of default the cloud assessed (with the person's emotional data).
    pub mean_pd: f64,
    /// The same model on the same finances with neutral emotional values (no consent).
    pub mean_pd_without_emotions: f64,
    pub approved_share: f64,
    pub approved_share_without_emotions: f64,
    /// Mean credit line offered, R$ (0 for a decline).
    pub mean_limit_brl: f64,
    pub mean_limit_without_emotions_brl: f64,
    /// With the person's emotional data in the model but the policy's distress guard off.
    pub mean_limit_without_guard_brl: f64,
    /// People whose offer carries `vulnerability_cap`.
    pub vulnerability_capped: i64,
}

/// How stress and intents relate to spending.
#[derive(Debug, Clone, Serialize)]
pub struct SpendingFindings {
    /// Pearson correlation over people: share of readings with a purchase intent vs the
    /// simulated days' discretionary spending as a share of monthly income.
    pub corr_purchase_intent_vs_discretionary: f64,
    /// The same correlation within each archetype, averaged over archetypes.
    pub corr_purchase_intent_vs_discretionary_within: f64,
    /// Over people: mean stress vs outflow / inflow (90 days).
    pub corr_stress_vs_outflow_ratio: f64,
    pub corr_stress_vs_outflow_ratio_within: f64,
    /// Discretionary purchases per person-hour in the hour of or after a purchase intent…
    pub purchases_per_hour_after_intent: f64,
    /// …and in every other hour.
    pub purchases_per_hour_otherwise: f64,
}

/// One hour of the day over the whole population.
#[derive(Debug, Clone, Serialize)]
pub struct HourFigures {
    pub hour: i32,
    pub mean_stress: f64,
    pub mean_valence: f64,
    pub mean_arousal: f64,
    pub purchase_intent_share: f64,
    pub financial_worry_share: f64,
    /// Discretionary purchases in that hour over the simulated days.
    pub discretionary_purchases: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArchetypeSeries {
    pub archetype: String,
    pub values: Vec<f64>,
}

/// How emotional features move the model and the policy.
#[derive(Debug, Clone, Serialize)]
pub struct CreditFindings {
    /// Mean contribution (log-odds) of each emotional feature, per archetype, as the cloud
    /// stored it with the assessment.
    pub emotional_contributions: Vec<Contribution>,
    /// People whose stored offer the analysis recomputed with the cloud's policy to the same
    /// line (a check that the counterfactuals start from what the cloud did): should be all.
    pub recomputed_equal: i64,
    pub people: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Contribution {
    pub archetype: String,
    pub feature: String,
    pub mean_log_odds: f64,
}

/// What the distress guard (the policy's vulnerability cap) did.
#[derive(Debug, Clone, Serialize)]
pub struct GuardFindings {
    pub people_capped: i64,
    /// Capped because the high-stress share reached the threshold, and because financial worry
    /// did (a person can be both).
    pub by_stress_share: i64,
    pub by_financial_worry: i64,
    /// Credit lines the guard withheld (sum over capped people of the line without the guard
    /// minus the line offered), R$.
    pub limit_withheld_brl: f64,
    /// People the guard turned from approved into declined (halved below the minimum line).
    pub declined_by_guard: i64,
}

/// One person, for the scatter charts.
#[derive(Debug, Clone, Serialize)]
pub struct PersonPoint {
    pub archetype: String,
    pub mean_stress: f64,
    pub purchase_intent_share: f64,
    pub discretionary_of_income: f64,
    pub outflow_to_inflow: f64,
}

impl Findings {
    /// A few lines for the terminal; the whole story is in the JSON.
    pub fn summary(&self) -> Vec<String> {
        let r = &self.run;
        let mut lines = vec![format!(
            "{} people ({} per archetype), {} simulated days, {} readings, {} transactions, seed {}",
            r.people,
            r.people_per_archetype,
            r.days,
            r.readings_stored,
            r.transactions_stored,
            r.seed
        )];
        for a in &self.archetypes {
            lines.push(format!(
                "{:<18} stress {:>5.1}  outflow/inflow {:.2}  PD {:>5.2}% (neutral {:>5.2}%)  \
                 line R$ {:>9.2} (no guard R$ {:>9.2})  capped {}",
                a.archetype,
                a.mean_stress,
                a.outflow_to_inflow,
                100.0 * a.mean_pd,
                100.0 * a.mean_pd_without_emotions,
                a.mean_limit_brl,
                a.mean_limit_without_guard_brl,
                a.vulnerability_capped
            ));
        }
        let g = &self.guard;
        lines.push(format!(
            "distress guard: {} people capped, R$ {:.2} of credit lines withheld, {} declined by it",
            g.people_capped, g.limit_withheld_brl, g.declined_by_guard
        ));
        lines
    }
}

/// Four significant decimals: stable across re-runs, more than any chart can show.
pub fn round(x: f64) -> f64 {
    if x.is_finite() {
        (x * 10_000.0).round() / 10_000.0
    } else {
        0.0
    }
}

//! A deterministic, explainable logistic scorecard.
//!
//! `logit = intercept + Σ coefficient_i × (x_i − center_i)` and `PD = 1 / (1 + e^−logit)`. Each
//! term `coefficient_i × (x_i − center_i)` is reported as that feature's contribution, in
//! log-odds, so a decision can be explained feature by feature: the contributions add up to
//! `logit − intercept`. The coefficients live in a JSON file (the built-in one is
//! `cloud/models/scorecard-v1.json`, which gives the reason for every coefficient), so the model
//! can be read, reviewed and replaced without a rebuild.
//!
//! A file is checked whole at load: it must name [`FEATURE_SCHEMA`] and carry exactly one term
//! per feature of that schema, no more, no fewer. A model that silently ignored a feature, or
//! weighed one the cloud never sends, would explain decisions it did not make.

use std::{collections::BTreeSet, path::Path};

use serde::Deserialize;

use super::{
    FEATURE_SCHEMA, FeatureVector, ModelError, NamedValue, RiskModel, RiskScore, ScoreFuture,
    feature_names,
};
use crate::{Error, error::Result};

/// The file format (`deny_unknown_fields`, so a misspelt key is an error, not a default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Definition {
    name: String,
    version: String,
    /// Must be [`FEATURE_SCHEMA`].
    schema: String,
    /// What the model is, for people reading the file.
    #[serde(default)]
    description: String,
    intercept: f64,
    /// Why the intercept has its value.
    intercept_rationale: String,
    features: Vec<TermDefinition>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TermDefinition {
    name: String,
    coefficient: f64,
    center: f64,
    /// `[lowest, highest]` value the feature counts with (winsorised): beyond it, more of the
    /// feature says nothing more. Optional; without it the feature counts as it is.
    #[serde(default)]
    range: Option<[f64; 2]>,
    /// Why the coefficient has its sign and size: required, because the model is only as
    /// explainable as its file.
    rationale: String,
}

/// One feature's weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub name: String,
    /// Log-odds per unit of the feature.
    pub coefficient: f64,
    /// The value at which the feature contributes nothing.
    pub center: f64,
    /// The values the feature counts with, both ends included: a value outside counts as the
    /// nearer end, so no single feature can outweigh all the others (a huge income, say,
    /// cancelling any spending habit).
    pub range: Option<(f64, f64)>,
    /// Why the coefficient has its sign and size, in words a reviewer can check.
    pub rationale: String,
}

/// A loaded, checked scorecard.
#[derive(Debug, Clone)]
pub struct Scorecard {
    name: String,
    version: String,
    description: String,
    intercept: f64,
    intercept_rationale: String,
    terms: Vec<Term>,
}

impl Scorecard {
    /// The built-in coefficients (`ECS_MODEL_FILE` unset).
    pub const BUILT_IN: &'static str = include_str!("../../models/scorecard-v1.json");

    /// The built-in scorecard. Its file is checked by this module's tests, so this fails only
    /// if a broken file was compiled in.
    pub fn built_in() -> Result<Self> {
        Self::from_json(Self::BUILT_IN)
            .map_err(|e| Error::Internal(format!("built-in scorecard: {e}")))
    }

    /// Reads and checks a scorecard file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidInput(format!("cannot read model file {}: {e}", path.display()))
        })?;
        Self::from_json(&json)
            .map_err(|e| Error::InvalidInput(format!("model file {}: {e}", path.display())))
    }

    /// Parses and checks a scorecard definition; the error says what is wrong with it.
    pub fn from_json(json: &str) -> Result<Self> {
        let definition: Definition = serde_json::from_str(json)
            .map_err(|e| Error::InvalidInput(format!("not a scorecard definition: {e}")))?;
        if definition.schema != FEATURE_SCHEMA {
            return Err(Error::InvalidInput(format!(
                "it is for features {:?}, the cloud sends {FEATURE_SCHEMA:?}",
                definition.schema
            )));
        }
        if definition.name.trim().is_empty() || definition.version.trim().is_empty() {
            return Err(Error::InvalidInput("name and version must be set".into()));
        }
        if !definition.intercept.is_finite() {
            return Err(Error::InvalidInput("the intercept is not a number".into()));
        }
        let mut seen = BTreeSet::new();
        for term in &definition.features {
            if !seen.insert(term.name.as_str()) {
                return Err(Error::InvalidInput(format!(
                    "feature {:?} appears twice",
                    term.name
                )));
            }
            if !term.coefficient.is_finite() || !term.center.is_finite() {
                return Err(Error::InvalidInput(format!(
                    "feature {:?}: coefficient and center must be finite numbers",
                    term.name
                )));
            }
            if let Some([lo, hi]) = term.range
                && !(lo.is_finite()
                    && hi.is_finite()
                    && lo < hi
                    && (lo..=hi).contains(&term.center))
            {
                return Err(Error::InvalidInput(format!(
                    "feature {:?}: range [{lo}, {hi}] must be two finite numbers, the lower \
                     first, around the center {}",
                    term.name, term.center
                )));
            }
        }
        let expected: BTreeSet<&str> = feature_names().into_iter().collect();
        let missing: Vec<&str> = expected.difference(&seen).copied().collect();
        let unknown: Vec<&str> = seen.difference(&expected).copied().collect();
        if !missing.is_empty() || !unknown.is_empty() {
            return Err(Error::InvalidInput(format!(
                "its features do not match {FEATURE_SCHEMA}: \
                 missing {missing:?}, unknown {unknown:?}"
            )));
        }
        Ok(Self {
            name: definition.name,
            version: definition.version,
            description: definition.description,
            intercept: definition.intercept,
            intercept_rationale: definition.intercept_rationale,
            terms: definition
                .features
                .into_iter()
                .map(|t| Term {
                    name: t.name,
                    coefficient: t.coefficient,
                    center: t.center,
                    range: t.range.map(|[lo, hi]| (lo, hi)),
                    rationale: t.rationale,
                })
                .collect(),
        })
    }

    pub fn intercept(&self) -> f64 {
        self.intercept
    }

    /// What the model is, and why the intercept has its value (from the file).
    pub fn documentation(&self) -> (&str, &str) {
        (&self.description, &self.intercept_rationale)
    }

    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// The logit and each feature's contribution to it (in log-odds, in the file's order).
    pub fn explain(&self, features: &FeatureVector) -> Result<(f64, Vec<NamedValue>), ModelError> {
        features.ensure_schema(&self.name)?;
        let mut logit = self.intercept;
        let mut contributions = Vec::with_capacity(self.terms.len());
        for term in &self.terms {
            let x = features
                .get(&term.name)
                .ok_or_else(|| ModelError::SchemaMismatch {
                    model: self.name.clone(),
                    expected: format!("{FEATURE_SCHEMA} (with {:?})", term.name),
                    got: format!("a vector without {:?}", term.name),
                })?;
            // A NaN would make the probability NaN; name the culprit instead.
            if !x.is_finite() {
                return Err(ModelError::InvalidScore(format!(
                    "feature {:?} is {x}, not a finite number",
                    term.name
                )));
            }
            let counted = term.range.map_or(x, |(lo, hi)| x.clamp(lo, hi));
            let contribution = term.coefficient * (counted - term.center);
            logit += contribution;
            contributions.push(NamedValue {
                name: term.name.clone(),
                value: contribution,
            });
        }
        Ok((logit, contributions))
    }
}

/// The logistic function; saturates to exactly 0 or 1 for huge logits rather than failing.
fn sigmoid(logit: f64) -> f64 {
    1.0 / (1.0 + (-logit).exp())
}

impl RiskModel for Scorecard {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn score<'a>(&'a self, features: &'a FeatureVector) -> ScoreFuture<'a> {
        let result = self
            .explain(features)
            .map(|(logit, contributions)| RiskScore {
                probability_of_default: sigmoid(logit),
                model_name: self.name.clone(),
                model_version: self.version.clone(),
                contributions,
            });
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{features::EmotionFeatures, finance::FinancialFeatures, offers::feature_vector};

    /// A salaried person of the simulator: `salary_brl` a month for three months, spending 70%
    /// of it, 15% of it on discretionary things.
    fn salaried(salary_brl: i64) -> FinancialFeatures {
        let inflow = salary_brl * 100 * 3;
        FinancialFeatures {
            inflow_cents: inflow,
            outflow_cents: inflow * 70 / 100,
            transaction_count: 45,
            months_with_inflow: 3,
            discretionary_outflow_cents: inflow * 15 / 100,
        }
    }

    async fn pd(model: &Scorecard, finance: &FinancialFeatures) -> f64 {
        model
            .score(&feature_vector(finance, None))
            .await
            .unwrap()
            .probability_of_default
    }

    #[test]
    fn the_built_in_file_loads_and_weighs_every_feature() {
        let model = Scorecard::built_in().unwrap();
        let names: Vec<&str> = model.terms().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, feature_names());
        assert_eq!(model.name(), "scorecard");
        assert!(model.terms().iter().all(|t| !t.rationale.trim().is_empty()));
        assert!(!model.documentation().1.trim().is_empty());
    }

    #[tokio::test]
    async fn a_typical_salaried_person_is_a_5_to_15_percent_risk() {
        let model = Scorecard::built_in().unwrap();
        for salary in [4_000, 6_000, 8_000] {
            let pd = pd(&model, &salaried(salary)).await;
            assert!((0.05..=0.15).contains(&pd), "R${salary}: PD {pd}");
        }
        for salary in [2_500, 12_000] {
            let pd = pd(&model, &salaried(salary)).await;
            assert!((0.02..=0.20).contains(&pd), "R${salary}: PD {pd}");
        }
    }

    #[tokio::test]
    async fn no_income_outweighs_every_habit() {
        let model = Scorecard::built_in().unwrap();
        // R$ 50 000 a month in, 120 % of it out on gambling: once the best risk of all.
        let gambler = |salary_brl: i64| {
            let inflow_cents = salary_brl * 100 * 3;
            FinancialFeatures {
                inflow_cents,
                outflow_cents: inflow_cents * 12 / 10,
                transaction_count: 6,
                months_with_inflow: 3,
                discretionary_outflow_cents: inflow_cents * 12 / 10,
            }
        };
        let rich = pd(&model, &gambler(50_000)).await;
        assert!(rich > 0.10, "PD {rich}");
        assert_eq!(
            rich,
            pd(&model, &gambler(5_000_000)).await,
            "income counts up to its range's end"
        );
        assert!(
            pd(&model, &salaried(10_000_000)).await > 0.001,
            "no PD of zero"
        );
    }

    #[test]
    fn a_range_must_hold_its_center() {
        let bad = edited(|j| j["features"][0]["range"] = serde_json::json!([7000.0, 9000.0]));
        let err = Scorecard::from_json(&bad).unwrap_err().to_string();
        assert!(
            err.contains("monthly_inflow_brl") && err.contains("range"),
            "{err}"
        );
        let reversed = edited(|j| j["features"][0]["range"] = serde_json::json!([9000.0, 0.0]));
        assert!(Scorecard::from_json(&reversed).is_err());
    }

    #[tokio::test]
    async fn more_income_means_lower_risk_and_worse_habits_mean_higher() {
        let model = Scorecard::built_in().unwrap();
        let mut last = 1.0;
        for salary in (1_000..=20_000).step_by(1_000) {
            let pd = pd(&model, &salaried(salary)).await;
            assert!(pd < last, "R${salary}: PD {pd} not below {last}");
            last = pd;
        }
        let base = salaried(6_000);
        let base_pd = pd(&model, &base).await;
        let overspending = FinancialFeatures {
            outflow_cents: base.inflow_cents * 12 / 10,
            ..base
        };
        let spender = FinancialFeatures {
            discretionary_outflow_cents: base.inflow_cents / 2,
            ..base
        };
        let irregular = FinancialFeatures {
            months_with_inflow: 1,
            ..base
        };
        for (what, worse) in [
            ("overspending", overspending),
            ("spender", spender),
            ("irregular", irregular),
        ] {
            assert!(pd(&model, &worse).await > base_pd, "{what}");
        }
    }

    #[tokio::test]
    async fn emotional_signals_move_the_score_slightly_and_their_absence_not_at_all() {
        let model = Scorecard::built_in().unwrap();
        let finance = salaried(6_000);
        let neutral = model.score(&feature_vector(&finance, None)).await.unwrap();
        for c in &neutral.contributions[FinancialFeatures::default().as_named_vector().len()..] {
            assert_eq!(c.value, 0.0, "{} without consent", c.name);
        }
        let mut values = finance.as_named_vector();
        values.extend(EmotionFeatures::neutral_named_vector());
        let with = |name: &str, value: f64| {
            let mut v = FeatureVector::new(values.clone());
            v.values.iter_mut().find(|n| n.name == name).unwrap().value = value;
            v
        };
        for (name, value, raises) in [
            ("stress_share", 0.8, true),
            ("financial_worry", 0.6, true),
            ("impulsivity", 0.5, true),
            ("valence_volatility", 0.4, true),
            ("saving_intent", 0.6, false),
        ] {
            let pd = model
                .score(&with(name, value))
                .await
                .unwrap()
                .probability_of_default;
            let delta = pd - neutral.probability_of_default;
            assert_eq!(delta > 0.0, raises, "{name}: {delta}");
            assert!(delta.abs() < 0.05, "{name} moves PD only slightly: {delta}");
        }
    }

    #[tokio::test]
    async fn contributions_add_up_to_the_logit_minus_the_intercept() {
        let model = Scorecard::built_in().unwrap();
        let features = feature_vector(
            &FinancialFeatures {
                inflow_cents: 1_234_567,
                outflow_cents: 1_500_000,
                transaction_count: 12,
                months_with_inflow: 2,
                discretionary_outflow_cents: 400_000,
            },
            None,
        );
        let (logit, contributions) = model.explain(&features).unwrap();
        let sum: f64 = contributions.iter().map(|c| c.value).sum();
        assert!((sum - (logit - model.intercept())).abs() < 1e-12);
        let score = model.score(&features).await.unwrap();
        assert!((score.probability_of_default - sigmoid(logit)).abs() < 1e-15);
        let names: Vec<&str> = score
            .contributions
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, feature_names());
    }

    #[tokio::test]
    async fn a_vector_missing_a_feature_or_of_another_schema_is_refused() {
        let model = Scorecard::built_in().unwrap();
        let mut features = feature_vector(&salaried(5_000), None);
        features.values.retain(|v| v.name != "months_with_inflow");
        let err = model.score(&features).await.unwrap_err();
        assert!(matches!(&err, ModelError::SchemaMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("months_with_inflow"), "{err}");

        let mut features = feature_vector(&salaried(5_000), None);
        features.schema = "ecs-features/0".into();
        assert!(matches!(
            model.score(&features).await,
            Err(ModelError::SchemaMismatch { .. })
        ));

        let mut features = feature_vector(&salaried(5_000), None);
        features.values[0].value = f64::NAN;
        assert!(matches!(
            model.score(&features).await,
            Err(ModelError::InvalidScore(_))
        ));
    }

    /// The built-in file with `edit` applied to its JSON.
    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut json: serde_json::Value = serde_json::from_str(Scorecard::BUILT_IN).unwrap();
        edit(&mut json);
        json.to_string()
    }

    #[test]
    fn a_bad_file_is_refused_with_a_reason() {
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "not a scorecard"),
            (
                edited(|j| j["schema"] = "ecs-features/0".into()),
                "ecs-features/0",
            ),
            (
                edited(|j| {
                    j["features"].as_array_mut().unwrap().pop();
                }),
                "missing [\"saving_intent\"]",
            ),
            (
                edited(|j| j["features"][0]["name"] = "monthly_income".into()),
                "unknown [\"monthly_income\"]",
            ),
            (
                edited(|j| {
                    let first = j["features"][0].clone();
                    j["features"].as_array_mut().unwrap().push(first);
                }),
                "appears twice",
            ),
            (
                edited(|j| j["features"][1]["coefficient"] = "high".into()),
                "not a scorecard",
            ),
            (
                edited(|j| j["features"][1]["weight"] = 1.0.into()),
                "weight",
            ),
            (edited(|j| j["version"] = "".into()), "version"),
        ];
        for (json, says) in cases {
            let err = Scorecard::from_json(&json).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
            assert!(err.to_string().contains(says), "{err} should say {says:?}");
        }
    }

    #[test]
    fn a_missing_file_is_refused_with_its_path() {
        let err = Scorecard::from_file(Path::new("/nonexistent/scorecard.json")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/scorecard.json"),
            "{err}"
        );
    }
}

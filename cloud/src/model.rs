//! The risk model interface: a named, versioned feature vector in, a probability of default out.
//!
//! The interface is deliberately narrow so that a model can live in-process or behind a network
//! service without the credit policy noticing. Every score carries the model's name and version
//! and per-feature contributions, which are stored with the assessment so that an automated
//! decision can be explained and contested (LGPD Art. 20).

use std::{future::Future, pin::Pin, sync::Mutex};

use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// Version of the feature vector's layout. A model declares which layout it was trained on.
pub const FEATURE_SCHEMA: &str = "ecs-features/1";

/// Named inputs to a model, in a stable order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeatureVector {
    pub schema: String,
    pub values: Vec<NamedValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NamedValue {
    pub name: String,
    pub value: f64,
}

impl FeatureVector {
    pub fn new(values: impl IntoIterator<Item = (impl Into<String>, f64)>) -> Self {
        Self {
            schema: FEATURE_SCHEMA.to_owned(),
            values: values
                .into_iter()
                .map(|(name, value)| NamedValue {
                    name: name.into(),
                    value,
                })
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|v| v.name == name).map(|v| v.value)
    }
}

/// What a model says about one applicant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RiskScore {
    /// Probability of default over the credit's horizon, 0–1.
    pub probability_of_default: f64,
    pub model_name: String,
    pub model_version: String,
    /// How much each feature moved the score (model-specific units, e.g. log-odds). Empty when
    /// the model cannot explain itself (the random mock).
    pub contributions: Vec<NamedValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {model} expects features {expected}, got {got}")]
    SchemaMismatch {
        model: String,
        expected: String,
        got: String,
    },
    #[error("model unavailable: {0}")]
    Unavailable(String),
    #[error("model returned an invalid score: {0}")]
    InvalidScore(String),
}

pub type ScoreFuture<'a> = Pin<Box<dyn Future<Output = Result<RiskScore, ModelError>> + Send + 'a>>;

/// A credit-risk model. Implementations must be cheap to call concurrently.
pub trait RiskModel: Send + Sync {
    fn name(&self) -> &str;
    fn version(&self) -> &str;
    fn score<'a>(&'a self, features: &'a FeatureVector) -> ScoreFuture<'a>;
}

/// Which model `ecs-cloud serve` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// Uniformly random probability of default (the brief's mock; not a real assessment).
    Random,
}

/// Builds the configured model.
pub fn build(kind: ModelKind, seed: Option<u64>) -> Box<dyn RiskModel> {
    match kind {
        ModelKind::Random => Box::new(RandomModel::new(seed)),
    }
}

/// The brief's mock: ignores the features and draws a probability of default uniformly from
/// `[MIN_PD, MAX_PD)`. Seedable so that demos and tests are reproducible. It reports no
/// contributions, because it has none: decisions it drives say so in their reason codes.
pub struct RandomModel {
    rng: Mutex<StdRng>,
}

impl RandomModel {
    pub const MIN_PD: f64 = 0.01;
    pub const MAX_PD: f64 = 0.35;

    pub fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::seed_from_u64(rand::random()),
        };
        Self {
            rng: Mutex::new(rng),
        }
    }
}

impl RiskModel for RandomModel {
    fn name(&self) -> &str {
        "random"
    }

    fn version(&self) -> &str {
        "1"
    }

    fn score<'a>(&'a self, features: &'a FeatureVector) -> ScoreFuture<'a> {
        let result = if features.schema != FEATURE_SCHEMA {
            Err(ModelError::SchemaMismatch {
                model: self.name().to_owned(),
                expected: FEATURE_SCHEMA.to_owned(),
                got: features.schema.clone(),
            })
        } else {
            // A poisoned lock only means another caller panicked mid-draw; the RNG state is
            // still a valid RNG state.
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            Ok(RiskScore {
                probability_of_default: rng.random_range(Self::MIN_PD..Self::MAX_PD),
                model_name: self.name().to_owned(),
                model_version: self.version().to_owned(),
                contributions: Vec::new(),
            })
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn random_model_is_reproducible_with_a_seed_and_in_range() {
        let features = FeatureVector::new([("income", 1.0)]);
        let a = RandomModel::new(Some(7));
        let b = RandomModel::new(Some(7));
        for _ in 0..100 {
            let sa = a.score(&features).await.unwrap();
            let sb = b.score(&features).await.unwrap();
            assert_eq!(sa, sb);
            assert!(
                (RandomModel::MIN_PD..RandomModel::MAX_PD).contains(&sa.probability_of_default)
            );
        }
    }

    #[tokio::test]
    async fn a_model_refuses_features_of_another_schema() {
        let mut features = FeatureVector::new([("income", 1.0)]);
        features.schema = "ecs-features/0".into();
        let err = RandomModel::new(Some(1))
            .score(&features)
            .await
            .unwrap_err();
        assert!(matches!(err, ModelError::SchemaMismatch { .. }));
    }
}

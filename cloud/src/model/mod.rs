//! The risk model interface: a named, versioned feature vector in, a probability of default out.
//!
//! The interface is deliberately narrow so that a model can live in-process or behind a network
//! service without the credit policy noticing. Every score carries the model's name and version
//! and per-feature contributions, which are stored with the assessment so that an automated
//! decision can be explained and contested (LGPD Art. 20).
//!
//! Implementations: [`RandomModel`] (the brief's mock), [`Scorecard`] (deterministic logistic,
//! coefficients in a file) and [`HttpModel`] (a remote model service, always used behind a
//! [`Breaker`]). [`server`] is that remote service (`ecs-cloud model-server`). A model only ever
//! answers a probability: money is computed by the credit policy, never here.

pub mod breaker;
pub mod http;
pub mod random;
pub mod scorecard;
pub mod server;

use std::{future::Future, path::Path, pin::Pin, sync::Arc};

use serde::{Deserialize, Serialize};

pub use breaker::{Breaker, BreakerSettings, BreakerState};
pub use http::{HttpModel, HttpSettings};
pub use random::RandomModel;
pub use scorecard::Scorecard;

use crate::{
    config::ModelSettings, error::Result, features::EmotionFeatures, finance::FinancialFeatures,
};

/// Version of the feature vector's layout. A model declares which layout it was trained on.
pub const FEATURE_SCHEMA: &str = "ecs-features/1";

/// The feature names of [`FEATURE_SCHEMA`], in the order the cloud sends them: financial
/// features, then emotional ones (neutral values when there is no consent, same names).
pub fn feature_names() -> Vec<&'static str> {
    FinancialFeatures::default()
        .as_named_vector()
        .into_iter()
        .chain(EmotionFeatures::neutral_named_vector())
        .map(|(name, _)| name)
        .collect()
}

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

    /// Refuses a vector of another layout, on behalf of `model`.
    pub fn ensure_schema(&self, model: &str) -> Result<(), ModelError> {
        if self.schema == FEATURE_SCHEMA {
            Ok(())
        } else {
            Err(ModelError::SchemaMismatch {
                model: model.to_owned(),
                expected: FEATURE_SCHEMA.to_owned(),
                got: self.schema.clone(),
            })
        }
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

impl RiskScore {
    /// Checks what the policy and the audit trail rely on: a finite probability in `[0, 1]`, a
    /// model name, finite contributions. A score from across the network is checked before use.
    pub fn validate(&self) -> Result<(), ModelError> {
        let pd = self.probability_of_default;
        if !pd.is_finite() || !(0.0..=1.0).contains(&pd) {
            return Err(ModelError::InvalidScore(format!(
                "probability of default {pd} is not in [0, 1]"
            )));
        }
        if self.model_name.trim().is_empty() {
            return Err(ModelError::InvalidScore("the model has no name".into()));
        }
        if let Some(c) = self.contributions.iter().find(|c| !c.value.is_finite()) {
            return Err(ModelError::InvalidScore(format!(
                "contribution of {} is {}",
                c.name, c.value
            )));
        }
        Ok(())
    }
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

/// A shared model is a model, so wrappers such as [`Breaker`] can hold one that others hold too.
impl<M: RiskModel + ?Sized> RiskModel for Arc<M> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn version(&self) -> &str {
        (**self).version()
    }

    fn score<'a>(&'a self, features: &'a FeatureVector) -> ScoreFuture<'a> {
        (**self).score(features)
    }
}

/// Which model `ecs-cloud serve` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// Uniformly random probability of default (the brief's mock; not a real assessment).
    Random,
    /// Deterministic logistic scorecard from ECS_MODEL_FILE (the built-in coefficients when
    /// unset).
    Scorecard,
    /// The model service at ECS_MODEL_URL (`ecs-cloud model-server`), behind a per-call
    /// timeout, bounded retries and a circuit breaker.
    Http,
}

/// Which model `ecs-cloud model-server` serves: only in-process ones, since a server that
/// forwarded to another server would be a proxy, not a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LocalModelKind {
    /// Deterministic logistic scorecard from ECS_MODEL_FILE (the built-in coefficients when
    /// unset).
    Scorecard,
    /// Uniformly random probability of default (the brief's mock).
    Random,
}

/// Builds the configured model. A scorecard file that cannot be read or does not fit the
/// feature schema is refused here, at start, not at the first applicant.
pub fn build(settings: &ModelSettings) -> Result<Arc<dyn RiskModel>> {
    match settings.kind {
        ModelKind::Random => build_local(LocalModelKind::Random, None, settings.seed),
        ModelKind::Scorecard => {
            build_local(LocalModelKind::Scorecard, settings.file.as_deref(), None)
        }
        ModelKind::Http => {
            let remote = HttpModel::new(settings.http())?;
            Ok(Arc::new(Breaker::new(remote, settings.breaker())))
        }
    }
}

/// Builds an in-process model (`file` is read by the scorecard, `seed` by the random model).
pub fn build_local(
    kind: LocalModelKind,
    file: Option<&Path>,
    seed: Option<u64>,
) -> Result<Arc<dyn RiskModel>> {
    Ok(match kind {
        LocalModelKind::Random => Arc::new(RandomModel::new(seed)),
        LocalModelKind::Scorecard => Arc::new(match file {
            Some(path) => Scorecard::from_file(path)?,
            None => Scorecard::built_in()?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(pd: f64) -> RiskScore {
        RiskScore {
            probability_of_default: pd,
            model_name: "m".into(),
            model_version: "1".into(),
            contributions: vec![NamedValue {
                name: "x".into(),
                value: 0.5,
            }],
        }
    }

    #[test]
    fn feature_names_are_the_layout_the_cloud_sends() {
        let sent = crate::offers::feature_vector(&FinancialFeatures::default(), None);
        let names: Vec<&str> = sent.values.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, feature_names());
        assert_eq!(sent.schema, FEATURE_SCHEMA);
    }

    #[test]
    fn only_finite_probabilities_in_range_are_valid_scores() {
        for pd in [0.0, 0.07, 1.0] {
            assert!(score(pd).validate().is_ok(), "{pd}");
        }
        for pd in [-0.01, 1.01, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(score(pd).validate(), Err(ModelError::InvalidScore(_))),
                "{pd}"
            );
        }
        let mut s = score(0.1);
        s.contributions[0].value = f64::NAN;
        assert!(matches!(s.validate(), Err(ModelError::InvalidScore(_))));
        let mut s = score(0.1);
        s.model_name = " ".into();
        assert!(matches!(s.validate(), Err(ModelError::InvalidScore(_))));
    }
}

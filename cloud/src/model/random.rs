//! The brief's mock model: a random probability of default.

use std::sync::Mutex;

use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::{FeatureVector, RiskModel, RiskScore, ScoreFuture};

/// The brief's mock: ignores the features and draws a probability of default uniformly from
/// `[MIN_PD, MAX_PD)`. Seedable so that demos and tests are reproducible. It reports no
/// contributions, because it has none: a decision it drives shows `model_name: "random"` and an
/// empty contribution list, and the stored assessment says the same.
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
        let result = features.ensure_schema(self.name()).map(|()| {
            // A poisoned lock only means another caller panicked mid-draw; the RNG state is
            // still a valid RNG state.
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            RiskScore {
                probability_of_default: rng.random_range(Self::MIN_PD..Self::MAX_PD),
                model_name: self.name().to_owned(),
                model_version: self.version().to_owned(),
                contributions: Vec::new(),
            }
        });
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelError;

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

//! A risk model that lives in another process: `POST {base}/v1/score` with the feature vector as
//! JSON, a [`RiskScore`] as JSON back (the contract of [`super::server`]).
//!
//! The network fails in ways an in-process model does not, and a credit request must not hang on
//! it. So every attempt has a timeout, and only failures that say nothing about the request are
//! retried: the connection could not be made, the service said 502/503/504, or no answer came in
//! time. Scoring is a pure function of the vector, so repeating it is harmless. Retries are
//! bounded in number and all attempts together in time (the deadline), with a small jittered
//! backoff so that callers who failed together do not retry together. Everything that goes wrong
//! is [`ModelError::Unavailable`] (the API answers 503), except an answer that arrives but is not
//! a valid score: that is [`ModelError::InvalidScore`], because the service is up but wrong.
//!
//! Use it behind a [`super::Breaker`], which stops calling a service that keeps failing.

use std::{error::Error as _, time::Duration};

use reqwest::{StatusCode, Url};
use tokio::time::Instant;
use tracing::debug;

use super::{FeatureVector, ModelError, RiskModel, RiskScore, ScoreFuture};
use crate::{Error, error::Result};

/// Largest response body read: a score is a few hundred bytes; anything far bigger is not one.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// First retry waits about this long; each further retry twice as long.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(400);

/// How to reach the model service.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Base URL; the model is at `{base}/v1/score`.
    pub base_url: Url,
    /// Longest wait for one attempt (connect, send, answer).
    pub timeout: Duration,
    /// Retries after the first attempt, for retryable failures only.
    pub retries: u32,
    /// Longest wait for the whole call, retries and backoff included.
    pub deadline: Duration,
}

/// The client side of the model service.
pub struct HttpModel {
    client: reqwest::Client,
    endpoint: Url,
    settings: HttpSettings,
}

/// Why one attempt failed, and whether another could succeed.
enum Failure {
    /// Says nothing about the request (connect error, 502/503/504, timeout): try again.
    Transient(String),
    /// Trying again would get the same answer.
    Final(ModelError),
}

impl HttpModel {
    pub fn new(settings: HttpSettings) -> Result<Self> {
        let base = settings.base_url.as_str().trim_end_matches('/');
        let endpoint: Url = format!("{base}/v1/score")
            .parse()
            .map_err(|e| Error::InvalidInput(format!("model URL {base:?}: {e}")))?;
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            // The model service is a neighbour on the private network; a proxy configured for
            // the outside world must not sit between the credit API and its model.
            .no_proxy()
            .build()
            .map_err(|e| Error::Internal(format!("model HTTP client: {e}")))?;
        Ok(Self {
            client,
            endpoint,
            settings,
        })
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    async fn score_with_retries(&self, features: &FeatureVector) -> Result<RiskScore, ModelError> {
        let deadline = Instant::now() + self.settings.deadline;
        let mut attempt: u32 = 0;
        loop {
            let budget = self
                .settings
                .timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let failure = match tokio::time::timeout(budget, self.attempt(features)).await {
                Ok(Ok(score)) => return Ok(score),
                Ok(Err(failure)) => failure,
                Err(_) => Failure::Transient(format!("no answer within {} ms", budget.as_millis())),
            };
            let reason = match failure {
                Failure::Final(e) => return Err(e),
                Failure::Transient(reason) => reason,
            };
            let backoff = ecs_mqtt_link::Backoff::nth(BACKOFF_BASE, BACKOFF_MAX, attempt);
            if attempt >= self.settings.retries || Instant::now() + backoff >= deadline {
                return Err(ModelError::Unavailable(format!(
                    "{}: {reason} (attempt {} of at most {})",
                    self.endpoint,
                    attempt + 1,
                    self.settings.retries + 1
                )));
            }
            debug!(
                endpoint = %self.endpoint,
                %reason,
                attempt,
                backoff_ms = backoff.as_millis() as u64,
                "retrying the model service"
            );
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }

    /// One request, its answer read and checked.
    async fn attempt(&self, features: &FeatureVector) -> Result<RiskScore, Failure> {
        let mut response = self
            .client
            .post(self.endpoint.clone())
            .json(features)
            .send()
            .await
            .map_err(|e| {
                let reason = describe(&e);
                if e.is_connect() || e.is_timeout() {
                    Failure::Transient(reason)
                } else {
                    Failure::Final(ModelError::Unavailable(reason))
                }
            })?;
        let status = response.status();
        if matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ) {
            return Err(Failure::Transient(format!("answered {status}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            Failure::Final(ModelError::Unavailable(format!(
                "reading the answer: {}",
                describe(&e)
            )))
        })? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(Failure::Final(ModelError::InvalidScore(format!(
                    "answer larger than {MAX_RESPONSE_BYTES} bytes"
                ))));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let excerpt: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(Failure::Final(ModelError::Unavailable(format!(
                "answered {status}: {excerpt}"
            ))));
        }
        let score: RiskScore = serde_json::from_slice(&body).map_err(|e| {
            Failure::Final(ModelError::InvalidScore(format!("not a risk score: {e}")))
        })?;
        score.validate().map_err(Failure::Final)?;
        Ok(score)
    }
}

/// reqwest's own message is terse ("error sending request"); the cause is in its sources.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl RiskModel for HttpModel {
    /// The client's name; the remote model's own name and version are in every score it returns.
    fn name(&self) -> &str {
        "http"
    }

    fn version(&self) -> &str {
        "remote"
    }

    fn score<'a>(&'a self, features: &'a FeatureVector) -> ScoreFuture<'a> {
        Box::pin(self.score_with_retries(features))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_under_the_base_url() {
        for base in ["http://model:8090", "http://model:8090/"] {
            let model = HttpModel::new(HttpSettings {
                base_url: base.parse().unwrap(),
                timeout: Duration::from_millis(100),
                retries: 0,
                deadline: Duration::from_millis(100),
            })
            .unwrap();
            assert_eq!(model.endpoint().as_str(), "http://model:8090/v1/score");
        }
    }
}

//! The mobile app: a person (or the bank's back office) talking to the credit API over HTTP.
//! [`ApiClient`] is the typed client; [`app`] is what the app does with it on its own.

pub mod app;

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::history::Transaction;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("HTTP request failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("{method} {path} answered {status}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: StatusCode,
        body: String,
    },
}

/// One page of `GET /v1/users/{id}/notifications`.
#[derive(Debug, Clone, Deserialize)]
pub struct NotificationPage {
    pub notifications: Vec<NotificationItem>,
    pub next_after: Option<String>,
    pub more: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NotificationItem {
    pub notification_id: Uuid,
    pub device_id: String,
    pub kind: String,
    pub offer_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl ApiError {
    /// The API's answer was 429: an allowance is used up for now.
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, ApiError::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS)
    }
}

/// A typed client of the ECS REST API, authenticated with one bearer token.
#[derive(Clone)]
pub struct ApiClient {
    http: Client,
    base: String,
    token: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UserCreated {
    pub user_id: Uuid,
    pub api_token: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeviceRegistered {
    pub device_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Risk {
    pub probability_of_default: f64,
    /// Per-feature contributions (log-odds for the scorecard), empty for the random mock.
    #[serde(default)]
    pub contributions: Vec<Contribution>,
    pub risk_score: i32,
    pub model_name: String,
    pub model_version: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Contribution {
    pub name: String,
    pub value: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Offer {
    pub offer_id: Uuid,
    pub user_id: Uuid,
    pub approved: bool,
    pub status: String,
    pub risk: Option<Risk>,
    pub credit_limit_cents: i64,
    pub interest_rate_bps: i32,
    pub credit_type: String,
    pub term_months: i32,
    pub reason_codes: Vec<String>,
    /// `requested` or `proactive`.
    pub origin: String,
    /// What made the cloud offer a proactive offer.
    pub proactive_signal: Option<serde_json::Value>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmotionalProfile {
    pub readings_count: i64,
    pub mean_valence: f64,
    pub mean_stress: f64,
    pub stress_share: f64,
    pub impulsivity: f64,
    pub financial_worry: f64,
    pub saving_intent: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TransactionsRecorded {
    pub inserted: u64,
}

impl ApiClient {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Result<Self, ApiError> {
        Ok(Self {
            http: Client::builder()
                .timeout(Duration::from_secs(20))
                // Under the cloud's default header timeout (30 s, idle keep-alive included),
                // so that a pooled connection is dropped here before the cloud closes it.
                .pool_idle_timeout(Duration::from_secs(20))
                .build()?,
            base: base.into().trim_end_matches('/').to_owned(),
            token: token.into(),
        })
    }

    /// The same server, as another caller.
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Self {
            http: self.http.clone(),
            base: self.base.clone(),
            token: token.into(),
        }
    }

    pub async fn create_user(&self, name: &str, consent: bool) -> Result<UserCreated, ApiError> {
        #[derive(Serialize)]
        struct Body<'a> {
            display_name: &'a str,
            emotional_data_consent: bool,
        }
        self.post(
            "/v1/users",
            &Body {
                display_name: name,
                emotional_data_consent: consent,
            },
        )
        .await
    }

    pub async fn register_device(
        &self,
        user_id: Uuid,
        device_id: Option<&str>,
    ) -> Result<DeviceRegistered, ApiError> {
        #[derive(Serialize)]
        struct Body<'a> {
            device_id: Option<&'a str>,
        }
        self.post(&format!("/v1/users/{user_id}/devices"), &Body { device_id })
            .await
    }

    pub async fn record_transactions(
        &self,
        user_id: Uuid,
        transactions: &[Transaction],
    ) -> Result<TransactionsRecorded, ApiError> {
        #[derive(Serialize)]
        struct Body<'a> {
            transactions: &'a [Transaction],
        }
        self.post(
            &format!("/v1/users/{user_id}/transactions"),
            &Body { transactions },
        )
        .await
    }

    pub async fn request_offer(&self, user_id: Uuid) -> Result<Offer, ApiError> {
        self.post(
            &format!("/v1/users/{user_id}/credit-offers"),
            &serde_json::json!({}),
        )
        .await
    }

    /// The person's notifications after `after` (a `next_after` from an earlier page; `None`:
    /// from the first), oldest first.
    pub async fn notifications(
        &self,
        user_id: Uuid,
        after: Option<&str>,
    ) -> Result<NotificationPage, ApiError> {
        let mut path = format!("/v1/users/{user_id}/notifications?limit=100");
        if let Some(after) = after {
            // A cursor is digits, a dot and a UUID: nothing to escape.
            path.push_str("&after=");
            path.push_str(after);
        }
        self.get(&path).await
    }

    pub async fn accept_offer(&self, offer_id: Uuid) -> Result<Offer, ApiError> {
        self.post(
            &format!("/v1/credit-offers/{offer_id}/accept"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn emotional_profile(&self, user_id: Uuid) -> Result<EmotionalProfile, ApiError> {
        self.get(&format!("/v1/users/{user_id}/emotional-profile"))
            .await
    }

    pub async fn offer(&self, offer_id: Uuid) -> Result<Offer, ApiError> {
        self.get(&format!("/v1/credit-offers/{offer_id}")).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        Self::parse("POST", path, response).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Self::parse("GET", path, response).await
    }

    async fn parse<T: DeserializeOwned>(
        method: &'static str,
        path: &str,
        response: reqwest::Response,
    ) -> Result<T, ApiError> {
        let status = response.status();
        if !status.is_success() {
            return Err(ApiError::Status {
                method,
                path: path.to_owned(),
                status,
                body: response.text().await.unwrap_or_default(),
            });
        }
        Ok(response.json().await?)
    }
}

//! Financial features, derived from a person's transactions.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

/// Window over which financial behaviour is summarised.
pub const WINDOW_DAYS: i32 = 90;

/// A person's recent financial behaviour. Money in integer cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, sqlx::FromRow)]
pub struct FinancialFeatures {
    pub inflow_cents: i64,
    pub outflow_cents: i64,
    pub transaction_count: i64,
    /// Distinct calendar months (of the window) with any inflow: regularity of income.
    pub months_with_inflow: i64,
    /// Share of outflow spent in categories read as discretionary (see `DISCRETIONARY`).
    pub discretionary_outflow_cents: i64,
}

/// Categories whose spending is treated as discretionary.
pub const DISCRETIONARY: [&str; 4] = ["entertainment", "gambling", "shopping", "travel"];

impl FinancialFeatures {
    /// Average monthly inflow over the window.
    pub fn monthly_inflow_cents(&self) -> i64 {
        // Saturating: a sum of up to 1e12-cent transactions can approach i64's range.
        self.inflow_cents.saturating_mul(30) / i64::from(WINDOW_DAYS)
    }

    /// Model inputs, with stable names.
    pub fn as_named_vector(&self) -> Vec<(&'static str, f64)> {
        let inflow = self.inflow_cents as f64;
        let ratio = |part: i64| {
            if inflow > 0.0 {
                part as f64 / inflow
            } else {
                0.0
            }
        };
        vec![
            (
                "monthly_inflow_brl",
                self.monthly_inflow_cents() as f64 / 100.0,
            ),
            ("outflow_to_inflow", ratio(self.outflow_cents)),
            (
                "discretionary_share",
                ratio(self.discretionary_outflow_cents),
            ),
            ("months_with_inflow", self.months_with_inflow as f64),
            ("transaction_count", self.transaction_count as f64),
        ]
    }

    /// Summarises the window ending at `now` in one aggregate query over the
    /// `(user_id, occurred_at)` index.
    pub async fn load(
        executor: impl PgExecutor<'_>,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Self> {
        sqlx::query_as(
            "SELECT
                 COALESCE(SUM(amount_cents) FILTER (WHERE direction = 'inflow'), 0)::bigint
                     AS inflow_cents,
                 COALESCE(SUM(amount_cents) FILTER (WHERE direction = 'outflow'), 0)::bigint
                     AS outflow_cents,
                 COUNT(*) AS transaction_count,
                 COUNT(DISTINCT date_trunc('month', occurred_at))
                     FILTER (WHERE direction = 'inflow') AS months_with_inflow,
                 COALESCE(SUM(amount_cents) FILTER (
                     WHERE direction = 'outflow' AND category = ANY($3)), 0)::bigint
                     AS discretionary_outflow_cents
             FROM transactions
             WHERE user_id = $1
               AND occurred_at > $2 - make_interval(days => $4)
               AND occurred_at <= $2",
        )
        .bind(user_id)
        .bind(now)
        .bind(&DISCRETIONARY[..])
        .bind(WINDOW_DAYS)
        .fetch_one(executor)
        .await
    }
}

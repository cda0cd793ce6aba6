//! A person's financial transactions (as the bank's core systems report them), and the
//! financial features derived from them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{Error, error::Result, people::PersonTx, people::is_clean_text};

/// Largest number of transactions accepted in one request.
pub const MAX_TRANSACTIONS_PER_REQUEST: usize = 1_000;
pub const MAX_EXTERNAL_REF_CHARS: usize = 100;
pub const MAX_CATEGORY_CHARS: usize = 50;
/// Largest amount of one transaction, in cents (R$ 10 billion).
pub const MAX_AMOUNT_CENTS: i64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inflow,
    Outflow,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inflow => "inflow",
            Direction::Outflow => "outflow",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Direction::Inflow, Direction::Outflow]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

ecs_protocol::sql_text_enum!(Direction);

/// One transaction, checked: every field within the limits the table enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    external_ref: String,
    direction: Direction,
    amount_cents: i64,
    /// Lower-cased: categories are compared as words, not spellings.
    category: String,
    occurred_at: DateTime<Utc>,
}

impl Transaction {
    /// Checks one reported transaction; `field` is its place in the request, for the error.
    pub fn parse(
        field: &str,
        external_ref: &str,
        direction: Direction,
        amount_cents: i64,
        category: &str,
        occurred_at: DateTime<Utc>,
    ) -> Result<Self> {
        if !is_clean_text(external_ref, MAX_EXTERNAL_REF_CHARS) {
            return Err(Error::invalid(
                format!("{field}.external_ref"),
                format!(
                    "must be 1-{MAX_EXTERNAL_REF_CHARS} characters, without control characters"
                ),
            ));
        }
        if !(1..=MAX_AMOUNT_CENTS).contains(&amount_cents) {
            return Err(Error::invalid(
                format!("{field}.amount_cents"),
                format!("must be between 1 and {MAX_AMOUNT_CENTS}"),
            ));
        }
        // Checked after lower-casing: some characters lower-case to two ('İ' → "i̇"), so a
        // category that fits before may not fit after, and the table checks what is stored.
        let category = category.to_lowercase();
        if !is_clean_text(&category, MAX_CATEGORY_CHARS) {
            return Err(Error::invalid(
                format!("{field}.category"),
                format!(
                    "must be 1-{MAX_CATEGORY_CHARS} characters once lower-cased, without control characters"
                ),
            ));
        }
        if occurred_at > Utc::now() + chrono::Duration::minutes(5) {
            return Err(Error::invalid(
                format!("{field}.occurred_at"),
                "is in the future",
            ));
        }
        // Postgres cannot store dates before 4713 BC (a 500 once), and a bank has no
        // transaction before 1970 to report.
        if occurred_at < DateTime::UNIX_EPOCH {
            return Err(Error::invalid(
                format!("{field}.occurred_at"),
                "is before 1970-01-01",
            ));
        }
        Ok(Self {
            external_ref: external_ref.to_owned(),
            direction,
            amount_cents,
            category,
            occurred_at,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionsRecorded {
    pub received: usize,
    pub inserted: u64,
    /// Already known by `external_ref`.
    pub duplicates: u64,
}

/// Records transactions in the person's transaction, idempotent by `external_ref`: a transaction
/// sent again with the same values is a duplicate, counted and not stored twice. With other
/// values it is refused, the whole batch with it: 422 when two of the batch disagree, 409 when
/// the stored one does (a recorded transaction is not changed; a correction is a transaction
/// of its own). Checked before the insert under the person's lock, which every write of their
/// transactions takes, so nothing can come between the check and the insert.
pub async fn record(tx: &mut PersonTx, txs: &[Transaction]) -> Result<TransactionsRecorded> {
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(txs.len());
    for (i, t) in txs.iter().enumerate() {
        let seen = *first.entry(t.external_ref.as_str()).or_insert(i);
        if txs[seen] != *t {
            return Err(Error::invalid(
                format!("transactions[{i}].external_ref"),
                format!("is also transactions[{seen}]'s, with other values"),
            ));
        }
    }
    let ids: Vec<Uuid> = txs.iter().map(|_| Uuid::new_v4()).collect();
    let refs: Vec<&str> = txs.iter().map(|t| t.external_ref.as_str()).collect();
    let directions: Vec<&str> = txs.iter().map(|t| t.direction.as_str()).collect();
    let amounts: Vec<i64> = txs.iter().map(|t| t.amount_cents).collect();
    let categories: Vec<&str> = txs.iter().map(|t| t.category.as_str()).collect();
    let times: Vec<DateTime<Utc>> = txs.iter().map(|t| t.occurred_at).collect();
    let user_id = tx.user_id();
    let changed: Option<(i64, String)> = sqlx::query_as(
        "SELECT b.n, b.r
         FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::text[], $6::timestamptz[])
             WITH ORDINALITY AS b(r, d, a, c, o, n)
         JOIN transactions t ON t.user_id = $1 AND t.external_ref = b.r
         WHERE (t.direction, t.amount_cents, t.category, t.occurred_at)
               IS DISTINCT FROM (b.d, b.a, b.c, b.o)
         ORDER BY b.n
         LIMIT 1",
    )
    .bind(user_id)
    .bind(&refs)
    .bind(&directions)
    .bind(&amounts)
    .bind(&categories)
    .bind(&times)
    .fetch_optional(tx.conn())
    .await?;
    if let Some((n, external_ref)) = changed {
        return Err(Error::Conflict(format!(
            "transactions[{}]: external_ref {external_ref:?} is already recorded with other values \
             (direction, amount_cents, category or occurred_at); a recorded transaction is not changed",
            n - 1
        )));
    }
    let inserted = sqlx::query(
        "INSERT INTO transactions (transaction_id, user_id, external_ref, direction, amount_cents, category, occurred_at)
         SELECT id, $1, r, d, a, c, o
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::timestamptz[])
             AS t(id, r, d, a, c, o)
         ON CONFLICT (user_id, external_ref) DO NOTHING",
    )
    .bind(user_id)
    .bind(&ids)
    .bind(&refs)
    .bind(&directions)
    .bind(&amounts)
    .bind(&categories)
    .bind(&times)
    .execute(tx.conn())
    .await?
    .rows_affected();
    Ok(TransactionsRecorded {
        received: txs.len(),
        inserted,
        duplicates: txs.len() as u64 - inserted,
    })
}

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

/// The query behind [`FinancialFeatures::load`], as a literal so that a caller can read it in
/// the same statement as other things (the assessment's one read, `offers::Assessor::prepare`).
/// Its arguments name the parameters holding the person, the window's end, [`DISCRETIONARY`] and
/// [`WINDOW_DAYS`]; its columns are [`FinancialFeatures`]' fields.
macro_rules! financial_window {
    ($user:literal, $now:literal, $discretionary:literal, $days:literal) => {
        concat!(
            "SELECT
                 LEAST(COALESCE(SUM(amount_cents) FILTER (WHERE direction = 'inflow'), 0),
                       9223372036854775807)::bigint AS inflow_cents,
                 LEAST(COALESCE(SUM(amount_cents) FILTER (WHERE direction = 'outflow'), 0),
                       9223372036854775807)::bigint AS outflow_cents,
                 COUNT(*) AS transaction_count,
                 COUNT(DISTINCT date_trunc('month', occurred_at))
                     FILTER (WHERE direction = 'inflow') AS months_with_inflow,
                 LEAST(COALESCE(SUM(amount_cents) FILTER (
                     WHERE direction = 'outflow' AND category = ANY(",
            $discretionary,
            ")), 0),
                       9223372036854775807)::bigint AS discretionary_outflow_cents
             FROM transactions
             WHERE user_id = ",
            $user,
            "
               AND occurred_at > ",
            $now,
            " - make_interval(days => ",
            $days,
            ")
               AND occurred_at <= ",
            $now
        )
    };
}
pub(crate) use financial_window;

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
    /// `(user_id, occurred_at)` index. Sums saturate at `i64::MAX` cents rather than overflow
    /// (a person with absurd totals is still assessed, not answered 500).
    pub async fn load(
        executor: impl PgExecutor<'_>,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Self> {
        sqlx::query_as(financial_window!("$1", "$2", "$3", "$4"))
            .bind(user_id)
            .bind(now)
            .bind(&DISCRETIONARY[..])
            .bind(WINDOW_DAYS)
            .fetch_one(executor)
            .await
    }
}

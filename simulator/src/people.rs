//! People provisioned through the API the way a bank's back office and a person's phone would,
//! for the end-to-end tests and the benchmarks that need a person with a phone.

use anyhow::Context;
use chrono::Utc;
use ecs_edge_agent::AgentConfig;
use ecs_protocol::DeviceId;
use uuid::Uuid;

use crate::{history::Transaction, mobile::ApiClient, stack::Stack};

/// A person created through the API with one registered phone, and the phone's configuration
/// (certificate issued, database file in the stack's working directory), not yet started.
pub struct Provisioned {
    pub user_id: Uuid,
    pub api_token: String,
    /// The API as this person (their own token).
    pub api: ApiClient,
    pub device: DeviceId,
    pub phone: AgentConfig,
}

/// Creates a consenting person, registers a phone with their own token, and records (as the
/// bank, with the admin token) `salaries` monthly salaries of `salary_cents`, the latest two days
/// ago, so the scorecard sees regular income.
pub async fn provision(
    stack: &Stack,
    name: &str,
    salaries: u32,
    salary_cents: i64,
) -> anyhow::Result<Provisioned> {
    let admin = ApiClient::new(&stack.api_base, &stack.admin_token)?;
    let user = admin.create_user(name, true).await?;
    let api = admin.with_token(&user.api_token);
    let device = api.register_device(user.user_id, None).await?;
    let device = DeviceId::parse(device.device_id).context("the API gave a bad device id")?;
    let income: Vec<Transaction> = (0..salaries)
        .map(|month| Transaction {
            external_ref: format!("salary-{month}"),
            direction: "inflow",
            amount_cents: salary_cents,
            category: "salary",
            // A calendar month apart, so n salaries are always in n months (30 days apart, two
            // of them fell in one 31-day month on some dates), an hour before now.
            occurred_at: Utc::now()
                .checked_sub_months(chrono::Months::new(month))
                .unwrap_or_else(Utc::now)
                - chrono::Duration::hours(1),
        })
        .collect();
    if !income.is_empty() {
        admin.record_transactions(user.user_id, &income).await?;
    }
    let (broker, tls) = stack.device_access(&device)?;
    let mut phone = AgentConfig::new(device.clone(), broker);
    phone.tls = tls;
    phone.db_path = stack.workdir().join(format!("{device}.db"));
    Ok(Provisioned {
        user_id: user.user_id,
        api_token: user.api_token,
        api,
        device,
        phone,
    })
}

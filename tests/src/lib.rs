//! Support for the end-to-end tests: a throwaway database per test, and a running system on it.

use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// A database created for one test and dropped afterwards (best effort: a test that panics
/// leaves it behind, named `ecs_e2e_*`, for inspection).
pub struct ScratchDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // postgres://user@host:port/db: the database is the last path segment after the authority.
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl ScratchDatabase {
    pub async fn create() -> anyhow::Result<Self> {
        let admin_url = with_database(&server_url(), "postgres");
        let name = format!("ecs_e2e_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await?;
        // The name is ours (a prefix and a UUID in hex), never outside input.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(Self {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
        })
    }

    /// What a Postgres restart looks like to this database's clients: every connection to it is
    /// closed, and new ones are refused until [`ScratchDatabase::end_outage`]. Other databases
    /// on the server (other tests') are not touched.
    pub async fn begin_outage(&self) -> anyhow::Result<()> {
        let mut conn = self.allow_connections(false).await?;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        Ok(())
    }

    pub async fn end_outage(&self) -> anyhow::Result<()> {
        self.allow_connections(true).await?.close().await?;
        Ok(())
    }

    /// Lets new connections in or not; returns the administrative connection it used.
    async fn allow_connections(&self, allowed: bool) -> anyhow::Result<PgConnection> {
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        // The name is ours (a prefix and a UUID in hex), never outside input.
        sqlx::query(AssertSqlSafe(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {allowed}",
            self.name
        )))
        .execute(&mut conn)
        .await?;
        Ok(conn)
    }

    pub async fn drop_now(self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// A fresh database and the whole system on it (the demo's stack, scorecard model), ready: the
/// cloud answers `/readyz`. Panics with the reason when it cannot start (these are tests).
pub async fn ready_stack(
    broker: ecs_simulator::stack::BrokerChoice,
) -> (ScratchDatabase, ecs_simulator::stack::Stack) {
    let db = ScratchDatabase::create()
        .await
        .expect("Postgres reachable at DATABASE_URL");
    let stack = ecs_simulator::stack::Stack::start(&ecs_simulator::stack::StackOptions {
        database_url: db.url.clone(),
        broker,
        model: ecs_cloud::model::ModelKind::Scorecard,
        model_seed: None,
    })
    .await
    .expect("the stack starts");
    stack
        .wait_ready(std::time::Duration::from_secs(30))
        .await
        .expect("the stack becomes ready");
    (db, stack)
}

/// Phones streaming to `stack` as the fault tests run them: `n` people who consented
/// (`name 0`, `name 1`, ...), each registering one phone through the API, sampling at
/// `sample_hz`, batches of 20 at least every 200 ms, `ack_timeout` before a resend.
pub async fn streaming_phones(
    stack: &ecs_simulator::stack::Stack,
    n: usize,
    name: &str,
    sample_hz: f64,
    ack_timeout: std::time::Duration,
) -> Vec<(ecs_protocol::DeviceId, ecs_edge_agent::AgentHandle)> {
    let admin = ecs_simulator::mobile::ApiClient::new(&stack.api_base, &stack.admin_token)
        .expect("an API client");
    let mut phones = Vec::new();
    for i in 0..n {
        let user = admin
            .create_user(&format!("{name} {i}"), true)
            .await
            .expect("a person");
        let device = admin
            .register_device(user.user_id, None)
            .await
            .expect("a phone");
        let device_id = ecs_protocol::DeviceId::parse(device.device_id).expect("a device id");
        let (broker, tls) = stack.device_access(&device_id).expect("broker access");
        let mut config = ecs_edge_agent::AgentConfig::new(device_id.clone(), broker);
        config.tls = tls;
        config.db_path = stack.workdir().join(format!("{device_id}.db"));
        config.sample_rate_hz = sample_hz;
        config.batch_size = 20;
        config.flush_interval = std::time::Duration::from_millis(200);
        config.ack_timeout = ack_timeout;
        let agent = ecs_edge_agent::Agent::start(config)
            .await
            .expect("phone starts");
        phones.push((device_id, agent));
    }
    phones
}

/// Stops every phone's sensor, waits (up to a minute) until each has no unacknowledged reading
/// left, and checks that `pool` holds every reading each produced, once each and contiguous
/// (per device, in order), and that none was dropped; then shuts the phones down. Returns what
/// each phone counted.
pub async fn drain_and_check_each_reading_once(
    pool: &sqlx::PgPool,
    phones: Vec<(ecs_protocol::DeviceId, ecs_edge_agent::AgentHandle)>,
) -> Vec<ecs_edge_agent::AgentStats> {
    for (_, agent) in &phones {
        agent.stop_sensor();
    }
    let mut all = Vec::new();
    for (device, agent) in phones {
        assert!(
            agent.wait_drained(std::time::Duration::from_secs(60)).await,
            "phone {device} still holds unacknowledged readings: {:?}",
            agent.stats()
        );
        let stats = agent.stats();
        let (count, distinct, min, max): (i64, i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq)
             FROM emotion_readings WHERE device_id = $1",
        )
        .bind(device.as_str())
        .fetch_one(pool)
        .await
        .expect("counting the phone's readings");
        assert_eq!(count, distinct, "phone {device}: a reading stored twice");
        assert_eq!(
            count as u64, stats.readings_produced,
            "phone {device}: {stats:?}"
        );
        if let (Some(min), Some(max)) = (min, max) {
            assert_eq!(
                max - min + 1,
                count,
                "phone {device}: contiguous, each once"
            );
        }
        assert_eq!(stats.readings_dropped, 0, "phone {device}: {stats:?}");
        agent.shutdown().await.expect("the phone stops");
        all.push(stats);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "y"),
            "postgres://u:p@h/y?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "z"),
            "postgres://h:5432/z"
        );
    }
}

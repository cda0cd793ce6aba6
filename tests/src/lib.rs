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
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(AssertSqlSafe(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            self.name
        )))
        .execute(&mut conn)
        .await?;
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
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(AssertSqlSafe(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        Ok(())
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

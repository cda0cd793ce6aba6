//! The cloud's Postgres pool, and the one socket option sqlx 0.9.0 forgot.
//!
//! sqlx 0.9.0 opens its TCP connections without `TCP_NODELAY` (a regression: sqlx issue #4335,
//! fixed upstream by PR #4336, not released as of this writing). A statement whose message
//! does not leave in one write (a group commit's insert is hundreds of kilobytes) then has its
//! last small segment held by Nagle's algorithm until Postgres acknowledges the previous one,
//! which Linux delays by 40 ms: measured here, a group of two batches took 47 ms to insert
//! instead of 3, and ingest ran at a third of its rate. libpq (psql, pgbench) sets the option,
//! so the references the benchmarks compare with never pay it.
//!
//! Until sqlx sets it again, every new connection of the pool sets it on the process's TCP
//! sockets connected to the database's port ([`no_delay_to`]), Linux only. Remove this module's
//! hook when sqlx is upgraded past the fix.
//!
//! The pool also does not ping every connection it hands out (sqlx's `test_before_acquire`,
//! on by default, costs one round trip per acquire: as many as the query it precedes). Only a
//! connection idle for [`PING_AFTER_IDLE`] is pinged, the one a restarted server or a dropped
//! idle TCP connection has most likely broken; a connection broken while in steady use fails
//! its next statement instead, which every caller already answers (503, or a retry).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::error::Result;

/// An idle connection older than this is pinged before it is handed out.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(10);

/// A lazily connecting pool on `database_url` of at most `max_connections`, each connection
/// with `TCP_NODELAY`.
pub fn pool(database_url: &str, max_connections: u32) -> Result<sqlx::PgPool> {
    let options: PgConnectOptions = database_url.parse()?;
    let port = options.get_port();
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |_conn, _meta| {
            Box::pin(async move {
                no_delay_to(port);
                Ok(())
            })
        })
        .connect_lazy_with(options))
}

/// Sets `TCP_NODELAY` on every TCP socket of this process whose peer is on `port`: the pool's
/// connections (sqlx does not hand out its sockets). Idempotent and harmless on any other socket
/// that happens to match (one to another server on the same port); a socket closed meanwhile
/// (its descriptor reused) is at worst given the option too.
#[cfg(target_os = "linux")]
pub fn no_delay_to(port: u16) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if peer_port(fd) == Some(port) {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt only reads `on` (a live c_int, its size given); on a
            // descriptor that is not a TCP socket (or no longer open) it fails and nothing
            // changes.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn no_delay_to(_port: u16) {}

/// The peer's TCP port of descriptor `fd`, if it is a connected IPv4 or IPv6 socket.
#[cfg(target_os = "linux")]
fn peer_port(fd: i32) -> Option<u16> {
    // SAFETY: sockaddr_storage is plain data, valid zeroed; getpeername writes at most `len`
    // bytes into it and sets `len`; on a descriptor that is not a socket it fails.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let got = unsafe {
        libc::getpeername(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if got != 0 {
        return None;
    }
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4: &libc::sockaddr_in =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast() };
            Some(u16::from_be(v4.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6: &libc::sockaddr_in6 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast() };
            Some(u16::from_be(v6.sin6_port))
        }
        _ => None,
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use sqlx::Connection;

    use super::*;

    fn no_delay(stream: &std::net::TcpStream) -> bool {
        stream.nodelay().unwrap()
    }

    #[test]
    fn the_sockets_to_the_port_get_no_delay_and_the_others_do_not() {
        let db = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to_db = std::net::TcpStream::connect(db.local_addr().unwrap()).unwrap();
        let to_other = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!no_delay(&to_db) && !no_delay(&to_other));
        no_delay_to(db.local_addr().unwrap().port());
        assert!(no_delay(&to_db), "the database's socket");
        assert!(
            !no_delay(&to_other),
            "another server's socket is left alone"
        );
    }

    #[tokio::test]
    async fn the_pools_connections_have_no_delay() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let pool = pool(&url, 1).unwrap();
        sqlx::query("SELECT 1").execute(&pool).await.unwrap();
        let port: PgConnectOptions = url.parse().unwrap();
        let port = port.get_port();
        let mut found = 0;
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
            if peer_port(fd) == Some(port) {
                let mut on: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: getsockopt writes one c_int into `on`.
                let got = unsafe {
                    libc::getsockopt(
                        fd,
                        libc::IPPROTO_TCP,
                        libc::TCP_NODELAY,
                        (&mut on as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                assert_eq!(got, 0);
                assert_eq!(on, 1, "descriptor {fd} to the database has Nagle on");
                found += 1;
            }
        }
        assert!(found >= 1, "the pool's connection was found");
        pool.close().await;
    }

    /// A connection ended by the server while idle in the pool (a restart, an operator) is
    /// handed out unpinged when it was idle briefly; its statement fails, and that failure is
    /// "try again" (503), not a bug (500). The pool then replaces the connection.
    #[tokio::test]
    async fn a_connection_the_server_ended_fails_as_unavailable_and_is_replaced() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let pool = pool(&url, 1).unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        let mut admin = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert!(ended);
        // Let the backend's goodbye reach the socket.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let failed = sqlx::query("SELECT 1").execute(&pool).await.unwrap_err();
        let status = crate::Error::from(failed).problem_type().status();
        assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        sqlx::query("SELECT 1").execute(&pool).await.unwrap();
        pool.close().await;
    }
}

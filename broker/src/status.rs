//! `ecs-broker status`: a readable live view of a running broker, from its admin endpoint.

use std::fmt::Write as _;
use std::time::Duration;

use crate::metrics::{Listener, Status};

/// Fetches `/status` from the admin endpoint at `admin_addr`.
pub async fn fetch(admin_addr: std::net::SocketAddr) -> Result<Status, String> {
    let url = format!("http://{admin_addr}/status");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client.get(&url).send().await.map_err(|e| {
        format!(
            "{url}: {e} (is the broker running, and is ECS_BROKER_ADMIN_ADDR / --admin-addr right?)"
        )
    })?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    response.json().await.map_err(|e| format!("{url}: {e}"))
}

/// The view of `now`, with rates from the difference to `before` over `elapsed`.
pub fn render(now: &Status, before: Option<(&Status, Duration)>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ecs-broker: up {}s, {} revoked devices, {} handshakes in flight",
        now.uptime_s, now.revoked_devices, now.handshakes_in_flight
    );
    let _ = writeln!(
        out,
        "\n{:<8} {:>4} {:>12} {:>12} {:>12} {:>12}",
        "listener", "up", "connections", "msgs in/s", "msgs out/s", "KiB in/s"
    );
    for listener in &now.listeners {
        let rate = |pick: fn(&crate::metrics::ListenerStatus) -> u64| -> String {
            match before {
                Some((b, elapsed)) if elapsed > Duration::ZERO => b
                    .listeners
                    .iter()
                    .find(|l| l.listener == listener.listener)
                    .map(|old| {
                        format!(
                            "{:.1}",
                            pick(listener).saturating_sub(pick(old)) as f64 / elapsed.as_secs_f64()
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
                _ => "-".into(),
            }
        };
        let name = match listener.listener {
            Listener::Device => "device",
            Listener::Service => "service",
        };
        let kib = rate(|l| l.bytes_in / 1024);
        let _ = writeln!(
            out,
            "{:<8} {:>4} {:>12} {:>12} {:>12} {:>12}",
            name,
            if listener.up { "yes" } else { "NO" },
            listener.connections,
            rate(|l| l.messages_in),
            rate(|l| l.messages_out),
            kib
        );
        if !listener.refused.is_empty() {
            let refused: Vec<String> = listener
                .refused
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            let _ = writeln!(out, "         refused: {}", refused.join(" "));
        }
    }
    let handshakes: Vec<String> = now
        .handshakes
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(o, n)| format!("{o}={n}"))
        .collect();
    let _ = writeln!(
        out,
        "\nhandshakes: {}",
        if handshakes.is_empty() {
            "none".into()
        } else {
            handshakes.join(" ")
        }
    );
    if !now.acl_violations.is_empty() {
        let v: Vec<String> = now
            .acl_violations
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        let _ = writeln!(out, "access-rule violations: {}", v.join(" "));
    }
    if !now.top_talkers.is_empty() {
        let _ = writeln!(out, "\ntop talkers (bytes in):");
        let _ = writeln!(
            out,
            "{:<34} {:<22} {:>10} {:>12} {:>10}",
            "client", "peer", "msgs in", "bytes in", "msgs out"
        );
        for t in &now.top_talkers {
            let _ = writeln!(
                out,
                "{:<34} {:<22} {:>10} {:>12} {:>10}",
                t.client, t.peer, t.messages_in, t.bytes_in, t.messages_out
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::BrokerMetrics;
    use std::sync::Arc;

    #[test]
    fn the_view_shows_connections_rates_refusals_and_talkers() {
        let metrics = Arc::new(BrokerMetrics::default());
        let before = metrics.status(5);
        let session = metrics.session(Listener::Device, "phone7", "127.0.0.1:9".parse().unwrap());
        for _ in 0..20 {
            metrics.message_in(Listener::Device, &session.traffic, 1024);
        }
        metrics.refused(Listener::Service, crate::Refused::NotAuthorized);
        let now = metrics.status(5);
        let view = render(&now, Some((&before, Duration::from_secs(2))));
        assert!(view.contains("phone7"), "{view}");
        assert!(view.contains("10.0"), "20 messages in 2 s: {view}");
        assert!(view.contains("not_authorized=1"), "{view}");
    }
}

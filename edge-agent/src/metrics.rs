//! The agent's own metrics endpoint (`--metrics-addr`, off by default): `GET /metrics` in the
//! Prometheus text format, on a loopback address of the phone (only local processes read it:
//! a developer's scraper, the phone's own monitor). The counters are [`AgentStats`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use ecs_protocol::DeviceId;
use ecs_telemetry::prometheus::{CONTENT_TYPE, single};
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentStats, Counters};

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    device_id: DeviceId,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let body = render(&device_id, &counters.snapshot());
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response() }
        }),
    );
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "metrics endpoint stopped");
    }
}

/// The address a `--metrics-addr` may name: the phone's own loopback.
pub(crate) fn check_addr(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "the metrics endpoint ({addr}, --metrics-addr) must be on a loopback address: it \
             is for processes on the phone"
        ))
    }
}

/// The agent's counters in the Prometheus text format.
pub fn render(device_id: &DeviceId, s: &AgentStats) -> String {
    // A device id is letters and digits (`DeviceId`): nothing in it needs escaping.
    let labels = format!("device_id=\"{device_id}\"");
    let mut out = String::with_capacity(2048);
    let counters: [(&str, &str, u64); 12] = [
        (
            "ecs_agent_readings_produced_total",
            "Readings the sensor produced (this run).",
            s.readings_produced,
        ),
        (
            "ecs_agent_readings_acked_total",
            "Readings deleted from the buffer after the cloud acknowledged them (this run).",
            s.readings_acked,
        ),
        (
            "ecs_agent_readings_dropped_total",
            "Readings lost before the cloud had them: dropped from a full buffer or never stored (this run).",
            s.readings_dropped,
        ),
        (
            "ecs_agent_readings_dropped_since_created_total",
            "Readings dropped from a full buffer since the buffer file was created.",
            s.readings_dropped_total,
        ),
        (
            "ecs_agent_batches_sent_total",
            "Uplink batches published, resends included (this run).",
            s.batches_sent,
        ),
        (
            "ecs_agent_batches_resent_total",
            "Uplink batches published again after an ack timeout or a reconnect (this run).",
            s.batches_resent,
        ),
        (
            "ecs_agent_batches_overtaken_total",
            "Of the resends, those sent at once because a later batch was acknowledged first (this run).",
            s.batches_overtaken,
        ),
        (
            "ecs_agent_probes_total",
            "Of the resends, single batches sent to find out whether a silent cloud is back (this run).",
            s.probes,
        ),
        (
            "ecs_agent_notifications_received_total",
            "Distinct notifications stored in the inbox (this run).",
            s.notifications_received,
        ),
        (
            "ecs_agent_decode_errors_total",
            "Downlink messages that could not be decoded and were dropped (this run).",
            s.decode_errors,
        ),
        (
            "ecs_agent_acks_untrusted_total",
            "Acks naming readings not in flight; only the part in flight was trusted (this run).",
            s.acks_untrusted,
        ),
        (
            "ecs_agent_reconnects_total",
            "Connections to the broker made again after the first (this run).",
            s.reconnects,
        ),
    ];
    for (name, help, value) in counters {
        single(&mut out, name, "counter", help, &labels, value);
    }
    single(
        &mut out,
        "ecs_agent_bytes_published_total",
        "counter",
        "Payload bytes of the uplink messages published, resends included (this run).",
        &labels,
        s.bytes_published,
    );
    single(
        &mut out,
        "ecs_agent_unclean_stops_total",
        "counter",
        "Runs on this buffer file that ended without a clean stop, since it was created.",
        &labels,
        s.unclean_stops,
    );
    single(
        &mut out,
        "ecs_agent_readings_missed_after_crashes_total",
        "counter",
        "Readings the sensor produced that were never stored after unclean stops, since the file was created.",
        &labels,
        s.readings_missed_after_crashes,
    );
    single(
        &mut out,
        "ecs_agent_readings_buffered",
        "gauge",
        "Readings on disk awaiting an ack.",
        &labels,
        s.readings_buffered,
    );
    single(
        &mut out,
        "ecs_agent_clock_offset_ms",
        "gauge",
        "Correction applied to the phone's clock for new readings, from the cloud's acks (ms).",
        &labels,
        s.clock_offset_ms,
    );
    single(
        &mut out,
        "ecs_agent_connected",
        "gauge",
        "1 while connected to the broker.",
        &labels,
        u8::from(s.connected),
    );
    if let Some(at_ms) = s.last_ack_at_ms {
        single(
            &mut out,
            "ecs_agent_last_ack_timestamp_seconds",
            "gauge",
            "When the last trusted ack arrived (Unix time).",
            &labels,
            at_ms as f64 / 1000.0,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_one_well_formed_sample_with_its_header() {
        let device = DeviceId::parse("phone7").unwrap();
        let stats = AgentStats {
            readings_produced: 120,
            readings_acked: 100,
            bytes_published: 1_234,
            readings_buffered: 20,
            connected: true,
            last_ack_at_ms: Some(1_800_000_000_500),
            ..AgentStats::default()
        };
        let text = render(&device, &stats);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), 19, "{text}");
        for sample in &samples {
            let (name, value) = sample.split_once("{device_id=\"phone7\"} ").unwrap();
            assert!(value.parse::<f64>().is_ok(), "{sample}");
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no header"
            );
        }
        assert!(text.contains("ecs_agent_readings_produced_total{device_id=\"phone7\"} 120\n"));
        assert!(text.contains("ecs_agent_connected{device_id=\"phone7\"} 1\n"));
        assert!(
            text.contains(
                "ecs_agent_last_ack_timestamp_seconds{device_id=\"phone7\"} 1800000000.5\n"
            )
        );
        // No ack yet: no timestamp rather than a made-up one.
        let fresh = render(&device, &AgentStats::default());
        assert!(!fresh.contains("last_ack_timestamp"));
    }

    #[test]
    fn only_a_loopback_address_is_accepted() {
        assert!(check_addr("127.0.0.1:9100".parse().unwrap()).is_ok());
        assert!(check_addr("[::1]:9100".parse().unwrap()).is_ok());
        let refused = check_addr("0.0.0.0:9100".parse().unwrap()).unwrap_err();
        assert!(refused.contains("--metrics-addr"), "{refused}");
    }
}

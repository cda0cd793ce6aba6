//! What every MQTT client of the system shares — the cloud's links, the edge agent, the
//! simulator's phones and load generators — so they behave alike and are tested once:
//!
//! - [`BrokerUrl`]: `mqtt://host[:port]` or `mqtts://host[:port]`, one set of rules;
//! - [`options`]: client options with the system's packet limit ([`MAX_PACKET_BYTES`]);
//! - [`tls::client_config`]: rustls from PEM files (the CA, and a client identity when the
//!   broker asks for one), with errors that say which file is wrong;
//! - [`Backoff`]: exponential reconnect (or retry) delays with jitter.

mod backoff;
pub mod tls;
mod url;

use std::time::Duration;

pub use backoff::Backoff;
pub use ecs_protocol::MAX_PACKET_BYTES;
pub use url::{BrokerUrl, Scheme, UrlError};

/// Options for a client `client_id` of the broker at `url`: clean session, `keep_alive`, and
/// [`MAX_PACKET_BYTES`] both ways. The caller adds credentials and, for `mqtts://`, the TLS
/// transport ([`tls::client_config`]).
pub fn options(client_id: &str, url: &BrokerUrl, keep_alive: Duration) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, url.host.clone(), url.port);
    options
        .set_clean_session(true)
        .set_keep_alive(keep_alive)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_carry_the_url_and_the_packet_limit() {
        let url: BrokerUrl = "mqtt://broker.example:1884".parse().unwrap();
        let options = options("phone1", &url, Duration::from_secs(30));
        assert_eq!(
            options.broker_address(),
            ("broker.example".to_owned(), 1884)
        );
        assert_eq!(options.client_id(), "phone1");
        assert!(options.clean_session());
        assert_eq!(options.keep_alive(), Duration::from_secs(30));
        assert_eq!(options.max_packet_size(), MAX_PACKET_BYTES);
    }
}

//! The broker's address, parsed once with one set of rules for every client.

use std::fmt;
use std::str::FromStr;

/// A broker URL that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid broker url {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain TCP (interoperability tests against Mosquitto, service networks).
    Mqtt,
    /// TLS: devices present a client certificate, services log in with a password.
    Mqtts,
}

/// Where the broker is: `mqtt://host[:port]` or `mqtts://host[:port]` (default ports 1883 and
/// 8883). IPv6 hosts go in brackets: `mqtt://[::1]:1883`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    /// The broker listening at `addr` (a service's own loopback listener, say).
    pub fn at(scheme: Scheme, addr: std::net::SocketAddr) -> Self {
        Self {
            scheme,
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let fail = |reason| UrlError {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (Scheme::Mqtts, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (Scheme::Mqtt, rest)
        } else {
            return Err(fail("scheme must be mqtt:// or mqtts://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(fail("only host and port are allowed after the scheme"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| fail("unclosed '[' around an IPv6 address"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| fail("expected ':' after ']'"))?,
                    ),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(fail("host is empty"));
        }
        let port = match port {
            None => match scheme {
                Scheme::Mqtt => 1883,
                Scheme::Mqtts => 8883,
            },
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| fail("port must be a number in 1..=65535"))?,
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> BrokerUrl {
        s.parse().unwrap()
    }

    #[test]
    fn broker_urls_parse_with_default_ports() {
        assert_eq!(url("mqtt://localhost").port, 1883);
        assert_eq!(url("mqtts://broker.example").port, 8883);
        let explicit = url("mqtts://127.0.0.1:18883/");
        assert_eq!(
            (explicit.scheme, explicit.host.as_str(), explicit.port),
            (Scheme::Mqtts, "127.0.0.1", 18883)
        );
        let v6 = url("mqtt://[::1]:1884");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1884));
        assert_eq!(v6.to_string(), "mqtt://[::1]:1884");
        assert_eq!(
            url("mqtts://broker.example").to_string(),
            "mqtts://broker.example:8883"
        );
    }

    #[test]
    fn a_socket_address_is_a_url() {
        let v4 = BrokerUrl::at(Scheme::Mqtt, "127.0.0.1:1884".parse().unwrap());
        assert_eq!(v4.to_string(), "mqtt://127.0.0.1:1884");
        let v6 = BrokerUrl::at(Scheme::Mqtts, "[::1]:8883".parse().unwrap());
        assert_eq!(v6.to_string().parse::<BrokerUrl>().unwrap(), v6);
    }

    #[test]
    fn malformed_broker_urls_are_rejected() {
        for bad in [
            "tcp://host:1883",
            "http://x:1",
            "mqtt://",
            "mqtt://:1884",
            "mqtt://host:0",
            "mqtt://host:99999",
            "mqtt://host:1883/topic",
            "mqtt://user@host",
            "mqtt://[::1",
        ] {
            let error = bad.parse::<BrokerUrl>().expect_err(bad);
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}

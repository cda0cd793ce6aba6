//! The phone-side agent of the Empathic Credit System.
//!
//! The data's way, one module per stage:
//!
//! - [`sensor`]: a simulated brain sensor, seeded and reproducible.
//! - `recorder`: samples at the configured rate and appends to the buffer in batched
//!   transactions; never waits for the disk or the network.
//! - [`buffer`]: SQLite store-and-forward with a per-device `seq` that survives restarts and an
//!   explicit, counted drop-oldest policy when full.
//! - `uplink`: publishes batches over MQTT (QoS 1) and deletes readings only when the cloud's
//!   application ack for their range arrives; re-sends what stays unacknowledged.
//! - [`inbox`]: notifications from the cloud, de-duplicated, each answered with a receipt.
//!
//! [`Agent::start`] wires them together and returns an [`AgentHandle`].
//!
//! Guarantee: a reading produced by the sensor and stored in the buffer is deleted only after
//! the cloud acknowledged it, or when the buffer is full (counted in [`AgentStats`]). It is
//! lost only if the phone's disk is.

mod agent;
pub mod buffer;
pub mod clock;
mod config;
mod error;
pub mod inbox;
pub mod metrics;
mod recorder;
pub mod sensor;
mod sqlite;
pub mod status;
mod uplink;

pub use agent::{Agent, AgentHandle, AgentStats};
pub use config::{AgentConfig, BrokerUrl, Scheme, TlsFiles};
pub use error::{Error, Result};

//! The wire format of the Empathic Credit System.
//!
//! Everything that crosses MQTT between a phone (edge agent) and the cloud is defined here, and
//! nothing else is: no I/O, no clocks, no async. Both sides depend on this crate, so a change here
//! is a protocol change.
//!
//! # Versioning
//!
//! postcard is not self-describing: a reader must know the exact shape of what it reads, and adding
//! a field to a struct breaks every old reader. So every message travels inside an *append-only*
//! envelope enum ([`Uplink`], [`Downlink`]). postcard encodes an enum variant as a varint index, so a
//! new message shape is a new variant appended at the end (`ReadingBatchV2`, …); existing variants
//! are never edited or reordered. An old reader that meets a variant it does not know gets a
//! [`DecodeError`], which the cloud turns into a dead letter rather than a crash.

mod message;
mod packed;
mod reading;
#[cfg(feature = "sqlx")]
mod sql;
pub mod topic;

pub use message::{
    Ack, Control, CreditType, DecodeError, Downlink, Notification, NotificationKind,
    NotificationReceipt, Revocations, TimedAck, Uplink, decode_control, decode_downlink,
    decode_uplink, encode_control, encode_downlink, encode_uplink, reads_timed_acks,
};
pub use packed::{PackedBatch, PackedError};
pub use reading::{
    DeviceId, DeviceIdError, EMOTION_NAMES, Emotions, Intent, MAX_READINGS_PER_BATCH,
    MAX_THOUGHTS_PER_READING, Reading, ReadingBatch, Thought, ValidationError,
};

/// Largest encoded message either side will send or accept, in bytes.
///
/// A full batch of [`MAX_READINGS_PER_BATCH`] readings with the maximum number of thoughts each
/// stays well below this; brokers and MQTT clients must be configured to allow at least this much.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The MQTT packet size every client and the broker allow: a message of [`MAX_MESSAGE_BYTES`]
/// plus room for the topic, the packet id a broker adds when it forwards at QoS 1, and the
/// fixed header. One number for all, so a message one side takes the other side takes too.
pub const MAX_PACKET_BYTES: usize = MAX_MESSAGE_BYTES + 4096;

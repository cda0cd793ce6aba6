//! The envelopes: what a device sends up, what the cloud sends down.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DeviceId, MAX_MESSAGE_BYTES, PackedBatch, ReadingBatch};

/// Everything a device publishes, on its uplink topic. Append-only (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Uplink {
    ReadingBatchV1(ReadingBatch),
    NotificationReceiptV1(NotificationReceipt),
    /// The same readings, delta-coded (`PackedBatch`): what phones sent from V2.
    ReadingBatchV2(PackedBatch),
    /// V2's body, from a device that reads [`Downlink::AckV2`]: the cloud answers it with acks
    /// that carry the cloud's clock. What phones send since V3.
    ReadingBatchV3(PackedBatch),
}

impl Uplink {
    /// The envelope index of [`Uplink::ReadingBatchV3`] on the wire (postcard: a varint, one byte
    /// below 128).
    const READING_BATCH_V3_INDEX: u8 = 3;
}

/// Whether the sender of this uplink payload reads [`Downlink::AckV2`]: it sent
/// [`Uplink::ReadingBatchV3`]. Answers from the envelope's first byte alone, so a receiver that
/// has already decoded the payload need not keep its version around to choose the ack's.
pub fn reads_timed_acks(uplink_payload: &[u8]) -> bool {
    uplink_payload.first() == Some(&Uplink::READING_BATCH_V3_INDEX)
}

/// Everything the cloud publishes to one device, on its downlink topic. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Downlink {
    AckV1(Ack),
    NotificationV1(Notification),
    /// An ack with the cloud's clock, sent only to devices that sent [`Uplink::ReadingBatchV3`].
    AckV2(TimedAck),
}

/// What services tell the broker, on [`crate::topic::revocations`]. Append-only.
///
/// Devices can never publish there: the broker lets a device publish only on its own uplink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    RevocationsV1(Revocations),
}

/// Devices whose certificates the broker must refuse from now on, and disconnect if they are
/// connected. Revocation is permanent, so the broker keeps the union of every list it receives;
/// the cloud sends new revocations at once and the whole list again now and then (a restarted
/// broker remembers nothing), split into messages of at most [`Revocations::MAX_PER_MESSAGE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    pub device_ids: Vec<DeviceId>,
}

impl Revocations {
    /// Device ids per message: 33 bytes at most each, so a full message stays far below
    /// [`MAX_MESSAGE_BYTES`].
    pub const MAX_PER_MESSAGE: usize = 1_000;
}

/// Application-level acknowledgement: readings `first_seq..=up_to_seq` of this device are
/// committed to the cloud's database. Only now may the device forget them.
///
/// MQTT's PUBACK only says the broker took the message into memory; this says it is durable.
/// The range is explicit (not "everything up to") because batches can arrive out of order after
/// a resend, and an older gap must not be acknowledged by a newer batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub first_seq: u64,
    pub up_to_seq: u64,
}

/// An [`Ack`] and the cloud's clock when it was sent: a phone whose clock is off by more than
/// the cloud tolerates (readings from the future are refused) corrects the times it gives new
/// readings instead of having its batches dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedAck {
    pub ack: Ack,
    /// Unix time in milliseconds, read just before the ack was published, after the commit.
    pub server_time_ms: i64,
}

/// The device has durably stored these notifications; the cloud can stop re-sending them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationReceipt {
    pub notification_ids: Vec<Uuid>,
}

/// A message for the person, delivered at least once; `notification_id` lets the phone drop
/// duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub notification_id: Uuid,
    /// Unix time in milliseconds.
    pub created_at_ms: i64,
    pub kind: NotificationKind,
}

/// Names are snake_case in text formats; postcard encodes the variant's index, so the wire
/// does not depend on them. The aliases read what earlier versions wrote as JSON (notification
/// bodies stored before the rename).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CreditType {
    #[serde(alias = "ShortTerm")]
    ShortTerm,
    #[serde(alias = "LongTerm")]
    LongTerm,
}

impl CreditType {
    pub const ALL: [CreditType; 2] = [CreditType::ShortTerm, CreditType::LongTerm];

    pub fn as_str(self) -> &'static str {
        match self {
            CreditType::ShortTerm => "short_term",
            CreditType::LongTerm => "long_term",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[cfg(test)]
mod credit_type_tests {
    use super::CreditType;

    #[test]
    fn text_names_are_snake_case_and_old_names_still_read() {
        assert_eq!(
            serde_json::to_string(&CreditType::LongTerm).unwrap(),
            "\"long_term\""
        );
        for (text, t) in [
            ("\"ShortTerm\"", CreditType::ShortTerm),
            ("\"short_term\"", CreditType::ShortTerm),
            ("\"LongTerm\"", CreditType::LongTerm),
        ] {
            assert_eq!(serde_json::from_str::<CreditType>(text).unwrap(), t);
        }
        // The wire (postcard) encodes the variant index, not the name.
        let bytes = postcard::to_allocvec(&CreditType::LongTerm).unwrap();
        assert_eq!(bytes, [1]);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotificationKind {
    /// A credit offer is waiting for the person.
    OfferMade {
        offer_id: Uuid,
        credit_limit_cents: i64,
        interest_rate_bps: i32,
        credit_type: CreditType,
        /// Unix time in milliseconds.
        expires_at_ms: i64,
    },
    /// An accepted offer took effect: the person's credit limit is now `credit_limit_cents`.
    OfferApplied {
        offer_id: Uuid,
        credit_limit_cents: i64,
        interest_rate_bps: i32,
        credit_type: CreditType,
    },
}

impl NotificationKind {
    pub fn offer_id(&self) -> Uuid {
        match self {
            NotificationKind::OfferMade { offer_id, .. }
            | NotificationKind::OfferApplied { offer_id, .. } => *offer_id,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            NotificationKind::OfferMade { .. } => "offer_made",
            NotificationKind::OfferApplied { .. } => "offer_applied",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {0} bytes, more than the {MAX_MESSAGE_BYTES} allowed")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("malformed packed readings: {0}")]
    Packed(#[from] crate::PackedError),
}

pub fn encode_uplink(message: &Uplink) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(message)
}

pub fn encode_downlink(message: &Downlink) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(message)
}

pub fn encode_control(message: &Control) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(message)
}

pub fn decode_control(bytes: &[u8]) -> Result<Control, DecodeError> {
    decode(bytes)
}

pub fn decode_uplink(bytes: &[u8]) -> Result<Uplink, DecodeError> {
    decode(bytes)
}

pub fn decode_downlink(bytes: &[u8]) -> Result<Downlink, DecodeError> {
    decode(bytes)
}

/// Strict decoding: the whole payload must be exactly one message. Trailing bytes would mean the
/// sender and receiver disagree about the shape, which must not pass silently.
fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let (message, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(message)
}

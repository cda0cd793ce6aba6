//! What the brain sensor senses, quantised to small integers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// At most this many readings travel in one [`ReadingBatch`].
pub const MAX_READINGS_PER_BATCH: usize = 1_000;
/// At most this many "thoughts" (intent tags) are attached to one reading.
pub const MAX_THOUGHTS_PER_READING: usize = 4;
/// Longest device id, in characters.
const MAX_DEVICE_ID_LEN: usize = 32;

/// A device's identity: 1–32 ASCII letters or digits.
///
/// The alphabet is narrow on purpose: the id is also the `O` (organisation) field of the device's
/// client certificate, which the broker uses as a tenant and only accepts when alphanumeric, and it
/// is embedded in MQTT topic names, where `/`, `+` and `#` would change the meaning of a filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id must not be empty")]
    Empty,
    #[error("device id is longer than {MAX_DEVICE_ID_LEN} characters")]
    TooLong,
    #[error("device id may contain only ASCII letters and digits")]
    InvalidCharacter,
}

impl DeviceId {
    pub fn parse(raw: impl Into<String>) -> Result<Self, DeviceIdError> {
        let raw = raw.into();
        if raw.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if raw.len() > MAX_DEVICE_ID_LEN {
            return Err(DeviceIdError::TooLong);
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(DeviceIdError::InvalidCharacter);
        }
        Ok(Self(raw))
    }

    /// A fresh random id (a v4 UUID in its 32-hex-digit "simple" form).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for DeviceId {
    type Err = DeviceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// Deserialisation goes through `parse`, so a `DeviceId` that exists is always valid, whichever way
// it arrived.
impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(raw).map_err(serde::de::Error::custom)
    }
}

/// Names of Plutchik's eight basic emotions, in the order of [`Emotions`]' fields.
pub const EMOTION_NAMES: [&str; 8] = [
    "joy",
    "trust",
    "fear",
    "surprise",
    "sadness",
    "disgust",
    "anger",
    "anticipation",
];

/// Intensity of Plutchik's eight basic emotions, each 0–100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Emotions {
    pub joy: u8,
    pub trust: u8,
    pub fear: u8,
    pub surprise: u8,
    pub sadness: u8,
    pub disgust: u8,
    pub anger: u8,
    pub anticipation: u8,
}

impl Emotions {
    /// The intensities in the order of [`EMOTION_NAMES`].
    pub fn as_array(&self) -> [u8; 8] {
        [
            self.joy,
            self.trust,
            self.fear,
            self.surprise,
            self.sadness,
            self.disgust,
            self.anger,
            self.anticipation,
        ]
    }
}

/// A "thought": an intent the sensor recognises, as a closed set.
///
/// Adding an intent is a protocol change (old readers would fail to decode it), so it comes with a
/// new envelope variant, never by appending here alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Intent {
    PurchaseIntent,
    FinancialWorry,
    SavingIntent,
    RiskTaking,
    Gratitude,
}

impl Intent {
    pub const ALL: [Intent; 5] = [
        Intent::PurchaseIntent,
        Intent::FinancialWorry,
        Intent::SavingIntent,
        Intent::RiskTaking,
        Intent::Gratitude,
    ];

    /// Stable small integer used in storage (Postgres `smallint[]`).
    pub fn code(self) -> i16 {
        match self {
            Intent::PurchaseIntent => 1,
            Intent::FinancialWorry => 2,
            Intent::SavingIntent => 3,
            Intent::RiskTaking => 4,
            Intent::Gratitude => 5,
        }
    }

    pub fn from_code(code: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Intent::PurchaseIntent => "purchase_intent",
            Intent::FinancialWorry => "financial_worry",
            Intent::SavingIntent => "saving_intent",
            Intent::RiskTaking => "risk_taking",
            Intent::Gratitude => "gratitude",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thought {
    pub intent: Intent,
    /// 0–100.
    pub confidence: u8,
}

/// One sample of the sensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// Milliseconds after the batch's `base_time_ms`.
    pub offset_ms: u32,
    pub emotions: Emotions,
    /// Pleasantness, −100 (very unpleasant) to 100 (very pleasant).
    pub valence: i8,
    /// Activation, 0–100.
    pub arousal: u8,
    /// Feeling in control, 0–100.
    pub dominance: u8,
    /// 0–100.
    pub stress: u8,
    /// 0–100.
    pub focus: u8,
    pub thoughts: Vec<Thought>,
}

/// A run of consecutive readings from one device: reading `i` has sequence number
/// `first_seq + i` and was taken at `base_time_ms + offset_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingBatch {
    pub device_id: DeviceId,
    pub first_seq: u64,
    /// Unix time in milliseconds.
    pub base_time_ms: i64,
    pub readings: Vec<Reading>,
}

/// Why a decoded batch is not acceptable. Each variant names the first offending place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("batch holds no readings")]
    EmptyBatch,
    #[error("batch holds {0} readings, more than the {MAX_READINGS_PER_BATCH} allowed")]
    TooManyReadings(usize),
    #[error("sequence numbers overflow: first_seq {first_seq} + {len} readings")]
    SeqOverflow { first_seq: u64, len: usize },
    #[error("sequence numbers above i64::MAX are not storable")]
    SeqOutOfRange,
    #[error("reading {index}: {field} = {value} is outside {min}..={max}")]
    OutOfRange {
        index: usize,
        field: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },
    #[error("reading {index}: {count} thoughts, more than the {MAX_THOUGHTS_PER_READING} allowed")]
    TooManyThoughts { index: usize, count: usize },
    #[error("reading {index}: offset_ms goes backwards")]
    OffsetNotMonotonic { index: usize },
}

impl ReadingBatch {
    /// Sequence number of the last reading. Only meaningful on a validated, non-empty batch.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.readings.len().saturating_sub(1) as u64
    }

    /// Checks every structural rule a batch must satisfy to be stored. Time plausibility needs a
    /// clock and is the receiver's business.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let len = self.readings.len();
        if len == 0 {
            return Err(ValidationError::EmptyBatch);
        }
        if len > MAX_READINGS_PER_BATCH {
            return Err(ValidationError::TooManyReadings(len));
        }
        let last =
            self.first_seq
                .checked_add(len as u64 - 1)
                .ok_or(ValidationError::SeqOverflow {
                    first_seq: self.first_seq,
                    len,
                })?;
        if last > i64::MAX as u64 {
            return Err(ValidationError::SeqOutOfRange);
        }
        let mut previous_offset = 0;
        for (index, r) in self.readings.iter().enumerate() {
            if r.offset_ms < previous_offset {
                return Err(ValidationError::OffsetNotMonotonic { index });
            }
            previous_offset = r.offset_ms;
            for (field, value) in EMOTION_NAMES.iter().zip(r.emotions.as_array()) {
                check(index, field, value.into(), 0, 100)?;
            }
            check(index, "valence", r.valence.into(), -100, 100)?;
            check(index, "arousal", r.arousal.into(), 0, 100)?;
            check(index, "dominance", r.dominance.into(), 0, 100)?;
            check(index, "stress", r.stress.into(), 0, 100)?;
            check(index, "focus", r.focus.into(), 0, 100)?;
            if r.thoughts.len() > MAX_THOUGHTS_PER_READING {
                return Err(ValidationError::TooManyThoughts {
                    index,
                    count: r.thoughts.len(),
                });
            }
            for t in &r.thoughts {
                check(index, "thought confidence", t.confidence.into(), 0, 100)?;
            }
        }
        Ok(())
    }
}

fn check(
    index: usize,
    field: &'static str,
    value: i64,
    min: i64,
    max: i64,
) -> Result<(), ValidationError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ValidationError::OutOfRange {
            index,
            field,
            value,
            min,
            max,
        })
    }
}

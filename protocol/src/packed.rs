//! `ReadingBatchV2`: the same readings as a [`ReadingBatch`], delta-coded, for a phone's data plan.
//!
//! A sensor's consecutive readings differ by little: the mood drifts, the sampling period is
//! fixed. So each reading is written as its differences from the reading before:
//!
//! - **time**: the change of the sampling interval (a zigzag varint of `Δt − Δt_previous`, in
//!   ms): 0, one byte, while the sensor keeps its rate;
//! - **the 13 levels** (8 emotions, valence, arousal, dominance, stress, focus): each difference
//!   from the previous reading's level (from 0 for the first reading) as a 4-bit nibble when it
//!   lies in −7..=7, else the nibble 15 (escape) and the difference as a zigzag varint after the
//!   nibbles; the 14th nibble is the number of thoughts. So 7 bytes when every level moved by at
//!   most 7;
//! - **thoughts**: an intent code and a confidence byte each.
//!
//! Packing accepts only what [`ReadingBatch::validate`] accepts in order, and unpacking returns a
//! [`ReadingBatch`] the receiver validates as any other: both versions share one set of rules.
//! Unpacking hostile bytes fails with a [`PackedError`], never panics, and never builds more
//! than [`MAX_READINGS_PER_BATCH`] readings.

use serde::{Deserialize, Serialize};

use crate::{
    DeviceId, Emotions, Intent, MAX_READINGS_PER_BATCH, MAX_THOUGHTS_PER_READING, Reading,
    ReadingBatch, Thought,
};

/// A batch as `Uplink::ReadingBatchV2` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBatch {
    pub device_id: DeviceId,
    pub first_seq: u64,
    /// Unix time in milliseconds; the first reading's time is relative to it.
    pub base_time_ms: i64,
    /// How many readings `packed` holds.
    pub count: u16,
    /// postcard writes a `Vec<u8>` as its length and the raw bytes.
    pub packed: Vec<u8>,
}

/// Why packed bytes do not make a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackedError {
    #[error("the packed readings end in the middle of reading {0}")]
    Truncated(usize),
    #[error("{0} bytes follow the last packed reading")]
    TrailingBytes(usize),
    #[error("a batch of {0} readings is more than the {MAX_READINGS_PER_BATCH} allowed")]
    TooMany(usize),
    #[error("reading {0}: a varint is too long")]
    BadVarint(usize),
    #[error("reading {index}: {what} is out of range")]
    OutOfRange { index: usize, what: &'static str },
    #[error("reading {0}: unknown intent code")]
    UnknownIntent(usize),
    #[error("only a batch of increasing offsets, with levels in range, can be packed: {0}")]
    NotPackable(String),
}

const ESCAPE: u8 = 15;
const LEVELS: usize = 13;

impl PackedBatch {
    /// Packs a batch. Fails on what [`ReadingBatch::validate`] refuses.
    pub fn pack(batch: &ReadingBatch) -> Result<Self, PackedError> {
        batch
            .validate()
            .map_err(|e| PackedError::NotPackable(e.to_string()))?;
        let mut out = Vec::with_capacity(batch.readings.len() * 9);
        let mut previous = [0i64; LEVELS];
        let (mut previous_offset, mut previous_interval) = (0i64, 0i64);
        for r in &batch.readings {
            let offset = i64::from(r.offset_ms);
            let interval = offset - previous_offset;
            put_varint(&mut out, zigzag(interval - previous_interval));
            (previous_offset, previous_interval) = (offset, interval);

            let levels = levels_of(r);
            let mut nibbles = [0u8; LEVELS + 1];
            let mut escaped = Vec::new();
            for (i, (&now, was)) in levels.iter().zip(previous.iter_mut()).enumerate() {
                let delta = now - *was;
                *was = now;
                nibbles[i] = if (-7..=7).contains(&delta) {
                    zigzag(delta) as u8
                } else {
                    escaped.push(delta);
                    ESCAPE
                };
            }
            nibbles[LEVELS] = r.thoughts.len() as u8;
            for pair in nibbles.chunks(2) {
                out.push(pair[0] | (pair[1] << 4));
            }
            for delta in escaped {
                put_varint(&mut out, zigzag(delta));
            }
            for t in &r.thoughts {
                out.push(t.intent.code() as u8);
                out.push(t.confidence);
            }
        }
        Ok(Self {
            device_id: batch.device_id.clone(),
            first_seq: batch.first_seq,
            base_time_ms: batch.base_time_ms,
            count: batch.readings.len() as u16,
            packed: out,
        })
    }

    /// The readings again. The result still needs [`ReadingBatch::validate`] (as a V1 batch
    /// does): unpacking checks only what it must to build values of the right types.
    pub fn unpack(&self) -> Result<ReadingBatch, PackedError> {
        let count = usize::from(self.count);
        if count > MAX_READINGS_PER_BATCH {
            return Err(PackedError::TooMany(count));
        }
        let mut input = Input {
            bytes: &self.packed,
            at: 0,
        };
        let mut readings = Vec::with_capacity(count);
        let mut previous = [0i64; LEVELS];
        let (mut offset, mut interval) = (0i64, 0i64);
        for index in 0..count {
            let change = unzigzag(input.varint(index)?);
            interval = interval
                .checked_add(change)
                .ok_or(PackedError::OutOfRange {
                    index,
                    what: "offset",
                })?;
            offset = offset
                .checked_add(interval)
                .ok_or(PackedError::OutOfRange {
                    index,
                    what: "offset",
                })?;
            let offset_ms = u32::try_from(offset).map_err(|_| PackedError::OutOfRange {
                index,
                what: "offset",
            })?;

            let mut nibbles = [0u8; LEVELS + 1];
            for pair in nibbles.chunks_mut(2) {
                let byte = input.byte(index)?;
                pair[0] = byte & 0x0f;
                pair[1] = byte >> 4;
            }
            let mut levels = [0i64; LEVELS];
            for i in 0..LEVELS {
                let delta = if nibbles[i] == ESCAPE {
                    unzigzag(input.varint(index)?)
                } else {
                    unzigzag(u64::from(nibbles[i]))
                };
                levels[i] = previous[i]
                    .checked_add(delta)
                    .ok_or(PackedError::OutOfRange {
                        index,
                        what: "a level",
                    })?;
            }
            previous = levels;
            let thoughts = usize::from(nibbles[LEVELS]);
            if thoughts > MAX_THOUGHTS_PER_READING {
                return Err(PackedError::OutOfRange {
                    index,
                    what: "the number of thoughts",
                });
            }
            let mut read_thoughts = Vec::with_capacity(thoughts);
            for _ in 0..thoughts {
                let intent = Intent::from_code(i16::from(input.byte(index)?))
                    .ok_or(PackedError::UnknownIntent(index))?;
                let confidence = input.byte(index)?;
                read_thoughts.push(Thought { intent, confidence });
            }
            readings.push(reading_of(index, offset_ms, &levels, read_thoughts)?);
        }
        if input.at != input.bytes.len() {
            return Err(PackedError::TrailingBytes(input.bytes.len() - input.at));
        }
        Ok(ReadingBatch {
            device_id: self.device_id.clone(),
            first_seq: self.first_seq,
            base_time_ms: self.base_time_ms,
            readings,
        })
    }
}

fn levels_of(r: &Reading) -> [i64; LEVELS] {
    let e = r.emotions.as_array();
    [
        e[0].into(),
        e[1].into(),
        e[2].into(),
        e[3].into(),
        e[4].into(),
        e[5].into(),
        e[6].into(),
        e[7].into(),
        r.valence.into(),
        r.arousal.into(),
        r.dominance.into(),
        r.stress.into(),
        r.focus.into(),
    ]
}

fn reading_of(
    index: usize,
    offset_ms: u32,
    l: &[i64; LEVELS],
    thoughts: Vec<Thought>,
) -> Result<Reading, PackedError> {
    let level = |i: usize| {
        u8::try_from(l[i]).map_err(|_| PackedError::OutOfRange {
            index,
            what: "a level",
        })
    };
    Ok(Reading {
        offset_ms,
        emotions: Emotions {
            joy: level(0)?,
            trust: level(1)?,
            fear: level(2)?,
            surprise: level(3)?,
            sadness: level(4)?,
            disgust: level(5)?,
            anger: level(6)?,
            anticipation: level(7)?,
        },
        valence: i8::try_from(l[8]).map_err(|_| PackedError::OutOfRange {
            index,
            what: "valence",
        })?,
        arousal: level(9)?,
        dominance: level(10)?,
        stress: level(11)?,
        focus: level(12)?,
        thoughts,
    })
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn byte(&mut self, index: usize) -> Result<u8, PackedError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or(PackedError::Truncated(index))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self, index: usize) -> Result<u64, PackedError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(index)?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(PackedError::BadVarint(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(readings: Vec<Reading>) -> ReadingBatch {
        ReadingBatch {
            device_id: DeviceId::parse("phone1").unwrap(),
            first_seq: 42,
            base_time_ms: 1_700_000_000_000,
            readings,
        }
    }

    fn reading(offset_ms: u32, level: u8, valence: i8, thoughts: Vec<Thought>) -> Reading {
        Reading {
            offset_ms,
            emotions: Emotions {
                joy: level,
                trust: 100 - level,
                fear: 0,
                surprise: 100,
                sadness: level / 2,
                disgust: 3,
                anger: 1,
                anticipation: 99,
            },
            valence,
            arousal: level,
            dominance: 50,
            stress: 100 - level,
            focus: 7,
            thoughts,
        }
    }

    #[test]
    fn readings_round_trip_including_jumps_and_extremes() {
        let worry = Thought {
            intent: Intent::FinancialWorry,
            confidence: 100,
        };
        let original = batch(vec![
            reading(0, 0, -100, vec![]),
            reading(100, 100, 100, vec![worry; MAX_THOUGHTS_PER_READING]),
            reading(100, 50, 0, vec![]),
            reading(4_000_000_000, 51, 1, vec![worry]),
        ]);
        let packed = PackedBatch::pack(&original).unwrap();
        assert_eq!(packed.unpack().unwrap(), original);
        // Through the envelope too.
        let wire = crate::encode_uplink(&crate::Uplink::ReadingBatchV2(packed.clone())).unwrap();
        assert_eq!(
            crate::decode_uplink(&wire).unwrap(),
            crate::Uplink::ReadingBatchV2(packed)
        );
    }

    #[test]
    fn a_steady_stream_costs_eight_bytes_a_reading() {
        let readings = (0..100u32)
            .map(|i| reading(i * 100, 40 + (i % 5) as u8, (i % 3) as i8, vec![]))
            .collect();
        let packed = PackedBatch::pack(&batch(readings)).unwrap();
        // The first reading's levels (from 0) and the first two intervals are escapes and
        // two-byte varints; every later one is one byte of time and seven of nibbles.
        assert_eq!(packed.packed.len(), 100 * 8 + 11);
    }

    #[test]
    fn hostile_bytes_fail_and_never_panic() {
        let good = PackedBatch::pack(&batch(vec![reading(0, 10, 0, vec![])])).unwrap();
        let mut cases = Vec::new();
        for cut in 0..good.packed.len() {
            let mut p = good.clone();
            p.packed.truncate(cut);
            cases.push(p);
        }
        let mut trailing = good.clone();
        trailing.packed.push(0);
        cases.push(trailing);
        let mut too_many = good.clone();
        too_many.count = (MAX_READINGS_PER_BATCH + 1) as u16;
        cases.push(too_many);
        let mut long_varint = good.clone();
        long_varint.packed = vec![0xff; 20];
        cases.push(long_varint);
        let mut bad_intent = good.clone();
        bad_intent.packed = vec![0, 0, 0, 0, 0, 0, 0, 0x10, 200, 1];
        cases.push(bad_intent);
        for case in cases {
            assert!(case.unpack().is_err(), "{case:?}");
        }
        // Every byte string decodes to an error or a batch, never a panic.
        for seed in 0..2_000u32 {
            let bytes: Vec<u8> = (0..(seed % 64))
                .map(|i| (seed.wrapping_mul(2_654_435_761).rotate_left(i)) as u8)
                .collect();
            let p = PackedBatch {
                packed: bytes,
                count: (seed % 5) as u16,
                ..good.clone()
            };
            let _ = p.unpack();
        }
    }

    #[test]
    fn what_validation_refuses_is_not_packed() {
        let backwards = batch(vec![reading(100, 1, 0, vec![]), reading(50, 1, 0, vec![])]);
        assert!(PackedBatch::pack(&backwards).is_err());
        assert!(PackedBatch::pack(&batch(vec![])).is_err());
    }
}

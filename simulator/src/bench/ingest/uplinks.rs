//! The readings of the cloud-only and COPY phases, made once: registered devices, their
//! batches encoded as phones send them (`Uplink::ReadingBatchV1`, postcard), and the same
//! readings as COPY text for `emotion_readings`, row for row what ingest inserts.

use std::fmt::Write as _;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use ecs_edge_agent::sensor::Sensor;
use ecs_protocol::{DeviceId, Reading, ReadingBatch, Uplink, decode_uplink, encode_uplink};
use sqlx::PgPool;
use uuid::Uuid;

/// Time between two readings of one device: a 100 Hz sensor.
const READING_SPACING_MS: u32 = 10;

/// The columns ingest writes (`cloud/src/ingest/store.rs`), in the order of [`copy_row`];
/// `received_at` takes its default, `now()`, as it does for ingest.
pub const COPY_STATEMENT: &str = "COPY emotion_readings (device_id, seq, user_id, recorded_at, \
     joy, trust, fear, surprise, sadness, disgust, anger, anticipation, \
     valence, arousal, dominance, stress, focus, thoughts_sealed) FROM STDIN";

/// A registered, consenting person's device.
#[derive(Debug, Clone)]
pub struct BenchDevice {
    pub id: DeviceId,
    pub user_id: Uuid,
}

/// Registers `count` consenting people with one device each, straight into the tables: the API
/// is not what these phases measure.
pub async fn register(pool: &PgPool, count: usize) -> anyhow::Result<Vec<BenchDevice>> {
    let devices: Vec<BenchDevice> = (0..count)
        .map(|_| BenchDevice {
            id: DeviceId::random(),
            user_id: Uuid::new_v4(),
        })
        .collect();
    let user_ids: Vec<Uuid> = devices.iter().map(|d| d.user_id).collect();
    let names: Vec<String> = (1..=count).map(|i| format!("Bench person {i}")).collect();
    let device_ids: Vec<String> = devices.iter().map(|d| d.id.to_string()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO users (user_id, display_name, emotional_data_consent, consent_recorded_at)
         SELECT u, n, true, now() FROM unnest($1::uuid[], $2::text[]) AS t(u, n)",
    )
    .bind(&user_ids)
    .bind(&names)
    .execute(&mut *tx)
    .await
    .context("registering the bench's people")?;
    sqlx::query(
        "INSERT INTO devices (device_id, user_id)
         SELECT d, u FROM unnest($1::text[], $2::uuid[]) AS t(d, u)",
    )
    .bind(&device_ids)
    .bind(&user_ids)
    .execute(&mut *tx)
    .await
    .context("registering the bench's devices")?;
    tx.commit().await?;
    Ok(devices)
}

/// Every device's batches, encoded, in seq order. Batch `i` of every device holds seqs
/// `i * batch_size ..`; a device's readings are [`READING_SPACING_MS`] apart and its last one
/// is stamped at the time of [`Uplinks::generate`], so every batch passes the cloud's time
/// checks for the next 30 days.
#[derive(Debug)]
pub struct Uplinks {
    devices: Vec<BenchDevice>,
    batch_size: usize,
    encoded: Vec<Vec<Vec<u8>>>,
}

/// COPY text and the number of rows in it.
#[derive(Debug)]
pub struct CopyText {
    pub text: Vec<u8>,
    pub rows: u64,
}

impl Uplinks {
    /// Samples and encodes `batches` batches of `batch_size` readings for every device, with
    /// the edge agent's sensor (seeded by the device's index), ending at `now`.
    pub fn generate(
        devices: Vec<BenchDevice>,
        batches: usize,
        batch_size: usize,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Self> {
        if batch_size == 0 || batches == 0 {
            bail!("a batch pool needs at least one batch of one reading");
        }
        let spacing = i64::from(READING_SPACING_MS);
        let per_batch = i64::try_from(batch_size)?;
        let span_ms = i64::try_from(batches)? * per_batch * spacing;
        let start_ms = now.timestamp_millis() - span_ms;
        let mut encoded = Vec::with_capacity(devices.len());
        for (index, device) in devices.iter().enumerate() {
            let mut sensor = Sensor::new(index as u64);
            let mut mine = Vec::with_capacity(batches);
            for b in 0..batches {
                let first_seq = u64::try_from(b * batch_size)?;
                let readings = (0..batch_size)
                    .map(|k| {
                        let mut reading = sensor.sample();
                        reading.offset_ms = u32::try_from(k)? * READING_SPACING_MS;
                        Ok(reading)
                    })
                    .collect::<anyhow::Result<Vec<Reading>>>()?;
                let batch = ReadingBatch {
                    device_id: device.id.clone(),
                    first_seq,
                    base_time_ms: start_ms + i64::try_from(first_seq)? * spacing,
                    readings,
                };
                batch
                    .validate()
                    .context("the bench made an invalid batch")?;
                mine.push(encode_uplink(&Uplink::ReadingBatchV1(batch))?);
            }
            encoded.push(mine);
        }
        Ok(Self {
            devices,
            batch_size,
            encoded,
        })
    }

    pub fn devices(&self) -> &[BenchDevice] {
        &self.devices
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches made for each device.
    pub fn batches_per_device(&self) -> usize {
        self.encoded.first().map_or(0, Vec::len)
    }

    /// The `index`th batch of device `device`, encoded.
    pub fn batch(&self, device: usize, index: usize) -> Option<&[u8]> {
        Some(self.encoded.get(device)?.get(index)?.as_slice())
    }

    /// The first seq of every device's `index`th batch.
    pub fn first_seq(&self, index: usize) -> u64 {
        (index * self.batch_size) as u64
    }

    /// COPY text for the first `rows` readings (rounded up to whole batches, at most all of
    /// them) in the order the load generator publishes them: the first batch of every device,
    /// then the second, and so on.
    pub fn copy_text(&self, rows: u64) -> anyhow::Result<CopyText> {
        let mut out = CopyText {
            text: Vec::new(),
            rows: 0,
        };
        let mut line = String::new();
        'batches: for index in 0..self.batches_per_device() {
            for (device, batches) in self.devices.iter().zip(&self.encoded) {
                if out.rows >= rows {
                    break 'batches;
                }
                let Some(encoded) = batches.get(index) else {
                    continue;
                };
                let Uplink::ReadingBatchV1(batch) =
                    decode_uplink(encoded).context("decoding the bench's own batch")?
                else {
                    bail!("the bench's own batch decoded as something else");
                };
                for (seq, reading) in (batch.first_seq..).zip(&batch.readings) {
                    let at = batch
                        .base_time_ms
                        .checked_add(i64::from(reading.offset_ms))
                        .and_then(DateTime::from_timestamp_millis)
                        .ok_or_else(|| anyhow!("the bench's own reading has no valid time"))?;
                    line.clear();
                    copy_row(&mut line, device, seq, at, reading);
                    out.text.extend_from_slice(line.as_bytes());
                    out.rows += 1;
                }
            }
        }
        Ok(out)
    }
}

/// One line of COPY text (tab-separated, newline-terminated) for [`COPY_STATEMENT`]. Nothing
/// needs escaping: ids are alphanumeric or UUIDs, the rest numbers and array braces.
pub(crate) fn copy_row(
    out: &mut String,
    device: &BenchDevice,
    seq: u64,
    at: DateTime<Utc>,
    r: &Reading,
) {
    let e = r.emotions;
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{}\t{seq}\t{}\t{}",
        device.id,
        device.user_id,
        at.format("%Y-%m-%d %H:%M:%S%.3f+00")
    );
    for value in [
        i16::from(e.joy),
        i16::from(e.trust),
        i16::from(e.fear),
        i16::from(e.surprise),
        i16::from(e.sadness),
        i16::from(e.disgust),
        i16::from(e.anger),
        i16::from(e.anticipation),
        i16::from(r.valence),
        i16::from(r.arousal),
        i16::from(r.dominance),
        i16::from(r.stress),
        i16::from(r.focus),
    ] {
        let _ = write!(out, "\t{value}");
    }
    // What ingest stores for the thoughts: none (NULL), or a sealed value of the same length
    // (nonce, a byte pair per thought, tag). The reference does not encrypt; it writes zeros.
    if r.thoughts.is_empty() {
        let _ = writeln!(out, "\t\\N");
    } else {
        let sealed_len = SEALED_OVERHEAD + 2 * r.thoughts.len();
        let _ = writeln!(out, "\t\\\\x{}", "00".repeat(sealed_len));
    }
}

/// Bytes a sealed value adds to its plaintext: the nonce (12) and the tag (16).
const SEALED_OVERHEAD: usize = 12 + 16;

#[cfg(test)]
mod tests {
    use ecs_protocol::{Emotions, Intent, Thought};

    use super::*;

    fn devices(n: usize) -> Vec<BenchDevice> {
        (0..n)
            .map(|_| BenchDevice {
                id: DeviceId::random(),
                user_id: Uuid::new_v4(),
            })
            .collect()
    }

    #[test]
    fn a_copy_row_has_the_columns_ingest_writes() {
        let device = BenchDevice {
            id: DeviceId::parse("phone1").unwrap(),
            user_id: Uuid::nil(),
        };
        let reading = Reading {
            offset_ms: 0,
            emotions: Emotions {
                joy: 1,
                trust: 2,
                fear: 3,
                surprise: 4,
                sadness: 5,
                disgust: 6,
                anger: 7,
                anticipation: 8,
            },
            valence: -20,
            arousal: 9,
            dominance: 10,
            stress: 11,
            focus: 12,
            thoughts: vec![
                Thought {
                    intent: Intent::PurchaseIntent,
                    confidence: 80,
                },
                Thought {
                    intent: Intent::Gratitude,
                    confidence: 15,
                },
            ],
        };
        let at = DateTime::from_timestamp_millis(1_800_000_000_123).unwrap();
        let mut line = String::new();
        copy_row(&mut line, &device, 42, at, &reading);
        let fields: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
        let columns = COPY_STATEMENT
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(columns, _)| columns.split(',').count())
            .unwrap();
        assert_eq!(fields.len(), columns);
        assert_eq!(
            fields[..4],
            [
                "phone1",
                "42",
                &Uuid::nil().to_string(),
                "2027-01-15 08:00:00.123+00"
            ]
        );
        assert_eq!(
            fields[4..17],
            [
                "1", "2", "3", "4", "5", "6", "7", "8", "-20", "9", "10", "11", "12"
            ]
        );
        // Two thoughts: the sealed value's length, in bytea's hex form (escaped for COPY).
        assert_eq!(fields[17], format!("\\\\x{}", "00".repeat(12 + 2 * 2 + 16)));
        assert!(line.ends_with('\n'));
        let mut line = String::new();
        let calm = Reading {
            thoughts: Vec::new(),
            ..reading
        };
        copy_row(&mut line, &device, 43, at, &calm);
        assert!(line.ends_with("\t\\N\n"), "{line:?}");
    }

    #[test]
    fn generated_batches_are_valid_consecutive_and_end_now() {
        let now = Utc::now();
        let uplinks = Uplinks::generate(devices(3), 4, 5, now).unwrap();
        assert_eq!(uplinks.batches_per_device(), 4);
        assert!(uplinks.batch(3, 0).is_none());
        assert!(uplinks.batch(0, 4).is_none());
        for device in 0..3 {
            for index in 0..4 {
                let Ok(Uplink::ReadingBatchV1(batch)) =
                    decode_uplink(uplinks.batch(device, index).unwrap())
                else {
                    panic!("not a batch");
                };
                batch.validate().unwrap();
                assert_eq!(batch.device_id, uplinks.devices()[device].id);
                assert_eq!(batch.first_seq, uplinks.first_seq(index));
                assert_eq!(batch.readings.len(), 5);
                if index == 3 {
                    let last = batch.base_time_ms + i64::from(batch.readings[4].offset_ms);
                    let behind = now.timestamp_millis() - last;
                    assert_eq!(behind, i64::from(READING_SPACING_MS));
                }
            }
        }
    }

    #[test]
    fn copy_text_takes_whole_batches_in_publishing_order() {
        let uplinks = Uplinks::generate(devices(2), 3, 4, Utc::now()).unwrap();
        // 9 rows: rounded up to 3 batches of 4; first batch of both devices, then device 0's second.
        let copy = uplinks.copy_text(9).unwrap();
        assert_eq!(copy.rows, 12);
        let text = String::from_utf8(copy.text).unwrap();
        let keys: Vec<(String, String)> = text
            .lines()
            .map(|l| {
                let mut f = l.split('\t');
                (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
            })
            .collect();
        let [first, second] = [0, 1].map(|i| uplinks.devices()[i].id.to_string());
        let expected: Vec<(String, String)> = [(&first, 0..4), (&second, 0..4), (&first, 4..8)]
            .into_iter()
            .flat_map(|(d, seqs)| seqs.map(move |s| (d.clone(), s.to_string())))
            .collect();
        assert_eq!(keys, expected);
        // Asking for more than there is gives everything.
        assert_eq!(uplinks.copy_text(1_000).unwrap().rows, 24);
    }
}

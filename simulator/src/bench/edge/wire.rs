//! The reference for bytes on the wire: the readings the agent sent, made again from its seeded
//! sensor, in batches of its batch size at its sample period, as JSON (`serde_json` of each
//! `ReadingBatch`, as `edge-agent/tests/wire.rs` compares), and as the agent encodes them
//! (`ReadingBatchV2`), for a check of the measured figure.

use anyhow::Context;
use ecs_edge_agent::sensor::Sensor;
use ecs_protocol::{DeviceId, PackedBatch, Reading, ReadingBatch, Uplink, encode_uplink};
use serde::Serialize;

/// Bytes of the same readings in the two encodings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Encoded {
    pub readings: u64,
    pub json_bytes: u64,
    pub packed_bytes: u64,
}

impl Encoded {
    pub fn json_per_reading(&self) -> Option<f64> {
        (self.readings > 0).then(|| self.json_bytes as f64 / self.readings as f64)
    }

    pub fn packed_per_reading(&self) -> Option<f64> {
        (self.readings > 0).then(|| self.packed_bytes as f64 / self.readings as f64)
    }
}

/// The first `readings` readings of the sensor seeded by `seed`, `period_ms` apart, in batches of
/// `batch_size` for `device` starting at seq `first_seq` and time `base_time_ms`, encoded both
/// ways.
pub fn encode(
    device: &DeviceId,
    seed: u64,
    readings: u64,
    batch_size: usize,
    period_ms: u32,
    first_seq: u64,
    base_time_ms: i64,
) -> anyhow::Result<Encoded> {
    let mut sensor = Sensor::new(seed);
    let mut out = Encoded {
        readings: 0,
        json_bytes: 0,
        packed_bytes: 0,
    };
    let batch_size = batch_size.max(1) as u64;
    while out.readings < readings {
        let count = batch_size.min(readings - out.readings);
        let batch = ReadingBatch {
            device_id: device.clone(),
            first_seq: first_seq + out.readings,
            base_time_ms: base_time_ms + (out.readings * u64::from(period_ms)) as i64,
            readings: (0..count as u32)
                .map(|i| Reading {
                    offset_ms: i * period_ms,
                    ..sensor.sample()
                })
                .collect(),
        };
        out.json_bytes += serde_json::to_vec(&batch)?.len() as u64;
        let packed = PackedBatch::pack(&batch).context("packing the bench's own batch")?;
        out.packed_bytes += encode_uplink(&Uplink::ReadingBatchV2(packed))?.len() as u64;
        out.readings += count;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_costs_far_more_than_the_agents_encoding_and_counts_every_reading() {
        let device = DeviceId::parse("phone0123456789").unwrap();
        let encoded = encode(
            &device,
            1,
            250,
            100,
            10,
            1_764_000_000_000_000,
            1_764_000_000_000,
        )
        .unwrap();
        assert_eq!(encoded.readings, 250, "two full batches and a partial one");
        let json = encoded.json_per_reading().unwrap();
        let packed = encoded.packed_per_reading().unwrap();
        assert!(
            json > 10.0 * packed,
            "JSON {json:.1} B against {packed:.1} B"
        );
        let again = encode(
            &device,
            1,
            250,
            100,
            10,
            1_764_000_000_000_000,
            1_764_000_000_000,
        )
        .unwrap();
        assert_eq!(encoded, again, "the same seed gives the same bytes");
        let none = encode(&device, 1, 0, 100, 10, 1, 0).unwrap();
        assert_eq!(none.json_per_reading(), None);
    }
}

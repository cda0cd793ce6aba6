//! What a reading costs on the wire: the simulated sensor's own stream, at the agent's default
//! rate and batch size, as the agent sends it (`ReadingBatchV2`) against the same readings as
//! V1 (postcard) and as JSON.

use ecs_edge_agent::{AgentConfig, sensor::Archetype, sensor::Sensor};
use ecs_protocol::{DeviceId, PackedBatch, ReadingBatch, Uplink, encode_uplink};

/// Batches of the default size from one sensor at the default rate.
fn stream(sensor: &mut Sensor, batches: usize) -> Vec<ReadingBatch> {
    let period_ms = (1000.0 / AgentConfig::DEFAULT_SAMPLE_RATE_HZ) as u32;
    (0..batches)
        .map(|b| ReadingBatch {
            device_id: DeviceId::parse("phone0123456789").unwrap(),
            first_seq: 1_764_000_000_000_000 + (b * AgentConfig::DEFAULT_BATCH_SIZE) as u64,
            base_time_ms: 1_764_000_000_000 + (b * AgentConfig::DEFAULT_BATCH_SIZE) as i64 * 100,
            readings: (0..AgentConfig::DEFAULT_BATCH_SIZE as u32)
                .map(|i| {
                    let mut r = sensor.sample();
                    r.offset_ms = i * period_ms;
                    r
                })
                .collect(),
        })
        .collect()
}

#[test]
fn a_realistic_stream_costs_at_most_twelve_bytes_a_reading() {
    let mut sensors: Vec<Sensor> = (0..5u64).map(Sensor::new).collect();
    sensors.extend(
        [Archetype::AnxiousWorrier, Archetype::ImpulsiveSpender]
            .into_iter()
            .map(|a| Sensor::for_archetype(9, a)),
    );
    for mut sensor in sensors {
        let batches = stream(&mut sensor, 20);
        let readings: usize = batches.iter().map(|b| b.readings.len()).sum();
        let (mut v2, mut v1, mut json) = (0, 0, 0);
        for batch in &batches {
            let packed = PackedBatch::pack(batch).unwrap();
            assert_eq!(&packed.unpack().unwrap(), batch, "V2 round-trips exactly");
            v2 += encode_uplink(&Uplink::ReadingBatchV2(packed))
                .unwrap()
                .len();
            v1 += encode_uplink(&Uplink::ReadingBatchV1(batch.clone()))
                .unwrap()
                .len();
            json += serde_json::to_vec(batch).unwrap().len();
        }
        let per_reading = v2 as f64 / readings as f64;
        eprintln!(
            "per reading: V2 {per_reading:.2} B, V1 {:.2} B, JSON {:.1} B",
            v1 as f64 / readings as f64,
            json as f64 / readings as f64
        );
        assert!(per_reading <= 12.0, "{per_reading:.2} bytes a reading");
        assert!(
            json as f64 / v2 as f64 >= 15.0,
            "JSON is only {:.1}x V2",
            json as f64 / v2 as f64
        );
        assert!(v2 < v1, "V2 ({v2} B) is not smaller than V1 ({v1} B)");
    }
}

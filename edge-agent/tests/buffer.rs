//! The store-and-forward buffer, through its public interface, on real SQLite files.

use ecs_edge_agent::Error;
use ecs_edge_agent::buffer::{Buffer, FIRST_SEQ};
use ecs_edge_agent::sensor::Sensor;
use ecs_protocol::{DeviceId, Reading};
use tempfile::TempDir;

const T0: i64 = 1_700_000_000_000;

/// `count` readings from a seeded sensor, taken 100 ms apart from `start_ms`.
fn readings(count: usize, start_ms: i64) -> Vec<(i64, Reading)> {
    let mut sensor = Sensor::new(11);
    (0..count)
        .map(|i| (start_ms + 100 * i as i64, sensor.sample()))
        .collect()
}

fn fixture() -> (TempDir, std::path::PathBuf, DeviceId) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.db");
    (dir, path, DeviceId::random())
}

#[test]
fn seq_continues_after_reopening_the_file() {
    let (_dir, path, device) = fixture();
    {
        let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
        let outcome = buffer.append(&readings(5, T0)).unwrap();
        assert_eq!(outcome.seqs, Some((FIRST_SEQ, FIRST_SEQ + 4)));
        // Forgetting everything must not make numbers reusable.
        buffer.delete_range(FIRST_SEQ, FIRST_SEQ + 4).unwrap();
    }
    let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
    assert!(buffer.is_empty());
    assert_eq!(buffer.next_seq(), FIRST_SEQ + 5);
    let outcome = buffer.append(&readings(3, T0 + 10_000)).unwrap();
    assert_eq!(outcome.seqs, Some((FIRST_SEQ + 5, FIRST_SEQ + 7)));
    assert_eq!(buffer.len(), 3);
}

#[test]
fn a_full_buffer_drops_the_oldest_and_counts_them_persistently() {
    let (_dir, path, device) = fixture();
    {
        let mut buffer = Buffer::open(&path, &device, 10).unwrap();
        assert_eq!(buffer.append(&readings(7, T0)).unwrap().dropped, 0);
        let outcome = buffer.append(&readings(7, T0 + 700)).unwrap();
        assert_eq!(outcome.dropped, 4);
        assert_eq!(buffer.len(), 10);
        assert_eq!(buffer.dropped_total(), 4);
        let oldest = buffer.next_batch(None, 100).unwrap().unwrap();
        assert_eq!(oldest.first_seq, FIRST_SEQ + 4, "seqs 1..=4 were dropped");
        assert_eq!(oldest.readings.len(), 10);
    }
    let mut buffer = Buffer::open(&path, &device, 10).unwrap();
    assert_eq!((buffer.len(), buffer.dropped_total()), (10, 4));
    // More than the whole capacity at once: only the newest `capacity` survive.
    assert_eq!(
        buffer.append(&readings(25, T0 + 5_000)).unwrap().dropped,
        25
    );
    assert_eq!(buffer.len(), 10);
    assert_eq!(buffer.dropped_total(), 29);
    let batch = buffer.next_batch(None, 100).unwrap().unwrap();
    assert_eq!(batch.last_seq(), buffer.next_seq() - 1);
}

#[test]
fn batches_are_contiguous_runs_that_stop_at_gaps() {
    let (_dir, path, device) = fixture();
    let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
    let stored = readings(10, T0);
    buffer.append(&stored).unwrap();
    assert_eq!(buffer.delete_range(4, 6).unwrap(), 3);

    let first = buffer.next_batch(None, 100).unwrap().unwrap();
    assert_eq!((first.first_seq, first.last_seq()), (1, 3));
    assert_eq!(first.device_id, device);
    assert_eq!(first.base_time_ms, T0);
    let offsets: Vec<u32> = first.readings.iter().map(|r| r.offset_ms).collect();
    assert_eq!(offsets, [0, 100, 200]);
    assert_eq!(first.validate(), Ok(()));

    let second = buffer
        .next_batch(Some(first.last_seq()), 100)
        .unwrap()
        .unwrap();
    assert_eq!((second.first_seq, second.last_seq()), (7, 10));
    assert_eq!(second.base_time_ms, T0 + 600);
    assert_eq!(second.readings[3].offset_ms, 300);
    // What comes out is what went in, apart from the batch-relative offset.
    assert_eq!(
        Reading {
            offset_ms: 0,
            ..second.readings[3].clone()
        },
        stored[9].1
    );

    let limited = buffer.next_batch(Some(6), 2).unwrap().unwrap();
    assert_eq!((limited.first_seq, limited.last_seq()), (7, 8));
    assert_eq!(buffer.next_batch(Some(10), 100).unwrap(), None);
    let within = buffer.batch_within(8, 9, 100).unwrap().unwrap();
    assert_eq!((within.first_seq, within.last_seq()), (8, 9));
}

#[test]
fn offsets_stay_monotonic_when_the_clock_goes_backwards() {
    let (_dir, path, device) = fixture();
    let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
    let mut sensor = Sensor::new(5);
    let times = [T0, T0 + 100, T0 + 50, T0 - 1_000, T0 + 300];
    let stored: Vec<_> = times.iter().map(|t| (*t, sensor.sample())).collect();
    buffer.append(&stored).unwrap();
    let batch = buffer.next_batch(None, 100).unwrap().unwrap();
    let offsets: Vec<u32> = batch.readings.iter().map(|r| r.offset_ms).collect();
    assert_eq!(offsets, [0, 100, 100, 100, 300]);
    assert_eq!(batch.validate(), Ok(()));
}

#[test]
fn delete_range_forgets_exactly_that_range_once() {
    let (_dir, path, device) = fixture();
    let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
    buffer.append(&readings(20, T0)).unwrap();
    assert_eq!(buffer.delete_range(1, 10).unwrap(), 10);
    assert_eq!(
        buffer.delete_range(1, 10).unwrap(),
        0,
        "a repeated ack is harmless"
    );
    assert_eq!(buffer.delete_range(15, 12).unwrap(), 0, "inverted range");
    assert_eq!(buffer.delete_range(u64::MAX - 1, u64::MAX).unwrap(), 0);
    assert_eq!(buffer.len(), 10);
    let rest = buffer.next_batch(None, 100).unwrap().unwrap();
    assert_eq!((rest.first_seq, rest.last_seq()), (11, 20));
}

#[test]
fn the_file_belongs_to_one_device() {
    let (_dir, path, device) = fixture();
    drop(Buffer::open(&path, &device, 1_000).unwrap());
    let other = DeviceId::random();
    assert!(matches!(
        Buffer::open(&path, &other, 1_000),
        Err(Error::DeviceMismatch { .. })
    ));
}

#[test]
fn out_of_range_readings_are_refused_whole() {
    let (_dir, path, device) = fixture();
    let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
    let mut batch = readings(3, T0);
    batch[1].1.valence = 101;
    assert!(matches!(
        buffer.append(&batch),
        Err(Error::InvalidReading(_))
    ));
    assert!(buffer.is_empty());
    assert_eq!(buffer.next_seq(), FIRST_SEQ);
}

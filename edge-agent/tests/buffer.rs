//! The store-and-forward buffer, through its public interface, on real SQLite files.

use std::time::Duration;

use ecs_edge_agent::Error;
use ecs_edge_agent::buffer::{Buffer, now_unix_micros};
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

/// What the agent guarantees by capping the sample rate: `count` seqs take at least `count` µs
/// to issue. Tests that append in bulk wait that long, so the clock stays ahead of the seqs.
fn as_if_sampled_at_the_highest_rate(count: u64) {
    std::thread::sleep(Duration::from_micros(count + 1));
}

#[test]
fn a_new_buffer_numbers_from_the_clock_in_microseconds() {
    let (_dir, path, device) = fixture();
    let before = now_unix_micros();
    let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
    let after = now_unix_micros();
    let first = buffer.first_seq();
    assert!(
        (before..=after).contains(&first),
        "{before} <= {first} <= {after}"
    );
    assert_eq!(buffer.next_seq(), first);
    let outcome = buffer.append(&readings(5, T0)).unwrap();
    assert_eq!(outcome.seqs, Some((first, first + 4)));
    assert_eq!(buffer.next_seq(), first + 5);
    assert_eq!(buffer.first_seq(), first, "fixed for the incarnation");
}

#[test]
fn a_reopened_buffer_numbers_above_everything_it_issued() {
    let (_dir, path, device) = fixture();
    let (old_first, old_last) = {
        let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
        let (first, last) = buffer.append(&readings(5, T0)).unwrap().seqs.unwrap();
        // Forgetting everything must not make numbers reusable.
        assert_eq!(buffer.delete_range(first, last).unwrap(), 5);
        buffer.append(&readings(3, T0 + 500)).unwrap();
        as_if_sampled_at_the_highest_rate(8);
        (first, last + 3)
    };
    let before = now_unix_micros();
    let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
    assert_eq!(buffer.len(), 3);
    let first = buffer.first_seq();
    assert!(first > old_last, "{first} after {old_last}");
    assert!(first >= before, "a restart jumps to the clock");
    let outcome = buffer.append(&readings(3, T0 + 10_000)).unwrap();
    assert_eq!(outcome.seqs, Some((first, first + 2)));

    // Batches are contiguous runs: the old incarnation's readings, then the new one's.
    let old = buffer.next_batch(None, 100).unwrap().unwrap();
    assert_eq!((old.first_seq, old.last_seq()), (old_first + 5, old_last));
    let new = buffer
        .next_batch(Some(old.last_seq()), 100)
        .unwrap()
        .unwrap();
    assert_eq!((new.first_seq, new.last_seq()), (first, first + 2));
    assert_eq!(new.base_time_ms, T0 + 10_000);
    assert_eq!(buffer.next_batch(Some(new.last_seq()), 100).unwrap(), None);
}

#[test]
fn a_buffer_whose_file_was_deleted_numbers_above_the_old_seqs() {
    let (dir, path, device) = fixture();
    let old_last = {
        let mut buffer = Buffer::open(&path, &device, 10_000).unwrap();
        let (_, last) = buffer.append(&readings(1_000, T0)).unwrap().seqs.unwrap();
        as_if_sampled_at_the_highest_rate(1_000);
        last
    };
    // App data cleared, or the app reinstalled with the same identity: nothing is left.
    for file in ["edge.db", "edge.db-wal", "edge.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(file));
    }
    let mut buffer = Buffer::open(&path, &device, 10_000).unwrap();
    assert!(buffer.is_empty());
    assert_eq!(buffer.dropped_total(), 0);
    assert!(
        buffer.first_seq() > old_last,
        "{} must be above {old_last}: the cloud would absorb the new readings as duplicates",
        buffer.first_seq()
    );
    let (first, _) = buffer.append(&readings(1, T0)).unwrap().seqs.unwrap();
    assert_eq!(first, buffer.first_seq());
}

#[test]
fn a_stored_counter_ahead_of_the_clock_keeps_counting_from_it() {
    let (_dir, path, device) = fixture();
    // An earlier run saw a clock an hour ahead (since set back), or ran at an explicit time.
    let ahead = now_unix_micros() + 3_600_000_000;
    {
        let mut buffer = Buffer::open_at(&path, &device, 1_000, ahead).unwrap();
        assert_eq!(buffer.first_seq(), ahead);
        let outcome = buffer.append(&readings(5, T0)).unwrap();
        assert_eq!(outcome.seqs, Some((ahead, ahead + 4)));
        buffer.delete_range(ahead, ahead + 4).unwrap();
    }
    let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
    assert_eq!(buffer.first_seq(), ahead + 5, "the counter, not the clock");
    let outcome = buffer.append(&readings(2, T0)).unwrap();
    assert_eq!(outcome.seqs, Some((ahead + 5, ahead + 6)));
    drop(buffer);

    // Given explicitly, a clock behind the counter changes nothing; one ahead of it wins.
    let buffer = Buffer::open_at(&path, &device, 1_000, 1).unwrap();
    assert_eq!(buffer.first_seq(), ahead + 7);
    drop(buffer);
    let later = ahead + 60_000_000;
    let buffer = Buffer::open_at(&path, &device, 1_000, later).unwrap();
    assert_eq!(buffer.first_seq(), later);
}

#[test]
fn seqs_stop_below_i64_max() {
    let (_dir, path, device) = fixture();
    let near_the_end = i64::MAX as u64 - 2;
    let mut buffer = Buffer::open_at(&path, &device, 1_000, near_the_end).unwrap();
    assert!(matches!(
        buffer.append(&readings(3, T0)),
        Err(Error::InvalidConfig(_))
    ));
    assert!(buffer.is_empty());
    let outcome = buffer.append(&readings(2, T0)).unwrap();
    assert_eq!(outcome.seqs, Some((near_the_end, near_the_end + 1)));
    let batch = buffer.next_batch(None, 100).unwrap().unwrap();
    assert_eq!(batch.validate(), Ok(()));
    // A clock beyond i64::MAX µs is broken; the file's counter is used instead.
    drop(buffer);
    let buffer = Buffer::open_at(&path, &device, 1_000, u64::MAX).unwrap();
    assert_eq!(buffer.first_seq(), i64::MAX as u64);
}

#[test]
fn a_full_buffer_drops_the_oldest_and_counts_them_persistently() {
    let (_dir, path, device) = fixture();
    {
        let mut buffer = Buffer::open(&path, &device, 10).unwrap();
        let first = buffer.first_seq();
        assert_eq!(buffer.append(&readings(7, T0)).unwrap().dropped, 0);
        let outcome = buffer.append(&readings(7, T0 + 700)).unwrap();
        assert_eq!(outcome.dropped, 4);
        assert_eq!(buffer.len(), 10);
        assert_eq!(buffer.dropped_total(), 4);
        let oldest = buffer.next_batch(None, 100).unwrap().unwrap();
        assert_eq!(oldest.first_seq, first + 4, "the first 4 were dropped");
        assert_eq!(oldest.readings.len(), 10);
        as_if_sampled_at_the_highest_rate(14);
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
    assert_eq!(batch.first_seq, buffer.first_seq() + 15);
    assert_eq!(batch.last_seq(), buffer.next_seq() - 1);
}

#[test]
fn batches_are_contiguous_runs_that_stop_at_gaps() {
    let (_dir, path, device) = fixture();
    let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
    let s = buffer.first_seq();
    let stored = readings(10, T0);
    buffer.append(&stored).unwrap();
    assert_eq!(buffer.delete_range(s + 3, s + 5).unwrap(), 3);

    let first = buffer.next_batch(None, 100).unwrap().unwrap();
    assert_eq!((first.first_seq, first.last_seq()), (s, s + 2));
    assert_eq!(first.device_id, device);
    assert_eq!(first.base_time_ms, T0);
    let offsets: Vec<u32> = first.readings.iter().map(|r| r.offset_ms).collect();
    assert_eq!(offsets, [0, 100, 200]);
    assert_eq!(first.validate(), Ok(()));

    let second = buffer
        .next_batch(Some(first.last_seq()), 100)
        .unwrap()
        .unwrap();
    assert_eq!((second.first_seq, second.last_seq()), (s + 6, s + 9));
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

    let limited = buffer.next_batch(Some(s + 5), 2).unwrap().unwrap();
    assert_eq!((limited.first_seq, limited.last_seq()), (s + 6, s + 7));
    assert_eq!(buffer.next_batch(Some(s + 9), 100).unwrap(), None);
    let within = buffer.batch_within(s + 7, s + 8, 100).unwrap().unwrap();
    assert_eq!((within.first_seq, within.last_seq()), (s + 7, s + 8));
}

#[test]
fn a_batch_ends_where_the_clock_went_backwards_and_every_time_is_exact() {
    let (_dir, path, device) = fixture();
    let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
    let mut sensor = Sensor::new(5);
    let times = [T0, T0 + 100, T0 + 50, T0 - 1_000, T0 + 300];
    let stored: Vec<_> = times.iter().map(|t| (*t, sensor.sample())).collect();
    buffer.append(&stored).unwrap();
    let mut sent = Vec::new();
    let mut after = None;
    while let Some(batch) = buffer.next_batch(after, 100).unwrap() {
        assert_eq!(batch.validate(), Ok(()));
        sent.push(
            batch
                .readings
                .iter()
                .map(|r| batch.base_time_ms + i64::from(r.offset_ms))
                .collect::<Vec<_>>(),
        );
        after = Some(batch.last_seq());
    }
    assert_eq!(
        sent,
        [
            vec![T0, T0 + 100],
            vec![T0 + 50],
            vec![T0 - 1_000, T0 + 300]
        ]
    );
}

#[test]
fn delete_range_forgets_exactly_that_range_once() {
    let (_dir, path, device) = fixture();
    let mut buffer = Buffer::open(&path, &device, 1_000).unwrap();
    let s = buffer.first_seq();
    buffer.append(&readings(20, T0)).unwrap();
    assert_eq!(buffer.delete_range(s, s + 9).unwrap(), 10);
    assert_eq!(
        buffer.delete_range(s, s + 9).unwrap(),
        0,
        "a repeated ack is harmless"
    );
    assert_eq!(
        buffer.delete_range(s + 14, s + 11).unwrap(),
        0,
        "inverted range"
    );
    assert_eq!(buffer.delete_range(u64::MAX - 1, u64::MAX).unwrap(), 0);
    assert_eq!(buffer.len(), 10);
    let rest = buffer.next_batch(None, 100).unwrap().unwrap();
    assert_eq!((rest.first_seq, rest.last_seq()), (s + 10, s + 19));
    // Deletes and appends interleave (each sets its own durability).
    buffer.append(&readings(1, T0 + 2_000)).unwrap();
    assert_eq!(buffer.delete_range(s + 10, s + 20).unwrap(), 11);
    assert!(buffer.is_empty());
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
    assert_eq!(buffer.next_seq(), buffer.first_seq(), "no seq was used");
}

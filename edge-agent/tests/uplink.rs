//! End to end through a real broker: agent ⇄ Mosquitto ⇄ a test cloud.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ecs_edge_agent::Agent;
use ecs_edge_agent::buffer::{Buffer, now_unix_micros};
use ecs_protocol::{
    Ack, CreditType, DeviceId, Downlink, MAX_READINGS_PER_BATCH, Notification, NotificationKind,
    NotificationReceipt, Uplink,
};
use support::{PhoneNetwork, TestCloud, agent_config, eventually, seqs};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// The seqs of every reading in the buffer.
fn buffered_seqs(buffer: &Buffer) -> BTreeSet<u64> {
    let mut all = BTreeSet::new();
    let mut after = None;
    while let Some(batch) = buffer.next_batch(after, MAX_READINGS_PER_BATCH).unwrap() {
        all.extend(batch.first_seq..=batch.last_seq());
        after = Some(batch.last_seq());
    }
    all
}

/// `seqs` is one run without gaps, `first..=last`.
fn run(seqs: &BTreeSet<u64>) -> (u64, u64) {
    let (first, last) = (*seqs.first().unwrap(), *seqs.last().unwrap());
    assert_eq!(
        seqs.len() as u64,
        last - first + 1,
        "a gap in {first}..={last}"
    );
    (first, last)
}

#[tokio::test]
async fn acknowledged_readings_leave_the_buffer_until_it_is_drained() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::random();
    let mut cloud = TestCloud::connect(&device, true).await;
    let started = now_unix_micros();
    let agent = Agent::start(agent_config(&device, &dir.path().join("edge.db")))
        .await
        .unwrap();

    eventually(WAIT, "50 readings acknowledged", || {
        agent.stats().readings_acked >= 50
    })
    .await;
    agent.stop_sensor();
    assert!(agent.wait_drained(WAIT).await, "{:?}", agent.stats());

    let stats = agent.stats();
    assert_eq!(stats.readings_produced, stats.readings_acked);
    assert_eq!(stats.readings_buffered, 0);
    assert_eq!((stats.readings_dropped, stats.decode_errors), (0, 0));
    assert!(stats.connected);
    let batches = cloud.batches_for(Duration::from_millis(300)).await;
    assert!(!batches.is_empty());
    // Everything the cloud received: exactly the produced readings, numbered consecutively
    // from the clock at the start.
    let received = seqs(&batches);
    let (first, last) = run(&received);
    assert!(
        first >= started,
        "{first} numbered from the clock ({started})"
    );
    assert_eq!(last - first + 1, stats.readings_produced);
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn unacknowledged_batches_are_resent_and_kept_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::random();
    let mut cloud = TestCloud::connect(&device, false).await;
    // Deaf: no ack can reach the agent, not even one from another cloud on the shared broker.
    let network = PhoneNetwork::start(true).await;
    let mut config = agent_config(&device, &dir.path().join("edge.db"));
    config.broker = network.url();
    config.ack_timeout = Duration::from_millis(300);
    let agent = Agent::start(config).await.unwrap();

    let first = cloud.next_batch(WAIT).await;
    // Several ack timeouts: on a busy machine the first resend can come late.
    let again = cloud.batches_for(Duration::from_secs(3)).await;
    assert!(
        again
            .iter()
            .any(|b| (b.first_seq, b.last_seq()) == (first.first_seq, first.last_seq())),
        "batch {}..={} was not re-sent",
        first.first_seq,
        first.last_seq()
    );
    agent.stop_sensor();
    eventually(WAIT, "every produced reading stored", || {
        let s = agent.stats();
        s.readings_buffered == s.readings_produced
    })
    .await;
    let stats = agent.stats();
    assert!(stats.batches_resent >= 1, "{stats:?}");
    assert_eq!(stats.readings_acked, 0, "nothing is deleted without an ack");

    // The cloud commits and the agent hears again: the buffer drains.
    cloud.auto_ack.store(true, Ordering::SeqCst);
    network.set_deaf(false);
    network.cut();
    assert!(agent.wait_drained(WAIT).await, "{:?}", agent.stats());
    assert_eq!(agent.stats().readings_acked, stats.readings_produced);
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_forged_ack_deletes_nothing_the_phone_has_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::random();
    let mut cloud = TestCloud::connect(&device, false).await;
    // Deaf: the only downlink the phone hears is the forger's.
    let network = PhoneNetwork::start(true).await;
    let mut config = agent_config(&device, &dir.path().join("edge.db"));
    config.broker = network.url();
    config.inflight_batches = 1;
    config.ack_timeout = Duration::from_secs(600);
    let agent = Agent::start(config).await.unwrap();
    let sent = cloud.next_batch(WAIT).await;
    eventually(
        WAIT,
        "readings waiting behind the one batch in flight",
        || agent.stats().readings_buffered >= 3 * sent.readings.len() as u64,
    )
    .await;
    agent.stop_sensor();
    eventually(WAIT, "every produced reading stored", || {
        let s = agent.stats();
        s.readings_buffered == s.readings_produced
    })
    .await;
    let before = agent.stats();

    // Someone holding the service password acks everything after the batch in flight: readings
    // the phone stored but never sent.
    network.inject(
        &device,
        &Downlink::AckV1(ecs_protocol::Ack {
            first_seq: sent.last_seq() + 1,
            up_to_seq: u64::MAX,
        }),
    );
    eventually(WAIT, "the forged ack counted", || {
        agent.stats().acks_untrusted == 1
    })
    .await;
    let after = agent.stats();
    assert_eq!(after.readings_acked, 0, "{after:?}");
    assert_eq!(after.readings_buffered, before.readings_buffered);

    // An ack that covers the batch in flight and more deletes the batch only.
    network.inject(
        &device,
        &Downlink::AckV1(ecs_protocol::Ack {
            first_seq: 0,
            up_to_seq: u64::MAX,
        }),
    );
    eventually(WAIT, "the batch in flight acknowledged", || {
        agent.stats().readings_acked == sent.readings.len() as u64
    })
    .await;
    let last = agent.stats();
    assert_eq!(last.acks_untrusted, 2);
    assert_eq!(
        last.readings_buffered,
        before.readings_buffered - sent.readings.len() as u64
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_notification_is_stored_once_and_receipted_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::random();
    let mut cloud = TestCloud::connect(&device, true).await;
    let agent = Agent::start(agent_config(&device, &dir.path().join("edge.db")))
        .await
        .unwrap();
    // A batch arriving proves the agent's downlink subscription is in place: it subscribes
    // before it publishes anything on a connection.
    cloud.next_batch(WAIT).await;

    cloud.send_raw(b"not postcard".to_vec()).await;
    let notification = Notification {
        notification_id: Uuid::new_v4(),
        created_at_ms: 1_700_000_000_000,
        kind: NotificationKind::OfferApplied {
            offer_id: Uuid::new_v4(),
            credit_limit_cents: 250_000,
            interest_rate_bps: 2_490,
            credit_type: CreditType::LongTerm,
        },
    };
    let delivery = Downlink::NotificationV1(notification.clone());
    cloud.send(&delivery).await;
    cloud.send(&delivery).await;

    let mut receipts = 0;
    while receipts < 2 {
        match cloud.next_uplink(WAIT).await {
            Some(Uplink::NotificationReceiptV1(NotificationReceipt { notification_ids })) => {
                assert_eq!(notification_ids, [notification.notification_id]);
                receipts += 1;
            }
            Some(
                Uplink::ReadingBatchV1(_) | Uplink::ReadingBatchV2(_) | Uplink::ReadingBatchV3(_),
            ) => {}
            None => panic!("only {receipts} receipts within {WAIT:?}"),
        }
    }
    assert_eq!(agent.notifications().await.unwrap(), [notification]);
    let stats = agent.stats();
    assert_eq!(stats.notifications_received, 1);
    assert_eq!(stats.decode_errors, 1, "the garbage payload is counted");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restarted_agent_numbers_above_the_last_run_and_sends_what_was_left() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db");
    let device = DeviceId::random();
    let mut cloud = TestCloud::connect(&device, false).await;

    // First run: no ack reaches the agent, then it is stopped mid-work.
    let deaf = PhoneNetwork::start(true).await;
    let mut config = agent_config(&device, &db);
    config.broker = deaf.url();
    let first_started = now_unix_micros();
    let first_run = Agent::start(config).await.unwrap();
    cloud.next_batch(WAIT).await;
    eventually(WAIT, "40 readings buffered", || {
        first_run.stats().readings_buffered >= 40
    })
    .await;
    first_run.shutdown().await.unwrap();
    let left = buffered_seqs(&Buffer::open(&db, &device, 1_000_000).unwrap());
    let (old_first, old_last) = run(&left);
    assert!(left.len() >= 40, "nothing was deleted: {}", left.len());
    assert!(old_first >= first_started);

    // Second run on the same file, connected directly, with a cloud that acknowledges.
    cloud.auto_ack.store(true, Ordering::SeqCst);
    let second_started = now_unix_micros();
    let second_run = Agent::start(agent_config(&device, &db)).await.unwrap();
    eventually(WAIT, "the first run's readings acknowledged", || {
        second_run.stats().readings_acked >= left.len() as u64
    })
    .await;
    second_run.stop_sensor();
    assert!(
        second_run.wait_drained(WAIT).await,
        "{:?}",
        second_run.stats()
    );
    let stats = second_run.stats();
    assert_eq!(
        stats.readings_acked,
        left.len() as u64 + stats.readings_produced
    );
    second_run.shutdown().await.unwrap();

    // The second run re-sent the first run's readings, and numbered its own as one run above
    // them, from the clock at its start.
    let received = seqs(&cloud.batches_for(Duration::from_millis(300)).await);
    assert!(
        received.is_superset(&left),
        "the first run's readings were sent"
    );
    let new: BTreeSet<u64> = received.difference(&left).copied().collect();
    let (new_first, new_last) = run(&new);
    assert!(
        new_first > old_last,
        "{new_first} after {old_first}..={old_last}"
    );
    assert!(new_first >= second_started);
    assert_eq!(new.len() as u64, stats.readings_produced);
    let buffer = Buffer::open(&db, &device, 1_000_000).unwrap();
    assert!(buffer.is_empty());
    assert!(buffer.first_seq() > new_last);
}

#[tokio::test]
async fn after_a_reconnect_everything_unacknowledged_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::random();
    let mut cloud = TestCloud::connect(&device, true).await;
    let network = PhoneNetwork::start(true).await;
    let mut config = agent_config(&device, &dir.path().join("edge.db"));
    config.broker = network.url();
    // Far beyond the test's waits: whatever is re-sent is re-sent because of the reconnect.
    config.ack_timeout = Duration::from_secs(120);
    let agent = Agent::start(config).await.unwrap();

    // Batches go out, their acks are lost on the way back, then the connection breaks.
    cloud.next_batch(WAIT).await;
    network.set_deaf(false);
    network.cut();
    // rumqttc forgets unacknowledged QoS 1 messages on a reconnect with a clean session; only
    // the agent's own window brings them back, and only its re-subscription lets acks in.
    eventually(WAIT, "readings acknowledged after the reconnect", || {
        agent.stats().readings_acked > 0
    })
    .await;
    agent.stop_sensor();
    assert!(agent.wait_drained(WAIT).await, "{:?}", agent.stats());
    let stats = agent.stats();
    assert!(stats.batches_resent >= 1, "{stats:?}");
    assert_eq!(stats.readings_acked, stats.readings_produced);
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_broker_never_stops_the_sensor() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::random();
    // A port that was just free: connecting is refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut config = agent_config(&device, &dir.path().join("edge.db"));
    config.broker = format!("mqtt://127.0.0.1:{port}").parse().unwrap();
    config.buffer_capacity = 30;
    let agent = Agent::start(config).await.unwrap();

    eventually(WAIT, "the full buffer dropping its oldest readings", || {
        agent.stats().readings_dropped >= 10
    })
    .await;
    let stats = agent.stats();
    assert!(!stats.connected);
    assert_eq!(stats.readings_buffered, 30);
    assert_eq!(stats.readings_dropped_total, stats.readings_dropped);
    assert_eq!(stats.batches_sent, 0);
    let stopped = tokio::time::timeout(Duration::from_secs(10), agent.shutdown()).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "shutdown while offline: {stopped:?}"
    );
}

#[tokio::test]
async fn a_batch_overtaken_by_a_later_ack_is_sent_again_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::random();
    // A cloud that acks only what it is told to: the first batch is "lost" (never acked).
    let mut cloud = TestCloud::connect(&device, false).await;
    let mut config = agent_config(&device, &dir.path().join("edge.db"));
    // Far longer than the test: any resend of the lost batch is the overtaking rule's.
    config.ack_timeout = Duration::from_secs(60);
    let agent = Agent::start(config).await.unwrap();

    let lost = cloud.next_batch(WAIT).await;
    // Past the grace, a later batch arrives and is acked.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = loop {
        let batch = cloud.next_batch(WAIT).await;
        if batch.first_seq > lost.last_seq() {
            break batch;
        }
    };
    cloud
        .send(&Downlink::AckV1(Ack {
            first_seq: later.first_seq,
            up_to_seq: later.last_seq(),
        }))
        .await;
    let started = tokio::time::Instant::now();
    loop {
        let batch = cloud.next_batch(WAIT).await;
        if batch.first_seq == lost.first_seq {
            assert_eq!(batch.last_seq(), lost.last_seq());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the lost batch was not sent again"
        );
    }
    let stats = agent.stats();
    assert!(stats.batches_overtaken >= 1, "{stats:?}");
    assert!(stats.batches_resent >= stats.batches_overtaken, "{stats:?}");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_backlog_goes_in_the_largest_batches_and_then_back_to_the_usual_size() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db");
    let device = DeviceId::random();
    // A day offline, in small: 5 000 readings waiting, far more than four windows (20 × 8).
    {
        let mut buffer = Buffer::open(&db, &device, 1_000_000).unwrap();
        let mut sensor = ecs_edge_agent::sensor::Sensor::new(3);
        let start = 1_700_000_000_000;
        let readings: Vec<_> = (0..5_000)
            .map(|i| (start + 20 * i as i64, sensor.sample()))
            .collect();
        buffer.append(&readings).unwrap();
    }
    let mut cloud = TestCloud::connect(&device, true).await;
    let agent = Agent::start(agent_config(&device, &db)).await.unwrap();
    eventually(WAIT, "the backlog acknowledged", || {
        agent.stats().readings_acked >= 5_000
    })
    .await;
    agent.stop_sensor();
    assert!(agent.wait_drained(WAIT).await, "{:?}", agent.stats());
    let batches = cloud.batches_for(Duration::from_millis(300)).await;
    let sizes: Vec<usize> = batches.iter().map(|b| b.readings.len()).collect();
    assert_eq!(
        sizes.first(),
        Some(&MAX_READINGS_PER_BATCH),
        "the backlog starts in full batches: {sizes:?}"
    );
    assert!(
        sizes.last().is_some_and(|&n| n <= 20),
        "and ends in the usual ones: {sizes:?}"
    );
    assert_eq!(
        seqs(&batches).len() as u64,
        5_000 + agent.stats().readings_produced
    );
    agent.shutdown().await.unwrap();
}

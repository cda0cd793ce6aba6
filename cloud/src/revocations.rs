//! Revoked devices, told to the broker: it refuses their certificates at the TLS handshake and
//! disconnects them if they are connected.
//!
//! The broker keeps the union of every [`Revocations`] list it receives, in memory only: a
//! restarted broker knows nothing. So the [`RevocationPublisher`] tells it three ways:
//! - **new revocations at once**: every [`TICK`] it asks Postgres for devices revoked since the
//!   newest `revoked_at` it has seen (minus an [`OVERLAP`]) and publishes them;
//! - **the whole list again** every `resend_every` (`ECS_REVOCATION_RESEND_SECS`), and
//! - **the whole list at once after every (re)connect** of the broker link
//!   ([`BrokerLink::connection`]), since the broker on the other end may be a new one.
//!
//! Sending an id twice is harmless (revocation is permanent: `devices.revoked_at` is never
//! cleared), so every rule here errs towards sending again. Nothing is published while the link is
//! down: the full list follows the reconnect anyway, and stale lists queued meanwhile would only
//! delay the acks behind them. Like the notifier, the publisher shares the link's request queue
//! with ingest's acks and never waits for room in it ([`AsyncClient::try_publish`]), at most
//! [`MESSAGES_PER_PASS`] messages per pass; what is not queued now is queued at a later pass.
//! Every replica runs one: the broker receives the list once per replica, which costs little.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use ecs_protocol::{Control, DeviceId, Revocations, encode_control, topic};
use rumqttc::{AsyncClient, QoS};
use sqlx::PgPool;
use tokio::{
    sync::watch,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{error::Result, mqtt::BrokerLink};

/// How often Postgres is asked for new revocations (and a due full list is published).
pub const TICK: Duration = Duration::from_secs(1);
/// How far before the newest `revoked_at` seen the poll for new revocations starts again.
/// `revoked_at` is the revoking transaction's start (`now()`), so a transaction that commits
/// later than a newer one is found as long as it commits within this window; the full list, at
/// most `resend_every` later, covers anything slower.
pub const OVERLAP: Duration = Duration::from_secs(10);
/// Most messages queued per pass (new revocations and the full list together): with 1,000 ids a
/// message, a list of 100,000 devices goes out in one pass and never takes more than a tenth of
/// the link's request queue (1,024 requests) from ingest's acks.
pub const MESSAGES_PER_PASS: usize = 100;

/// Publishes the revoked devices to the broker until shutdown. See the module docs.
pub struct RevocationPublisher {
    pool: PgPool,
    client: AsyncClient,
    connection: watch::Receiver<Option<u64>>,
    resend_every: Duration,
    ids_per_message: usize,
}

/// A revoked device as stored. The id is parsed when it is published, so that one unusable row
/// cannot stop the others.
#[derive(Debug, sqlx::FromRow)]
struct Revoked {
    device_id: String,
    revoked_at: DateTime<Utc>,
}

/// Why a pass stopped before it was done; it carries on at the next pass.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Database(#[from] crate::Error),
    /// The link's request queue is full, or the link is gone.
    #[error("the MQTT request queue is full")]
    QueueFull,
}

impl From<sqlx::Error> for PassError {
    fn from(e: sqlx::Error) -> Self {
        PassError::Database(e.into())
    }
}

/// Where the poll for new revocations stands: the newest `revoked_at` seen, and which devices
/// within [`OVERLAP`] of it were already published, so that the overlap finds late commits without
/// publishing the others again every tick.
#[derive(Debug, Default)]
struct Cursor {
    /// Set once a full list has been read to the end: until then there is no starting point
    /// (and the full list is what matters).
    ready: bool,
    newest: Option<DateTime<Utc>>,
    recent: HashMap<String, DateTime<Utc>>,
}

impl Cursor {
    fn overlap() -> TimeDelta {
        TimeDelta::from_std(OVERLAP).unwrap_or(TimeDelta::MAX)
    }

    /// Where the next poll starts: `None` for "every revoked device" (none had been revoked at
    /// the last full list, so those are all new).
    fn since(&self) -> Option<DateTime<Utc>> {
        self.newest
            .map(|newest| newest.checked_sub_signed(Self::overlap()).unwrap_or(newest))
    }

    fn is_new(&self, device_id: &str) -> bool {
        !self.recent.contains_key(device_id)
    }

    /// A device published (or skipped for good: an unusable id is not worth a log line a tick).
    fn record(&mut self, device_id: &str, revoked_at: DateTime<Utc>) {
        if self.newest.is_none_or(|newest| revoked_at > newest) {
            self.newest = Some(revoked_at);
        }
        if self.since().is_none_or(|since| revoked_at >= since) {
            self.recent.insert(device_id.to_owned(), revoked_at);
        }
    }

    /// Forgets the devices that the next poll no longer finds.
    fn prune(&mut self) {
        if let Some(since) = self.since() {
            self.recent.retain(|_, revoked_at| *revoked_at >= since);
        }
    }
}

/// A full list being published: it goes out page by page, in device id order, possibly over
/// several passes.
#[derive(Debug)]
struct FullList {
    /// The last device id queued (pages are read after it); empty at the start.
    after: String,
    devices: u64,
    messages: u64,
    reason: Reason,
}

/// Why a full list is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// The link's first connection.
    Start,
    /// A new connection: the broker may be a restarted one.
    Reconnect,
    /// `resend_every` has passed.
    Resend,
}

impl FullList {
    fn new(reason: Reason) -> Self {
        Self {
            after: String::new(),
            devices: 0,
            messages: 0,
            reason,
        }
    }
}

/// What the publisher remembers between passes.
#[derive(Debug)]
struct Progress {
    cursor: Cursor,
    /// The full list in progress, if one is.
    full: Option<FullList>,
    /// The connection the latest full list was (or is being) sent on.
    listed_on: Option<u64>,
    /// When the next periodic full list is due.
    next_full_at: Instant,
}

impl RevocationPublisher {
    /// A publisher through `link`'s connection, sending the whole list every `resend_every`.
    pub fn new(pool: PgPool, link: &BrokerLink, resend_every: Duration) -> Self {
        Self {
            pool,
            client: link.client(),
            connection: link.connection(),
            resend_every,
            ids_per_message: Revocations::MAX_PER_MESSAGE,
        }
    }

    /// Puts at most `n` ids in a message (1 to [`Revocations::MAX_PER_MESSAGE`]) instead of the
    /// protocol's maximum.
    pub fn with_ids_per_message(mut self, n: usize) -> Self {
        self.ids_per_message = n.clamp(1, Revocations::MAX_PER_MESSAGE);
        self
    }

    /// Runs a pass at every [`TICK`] and at once when the link (re)connects, until `shutdown`
    /// (which also ends a pass waiting for Postgres). A failing pass (Postgres down, the request
    /// queue full) is logged and carries on at the next one.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut progress = Progress {
            cursor: Cursor::default(),
            full: None,
            listed_on: None,
            next_full_at: Instant::now(),
        };
        let mut link_gone = false;
        info!(
            resend_every_s = self.resend_every.as_secs(),
            ids_per_message = self.ids_per_message,
            "revocation publisher started"
        );
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = self.connection.changed(), if !link_gone => {
                    if changed.is_err() {
                        // The driver only ends at shutdown; until then, nothing can go out.
                        link_gone = true;
                        warn!("the broker link has ended; no revocation is published");
                    }
                }
                _ = tick.tick() => {}
            }
            let connection = if link_gone {
                None
            } else {
                *self.connection.borrow_and_update()
            };
            let Some(connection) = connection else {
                continue;
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                () = self.pass(&mut progress, connection) => {}
            }
        }
        info!("revocation publisher stopped");
    }

    /// New revocations first (they matter most), then the full list when one is due or under way.
    async fn pass(&self, progress: &mut Progress, connection: u64) {
        if progress.listed_on != Some(connection) {
            // The broker on the other end may have just started: it gets the list again, from the
            // beginning, whatever a previous connection got.
            let reason = if progress.listed_on.is_none() {
                Reason::Start
            } else {
                Reason::Reconnect
            };
            progress.full = Some(FullList::new(reason));
            progress.listed_on = Some(connection);
        } else if progress.full.is_none() && Instant::now() >= progress.next_full_at {
            progress.full = Some(FullList::new(Reason::Resend));
        }
        let mut budget = MESSAGES_PER_PASS;
        if progress.cursor.ready {
            let (published, done) = self.publish_new(&mut progress.cursor, &mut budget).await;
            if published > 0 {
                info!(devices = published, "new revocations published");
            }
            if let Err(e) = done {
                // The full list would fail the same way.
                warn!(error = %e, published, "publishing new revocations failed; retrying at the next tick");
                return;
            }
        }
        let Some(full) = progress.full.as_mut() else {
            return;
        };
        match self
            .publish_full(full, &mut progress.cursor, &mut budget)
            .await
        {
            Ok(false) => {
                debug!(
                    devices = full.devices,
                    messages = full.messages,
                    "revocation list in progress; it continues at the next tick"
                );
            }
            Ok(true) => {
                metrics::gauge!("ecs_revoked_devices").set(full.devices as f64);
                // The periodic list is routine; one after a (re)connect is worth a line.
                if full.reason == Reason::Resend {
                    debug!(devices = full.devices, messages = full.messages, reason = ?full.reason,
                        "revocation list published");
                } else {
                    info!(devices = full.devices, messages = full.messages, reason = ?full.reason,
                        "revocation list published");
                }
                progress.cursor.ready = true;
                progress.full = None;
                progress.next_full_at = Instant::now() + self.resend_every;
            }
            Err(e) => warn!(error = %e, devices = full.devices, messages = full.messages,
                reason = ?full.reason,
                "publishing the revocation list failed; it continues at the next tick"),
        }
    }

    /// Publishes the devices revoked since the cursor that it has not published yet, within the
    /// budget. Returns how many it published (those beyond the budget wait for the next pass) and
    /// whether it stopped on an error.
    async fn publish_new(
        &self,
        cursor: &mut Cursor,
        budget: &mut usize,
    ) -> (u64, Result<(), PassError>) {
        let rows: Result<Vec<Revoked>, _> = sqlx::query_as(
            "SELECT device_id, revoked_at FROM devices
             WHERE revoked_at IS NOT NULL AND ($1::timestamptz IS NULL OR revoked_at >= $1)
             ORDER BY device_id",
        )
        .bind(cursor.since())
        .fetch_all(&self.pool)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return (0, Err(e.into())),
        };
        let fresh: Vec<&Revoked> = rows
            .iter()
            .filter(|row| cursor.is_new(&row.device_id))
            .collect();
        let mut published = 0;
        let mut outcome = Ok(());
        for page in fresh.chunks(self.ids_per_message) {
            if *budget == 0 {
                break;
            }
            match self.publish_page(page) {
                Ok(queued) => published += queued,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
            *budget -= 1;
            for row in page {
                cursor.record(&row.device_id, row.revoked_at);
            }
        }
        cursor.prune();
        if published > 0 {
            metrics::counter!("ecs_revocations_published_total", "list" => "new")
                .increment(published);
            metrics::gauge!("ecs_revoked_devices").increment(published as f64);
        }
        (published, outcome)
    }

    /// Publishes the next pages of the full list within the budget. `Ok(true)` once the list has
    /// been read to the end.
    async fn publish_full(
        &self,
        full: &mut FullList,
        cursor: &mut Cursor,
        budget: &mut usize,
    ) -> Result<bool, PassError> {
        let page_size = i64::try_from(self.ids_per_message).unwrap_or(i64::MAX);
        let mut done = false;
        while *budget > 0 && !done {
            // Keyset pages on the primary key: each one a short query, and the whole list in
            // device id order.
            let page: Vec<Revoked> = sqlx::query_as(
                "SELECT device_id, revoked_at FROM devices
                 WHERE revoked_at IS NOT NULL AND device_id > $1
                 ORDER BY device_id
                 LIMIT $2",
            )
            .bind(&full.after)
            .bind(page_size)
            .fetch_all(&self.pool)
            .await?;
            done = page.len() < self.ids_per_message;
            let Some(last) = page.last() else {
                break;
            };
            let rows: Vec<&Revoked> = page.iter().collect();
            let queued = self.publish_page(&rows)?;
            *budget -= 1;
            full.after.clone_from(&last.device_id);
            full.devices += queued;
            if queued > 0 {
                full.messages += 1;
                metrics::counter!("ecs_revocations_published_total", "list" => "full")
                    .increment(queued);
            }
            for row in &page {
                cursor.record(&row.device_id, row.revoked_at);
            }
        }
        cursor.prune();
        Ok(done)
    }

    /// Queues one message with the page's devices, without waiting for room, and returns how many
    /// it holds. An id that is not a valid device id (the schema's CHECK makes it impossible) is
    /// logged and left out.
    fn publish_page(&self, page: &[&Revoked]) -> Result<u64, PassError> {
        let device_ids: Vec<DeviceId> = page
            .iter()
            .filter_map(|row| match DeviceId::parse(row.device_id.as_str()) {
                Ok(device) => Some(device),
                Err(e) => {
                    error!(device_id = %row.device_id, error = %e,
                        "a revoked device has an invalid id; it is not published");
                    None
                }
            })
            .collect();
        if device_ids.is_empty() {
            return Ok(0);
        }
        let queued = device_ids.len() as u64;
        let message = Control::RevocationsV1(Revocations { device_ids });
        let payload = match encode_control(&message) {
            Ok(payload) => payload,
            Err(e) => {
                error!(error = %e, devices = queued, "cannot encode a revocation list");
                return Ok(0);
            }
        };
        self.client
            .try_publish(topic::revocations(), QoS::AtLeastOnce, false, payload)
            .map_err(|e| {
                debug!(error = %e, "revocations not queued");
                PassError::QueueFull
            })?;
        Ok(queued)
    }
}

#[cfg(test)]
mod tests {
    use ecs_protocol::decode_control;
    use rumqttc::{Event, MqttOptions, Packet};
    use tokio::task::JoinHandle;
    use uuid::Uuid;

    use super::*;
    use crate::{
        ingest::fixtures::user_with_device,
        mqtt::testing::{TEST_BROKER, TestClient, WAIT, settings},
    };

    /// A broker link on the test broker (in a shared-subscription group of its own, so it takes
    /// no other test's uplinks), with its driver running.
    struct Link {
        link: BrokerLink,
        client_id: String,
        shutdown: CancellationToken,
        driver: JoinHandle<()>,
        _drain: JoinHandle<()>,
    }

    impl Link {
        async fn connect() -> Link {
            let settings = settings(&format!("test{}", Uuid::new_v4().simple()));
            let (tx, mut uplinks) = crate::ingest::queue::channel();
            let shutdown = CancellationToken::new();
            let (link, driver) = BrokerLink::new(&settings, tx, shutdown.clone()).unwrap();
            let driver = tokio::spawn(driver.run());
            // Other tests publish uplinks on the shared test broker, and this link's group
            // receives them all: drain them, or the full queue would stop the link reading
            // (and then sending) anything.
            let drain = tokio::spawn(async move { while uplinks.next().await.is_some() {} });
            link.wait_ready(WAIT).await.unwrap();
            Link {
                link,
                client_id: settings.client_id,
                shutdown,
                driver,
                _drain: drain,
            }
        }
    }

    impl Drop for Link {
        fn drop(&mut self) {
            self.shutdown.cancel();
            self.driver.abort();
        }
    }

    /// `n` revoked devices of one person, named `<prefix>0001`, `<prefix>0002`… (lowercase hex
    /// and digits of one length: device id order is the same in Postgres and in Rust). The person
    /// also has a device that is not revoked.
    async fn revoked_devices(pool: &PgPool, prefix: &str, n: i32) -> Vec<DeviceId> {
        let (user_id, _live) = user_with_device(pool).await;
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO devices (device_id, user_id, revoked_at)
             SELECT $2 || lpad(i::text, 4, '0'), $1, now() FROM generate_series(1, $3) AS i
             RETURNING device_id",
        )
        .bind(user_id)
        .bind(prefix)
        .bind(n)
        .fetch_all(pool)
        .await
        .unwrap();
        let mut ids: Vec<DeviceId> = ids
            .into_iter()
            .map(|id| DeviceId::parse(id).unwrap())
            .collect();
        ids.sort();
        ids
    }

    /// As the API revokes a device.
    async fn revoke(pool: &PgPool, device: &DeviceId) {
        sqlx::query(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, now()) WHERE device_id = $1",
        )
        .bind(device.as_str())
        .execute(pool)
        .await
        .unwrap();
    }

    fn prefix() -> String {
        format!("r{}", &Uuid::new_v4().simple().to_string()[..8])
    }

    /// The next revocation list on the test broker that `ours` says is this test's (other tests
    /// publish theirs on the same topic).
    async fn next_list(
        broker: &mut TestClient,
        ours: impl Fn(&[DeviceId]) -> bool,
    ) -> Vec<DeviceId> {
        tokio::time::timeout(WAIT, async {
            loop {
                let message = broker.received.recv().await.expect("test client stopped");
                assert_eq!(message.topic, topic::revocations());
                let Control::RevocationsV1(list) = decode_control(&message.payload).unwrap();
                if ours(&list.device_ids) {
                    return list.device_ids;
                }
            }
        })
        .await
        .expect("no revocation list arrived")
    }

    fn start(publisher: RevocationPublisher) -> (CancellationToken, JoinHandle<()>) {
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(publisher.run(shutdown.clone()));
        (shutdown, running)
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_device_revoked_while_running_reaches_the_broker_within_seconds(pool: PgPool) {
        let mut broker = TestClient::connect(Some(&topic::revocations())).await;
        let (user_id, earlier) = user_with_device(&pool).await;
        revoke(&pool, &earlier).await;
        let phone = crate::ingest::fixtures::add_device(&pool, user_id).await;
        let link = Link::connect().await;
        // No periodic list within the test: only the poll for new revocations can tell it.
        let publisher =
            RevocationPublisher::new(pool.clone(), &link.link, Duration::from_secs(3600));
        let (shutdown, running) = start(publisher);
        let first = next_list(&mut broker, |ids| ids.contains(&earlier)).await;
        assert_eq!(first, vec![earlier.clone()]);

        revoke(&pool, &phone).await;
        let news = next_list(&mut broker, |ids| ids.contains(&phone)).await;
        assert_eq!(news, vec![phone.clone()], "only the new revocation");

        shutdown.cancel();
        tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn the_whole_list_is_published_again_in_chunks_in_device_id_order(pool: PgPool) {
        let mut broker = TestClient::connect(Some(&topic::revocations())).await;
        let prefix = prefix();
        let revoked = revoked_devices(&pool, &prefix, 25).await;
        let link = Link::connect().await;
        let publisher = RevocationPublisher::new(pool.clone(), &link.link, Duration::from_secs(1))
            .with_ids_per_message(10);
        let (shutdown, running) = start(publisher);

        let ours = |ids: &[DeviceId]| ids.iter().all(|id| id.as_str().starts_with(&prefix));
        let chunks: Vec<Vec<DeviceId>> = revoked.chunks(10).map(<[DeviceId]>::to_vec).collect();
        // At start, then again a resend period later (the link did not reconnect in between).
        for _ in 0..2 {
            for chunk in &chunks {
                assert_eq!(&next_list(&mut broker, ours).await, chunk);
            }
        }

        shutdown.cancel();
        tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_reconnected_link_gets_the_whole_list_at_once(pool: PgPool) {
        let mut broker = TestClient::connect(Some(&topic::revocations())).await;
        let prefix = prefix();
        let revoked = revoked_devices(&pool, &prefix, 3).await;
        let link = Link::connect().await;
        let publisher =
            RevocationPublisher::new(pool.clone(), &link.link, Duration::from_secs(3600));
        let (shutdown, running) = start(publisher);
        let ours = |ids: &[DeviceId]| ids.iter().all(|id| id.as_str().starts_with(&prefix));
        assert_eq!(next_list(&mut broker, ours).await, revoked);

        // Another client with the link's id takes its session over: the broker drops the link,
        // which connects again (a restarted broker looks the same from here).
        let mut connection = link.link.connection();
        assert_eq!(*connection.borrow_and_update(), Some(1));
        let options = MqttOptions::new(link.client_id.clone(), TEST_BROKER.0, TEST_BROKER.1);
        let (_intruder, mut eventloop) = AsyncClient::new(options, 8);
        tokio::time::timeout(WAIT, async {
            while !matches!(
                eventloop.poll().await,
                Ok(Event::Incoming(Packet::ConnAck(_)))
            ) {}
        })
        .await
        .expect("the intruder could not connect");
        drop(eventloop);
        tokio::time::timeout(WAIT, connection.wait_for(|c| *c == Some(2)))
            .await
            .expect("the link did not reconnect")
            .unwrap();

        // Long before the next periodic resend.
        assert_eq!(next_list(&mut broker, ours).await, revoked);
        shutdown.cancel();
        tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_publisher_waiting_for_postgres_stops_at_shutdown(pool: PgPool) {
        revoked_devices(&pool, &prefix(), 3).await;
        let link = Link::connect().await;
        // Every read of `devices` waits until this transaction ends.
        let mut lock = pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *lock)
            .await
            .unwrap();
        let publisher =
            RevocationPublisher::new(pool.clone(), &link.link, Duration::from_secs(3600));
        let (shutdown, running) = start(publisher);
        tokio::time::timeout(WAIT, async {
            loop {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                if waiting > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the publisher never waited for the lock");

        // The lock is still held: only the shutdown can end the pass.
        shutdown.cancel();
        tokio::time::timeout(WAIT, running)
            .await
            .expect("the publisher did not stop")
            .unwrap();
        lock.rollback().await.unwrap();
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn the_cursor_looks_back_an_overlap_and_remembers_what_it_published_there() {
        let mut cursor = Cursor::default();
        assert_eq!(
            cursor.since(),
            None,
            "nothing seen: every revoked device is new"
        );
        cursor.record("a", at(100));
        assert_eq!(cursor.since(), Some(at(90)));
        assert!(!cursor.is_new("a"));

        // A revocation that committed late, with an older `revoked_at`, is still found and new.
        assert!(cursor.is_new("b"));
        cursor.record("b", at(95));
        assert_eq!(
            cursor.since(),
            Some(at(90)),
            "an older one does not move the cursor"
        );

        // Once the cursor moves on, what falls out of the window is forgotten.
        cursor.record("c", at(104));
        cursor.prune();
        assert!(!cursor.is_new("b"));
        cursor.record("d", at(120));
        cursor.prune();
        assert_eq!(cursor.since(), Some(at(110)));
        let mut remembered: Vec<&str> = cursor.recent.keys().map(String::as_str).collect();
        remembered.sort_unstable();
        assert_eq!(remembered, vec!["d"]);
    }
}

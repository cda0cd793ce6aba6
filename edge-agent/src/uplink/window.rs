//! The batches sent and not yet acknowledged by the cloud.
//!
//! Invariant the uplink relies on: every reading still in the buffer with a seq at or below
//! [`Window::sent_up_to`] lies in exactly one in-flight range. So the next new batch starts after
//! `sent_up_to`, and a resend re-reads exactly one range. Acks may cover any range (batches can
//! be acknowledged out of order, and a previous run of the agent may have cut batches
//! differently), so an ack trims, splits or removes ranges rather than matching them exactly.

use std::time::Duration;

use tokio::time::Instant;

/// One batch on its way: readings `first_seq..=last_seq`, last (re)sent at `sent_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InFlight {
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) sent_at: Instant,
}

#[derive(Debug)]
pub(crate) struct Window {
    capacity: usize,
    /// Sorted by `first_seq`, ranges disjoint.
    batches: Vec<InFlight>,
}

impl Window {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            batches: Vec::with_capacity(capacity),
        }
    }

    /// Whether another batch may be sent. An ack that splits a range can leave the window one
    /// over capacity for a moment; no new batch goes out until it is back below.
    pub(crate) fn has_room(&self) -> bool {
        self.batches.len() < self.capacity
    }

    pub(crate) fn len(&self) -> usize {
        self.batches.len()
    }

    /// The highest seq sent and not acknowledged, `None` when nothing is in flight (then
    /// everything in the buffer is unsent).
    pub(crate) fn sent_up_to(&self) -> Option<u64> {
        self.batches.last().map(|b| b.last_seq)
    }

    /// Records a newly sent batch; it must lie above everything in flight.
    pub(crate) fn push(&mut self, first_seq: u64, last_seq: u64, now: Instant) {
        debug_assert!(self.sent_up_to().is_none_or(|up_to| first_seq > up_to));
        self.batches.push(InFlight {
            first_seq,
            last_seq,
            sent_at: now,
        });
    }

    /// The parts of `first_seq..=up_to_seq` that are in flight (sent and not yet acknowledged),
    /// in order. An ack is trusted for these only: the rest names readings this run never sent
    /// (or already had acknowledged), and deleting them on its word would lose unsent data.
    pub(crate) fn in_flight_within(&self, first_seq: u64, up_to_seq: u64) -> Vec<(u64, u64)> {
        self.batches
            .iter()
            .filter(|b| b.last_seq >= first_seq && b.first_seq <= up_to_seq)
            .map(|b| (b.first_seq.max(first_seq), b.last_seq.min(up_to_seq)))
            .collect()
    }

    /// The cloud committed `first_seq..=up_to_seq`: take that range out of every batch.
    pub(crate) fn acknowledge(&mut self, first_seq: u64, up_to_seq: u64) {
        if first_seq > up_to_seq {
            return;
        }
        let mut kept = Vec::with_capacity(self.batches.len() + 1);
        for b in self.batches.drain(..) {
            if b.last_seq < first_seq || b.first_seq > up_to_seq {
                kept.push(b);
                continue;
            }
            if b.first_seq < first_seq {
                kept.push(InFlight {
                    last_seq: first_seq - 1,
                    ..b
                });
            }
            if b.last_seq > up_to_seq {
                kept.push(InFlight {
                    first_seq: up_to_seq + 1,
                    ..b
                });
            }
        }
        self.batches = kept;
    }

    /// When the newest of the batches overlapping `first_seq..=up_to_seq` was (re)sent.
    pub(crate) fn latest_send_within(&self, first_seq: u64, up_to_seq: u64) -> Option<Instant> {
        self.batches
            .iter()
            .filter(|b| b.last_seq >= first_seq && b.first_seq <= up_to_seq)
            .map(|b| b.sent_at)
            .max()
    }

    /// Batches overtaken by an ack: (re)sent before `acked_sent_at` (the send an ack just
    /// answered) and at least `grace` ago. The cloud handles a device's batches in the order
    /// they arrive, so an ack for a later send means these never arrived (dropped while no
    /// cloud was subscribed, say); `grace` spares a batch a second replica is still storing.
    pub(crate) fn overtaken(
        &self,
        acked_sent_at: Instant,
        now: Instant,
        grace: Duration,
    ) -> Vec<InFlight> {
        self.batches
            .iter()
            .filter(|b| b.sent_at < acked_sent_at && b.sent_at + grace <= now)
            .copied()
            .collect()
    }

    /// The batch (re)sent longest ago.
    pub(crate) fn longest_waiting(&self) -> Option<InFlight> {
        self.batches.iter().min_by_key(|b| b.sent_at).copied()
    }

    /// When the oldest unacknowledged send times out.
    pub(crate) fn next_deadline(&self, ack_timeout: Duration) -> Option<Instant> {
        self.batches.iter().map(|b| b.sent_at + ack_timeout).min()
    }

    /// Ranges whose ack is overdue at `now`.
    pub(crate) fn expired(&self, now: Instant, ack_timeout: Duration) -> Vec<InFlight> {
        self.batches
            .iter()
            .filter(|b| b.sent_at + ack_timeout <= now)
            .copied()
            .collect()
    }

    /// Every range in flight (after a reconnect, all of them are sent again).
    pub(crate) fn all(&self) -> Vec<InFlight> {
        self.batches.clone()
    }

    /// The batch that was `first_seq..` has been sent again as `resent` (possibly shorter: the
    /// capacity policy may have dropped its oldest readings), or is gone entirely (`None`).
    pub(crate) fn resent(&mut self, first_seq: u64, resent: Option<(u64, u64)>, now: Instant) {
        let Some(index) = self.batches.iter().position(|b| b.first_seq == first_seq) else {
            return;
        };
        match resent {
            Some((first_seq, last_seq)) => {
                self.batches[index] = InFlight {
                    first_seq,
                    last_seq,
                    sent_at: now,
                }
            }
            None => {
                self.batches.remove(index);
            }
        }
    }

    /// Forgets everything in flight: the next batch starts from the oldest buffered reading.
    /// Used when the window and the buffer disagree; re-sending is always safe.
    pub(crate) fn clear(&mut self) {
        self.batches.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(w: &Window) -> Vec<(u64, u64)> {
        w.all().iter().map(|b| (b.first_seq, b.last_seq)).collect()
    }

    #[test]
    fn acks_remove_trim_and_split_ranges() {
        let now = Instant::now();
        let mut w = Window::new(4);
        w.push(1, 100, now);
        w.push(101, 200, now);
        w.push(201, 300, now);
        assert_eq!(w.sent_up_to(), Some(300));

        w.acknowledge(101, 200);
        assert_eq!(ranges(&w), [(1, 100), (201, 300)]);
        w.acknowledge(50, 250);
        assert_eq!(ranges(&w), [(1, 49), (251, 300)]);
        w.acknowledge(10, 19);
        assert_eq!(ranges(&w), [(1, 9), (20, 49), (251, 300)]);
        w.acknowledge(5, 4);
        assert_eq!(w.len(), 3, "an inverted range acknowledges nothing");
        w.acknowledge(0, u64::MAX);
        assert_eq!(w.sent_up_to(), None);
    }

    #[test]
    fn only_what_is_in_flight_is_trusted_of_an_ack() {
        let now = Instant::now();
        let mut w = Window::new(8);
        w.push(10, 19, now);
        w.push(20, 29, now);
        w.push(40, 49, now);
        assert_eq!(w.in_flight_within(0, 9), vec![]);
        assert_eq!(
            w.in_flight_within(15, 45),
            vec![(15, 19), (20, 29), (40, 45)]
        );
        assert_eq!(w.in_flight_within(30, 39), vec![]);
        assert_eq!(w.in_flight_within(49, u64::MAX), vec![(49, 49)]);
    }

    #[test]
    fn capacity_and_deadlines() {
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut w = Window::new(2);
        w.push(1, 10, start);
        assert!(w.has_room());
        w.push(11, 20, start + Duration::from_secs(1));
        assert!(!w.has_room());
        assert_eq!(w.next_deadline(timeout), Some(start + timeout));
        assert!(
            w.expired(start + Duration::from_secs(9), timeout)
                .is_empty()
        );
        let overdue = w.expired(start + timeout, timeout);
        assert_eq!(overdue.len(), 1);
        assert_eq!(overdue[0].first_seq, 1);

        let later = start + Duration::from_secs(12);
        w.resent(1, Some((3, 10)), later);
        assert_eq!(ranges(&w), [(3, 10), (11, 20)]);
        assert_eq!(
            w.next_deadline(timeout),
            Some(start + Duration::from_secs(1) + timeout)
        );
        w.resent(3, None, later);
        assert_eq!(ranges(&w), [(11, 20)]);
    }
}

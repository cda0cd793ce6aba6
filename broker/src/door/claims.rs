//! One session per router client id at a time.
//!
//! MQTT says a new connection with a client id in use takes over: the old one is closed. rumqttd's
//! router does that by itself, dropping the old link under a pump that is still running, which can
//! later send the router an event for a connection it no longer has (and the router panics).
//! So the door does the takeover itself: the new session claims the id, the old one is told to
//! end, and the new one is registered with the router only once the old one has told the router
//! it is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Entry {
    id: u64,
    stop: CancellationToken,
    ended: watch::Receiver<bool>,
}

#[derive(Debug, Default)]
struct State {
    claims: HashMap<String, Entry>,
    next_id: u64,
}

/// The live sessions by router client id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Claims(Arc<Mutex<State>>);

/// A session's hold on its client id; dropping it says the session has ended.
#[derive(Debug)]
pub(crate) struct Claim {
    claims: Claims,
    key: String,
    id: u64,
    stop: CancellationToken,
    ended: watch::Sender<bool>,
    previous: Option<Previous>,
}

/// The session that held the id before.
#[derive(Debug)]
pub(crate) struct Previous {
    stop: CancellationToken,
    ended: watch::Receiver<bool>,
}

impl Previous {
    /// Tells it to end and waits (at most `wait`) until it has; false when it did not in time.
    pub(crate) async fn end(mut self, wait: Duration) -> bool {
        self.stop.cancel();
        // An error means its claim is gone, which is ending too.
        tokio::time::timeout(wait, self.ended.wait_for(|ended| *ended))
            .await
            .is_ok()
    }
}

impl Claims {
    /// Claims `key` for a new session; the claim names the previous holder, if any.
    pub(crate) fn claim(&self, key: &str) -> Claim {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.next_id += 1;
        let id = state.next_id;
        let stop = CancellationToken::new();
        let (ended_tx, ended_rx) = watch::channel(false);
        let entry = Entry {
            id,
            stop: stop.clone(),
            ended: ended_rx,
        };
        let previous = state
            .claims
            .insert(key.to_owned(), entry)
            .map(|old| Previous {
                stop: old.stop,
                ended: old.ended,
            });
        drop(state);
        Claim {
            claims: self.clone(),
            key: key.to_owned(),
            id,
            stop,
            ended: ended_tx,
            previous,
        }
    }
}

impl Claim {
    /// The session that held the id before this one, to end first.
    pub(crate) fn previous(&mut self) -> Option<Previous> {
        self.previous.take()
    }

    /// Cancelled when a newer session claims the id.
    pub(crate) fn stop(&self) -> &CancellationToken {
        &self.stop
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut state = self.claims.0.lock().unwrap_or_else(|p| p.into_inner());
        if state.claims.get(&self.key).is_some_and(|e| e.id == self.id) {
            state.claims.remove(&self.key);
        }
        drop(state);
        self.ended.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_claim_ends_the_old_session_first() {
        let claims = Claims::default();
        let old = claims.claim("phone1.phone1");
        let mut new = claims.claim("phone1.phone1");
        let previous = new.previous().expect("the old session is named");
        let old_stop = old.stop().clone();
        let ending = tokio::spawn(async move {
            old_stop.cancelled().await;
            drop(old);
        });
        assert!(previous.end(Duration::from_secs(5)).await);
        ending.await.unwrap();
        // The old claim's drop did not remove the new one.
        let mut third = claims.claim("phone1.phone1");
        assert!(third.previous().is_some());
    }

    #[tokio::test]
    async fn a_session_that_does_not_end_is_waited_for_a_bounded_time() {
        let claims = Claims::default();
        let _stubborn = claims.claim("x");
        let mut new = claims.claim("x");
        assert!(!new.previous().unwrap().end(Duration::from_millis(20)).await);
    }
}

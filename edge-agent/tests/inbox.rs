//! The notification inbox: at-least-once delivery in, exactly-once storage.

use ecs_edge_agent::inbox::Inbox;
use ecs_protocol::{CreditType, Notification, NotificationKind};
use uuid::Uuid;

fn offer(created_at_ms: i64) -> Notification {
    Notification {
        notification_id: Uuid::new_v4(),
        created_at_ms,
        kind: NotificationKind::OfferMade {
            offer_id: Uuid::new_v4(),
            credit_limit_cents: 150_000,
            interest_rate_bps: 1_990,
            credit_type: CreditType::ShortTerm,
            expires_at_ms: created_at_ms + 86_400_000,
        },
    }
}

#[test]
fn a_notification_delivered_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.db");
    let first = offer(1_700_000_000_000);
    let second = offer(1_700_000_001_000);
    {
        let mut inbox = Inbox::open(&path).unwrap();
        assert!(inbox.insert(&first).unwrap());
        assert!(!inbox.insert(&first).unwrap(), "duplicate");
        assert!(inbox.insert(&second).unwrap());
        assert_eq!(inbox.list().unwrap(), [first.clone(), second.clone()]);
    }
    let mut inbox = Inbox::open(&path).unwrap();
    assert!(
        !inbox.insert(&second).unwrap(),
        "still a duplicate after reopening"
    );
    assert_eq!(inbox.len().unwrap(), 2);
    assert_eq!(inbox.list().unwrap(), [first, second]);
}

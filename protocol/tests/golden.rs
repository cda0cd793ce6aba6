//! Golden bytes: every envelope variant, encoded from a fixed value, must give exactly these
//! bytes, and these bytes must decode to that value. Reordering a variant or a field, or
//! changing a type, changes the bytes phones and clouds of other versions exchange: this test
//! fails first. A new variant is appended and gets a line of its own here.

use ecs_protocol::{
    Ack, Control, CreditType, DeviceId, Downlink, Emotions, Intent, Notification, NotificationKind,
    NotificationReceipt, PackedBatch, Reading, ReadingBatch, Revocations, Thought, TimedAck,
    Uplink, decode_control, decode_downlink, decode_uplink, encode_control, encode_downlink,
    encode_uplink,
};
use uuid::Uuid;

fn batch() -> ReadingBatch {
    let reading = |offset_ms, valence, stress, thoughts: Vec<Thought>| Reading {
        offset_ms,
        emotions: Emotions {
            joy: 40,
            trust: 35,
            fear: 10,
            surprise: 5,
            sadness: 12,
            disgust: 3,
            anger: 7,
            anticipation: 50,
        },
        valence,
        arousal: 60,
        dominance: 55,
        stress,
        focus: 70,
        thoughts,
    };
    ReadingBatch {
        device_id: DeviceId::parse("golden1").unwrap(),
        first_seq: 1_700_000_000_000_000,
        base_time_ms: 1_700_000_000_123,
        readings: vec![
            reading(
                0,
                -20,
                30,
                vec![Thought {
                    intent: Intent::PurchaseIntent,
                    confidence: 80,
                }],
            ),
            reading(100, -18, 31, Vec::new()),
            reading(
                200,
                -25,
                45,
                vec![
                    Thought {
                        intent: Intent::FinancialWorry,
                        confidence: 65,
                    },
                    Thought {
                        intent: Intent::Gratitude,
                        confidence: 5,
                    },
                ],
            ),
        ],
    }
}

const OFFER: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
const NOTIFICATION: Uuid = Uuid::from_u128(0xfedc_ba98_7654_3210_fedc_ba98_7654_3210);

fn uplinks() -> Vec<(&'static str, Uplink)> {
    vec![
        ("ReadingBatchV1", Uplink::ReadingBatchV1(batch())),
        (
            "NotificationReceiptV1",
            Uplink::NotificationReceiptV1(NotificationReceipt {
                notification_ids: vec![NOTIFICATION],
            }),
        ),
        (
            "ReadingBatchV2",
            Uplink::ReadingBatchV2(PackedBatch::pack(&batch()).unwrap()),
        ),
        (
            "ReadingBatchV3",
            Uplink::ReadingBatchV3(PackedBatch::pack(&batch()).unwrap()),
        ),
    ]
}

fn downlinks() -> Vec<(&'static str, Downlink)> {
    vec![
        (
            "AckV1",
            Downlink::AckV1(Ack {
                first_seq: 1_700_000_000_000_000,
                up_to_seq: 1_700_000_000_000_002,
            }),
        ),
        (
            "NotificationV1 OfferMade",
            Downlink::NotificationV1(Notification {
                notification_id: NOTIFICATION,
                created_at_ms: 1_700_000_000_500,
                kind: NotificationKind::OfferMade {
                    offer_id: OFFER,
                    credit_limit_cents: 1_200_000,
                    interest_rate_bps: 2_490,
                    credit_type: CreditType::ShortTerm,
                    expires_at_ms: 1_700_259_200_500,
                },
            }),
        ),
        (
            "NotificationV1 OfferApplied",
            Downlink::NotificationV1(Notification {
                notification_id: NOTIFICATION,
                created_at_ms: 1_700_000_000_900,
                kind: NotificationKind::OfferApplied {
                    offer_id: OFFER,
                    credit_limit_cents: 1_200_000,
                    interest_rate_bps: 2_490,
                    credit_type: CreditType::LongTerm,
                },
            }),
        ),
        (
            "AckV2",
            Downlink::AckV2(TimedAck {
                ack: Ack {
                    first_seq: 1_700_000_000_000_000,
                    up_to_seq: 1_700_000_000_000_002,
                },
                server_time_ms: 1_700_000_000_777,
            }),
        ),
    ]
}

fn controls() -> Vec<(&'static str, Control)> {
    vec![(
        "RevocationsV1",
        Control::RevocationsV1(Revocations {
            device_ids: vec![
                DeviceId::parse("golden1").unwrap(),
                DeviceId::parse("golden2").unwrap(),
            ],
        }),
    )]
}

/// The pinned bytes, by variant (hex).
const GOLDEN: &[(&str, &str)] = &[
    (
        "ReadingBatchV1",
        "0007676f6c64656e318080f9c0c1c48203f6a1abfef962030028230a050c030732ec3c371e460100506428230a050c030732ee3c371f4600c80128230a050c030732e73c372d460201410405",
    ),
    (
        "NotificationReceiptV1",
        "010110fedcba9876543210fedcba9876543210",
    ),
    (
        "ReadingBatchV2",
        "0207676f6c64656e318080f9c0c1c48203f6a1abfef962032b00ffaf6ffeffff1f504614186427786e3c8c010150c8010000000004200000000000000df0201c02410505",
    ),
    (
        "ReadingBatchV3",
        "0307676f6c64656e318080f9c0c1c48203f6a1abfef962032b00ffaf6ffeffff1f504614186427786e3c8c010150c8010000000004200000000000000df0201c02410505",
    ),
    ("AckV1", "008080f9c0c1c482038280f9c0c1c48203"),
    (
        "NotificationV1 OfferMade",
        "0110fedcba9876543210fedcba9876543210e8a7abfef96200100123456789abcdef0123456789abcdef80be9201f42600e8f7c3f5fb62",
    ),
    (
        "NotificationV1 OfferApplied",
        "0110fedcba9876543210fedcba987654321088aeabfef96201100123456789abcdef0123456789abcdef80be9201f42601",
    ),
    ("AckV2", "028080f9c0c1c482038280f9c0c1c4820392acabfef962"),
    ("RevocationsV1", "000207676f6c64656e3107676f6c64656e32"),
];

#[test]
fn only_a_v3_batch_asks_for_timed_acks() {
    for (name, message) in uplinks() {
        let wire = encode_uplink(&message).unwrap();
        assert_eq!(
            ecs_protocol::reads_timed_acks(&wire),
            matches!(message, Uplink::ReadingBatchV3(_)),
            "{name}"
        );
    }
    assert!(!ecs_protocol::reads_timed_acks(&[]));
}

#[test]
fn every_envelope_variant_encodes_to_its_golden_bytes_and_back() {
    let mut seen: Vec<(&str, String)> = Vec::new();
    for (name, message) in uplinks() {
        seen.push((name, hex::encode(encode_uplink(&message).unwrap())));
    }
    for (name, message) in downlinks() {
        seen.push((name, hex::encode(encode_downlink(&message).unwrap())));
    }
    for (name, message) in controls() {
        seen.push((name, hex::encode(encode_control(&message).unwrap())));
    }
    let pinned: Vec<(&str, String)> = GOLDEN
        .iter()
        .map(|(name, hex)| (*name, (*hex).to_owned()))
        .collect();
    // On a mismatch, the message is the table as it would be now: pin it only for a change
    // that is meant to be a new version (a new variant), never to reorder or retype.
    let table: String = seen
        .iter()
        .map(|(name, hex)| format!("    (\"{name}\", \"{hex}\"),\n"))
        .collect();
    assert_eq!(seen, pinned, "the encoding changed; now it is:\n{table}");

    // And the pinned bytes still decode to the same messages (what older peers send).
    let bytes = |name: &str| hex::decode(GOLDEN.iter().find(|(n, _)| *n == name).unwrap().1);
    for (name, message) in uplinks() {
        assert_eq!(
            decode_uplink(&bytes(name).unwrap()).unwrap(),
            message,
            "{name}"
        );
    }
    for (name, message) in downlinks() {
        assert_eq!(
            decode_downlink(&bytes(name).unwrap()).unwrap(),
            message,
            "{name}"
        );
    }
    for (name, message) in controls() {
        assert_eq!(
            decode_control(&bytes(name).unwrap()).unwrap(),
            message,
            "{name}"
        );
    }
}

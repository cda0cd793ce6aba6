//! The wire format survives a round trip, and anything else is rejected with an error.

use ecs_protocol::*;
use uuid::Uuid;

fn reading(offset_ms: u32) -> Reading {
    Reading {
        offset_ms,
        emotions: Emotions {
            joy: 80,
            trust: 60,
            fear: 5,
            surprise: 10,
            sadness: 0,
            disgust: 1,
            anger: 2,
            anticipation: 70,
        },
        valence: -35,
        arousal: 55,
        dominance: 40,
        stress: 30,
        focus: 90,
        thoughts: vec![Thought {
            intent: Intent::SavingIntent,
            confidence: 77,
        }],
    }
}

fn batch(n: u32) -> ReadingBatch {
    ReadingBatch {
        device_id: DeviceId::parse("dev42").unwrap(),
        first_seq: 1_000,
        base_time_ms: 1_764_000_000_000,
        readings: (0..n).map(|i| reading(i * 100)).collect(),
    }
}

#[test]
fn reading_batch_round_trips() {
    let message = Uplink::ReadingBatchV1(batch(50));
    let bytes = encode_uplink(&message).unwrap();
    assert_eq!(decode_uplink(&bytes).unwrap(), message);
}

#[test]
fn readings_are_compact() {
    let bytes = encode_uplink(&Uplink::ReadingBatchV1(batch(100))).unwrap();
    // 8 emotions + 5 dimensions + offset varint + one thought: about 20 bytes per reading.
    assert!(bytes.len() < 100 * 24, "{} bytes", bytes.len());
}

#[test]
fn a_full_batch_fits_in_one_message() {
    let mut b = batch(MAX_READINGS_PER_BATCH as u32);
    for r in &mut b.readings {
        r.offset_ms = u32::MAX;
        r.thoughts = vec![
            Thought {
                intent: Intent::FinancialWorry,
                confidence: 100
            };
            MAX_THOUGHTS_PER_READING
        ];
    }
    let bytes = encode_uplink(&Uplink::ReadingBatchV1(b)).unwrap();
    assert!(bytes.len() <= MAX_MESSAGE_BYTES, "{} bytes", bytes.len());
}

#[test]
fn downlink_messages_round_trip() {
    let messages = [
        Downlink::AckV1(Ack {
            first_seq: 7,
            up_to_seq: 99,
        }),
        Downlink::NotificationV1(Notification {
            notification_id: Uuid::new_v4(),
            created_at_ms: 1,
            kind: NotificationKind::OfferApplied {
                offer_id: Uuid::new_v4(),
                credit_limit_cents: 150_000,
                interest_rate_bps: 1_990,
                credit_type: CreditType::LongTerm,
            },
        }),
    ];
    for m in messages {
        assert_eq!(decode_downlink(&encode_downlink(&m).unwrap()).unwrap(), m);
    }
    let receipt = Uplink::NotificationReceiptV1(NotificationReceipt {
        notification_ids: vec![Uuid::new_v4()],
    });
    assert_eq!(
        decode_uplink(&encode_uplink(&receipt).unwrap()).unwrap(),
        receipt
    );
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = encode_uplink(&Uplink::ReadingBatchV1(batch(3))).unwrap();
    for len in 0..bytes.len() {
        assert!(
            decode_uplink(&bytes[..len]).is_err(),
            "a {len}-byte prefix decoded"
        );
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = encode_uplink(&Uplink::ReadingBatchV1(batch(1))).unwrap();
    bytes.push(0);
    assert!(matches!(
        decode_uplink(&bytes),
        Err(DecodeError::TrailingBytes(1))
    ));
}

#[test]
fn garbage_and_unknown_variants_are_errors() {
    assert!(decode_uplink(b"").is_err());
    assert!(decode_uplink(b"hello, broker").is_err());
    // Variant index 9 does not exist (yet): an old reader must refuse it, not guess.
    assert!(decode_uplink(&[9, 0, 0]).is_err());
    assert!(decode_downlink(&[0xff; 32]).is_err());
}

#[test]
fn oversized_payloads_are_refused_before_parsing() {
    let bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        decode_uplink(&bytes),
        Err(DecodeError::TooLarge(_))
    ));
}

#[test]
fn a_device_id_that_breaks_the_rules_does_not_decode() {
    let mut b = batch(1);
    b.device_id = DeviceId::parse("ok").unwrap();
    let mut bytes = encode_uplink(&Uplink::ReadingBatchV1(b)).unwrap();
    // The id "ok" is encoded as [len=2, b'o', b'k'] right after the variant index.
    assert_eq!(&bytes[1..4], &[2, b'o', b'k']);
    bytes[2] = b'/';
    assert!(decode_uplink(&bytes).is_err());
}

#[test]
fn validation_accepts_a_good_batch_and_names_the_first_fault() {
    assert_eq!(batch(10).validate(), Ok(()));
    assert_eq!(batch(10).last_seq(), 1_009);

    let mut empty = batch(1);
    empty.readings.clear();
    assert_eq!(empty.validate(), Err(ValidationError::EmptyBatch));

    let mut loud = batch(3);
    loud.readings[2].emotions.fear = 101;
    assert!(matches!(
        loud.validate(),
        Err(ValidationError::OutOfRange {
            index: 2,
            field: "fear",
            value: 101,
            ..
        })
    ));

    let mut sour = batch(2);
    sour.readings[1].valence = -101;
    assert!(matches!(
        sour.validate(),
        Err(ValidationError::OutOfRange {
            field: "valence",
            ..
        })
    ));

    let mut back = batch(3);
    back.readings[2].offset_ms = 0;
    assert_eq!(
        back.validate(),
        Err(ValidationError::OffsetNotMonotonic { index: 2 })
    );

    let mut overflow = batch(2);
    overflow.first_seq = u64::MAX;
    assert!(matches!(
        overflow.validate(),
        Err(ValidationError::SeqOverflow { .. })
    ));

    let mut big = batch(1);
    big.first_seq = i64::MAX as u64 + 1;
    assert_eq!(big.validate(), Err(ValidationError::SeqOutOfRange));

    let too_many = batch(MAX_READINGS_PER_BATCH as u32 + 1);
    assert!(matches!(
        too_many.validate(),
        Err(ValidationError::TooManyReadings(_))
    ));
}

#[test]
fn device_ids_are_alphanumeric_and_bounded() {
    assert!(DeviceId::parse("abcDEF123").is_ok());
    assert_eq!(DeviceId::parse(""), Err(DeviceIdError::Empty));
    assert_eq!(DeviceId::parse("a-b"), Err(DeviceIdError::InvalidCharacter));
    assert_eq!(DeviceId::parse("x".repeat(33)), Err(DeviceIdError::TooLong));
    assert_eq!(DeviceId::random().as_str().len(), 32);
    assert!(DeviceId::parse(DeviceId::random().to_string()).is_ok());
}

#[test]
fn intent_codes_are_stable_and_reversible() {
    for intent in Intent::ALL {
        assert_eq!(Intent::from_code(intent.code()), Some(intent));
    }
    assert_eq!(Intent::from_code(0), None);
}

#[test]
fn a_full_revocation_list_round_trips_within_the_message_limit() {
    use ecs_protocol::{Control, Revocations, decode_control, encode_control};
    let device_ids = (0..Revocations::MAX_PER_MESSAGE)
        .map(|i| ecs_protocol::DeviceId::parse(format!("{i:0>32}")).unwrap())
        .collect();
    let message = Control::RevocationsV1(Revocations { device_ids });
    let bytes = encode_control(&message).unwrap();
    assert!(
        bytes.len() < ecs_protocol::MAX_MESSAGE_BYTES,
        "{} bytes",
        bytes.len()
    );
    assert_eq!(decode_control(&bytes).unwrap(), message);
    // The envelope's first variant is index 0: reordering variants breaks this.
    assert_eq!(bytes[0], 0);
}

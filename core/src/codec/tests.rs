//! Canonical encoding: golden bytes written out from the specification, strict refusals with
//! their offsets, and property tests over generated values and arbitrary bytes.

use proptest::prelude::*;

use super::*;
use crate::arb;

/// Bytes from a hex string with spaces, as the specification writes them.
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    let nibble = |d: u8| (d as char).to_digit(16).expect("hex digit") as u8;
    digits.chunks(2).map(|pair| nibble(pair[0]) << 4 | nibble(pair[1])).collect()
}

fn command_bytes(command: &Command) -> Vec<u8> {
    let mut out = [0; COMMAND_LEN_MAX];
    let len = encode_command(command, &mut out);
    out[..len].to_vec()
}

fn outcome_bytes(outcome: &Outcome) -> Vec<u8> {
    let mut out = [0; OUTCOME_LEN_MAX];
    let len = encode_outcome(outcome, &mut out);
    out[..len].to_vec()
}

fn event_bytes(event: &Event) -> Vec<u8> {
    let mut out = [0; EVENT_LEN_MAX];
    let len = encode_event(event, &mut out);
    out[..len].to_vec()
}

#[track_caller]
fn assert_command_golden(command: Command, expected: &str) {
    let expected = hex(expected);
    assert_eq!(command_bytes(&command), expected, "{command:?}");
    assert_eq!(decode_command(&expected), Ok(command));
}

#[track_caller]
fn assert_outcome_golden(outcome: Outcome, expected: &str) {
    let expected = hex(expected);
    assert_eq!(outcome_bytes(&outcome), expected, "{outcome:?}");
    assert_eq!(decode_outcome(&expected), Ok(outcome));
}

#[test]
fn commands_encode_to_the_documented_bytes() {
    // Goal: the bytes of each command family are exactly those the module documentation
    // specifies, written out by hand here rather than produced by the encoder.
    assert_command_golden(Command::Tick, "00");
    assert_command_golden(Command::Snapshot, "05");
    assert_command_golden(
        Command::Query(Query::Order(OrderId(0x0102_0304_0506_0708))),
        "02 0807060504030201",
    );
    assert_command_golden(Command::Query(Query::Batch(BatchId(3))), "04 0300000000000000");
    let reserve = Reserve { user: UserId(3), sku: SkuId(1), qty: 1, coupon: None };
    assert_command_golden(
        Command::Client { key: RequestKey::from_u128(7), action: Action::Reserve(reserve) },
        "10 07000000000000000000000000000000
         05 0300000000000000 0100000000000000 01000000 00",
    );
    let pay = Action::Pay {
        order: OrderId(9),
        payment_ref: PaymentRef::from_u128(0xAB),
        amount_cents: 1_500,
    };
    assert_command_golden(
        Command::Client { key: RequestKey::from_u128(0x1122), action: pay },
        "10 22110000000000000000000000000000
         06 0900000000000000 AB000000000000000000000000000000 DC05000000000000",
    );
}

#[test]
fn actions_with_options_encode_presence_bytes() {
    // Goal: a present option is 01 and its value, an absent one a lone 00.
    let create = Action::CreateSku(CreateSku {
        sku: SkuId(42),
        stock: 100,
        price_cents: 1_999,
        per_user_limit: 2,
        payment_timeout_ms: 60_000,
        sale_start: Some(Timestamp(1_000)),
        sale_end: None,
    });
    let expected = hex("01 2A00000000000000 64000000 CF07000000000000 02000000 60EA000000000000
         01 E803000000000000 00");
    let mut out = [0; ACTION_LEN_MAX];
    let len = encode_action(&create, &mut out);
    assert_eq!(&out[..len], &expected[..]);
    assert_eq!(decode_action(&expected), Ok(create));
    let with_coupon = Action::Reserve(Reserve {
        user: UserId(3),
        sku: SkuId(1),
        qty: 2,
        coupon: Some(CouponId(0x0102)),
    });
    let expected = hex("05 0300000000000000 0100000000000000 02000000 01 0201000000000000");
    let len = encode_action(&with_coupon, &mut out);
    assert_eq!(&out[..len], &expected[..]);
}

#[test]
fn outcomes_encode_to_the_documented_bytes() {
    // Goal: outcome, rejection and view bytes are exactly those specified.
    assert_outcome_golden(
        Outcome::Reserved {
            order: OrderId(0x0A0B),
            expires_at: Timestamp(0x1122_3344),
            amount_cents: 999,
        },
        "05 0B0A000000000000 4433221100000000 E703000000000000",
    );
    assert_outcome_golden(Outcome::Rejected(Rejection::SoldOut), "12 01");
    assert_outcome_golden(Outcome::Rejected(Rejection::RequestKeyReused), "12 11");
    assert_outcome_golden(
        Outcome::Rejected(Rejection::InvalidState { current: OrderState::Expired }),
        "12 12 05",
    );
    assert_outcome_golden(
        Outcome::Rejected(Rejection::WrongAmount { expected_cents: 500 }),
        "12 13 F401000000000000",
    );
    assert_outcome_golden(
        Outcome::SnapshotRequested { last_sequence: Sequence(3), running_hash: u64::MAX },
        "11 0300000000000000 FFFFFFFFFFFFFFFF",
    );
    let coupon = CouponView {
        coupon: CouponId(5),
        batch: BatchId(6),
        user: UserId(7),
        state: CouponState::Locked(OrderId(8)),
        discount_cents: 50,
        valid_until: Timestamp(9),
    };
    assert_outcome_golden(
        Outcome::Coupon(coupon),
        "0F 0500000000000000 0600000000000000 0700000000000000 01 0800000000000000
         3200000000000000 0900000000000000",
    );
    assert_outcome_golden(
        Outcome::Coupon(CouponView { state: CouponState::Expired, ..coupon }),
        "0F 0500000000000000 0600000000000000 0700000000000000 03
         3200000000000000 0900000000000000",
    );
}

#[test]
fn views_encode_to_the_documented_bytes() {
    // Goal: SKU and order views, the longest outcomes, are laid out as specified, and the
    // longest of each reaches OUTCOME_LEN_MAX exactly.
    let sku = SkuView {
        sku: SkuId(1),
        stock: 10,
        available: 9,
        reserved: 1,
        sold: 0,
        price_cents: 100,
        per_user_limit: 0,
        open: true,
        payment_timeout_ms: 300,
        sale_start: Some(Timestamp(1)),
        sale_end: Some(Timestamp(2)),
    };
    assert_outcome_golden(
        Outcome::SkuCreated(sku),
        "02 0100000000000000 0A00000000000000 0900000000000000 0100000000000000
         0000000000000000 6400000000000000 00000000 01 2C01000000000000
         01 0100000000000000 01 0200000000000000",
    );
    assert_eq!(outcome_bytes(&Outcome::SkuCreated(sku)).len(), OUTCOME_LEN_MAX);
    let order = OrderView {
        order: OrderId(1),
        user: UserId(2),
        sku: SkuId(3),
        qty: 4,
        amount_cents: 5,
        state: OrderState::Paid,
        created_at: Timestamp(6),
        expires_at: Timestamp(7),
        coupon: None,
        payment_ref: Some(PaymentRef::from_u128(0xFF)),
    };
    assert_outcome_golden(
        Outcome::Order(order),
        "0E 0100000000000000 0200000000000000 0300000000000000 04000000 0500000000000000
         01 0600000000000000 0700000000000000 00 01 FF000000000000000000000000000000",
    );
    let full = OrderView { coupon: Some(CouponId(1)), ..order };
    assert_eq!(outcome_bytes(&Outcome::Order(full)).len(), OUTCOME_LEN_MAX);
}

#[test]
fn events_encode_to_the_documented_bytes() {
    // Goal: an expiry event is its tag and four fields.
    let event = Event::OrderExpired { order: OrderId(5), user: UserId(6), sku: SkuId(7), qty: 3 };
    let expected = hex("01 0500000000000000 0600000000000000 0700000000000000 03000000");
    assert_eq!(event_bytes(&event), expected);
    assert_eq!(decode_event(&expected), Ok(event));
    assert_eq!(expected.len(), EVENT_LEN_MAX);
}

#[test]
fn the_longest_command_fills_command_len_max() {
    // Goal: COMMAND_LEN_MAX is reached, so it is the true bound, not a guess.
    let create = CreateSku {
        sku: SkuId(1),
        stock: 1,
        price_cents: 1,
        per_user_limit: 1,
        payment_timeout_ms: 1,
        sale_start: Some(Timestamp(1)),
        sale_end: Some(Timestamp(2)),
    };
    let command = Command::Client { key: RequestKey::default(), action: Action::CreateSku(create) };
    assert_eq!(command_bytes(&command).len(), COMMAND_LEN_MAX);
}

#[test]
fn malformed_bytes_are_refused_with_the_offset_of_the_fault() {
    // Goal: each kind of fault is reported with what was being read and where.
    let reserve_head =
        "10 07000000000000000000000000000000 05 0300000000000000 0100000000000000 01000000";
    let bad_flag = hex(&format!("{reserve_head} 02"));
    assert_eq!(
        decode_command(&bad_flag),
        Err(DecodeError::BadFlag { field: "coupon", byte: 2, offset: 38 })
    );
    let unknown_action = hex("10 07000000000000000000000000000000 0E");
    assert_eq!(
        decode_command(&unknown_action),
        Err(DecodeError::UnknownTag { what: "action", tag: 0x0E, offset: 17 })
    );
    assert_eq!(
        decode_command(&hex("02 0102")),
        Err(DecodeError::Truncated { field: "order", offset: 1 })
    );
    assert_eq!(
        decode_command(&hex("05 00")),
        Err(DecodeError::TrailingBytes { what: "command", offset: 1, count: 1 })
    );
    assert_eq!(
        decode_outcome(&hex("12 12 07")),
        Err(DecodeError::UnknownTag { what: "order state", tag: 7, offset: 2 })
    );
    assert_eq!(
        decode_outcome(&[]),
        Err(DecodeError::Truncated { field: "outcome tag", offset: 0 })
    );
    assert_eq!(
        decode_event(&hex("02")),
        Err(DecodeError::UnknownTag { what: "event", tag: 2, offset: 0 })
    );
    let message = DecodeError::BadFlag { field: "coupon", byte: 2, offset: 38 }.to_string();
    assert!(message.contains("offset 38") && message.contains("coupon"), "{message}");
}

#[test]
fn a_rejection_never_written_is_refused() {
    // Goal: tags past the last rejection are refused rather than mapped to some rejection.
    for tag in [0x00_u8, 0x14, 0xFF] {
        assert_eq!(
            decode_outcome(&[0x12, tag]),
            Err(DecodeError::UnknownTag { what: "rejection", tag, offset: 1 })
        );
    }
}

#[test]
#[should_panic(expected = "too small")]
fn encoding_into_a_short_buffer_is_a_programmer_error() {
    // Goal: a buffer shorter than the bound is caught at once, not half written.
    let mut out = [0; COMMAND_LEN_MAX - 1];
    encode_command(&Command::Tick, &mut out);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn every_command_round_trips_within_its_bound(command in arb::command()) {
        // Goal: decoding gives back exactly the command encoded, for every variant and value.
        let bytes = command_bytes(&command);
        prop_assert!(bytes.len() <= COMMAND_LEN_MAX);
        prop_assert_eq!(decode_command(&bytes), Ok(command));
        if let Command::Client { action, .. } = command {
            let mut out = [0; ACTION_LEN_MAX];
            let len = encode_action(&action, &mut out);
            prop_assert_eq!(&out[..len], &bytes[17..]);
            prop_assert_eq!(decode_action(&out[..len]), Ok(action));
        }
    }

    #[test]
    fn every_outcome_round_trips_within_its_bound(outcome in arb::outcome()) {
        // Goal: decoding gives back exactly the outcome encoded.
        let bytes = outcome_bytes(&outcome);
        prop_assert!(bytes.len() <= OUTCOME_LEN_MAX);
        prop_assert_eq!(decode_outcome(&bytes), Ok(outcome));
    }

    #[test]
    fn every_event_round_trips(event in arb::event()) {
        // Goal: decoding gives back exactly the event encoded.
        prop_assert_eq!(decode_event(&event_bytes(&event)), Ok(event));
    }

    #[test]
    fn every_cut_of_an_encoding_is_refused(command in arb::command(), outcome in arb::outcome()) {
        // Goal: a value's encoding is never a prefix of another's, so a torn value is always
        // refused, never read as a shorter value.
        let bytes = command_bytes(&command);
        for cut in 0..bytes.len() {
            prop_assert!(decode_command(&bytes[..cut]).is_err(), "cut at {}", cut);
        }
        let bytes = outcome_bytes(&outcome);
        for cut in 0..bytes.len() {
            prop_assert!(decode_outcome(&bytes[..cut]).is_err(), "cut at {}", cut);
        }
    }

    #[test]
    fn arbitrary_bytes_decode_only_to_their_one_encoding(
        bytes in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        // Goal: no input panics any decoder, and whatever decodes re-encodes to the very same
        // bytes: each value has exactly one encoding.
        if let Ok(command) = decode_command(&bytes) {
            prop_assert_eq!(command_bytes(&command), bytes.clone());
        }
        if let Ok(outcome) = decode_outcome(&bytes) {
            prop_assert_eq!(outcome_bytes(&outcome), bytes.clone());
        }
        if let Ok(event) = decode_event(&bytes) {
            prop_assert_eq!(event_bytes(&event), bytes.clone());
        }
        if let Ok(action) = decode_action(&bytes) {
            let mut out = [0; ACTION_LEN_MAX];
            let len = encode_action(&action, &mut out);
            prop_assert_eq!(&out[..len], &bytes[..]);
        }
    }

    #[test]
    fn mutated_encodings_decode_only_to_their_one_encoding(
        command in arb::command(),
        outcome in arb::outcome(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        // Goal: valid encodings with damaged bytes (which random bytes rarely resemble) are
        // refused or decode to a value whose encoding is exactly the damaged bytes.
        for mut bytes in [command_bytes(&command), outcome_bytes(&outcome)] {
            for &(at, byte) in &flips {
                let at = at % bytes.len();
                bytes[at] ^= byte;
            }
            if let Ok(command) = decode_command(&bytes) {
                prop_assert_eq!(command_bytes(&command), bytes.clone());
            }
            if let Ok(outcome) = decode_outcome(&bytes) {
                prop_assert_eq!(outcome_bytes(&outcome), bytes.clone());
            }
        }
    }
}

//! Validation on both sides of the wire: `Message::new` refuses to build an invalid message, and
//! `Message::decode` refuses what is not a valid message of a type and version this build reads. Errors name
//! the field path, never a field's value.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use proto_events::commands::{
    CancelShipment, ChargePayment, CreateShipment, Currency, RefundPayment, ReleaseStock, ReserveStock,
};
use proto_events::registry::{self, TYPES};
use proto_events::{
    Address, Body, Command, CommandKind, DeadlineKind, DecodeError, Line, Message, Meta, OperatorCommand, OperatorVerb,
    OrderStatus, Reply, SagaTransitioned, StartSaga, TimerFired,
};

// A valid message of every kind, to break one rule at a time.

const CUSTOMER_REF: &str = "5f2b9c0e8d7a4136b1e0c9d8a7f6e5d4";

fn time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 14, 9, 26, 53).unwrap()
}

fn meta() -> Meta {
    Meta {
        message_id: Uuid::parse_str("01959a3e-6b11-7101-8a01-5d2e8b1c0a01").unwrap(),
        saga_id: Uuid::parse_str("01959a3e-6b10-7c4e-9f3a-5d2e8b1c0a01").unwrap(),
        step: 2,
        attempt: 1,
        correlation_id: Uuid::parse_str("01959a3e-6b0f-7a21-8c44-2f6d9e0b7c10").unwrap(),
        causation_id: Some(Uuid::parse_str("01959a3e-6b16-7106-8a06-5d2e8b1c0a06").unwrap()),
        time: time(),
    }
}

fn line(sku: &str, quantity: u32) -> Line {
    Line { sku: sku.to_owned(), quantity }
}

fn items() -> Vec<Line> {
    vec![line("MUG-RED-350", 2), line("TEA-EARLGREY-100G", 1)]
}

fn reserve(items: Vec<Line>) -> Body {
    Body::Command(Command::InventoryReserve(ReserveStock { items }))
}

fn address() -> Address {
    Address {
        name: "Ada Lovelace".to_owned(),
        line1: "12 Example Street".to_owned(),
        line2: Some("Flat 3".to_owned()),
        city: "Testville".to_owned(),
        postal_code: "EX1 2MP".to_owned(),
        country: "GB".to_owned(),
    }
}

fn ship(address: Address) -> Body {
    Body::Command(Command::ShippingCreate(CreateShipment { items: items(), address }))
}

fn charge() -> ChargePayment {
    ChargePayment {
        amount_cents: 2598,
        currency: Currency::EUR,
        payment_token: "tok_test_4f9a2c7e1b".to_owned(),
        customer_ref: CUSTOMER_REF.to_owned(),
    }
}

fn transitioned() -> SagaTransitioned {
    SagaTransitioned {
        definition: "order-fulfilment".to_owned(),
        definition_version: 1,
        from: "RUNNING".to_owned(),
        to: "COMPENSATING".to_owned(),
        status: OrderStatus::Pending,
        step_name: Some("create-shipment".to_owned()),
        reason: Some("create-shipment failed: no carrier serves the destination country".to_owned()),
        version: 7,
        customer_ref: CUSTOMER_REF.to_owned(),
    }
}

fn reply(reply: Reply) -> Body {
    Body::Reply { command: CommandKind::ShippingCreate, reply }
}

/// One valid body of every registered type.
fn every_body() -> Vec<Body> {
    let mut bodies = vec![
        reserve(items()),
        Body::Command(Command::InventoryRelease(ReleaseStock {})),
        Body::Command(Command::PaymentCharge(charge())),
        Body::Command(Command::PaymentRefund(RefundPayment {})),
        ship(address()),
        Body::Command(Command::ShippingCancel(CancelShipment {})),
        Body::Transitioned(transitioned()),
        Body::Start(StartSaga {}),
        Body::Timer(TimerFired { kind: DeadlineKind::StepTimeout, due_at: time() }),
        Body::Operator(OperatorCommand {
            action: OperatorVerb::Retry,
            outcome: None,
            reason: "payment provider back after the outage".to_owned(),
            operator: "alice".to_owned(),
            expected_version: 7,
        }),
    ];
    for (i, command) in CommandKind::ALL.into_iter().enumerate() {
        let reply = match i % 3 {
            0 => Reply::ok(),
            1 => Reply::Succeeded { reference: Some("pay_test_7Qm2xK9d".to_owned()) },
            _ => Reply::business("no carrier serves the destination country"),
        };
        bodies.push(Body::Reply { command, reply });
    }
    bodies
}

/// Builds `body`, which must be refused with a report naming `path`; returns the report.
#[track_caller]
fn refused(body: Body, path: &str) -> String {
    refused_with(meta(), body, path)
}

#[track_caller]
fn refused_with(meta: Meta, body: Body, path: &str) -> String {
    let message_type = body.message_type();
    match Message::new(meta, body) {
        Err(DecodeError::Invalid { message_type: t, report }) => {
            assert_eq!(t, message_type);
            let named = report.starts_with(&format!("{path}: ")) || report.contains(&format!("; {path}: "));
            assert!(named, "report {report:?} does not name `{path}`");
            report
        }
        other => panic!("expected Invalid naming `{path}`, got {other:?}"),
    }
}

#[track_caller]
fn accepted(body: Body) {
    if let Err(e) = Message::new(meta(), body) {
        panic!("a valid message is refused: {e}");
    }
}

// Building.

#[test]
fn a_valid_message_of_every_registered_type_builds() {
    let bodies = every_body();
    let mut types: Vec<&str> = bodies.iter().map(Body::message_type).collect();
    types.sort_unstable();
    let mut registered: Vec<&str> = TYPES.iter().map(|t| t.name).collect();
    registered.sort_unstable();
    assert_eq!(types, registered, "the test should cover every registered type");
    for body in bodies {
        accepted(body);
    }
}

#[test]
fn order_lines_are_checked() {
    refused(reserve(vec![]), "items");
    refused(reserve(vec![line("MUG-RED-350", 0)]), "items[0].quantity");
    refused(reserve(vec![line("MUG-RED-350", 1), line("TEA-1", 10_001)]), "items[1].quantity");
    accepted(reserve(vec![line("MUG-RED-350", 1), line("TEA-1", 10_000)]));

    let too_many: Vec<Line> = (0..101).map(|i| line(&format!("SKU-{i}"), 1)).collect();
    refused(reserve(too_many[..101].to_vec()), "items");
    accepted(reserve(too_many[..100].to_vec()));
}

#[test]
fn a_sku_appears_once_per_command() {
    let report = refused(reserve(vec![line("MUG-RED-350", 1), line("TEA-1", 1), line("MUG-RED-350", 2)]), "items");
    assert!(report.contains("more than once"), "{report}");
    let Body::Command(Command::ShippingCreate(mut shipment)) = ship(address()) else { unreachable!() };
    shipment.items.push(line("TEA-EARLGREY-100G", 3));
    refused(Body::Command(Command::ShippingCreate(shipment)), "items");
}

#[test]
fn skus_follow_the_pattern() {
    for bad in ["", "mug-red-350", "-MUG", "MUG RED", "MUG_RED", "MÜG", &"A".repeat(33), "MUG\n"] {
        refused(reserve(vec![line(bad, 1)]), "items[0].sku");
    }
    for good in ["A", "0", "MUG-RED-350", &"A".repeat(32), "X-"] {
        accepted(reserve(vec![line(good, 1)]));
    }
}

#[test]
fn addresses_are_checked() {
    for country in ["", "gb", "GBR", "G", "1A"] {
        refused(ship(Address { country: country.to_owned(), ..address() }), "address.country");
    }
    refused(ship(Address { name: String::new(), ..address() }), "address.name");
    refused(ship(Address { name: "A".repeat(201), ..address() }), "address.name");
    refused(ship(Address { line1: String::new(), ..address() }), "address.line1");
    refused(ship(Address { line2: Some("x".repeat(201)), ..address() }), "address.line2");
    refused(ship(Address { city: "x".repeat(101), ..address() }), "address.city");
    refused(ship(Address { postal_code: "1".to_owned(), ..address() }), "address.postal_code");
    accepted(ship(Address { line2: None, ..address() }));
    // Lengths count characters, as JSON Schema's maxLength does, not bytes.
    accepted(ship(Address { name: "Ł".repeat(200), city: "ő".repeat(100), ..address() }));
}

#[test]
fn charges_are_checked() {
    for amount_cents in [0, -1, 1_000_000_000_001] {
        refused(Body::Command(Command::PaymentCharge(ChargePayment { amount_cents, ..charge() })), "amount_cents");
    }
    accepted(Body::Command(Command::PaymentCharge(ChargePayment { amount_cents: 1_000_000_000_000, ..charge() })));
    for token in ["", "tok en", "tok/1", &"t".repeat(65)] {
        let body = ChargePayment { payment_token: token.to_owned(), ..charge() };
        refused(Body::Command(Command::PaymentCharge(body)), "payment_token");
    }
}

/// Not 32 lower-case hex digits.
const BAD_CUSTOMER_REFS: [&str; 5] = [
    "",
    "5f2b9c0e8d7a4136b1e0c9d8a7f6e5d",   // 31
    "5f2b9c0e8d7a4136b1e0c9d8a7f6e5d4a", // 33
    "5F2B9C0E8D7A4136B1E0C9D8A7F6E5D4",  // upper case
    "5f2b9c0e-8d7a-4136-b1e0-c9d8a7f6",  // a UUID's form
];

#[test]
fn customer_refs_are_32_lower_case_hex_digits() {
    for bad in BAD_CUSTOMER_REFS {
        let body = ChargePayment { customer_ref: bad.to_owned(), ..charge() };
        refused(Body::Command(Command::PaymentCharge(body)), "customer_ref");
        refused(
            Body::Transitioned(SagaTransitioned { customer_ref: bad.to_owned(), ..transitioned() }),
            "customer_ref",
        );
    }
}

#[test]
fn replies_are_checked() {
    refused(reply(Reply::business("")), "reason");
    refused(reply(Reply::transient("x".repeat(501))), "reason");
    accepted(reply(Reply::transient("é".repeat(500))));
    refused(reply(Reply::Succeeded { reference: Some("r".repeat(101)) }), "reference");
}

#[test]
fn lifecycle_events_are_checked() {
    refused(Body::Transitioned(SagaTransitioned { definition: String::new(), ..transitioned() }), "definition");
    refused(Body::Transitioned(SagaTransitioned { definition_version: 0, ..transitioned() }), "definition_version");
    refused(Body::Transitioned(SagaTransitioned { from: String::new(), ..transitioned() }), "from");
    refused(Body::Transitioned(SagaTransitioned { to: "X".repeat(33), ..transitioned() }), "to");
    refused(Body::Transitioned(SagaTransitioned { version: 0, ..transitioned() }), "version");
    refused(Body::Transitioned(SagaTransitioned { reason: Some("x".repeat(501)), ..transitioned() }), "reason");
}

#[test]
fn metadata_is_checked() {
    refused_with(Meta { step: 64, ..meta() }, Body::Start(StartSaga {}), "step");
    refused_with(Meta { attempt: 1001, ..meta() }, Body::Start(StartSaga {}), "attempt");
    Message::new(Meta { step: 63, attempt: 1000, ..meta() }, Body::Start(StartSaga {})).expect("bounds are valid");
}

#[test]
fn every_problem_is_reported_on_one_line() {
    let report = refused(reserve(vec![line("bad sku", 0), line("MUG-1", 10_001)]), "items[0].quantity");
    for path in ["items[0].quantity", "items[0].sku", "items[1].quantity"] {
        assert!(report.contains(&format!("{path}: ")), "{path} missing from {report:?}");
    }
    assert!(!report.contains('\n'), "{report:?}");
}

// Decoding.

/// The wire JSON of a valid message.
fn wire(body: Body) -> Value {
    serde_json::from_slice(&Message::new(meta(), body).unwrap().encode()).unwrap()
}

fn decode(envelope: &Value) -> Result<Message, DecodeError> {
    Message::decode(&serde_json::to_vec(envelope).unwrap())
}

#[test]
fn what_is_sent_decodes_to_the_same_message() {
    for body in every_body() {
        let message = Message::new(meta(), body).unwrap();
        let bytes = message.encode();
        assert_eq!(Message::decode(&bytes).unwrap(), message);
        // A redelivery, or a re-send after a crash, carries the same bytes and decodes to the same message.
        assert_eq!(message.clone().encode(), bytes);
        assert_eq!(Message::decode(&bytes).unwrap().encode(), bytes);
    }
}

#[test]
fn malformed_json_is_refused() {
    for bytes in [&b"{\"type\": "[..], b"not json", b"", b"[]", b"{\"message_id\": 1}", b"\xff\xfe"] {
        match Message::decode(bytes) {
            Err(DecodeError::Envelope(_)) => {}
            other => panic!("{:?}: expected an envelope error, got {other:?}", String::from_utf8_lossy(bytes)),
        }
    }
    let truncated = &Message::new(meta(), ship(address())).unwrap().encode()[..40];
    let error = Message::decode(truncated).unwrap_err();
    assert!(error.to_string().contains("truncated JSON at line 1"), "{error}");
}

#[test]
fn a_missing_envelope_field_is_named() {
    let mut envelope = wire(reserve(items()));
    envelope.as_object_mut().unwrap().remove("saga_id");
    let error = decode(&envelope).unwrap_err();
    assert!(matches!(error, DecodeError::Envelope(_)), "{error:?}");
    assert!(error.to_string().contains("missing field `saga_id`"), "{error}");
}

#[test]
fn unknown_types_are_refused() {
    let mut envelope = wire(reserve(items()));
    envelope["type"] = json!("inventory.teleport");
    match decode(&envelope) {
        Err(DecodeError::UnknownType(t)) => assert_eq!(t, "inventory.teleport"),
        other => panic!("expected UnknownType, got {other:?}"),
    }
}

#[test]
fn unsupported_versions_are_refused() {
    for info in TYPES {
        let body = every_body().into_iter().find(|b| b.message_type() == info.name).unwrap();
        let mut envelope = wire(body);
        assert!(info.oldest >= 1, "versions start at 1");
        for version in [0, info.oldest - 1, info.current + 1, u16::MAX] {
            envelope["schema_version"] = json!(version);
            match decode(&envelope) {
                Err(DecodeError::UnsupportedVersion { message_type, version: v, oldest, current }) => {
                    assert_eq!((message_type.as_str(), v), (info.name, version));
                    assert_eq!((oldest, current), (info.oldest, info.current));
                }
                other => panic!("{} v{version}: expected UnsupportedVersion, got {other:?}", info.name),
            }
        }
        envelope["schema_version"] = json!(info.current);
        decode(&envelope).unwrap_or_else(|e| panic!("{} v{}: {e}", info.name, info.current));
    }
}

#[track_caller]
fn payload_refused(envelope: &Value, path: &str) -> String {
    match decode(envelope) {
        Err(e @ DecodeError::Payload { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("at `{path}`")), "{text:?} does not name `{path}`");
            assert!(!text.contains("line 0"), "a payload error has no position in the bytes: {text:?}");
            text
        }
        other => panic!("expected a payload error at `{path}`, got {other:?}"),
    }
}

#[test]
fn payloads_of_the_wrong_shape_are_refused_with_the_path() {
    let envelope = wire(reserve(items()));

    let mut wrong = envelope.clone();
    wrong["payload"]["items"][1]["quantity"] = json!("three");
    payload_refused(&wrong, "items[1].quantity");

    let mut wrong = envelope.clone();
    wrong["payload"]["items"][0]["quantity"] = json!(-1);
    payload_refused(&wrong, "items[0].quantity");

    let mut wrong = envelope.clone();
    wrong["payload"]["items"][0].as_object_mut().unwrap().remove("quantity");
    let text = payload_refused(&wrong, "items[0]");
    assert!(text.contains("missing field `quantity`"), "{text}");

    let mut wrong = envelope.clone();
    wrong["payload"] = json!({ "items": "MUG-RED-350" });
    payload_refused(&wrong, "items");

    // The schema says a payload is an object; serde alone would take `[[...]]` for a struct.
    let mut wrong = envelope.clone();
    wrong["payload"] = json!([envelope["payload"]["items"]]);
    payload_refused(&wrong, ".");

    let mut wrong = wire(Body::Start(StartSaga {}));
    wrong["payload"] = json!(null);
    payload_refused(&wrong, ".");

    let mut wrong = wire(reply(Reply::ok()));
    wrong["payload"] = json!({ "outcome": "maybe" });
    payload_refused(&wrong, "outcome");
}

#[test]
fn payloads_that_break_a_rule_are_refused_with_the_path() {
    let mut envelope = wire(reserve(items()));
    envelope["payload"]["items"][1]["quantity"] = json!(0);
    match decode(&envelope) {
        Err(DecodeError::Invalid { message_type, report }) => {
            assert_eq!(message_type, "inventory.reserve");
            assert!(report.starts_with("items[1].quantity: "), "{report}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    let mut envelope = wire(reserve(items()));
    envelope["step"] = json!(64);
    assert!(matches!(decode(&envelope), Err(DecodeError::Invalid { report, .. }) if report.starts_with("step: ")));

    let mut envelope = wire(reply(Reply::business("declined")));
    envelope["payload"]["reason"] = json!("");
    assert!(matches!(decode(&envelope), Err(DecodeError::Invalid { report, .. }) if report.starts_with("reason: ")));
}

#[test]
fn errors_never_carry_personal_data() {
    let name = "Ada Lovelace of Example Street";
    let envelope = wire(ship(address()));
    let mut cases: Vec<(Value, &str)> = Vec::new();

    let mut long = envelope.clone();
    long["payload"]["address"]["name"] = json!(format!("{name} {}", "x".repeat(200)));
    cases.push((long, "address.name"));
    let mut country = envelope.clone();
    country["payload"]["address"]["country"] = json!(name);
    cases.push((country, "address.country"));
    let mut postal = envelope.clone();
    postal["payload"]["address"]["postal_code"] = json!(name);
    cases.push((postal, "address.postal_code"));
    let mut shape = envelope.clone();
    shape["payload"]["address"]["name"] = json!([name]);
    cases.push((shape, "address.name"));
    let mut kind = envelope.clone();
    kind["payload"]["address"] = json!(name);
    cases.push((kind, "address"));

    for (envelope, path) in cases {
        let error = decode(&envelope).expect_err(path);
        let text = format!("{error} {error:?}");
        assert!(text.contains(path), "{text}");
        for secret in [name, "Ada", "Lovelace"] {
            assert!(!text.contains(secret), "{path}: the error shows personal data: {text}");
        }
    }

    let mut empty = envelope.clone();
    empty["payload"]["address"]["name"] = json!("");
    let error = decode(&empty).unwrap_err();
    assert!(error.to_string().contains("address.name: length is lower than 1"), "{error}");

    // Malformed bytes around a name: the error gives a position, not the text.
    let mut bytes = serde_json::to_vec(&envelope).unwrap();
    let at = bytes.windows(12).position(|w| w == b"Ada Lovelace").unwrap();
    bytes.insert(at + 12, b'"');
    let error = Message::decode(&bytes).unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(text.contains("malformed JSON") && !text.contains("Lovelace"), "{text}");
}

#[test]
fn every_registered_type_reads_its_own_writing() {
    // The registry and the decoder agree: what `to_envelope` writes is a registered type at its current version.
    for body in every_body() {
        let envelope = Message::new(meta(), body).unwrap().to_envelope();
        let info = registry::find(&envelope.message_type).expect("registered");
        assert_eq!(envelope.schema_version, info.current);
        assert!(envelope.payload.is_object(), "{}", envelope.message_type);
    }
}

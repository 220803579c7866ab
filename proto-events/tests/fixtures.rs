//! Every version this build reads has a committed fixture under `proto-events/fixtures/`, a full wire
//! envelope named `<type>.v<version>.json`, and every fixture still decodes: old versions through their upcast,
//! the current one as the canonical wire form. A fixture is never edited once committed; when a type gets a
//! new version, the new version gets a new fixture and the old one stays to prove the upcast.

mod common;

use std::collections::BTreeSet;
use std::fs;

use serde_json::Value;

use proto_events::Message;
use proto_events::envelope::Envelope;
use proto_events::registry::{self, TYPES};

use common::{crate_dir, parse_file_name};

/// A committed fixture.
#[derive(Debug)]
struct Fixture {
    file_name: String,
    bytes: Vec<u8>,
}

impl Fixture {
    /// The type and version its name says, if it is named `<type>.v<version>.json`.
    fn named(&self) -> Option<(&str, u16)> {
        parse_file_name(&self.file_name)
    }

    fn decode(&self) -> Message {
        Message::decode(&self.bytes).unwrap_or_else(|e| panic!("{} does not decode: {e}", self.file_name))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", self.file_name))
    }
}

fn fixtures() -> Vec<Fixture> {
    let mut fixtures: Vec<Fixture> = fs::read_dir(crate_dir("fixtures"))
        .expect("read proto-events/fixtures")
        .map(|entry| {
            let path = entry.expect("list proto-events/fixtures").path();
            let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
            Fixture { file_name, bytes: fs::read(&path).expect("read a fixture") }
        })
        .collect();
    fixtures.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    assert!(!fixtures.is_empty(), "no fixtures found");
    fixtures
}

/// Every (type, version) this build reads.
fn registered_versions() -> BTreeSet<(String, u16)> {
    TYPES.iter().flat_map(|t| (t.oldest..=t.current).map(|v| (t.name.to_owned(), v))).collect()
}

#[test]
fn every_registered_version_has_a_fixture() {
    let present: BTreeSet<(String, u16)> =
        fixtures().iter().filter_map(|f| f.named()).map(|(name, v)| (name.to_owned(), v)).collect();
    let missing: Vec<String> =
        registered_versions().difference(&present).map(|(name, v)| format!("fixtures/{name}.v{v}.json")).collect();
    assert!(missing.is_empty(), "every version this build reads needs a fixture; missing:\n{}", missing.join("\n"));
}

#[test]
fn every_fixture_is_a_registered_type_and_version() {
    let registered = registered_versions();
    let unexpected: Vec<String> = fixtures()
        .into_iter()
        .filter(|f| f.named().is_none_or(|(name, v)| !registered.contains(&(name.to_owned(), v))))
        .map(|f| f.file_name)
        .collect();
    assert!(
        unexpected.is_empty(),
        "fixtures named for no type and version this build reads (delete them, or fix the registry): {unexpected:?}"
    );
}

#[test]
fn every_fixture_decodes_as_the_type_and_version_in_its_name() {
    for fixture in fixtures() {
        let Some((name, version)) = fixture.named() else { continue };
        let envelope: Envelope = serde_json::from_slice(&fixture.bytes)
            .unwrap_or_else(|e| panic!("{} is not an envelope: {e}", fixture.file_name));
        assert_eq!(envelope.message_type, name, "{}: `type`", fixture.file_name);
        assert_eq!(envelope.schema_version, version, "{}: `schema_version`", fixture.file_name);

        let message = fixture.decode();
        assert_eq!(message.body.message_type(), name, "{}: decoded type", fixture.file_name);
        assert_eq!(message.meta, envelope.meta, "{}: decoded metadata", fixture.file_name);
        // Decoding upcasts: what comes out is written as the current version.
        let current = registry::current_version(name).unwrap();
        assert_eq!(message.to_envelope().schema_version, current, "{}", fixture.file_name);
    }
}

#[test]
fn current_version_fixtures_are_exactly_what_this_build_writes() {
    // Catches a fixture field that decoding ignores (a misspelt optional field would silently vanish) and a
    // fixture that drifted from the wire form of its version.
    for fixture in fixtures() {
        let Some((name, version)) = fixture.named() else { continue };
        if registry::current_version(name) != Some(version) {
            continue;
        }
        let written = serde_json::to_value(fixture.decode().to_envelope()).unwrap();
        assert_eq!(written, fixture.json(), "{}: re-encoding changes it", fixture.file_name);
    }
}

#[test]
fn fixtures_round_trip_through_the_wire_form() {
    for fixture in fixtures() {
        let decoded = fixture.decode();
        let bytes = decoded.encode();
        let again = Message::decode(&bytes).unwrap_or_else(|e| panic!("{} re-encoded: {e}", fixture.file_name));
        assert_eq!(again, decoded, "{}: decode(encode(m)) != m", fixture.file_name);
        // A redelivery or a re-send of the same message carries the same bytes.
        assert_eq!(again.encode(), bytes, "{}: encoding is not stable", fixture.file_name);
    }
}

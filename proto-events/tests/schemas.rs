//! The JSON Schemas committed under `proto-events/schemas/` are the published wire contract. This test holds
//! them to the types: the schema generated from each registered type's current version must equal the file
//! `<type>.v<current>.json`, byte for byte, and so must the envelope's (`envelope.v<ENVELOPE_VERSION>.json`).
//!
//! A committed schema that no longer matches means a wire format changed without a version bump; the test
//! fails and never rewrites the file. With `UPDATE_SCHEMAS=1` it writes the files that are missing (a new
//! type, or a new version after a bump), and only those.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use schemars::Schema;
use serde_json::Value;

use proto_events::commands::SKU_PATTERN;
use proto_events::registry::{self, ENVELOPE_VERSION, TYPES, TypeInfo};

use common::parse_file_name;

/// The file name of the envelope's schema is `envelope.v<N>.json`.
const ENVELOPE: &str = "envelope";

fn schemas_dir() -> PathBuf {
    common::crate_dir("schemas")
}

fn update_requested() -> bool {
    std::env::var("UPDATE_SCHEMAS").is_ok_and(|v| v == "1")
}

/// `value` with the keys of every object in sorted order, whatever map serde_json was built with
/// (`preserve_order`, which another crate of the workspace may turn on, keeps insertion order).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let entries: BTreeMap<String, Value> = map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The committed text of a schema: pretty JSON, keys sorted, trailing newline.
fn canonical(schema: Schema) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(schema.to_value())).expect("schemas serialize");
    text.push('\n');
    text
}

/// Every schema this build generates: file name and canonical text.
fn generated() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> =
        TYPES.iter().map(|t| (format!("{}.v{}.json", t.name, t.current), canonical((t.schema)()))).collect();
    files.push((format!("{ENVELOPE}.v{ENVELOPE_VERSION}.json"), canonical(registry::envelope_schema())));
    files
}

/// What is wrong with the committed file `file_name` in `dir`, given the schema generated now. With `update`,
/// a missing file is written instead; a file that exists is never written.
fn check_one(dir: &Path, file_name: &str, generated: &str, update: bool) -> Option<String> {
    let path = dir.join(file_name);
    match fs::read_to_string(&path) {
        Ok(committed) if committed.replace("\r\n", "\n") == generated => None,
        Ok(committed) => Some(changed_without_bump(file_name, &committed, generated)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && update => {
            fs::create_dir_all(dir).expect("create the schemas directory");
            fs::write(&path, generated).expect("write a schema file");
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "{file_name} is not committed; run `UPDATE_SCHEMAS=1 cargo test -p proto-events --test schemas` to \
             write it, then commit it"
        )),
        Err(e) => Some(format!("{file_name} cannot be read: {e}")),
    }
}

fn changed_without_bump(file_name: &str, committed: &str, generated: &str) -> String {
    let (line, was, now) = committed
        .lines()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(generated.lines().map(Some).chain(std::iter::repeat(None)))
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i + 1, a.unwrap_or("<end of file>"), b.unwrap_or("<end of file>")))
        .unwrap_or((0, "", ""));
    let type_name = parse_file_name(file_name).map_or(file_name, |(name, _)| name);
    format!(
        "{file_name}: the committed schema differs from the one generated from the types (first difference at \
         line {line}: committed `{}`, generated `{}`). A committed schema is a published contract and is never \
         rewritten. Undo the change to the types, or publish it as a new version: bump `{type_name}`'s current \
         version in proto-events/src/registry.rs (the envelope's is ENVELOPE_VERSION), keep the old version \
         decodable with an upcast arm in `decode_body` (proto-events/src/message.rs), add a fixture \
         proto-events/fixtures/{type_name}.v<new>.json, and run `UPDATE_SCHEMAS=1 cargo test -p proto-events` \
         to write the new version's schema (see proto-events/schemas/README.md).",
        was.trim(),
        now.trim()
    )
}

/// The registered versions a schema file may exist for; for the envelope only the current one (the decoder
/// reads one envelope form).
fn supported_versions(name: &str) -> Option<std::ops::RangeInclusive<u16>> {
    if name == ENVELOPE {
        return Some(ENVELOPE_VERSION..=ENVELOPE_VERSION);
    }
    registry::find(name).map(|t| t.oldest..=t.current)
}

/// What is wrong with the files present in `dir`: schema files of types or versions this build does not
/// support, and anything that is not a schema or the README.
fn stale_files(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let entries = match fs::read_dir(dir) {
        // No files, none stale; `committed_schemas_match_the_types` reports the missing ones.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return problems,
        entries => entries.expect("read the schemas directory"),
    };
    for entry in entries {
        let file_name = entry.expect("list the schemas directory").file_name().to_string_lossy().into_owned();
        if file_name == "README.md" {
            continue;
        }
        match parse_file_name(&file_name) {
            None => problems.push(format!("{file_name} is not named `<type>.v<version>.json`")),
            Some((name, version)) => match supported_versions(name) {
                None => problems.push(format!("{file_name}: no type `{name}` is registered; delete the file")),
                Some(range) if !range.contains(&version) => problems.push(format!(
                    "{file_name}: this build supports `{name}` versions {} to {}; delete the file (or fix the \
                     registry)",
                    range.start(),
                    range.end()
                )),
                Some(_) => {}
            },
        }
    }
    problems.sort();
    problems
}

#[test]
fn committed_schemas_match_the_types() {
    let dir = schemas_dir();
    let update = update_requested();
    let problems: Vec<String> =
        generated().iter().filter_map(|(file_name, text)| check_one(&dir, file_name, text, update)).collect();
    assert!(problems.is_empty(), "{} schema problem(s):\n\n{}", problems.len(), problems.join("\n\n"));
}

#[test]
fn no_schema_file_outlives_its_type_or_version() {
    let problems = stale_files(&schemas_dir());
    assert!(problems.is_empty(), "stale schema files:\n{}", problems.join("\n"));
}

/// The schemas of older versions still decoded that are not in `dir`. The current version is checked by
/// `committed_schemas_match_the_types`; older ones cannot be regenerated (the build no longer has their
/// types) and live only in the repository.
fn missing_older_versions(dir: &Path, types: &[TypeInfo]) -> Vec<String> {
    types
        .iter()
        .flat_map(|info| (info.oldest..info.current).map(move |version| format!("{}.v{version}.json", info.name)))
        .filter(|file_name| !dir.join(file_name).is_file())
        .collect()
}

#[test]
fn every_older_version_still_decoded_keeps_its_schema() {
    let missing = missing_older_versions(&schemas_dir(), TYPES);
    assert!(
        missing.is_empty(),
        "schemas of versions this build still decodes are gone (restore them from git history): {missing:?}"
    );
}

// The checks themselves, on a scratch directory.

/// A fresh, empty directory under the system temp dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("proto-events-schemas-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a scratch directory");
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_changed_schema_fails_and_is_never_overwritten_even_when_updating() {
    let scratch = ScratchDir::new("changed");
    let (file_name, text) = &generated()[0];
    let edited = text.replacen("\"type\"", "\"kind\"", 1);
    assert_ne!(&edited, text);
    fs::write(scratch.0.join(file_name), &edited).unwrap();

    for update in [false, true] {
        let problem = check_one(&scratch.0, file_name, text, update).expect("a changed schema is a problem");
        let name = TYPES[0].name;
        assert!(problem.contains(&format!("bump `{name}`")), "{problem}");
        assert!(problem.contains("registry.rs") && problem.contains("decode_body"), "{problem}");
        assert!(problem.contains(&format!("fixtures/{name}.v<new>.json")), "{problem}");
        assert_eq!(fs::read_to_string(scratch.0.join(file_name)).unwrap(), edited, "file was rewritten");
    }
}

#[test]
fn a_missing_schema_fails_unless_updating_and_is_then_written() {
    let scratch = ScratchDir::new("missing");
    let (file_name, text) = &generated()[0];

    let problem = check_one(&scratch.0, file_name, text, false).expect("a missing schema is a problem");
    assert!(problem.contains("UPDATE_SCHEMAS=1"), "{problem}");
    assert!(!scratch.0.join(file_name).exists());

    assert_eq!(check_one(&scratch.0, file_name, text, true), None);
    assert_eq!(&fs::read_to_string(scratch.0.join(file_name)).unwrap(), text);
    assert_eq!(check_one(&scratch.0, file_name, text, false), None, "a written schema then matches");
}

#[test]
fn stale_files_are_reported() {
    let scratch = ScratchDir::new("stale");
    let current = registry::find("payment.charge").unwrap().current;
    for name in [
        "README.md".to_owned(),
        format!("payment.charge.v{current}.json"),
        format!("payment.charge.v{}.json", current + 1),
        "payment.charge.v0.json".to_owned(),
        "payment.teleport.v1.json".to_owned(),
        format!("envelope.v{}.json", ENVELOPE_VERSION + 1),
        "notes.txt".to_owned(),
    ] {
        fs::write(scratch.0.join(name), "{}\n").unwrap();
    }
    let problems = stale_files(&scratch.0);
    assert_eq!(problems.len(), 5, "{problems:#?}");
    for file_name in [
        format!("payment.charge.v{}.json", current + 1),
        "payment.charge.v0.json".to_owned(),
        "payment.teleport.v1.json".to_owned(),
        format!("envelope.v{}.json", ENVELOPE_VERSION + 1),
        "notes.txt".to_owned(),
    ] {
        assert!(problems.iter().any(|p| p.starts_with(&file_name)), "{file_name} not reported: {problems:#?}");
    }
}

#[test]
fn a_deleted_schema_of_an_older_version_is_reported() {
    let scratch = ScratchDir::new("older");
    let bumped = TypeInfo { name: "payment.charge", current: 3, oldest: 1, schema: TYPES[0].schema };
    fs::write(scratch.0.join("payment.charge.v1.json"), "{}\n").unwrap();
    assert_eq!(missing_older_versions(&scratch.0, &[bumped]), ["payment.charge.v2.json"]);
    fs::write(scratch.0.join("payment.charge.v2.json"), "{}\n").unwrap();
    assert!(missing_older_versions(&scratch.0, &[bumped]).is_empty());
}

#[test]
fn file_names_parse_into_type_and_version() {
    assert_eq!(parse_file_name("inventory.reserve.reply.v12.json"), Some(("inventory.reserve.reply", 12)));
    assert_eq!(parse_file_name("envelope.v1.json"), Some(("envelope", 1)));
    for bad in ["inventory.reserve.json", "inventory.reserve.v01.json", "x.v1.yaml", ".v1.json", "a.v+1.json"] {
        assert_eq!(parse_file_name(bad), None, "{bad}");
    }
}

#[test]
fn canonical_text_has_sorted_keys_and_a_trailing_newline() {
    let schema = Schema::try_from(serde_json::json!({ "b": { "z": 1, "a": [ { "y": 1, "x": 2 } ] }, "a": true }))
        .expect("an object is a schema");
    let text = canonical(schema);
    assert_eq!(
        text,
        "{\n  \"a\": true,\n  \"b\": {\n    \"a\": [\n      {\n        \"x\": 2,\n        \"y\": 1\n      }\n    ],\n    \
         \"z\": 1\n  }\n}\n"
    );
}

// What the schemas say: schemars must have picked up the garde rules (a schemars upgrade that stopped
// reading them would otherwise silently loosen the published contract).

fn schema_of(name: &str) -> Value {
    registry::find(name).map(|t| (t.schema)().to_value()).unwrap_or_else(|| panic!("{name} is registered"))
}

#[test]
fn schemas_carry_the_validation_rules() {
    let reserve = schema_of("inventory.reserve");
    let items = &reserve["properties"]["items"];
    assert_eq!((items["minItems"].as_u64(), items["maxItems"].as_u64()), (Some(1), Some(100)));
    let line = &reserve["$defs"]["Line"]["properties"];
    assert_eq!(line["sku"]["pattern"], SKU_PATTERN);
    assert_eq!((line["quantity"]["minimum"].as_u64(), line["quantity"]["maximum"].as_u64()), (Some(1), Some(10_000)));

    let charge = schema_of("payment.charge");
    assert_eq!(charge["properties"]["amount_cents"]["maximum"].as_i64(), Some(1_000_000_000_000));
    assert_eq!(charge["properties"]["customer_ref"]["pattern"], "^[0-9a-f]{32}$");

    let address = &schema_of("shipping.create")["$defs"]["Address"]["properties"];
    assert_eq!(address["name"]["minLength"].as_u64(), Some(1));
    assert_eq!(address["country"]["pattern"], "^[A-Z]{2}$");

    let reply = schema_of("payment.charge.reply");
    let failed = reply["oneOf"].as_array().unwrap().iter().find(|v| v["properties"]["outcome"]["const"] == "failed");
    assert_eq!(failed.unwrap()["properties"]["reason"]["minLength"].as_u64(), Some(1));

    let transitioned = schema_of("saga.transitioned");
    assert_eq!(transitioned["properties"]["customer_ref"]["pattern"], "^[0-9a-f]{32}$");
    assert_eq!(transitioned["properties"]["version"]["minimum"].as_u64(), Some(1));

    let envelope = registry::envelope_schema().to_value();
    assert_eq!(envelope["properties"]["step"]["maximum"].as_u64(), Some(63));
    assert_eq!(envelope["properties"]["payload"]["type"], "object");
}

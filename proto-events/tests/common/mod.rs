//! Helpers shared by the tests that read the committed files (`schemas/`, `fixtures/`).

use std::path::{Path, PathBuf};

/// `proto-events/<name>`.
pub fn crate_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Splits a file name such as `inventory.reserve.v2.json` into `("inventory.reserve", 2)`.
pub fn parse_file_name(file_name: &str) -> Option<(&str, u16)> {
    let stem = file_name.strip_suffix(".json")?;
    let (name, digits) = stem.rsplit_once(".v")?;
    let version: u16 = digits.parse().ok()?;
    // `01` or `+1` would parse, but are not the names the tests expect.
    (!name.is_empty() && version.to_string() == digits).then_some((name, version))
}

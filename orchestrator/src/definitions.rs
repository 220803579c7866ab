//! The saga definitions this orchestrator runs, validated at start-up.

use std::time::Duration;

use saga_defs::{Definition, order_fulfilment};

/// Every definition, by name and version.
#[derive(Debug, Clone)]
pub struct Definitions {
    all: Vec<Definition>,
}

impl Definitions {
    /// The built-in definitions, with `step_timeout` for every step; refuses an invalid one.
    pub fn builtin(step_timeout: Duration) -> Result<Self, saga_defs::definition::Error> {
        let all = vec![order_fulfilment(step_timeout)];
        for definition in &all {
            definition.validate()?;
        }
        Ok(Self { all })
    }

    /// The definition `name` at `version`.
    pub fn get(&self, name: &str, version: u32) -> Option<&Definition> {
        self.all.iter().find(|d| d.name == name && d.version == version)
    }

    /// Every definition.
    pub fn all(&self) -> &[Definition] {
        &self.all
    }

    /// The newest version of `name`, for new sagas.
    pub fn latest(&self, name: &str) -> Option<&Definition> {
        self.all.iter().filter(|d| d.name == name).max_by_key(|d| d.version)
    }
}

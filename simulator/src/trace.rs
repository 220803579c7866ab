//! What a seed did, as lines: every step's decision and outcome. All lines go into a digest (64-bit
//! FNV-1a, stable across platforms and Rust versions), so that two runs of a seed can be compared; the
//! last ones are kept to show what led to a failure. Sagas are named by the order they were first seen
//! in (`saga#3`), which keeps lines short and independent of ids.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// How many recent lines a failure report shows.
const TAIL: usize = 60;

/// The trace of one seed.
#[derive(Debug)]
pub struct Trace {
    digest: u64,
    lines: u64,
    tail: VecDeque<String>,
    sagas: BTreeMap<Uuid, usize>,
    start: DateTime<Utc>,
    echo: bool,
}

impl Trace {
    /// An empty trace of a run whose clock starts at `start`; with `echo`, every line is also printed to
    /// stderr (for replaying one seed).
    pub fn new(start: DateTime<Utc>, echo: bool) -> Self {
        Self { digest: 0xcbf2_9ce4_8422_2325, lines: 0, tail: VecDeque::new(), sagas: BTreeMap::new(), start, echo }
    }

    /// The saga's number: the order in which the trace first saw it.
    pub fn saga(&mut self, id: Uuid) -> usize {
        let next = self.sagas.len();
        *self.sagas.entry(id).or_insert(next)
    }

    /// The saga's number, if the trace has seen it.
    pub fn known(&self, id: Uuid) -> Option<usize> {
        self.sagas.get(&id).copied()
    }

    /// Records one line, stamped with the virtual time since the start.
    pub fn line(&mut self, now: DateTime<Utc>, text: &str) {
        let millis = (now - self.start).num_milliseconds();
        let line = format!("[{:>4}.{:03}s] {text}", millis / 1000, millis % 1000);
        for byte in line.as_bytes().iter().chain(b"\n") {
            self.digest = (self.digest ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.lines += 1;
        if self.echo {
            eprintln!("{line}");
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// The digest of every line so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// How many lines were recorded.
    pub fn len(&self) -> u64 {
        self.lines
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The most recent lines, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_depends_on_every_line_and_their_order() {
        let start = DateTime::UNIX_EPOCH;
        let digest = |lines: &[&str]| {
            let mut trace = Trace::new(start, false);
            for line in lines {
                trace.line(start, line);
            }
            trace.digest()
        };
        assert_eq!(digest(&["a", "b"]), digest(&["a", "b"]));
        assert_ne!(digest(&["a", "b"]), digest(&["b", "a"]));
        assert_ne!(digest(&["a", "b"]), digest(&["a", "b", "c"]));
        let mut trace = Trace::new(start, false);
        assert_eq!((trace.saga(Uuid::from_u128(9)), trace.saga(Uuid::from_u128(3))), (0, 1));
        assert_eq!(trace.saga(Uuid::from_u128(9)), 0);
    }
}

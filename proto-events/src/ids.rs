//! Ids of new orders and messages: UUIDv7 (time-ordered, random) in production; a seeded sequence on a
//! thread that asked for one, so that a deterministic simulation replays the same ids from the same seed.
//!
//! Every id the system mints goes through [`new_v7`] (message ids, order and correlation ids, the
//! reply's id in [`Meta::caused_by`](crate::Meta::caused_by)). The seeded sequence is thread-local: a
//! simulation runs all of its code on one thread (a current-thread runtime), and other threads, such as
//! parallel tests, keep their random ids. Nothing but a simulation should install one.

use std::cell::Cell;

use uuid::{Builder, Uuid};

thread_local! {
    static SEQUENCE: Cell<Option<Sequence>> = const { Cell::new(None) };
}

/// 2026-01-01T00:00:00Z in Unix milliseconds: where seeded ids' timestamps start.
const SEQUENCE_EPOCH_MS: u64 = 1_767_225_600_000;

/// A seeded id sequence: the UUIDv7 timestamp counts up by one millisecond per id (so ids sort in the
/// order they were minted, as real UUIDv7s do), the random bits come from SplitMix64.
#[derive(Debug, Clone, Copy)]
struct Sequence {
    minted: u64,
    state: u64,
}

impl Sequence {
    fn next(&mut self) -> Uuid {
        self.minted += 1;
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let mut random = [0_u8; 10];
        random[..8].copy_from_slice(&z.to_le_bytes());
        random[8..].copy_from_slice(&self.minted.to_le_bytes()[..2]);
        Builder::from_unix_timestamp_millis(SEQUENCE_EPOCH_MS + self.minted, &random).into_uuid()
    }
}

/// A new id: from this thread's seeded sequence if one is installed ([`seeded`]), else [`Uuid::now_v7`].
pub fn new_v7() -> Uuid {
    SEQUENCE.with(|cell| match cell.get() {
        Some(mut sequence) => {
            let id = sequence.next();
            cell.set(Some(sequence));
            id
        }
        None => Uuid::now_v7(),
    })
}

/// Makes [`new_v7`] on this thread return the sequence of `seed` until the guard is dropped (which
/// restores whatever was installed before).
pub fn seeded(seed: u64) -> SeededIds {
    let previous = SEQUENCE.with(|cell| cell.replace(Some(Sequence { minted: 0, state: seed })));
    SeededIds { previous, _not_send: std::marker::PhantomData }
}

/// Keeps a seeded id sequence installed on this thread; see [`seeded`].
#[derive(Debug)]
#[must_use = "the seeded sequence is uninstalled when the guard is dropped"]
pub struct SeededIds {
    previous: Option<Sequence>,
    /// The guard belongs to the thread whose sequence it installed.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for SeededIds {
    fn drop(&mut self) {
        SEQUENCE.with(|cell| cell.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_sorted_v7_ids_and_the_guard_restores_random_ones() {
        let first: Vec<Uuid> = {
            let _ids = seeded(42);
            (0..5).map(|_| new_v7()).collect()
        };
        let again: Vec<Uuid> = {
            let _ids = seeded(42);
            (0..5).map(|_| new_v7()).collect()
        };
        assert_eq!(first, again);
        assert!(first.windows(2).all(|w| w[0] < w[1]), "seeded ids sort in minting order");
        assert!(first.iter().all(|id| id.get_version_num() == 7));
        let other: Vec<Uuid> = {
            let _ids = seeded(43);
            (0..5).map(|_| new_v7()).collect()
        };
        assert_ne!(first, other);
        let random = new_v7();
        assert!(!first.contains(&random) && random.get_version_num() == 7);
    }

    #[test]
    fn another_thread_keeps_random_ids() {
        let _ids = seeded(7);
        let mine = new_v7();
        let theirs = std::thread::spawn(new_v7).join().expect("the thread runs");
        let _again = seeded(7);
        assert_eq!(new_v7(), mine);
        assert_ne!(theirs, mine);
    }
}

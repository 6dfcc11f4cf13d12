//! Replay protection: each authenticated packet is remembered for twice the packet-age window.
//!
//! A packet older than the window is refused by its timestamp anyway, so an entry can be
//! forgotten once `2 × max_packet_age` has passed since it was stored (the factor covers
//! timestamps from the future). The key is SHA-256 of the wire text, as fwknopd's digest cache
//! uses; since our base64 is strict, one ciphertext has one wire text.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest as _, Sha256};

/// SHA-256 of a packet's wire text.
pub type ReplayKey = [u8; 32];

/// Computes the replay key of a payload.
pub fn replay_key(payload: &[u8]) -> ReplayKey {
    Sha256::digest(payload).into()
}

/// The result of recording a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// First time seen: recorded.
    New,
    /// Already recorded and still live: a replay.
    Seen,
    /// The store is full of live entries; the packet cannot be recorded.
    Full,
    /// The store could not make the record durable (its journal cannot be written): the
    /// packet must be refused, or after a restart it could be accepted a second time.
    Unwritable,
}

/// Where the verifier remembers packets. The daemon may persist or share it; the engine only
/// asks and records.
pub trait ReplayStore {
    /// Whether `key` was recorded and has not expired at `now`.
    fn contains(&self, key: &ReplayKey, now: u64) -> bool;
    /// Records `key` at `now` unless it is live already.
    fn insert(&mut self, key: ReplayKey, now: u64) -> Insert;
}

/// A bounded in-memory store: a hash map plus a FIFO of insertion times, so expiry is O(1)
/// amortised and memory never exceeds `capacity` entries.
#[derive(Debug)]
pub struct MemoryReplayStore {
    ttl: u64,
    capacity: usize,
    map: HashMap<ReplayKey, u64>,
    order: VecDeque<(u64, ReplayKey)>,
}

impl MemoryReplayStore {
    /// A store whose entries live `ttl` seconds (use `2 × max_packet_age`), holding at most
    /// `capacity` of them.
    pub fn new(ttl: u64, capacity: usize) -> Self {
        Self { ttl, capacity, map: HashMap::new(), order: VecDeque::new() }
    }

    /// Drops entries recorded more than `ttl` seconds before `now`.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(at, key)) = self.order.front() {
            if at.saturating_add(self.ttl) > now {
                break;
            }
            self.order.pop_front();
            if self.map.get(&key) == Some(&at) {
                self.map.remove(&key);
            }
        }
    }

    /// Live entries and the time each was recorded, oldest first, for persistence.
    pub fn entries(&self) -> impl Iterator<Item = (&ReplayKey, u64)> + '_ {
        self.order.iter().filter(|(at, k)| self.map.get(k) == Some(at)).map(|(at, k)| (k, *at))
    }

    /// Number of live entries (after the last expiry).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Restores an entry recorded at `at` (loading persisted state); expired ones are skipped.
    pub fn restore(&mut self, key: ReplayKey, at: u64, now: u64) -> Insert {
        if at.saturating_add(self.ttl) <= now {
            return Insert::New;
        }
        self.record(key, at)
    }

    fn record(&mut self, key: ReplayKey, at: u64) -> Insert {
        if self.map.contains_key(&key) {
            return Insert::Seen;
        }
        if self.map.len() >= self.capacity {
            return Insert::Full;
        }
        self.map.insert(key, at);
        self.order.push_back((at, key));
        Insert::New
    }
}

impl ReplayStore for MemoryReplayStore {
    fn contains(&self, key: &ReplayKey, now: u64) -> bool {
        self.map.get(key).is_some_and(|&at| at.saturating_add(self.ttl) > now)
    }

    fn insert(&mut self, key: ReplayKey, now: u64) -> Insert {
        self.expire(now);
        self.record(key, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_ttl_then_forgets() {
        let mut s = MemoryReplayStore::new(240, 10);
        let k = replay_key(b"packet");
        assert_eq!(s.insert(k, 1000), Insert::New);
        assert!(s.contains(&k, 1239));
        assert_eq!(s.insert(k, 1239), Insert::Seen);
        assert!(!s.contains(&k, 1240));
        assert_eq!(s.insert(k, 1240), Insert::New);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn bounded() {
        let mut s = MemoryReplayStore::new(100, 3);
        for i in 0..3u8 {
            assert_eq!(s.insert([i; 32], 10), Insert::New);
        }
        assert_eq!(s.insert([9; 32], 10), Insert::Full);
        // Once old entries expire there is room again.
        assert_eq!(s.insert([9; 32], 110), Insert::New);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn restore_and_entries() {
        let mut s = MemoryReplayStore::new(100, 10);
        s.restore([1; 32], 50, 120);
        s.restore([2; 32], 10, 120); // expired: skipped
        let e: Vec<_> = s.entries().map(|(k, at)| (k[0], at)).collect();
        assert_eq!(e, vec![(1, 50)]);
        assert!(s.contains(&[1; 32], 120));
    }
}

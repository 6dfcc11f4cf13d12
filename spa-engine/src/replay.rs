//! Replay protection: each authenticated packet is remembered for twice the packet-age window.
//!
//! A packet older than the window is refused by its timestamp anyway, so an entry can be
//! forgotten once `2 × max_packet_age` has passed since it was stored (the factor covers
//! timestamps from the future). The key is SHA-256 of the wire text, as fwknopd's digest cache
//! uses; since our base64 is strict, one ciphertext has one wire text.
//!
//! The memory store keeps the first 128 bits of the key and a 32-bit time: 20 bytes an entry,
//! so a million remembered packets fit in about 25 MiB. 128 bits leave no practical collision:
//! finding a packet whose key collides with another *given* packet takes about 2^128 work, and a
//! collision between two packets of one sender only makes that sender's own packet a replay.

use std::collections::HashMap;

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
    /// The store shared with other gateways could not answer in time, and the daemon fails
    /// closed: the packet must be refused, or it could be replayed against another gateway.
    Unavailable,
}

/// Where the verifier remembers packets. The daemon may persist or share it; the engine only
/// asks and records.
pub trait ReplayStore {
    /// Whether `key` was recorded and has not expired at `now`.
    fn contains(&self, key: &ReplayKey, now: u64) -> bool;
    /// Records `key` at `now` unless it is live already.
    fn insert(&mut self, key: ReplayKey, now: u64) -> Insert;
}

/// The part of a key the memory store keeps (see the module documentation).
pub type StoredKey = [u8; 16];

/// The stored part of a key (its first 128 bits).
pub fn stored_key(key: &ReplayKey) -> StoredKey {
    let mut k = [0u8; 16];
    k.copy_from_slice(&key[..16]);
    k
}

/// A bounded in-memory store: one hash map from the stored key to the time it was recorded.
/// Expired entries are swept out every quarter of the TTL (and before refusing for lack of
/// room), so memory never exceeds `capacity` entries and no second copy of the keys is kept.
#[derive(Debug)]
pub struct MemoryReplayStore {
    ttl: u64,
    capacity: usize,
    map: HashMap<StoredKey, u32>,
    next_sweep: u64,
}

/// Unix seconds as stored (valid until 2106; later times saturate, which only keeps entries
/// longer).
fn t32(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

impl MemoryReplayStore {
    /// A store whose entries live `ttl` seconds (use `2 × max_packet_age`), holding at most
    /// `capacity` of them.
    pub fn new(ttl: u64, capacity: usize) -> Self {
        Self { ttl, capacity, map: HashMap::new(), next_sweep: 0 }
    }

    fn live(&self, at: u32, now: u64) -> bool {
        u64::from(at).saturating_add(self.ttl) > now
    }

    /// Drops entries recorded more than `ttl` seconds before `now`.
    pub fn expire(&mut self, now: u64) {
        let ttl = self.ttl;
        self.map.retain(|_, at| u64::from(*at).saturating_add(ttl) > now);
        self.next_sweep = now.saturating_add((ttl / 4).max(1));
    }

    /// Live entries and the time each was recorded, in no order, for persistence.
    pub fn entries(&self) -> impl Iterator<Item = (&StoredKey, u64)> + '_ {
        self.map.iter().map(|(k, at)| (k, u64::from(*at)))
    }

    /// Number of entries (expired ones may remain until the next sweep).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Restores an entry recorded at `at` (loading persisted state); expired ones are skipped.
    pub fn restore(&mut self, key: StoredKey, at: u64, now: u64) -> Insert {
        if at.saturating_add(self.ttl) <= now {
            return Insert::New;
        }
        self.record(key, at, now)
    }

    fn record(&mut self, key: StoredKey, at: u64, now: u64) -> Insert {
        if let Some(&old) = self.map.get(&key)
            && self.live(old, now)
        {
            return Insert::Seen;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            self.expire(now);
            if self.map.len() >= self.capacity {
                return Insert::Full;
            }
        }
        self.map.insert(key, t32(at));
        Insert::New
    }
}

impl ReplayStore for MemoryReplayStore {
    fn contains(&self, key: &ReplayKey, now: u64) -> bool {
        self.map.get(&stored_key(key)).is_some_and(|&at| self.live(at, now))
    }

    fn insert(&mut self, key: ReplayKey, now: u64) -> Insert {
        if now >= self.next_sweep {
            self.expire(now);
        }
        self.record(stored_key(&key), now, now)
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
        s.restore([1; 16], 50, 120);
        s.restore([2; 16], 10, 120); // expired: skipped
        let e: Vec<_> = s.entries().map(|(k, at)| (k[0], at)).collect();
        assert_eq!(e, vec![(1, 50)]);
        assert!(s.contains(&[1; 32], 120));
    }

    #[test]
    fn expired_entries_are_swept_without_a_second_copy() {
        let mut s = MemoryReplayStore::new(100, 1000);
        for i in 0..500u16 {
            let mut k = [0u8; 32];
            k[..2].copy_from_slice(&i.to_be_bytes());
            assert_eq!(s.insert(k, 1000), Insert::New);
        }
        assert_eq!(s.len(), 500);
        // A quarter of the TTL after the entries expired, the next insert sweeps them.
        s.insert([9; 32], 1125);
        assert_eq!(s.len(), 1);
    }
}

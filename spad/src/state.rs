//! What survives a restart, in `state_dir`: the grants we made and the packets we have seen.
//!
//! Both are append-only journals, compacted when loaded: `grants.jsonl` holds `put`/`del`
//! records, `replay.log` holds `<sha256-hex> <unix-time>` lines. A record is written (not yet
//! fsynced) before the firewall is changed, so even `kill -9` right after loses nothing; the
//! journals are fsynced at most once a second, off the packet path.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spa_backends::{Grant, GrantId};
use spa_engine::replay::{Insert, MemoryReplayStore, ReplayKey, ReplayStore};

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory could not be created.
    #[error("cannot create state directory {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    /// A journal could not be opened, read or written.
    #[error("cannot use journal {0}")]
    Journal(PathBuf, #[source] std::io::Error),
}

/// An append-only file that is fsynced lazily.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    dirty: bool,
}

impl Journal {
    /// Rewrites `path` atomically with `lines`, then opens it for appending.
    fn rewrite(path: &Path, lines: impl Iterator<Item = String>) -> Result<Self, StateError> {
        let err = |e| StateError::Journal(path.to_owned(), e);
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp).map_err(err)?;
            for l in lines {
                writeln!(f, "{l}").map_err(err)?;
            }
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)?;
        let file = OpenOptions::new().append(true).open(path).map_err(err)?;
        Ok(Self { path: path.to_owned(), file, dirty: false })
    }

    /// Appends one line (written to the kernel at once; fsynced by [`Journal::sync`]).
    pub fn append(&mut self, line: &str) -> Result<(), StateError> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.file.write_all(&buf).map_err(|e| StateError::Journal(self.path.clone(), e))?;
        self.dirty = true;
        Ok(())
    }

    /// fsyncs if anything was appended since the last call.
    pub fn sync(&mut self) -> Result<(), StateError> {
        if self.dirty {
            self.file.sync_data().map_err(|e| StateError::Journal(self.path.clone(), e))?;
            self.dirty = false;
        }
        Ok(())
    }
}

fn read_lines(path: &Path) -> Result<Vec<String>, StateError> {
    match File::open(path) {
        Ok(f) => BufReader::new(f)
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StateError::Journal(path.to_owned(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StateError::Journal(path.to_owned(), e)),
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum GrantRecord {
    Put { grant: Grant },
    Del { id: GrantId },
}

/// The journal of grants.
#[derive(Debug)]
pub struct GrantStore {
    journal: Journal,
}

impl GrantStore {
    /// Opens `dir/grants.jsonl`, returning the grants it records (compacted). Lines that do not
    /// parse (a torn last write) are skipped with a warning.
    pub fn open(dir: &Path) -> Result<(Self, BTreeMap<GrantId, Grant>), StateError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::CreateDir(dir.to_owned(), e))?;
        let path = dir.join("grants.jsonl");
        let mut grants = BTreeMap::new();
        for (n, line) in read_lines(&path)?.iter().enumerate() {
            match serde_json::from_str::<GrantRecord>(line) {
                Ok(GrantRecord::Put { grant }) => {
                    grants.insert(grant.id, grant);
                }
                Ok(GrantRecord::Del { id }) => {
                    grants.remove(&id);
                }
                Err(e) => tracing::warn!("{}:{}: skipping unreadable record: {e}", path.display(), n + 1),
            }
        }
        let journal = Journal::rewrite(
            &path,
            grants
                .values()
                .filter_map(|g| serde_json::to_string(&GrantRecord::Put { grant: g.clone() }).ok()),
        )?;
        Ok((Self { journal }, grants))
    }

    /// Records a new or extended grant.
    pub fn put(&mut self, grant: &Grant) -> Result<(), StateError> {
        let line = serde_json::to_string(&GrantRecord::Put { grant: grant.clone() }).unwrap_or_default();
        self.journal.append(&line)
    }

    /// Records that a grant ended.
    pub fn del(&mut self, id: GrantId) -> Result<(), StateError> {
        let line = serde_json::to_string(&GrantRecord::Del { id }).unwrap_or_default();
        self.journal.append(&line)
    }

    /// fsyncs pending records.
    pub fn sync(&mut self) -> Result<(), StateError> {
        self.journal.sync()
    }
}

/// Reads the live grants recorded in `dir` without opening the journal for writing (for
/// `spad list`).
pub fn read_grants(dir: &Path) -> Result<Vec<Grant>, StateError> {
    let path = dir.join("grants.jsonl");
    let mut grants = BTreeMap::new();
    for line in read_lines(&path)? {
        match serde_json::from_str::<GrantRecord>(&line) {
            Ok(GrantRecord::Put { grant }) => {
                grants.insert(grant.id, grant);
            }
            Ok(GrantRecord::Del { id }) => {
                grants.remove(&id);
            }
            Err(_) => {}
        }
    }
    Ok(grants.into_values().collect())
}

fn hex(k: &ReplayKey) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<ReplayKey> {
    if s.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

/// The replay store, journaled so a packet seen before a restart is still refused after it.
#[derive(Debug)]
pub struct PersistentReplay {
    store: MemoryReplayStore,
    journal: Journal,
}

impl PersistentReplay {
    /// Loads `dir/replay.log`, dropping expired entries.
    pub fn open(dir: &Path, ttl: u64, capacity: usize, now: u64) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::CreateDir(dir.to_owned(), e))?;
        let path = dir.join("replay.log");
        let mut store = MemoryReplayStore::new(ttl, capacity);
        for line in read_lines(&path)? {
            let mut it = line.split_whitespace();
            if let (Some(k), Some(t)) = (it.next().and_then(unhex), it.next().and_then(|t| t.parse().ok())) {
                store.restore(k, t, now);
            }
        }
        let journal = Journal::rewrite(&path, store.entries().map(|(k, at)| format!("{} {at}", hex(k))))?;
        Ok(Self { store, journal })
    }

    /// fsyncs pending records.
    pub fn sync(&mut self) -> Result<(), StateError> {
        self.journal.sync()
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// True when no packet is remembered.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

impl ReplayStore for PersistentReplay {
    fn contains(&self, key: &ReplayKey, now: u64) -> bool {
        self.store.contains(key, now)
    }

    fn insert(&mut self, key: ReplayKey, now: u64) -> Insert {
        let r = self.store.insert(key, now);
        if r == Insert::New
            && let Err(e) = self.journal.append(&format!("{} {now}", hex(&key)))
        {
            tracing::error!("{}", crate::config::error_chain(&e));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::Access;

    fn grant(id: u64) -> Grant {
        Grant {
            id: GrantId(id),
            source: "192.0.2.1".parse().unwrap(),
            packet_source: "192.0.2.1".parse().unwrap(),
            destination: None,
            access: Access::Ports(vec!["tcp/22".parse().unwrap()]),
            nat: None,
            created: 1,
            deadline: 100,
            stanza: "s".into(),
            username: "u".into(),
        }
    }

    #[test]
    fn grants_survive_reopen_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, g) = GrantStore::open(dir.path()).unwrap();
            assert!(g.is_empty());
            s.put(&grant(1)).unwrap();
            s.put(&grant(2)).unwrap();
            s.del(GrantId(1)).unwrap();
            let mut g2 = grant(2);
            g2.deadline = 200;
            s.put(&g2).unwrap();
        }
        // A torn final line, as after a crash mid-write.
        let mut f = OpenOptions::new().append(true).open(dir.path().join("grants.jsonl")).unwrap();
        f.write_all(b"{\"op\":\"put\",\"gra").unwrap();
        let (_, g) = GrantStore::open(dir.path()).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[&GrantId(2)].deadline, 200);
        assert_eq!(read_grants(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn replay_survives_reopen_until_ttl() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut r = PersistentReplay::open(dir.path(), 240, 10, 1000).unwrap();
            assert_eq!(r.insert([7; 32], 1000), Insert::New);
        }
        let mut r = PersistentReplay::open(dir.path(), 240, 10, 1100).unwrap();
        assert!(r.contains(&[7; 32], 1100));
        assert_eq!(r.insert([7; 32], 1100), Insert::Seen);
        let r = PersistentReplay::open(dir.path(), 240, 10, 1300).unwrap();
        assert_eq!(r.len(), 0);
    }
}

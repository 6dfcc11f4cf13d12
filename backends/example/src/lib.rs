//! The `example-file` backend: each granted source and port is a line of a text file, for a
//! program of your own that reads it (a proxy's allow list, say). It is the complete example
//! of `backends/README.md`: what to implement, how to register it, how to test it.
//!
//! # What it creates
//!
//! One file, `path` in `[firewall.example-file]`, rewritten atomically (a temporary file
//! renamed over it) at every change. Each line is `<source> <proto>/<port> until <unix time>
//! grant <id>`, sorted. Nothing else is touched.
//!
//! # Inspecting and removing it by hand
//!
//! ```text
//! cat /run/spa/allowed        # what is granted
//! rm /run/spa/allowed         # removes every grant (spad notices and writes it again)
//! ```
//!
//! Entries do not expire by themselves (a file has no timers): the ledger removes each line
//! at its grant's deadline, and retries while it cannot.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use spa_backends::{
    Access, Backend, BackendDescriptor, BackendError, Capabilities, Change, Entry, Grant, GrantId, Health,
    Held, Observed, ProtoPort,
};

// Registration: the daemon finds the backend by this name. (A binary links it only when it
// names the crate: see the README.)
inventory::submit! {
    BackendDescriptor {
        name: "example-file",
        description: "example: grants as lines of a file",
        create: spa_backends::create::<FileBackend>,
        preflight: None,
    }
}

/// One line: a source and a port. Typed, so nothing but addresses and numbers reach the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Line {
    /// Who.
    pub source: IpAddr,
    /// What.
    pub port: ProtoPort,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.source, self.port)
    }
}

impl Entry for Line {
    // A line is its own identity: two grants asking for the same source and port share it.
    type Slot = Line;

    fn slot(&self) -> Line {
        *self
    }

    fn expires_by_itself(&self) -> bool {
        false
    }
}

/// `[firewall.example-file]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: PathBuf,
}

/// The backend: the file's path and what it holds.
#[derive(Debug)]
pub struct FileBackend {
    path: PathBuf,
    lines: BTreeMap<Line, (GrantId, u64)>,
}

impl FileBackend {
    fn write(&self) -> Result<(), BackendError> {
        let io = |e| BackendError::Other(format!("{}: {e}", self.path.display()));
        let tmp = self.path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io)?;
        for (line, (id, until)) in &self.lines {
            writeln!(f, "{line} until {until} grant {id}").map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

impl Backend for FileBackend {
    type Entry = Line;

    fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
        let c: Config = table.clone().try_into().map_err(BackendError::Config)?;
        if !c.path.is_absolute() {
            return Err(BackendError::Invalid(format!("path {:?} must be absolute", c.path)));
        }
        Ok(Self { path: c.path, lines: BTreeMap::new() })
    }

    fn name(&self) -> &'static str {
        "example-file"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            nat: false,
            ipv6: true,
            native_expiry: false,
            exact_prepare: true,
            atomic_apply: true,
            source_port: false,
        }
    }

    fn entries(&self, grant: &Grant) -> Result<Vec<Line>, BackendError> {
        if grant.nat.is_some() {
            return Err(BackendError::Unsupported("nat"));
        }
        if grant.source_port.is_some() {
            // A line names the whole address: never widen a source-port grant to it.
            return Err(BackendError::Unsupported("a source port"));
        }
        match &grant.access {
            Access::All => Err(BackendError::Unsupported("forward-all")),
            Access::Ports(ports) => {
                Ok(ports.iter().map(|p| Line { source: grant.source, port: *p }).collect())
            }
        }
    }

    fn prepare(&mut self, live: &[Held<'_, Line>], _now: u64) -> Result<(), BackendError> {
        self.lines = live.iter().map(|h| (*h.entry, (h.holder.id, h.until))).collect();
        self.write()
    }

    fn apply(&mut self, changes: &[Change<'_, Line>], _now: u64) -> Result<(), BackendError> {
        let before = self.lines.clone();
        for c in changes {
            match c {
                Change::Put { new, .. } => {
                    self.lines.insert(*new.entry, (new.holder.id, new.until));
                }
                Change::Remove { old } => {
                    self.lines.remove(old.entry);
                }
            }
        }
        // All or nothing: the file is replaced whole, or we keep what it held.
        self.write().inspect_err(|_| self.lines = before)
    }

    fn check(&mut self, _now: u64) -> Result<Health, BackendError> {
        Ok(if self.path.exists() {
            Health::Intact
        } else {
            Health::Damaged(format!("{} is gone", self.path.display()))
        })
    }

    fn observe(&mut self, _now: u64) -> Result<Vec<Observed>, BackendError> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let [source, port, "until", until, "grant", id] = w[..] else { return None };
                Some(Observed {
                    entry: format!("{source} {port}"),
                    holder: u64::from_str_radix(id, 16).ok().map(GrantId),
                    until: until.parse().ok(),
                })
            })
            .collect())
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.lines.clear();
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(BackendError::Other(format!("{}: {e}", self.path.display())))
            }
            _ => Ok(()),
        }
    }
}

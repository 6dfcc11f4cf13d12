//! The `none` backend: accepts every change and changes nothing.
//!
//! For `spad --test`, dry runs and tests of the daemon itself. It creates nothing in any
//! firewall, so there is nothing to inspect or remove by hand; it remembers the entries it was
//! given in memory, so `spad list --firewall` on a dry run still shows what would be open.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::{Access, Backend, BackendError, Capabilities, Change, Entry, Grant, Health, Held, Nat, Observed};

/// What the `none` backend "opens" for a grant: the whole access, as one entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NoneEntry {
    source: IpAddr,
    source_port: Option<u16>,
    destination: Option<IpAddr>,
    access: String,
    nat: Option<String>,
}

impl fmt::Display for NoneEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(p) = self.source_port {
            write!(f, " sport {p}")?;
        }
        write!(f, " {}", self.access)?;
        if let Some(d) = self.destination {
            write!(f, " to {d}")?;
        }
        if let Some(n) = &self.nat {
            write!(f, " nat {n}")?;
        }
        Ok(())
    }
}

impl Entry for NoneEntry {
    type Slot = Self;

    fn slot(&self) -> Self {
        self.clone()
    }

    fn expires_by_itself(&self) -> bool {
        false
    }
}

/// A backend that records entries in memory only.
#[derive(Debug, Default)]
pub struct NoneBackend {
    held: BTreeMap<NoneEntry, (crate::GrantId, u64)>,
}

impl Backend for NoneBackend {
    type Entry = NoneEntry;

    fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
        if let Some(key) = table.keys().next() {
            return Err(BackendError::Invalid(format!("the none backend takes no options (got {key:?})")));
        }
        Ok(Self::default())
    }

    fn name(&self) -> &'static str {
        "none"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            nat: true,
            ipv6: true,
            native_expiry: false,
            exact_prepare: true,
            atomic_apply: true,
            source_port: true,
        }
    }

    fn entries(&self, g: &Grant) -> Result<Vec<NoneEntry>, BackendError> {
        let access = match &g.access {
            Access::All => "all".to_owned(),
            a => a.to_string(),
        };
        let nat = g.nat.as_deref().map(|n: &Nat| serde_json::to_string(n).unwrap_or_default());
        Ok(vec![NoneEntry {
            source: g.source,
            source_port: g.source_port,
            destination: g.destination,
            access,
            nat,
        }])
    }

    fn prepare(&mut self, live: &[Held<'_, NoneEntry>], _now: u64) -> Result<(), BackendError> {
        self.held = live.iter().map(|h| (h.entry.clone(), (h.holder.id, h.until))).collect();
        Ok(())
    }

    fn apply(&mut self, changes: &[Change<'_, NoneEntry>], _now: u64) -> Result<(), BackendError> {
        for c in changes {
            match c {
                Change::Put { new, .. } => {
                    self.held.insert(new.entry.clone(), (new.holder.id, new.until));
                }
                Change::Remove { old } => {
                    self.held.remove(old.entry);
                }
            }
        }
        Ok(())
    }

    fn check(&mut self, _now: u64) -> Result<Health, BackendError> {
        Ok(Health::Intact)
    }

    fn observe(&mut self, _now: u64) -> Result<Vec<Observed>, BackendError> {
        Ok(self
            .held
            .iter()
            .map(|(e, (id, until))| Observed { entry: e.to_string(), holder: Some(*id), until: Some(*until) })
            .collect())
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.held.clear();
        Ok(())
    }
}

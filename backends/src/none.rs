//! The `none` backend: accepts every call and changes nothing.
//!
//! For `spad --test`, dry runs and tests of the daemon itself. It creates nothing in any
//! firewall, so there is nothing to inspect or remove by hand; `list` reports the grants it was
//! given so a dry run still shows what would be open.

use std::collections::BTreeMap;

use crate::{Backend, BackendError, Capabilities, Grant, GrantId, Owned};

/// A backend that records grants in memory only.
#[derive(Debug, Default)]
pub struct NoneBackend {
    grants: BTreeMap<GrantId, Grant>,
}

impl NoneBackend {
    /// Builds it; it takes no options.
    pub fn from_table(table: &toml::Table) -> Result<Box<dyn Backend>, BackendError> {
        if let Some(key) = table.keys().next() {
            return Err(BackendError::Invalid(format!("the none backend takes no options (got {key:?})")));
        }
        Ok(Box::new(Self::default()))
    }
}

impl Backend for NoneBackend {
    fn name(&self) -> &str {
        "none"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { nat: true, ipv6: true, native_expiry: false }
    }

    fn prepare(&mut self, live: &[Grant]) -> Result<(), BackendError> {
        self.grants = live.iter().map(|g| (g.id, g.clone())).collect();
        Ok(())
    }

    fn grant(&mut self, grant: &Grant) -> Result<(), BackendError> {
        self.grants.insert(grant.id, grant.clone());
        Ok(())
    }

    fn revoke(&mut self, grant: &Grant) -> Result<(), BackendError> {
        self.grants.remove(&grant.id);
        Ok(())
    }

    fn list(&mut self) -> Result<Vec<Owned>, BackendError> {
        Ok(self
            .grants
            .values()
            .map(|g| Owned {
                id: Some(g.id),
                entry: format!("{} {}", g.source, g.access),
                deadline: Some(g.deadline),
            })
            .collect())
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.grants.clear();
        Ok(())
    }
}

//! The seam between deciding and enforcing: what a grant is, what a firewall backend must do
//! with it, and how a build says which backends it contains.
//!
//! The daemon turns an accepted packet into a [`Grant`] (addresses resolved, deadline fixed)
//! and hands it to one backend worker thread, which calls a [`Backend`]. Backends live in their
//! own crates and register a [`BackendDescriptor`] with `inventory`; the daemon links them
//! through cargo features and builds a [`Registry`] once at start, refusing duplicate names.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use spa_engine::{Access, Proto, ProtoPort, Snat};

mod error;
mod none;
pub mod process;

pub use error::BackendError;
pub use none::NoneBackend;

/// Identifies one grant for its whole life, across daemon restarts (it is in the state file
/// and, where the firewall allows, tagged on every rule the grant created).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GrantId(pub u64);

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Address translation for a grant, with every address resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nat {
    /// DNAT the granted port(s) to `to` (`port` `None` keeps the original port), plus a forward
    /// accept for exactly the translated flow; optional source NAT towards `to`.
    Dnat {
        /// Internal host.
        to: IpAddr,
        /// Internal port; `None` keeps each original port (forward-all).
        port: Option<u16>,
        /// Source NAT on the way to the internal host.
        snat: Option<Snat>,
    },
    /// Forward traffic from the source without translating its destination (the client
    /// routes through this host); optional source NAT on the way out.
    Route {
        /// Source NAT on the way out.
        snat: Option<Snat>,
    },
    /// Redirect the granted port(s) to this local port.
    Redirect {
        /// The local port.
        port: u16,
    },
}

/// One authorised opening of the firewall: who, what, where, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Stable identity.
    pub id: GrantId,
    /// The address let in (IPv4 or IPv6).
    pub source: IpAddr,
    /// The address the SPA packet came from (differs from `source` with `-a`).
    pub packet_source: IpAddr,
    /// The local address the access is restricted to, if any.
    pub destination: Option<IpAddr>,
    /// The ports (externally visible ones for NAT), or everything.
    pub access: Access,
    /// Address translation, if any.
    pub nat: Option<Nat>,
    /// Unix seconds when the grant was first made.
    pub created: u64,
    /// Unix seconds when it ends.
    pub deadline: u64,
    /// The access stanza that allowed it.
    pub stanza: String,
    /// The username in the packet.
    pub username: String,
}

impl Grant {
    /// Seconds left at `now` (0 once past the deadline).
    pub fn remaining(&self, now: u64) -> u64 {
        self.deadline.saturating_sub(now)
    }

    /// The ports granted, or an empty slice for forward-all.
    pub fn ports(&self) -> &[ProtoPort] {
        match &self.access {
            Access::Ports(p) => p,
            Access::All => &[],
        }
    }

    /// True when `other` asks for the same thing (source, access, NAT, destination): a re-knock
    /// that should extend this grant rather than create a second one.
    pub fn same_access(&self, other: &Grant) -> bool {
        self.source == other.source
            && self.access == other.access
            && self.nat == other.nat
            && self.destination == other.destination
    }
}

/// What a backend can do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// It implements [`Nat`].
    pub nat: bool,
    /// It handles IPv6 sources.
    pub ipv6: bool,
    /// The firewall itself removes a grant at its deadline (so a crashed daemon fails closed and
    /// the daemon need not run a timer for it).
    pub native_expiry: bool,
}

/// Something a backend owns in the firewall, as it reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owned {
    /// The grant it belongs to, where the firewall keeps that tag.
    pub id: Option<GrantId>,
    /// A human-readable description (the rule or element text).
    pub entry: String,
    /// Unix seconds when it expires, where the firewall says.
    pub deadline: Option<u64>,
}

/// A firewall backend. Small, synchronous and object-safe: the daemon calls it from one worker
/// thread, so calls never overlap.
///
/// Contract:
/// - Everything a backend creates lives in one namespace it owns (a table, chains with a
///   prefix, an anchor) and nothing else is touched.
/// - [`Backend::prepare`] runs at start and makes the firewall hold exactly the `live` grants
///   (and none left from before), in one atomic step where the firewall allows it.
/// - [`Backend::grant`] with the id of a grant already applied extends it to its new deadline
///   (a re-knock); it must never duplicate rules.
/// - [`Backend::revoke`] of a grant that is gone already is not an error.
/// - [`Backend::teardown`] removes the whole namespace; only an explicit admin action calls it.
pub trait Backend: Send {
    /// The registered name.
    fn name(&self) -> &str;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// Creates or resets what it owns so that exactly `live` is granted.
    fn prepare(&mut self, live: &[Grant]) -> Result<(), BackendError>;
    /// Applies a new grant, or extends one with the same id.
    fn grant(&mut self, grant: &Grant) -> Result<(), BackendError>;
    /// Removes a grant (at its deadline, on revoke, at daemon stop).
    fn revoke(&mut self, grant: &Grant) -> Result<(), BackendError>;
    /// What it currently owns, for reconciling and for `spad list`.
    fn list(&mut self) -> Result<Vec<Owned>, BackendError>;
    /// Removes everything it owns, protections included.
    fn teardown(&mut self) -> Result<(), BackendError>;
}

/// Builds a backend from its own TOML table (`[firewall.<name>]`).
pub type Constructor = fn(&toml::Table) -> Result<Box<dyn Backend>, BackendError>;

/// A backend's entry in the registry: a name and a constructor, const so `inventory` can
/// collect it at link time.
#[derive(Debug)]
pub struct BackendDescriptor {
    /// The name used in `[firewall] backend = "..."`.
    pub name: &'static str,
    /// One line for `spad backends`.
    pub description: &'static str,
    /// Builds it from its table.
    pub create: Constructor,
}

inventory::collect!(BackendDescriptor);

inventory::submit! {
    BackendDescriptor {
        name: "none",
        description: "changes nothing (test mode, dry runs)",
        create: NoneBackend::from_table,
    }
}

/// Why the registry could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Two linked crates registered the same name.
    #[error("two backends are registered as {0:?}")]
    Duplicate(&'static str),
    /// The configuration names a backend this build does not contain.
    #[error("unknown backend {name:?}; this build contains: {available}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names this build has, comma-separated.
        available: String,
    },
    /// The backend refused its configuration or could not start.
    #[error("backend {name:?} could not be created")]
    Create {
        /// The backend.
        name: String,
        /// Why.
        #[source]
        source: BackendError,
    },
}

/// The backends this binary contains, by name.
#[derive(Debug)]
pub struct Registry {
    by_name: BTreeMap<&'static str, &'static BackendDescriptor>,
}

impl Registry {
    /// Collects every descriptor linked into this binary. Crates the binary never names are
    /// dropped by the linker with their descriptors, so the daemon names each backend crate
    /// (`use spa_backend_x as _;`) behind its feature, and a test checks the resulting list.
    pub fn collect() -> Result<Self, RegistryError> {
        Self::from_descriptors(inventory::iter::<BackendDescriptor>)
    }

    /// Builds a registry from any descriptors, refusing duplicate names.
    pub fn from_descriptors(
        descriptors: impl IntoIterator<Item = &'static BackendDescriptor>,
    ) -> Result<Self, RegistryError> {
        let mut by_name = BTreeMap::new();
        for d in descriptors {
            if by_name.insert(d.name, d).is_some() {
                return Err(RegistryError::Duplicate(d.name));
            }
        }
        Ok(Self { by_name })
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.by_name.keys().copied().collect()
    }

    /// The descriptors, sorted by name.
    pub fn descriptors(&self) -> impl Iterator<Item = &'static BackendDescriptor> + '_ {
        self.by_name.values().copied()
    }

    /// Builds the backend `name` from its table.
    pub fn create(&self, name: &str, table: &toml::Table) -> Result<Box<dyn Backend>, RegistryError> {
        let d = self.by_name.get(name).ok_or_else(|| RegistryError::Unknown {
            name: name.to_owned(),
            available: self.names().join(", "),
        })?;
        (d.create)(table).map_err(|source| RegistryError::Create { name: name.to_owned(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(_: &toml::Table) -> Result<Box<dyn Backend>, BackendError> {
        Err(BackendError::Unsupported("anything"))
    }

    static A: BackendDescriptor = BackendDescriptor { name: "a", description: "", create: fail };
    static A2: BackendDescriptor = BackendDescriptor { name: "a", description: "", create: fail };
    static B: BackendDescriptor =
        BackendDescriptor { name: "b", description: "", create: NoneBackend::from_table };

    #[test]
    fn duplicate_names_are_refused() {
        assert!(matches!(Registry::from_descriptors([&A, &B, &A2]), Err(RegistryError::Duplicate("a"))));
    }

    #[test]
    fn unknown_name_lists_what_exists() {
        let r = Registry::from_descriptors([&A, &B]).unwrap();
        let err = r.create("nft", &toml::Table::new()).err().unwrap().to_string();
        assert_eq!(err, "unknown backend \"nft\"; this build contains: a, b");
        assert!(r.create("b", &toml::Table::new()).is_ok());
        assert!(matches!(r.create("a", &toml::Table::new()), Err(RegistryError::Create { .. })));
    }

    #[test]
    fn this_crate_registers_none() {
        assert_eq!(Registry::collect().unwrap().names(), vec!["none"]);
    }

    fn grant() -> Grant {
        Grant {
            id: GrantId(1),
            source: "192.0.2.1".parse().unwrap(),
            packet_source: "192.0.2.1".parse().unwrap(),
            destination: None,
            access: Access::Ports(vec!["tcp/22".parse().unwrap()]),
            nat: None,
            created: 100,
            deadline: 130,
            stanza: "s".into(),
            username: "u".into(),
        }
    }

    #[test]
    fn grant_model() {
        let g = grant();
        assert_eq!(g.remaining(120), 10);
        assert_eq!(g.remaining(200), 0);
        let mut h = grant();
        h.id = GrantId(2);
        h.deadline = 500;
        assert!(g.same_access(&h));
        h.access = Access::All;
        assert!(!g.same_access(&h));
        assert!(h.ports().is_empty());
    }

    #[test]
    fn grant_json_is_stable() {
        let mut g = grant();
        g.nat =
            Some(Nat::Dnat { to: "10.0.0.2".parse().unwrap(), port: Some(22), snat: Some(Snat::Masquerade) });
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(
            json,
            r#"{"id":1,"source":"192.0.2.1","packet_source":"192.0.2.1","destination":null,"access":{"ports":["tcp/22"]},"nat":{"dnat":{"to":"10.0.0.2","port":22,"snat":"masquerade"}},"created":100,"deadline":130,"stanza":"s","username":"u"}"#
        );
        assert_eq!(serde_json::from_str::<Grant>(&json).unwrap(), g);
        g.access = Access::All;
        assert!(serde_json::to_string(&g).unwrap().contains(r#""access":"all""#));
    }
}

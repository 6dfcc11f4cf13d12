//! The seam between deciding and enforcing: what a grant is, how its life is decided (the
//! [`Ledger`], pure), what a firewall backend must do with it (the [`Backend`] trait: a pure
//! mapping to typed entries plus a thin applier), and how a build says which backends it
//! contains.
//!
//! The daemon turns an accepted packet into a [`Grant`] (addresses resolved, deadline fixed)
//! and hands it to one backend worker thread, which holds a [`Driver`]: a [`Gate`] around the
//! configured backend. Backends live in their own crates and register a
//! [`BackendDescriptor`] with `inventory`; the daemon links them through cargo features and
//! builds a [`Registry`] once at start, refusing duplicate names. `backends/README.md` shows
//! how to write one.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use spa_engine::{Access, Proto, ProtoPort, Snat};

mod backend;
mod error;
mod gate;
pub mod ledger;
#[cfg(test)]
mod ledger_tests;
#[cfg(target_os = "linux")]
pub mod nfgen;
mod none;
pub mod preflight;
pub mod process;
mod registry;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use backend::{Backend, Capabilities, Change, Entry, Health, Held, Observed};
pub use error::{BackendError, CommandFailure, error_chain};
pub use gate::{Call, CallObserver, Driver, Gate, Journal, NoJournal, create};
pub use ledger::{Closing, EndKind, Event, Ledger, Record, Refusal, RefusedBecause, State};
pub use none::NoneBackend;
pub use registry::{BackendDescriptor, Constructor, Registry, RegistryError};

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

/// Where a knock arrived: the local address it was sent to and the interface it came in on,
/// for backends (scripts) that open only there, e.g. a DNAT on that interface and address.
/// A gateway has few of them, so grants share one copy (`Arc`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ingress {
    /// The packet's destination address (a local address of this host).
    pub addr: IpAddr,
    /// The interface's name, when the receiver knows it (UDP sockets and capture do; a TCP
    /// knock on a system without the means to ask does not).
    #[serde(default)]
    pub interface: Option<String>,
}

/// One authorised opening of the firewall: who, what, where, until when.
///
/// The ledger keeps one per live grant (100,000 on a busy gateway), so it is compact: the
/// stanza, the username, the port list and the ingress are shared (`Arc`) between grants that
/// have the same, and NAT, which few grants have, is boxed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Stable identity.
    pub id: GrantId,
    /// The address let in (IPv4 or IPv6).
    pub source: IpAddr,
    /// The TCP/UDP source port the client connects from, when its knock named one
    /// (knock-and-connect with the modern format): the grant then lets in only connections
    /// from exactly `(source, source_port)`, so other hosts behind the same NAT address, which
    /// share `source` but not the port, stay out. `None` (every fwknop packet, and records
    /// written before it was kept) grants the whole address. A backend that cannot match a
    /// source port refuses such a grant; it never widens it to the whole address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    /// The address the SPA packet came from (differs from `source` with `-a`).
    pub packet_source: IpAddr,
    /// The local address the access is restricted to, if any.
    pub destination: Option<IpAddr>,
    /// The ports (externally visible ones for NAT), or everything.
    pub access: Access,
    /// Address translation, if any.
    pub nat: Option<Box<Nat>>,
    /// Unix seconds when the grant was first made.
    pub created: u64,
    /// Unix seconds when it ends.
    pub deadline: u64,
    /// The access stanza that allowed it.
    pub stanza: Arc<str>,
    /// The username in the packet.
    pub username: Arc<str>,
    /// Where the knock arrived (not part of what is granted: a re-knock through another
    /// interface extends the grant). `None` in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Arc<Ingress>>,
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

    /// True when `other` asks for the same thing (source address and port, access, NAT,
    /// destination): a re-knock that should extend this grant rather than create a second
    /// one. A grant bound to a source port and one for the whole address are different
    /// accesses, as are grants bound to two different source ports.
    pub fn same_access(&self, other: &Grant) -> bool {
        self.source == other.source
            && self.source_port == other.source_port
            && self.access == other.access
            && self.nat == other.nat
            && self.destination == other.destination
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            id: GrantId(1),
            source: "192.0.2.1".parse().unwrap(),
            source_port: None,
            packet_source: "192.0.2.1".parse().unwrap(),
            destination: None,
            access: Access::Ports(vec!["tcp/22".parse().unwrap()].into()),
            nat: None,
            created: 100,
            deadline: 130,
            stanza: "s".into(),
            username: "u".into(),
            ingress: None,
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
        g.nat = Some(Box::new(Nat::Dnat {
            to: "10.0.0.2".parse().unwrap(),
            port: Some(22),
            snat: Some(Snat::Masquerade),
        }));
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(
            json,
            r#"{"id":1,"source":"192.0.2.1","packet_source":"192.0.2.1","destination":null,"access":{"ports":["tcp/22"]},"nat":{"dnat":{"to":"10.0.0.2","port":22,"snat":"masquerade"}},"created":100,"deadline":130,"stanza":"s","username":"u"}"#
        );
        assert_eq!(serde_json::from_str::<Grant>(&json).unwrap(), g);
        g.access = Access::All;
        assert!(serde_json::to_string(&g).unwrap().contains(r#""access":"all""#));
        // The ingress is written when known, and read back.
        g.ingress =
            Some(Arc::new(Ingress { addr: "198.51.100.1".parse().unwrap(), interface: Some("eth0".into()) }));
        let json = serde_json::to_string(&g).unwrap();
        assert!(json.ends_with(r#""ingress":{"addr":"198.51.100.1","interface":"eth0"}}"#), "{json}");
        assert_eq!(serde_json::from_str::<Grant>(&json).unwrap(), g);
    }

    /// A source port makes another access: bound to port 40000, to port 40001 and to the whole
    /// address are three grants, never re-knocks of one another.
    #[test]
    fn the_source_port_is_part_of_the_access() {
        let whole = grant();
        let p1 = Grant { id: GrantId(2), source_port: Some(40000), ..grant() };
        let p2 = Grant { id: GrantId(3), source_port: Some(40001), ..grant() };
        assert!(!whole.same_access(&p1) && !p1.same_access(&whole));
        assert!(!p1.same_access(&p2));
        assert!(p1.same_access(&Grant { id: GrantId(4), deadline: 900, ..p1.clone() }));
    }

    /// The source port is written when there is one; a record written before it was kept (or
    /// without one) reads back as `None`, the whole address.
    #[test]
    fn the_source_port_is_persisted_and_old_records_read_as_none() {
        let old = r#"{"id":1,"source":"192.0.2.1","packet_source":"192.0.2.1","destination":null,"access":{"ports":["tcp/22"]},"nat":null,"created":100,"deadline":130,"stanza":"s","username":"u"}"#;
        assert_eq!(serde_json::from_str::<Grant>(old).unwrap(), grant());
        let g = Grant { source_port: Some(40000), ..grant() };
        let json = serde_json::to_string(&g).unwrap();
        assert!(json.contains(r#""source":"192.0.2.1","source_port":40000,"#), "{json}");
        assert_eq!(serde_json::from_str::<Grant>(&json).unwrap(), g);
    }

    /// Grants are many (100,000 on a busy gateway): the ingress costs one pointer each.
    #[test]
    fn the_ingress_costs_a_pointer() {
        assert_eq!(std::mem::size_of::<Option<Arc<Ingress>>>(), std::mem::size_of::<usize>());
    }
}

//! What a grant puts into ipfw: a key in one of spad's lookup tables. Pure.
//!
//! The rules are fixed by the configuration and added at `prepare`; a grant only adds keys to
//! the tables they look up, so a grant never changes a rule.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use spa_backends::{Access, BackendError, Entry, Grant, Nat, ProtoPort};

use crate::config::Config;

/// Which of spad's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `<prefix>_in`, type `flow:src-ip,proto,dst-port`: sources allowed to a local port.
    In,
    /// `<prefix>_all`, type `addr`: sources allowed everything on this host (forward-all).
    All,
    /// `<prefix>_fwd`, type `flow:src-ip,proto,dst-port`: sources whose connections to an
    /// external port are handed to that forward's NAT instance.
    Fwd,
}

impl Kind {
    /// All of them, in the order they are created.
    pub const ALL: [Kind; 3] = [Kind::In, Kind::All, Kind::Fwd];

    fn suffix(self) -> &'static str {
        match self {
            Kind::In => "in",
            Kind::All => "all",
            Kind::Fwd => "fwd",
        }
    }

    /// The `type` given at `table ... create` (ipfw(8) LOOKUP TABLES).
    pub fn table_type(self) -> &'static str {
        match self {
            Kind::In | Kind::Fwd => "flow:src-ip,proto,dst-port",
            Kind::All => "addr",
        }
    }
}

/// The table prefix, checked at config load; shared by every entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Names(Arc<str>);

impl Names {
    /// Names under `prefix` (checked by [`Config::validate`]).
    pub fn new(prefix: &str) -> Self {
        Self(prefix.into())
    }

    /// A table's name (`spa_in`).
    pub fn table(&self, kind: Kind) -> String {
        format!("{}_{}", self.0, kind.suffix())
    }

    /// The table a name stands for, if it is one of ours.
    pub fn kind_of(&self, name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| self.table(*k) == name)
    }
}

/// A key in one of spad's tables: the only thing a grant puts into ipfw. The table entry's
/// value is the grant's deadline (Unix seconds), which `ipfw table <name> list` shows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Record {
    names: Names,
    /// The table.
    pub kind: Kind,
    /// The source.
    pub source: IpAddr,
    /// The protocol and destination port, in flow tables.
    pub port: Option<ProtoPort>,
}

impl Record {
    /// The table's name.
    pub fn table(&self) -> String {
        self.names.table(self.kind)
    }

    /// The key as ipfw writes it: `192.0.2.1,tcp,22` in a flow table, `192.0.2.1` in `addr`.
    pub fn key(&self) -> String {
        match self.port {
            Some(pp) => format!("{},{},{}", self.source, pp.proto.name(), pp.port),
            None => self.source.to_string(),
        }
    }
}

impl fmt::Display for Record {
    /// `table(spa_in) 192.0.2.1,tcp,22`: the table as a rule names it, then the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table({}) {}", self.table(), self.key())
    }
}

impl Entry for Record {
    // A key is in a table or not: the record is its own slot, shared by every grant of the
    // same source that needs it.
    type Slot = Record;

    fn slot(&self) -> Record {
        self.clone()
    }

    /// ipfw tables have no timeout at all: the ledger removes each key at its deadline.
    fn expires_by_itself(&self) -> bool {
        false
    }
}

/// The records a grant needs. Pure: the same grant always gives the same records.
///
/// - no NAT, ports: `(source, proto, port)` in the `in` flow table (any port: one rule covers
///   them all);
/// - no NAT, all: the source in the `all` table;
/// - `Dnat` of ports: per port, `(source, proto, port)` in the `fwd` table, for the configured
///   forward of that external port (which must go to the grant's host and port).
///
/// Refused: a grant restricted to one local address (a stanza `destination`), source NAT
/// (libalias keeps the client's address towards the internal host), IPv6 forwards (libalias is
/// IPv4 only), routed forwarding, local redirects and forward-all DNAT.
pub fn expand(names: &Names, config: &Config, grant: &Grant) -> Result<Vec<Record>, BackendError> {
    if grant.source_port.is_some() {
        // The tables' keys have no source port: never widen such a grant to the address.
        return Err(BackendError::Unsupported(
            "a grant bound to a source port (ipfw tables here key no source port)",
        ));
    }
    if grant.destination.is_some() {
        return Err(BackendError::Unsupported(
            "a grant restricted to one local address (stanza destination)",
        ));
    }
    let record = |kind, port| Record { names: names.clone(), kind, source: grant.source, port };
    let mut out = BTreeSet::new();
    match (grant.nat.as_deref(), &grant.access) {
        (None, Access::Ports(ports)) => out.extend(ports.iter().map(|pp| record(Kind::In, Some(*pp)))),
        (None, Access::All) => {
            out.insert(record(Kind::All, None));
        }
        (Some(Nat::Dnat { to, port, snat }), Access::Ports(ports)) => {
            if snat.is_some() {
                return Err(BackendError::Unsupported(
                    "source NAT on a forward (ipfw nat redirects keep the client's address)",
                ));
            }
            for pp in ports.iter() {
                let f = config.forward.iter().find(|f| f.port == *pp).ok_or_else(|| {
                    BackendError::Invalid(format!(
                        "no [[firewall.ipfw.forward]] for {pp}: no NAT instance redirects it"
                    ))
                })?;
                let want = port.unwrap_or(pp.port);
                if IpAddr::V4(f.to) != *to || f.internal_port() != want {
                    return Err(BackendError::Invalid(format!(
                        "the grant forwards {pp} to {to} port {want}, the configured forward to {} port {}",
                        f.to,
                        f.internal_port()
                    )));
                }
                if !grant.source.is_ipv4() {
                    return Err(BackendError::Unsupported(
                        "forwarding an IPv6 source (ipfw nat is IPv4 only)",
                    ));
                }
                out.insert(record(Kind::Fwd, Some(*pp)));
            }
        }
        (Some(Nat::Dnat { .. }), Access::All) => {
            return Err(BackendError::Unsupported("forward-all with destination NAT"));
        }
        (Some(Nat::Route { .. }), _) => {
            return Err(BackendError::Unsupported("routed forwarding without destination NAT"));
        }
        (Some(Nat::Redirect { .. }), _) => return Err(BackendError::Unsupported("local port redirection")),
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::testkit::grant;
    use spa_backends::{GrantId, Snat};

    fn config() -> Config {
        Config::from_table(
            &"protect = [\"tcp/22\"]\n[[forward]]\nport = \"tcp/2222\"\nto = \"192.168.77.10\"\nto_port = 22\ninterface = \"em0\"\n"
                .parse()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn records_are_keys_in_the_firewalls_words_without_id_or_deadline() {
        let (n, c) = (Names::new("spa"), config());
        for g in [
            grant(1).ports("tcp/22,udp/53"),
            grant(1).all(),
            grant(1).ports("tcp/2222").dnat("192.168.77.10", Some(22), None),
        ] {
            let a: Grant = g.clone().times(1000, 1030).into();
            let b: Grant = Grant { id: GrantId(9), ..g.times(1000, 9000).into() };
            assert_eq!(expand(&n, &c, &a).unwrap(), expand(&n, &c, &b).unwrap());
        }
        let text = |g: spa_backends::testkit::GrantBuilder| -> Vec<String> {
            expand(&n, &c, &g.into()).unwrap().iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            text(grant(1).ports("udp/53,tcp/22")),
            ["table(spa_in) 192.0.2.1,tcp,22", "table(spa_in) 192.0.2.1,udp,53"]
        );
        assert_eq!(
            text(grant(1).source("2001:db8::1").ports("tcp/443")),
            ["table(spa_in) 2001:db8::1,tcp,443"]
        );
        assert_eq!(text(grant(1).all()), ["table(spa_all) 192.0.2.1"]);
        assert_eq!(
            text(grant(1).ports("tcp/2222").dnat("192.168.77.10", Some(22), None)),
            ["table(spa_fwd) 192.0.2.1,tcp,2222"]
        );
        assert_eq!(Names::new("spa").kind_of("spa_fwd"), Some(Kind::Fwd));
        assert_eq!(Names::new("spa").kind_of("spa_out"), None);
    }

    #[test]
    fn what_no_rule_expresses_is_refused() {
        let (n, c) = (Names::new("spa"), config());
        let refused =
            |g: spa_backends::testkit::GrantBuilder| expand(&n, &c, &g.into()).unwrap_err().to_string();
        assert!(
            refused(grant(1).ports("tcp/2223").dnat("192.168.77.10", Some(22), None))
                .contains("no [[firewall.ipfw.forward]]")
        );
        assert!(
            refused(grant(1).ports("tcp/2222").dnat("192.168.77.11", Some(22), None))
                .contains("configured forward")
        );
        assert!(
            refused(grant(1).ports("tcp/2222").dnat("192.168.77.10", Some(22), Some(Snat::Masquerade)))
                .contains("source NAT")
        );
        assert!(
            refused(grant(1).source("2001:db8::1").ports("tcp/2222").dnat("192.168.77.10", Some(22), None))
                .contains("IPv6")
        );
        assert!(refused(grant(1).all().dnat("192.168.77.10", None, None)).contains("forward-all"));
        assert!(refused(grant(1).ports("tcp/22").route(None)).contains("routed"));
        assert!(refused(grant(1).ports("tcp/22").redirect(2222)).contains("redirection"));
        assert!(refused(grant(1).ports("tcp/22").destination("198.51.100.1")).contains("destination"));
    }
}

//! What the script backend's entries are: units of work, one `open`/`close` call each.
//!
//! A unit is named by what the firewall side is about (who, to where, which port, with what
//! translation), never by the grant that asked for it: a re-knock, or a second grant of the
//! same source asking for the same port, shares the unit, so `open` runs once for it and
//! `close` once, when no live grant needs it any more.

use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use spa_backends::{Access, Entry, Grant, Ingress, Nat, ProtoPort, Snat};

use crate::Per;

/// Which traffic one unit covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// One `proto/port` of a grant (`per = "port"`).
    Port(ProtoPort),
    /// Everything (a forward-all grant, with either `per`).
    All,
    /// A grant's whole port list as one call (`per = "grant"`).
    Ports(Vec<ProtoPort>),
}

impl Scope {
    /// The port of a per-port call (`{proto}`, `{port}`), `None` otherwise.
    pub fn port(&self) -> Option<ProtoPort> {
        match self {
            Scope::Port(p) => Some(*p),
            Scope::All | Scope::Ports(_) => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Port(p) => write!(f, "{p}"),
            Scope::All => f.write_str("all"),
            Scope::Ports(ports) => {
                for (i, p) in ports.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// One unit of work: what one `open` call opens and one `close` call closes. Built only from
/// a grant's typed values; displayed as `192.0.2.1 tcp/22`, or with NAT
/// `192.0.2.1 tcp/2222 dnat 10.0.0.2:22`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Unit {
    /// The address let in.
    pub source: IpAddr,
    /// The source port the grant is bound to, if any (part of the identity: a unit bound to a
    /// port is not the whole address's unit).
    pub source_port: Option<u16>,
    /// The local address the access is restricted to, if any.
    pub destination: Option<IpAddr>,
    /// The traffic.
    pub scope: Scope,
    /// The address translation, if any.
    pub nat: Option<Nat>,
    /// Where the knock arrived, when the commands' argv names it (`{ingress_addr}`,
    /// `{ingress_if}`): what they open then depends on it, so two grants that differ only in
    /// their ingress need two units. `None` otherwise, so that they share one.
    pub ingress: Option<Arc<Ingress>>,
}

impl Unit {
    /// The units a grant needs: one per port (`per = "port"`; one for forward-all), or one for
    /// the whole grant (`per = "grant"`). Pure; a port listed twice is one unit.
    pub fn of(grant: &Grant, per: Per) -> Vec<Unit> {
        let unit = |scope| Unit {
            source: grant.source,
            source_port: grant.source_port,
            destination: grant.destination,
            scope,
            nat: grant.nat.as_deref().cloned(),
            ingress: None,
        };
        match (&grant.access, per) {
            (Access::All, _) => vec![unit(Scope::All)],
            (Access::Ports(ports), Per::Grant) => vec![unit(Scope::Ports(ports.to_vec()))],
            (Access::Ports(ports), Per::Port) if ports.is_empty() => vec![unit(Scope::Ports(Vec::new()))],
            (Access::Ports(ports), Per::Port) => {
                let mut seen = std::collections::HashSet::with_capacity(ports.len());
                ports.iter().filter(|p| seen.insert(**p)).map(|p| unit(Scope::Port(*p))).collect()
            }
        }
    }

    /// The translation as a tuple of ordered values, for [`Ord`] (`Nat` has no order of its
    /// own); one tuple per value, so the order agrees with equality.
    fn nat_key(&self) -> (u8, Option<IpAddr>, Option<u16>, (u8, Option<IpAddr>)) {
        let snat = |s: &Option<Snat>| match s {
            None => (0, None),
            Some(Snat::Masquerade) => (1, None),
            Some(Snat::To(a)) => (2, Some(*a)),
        };
        match self.nat.as_ref() {
            None => (0, None, None, (0, None)),
            Some(Nat::Dnat { to, port, snat: s }) => (1, Some(*to), *port, snat(s)),
            Some(Nat::Route { snat: s }) => (2, None, None, snat(s)),
            Some(Nat::Redirect { port }) => (3, None, Some(*port), (0, None)),
        }
    }
}

impl PartialOrd for Unit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Unit {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.source, self.source_port, self.destination, &self.scope, self.nat_key(), &self.ingress).cmp(&(
            other.source,
            other.source_port,
            other.destination,
            &other.scope,
            other.nat_key(),
            &other.ingress,
        ))
    }
}

/// `addr:port`, with brackets around an IPv6 address.
struct HostPort(IpAddr, u16);

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(p) = self.source_port {
            write!(f, " sport {p}")?;
        }
        write!(f, " {}", self.scope)?;
        if let Some(d) = self.destination {
            write!(f, " dst {d}")?;
        }
        let snat = |f: &mut fmt::Formatter<'_>, s: &Option<Snat>| match s {
            None => Ok(()),
            Some(Snat::Masquerade) => f.write_str(" masquerade"),
            Some(Snat::To(a)) => write!(f, " snat {a}"),
        };
        match self.nat.as_ref() {
            None => Ok(()),
            Some(Nat::Dnat { to, port: Some(p), snat: s }) => {
                write!(f, " dnat {}", HostPort(*to, *p))?;
                snat(f, s)
            }
            Some(Nat::Dnat { to, port: None, snat: s }) => {
                write!(f, " dnat {to}")?;
                snat(f, s)
            }
            Some(Nat::Route { snat: s }) => {
                f.write_str(" route")?;
                snat(f, s)
            }
            Some(Nat::Redirect { port }) => write!(f, " redirect {port}"),
        }?;
        match self.ingress.as_deref() {
            None => Ok(()),
            Some(Ingress { addr, interface: Some(i) }) => write!(f, " via {i} {addr}"),
            Some(Ingress { addr, interface: None }) => write!(f, " via {addr}"),
        }
    }
}

impl Entry for Unit {
    /// A unit is its own identity: grants that need the same unit share it.
    type Slot = Unit;

    fn slot(&self) -> Unit {
        self.clone()
    }

    /// Nothing tells the backend that a script's opening ended: the ledger runs `close`.
    fn expires_by_itself(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::testkit::grant;

    fn shown(g: impl Into<Grant>, per: Per) -> Vec<String> {
        Unit::of(&g.into(), per).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn one_unit_per_port_or_per_grant() {
        assert_eq!(
            shown(grant(1).ports("tcp/22,udp/53,tcp/22"), Per::Port),
            ["192.0.2.1 tcp/22", "192.0.2.1 udp/53"]
        );
        assert_eq!(shown(grant(1).ports("tcp/22,udp/53"), Per::Grant), ["192.0.2.1 tcp/22,udp/53"]);
        assert_eq!(shown(grant(1).all(), Per::Port), ["192.0.2.1 all"]);
        assert_eq!(shown(grant(1).all(), Per::Grant), ["192.0.2.1 all"]);
    }

    /// A unit bound to a source port is another unit than the whole address's, and than one
    /// bound to another port.
    #[test]
    fn the_source_port_is_shown_and_part_of_the_identity() {
        assert_eq!(
            shown(grant(1).source_port(40000).ports("tcp/22"), Per::Port),
            ["192.0.2.1 sport 40000 tcp/22"]
        );
        let unit = |g: spa_backends::testkit::GrantBuilder| Unit::of(&g.into(), Per::Port).remove(0);
        let whole = unit(grant(1).ports("tcp/22"));
        let a = unit(grant(1).source_port(40000).ports("tcp/22"));
        let b = unit(grant(1).source_port(40001).ports("tcp/22"));
        assert!(whole != a && a != b && whole.cmp(&a) != Ordering::Equal && a.cmp(&b) != Ordering::Equal);
    }

    #[test]
    fn nat_and_destination_are_shown_and_part_of_the_identity() {
        assert_eq!(
            shown(grant(1).ports("tcp/2222").dnat("10.0.0.2", Some(22), None), Per::Port),
            ["192.0.2.1 tcp/2222 dnat 10.0.0.2:22"]
        );
        assert_eq!(
            shown(
                grant(1).source("2001:db8::1").ports("tcp/80").dnat("fd00::2", None, Some(Snat::Masquerade)),
                Per::Port
            ),
            ["2001:db8::1 tcp/80 dnat fd00::2 masquerade"]
        );
        assert_eq!(
            shown(
                grant(1).ports("tcp/2222").dnat(
                    "fd00::2",
                    Some(22),
                    Some(Snat::To("fd00::1".parse().unwrap()))
                ),
                Per::Port
            ),
            ["192.0.2.1 tcp/2222 dnat [fd00::2]:22 snat fd00::1"]
        );
        assert_eq!(shown(grant(1).all().route(None), Per::Port), ["192.0.2.1 all route"]);
        assert_eq!(
            shown(grant(1).ports("tcp/22").redirect(2022), Per::Port),
            ["192.0.2.1 tcp/22 redirect 2022"]
        );
        assert_eq!(
            shown(grant(1).ports("tcp/22").destination("203.0.113.1"), Per::Port),
            ["192.0.2.1 tcp/22 dst 203.0.113.1"]
        );

        // Not the id, the deadline or who asked: a second grant for the same port shares it.
        let a = Unit::of(&grant(1).until(2000).who("a", "alice").build(), Per::Port);
        let b =
            Unit::of(&grant(2).until(9000).who("b", "bob").packet_source("198.51.100.1").build(), Per::Port);
        assert_eq!(a, b);
        // Everything the firewall side is about is.
        let plain = Unit::of(&grant(1).ports("tcp/2222").build(), Per::Port);
        let to2 = Unit::of(&grant(1).ports("tcp/2222").dnat("10.0.0.2", Some(22), None).build(), Per::Port);
        let to3 = Unit::of(&grant(1).ports("tcp/2222").dnat("10.0.0.3", Some(22), None).build(), Per::Port);
        let dst = Unit::of(&grant(1).ports("tcp/2222").destination("203.0.113.1").build(), Per::Port);
        let other = Unit::of(&grant(1).source("192.0.2.2").ports("tcp/2222").build(), Per::Port);
        let all = [&plain, &to2, &to3, &dst, &other];
        for (i, x) in all.iter().enumerate() {
            for (j, y) in all.iter().enumerate() {
                assert_eq!(i == j, x == y, "{x:?} vs {y:?}");
                assert_eq!(i == j, x[0].cmp(&y[0]) == Ordering::Equal, "{x:?} vs {y:?}");
            }
        }
    }
}

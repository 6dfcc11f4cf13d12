//! What a grant becomes in our table: elements of named timed sets and maps.
//!
//! Every kind of access has one set (or map) per address family, matched by one static rule.
//! A grant never adds rules, only elements, so the ruleset stays the same size and a grant is
//! one small transaction.

use std::fmt::Write as _;
use std::net::IpAddr;

use spa_backends::{Access, BackendError, Grant, Nat, Snat};

/// One kind of timed set or map in our table (the family is chosen separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Local access: `saddr . l4proto . dport` (input).
    Allow,
    /// Local access restricted to one local address: `saddr . daddr . l4proto . dport` (input).
    AllowDst,
    /// Local NAT: `saddr . l4proto . dport : local port` (prerouting redirect).
    Redirect,
    /// DNAT of one port: `saddr . l4proto . dport : internal addr . internal port`.
    Dnat,
    /// DNAT of everything (forward-all to a host): `saddr : internal addr`.
    DnatHost,
    /// Forward accept for exactly the translated flow: `saddr . daddr . l4proto . dport`.
    Fwd,
    /// Forward accept of everything towards one host: `saddr . daddr`.
    FwdHost,
    /// Forward accept of some ports to any destination (routed, no DNAT): `saddr . l4proto . dport`.
    Route,
    /// Forward accept of everything from the source (routed, no DNAT): `saddr`.
    RouteAll,
    /// SNAT of a [`Kind::Fwd`] flow: `... : snat addr`.
    Snat,
    /// SNAT of a [`Kind::FwdHost`] flow.
    SnatHost,
    /// SNAT of a [`Kind::Route`] flow.
    SnatRoute,
    /// SNAT of a [`Kind::RouteAll`] flow.
    SnatRouteAll,
    /// Masquerade of a [`Kind::Fwd`] flow.
    Masq,
    /// Masquerade of a [`Kind::FwdHost`] flow.
    MasqHost,
    /// Masquerade of a [`Kind::Route`] flow.
    MasqRoute,
    /// Masquerade of a [`Kind::RouteAll`] flow.
    MasqRouteAll,
}

/// The shape of a key: which packet fields it concatenates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyShape {
    /// `saddr . l4proto . dport`
    SrcProtoPort,
    /// `saddr . daddr . l4proto . dport`
    SrcDstProtoPort,
    /// `saddr . daddr`
    SrcDst,
    /// `saddr`
    Src,
}

/// What a map maps to (sets have no data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataShape {
    /// A set.
    None,
    /// `inet_service`
    Port,
    /// `addr . inet_service`
    AddrPort,
    /// `addr`
    Addr,
}

impl Kind {
    /// Every kind, in the order they appear in the table.
    pub const ALL: [Kind; 17] = [
        Kind::Allow,
        Kind::AllowDst,
        Kind::Redirect,
        Kind::Dnat,
        Kind::DnatHost,
        Kind::Fwd,
        Kind::FwdHost,
        Kind::Route,
        Kind::RouteAll,
        Kind::Snat,
        Kind::SnatHost,
        Kind::SnatRoute,
        Kind::SnatRouteAll,
        Kind::Masq,
        Kind::MasqHost,
        Kind::MasqRoute,
        Kind::MasqRouteAll,
    ];

    /// The set name without the family digit.
    pub const fn base(self) -> &'static str {
        match self {
            Kind::Allow => "allow",
            Kind::AllowDst => "allow_dst",
            Kind::Redirect => "redirect",
            Kind::Dnat => "dnat",
            Kind::DnatHost => "dnat_host",
            Kind::Fwd => "fwd",
            Kind::FwdHost => "fwd_host",
            Kind::Route => "route",
            Kind::RouteAll => "route_all",
            Kind::Snat => "snat",
            Kind::SnatHost => "snat_host",
            Kind::SnatRoute => "snat_route",
            Kind::SnatRouteAll => "snat_route_all",
            Kind::Masq => "masq",
            Kind::MasqHost => "masq_host",
            Kind::MasqRoute => "masq_route",
            Kind::MasqRouteAll => "masq_route_all",
        }
    }

    /// Which fields the key concatenates.
    pub const fn key(self) -> KeyShape {
        match self {
            Kind::Allow | Kind::Redirect | Kind::Dnat | Kind::Route | Kind::SnatRoute | Kind::MasqRoute => {
                KeyShape::SrcProtoPort
            }
            Kind::AllowDst | Kind::Fwd | Kind::Snat | Kind::Masq => KeyShape::SrcDstProtoPort,
            Kind::FwdHost | Kind::SnatHost | Kind::MasqHost => KeyShape::SrcDst,
            Kind::DnatHost | Kind::RouteAll | Kind::SnatRouteAll | Kind::MasqRouteAll => KeyShape::Src,
        }
    }

    /// What the map yields.
    pub const fn data(self) -> DataShape {
        match self {
            Kind::Redirect => DataShape::Port,
            Kind::Dnat => DataShape::AddrPort,
            Kind::DnatHost | Kind::Snat | Kind::SnatHost | Kind::SnatRoute | Kind::SnatRouteAll => {
                DataShape::Addr
            }
            _ => DataShape::None,
        }
    }
}

/// One of our named sets or maps: a kind in one address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetRef {
    /// The kind.
    pub kind: Kind,
    /// IPv6 (`...6`) rather than IPv4 (`...4`).
    pub v6: bool,
}

impl SetRef {
    /// Every set and map of the table.
    pub fn all() -> impl Iterator<Item = SetRef> {
        Kind::ALL.into_iter().flat_map(|kind| [SetRef { kind, v6: false }, SetRef { kind, v6: true }])
    }

    /// Its name in the table, e.g. `allow4`.
    pub fn name(self) -> String {
        format!("{}{}", self.kind.base(), if self.v6 { 6 } else { 4 })
    }

    /// Whether it is a map (has data).
    pub fn is_map(self) -> bool {
        self.kind.data() != DataShape::None
    }
}

/// One element: the set it lives in, its key and (for maps) its data, as nft text built only
/// from typed values (addresses, protocol names, port numbers).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Elem {
    /// Where it lives.
    pub set: SetRef,
    /// The key, e.g. `192.0.2.1 . tcp . 22`.
    pub key: String,
    /// The data for maps, e.g. `10.0.0.2 . 22`.
    pub data: Option<String>,
}

struct Builder<'a> {
    grant: &'a Grant,
    v6: bool,
    out: Vec<Elem>,
}

impl Builder<'_> {
    fn push(&mut self, kind: Kind, key: String, data: Option<String>) {
        self.out.push(Elem { set: SetRef { kind, v6: self.v6 }, key, data });
    }

    fn same_family(&self, addr: IpAddr, what: &str) -> Result<(), BackendError> {
        if addr.is_ipv6() == self.v6 {
            Ok(())
        } else {
            Err(BackendError::Invalid(format!(
                "grant {}: {what} {addr} is not in the address family of source {}",
                self.grant.id, self.grant.source
            )))
        }
    }

    /// The source NAT element for a forwarded flow key, if the grant asks for one.
    fn snat(
        &mut self,
        snat: Option<&Snat>,
        to_kind: Kind,
        masq_kind: Kind,
        key: &str,
    ) -> Result<(), BackendError> {
        match snat {
            None => {}
            Some(Snat::Masquerade) => self.push(masq_kind, key.to_owned(), None),
            Some(Snat::To(addr)) => {
                self.same_family(*addr, "snat address")?;
                self.push(to_kind, key.to_owned(), Some(addr.to_string()));
            }
        }
        Ok(())
    }
}

/// The elements a grant needs. Pure: the same grant always gives the same elements.
///
/// - no NAT, ports: `allow` (or `allow_dst` with a destination);
/// - no NAT, all: routed forward of everything from the source (fwknop `FORWARD_ALL`);
/// - `Dnat`, ports: `dnat` per port plus `fwd` for exactly the translated flow (+ SNAT);
/// - `Dnat`, all: `dnat_host` plus `fwd_host` (+ SNAT);
/// - `Route`, ports / all: `route` / `route_all` (+ SNAT);
/// - `Redirect`, ports: `redirect` per port plus `allow` of the local port.
pub fn expand(grant: &Grant) -> Result<Vec<Elem>, BackendError> {
    let src = grant.source;
    let mut b = Builder { grant, v6: src.is_ipv6(), out: Vec::new() };
    if let Some(dst) = grant.destination {
        b.same_family(dst, "destination")?;
    }
    match (&grant.nat, &grant.access) {
        (None, Access::Ports(ports)) => {
            for p in ports {
                match grant.destination {
                    Some(dst) => {
                        b.push(Kind::AllowDst, format!("{src} . {dst} . {} . {}", p.proto, p.port), None)
                    }
                    None => b.push(Kind::Allow, format!("{src} . {} . {}", p.proto, p.port), None),
                }
            }
        }
        (None, Access::All) => {
            b.push(Kind::RouteAll, src.to_string(), None);
        }
        (Some(Nat::Route { snat }), Access::All) => {
            b.push(Kind::RouteAll, src.to_string(), None);
            b.snat(snat.as_ref(), Kind::SnatRouteAll, Kind::MasqRouteAll, &src.to_string())?;
        }
        (Some(Nat::Route { snat }), Access::Ports(ports)) => {
            for p in ports {
                let key = format!("{src} . {} . {}", p.proto, p.port);
                b.push(Kind::Route, key.clone(), None);
                b.snat(snat.as_ref(), Kind::SnatRoute, Kind::MasqRoute, &key)?;
            }
        }
        (Some(Nat::Dnat { to, port, snat }), Access::Ports(ports)) => {
            b.same_family(*to, "dnat address")?;
            for p in ports {
                let inner = port.unwrap_or(p.port);
                b.push(
                    Kind::Dnat,
                    format!("{src} . {} . {}", p.proto, p.port),
                    Some(format!("{to} . {inner}")),
                );
                let flow = format!("{src} . {to} . {} . {inner}", p.proto);
                b.push(Kind::Fwd, flow.clone(), None);
                b.snat(snat.as_ref(), Kind::Snat, Kind::Masq, &flow)?;
            }
        }
        (Some(Nat::Dnat { to, port: None, snat }), Access::All) => {
            b.same_family(*to, "dnat address")?;
            b.push(Kind::DnatHost, src.to_string(), Some(to.to_string()));
            let flow = format!("{src} . {to}");
            b.push(Kind::FwdHost, flow.clone(), None);
            b.snat(snat.as_ref(), Kind::SnatHost, Kind::MasqHost, &flow)?;
        }
        (Some(Nat::Dnat { port: Some(_), .. }), Access::All) => {
            return Err(BackendError::Unsupported("dnat of every port to a single port"));
        }
        (Some(Nat::Redirect { port }), Access::Ports(ports)) => {
            for p in ports {
                b.push(Kind::Redirect, format!("{src} . {} . {}", p.proto, p.port), Some(port.to_string()));
                b.push(Kind::Allow, format!("{src} . {} . {port}", p.proto), None);
            }
        }
        (Some(Nat::Redirect { .. }), Access::All) => {
            return Err(BackendError::Unsupported("redirect of every port"));
        }
    }
    // Two ports redirected to one local port give the same `allow` element twice.
    let mut seen = std::collections::HashSet::new();
    b.out.retain(|e| seen.insert((e.set, e.key.clone())));
    Ok(b.out)
}

/// `key` or `key : data`, the way an element is written inside `{ }`.
pub fn elem_text(out: &mut String, key: &str, timeout: Option<(u64, &str)>, data: Option<&str>) {
    out.push_str(key);
    if let Some((secs, comment)) = timeout {
        // The comment holds only our own hex id, never user text.
        let _ = write!(out, " timeout {secs}s comment \"{comment}\"");
    }
    if let Some(d) = data {
        out.push_str(" : ");
        out.push_str(d);
    }
}

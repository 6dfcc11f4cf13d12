//! What a grant becomes in our table: elements of named timed sets and maps.
//!
//! Every kind of access has one set (or map) per address family, matched by one static rule.
//! A grant never adds rules, only elements, so the ruleset stays the same size and a grant is
//! one small transaction.
//!
//! A grant bound to the client's source port (knock-and-connect) uses the `..._sport` twin of
//! each set whose key has a port (`allow_sport4`: `saddr . l4proto . sport . dport`), so it
//! lets in exactly that connection and never the other hosts behind the client's NAT address.
//! Forward-all grants have no protocol to take a source port from: they are refused with one.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use spa_backends::{Access, BackendError, Entry, Grant, Nat, ProtoPort, Snat};

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

impl Kind {
    /// Whether the kind has a twin keyed also by the source port (its key has a port).
    pub const fn has_sport(self) -> bool {
        matches!(self.key(), KeyShape::SrcProtoPort | KeyShape::SrcDstProtoPort)
    }
}

/// One of our named sets or maps: a kind in one address family, keyed by the source port too
/// or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetRef {
    /// The kind.
    pub kind: Kind,
    /// IPv6 (`...6`) rather than IPv4 (`...4`).
    pub v6: bool,
    /// The twin whose key also holds the source port (`..._sport4`), for grants bound to one.
    pub sport: bool,
}

impl SetRef {
    /// Every set and map of the table: per kind, IPv4 and IPv6, then their source-port twins.
    pub fn all() -> impl Iterator<Item = SetRef> {
        Kind::ALL.into_iter().flat_map(|kind| {
            let twins = if kind.has_sport() { &[false, true][..] } else { &[false][..] };
            twins
                .iter()
                .flat_map(move |&sport| [SetRef { kind, v6: false, sport }, SetRef { kind, v6: true, sport }])
        })
    }

    /// Its name in the table, e.g. `allow4`, `allow_sport4`.
    pub fn name(self) -> String {
        let sport = if self.sport { "_sport" } else { "" };
        format!("{}{sport}{}", self.kind.base(), if self.v6 { 6 } else { 4 })
    }

    /// Whether it is a map (has data).
    pub fn is_map(self) -> bool {
        self.kind.data() != DataShape::None
    }
}

/// An element's key: the packet fields its set's [`KeyShape`] concatenates, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// `saddr`.
    pub src: IpAddr,
    /// `daddr`, for the shapes that have it.
    pub dst: Option<IpAddr>,
    /// `l4proto . dport`, for the shapes that have it.
    pub port: Option<ProtoPort>,
    /// `th sport`, between the protocol and the destination port, in the `_sport` sets.
    pub sport: Option<u16>,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.src)?;
        if let Some(d) = self.dst {
            write!(f, " . {d}")?;
        }
        if let Some(p) = self.port {
            write!(f, " . {}", p.proto)?;
            if let Some(sp) = self.sport {
                write!(f, " . {sp}")?;
            }
            write!(f, " . {}", p.port)?;
        }
        Ok(())
    }
}

/// What a map element maps to, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Data {
    /// `inet_service` (redirect).
    Port(u16),
    /// An address (DNAT of everything, SNAT).
    Addr(IpAddr),
    /// `addr . inet_service` (DNAT of one port).
    AddrPort(IpAddr, u16),
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::Port(p) => write!(f, "{p}"),
            Data::Addr(a) => write!(f, "{a}"),
            Data::AddrPort(a, p) => write!(f, "{a} . {p}"),
        }
    }
}

/// One element: the set it lives in, its key and (for maps) its data. Built only from typed
/// values; displayed as nft writes it in a listing, `allow4 { 192.0.2.1 . tcp . 22 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Elem {
    /// Where it lives.
    pub set: SetRef,
    /// The key.
    pub key: Key,
    /// The data for maps.
    pub data: Option<Data>,
}

impl fmt::Display for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {{ {}", self.set.name(), self.key)?;
        if let Some(d) = self.data {
            write!(f, " : {d}")?;
        }
        f.write_str(" }")
    }
}

impl Entry for Elem {
    /// A set holds a key once; a map holds one datum per key.
    type Slot = (SetRef, Key);

    fn slot(&self) -> (SetRef, Key) {
        (self.set, self.key)
    }

    /// Every element carries a timeout: the kernel removes it at the grant's deadline.
    fn expires_by_itself(&self) -> bool {
        true
    }
}

struct Builder<'a> {
    grant: &'a Grant,
    v6: bool,
    out: Vec<Elem>,
}

impl Builder<'_> {
    fn push(&mut self, kind: Kind, key: Key, data: Option<Data>) {
        // A key with a port goes to the source-port twin when the grant is bound to one
        // (`expand` refuses the shapes without a port before it gets here).
        let sport = key.sport.is_some();
        self.out.push(Elem { set: SetRef { kind, v6: self.v6, sport }, key, data });
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
        key: Key,
    ) -> Result<(), BackendError> {
        match snat {
            None => {}
            Some(Snat::Masquerade) => self.push(masq_kind, key, None),
            Some(Snat::To(addr)) => {
                self.same_family(*addr, "snat address")?;
                self.push(to_kind, key, Some(Data::Addr(*addr)));
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
///
/// With a source port, each of them goes to its set's `_sport` twin with the port in the key;
/// forward-all (no protocol, no port) with a source port is refused.
pub fn expand(grant: &Grant) -> Result<Vec<Elem>, BackendError> {
    let src = grant.source;
    let mut b = Builder { grant, v6: src.is_ipv6(), out: Vec::new() };
    if let Some(dst) = grant.destination {
        b.same_family(dst, "destination")?;
    }
    let sport = grant.source_port;
    if sport.is_some() && grant.access == Access::All {
        return Err(BackendError::Unsupported("forward-all bound to a source port"));
    }
    let key = |dst: Option<IpAddr>, port: Option<ProtoPort>| Key {
        src,
        dst,
        port,
        sport: if port.is_some() { sport } else { None },
    };
    match (grant.nat.as_deref(), &grant.access) {
        (None, Access::Ports(ports)) => {
            for p in ports.iter() {
                match grant.destination {
                    Some(dst) => b.push(Kind::AllowDst, key(Some(dst), Some(*p)), None),
                    None => b.push(Kind::Allow, key(None, Some(*p)), None),
                }
            }
        }
        (None, Access::All) => {
            b.push(Kind::RouteAll, key(None, None), None);
        }
        (Some(Nat::Route { snat }), Access::All) => {
            b.push(Kind::RouteAll, key(None, None), None);
            b.snat(snat.as_ref(), Kind::SnatRouteAll, Kind::MasqRouteAll, key(None, None))?;
        }
        (Some(Nat::Route { snat }), Access::Ports(ports)) => {
            for p in ports.iter() {
                b.push(Kind::Route, key(None, Some(*p)), None);
                b.snat(snat.as_ref(), Kind::SnatRoute, Kind::MasqRoute, key(None, Some(*p)))?;
            }
        }
        (Some(Nat::Dnat { to, port, snat }), Access::Ports(ports)) => {
            b.same_family(*to, "dnat address")?;
            for p in ports.iter() {
                let inner = ProtoPort::new(p.proto, port.unwrap_or(p.port));
                b.push(Kind::Dnat, key(None, Some(*p)), Some(Data::AddrPort(*to, inner.port)));
                let flow = key(Some(*to), Some(inner));
                b.push(Kind::Fwd, flow, None);
                b.snat(snat.as_ref(), Kind::Snat, Kind::Masq, flow)?;
            }
        }
        (Some(Nat::Dnat { to, port: None, snat }), Access::All) => {
            b.same_family(*to, "dnat address")?;
            b.push(Kind::DnatHost, key(None, None), Some(Data::Addr(*to)));
            let flow = key(Some(*to), None);
            b.push(Kind::FwdHost, flow, None);
            b.snat(snat.as_ref(), Kind::SnatHost, Kind::MasqHost, flow)?;
        }
        (Some(Nat::Dnat { port: Some(_), .. }), Access::All) => {
            return Err(BackendError::Unsupported("dnat of every port to a single port"));
        }
        (Some(Nat::Redirect { port }), Access::Ports(ports)) => {
            for p in ports.iter() {
                b.push(Kind::Redirect, key(None, Some(*p)), Some(Data::Port(*port)));
                b.push(Kind::Allow, key(None, Some(ProtoPort::new(p.proto, *port))), None);
            }
        }
        (Some(Nat::Redirect { .. }), Access::All) => {
            return Err(BackendError::Unsupported("redirect of every port"));
        }
    }
    // Two ports redirected to one local port give the same `allow` element twice.
    let mut seen = std::collections::HashSet::new();
    b.out.retain(|e| seen.insert((e.set, e.key)));
    Ok(b.out)
}

/// `key` or `key : data`, the way an element is written inside `{ }` in nft input, with an
/// optional timeout and comment.
pub fn elem_text(out: &mut String, key: &Key, timeout: Option<(u64, &str)>, data: Option<&Data>) {
    let _ = write!(out, "{key}");
    if let Some((secs, comment)) = timeout {
        // The comment holds only our own hex id, never user text.
        let _ = write!(out, " timeout {secs}s comment \"{comment}\"");
    }
    if let Some(d) = data {
        let _ = write!(out, " : {d}");
    }
}

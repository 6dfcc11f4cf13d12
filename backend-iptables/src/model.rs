//! What a grant becomes in our chains and sets: timed ipset members (plain port grants; the
//! kernel ends them) and rules (NAT, routing, forward-all; the grant ledger ends them).
//!
//! An entry's identity is what it matches and does, never the grant it is tagged with or its
//! deadline: those are written into the firewall when the entry is put (an ipset comment, a
//! `-m comment`), from the [`Held`](spa_backends::Held) the ledger hands over. So a re-knock
//! re-times the same entry, and two grants needing the same rule share one.
//!
//! Rules are written the way `iptables-save` prints them (`-s 192.0.2.1/32`, matches in a fixed
//! order), on both iptables-nft and iptables-legacy, so what [`Backend::observe`] reads back
//! is, with our comment taken out, exactly an entry's [`Display`](fmt::Display).
//!
//! [`Backend::observe`]: spa_backends::Backend::observe

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use spa_backends::{Access, BackendError, Entry, Grant, Nat, ProtoPort, Snat};

/// IPv4 or IPv6: each has its own binaries (`iptables*` / `ip6tables*`), tables and sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both, in a fixed order.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The program name stem (`iptables` / `ip6tables`).
    pub const fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The `family` of an ipset of this family.
    pub const fn ipset_family(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }

    const fn digit(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
        }
    }
}

/// Our chains, one per built-in chain we hook from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// filter INPUT: protections, timed set matches, redirect accepts.
    Input,
    /// filter FORWARD: accepts for translated and routed flows.
    Forward,
    /// nat PREROUTING: DNAT and REDIRECT.
    Prerouting,
    /// nat POSTROUTING: SNAT and MASQUERADE.
    Postrouting,
}

impl Hook {
    /// All of them, filter first.
    pub const ALL: [Hook; 4] = [Hook::Input, Hook::Forward, Hook::Prerouting, Hook::Postrouting];

    /// The built-in chain that jumps to ours.
    pub const fn builtin(self) -> &'static str {
        match self {
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Prerouting => "PREROUTING",
            Hook::Postrouting => "POSTROUTING",
        }
    }

    /// The table it lives in.
    pub const fn table(self) -> &'static str {
        match self {
            Hook::Input | Hook::Forward => "filter",
            Hook::Prerouting | Hook::Postrouting => "nat",
        }
    }
}

/// Names of everything we create, derived from the (validated) prefix. Cheap to clone: every
/// entry carries it, so that it can name its chain or set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Names {
    prefix: Arc<str>,
}

impl Names {
    /// From a prefix already checked by [`Config::validate`](crate::Config::validate).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.into() }
    }

    /// Our chain for `hook` (`SPA_INPUT`).
    pub fn chain(&self, hook: Hook) -> String {
        format!("{}_{}", self.prefix, hook.builtin())
    }

    /// All our chains, for messages (`SPA_*`).
    pub fn chain_glob(&self) -> String {
        format!("{}_*", self.prefix)
    }

    /// Our timed set for `family`; `with_dst` is the one that also matches the local address.
    pub fn set(&self, family: Family, with_dst: bool) -> String {
        let d = if with_dst { "d" } else { "" };
        format!("{}{}{d}", self.prefix.to_ascii_lowercase(), family.digit())
    }

    /// Every set we own, with its family and kind.
    pub fn sets(&self) -> Vec<(String, Family, bool)> {
        let mut v = Vec::new();
        for f in Family::ALL {
            for d in [false, true] {
                v.push((self.set(f, d), f, d));
            }
        }
        v
    }

    /// Which of our chains `chain` is.
    pub fn hook_of_chain(&self, chain: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| self.chain(*h) == chain)
    }
}

/// One member of a timed set: a source allowed to one local port (and, in the `...d` sets,
/// only towards one local address). The kernel removes it at its timeout.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    names: Names,
    source: IpAddr,
    port: ProtoPort,
    local: Option<IpAddr>,
}

impl Member {
    /// The set it lives in (`spa4`, `spa6d`, ...).
    pub fn set(&self) -> String {
        self.names.set(Family::of(self.source), self.local.is_some())
    }

    /// The member as ipset writes it: `192.0.2.1,tcp:22` or `192.0.2.1,tcp:22,198.51.100.1`.
    pub fn text(&self) -> String {
        let local = self.local.map(|d| format!(",{d}")).unwrap_or_default();
        format!("{},{}:{}{local}", self.source, self.port.proto.name(), self.port.port)
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ipset {} {}", self.set(), self.text())
    }
}

/// One rule in one of our chains, without our tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    names: Names,
    family: Family,
    hook: Hook,
    /// The matches, as `iptables-save` prints them (`-s 192.0.2.1/32 -p tcp -m tcp --dport 22`).
    matches: String,
    /// The target with its options (`-j DNAT --to-destination 10.0.0.2:22`).
    target: String,
}

impl Rule {
    /// Its address family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Which of our chains it lives in.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Its chain's name.
    pub fn chain(&self) -> String {
        self.names.chain(self.hook)
    }

    /// What it matches.
    pub fn matches(&self) -> &str {
        &self.matches
    }

    /// The rule after `-A <chain>` as `iptables-save` prints it, without our tag.
    pub fn untagged(&self) -> String {
        format!("{} {}", self.matches, self.target)
    }

    /// The rule after `-A <chain>` with our tag for `tag`: the comment goes last among the
    /// matches, where iptables-nft (which keeps it apart from the matches) prints it too.
    pub fn tagged(&self, tag: &str) -> String {
        format!("{} -m comment --comment {tag} {}", self.matches, self.target)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -t {} -A {} {} {}",
            self.family.program(),
            self.hook.table(),
            self.chain(),
            self.matches,
            self.target
        )
    }
}

/// One thing a grant puts into the firewall.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Item {
    /// A timed set member (plain port grants).
    Member(Member),
    /// A rule (everything a set cannot express).
    Rule(Rule),
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Member(m) => m.fmt(f),
            Item::Rule(r) => r.fmt(f),
        }
    }
}

/// Where an [`Item`] lives: a member is its own slot; a rule's slot is its chain and what it
/// matches, so two rules that match the same packets with different targets (a DNAT to
/// another host, a REDIRECT of the same port) cannot both be live: the ledger refuses the
/// second grant rather than let the newer rule, inserted first, silently take the traffic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// A set member.
    Member(Member),
    /// A rule's family, chain and matches.
    Rule(Family, Hook, String),
}

impl Entry for Item {
    type Slot = Slot;

    fn slot(&self) -> Slot {
        match self {
            Item::Member(m) => Slot::Member(m.clone()),
            Item::Rule(r) => Slot::Rule(r.family, r.hook, r.matches.clone()),
        }
    }

    /// Set members carry an ipset timeout; rules stay until removed.
    fn expires_by_itself(&self) -> bool {
        matches!(self, Item::Member(_))
    }
}

fn same_family(what: &str, a: IpAddr, b: IpAddr) -> Result<(), BackendError> {
    if Family::of(a) == Family::of(b) {
        Ok(())
    } else {
        Err(BackendError::Invalid(format!("{what} {b} is not in the address family of the source {a}")))
    }
}

/// An address as `iptables-save` prints it in `-s`/`-d`: with its full prefix length.
fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// `--to-destination` value: `[v6]:port` needs brackets, a bare address does not.
fn to_destination(to: IpAddr, port: Option<u16>) -> String {
    match (to, port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

/// `-p tcp -m tcp --dport 22`.
pub fn proto_match(pp: ProtoPort) -> String {
    let p = pp.proto.name();
    format!("-p {p} -m {p} --dport {}", pp.port)
}

/// `-p tcp -m tcp --sport 40000 --dport 22` (the order `iptables-save` prints), or without
/// `--sport` for a grant of the whole address.
fn flow_match(pp: ProtoPort, sport: Option<u16>) -> String {
    match sport {
        Some(sp) => {
            let p = pp.proto.name();
            format!("-p {p} -m {p} --sport {sp} --dport {}", pp.port)
        }
        None => proto_match(pp),
    }
}

fn snat_target(snat: &Snat) -> String {
    // MASQUERADE without --to-ports: fwknop adds `--to-ports <external port>`, which rewrites
    // the *source* port of the translated flow; nothing needs that.
    match snat {
        Snat::Masquerade => "-j MASQUERADE".to_owned(),
        Snat::To(a) => format!("-j SNAT --to-source {a}"),
    }
}

/// The entries a grant needs. Pure: the same grant always gives the same entries.
///
/// - no NAT, ports: set members (`spa4`, or `spa4d` with a destination);
/// - no NAT, all: an INPUT accept of everything from the source;
/// - `Dnat`: per port (or once for all) a DNAT in PREROUTING, a FORWARD accept of exactly the
///   translated connection, and the source NAT if asked;
/// - `Route`: FORWARD accepts of the ports (or everything), plus source NAT if asked;
/// - `Redirect`: per port a REDIRECT, and an INPUT accept of exactly the redirected connection.
///
/// A grant bound to a source port matches it (`--sport`) in every rule; ipset has no type
/// with two ports, so its plain port grants are INPUT accepts instead of set members
/// (`-s 192.0.2.1/32 -p tcp -m tcp --sport 40000 --dport 22 -j ACCEPT`), removed by the
/// ledger at the deadline. Forward-all with a source port is refused: nothing to match it on.
pub fn expand(names: &Names, g: &Grant) -> Result<Vec<Item>, BackendError> {
    let family = Family::of(g.source);
    let sport = g.source_port;
    if sport.is_some() && g.access == Access::All {
        return Err(BackendError::Unsupported("forward-all bound to a source port"));
    }
    let src = host(g.source);
    if let Some(d) = g.destination {
        same_family("destination", g.source, d)?;
    }
    let dst = g.destination.map(|d| format!(" -d {}", host(d))).unwrap_or_default();
    // Without an explicit destination, DNAT and REDIRECT catch only traffic addressed to this
    // host, never traffic from the client that merely passes through it.
    let local =
        if g.destination.is_some() { String::new() } else { " -m addrtype --dst-type LOCAL".to_owned() };
    let mut out = Vec::new();
    let mut rule = |hook: Hook, matches: String, target: String| {
        out.push(Item::Rule(Rule { names: names.clone(), family, hook, matches, target }));
    };
    match (g.nat.as_deref(), &g.access) {
        (None, Access::Ports(ports)) if sport.is_some() => {
            for pp in ports.iter() {
                rule(Hook::Input, format!("-s {src}{dst} {}", flow_match(*pp, sport)), "-j ACCEPT".into());
            }
        }
        (None, Access::Ports(ports)) => {
            let members = ports.iter().map(|pp| {
                Item::Member(Member {
                    names: names.clone(),
                    source: g.source,
                    port: *pp,
                    local: g.destination,
                })
            });
            return Ok(dedup(members.collect()));
        }
        (None, Access::All) => rule(Hook::Input, format!("-s {src}{dst}"), "-j ACCEPT".into()),
        (Some(Nat::Dnat { to, port, snat }), access) => {
            same_family("NAT target", g.source, *to)?;
            if let Some(Snat::To(a)) = snat {
                same_family("SNAT address", g.source, *a)?;
            }
            let flows: Vec<(Option<ProtoPort>, Option<ProtoPort>)> = match access {
                Access::Ports(ports) => ports
                    .iter()
                    .map(|pp| (Some(*pp), Some(ProtoPort::new(pp.proto, port.unwrap_or(pp.port)))))
                    .collect(),
                Access::All if port.is_some() => {
                    return Err(BackendError::Invalid("forward-all DNAT cannot change the port".into()));
                }
                Access::All => vec![(None, None)],
            };
            for (ext, int) in flows {
                let ext_m = ext.map(|pp| format!(" {}", flow_match(pp, sport))).unwrap_or_default();
                let int_m = int.map(|pp| format!(" {}", flow_match(pp, sport))).unwrap_or_default();
                // The forward accept and the source NAT match only connections that our DNAT
                // translated from the external port, not any traffic to the internal host.
                let orig = ext.map(|pp| format!(" --ctorigdstport {}", pp.port)).unwrap_or_default();
                let flow = format!("-s {src} -d {}{int_m} -m conntrack --ctstate DNAT{orig}", host(*to));
                let target = to_destination(*to, int.map(|pp| pp.port));
                rule(
                    Hook::Prerouting,
                    format!("-s {src}{dst}{ext_m}{local}"),
                    format!("-j DNAT --to-destination {target}"),
                );
                rule(Hook::Forward, flow.clone(), "-j ACCEPT".into());
                if let Some(s) = snat {
                    rule(Hook::Postrouting, flow, snat_target(s));
                }
            }
        }
        (Some(Nat::Route { snat }), access) => {
            if let Some(Snat::To(a)) = snat {
                same_family("SNAT address", g.source, *a)?;
            }
            let matches: Vec<String> = match access {
                Access::Ports(ports) => {
                    ports.iter().map(|pp| format!(" {}", flow_match(*pp, sport))).collect()
                }
                Access::All => vec![String::new()],
            };
            for m in matches {
                rule(Hook::Forward, format!("-s {src}{dst}{m}"), "-j ACCEPT".into());
                if let Some(s) = snat {
                    rule(Hook::Postrouting, format!("-s {src}{dst}{m}"), snat_target(s));
                }
            }
        }
        (Some(Nat::Redirect { port }), Access::Ports(ports)) => {
            for pp in ports.iter() {
                rule(
                    Hook::Prerouting,
                    format!("-s {src}{dst} {}{local}", flow_match(*pp, sport)),
                    format!("-j REDIRECT --to-ports {port}"),
                );
                // The redirected connection arrives at the local port; let exactly it in, even
                // when that port is protected.
                rule(
                    Hook::Input,
                    format!(
                        "-s {src} {} -m conntrack --ctstate DNAT --ctorigdstport {}",
                        flow_match(ProtoPort::new(pp.proto, *port), sport),
                        pp.port
                    ),
                    "-j ACCEPT".into(),
                );
            }
        }
        (Some(Nat::Redirect { .. }), Access::All) => {
            return Err(BackendError::Invalid("a redirect needs ports, not forward-all".into()));
        }
    }
    Ok(dedup(out))
}

/// The same entry twice (a port listed twice) is one entry; the first place is kept.
fn dedup(items: Vec<Item>) -> Vec<Item> {
    let mut seen = HashSet::with_capacity(items.len());
    items.into_iter().filter(|i| seen.insert(i.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::testkit::grant;
    use spa_backends::{GrantId, Ledger, Refusal};

    fn names() -> Names {
        Names::new("SPA")
    }

    #[test]
    fn entries_carry_neither_the_grant_id_nor_the_deadline() {
        let n = names();
        for g in [
            grant(1).ports("tcp/22,udp/53"),
            grant(1).ports("tcp/2222").dnat("10.0.0.2", Some(22), Some(Snat::Masquerade)),
            grant(1).ports("tcp/80").redirect(8080),
            grant(1).all().route(None),
        ] {
            let a: Grant = g.clone().times(1000, 1030).into();
            let b: Grant = Grant { id: GrantId(99), ..g.times(1000, 9000).into() };
            let (ea, eb) = (expand(&n, &a).unwrap(), expand(&n, &b).unwrap());
            assert!(!ea.is_empty());
            assert_eq!(ea, eb, "a re-knock must find the same entries");
            assert!(ea.iter().all(|e| !e.to_string().contains("spa:id")), "{ea:?}");
        }
    }

    #[test]
    fn only_members_expire_by_themselves() {
        let n = names();
        let plain = expand(&n, &grant(1).ports("tcp/22").into()).unwrap();
        let nat = expand(&n, &grant(1).ports("tcp/80").redirect(8080).into()).unwrap();
        assert!(plain.iter().all(Entry::expires_by_itself));
        assert!(nat.iter().all(|e| !e.expires_by_itself()));
    }

    /// A DNAT of one port to another host, or a redirect of it, matches the same packets as a
    /// live DNAT: the ledger refuses it rather than let the newer rule take the traffic. Other
    /// ports, and the same DNAT again (a re-knock), are fine.
    #[test]
    fn rules_matching_the_same_packets_with_another_target_conflict() {
        let n = names();
        let map = |g: &Grant| expand(&n, g);
        let mut ledger = Ledger::new();
        let first: Grant = grant(1).ports("tcp/2222").dnat("10.0.0.2", Some(22), None).times(0, 100).into();
        let plan = ledger.plan_grant(first, 10, &map).unwrap();
        ledger.commit(plan, 10, &map);
        for clash in [
            grant(2).ports("tcp/2222").dnat("10.0.0.3", Some(22), None),
            grant(2).ports("tcp/2222").dnat("10.0.0.2", Some(23), None),
            grant(2).ports("tcp/2222").redirect(22),
        ] {
            match ledger.plan_grant(clash.times(0, 100).into(), 10, &map) {
                Err(refused) => assert!(matches!(refused.1, Refusal::Conflict { with: GrantId(1) })),
                Ok(p) => panic!("not refused: {:?}", p.changes()),
            }
        }
        let other_port = grant(3).ports("tcp/2223").dnat("10.0.0.3", Some(22), None).times(0, 100).into();
        assert!(ledger.plan_grant(other_port, 10, &map).is_ok());
    }
}

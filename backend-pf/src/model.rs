//! What a grant puts into PF: a source address in one of the anchor's tables. Pure.
//!
//! The anchor's rules are fixed by the configuration and loaded at `prepare`; a grant only adds
//! its source to the tables of the rules it needs, so the rules never change for a grant and a
//! table lookup (fast, whatever the number of grants) decides.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use spa_backends::{Access, BackendError, Entry, Grant, Nat, Proto, ProtoPort, Snat};

use crate::config::{Config, Forward};

/// One of the anchor's tables. Each belongs to exactly one rule, so a table's name says what
/// its addresses may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Sources allowed to this local port (`spa_tcp_22`).
    Port(ProtoPort),
    /// Sources allowed everything on this host (`spa_all`, forward-all grants without NAT).
    All,
    /// Sources redirected from this external port to the forward's internal host
    /// (`spa_fwd_tcp_2222`).
    Forward(ProtoPort),
    /// Sources of that forward whose connections are also source-NATed (`spa_snat_tcp_2222`).
    Snat(ProtoPort),
}

impl Table {
    /// Its name in the anchor: at most 18 characters, within PF's 31.
    pub fn name(&self) -> String {
        match self {
            Table::Port(pp) => format!("spa_{}_{}", pp.proto.name(), pp.port),
            Table::All => "spa_all".to_owned(),
            Table::Forward(pp) => format!("spa_fwd_{}_{}", pp.proto.name(), pp.port),
            Table::Snat(pp) => format!("spa_snat_{}_{}", pp.proto.name(), pp.port),
        }
    }

    /// The table a name stands for, if it is one of ours.
    pub fn parse(name: &str) -> Option<Table> {
        if name == "spa_all" {
            return Some(Table::All);
        }
        let rest = name.strip_prefix("spa_")?;
        let (kind, rest) = match rest.split_once('_') {
            Some(("fwd", r)) => ("fwd", r),
            Some(("snat", r)) => ("snat", r),
            _ => ("port", rest),
        };
        let (proto, port) = rest.split_once('_')?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return None,
        };
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        let pp = ProtoPort::new(proto, port);
        // Only the canonical spelling (no leading zeros): the name must round-trip.
        let table = match kind {
            "fwd" => Table::Forward(pp),
            "snat" => Table::Snat(pp),
            _ => Table::Port(pp),
        };
        (table.name() == name).then_some(table)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A source address in one table: the only thing a grant puts into PF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// The table.
    pub table: Table,
    /// The address.
    pub source: IpAddr,
}

impl fmt::Display for Member {
    /// `<spa_tcp_22> 192.0.2.1`: the table as pf.conf writes it, then the address as `pfctl -T
    /// show` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}> {}", self.table, self.source)
    }
}

impl Entry for Member {
    // An address is in a table or not: the member is its own slot, shared by every grant of
    // the same source that needs it.
    type Slot = Member;

    fn slot(&self) -> Member {
        *self
    }

    /// PF tables have no per-entry timeout: the ledger removes each member at its deadline.
    fn expires_by_itself(&self) -> bool {
        false
    }
}

/// The tables the configuration's rules use, in the order the anchor declares them.
pub fn tables(config: &Config) -> Vec<Table> {
    let mut v: Vec<Table> = config.grantable().into_iter().map(Table::Port).collect();
    v.push(Table::All);
    for f in &config.forward {
        v.push(Table::Forward(f.port));
        if f.snat_interface.is_some() {
            v.push(Table::Snat(f.port));
        }
    }
    v
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn forward_for(config: &Config, pp: ProtoPort) -> Result<&Forward, BackendError> {
    config.forward.iter().find(|f| f.port == pp).ok_or_else(|| {
        BackendError::Invalid(format!(
            "no [[firewall.pf.forward]] for {pp}: the anchor has no rdr rule for it"
        ))
    })
}

/// The members a grant needs. Pure: the same grant always gives the same members.
///
/// - no NAT, ports: the source in each port's table (every port must be in `ports` or
///   `protect`: the anchor has no rule for others);
/// - no NAT, all: the source in `spa_all`;
/// - `Dnat` of ports: per port, the source in the table of the configured forward of that
///   external port (which must go to the grant's host and port), and with masquerade also in
///   its source-NAT table.
///
/// Refused: a grant restricted to one local address (a stanza `destination`: a table holds
/// sources only), routed forwarding, local redirects, forward-all DNAT and SNAT to a fixed
/// address (none of them has a rule in the anchor).
pub fn expand(config: &Config, grant: &Grant) -> Result<Vec<Member>, BackendError> {
    if grant.source_port.is_some() {
        // Tables hold addresses: never widen a source-port grant to the whole address.
        return Err(BackendError::Unsupported("a grant bound to a source port (pf tables hold addresses)"));
    }
    if grant.destination.is_some() {
        return Err(BackendError::Unsupported(
            "a grant restricted to one local address (stanza destination)",
        ));
    }
    let member = |table| Member { table, source: grant.source };
    let mut out = BTreeSet::new();
    match (grant.nat.as_deref(), &grant.access) {
        (None, Access::Ports(ports)) => {
            let grantable = config.grantable();
            for pp in ports.iter() {
                if !grantable.contains(pp) {
                    return Err(BackendError::Invalid(format!(
                        "{pp} is not in [firewall.pf] ports or protect: the anchor has no rule for it"
                    )));
                }
                out.insert(member(Table::Port(*pp)));
            }
        }
        (None, Access::All) => {
            out.insert(member(Table::All));
        }
        (Some(Nat::Dnat { to, port, snat }), Access::Ports(ports)) => {
            for pp in ports.iter() {
                let f = forward_for(config, *pp)?;
                let want = port.unwrap_or(pp.port);
                if f.to != *to || f.internal_port() != want {
                    return Err(BackendError::Invalid(format!(
                        "the grant forwards {pp} to {to} port {want}, the configured forward to {} port {}",
                        f.to,
                        f.internal_port()
                    )));
                }
                if grant.source.is_ipv4() != to.is_ipv4() {
                    return Err(BackendError::Invalid(format!(
                        "the {} source {} cannot be forwarded to the {} host {to}",
                        family(grant.source),
                        grant.source,
                        family(*to)
                    )));
                }
                out.insert(member(Table::Forward(*pp)));
                match snat {
                    None => {}
                    Some(Snat::Masquerade) if f.snat_interface.is_some() => {
                        out.insert(member(Table::Snat(*pp)));
                    }
                    Some(Snat::Masquerade) => {
                        return Err(BackendError::Invalid(format!(
                            "the grant asks for source NAT but the forward of {pp} has no snat_interface"
                        )));
                    }
                    Some(Snat::To(_)) => {
                        return Err(BackendError::Unsupported(
                            "source NAT to a fixed address (use masquerade)",
                        ));
                    }
                }
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
    use spa_backends::GrantId;
    use spa_backends::testkit::grant;

    fn config() -> Config {
        Config::from_table(
            &"ports = [\"udp/53\"]\nprotect = [\"tcp/22\"]\n\
              [[forward]]\nport = \"tcp/2222\"\nto = \"192.168.77.10\"\nto_port = 22\ninterface = \"em0\"\n\
              snat_interface = \"em1\"\n\
              [[forward]]\nport = \"tcp/8443\"\nto = \"fd00::10\"\nto_port = 443\ninterface = \"em0\"\n"
                .parse()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn table_names_round_trip_and_strangers_are_not_ours() {
        for t in tables(&config()) {
            assert_eq!(Table::parse(&t.name()), Some(t), "{t}");
            assert!(t.name().len() <= 31);
        }
        for other in ["spa_tcp_022", "spa_tcp_0", "spa_icmp_1", "spa", "spa_tcp", "xspa_all", "spa_fwd_tcp_x"]
        {
            assert_eq!(Table::parse(other), None, "{other}");
        }
        assert_eq!(Table::Snat("udp/65535".parse().unwrap()).name(), "spa_snat_udp_65535");
    }

    #[test]
    fn members_carry_neither_the_grant_id_nor_the_deadline() {
        let c = config();
        for g in [
            grant(1).ports("tcp/22,udp/53"),
            grant(1).all(),
            grant(1).ports("tcp/2222").dnat("192.168.77.10", Some(22), Some(Snat::Masquerade)),
        ] {
            let a: Grant = g.clone().times(1000, 1030).into();
            let b: Grant = Grant { id: GrantId(99), ..g.times(1000, 9000).into() };
            let (ea, eb) = (expand(&c, &a).unwrap(), expand(&c, &b).unwrap());
            assert!(!ea.is_empty());
            assert_eq!(ea, eb);
            assert!(ea.iter().all(|m| m.source == a.source && !m.expires_by_itself()));
        }
        let text: Vec<String> = expand(
            &c,
            &grant(1).ports("tcp/2222").dnat("192.168.77.10", Some(22), Some(Snat::Masquerade)).into(),
        )
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(text, ["<spa_fwd_tcp_2222> 192.0.2.1", "<spa_snat_tcp_2222> 192.0.2.1"]);
    }

    #[test]
    fn what_the_anchor_has_no_rule_for_is_refused() {
        let c = config();
        let refused = |g: spa_backends::testkit::GrantBuilder| expand(&c, &g.into()).unwrap_err().to_string();
        assert!(refused(grant(1).ports("tcp/443")).contains("tcp/443 is not in [firewall.pf] ports"));
        assert!(
            refused(grant(1).ports("tcp/2223").dnat("192.168.77.10", Some(22), None))
                .contains("no [[firewall.pf.forward]]")
        );
        assert!(
            refused(grant(1).ports("tcp/2222").dnat("192.168.77.11", Some(22), None))
                .contains("configured forward")
        );
        assert!(refused(grant(1).ports("tcp/2222").dnat("192.168.77.10", None, None)).contains("port 2222"));
        assert!(
            refused(grant(1).source("2001:db8::1").ports("tcp/2222").dnat("192.168.77.10", Some(22), None))
                .contains("cannot be forwarded")
        );
        assert!(
            refused(grant(1).ports("tcp/8443").source("2001:db8::1").dnat(
                "fd00::10",
                Some(443),
                Some(Snat::Masquerade)
            ))
            .contains("no snat_interface")
        );
        assert!(
            refused(grant(1).ports("tcp/2222").dnat(
                "192.168.77.10",
                Some(22),
                Some(Snat::To("10.0.0.1".parse().unwrap()))
            ))
            .contains("fixed address")
        );
        assert!(refused(grant(1).all().dnat("192.168.77.10", None, None)).contains("forward-all"));
        assert!(refused(grant(1).ports("tcp/22").route(None)).contains("routed"));
        assert!(refused(grant(1).ports("tcp/22").redirect(2222)).contains("redirection"));
        assert!(refused(grant(1).ports("tcp/22").destination("198.51.100.1")).contains("destination"));
        // IPv6 forwards work in PF.
        let ok = expand(
            &c,
            &grant(1).source("2001:db8::1").ports("tcp/8443").dnat("fd00::10", Some(443), None).into(),
        );
        assert_eq!(ok.unwrap().len(), 1);
    }

    #[test]
    fn a_port_listed_twice_is_one_member() {
        let m = expand(&config(), &grant(1).ports("tcp/22,tcp/22").into()).unwrap();
        assert_eq!(m.len(), 1);
    }
}

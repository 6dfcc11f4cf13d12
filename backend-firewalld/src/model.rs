//! What a grant becomes in firewalld: zone rich rules, typed, and their text.
//!
//! A grant is one rich rule per port: an `accept` for the source, port and protocol (local
//! access), or a `forward-port` (DNAT to an internal host, or a local redirect). The rule's
//! text is rendered by [`render`], a pure function, in firewalld's own normalised form (the
//! order `Rich_Rule.__str__` writes, so a listing reads back byte for byte what we added).
//!
//! Every rule carries a `priority` in the reserved range (see [`Priorities`]): it is how the
//! backend recognises its own rules, and it changes with the grant's deadline, so the rule
//! text of an extension differs from the one it replaces. That matters because firewalld
//! (1.3) never cancels its rule timers on a reload: an old timer removes whatever rule has
//! its text when it fires, so a re-added rule with the same text would close early.

use std::fmt;
use std::net::IpAddr;

use spa_backends::{Access, BackendError, Entry, Grant, Nat, Proto, ProtoPort};

/// The highest priority firewalld accepts (`Rich_Rule.priority_max`).
pub const PRIORITY_MAX: i16 = i16::MAX;

/// What a rule does with the matched packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `accept`: local access to the port.
    Accept,
    /// `forward-port ... to-port=".." [to-addr=".."]`: DNAT to `to_addr` (an internal host),
    /// or a local redirect to `to_port` when `to_addr` is `None`.
    ForwardPort {
        /// The port the packet is sent on.
        to_port: u16,
        /// The internal host, or `None` for a local redirect.
        to_addr: Option<IpAddr>,
    },
}

/// One rich rule of a grant, without its priority (which carries the deadline and comes with
/// each change). Built only from typed values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    /// `source address="..."`: the client.
    pub source: IpAddr,
    /// `destination address="..."`: the local address the access is restricted to.
    pub destination: Option<IpAddr>,
    /// `port port=".." protocol=".."` (or the forward-port's port and protocol).
    pub port: ProtoPort,
    /// What it does.
    pub action: Action,
}

impl Rule {
    /// `ipv4` or `ipv6`, from the source (firewalld needs the family with a source address).
    pub fn family(&self) -> &'static str {
        if self.source.is_ipv6() { "ipv6" } else { "ipv4" }
    }

    /// The rule's text after `rule [priority=".."] `, as firewalld normalises it.
    fn body(&self, f: &mut impl fmt::Write) -> fmt::Result {
        write!(f, "family=\"{}\" source address=\"{}\"", self.family(), self.source)?;
        if let Some(d) = self.destination {
            write!(f, " destination address=\"{d}\"")?;
        }
        let (port, proto) = (self.port.port, self.port.proto.name());
        match self.action {
            Action::Accept => write!(f, " port port=\"{port}\" protocol=\"{proto}\" accept"),
            Action::ForwardPort { to_port, to_addr } => {
                write!(f, " forward-port port=\"{port}\" protocol=\"{proto}\" to-port=\"{to_port}\"")?;
                match to_addr {
                    Some(a) => write!(f, " to-addr=\"{a}\""),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The rule as firewalld writes it, without the priority: `rule family="ipv4" source
/// address="198.51.100.7" port port="22" protocol="tcp" accept`. `spad list --firewall` shows
/// this; the firewall holds it with a `priority=".."` after `rule`.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rule ")?;
        self.body(f)
    }
}

impl Entry for Rule {
    /// An accept is its own identity (two grants asking for it share it); a forward-port is
    /// identified by what it matches, so a second grant forwarding the same source and port
    /// elsewhere conflicts instead of racing the first one's DNAT.
    type Slot = (IpAddr, Option<IpAddr>, ProtoPort, bool);

    fn slot(&self) -> Self::Slot {
        match self.action {
            Action::Accept => (self.source, self.destination, self.port, false),
            Action::ForwardPort { .. } => (self.source, self.destination, self.port, true),
        }
    }

    /// Every rule is added with a timeout: firewalld's own timer removes it at the deadline.
    fn expires_by_itself(&self) -> bool {
        true
    }
}

/// The reserved priorities `min..=32767`: rules of our shape with a priority in this range are
/// ours. A rule's priority is `min + (deadline mod span)`, so the text changes with every
/// extension, and the deadline can be read back from a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priorities {
    min: i16,
}

/// Fewest priorities the range may have: a deadline repeats its priority every `span`
/// seconds, so the range should be longer than the longest grant (see the config docs).
pub const MIN_SPAN: u64 = 600;

impl Priorities {
    /// The range starting at `min` (checked at config load: positive, room for
    /// [`MIN_SPAN`] values).
    pub fn new(min: i16) -> Result<Self, BackendError> {
        let span = i64::from(PRIORITY_MAX) - i64::from(min) + 1;
        if min < 1 || span < MIN_SPAN as i64 {
            return Err(BackendError::Invalid(format!(
                "priority_min {min} must be between 1 and {} (rules of lower priority would run before \
                 the zone's own deny rules; the range needs at least {MIN_SPAN} values)",
                i64::from(PRIORITY_MAX) - MIN_SPAN as i64 + 1
            )));
        }
        Ok(Self { min })
    }

    /// The lowest reserved priority.
    pub fn min(self) -> i16 {
        self.min
    }

    /// How many priorities the range holds (seconds before a deadline's priority repeats).
    pub fn span(self) -> u64 {
        u64::try_from(i64::from(PRIORITY_MAX) - i64::from(self.min) + 1).unwrap_or(1)
    }

    /// The priority of a rule that ends at `until`.
    pub fn of(self, until: u64) -> i16 {
        let offset = until % self.span();
        // offset < span <= 32767, so the sum fits.
        i16::try_from(i64::from(self.min) + i64::try_from(offset).unwrap_or(0)).unwrap_or(PRIORITY_MAX)
    }

    /// Whether `p` is one of ours.
    pub fn contains(self, p: i16) -> bool {
        p >= self.min
    }

    /// The deadline a rule of priority `p` was added with, as seen at `now`: the one value
    /// with that priority from two seconds ago (firewalld's timers fire up to a second or
    /// two late) to a whole span ahead.
    pub fn until(self, p: i16, now: u64) -> Option<u64> {
        if !self.contains(p) {
            return None;
        }
        let span = self.span();
        let offset = u64::try_from(i64::from(p) - i64::from(self.min)).ok()?;
        let from = now.saturating_sub(2);
        let base = from - from % span;
        let candidate = base + offset;
        Some(if candidate < from { candidate + span } else { candidate })
    }
}

/// The rule's full text as firewalld normalises it, with its priority.
pub fn render(rule: &Rule, priority: i16) -> String {
    let mut s = format!("rule priority=\"{priority}\" ");
    // Writing into a String cannot fail.
    let _ = rule.body(&mut s);
    s
}

/// Reads back a rule from a zone's listing: `Some((rule, priority))` when the text is exactly
/// what [`render`] writes for a rule of ours (a priority in `range`, our shape, and addresses
/// written as we write them), `None` for everything else (the admin's rules).
pub fn parse(text: &str, range: Priorities) -> Option<(Rule, i16)> {
    let rest = text.strip_prefix("rule priority=\"")?;
    let (priority, _) = rest.split_once('"')?;
    let priority: i16 = priority.parse().ok()?;
    if !range.contains(priority) {
        return None;
    }
    let mut attrs = Attrs::new(text);
    let family = attrs.value("family")?;
    let source: IpAddr = attrs.value("source address")?.parse().ok()?;
    let destination = match attrs.peek_word() {
        Some("destination") => Some(attrs.value("destination address")?.parse().ok()?),
        _ => None,
    };
    let element = attrs.word()?;
    let port: u16 = attrs.value("port")?.parse().ok()?;
    let proto = match attrs.value("protocol")? {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    let port = ProtoPort { proto, port };
    let action = match element {
        "port" => {
            if attrs.word()? != "accept" {
                return None;
            }
            Action::Accept
        }
        "forward-port" => {
            let to_port: u16 = attrs.value("to-port")?.parse().ok()?;
            let to_addr = match attrs.peek_word() {
                Some(_) => Some(attrs.value("to-addr")?.parse().ok()?),
                None => None,
            };
            Action::ForwardPort { to_port, to_addr }
        }
        _ => return None,
    };
    let rule = Rule { source, destination, port, action };
    // Only what we would write ourselves: same family, canonical addresses, nothing more.
    (family == rule.family() && render(&rule, priority) == text).then_some((rule, priority))
}

/// A small reader for `name="value"` sequences (enough for our own rule shapes; anything
/// else fails the final round-trip check in [`parse`]).
struct Attrs<'a> {
    rest: &'a str,
}

impl<'a> Attrs<'a> {
    fn new(text: &'a str) -> Self {
        // Skip `rule priority=".."`.
        let rest = text.splitn(3, ' ').nth(2).unwrap_or("");
        Self { rest }
    }

    fn peek_word(&self) -> Option<&'a str> {
        let w = self.rest.split([' ', '=']).next()?;
        (!w.is_empty()).then_some(w)
    }

    fn word(&mut self) -> Option<&'a str> {
        let (w, rest) = match self.rest.split_once(' ') {
            Some((w, rest)) => (w, rest),
            None => (self.rest, ""),
        };
        self.rest = rest;
        (!w.is_empty()).then_some(w)
    }

    /// `name="value"` (`name` may be two words: `source address`).
    fn value(&mut self, name: &str) -> Option<&'a str> {
        let rest = self.rest.strip_prefix(name)?.strip_prefix("=\"")?;
        let (value, rest) = rest.split_once('"')?;
        self.rest = rest.strip_prefix(' ').unwrap_or(rest);
        Some(value)
    }
}

/// The rules a grant needs. Pure: the same grant always gives the same rules.
///
/// - no NAT, ports: an `accept` per port (with `destination address` when the grant names
///   the local address);
/// - `Dnat` (no source NAT), ports: a `forward-port` with `to-addr` per port (firewalld's
///   `ct status dnat accept` in its forward chain lets the translated flow through);
/// - `Redirect`, ports: a `forward-port` without `to-addr` (a local redirect).
///
/// Refused (`Unsupported`): forward-all, routed forwarding, and source NAT (SNAT or
/// masquerade), which firewalld offers only per zone or in policies that exist only in the
/// permanent configuration.
pub fn expand(grant: &Grant) -> Result<Vec<Rule>, BackendError> {
    if grant.source_port.is_some() {
        // A rich rule has one element: `port` and `source-port` cannot be combined, and the
        // grant is never widened to the whole address.
        return Err(BackendError::Unsupported(
            "a grant bound to a source port (a rich rule cannot match it)",
        ));
    }
    let ports = match &grant.access {
        Access::Ports(p) => p,
        Access::All => return Err(BackendError::Unsupported("forward-all (every port) with firewalld")),
    };
    let same_family = |addr: IpAddr, what: &str| {
        if addr.is_ipv6() == grant.source.is_ipv6() {
            Ok(())
        } else {
            Err(BackendError::Invalid(format!(
                "grant {}: {what} {addr} is not in the address family of source {}",
                grant.id, grant.source
            )))
        }
    };
    if let Some(d) = grant.destination {
        same_family(d, "destination")?;
    }
    let rule =
        |port: ProtoPort, action| Rule { source: grant.source, destination: grant.destination, port, action };
    match grant.nat.as_deref() {
        None => Ok(ports.iter().map(|p| rule(*p, Action::Accept)).collect()),
        Some(Nat::Dnat { to, port, snat: None }) => {
            same_family(*to, "dnat address")?;
            Ok(ports
                .iter()
                .map(|p| {
                    rule(*p, Action::ForwardPort { to_port: port.unwrap_or(p.port), to_addr: Some(*to) })
                })
                .collect())
        }
        Some(Nat::Dnat { snat: Some(_), .. }) => Err(BackendError::Unsupported(
            "source nat (snat or masquerade) with firewalld; masquerade the internal zone instead",
        )),
        Some(Nat::Redirect { port }) => Ok(ports
            .iter()
            .map(|p| rule(*p, Action::ForwardPort { to_port: *port, to_addr: None }))
            .collect()),
        Some(Nat::Route { .. }) => {
            Err(BackendError::Unsupported("routed forwarding (nat route) with firewalld"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::Snat;
    use spa_backends::testkit::grant;

    fn texts(g: &Grant, until: u64) -> Vec<String> {
        let p = Priorities::new(16384).unwrap();
        expand(g).unwrap().iter().map(|r| render(r, p.of(until))).collect()
    }

    #[test]
    fn rules_in_firewalld_words() {
        let plain = grant(1).source("198.51.100.7").ports("tcp/22,udp/53").build();
        let v6 = grant(2).source("2001:db8:0:0::7").ports("tcp/22").destination("2001:db8::1").build();
        let dnat =
            grant(3).source("198.51.100.7").ports("tcp/2222,udp/5353").dnat("192.168.77.10", Some(22), None);
        let keep = grant(4).source("2001:db8::7").ports("tcp/8443").dnat("fd00::10", None, None).build();
        let redirect = grant(5).source("198.51.100.7").ports("tcp/2222").redirect(22).build();
        let all = [plain, v6, dnat.build(), keep, redirect]
            .iter()
            .flat_map(|g| texts(g, 1_000_000))
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(all);
    }

    #[test]
    fn display_is_the_rule_without_its_priority() {
        let g = grant(1).source("198.51.100.7").ports("tcp/22").build();
        let r = expand(&g).unwrap()[0];
        assert_eq!(
            r.to_string(),
            r#"rule family="ipv4" source address="198.51.100.7" port port="22" protocol="tcp" accept"#
        );
        assert_eq!(
            render(&r, 20000),
            r#"rule priority="20000" family="ipv4" source address="198.51.100.7" port port="22" protocol="tcp" accept"#
        );
    }

    #[test]
    fn what_firewalld_cannot_express_is_refused() {
        let snat = grant(1).ports("tcp/22").dnat("10.0.0.2", None, Some(Snat::Masquerade)).build();
        let route = grant(2).ports("tcp/22").route(None).build();
        let all = grant(3).all().build();
        for g in [snat, route, all] {
            assert!(matches!(expand(&g), Err(BackendError::Unsupported(_))), "{g:?}");
        }
        let mixed = grant(4).ports("tcp/22").dnat("fd00::1", None, None).build();
        assert!(matches!(expand(&mixed), Err(BackendError::Invalid(_))));
    }

    #[test]
    fn our_rules_read_back_and_others_do_not() {
        let p = Priorities::new(16384).unwrap();
        let grants = [
            grant(1).source("198.51.100.7").ports("tcp/22,udp/53").build(),
            grant(2).source("2001:db8::7").ports("tcp/22").destination("2001:db8::1").build(),
            grant(3).source("198.51.100.7").ports("tcp/2222").dnat("192.168.77.10", Some(22), None).build(),
            grant(5).source("198.51.100.7").ports("tcp/2222").redirect(22).build(),
        ];
        for g in &grants {
            for r in expand(g).unwrap() {
                let text = render(&r, p.of(1234));
                assert_eq!(parse(&text, p), Some((r, p.of(1234))), "{text}");
            }
        }
        for other in [
            // Below our range, or no priority: the admin's.
            r#"rule priority="100" family="ipv4" source address="198.51.100.7" port port="22" protocol="tcp" accept"#,
            r#"rule family="ipv4" source address="198.51.100.7" port port="22" protocol="tcp" accept"#,
            // Our range but not our shape (a log, a service, a reject, a non-canonical address).
            r#"rule priority="20000" family="ipv4" source address="198.51.100.7" port port="22" protocol="tcp" log accept"#,
            r#"rule priority="20000" family="ipv4" source address="198.51.100.7" service name="ssh" accept"#,
            r#"rule priority="20000" family="ipv4" source address="198.51.100.7" port port="22" protocol="tcp" reject"#,
            r#"rule priority="20000" family="ipv6" source address="2001:db8:0:0::7" port port="22" protocol="tcp" accept"#,
            r#"rule priority="20000" family="ipv6" source address="198.51.100.7" port port="22" protocol="tcp" accept"#,
            r#"rule priority="20000" family="ipv4" source address="198.51.100.0/24" port port="22" protocol="tcp" accept"#,
            r#"rule priority="20000" family="ipv4" source NOT address="198.51.100.7" port port="22" protocol="tcp" accept"#,
            r#"rule priority="20000" family="ipv4" source address="198.51.100.7" port port="22-23" protocol="tcp" accept"#,
            r#"rule priority="20000" family="ipv4" source address="198.51.100.7" port port="22" protocol="sctp" accept"#,
            "rule priority=\"20000\"",
            "",
        ] {
            assert_eq!(parse(other, p), None, "{other}");
        }
    }

    #[test]
    fn priorities_carry_the_deadline() {
        let p = Priorities::new(16384).unwrap();
        assert_eq!(p.span(), 16384);
        let now = 1_700_000_000;
        for until in [now, now + 1, now + 30, now + 16_000, now + 16_381] {
            let prio = p.of(until);
            assert!(p.contains(prio) && prio >= 16384, "{prio}");
            assert_eq!(p.until(prio, now), Some(until), "until {until}");
        }
        // Just expired (a late timer) still reads back.
        assert_eq!(p.until(p.of(now - 1), now), Some(now - 1));
        // Consecutive deadlines never share a priority within a span.
        assert_ne!(p.of(now + 30), p.of(now + 60));
        assert_eq!(p.until(100, now), None);
        assert!(Priorities::new(0).is_err());
        assert!(Priorities::new(-5).is_err());
        assert!(Priorities::new(32700).is_err());
        assert!(Priorities::new(32168).is_ok());
    }
}

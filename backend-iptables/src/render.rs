//! Pure rendering and parsing: grants and configuration in, `iptables-restore` and
//! `ipset restore` text out; `iptables-save` and `ipset save` text in, what we own out.
//!
//! Nothing here runs a program, so all of it is snapshot-tested without root. Only typed
//! values are written into the text (addresses, ports, numbers, and names checked at config
//! load), so no input can add a line or an option.

use std::fmt::Write as _;
use std::net::IpAddr;

use spa_backends::{Access, BackendError, Grant, GrantId, Nat, Proto, ProtoPort, Snat};

use crate::config::Config;

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

    const fn ipset_family(self) -> &'static str {
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

/// The tables we write to, in the order batches list them.
const TABLES: [&str; 2] = ["filter", "nat"];

/// Names of everything we create, derived from the (validated) prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// From a prefix already checked by [`Config::validate`].
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// Our chain for `hook` (`SPA_INPUT`).
    pub fn chain(&self, hook: Hook) -> String {
        format!("{}_{}", self.prefix, hook.builtin())
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

    fn hook_of_chain(&self, chain: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| self.chain(*h) == chain)
    }
}

/// The tag on every per-grant rule and set entry, so a restarted daemon can find and expire
/// it (fwknop's `_exp_<ts>` idea, plus the grant id so revoke removes exactly one grant).
pub fn tag(id: GrantId, deadline: u64) -> String {
    format!("spa:id={id}:exp={deadline}")
}

/// Reads a tag back from anywhere in a rule or set line.
pub fn parse_tag(line: &str) -> Option<(GrantId, u64)> {
    let rest = &line[line.find("spa:id=")? + "spa:id=".len()..];
    let (hex, rest) = rest.split_once(':')?;
    let rest = rest.strip_prefix("exp=")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let id = u64::from_str_radix(hex, 16).ok()?;
    Some((GrantId(id), digits.parse().ok()?))
}

/// One rule in one of our chains.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    /// IPv4 or IPv6 tables.
    pub family: Family,
    /// Which of our chains.
    pub hook: Hook,
    /// Everything after `-A <chain>`.
    pub spec: String,
}

/// One entry in one of our timed sets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    /// The set's name.
    pub set: String,
    /// The entry as ipset writes it (`10.0.0.1,tcp:22[,10.0.0.9]`).
    pub text: String,
}

/// What one grant puts into the firewall: timed set entries (plain port grants: the kernel
/// expires them) and tagged rules (NAT, routing, forward-all: expired by the daemon).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Timed set entries.
    pub elements: Vec<Element>,
    /// Tagged rules.
    pub rules: Vec<Rule>,
}

fn same_family(what: &str, a: IpAddr, b: IpAddr) -> Result<(), BackendError> {
    if Family::of(a) == Family::of(b) {
        Ok(())
    } else {
        Err(BackendError::Invalid(format!("{what} {b} is not in the address family of the source {a}")))
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

fn proto_match(pp: ProtoPort) -> String {
    let p = pp.proto.name();
    format!("-p {p} -m {p} --dport {}", pp.port)
}

fn snat_target(snat: &Snat) -> String {
    // MASQUERADE without --to-ports: fwknop adds `--to-ports <external port>`, which rewrites
    // the *source* port of the translated flow; nothing needs that.
    match snat {
        Snat::Masquerade => "-j MASQUERADE".to_owned(),
        Snat::To(a) => format!("-j SNAT --to-source {a}"),
    }
}

/// What `g` puts into the firewall.
pub fn plan(names: &Names, g: &Grant) -> Result<Plan, BackendError> {
    let family = Family::of(g.source);
    let src = g.source;
    if let Some(d) = g.destination {
        same_family("destination", src, d)?;
    }
    let comment = format!("-m comment --comment {}", tag(g.id, g.deadline));
    let dst = g.destination.map(|d| format!(" -d {d}")).unwrap_or_default();
    // Without an explicit destination, DNAT and REDIRECT catch only traffic addressed to this
    // host, never traffic from the client that merely passes through it.
    let local =
        if g.destination.is_some() { String::new() } else { " -m addrtype --dst-type LOCAL".to_owned() };
    let mut plan = Plan::default();
    let mut rule = |hook: Hook, spec: String| plan.rules.push(Rule { family, hook, spec });
    match (&g.nat, &g.access) {
        (None, Access::Ports(ports)) => {
            let set = names.set(family, g.destination.is_some());
            let elements = ports.iter().map(|pp| {
                let d = g.destination.map(|d| format!(",{d}")).unwrap_or_default();
                Element { set: set.clone(), text: format!("{src},{}:{}{d}", pp.proto.name(), pp.port) }
            });
            let mut elements: Vec<Element> = elements.collect();
            elements.sort();
            elements.dedup();
            return Ok(Plan { elements, rules: Vec::new() });
        }
        (None, Access::All) => rule(Hook::Input, format!("-s {src}{dst} {comment} -j ACCEPT")),
        (Some(Nat::Dnat { to, port, snat }), access) => {
            same_family("NAT target", src, *to)?;
            if let Some(Snat::To(a)) = snat {
                same_family("SNAT address", src, *a)?;
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
                let ext_m = ext.map(|pp| format!(" {}", proto_match(pp))).unwrap_or_default();
                let int_m = int.map(|pp| format!(" {}", proto_match(pp))).unwrap_or_default();
                // The forward accept and the source NAT match only connections that our DNAT
                // translated from the external port, not any traffic to the internal host.
                let orig = ext.map(|pp| format!(" --ctorigdstport {}", pp.port)).unwrap_or_default();
                let flow = format!("-s {src} -d {to}{int_m} -m conntrack --ctstate DNAT{orig}");
                let target = to_destination(*to, int.map(|pp| pp.port));
                rule(
                    Hook::Prerouting,
                    format!("-s {src}{dst}{ext_m}{local} {comment} -j DNAT --to-destination {target}"),
                );
                rule(Hook::Forward, format!("{flow} {comment} -j ACCEPT"));
                if let Some(s) = snat {
                    rule(Hook::Postrouting, format!("{flow} {comment} {}", snat_target(s)));
                }
            }
        }
        (Some(Nat::Route { snat }), access) => {
            if let Some(Snat::To(a)) = snat {
                same_family("SNAT address", src, *a)?;
            }
            let matches: Vec<String> = match access {
                Access::Ports(ports) => ports.iter().map(|pp| format!(" {}", proto_match(*pp))).collect(),
                Access::All => vec![String::new()],
            };
            for m in matches {
                rule(Hook::Forward, format!("-s {src}{dst}{m} {comment} -j ACCEPT"));
                if let Some(s) = snat {
                    rule(Hook::Postrouting, format!("-s {src}{dst}{m} {comment} {}", snat_target(s)));
                }
            }
        }
        (Some(Nat::Redirect { port }), Access::Ports(ports)) => {
            for pp in ports {
                let p = pp.proto.name();
                rule(
                    Hook::Prerouting,
                    format!(
                        "-s {src}{dst} {}{local} {comment} -j REDIRECT --to-ports {port}",
                        proto_match(*pp)
                    ),
                );
                // The redirected connection arrives at the local port; let exactly it in, even
                // when that port is protected.
                rule(
                    Hook::Input,
                    format!(
                        "-s {src} -p {p} -m {p} --dport {port} -m conntrack --ctstate DNAT --ctorigdstport {} {comment} -j ACCEPT",
                        pp.port
                    ),
                );
            }
        }
        (Some(Nat::Redirect { .. }), Access::All) => {
            return Err(BackendError::Invalid("a redirect needs ports, not forward-all".into()));
        }
    }
    Ok(plan)
}

/// What one family's tables look like, from `iptables-save`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaveDump {
    /// `(table, chain)` of every chain declared.
    pub chains: Vec<(String, String)>,
    /// `(table, chain, spec)` of every rule.
    pub rules: Vec<(String, String, String)>,
}

impl SaveDump {
    /// Whether any rule or non-built-in chain exists (someone uses this variant).
    pub fn in_use(&self) -> bool {
        !self.rules.is_empty() || self.chains.iter().any(|(_, c)| !is_builtin(c))
    }

    fn has_chain(&self, table: &str, chain: &str) -> bool {
        self.chains.iter().any(|(t, c)| t == table && c == chain)
    }

    /// How many times `builtin` jumps to `chain`.
    fn hooks(&self, table: &str, builtin: &str, chain: &str) -> usize {
        let jump = format!("-j {chain}");
        self.rules.iter().filter(|(t, c, s)| t == table && c == builtin && *s == jump).count()
    }

    /// The rules in our chains: `(hook, spec)`.
    pub fn ours<'a>(&'a self, names: &'a Names) -> impl Iterator<Item = (Hook, &'a str)> + 'a {
        self.rules.iter().filter_map(|(t, c, s)| {
            let h = names.hook_of_chain(c)?;
            (h.table() == t).then_some((h, s.as_str()))
        })
    }
}

fn is_builtin(chain: &str) -> bool {
    matches!(chain, "INPUT" | "FORWARD" | "OUTPUT" | "PREROUTING" | "POSTROUTING")
}

/// Parses `iptables-save` output.
pub fn parse_save(text: &str) -> SaveDump {
    let mut dump = SaveDump::default();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_owned();
        } else if let Some(c) = line.strip_prefix(':') {
            if let Some(name) = c.split_whitespace().next() {
                dump.chains.push((table.clone(), name.to_owned()));
            }
        } else if let Some(r) = line.strip_prefix("-A ") {
            let (chain, spec) = r.split_once(' ').unwrap_or((r, ""));
            dump.rules.push((table.clone(), chain.to_owned(), spec.trim().to_owned()));
        }
    }
    dump
}

fn batch(out: &mut String, lines_by_table: &[(&str, Vec<String>)]) {
    for table in TABLES {
        let lines: Vec<&String> =
            lines_by_table.iter().filter(|(t, _)| *t == table).flat_map(|(_, l)| l.iter()).collect();
        if lines.is_empty() {
            continue;
        }
        let _ = writeln!(out, "*{table}");
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
        let _ = writeln!(out, "COMMIT");
    }
}

/// `iptables-restore --noflush` input that resets our chains of `family` to exactly the static
/// rules plus `live` rules, and hooks each chain once from its built-in chain. `current` is
/// what the tables hold now (to add missing hooks and drop duplicate ones).
pub fn prepare_rules(
    names: &Names,
    config: &Config,
    family: Family,
    live: &[Rule],
    current: &SaveDump,
) -> String {
    let mut by_table: Vec<(&str, Vec<String>)> = Vec::new();
    for hook in Hook::ALL {
        let chain = names.chain(hook);
        let t = hook.table();
        // With --noflush, declaring a chain creates it, or empties it if it exists: the reset
        // and the refill below are one atomic commit per table.
        let mut lines = vec![format!(":{chain} - [0:0]")];
        let n = current.hooks(t, hook.builtin(), &chain);
        if n == 0 {
            lines.push(format!("-I {} 1 -j {chain}", hook.builtin()));
        }
        for _ in 1..n.max(1) {
            lines.push(format!("-D {} -j {chain}", hook.builtin()));
        }
        for r in live.iter().filter(|r| r.family == family && r.hook == hook) {
            lines.push(format!("-A {chain} {}", r.spec));
        }
        if hook == Hook::Input {
            lines.extend(static_input(names, config, family));
        }
        by_table.push((t, lines));
    }
    let mut out = String::new();
    batch(&mut out, &by_table);
    out
}

/// The fixed rules of `<prefix>_INPUT`, after the per-grant rules.
fn static_input(names: &Names, config: &Config, family: Family) -> Vec<String> {
    let chain = names.chain(Hook::Input);
    let mut protect = config.protect.clone();
    protect.sort_by_key(|pp| (pp.proto == Proto::Udp, pp.port));
    protect.dedup();
    let mut v = Vec::new();
    // Connections already open (granted earlier, or open before we started) outlive the
    // window: accepted before the drops below.
    for pp in &protect {
        v.push(format!(
            "-A {chain} {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            proto_match(*pp)
        ));
    }
    v.push(format!("-A {chain} -m set --match-set {} src,dst -j ACCEPT", names.set(family, false)));
    v.push(format!("-A {chain} -m set --match-set {} src,dst,dst -j ACCEPT", names.set(family, true)));
    for pp in &protect {
        v.push(format!("-A {chain} {} -j DROP", proto_match(*pp)));
    }
    v
}

/// `iptables-restore --noflush` input that deletes `delete` then inserts `insert` (both of
/// `family`), atomically per table. Inserted rules go first in our chains, before the drops.
pub fn change_rules(names: &Names, family: Family, delete: &[Rule], insert: &[Rule]) -> String {
    let mut by_table: Vec<(&str, Vec<String>)> = Vec::new();
    for r in delete.iter().filter(|r| r.family == family) {
        by_table.push((r.hook.table(), vec![format!("-D {} {}", names.chain(r.hook), r.spec)]));
    }
    for r in insert.iter().filter(|r| r.family == family) {
        by_table.push((r.hook.table(), vec![format!("-I {} 1 {}", names.chain(r.hook), r.spec)]));
    }
    let mut out = String::new();
    batch(&mut out, &by_table);
    out
}

/// `iptables-restore --noflush` input that removes our hooks and chains from `family`.
pub fn teardown_rules(names: &Names, current: &SaveDump) -> String {
    let mut by_table: Vec<(&str, Vec<String>)> = Vec::new();
    for hook in Hook::ALL {
        let chain = names.chain(hook);
        let t = hook.table();
        let mut lines = Vec::new();
        for _ in 0..current.hooks(t, hook.builtin(), &chain) {
            lines.push(format!("-D {} -j {chain}", hook.builtin()));
        }
        by_table.push((t, lines));
    }
    // Flush and delete only after every hook of the table is gone.
    for hook in Hook::ALL {
        let chain = names.chain(hook);
        if current.has_chain(hook.table(), &chain) {
            by_table.push((hook.table(), vec![format!("-F {chain}"), format!("-X {chain}")]));
        }
    }
    let mut out = String::new();
    batch(&mut out, &by_table);
    out
}

/// The `create` line of one of our sets. `timeout` enables per-entry timeouts (its own value
/// is a default we never use: every entry gets its own); `comment` carries the tag.
fn create_line(name: &str, family: Family, with_dst: bool) -> String {
    let kind = if with_dst { "hash:ip,port,ip" } else { "hash:ip,port" };
    format!("create {name} {kind} family {} timeout 60 comment", family.ipset_family())
}

/// A timed set entry to write, with its seconds left and tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedElement {
    /// The entry.
    pub element: Element,
    /// Seconds left (at least 1: ipset reads 0 as "never expires").
    pub timeout: u64,
    /// The grant it belongs to and that grant's deadline.
    pub tag: (GrantId, u64),
}

fn add_line(e: &TimedElement) -> String {
    let (id, exp) = e.tag;
    format!(
        "add {} {} timeout {} comment \"{}\"",
        e.element.set,
        e.element.text,
        e.timeout.max(1),
        tag(id, exp)
    )
}

/// `ipset -exist restore` input that makes our sets exist and hold exactly `live`. Each set is
/// refilled through a scratch set and swapped in, so no live entry is ever missing.
pub fn prepare_sets(names: &Names, live: &[TimedElement]) -> String {
    let mut out = String::new();
    for (name, family, with_dst) in names.sets() {
        let tmp = format!("{name}-tmp");
        let _ = writeln!(out, "{}", create_line(&name, family, with_dst));
        let _ = writeln!(out, "{}", create_line(&tmp, family, with_dst));
        let _ = writeln!(out, "flush {tmp}");
        for e in live.iter().filter(|e| e.element.set == name) {
            let _ = writeln!(
                out,
                "{}",
                add_line(&TimedElement {
                    element: Element { set: tmp.clone(), ..e.element.clone() },
                    ..e.clone()
                })
            );
        }
        let _ = writeln!(out, "swap {name} {tmp}");
        let _ = writeln!(out, "destroy {tmp}");
    }
    out
}

/// `ipset -exist restore` input that adds (or re-times) `add` and deletes `delete`.
pub fn change_sets(add: &[TimedElement], delete: &[Element]) -> String {
    let mut out = String::new();
    for e in delete {
        let _ = writeln!(out, "del {} {}", e.set, e.text);
    }
    for e in add {
        let _ = writeln!(out, "{}", add_line(e));
    }
    out
}

/// `ipset restore` input that destroys those of our sets that exist.
pub fn teardown_sets(existing: &[String]) -> String {
    existing.iter().map(|s| format!("destroy {s}\n")).collect()
}

/// What `ipset save` says about our sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetDump {
    /// Our sets that exist (scratch sets of an interrupted prepare included).
    pub sets: Vec<String>,
    /// Their entries with their tags.
    pub elements: Vec<(Element, Option<(GrantId, u64)>)>,
}

/// Parses `ipset save` output, keeping only our sets.
pub fn parse_ipset_save(names: &Names, text: &str) -> SetDump {
    let ours: Vec<String> = names.sets().into_iter().map(|(n, _, _)| n).collect();
    // A scratch set left by a prepare that was interrupted is ours too (for teardown).
    let scratch: Vec<String> = ours.iter().map(|n| format!("{n}-tmp")).collect();
    let mut dump = SetDump::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("create"), Some(name), _) if ours.iter().chain(&scratch).any(|o| o == name) => {
                dump.sets.push(name.to_owned());
            }
            (Some("add"), Some(name), Some(text)) if ours.iter().any(|o| o == name) => {
                dump.elements.push((Element { set: name.to_owned(), text: text.to_owned() }, parse_tag(line)))
            }
            _ => {}
        }
    }
    dump
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::Grant;

    fn g(id: u64, src: &str, access: Access, nat: Option<Nat>) -> Grant {
        Grant {
            id: GrantId(id),
            source: src.parse().unwrap(),
            packet_source: src.parse().unwrap(),
            destination: None,
            access,
            nat,
            created: 1_700_000_000,
            deadline: 1_700_000_030,
            stanza: "s".into(),
            username: "u".into(),
        }
    }

    fn ports(list: &[&str]) -> Access {
        Access::Ports(list.iter().map(|p| p.parse().unwrap()).collect())
    }

    fn config() -> Config {
        Config { protect: vec!["tcp/22".parse().unwrap(), "udp/53".parse().unwrap()], ..Config::default() }
    }

    fn names() -> Names {
        Names::new("SPA")
    }

    fn all_grants() -> Vec<Grant> {
        let mut with_dst = g(3, "192.0.2.3", ports(&["tcp/443"]), None);
        with_dst.destination = Some("198.51.100.1".parse().unwrap());
        vec![
            g(1, "192.0.2.1", ports(&["tcp/22", "udp/53"]), None),
            g(2, "2001:db8::1", ports(&["tcp/22"]), None),
            with_dst,
            g(4, "192.0.2.4", Access::All, None),
            g(
                5,
                "192.0.2.5",
                ports(&["tcp/2222"]),
                Some(Nat::Dnat {
                    to: "10.0.0.2".parse().unwrap(),
                    port: Some(22),
                    snat: Some(Snat::Masquerade),
                }),
            ),
            g(
                6,
                "2001:db8::6",
                ports(&["tcp/8443"]),
                Some(Nat::Dnat {
                    to: "fd00::2".parse().unwrap(),
                    port: Some(443),
                    snat: Some(Snat::To("fd00::1".parse().unwrap())),
                }),
            ),
            g(
                7,
                "192.0.2.7",
                Access::All,
                Some(Nat::Dnat { to: "10.0.0.3".parse().unwrap(), port: None, snat: None }),
            ),
            g(8, "192.0.2.8", Access::All, Some(Nat::Route { snat: Some(Snat::Masquerade) })),
            g(9, "192.0.2.9", ports(&["tcp/80"]), Some(Nat::Redirect { port: 8080 })),
        ]
    }

    fn render_plans() -> String {
        let mut out = String::new();
        for grant in all_grants() {
            let p = plan(&names(), &grant).unwrap();
            let _ = writeln!(out, "# grant {} {} {} {:?}", grant.id, grant.source, grant.access, grant.nat);
            for e in p.elements {
                let _ = writeln!(out, "set {} {}", e.set, e.text);
            }
            for r in p.rules {
                let _ = writeln!(out, "{:?} {} {}", r.family, names().chain(r.hook), r.spec);
            }
        }
        out
    }

    #[test]
    fn plans_for_every_kind_of_grant() {
        insta::assert_snapshot!(render_plans());
    }

    fn live_rules() -> Vec<Rule> {
        all_grants().iter().flat_map(|g| plan(&names(), g).unwrap().rules).collect()
    }

    #[test]
    fn prepare_on_empty_tables_hooks_once() {
        let text = prepare_rules(&names(), &config(), Family::V4, &live_rules(), &SaveDump::default());
        insta::assert_snapshot!(text);
    }

    #[test]
    fn prepare_keeps_one_hook_and_removes_duplicates() {
        let current = parse_save(
            "*filter\n:INPUT ACCEPT [0:0]\n:SPA_INPUT - [0:0]\n-A INPUT -j SPA_INPUT\n-A INPUT -j SPA_INPUT\n\
             -A INPUT -j ACCEPT\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j SPA_PREROUTING\nCOMMIT\n",
        );
        let text = prepare_rules(&names(), &config(), Family::V6, &live_rules(), &current);
        insta::assert_snapshot!(text);
    }

    #[test]
    fn change_deletes_then_inserts_per_table() {
        let grant = &all_grants()[4];
        let old = plan(&names(), grant).unwrap().rules;
        let mut later = grant.clone();
        later.deadline += 60;
        let new = plan(&names(), &later).unwrap().rules;
        insta::assert_snapshot!(change_rules(&names(), Family::V4, &old, &new));
        assert_eq!(change_rules(&names(), Family::V6, &old, &new), "", "nothing for the other family");
    }

    #[test]
    fn sets_prepare_change_teardown() {
        let live: Vec<TimedElement> = all_grants()
            .iter()
            .flat_map(|g| {
                plan(&names(), g).unwrap().elements.into_iter().map(|e| TimedElement {
                    element: e,
                    timeout: 30,
                    tag: (g.id, g.deadline),
                })
            })
            .collect();
        let mut text = prepare_sets(&names(), &live);
        text.push_str("# change\n");
        text.push_str(&change_sets(
            &live[..1],
            &live[1..2].iter().map(|e| e.element.clone()).collect::<Vec<_>>(),
        ));
        text.push_str("# teardown\n");
        text.push_str(&teardown_sets(&["spa4".into(), "spa6d".into()]));
        insta::assert_snapshot!(text);
    }

    const SAVE: &str = "# Generated by iptables-save v1.8.9 on Fri Nov 27 17:17:24 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SPA_PREROUTING - [0:0]
-A PREROUTING -j SPA_PREROUTING
-A SPA_PREROUTING -s 10.0.0.1/32 -p tcp -m tcp --dport 2222 -m comment --comment \"spa:id=00000000000000ab:exp=123\" -j DNAT --to-destination 10.2.2.2:22
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SPA_INPUT - [0:0]
:OTHER - [0:0]
-A INPUT -j SPA_INPUT
-A INPUT -j SPA_INPUT
-A OTHER -m comment --comment \"spa:id=00000000000000ab:exp=123\" -j ACCEPT
-A SPA_INPUT -p tcp -m tcp --dport 22 -j DROP
COMMIT
";

    #[test]
    fn save_output_is_parsed_and_only_ours_counts() {
        let dump = parse_save(SAVE);
        assert!(dump.in_use());
        assert!(!SaveDump::default().in_use());
        assert!(!parse_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n").in_use());
        let n = names();
        let ours: Vec<_> = dump.ours(&n).collect();
        assert_eq!(ours.len(), 2, "the rule in OTHER is not ours even with a tag: {ours:?}");
        assert_eq!(parse_tag(ours[0].1), Some((GrantId(0xab), 123)));
        insta::assert_snapshot!(teardown_rules(&names(), &dump));
    }

    #[test]
    fn tags_round_trip_and_junk_is_refused() {
        let t = tag(GrantId(0xdead_beef), 1_700_000_000);
        assert_eq!(t, "spa:id=00000000deadbeef:exp=1700000000");
        assert_eq!(
            parse_tag(&format!("x --comment \"{t}\" -j ACCEPT")),
            Some((GrantId(0xdead_beef), 1_700_000_000))
        );
        assert_eq!(parse_tag("spa:id=zz:exp=1"), None);
        assert_eq!(parse_tag("spa:id=1:exp="), None);
        assert_eq!(parse_tag("nothing"), None);
    }

    #[test]
    fn ipset_save_keeps_only_our_sets() {
        let text = "create spa4 hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 60 comment\n\
                    add spa4 10.0.0.1,tcp:22 timeout 29 comment \"spa:id=00000000000000ab:exp=123\"\n\
                    create other hash:ip\nadd other 10.0.0.1\ncreate spa6-tmp hash:ip,port family inet6\n";
        let d = parse_ipset_save(&names(), text);
        assert_eq!(d.sets, vec!["spa4".to_owned(), "spa6-tmp".to_owned()]);
        assert_eq!(
            d.elements,
            vec![(
                Element { set: "spa4".into(), text: "10.0.0.1,tcp:22".into() },
                Some((GrantId(0xab), 123))
            )]
        );
    }

    #[test]
    fn mixed_families_and_impossible_nat_are_refused() {
        let mut bad = all_grants()[4].clone();
        bad.nat = Some(Nat::Dnat { to: "fd00::2".parse().unwrap(), port: None, snat: None });
        assert!(matches!(plan(&names(), &bad), Err(BackendError::Invalid(_))));
        let mut bad = all_grants()[0].clone();
        bad.destination = Some("2001:db8::9".parse().unwrap());
        assert!(plan(&names(), &bad).is_err());
        let mut bad = all_grants()[8].clone();
        bad.access = Access::All;
        assert!(plan(&names(), &bad).is_err());
        let mut bad = all_grants()[6].clone();
        bad.nat = Some(Nat::Dnat { to: "10.0.0.3".parse().unwrap(), port: Some(22), snat: None });
        assert!(plan(&names(), &bad).is_err());
    }
}

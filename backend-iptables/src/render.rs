//! Pure rendering and parsing: entries, changes and configuration in, `iptables-restore` and
//! `ipset restore` text out; `iptables-save`, `ipset save` and `ipset list -t` text in, what
//! we own out.
//!
//! Nothing here runs a program, so all of it is snapshot-tested without root. Only typed
//! values are written into the text (addresses, ports, numbers, grant ids, and names checked
//! at config load), so no input can add a line or an option.

use std::fmt::Write as _;

use spa_backends::{Change, GrantId, Held, Observed, Proto};

use crate::config::Config;
use crate::model::{Family, Hook, Item, Member, Names, Rule, proto_match};

/// Longest ipset timeout (seconds) the kernel accepts (about 24 days). A plain grant longer
/// than that loses its set member early: it closes too soon, never stays open too long.
pub const MAX_SET_TIMEOUT: u64 = 2_147_483;

/// The tables we write to, in the order batches list them.
const TABLES: [&str; 2] = ["filter", "nat"];

/// The tag on every rule and set member, so that a restarted daemon, `spad list --firewall`
/// and an admin can tell which grant it carries and until when (fwknop's `_exp_<ts>` idea,
/// plus the grant id).
pub fn tag(id: GrantId, until: u64) -> String {
    format!("spa:id={id}:exp={until}")
}

/// The tag an entry is (or is to be) put with.
pub fn tag_of(h: &Held<'_, Item>) -> String {
    tag(h.holder.id, h.until)
}

/// Reads a tag: exactly `spa:id=<16 hex digits>:exp=<digits>`.
pub fn parse_tag(value: &str) -> Option<(GrantId, u64)> {
    let rest = value.strip_prefix("spa:id=")?;
    let (hex, exp) = rest.split_once(":exp=")?;
    if hex.len() != 16 || exp.is_empty() || !exp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((GrantId(u64::from_str_radix(hex, 16).ok()?), exp.parse().ok()?))
}

const COMMENT: &str = "-m comment --comment ";

/// Splits our tag out of a rule as `iptables-save` prints it: the rule without the comment,
/// and the tag. `None` when the rule carries no tag of ours.
pub fn split_tag(spec: &str) -> Option<(String, GrantId, u64)> {
    let at = spec.find(COMMENT)?;
    let value_at = at + COMMENT.len();
    let rest = &spec[value_at..];
    let (value, after) = match rest.strip_prefix('"') {
        Some(q) => {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        }
        None => rest.split_at(rest.find(' ').unwrap_or(rest.len())),
    };
    let (id, until) = parse_tag(value)?;
    let before = spec[..at].trim_end();
    let after = after.trim_start();
    let untagged = match (before.is_empty(), after.is_empty()) {
        (true, _) => after.to_owned(),
        (false, true) => before.to_owned(),
        (false, false) => format!("{before} {after}"),
    };
    Some((untagged, id, until))
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

    /// Whether `chain` exists in `table`.
    pub fn has_chain(&self, table: &str, chain: &str) -> bool {
        self.chains.iter().any(|(t, c)| t == table && c == chain)
    }

    /// The rules of `chain` in `table`, in order.
    pub fn rules_of<'a>(&'a self, table: &'a str, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.rules.iter().filter(move |(t, c, _)| t == table && c == chain).map(|(_, _, s)| s.as_str())
    }

    /// How many times `builtin` jumps to `chain` (unconditionally: exactly `-j <chain>`).
    pub fn hooks(&self, table: &str, builtin: &str, chain: &str) -> usize {
        let jump = format!("-j {chain}");
        self.rules_of(table, builtin).filter(|s| *s == jump).count()
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

/// One line of `iptables-restore` input and the table it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Line {
    table: &'static str,
    text: String,
}

/// `iptables-restore --noflush` input: the lines of each table in order, one `COMMIT` each
/// (atomic per table). Empty when there are no lines.
fn batch(lines: &[Line]) -> String {
    let mut out = String::new();
    for table in TABLES {
        let mut these = lines.iter().filter(|l| l.table == table).peekable();
        if these.peek().is_none() {
            continue;
        }
        let _ = writeln!(out, "*{table}");
        for l in these {
            let _ = writeln!(out, "{}", l.text);
        }
        let _ = writeln!(out, "COMMIT");
    }
    out
}

/// One rule of `<prefix>_INPUT` that every setup has, and what it is, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticRule {
    /// The rule after `-A <chain>`, as `iptables-save` prints it.
    pub spec: String,
    /// What it is (`the DROP for tcp/22`).
    pub what: String,
}

/// The fixed rules of `<prefix>_INPUT`, after the per-grant rules: per protected port an
/// `ESTABLISHED,RELATED` accept, the two set matches, then per protected port a `DROP`.
pub fn static_input(names: &Names, config: &Config, family: Family) -> Vec<StaticRule> {
    let mut protect = config.protect.clone();
    protect.sort_by_key(|pp| (pp.proto == Proto::Udp, pp.port));
    protect.dedup();
    let mut v = Vec::new();
    // Connections already open (granted earlier, or open before we started) outlive the
    // window: accepted before the drops below.
    for pp in &protect {
        v.push(StaticRule {
            spec: format!("{} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", proto_match(*pp)),
            what: format!("the ESTABLISHED accept for {pp}"),
        });
    }
    for (with_dst, dirs) in [(false, "src,dst"), (true, "src,dst,dst")] {
        let set = names.set(family, with_dst);
        v.push(StaticRule {
            spec: format!("-m set --match-set {set} {dirs} -j ACCEPT"),
            what: format!("the match on set {set}"),
        });
    }
    for pp in &protect {
        v.push(StaticRule {
            spec: format!("{} -j DROP", proto_match(*pp)),
            what: format!("the DROP for {pp}"),
        });
    }
    v
}

/// A rule with the tag it is to carry.
pub type TaggedRule<'a> = (&'a Rule, String);

/// `iptables-restore --noflush` input that resets our chains of `family` to exactly the static
/// rules plus `live` rules, and hooks each chain once from its built-in chain. `current` is
/// what the tables hold now (to add missing hooks and drop duplicate ones).
pub fn prepare_rules(
    names: &Names,
    config: &Config,
    family: Family,
    live: &[TaggedRule<'_>],
    current: &SaveDump,
) -> String {
    let mut lines = Vec::new();
    for hook in Hook::ALL {
        let chain = names.chain(hook);
        let table = hook.table();
        let mut push = |text: String| lines.push(Line { table, text });
        // With --noflush, declaring a chain creates it, or empties it if it exists: the reset
        // and the refill below are one atomic commit per table.
        push(format!(":{chain} - [0:0]"));
        let n = current.hooks(table, hook.builtin(), &chain);
        if n == 0 {
            push(format!("-I {} 1 -j {chain}", hook.builtin()));
        }
        for _ in 1..n.max(1) {
            push(format!("-D {} -j {chain}", hook.builtin()));
        }
        for (r, tag) in live.iter().filter(|(r, _)| r.family() == family && r.hook() == hook) {
            push(format!("-A {chain} {}", r.tagged(tag)));
        }
        if hook == Hook::Input {
            for s in static_input(names, config, family) {
                push(format!("-A {chain} {}", s.spec));
            }
        }
    }
    batch(&lines)
}

fn rule_of<'a>(h: &Held<'a, Item>) -> Option<&'a Rule> {
    match h.entry {
        Item::Rule(r) => Some(r),
        Item::Member(_) => None,
    }
}

/// `iptables-restore --noflush` input for the rule changes of `family`, in their order, in
/// one batch (atomic per table): a put replaces the rule as it was tagged (`prior`) by the
/// rule with its new tag, first in our chain; a remove deletes the rule with its tag. If a
/// rule to delete is not there exactly, iptables-restore refuses the whole table: then
/// [`rule_fallback`] does it from what the chains hold.
pub fn rule_changes(family: Family, changes: &[Change<'_, Item>]) -> String {
    let mut lines = Vec::new();
    let mut delete = |h: &Held<'_, Item>| {
        if let Some(r) = rule_of(h).filter(|r| r.family() == family) {
            lines.push(Line {
                table: r.hook().table(),
                text: format!("-D {} {}", r.chain(), r.tagged(&tag_of(h))),
            });
        }
    };
    let mut inserts = Vec::new();
    for c in changes {
        match c {
            Change::Put { new, prior } => {
                if let Some(p) = prior {
                    delete(p);
                }
                inserts.push(*new);
            }
            Change::Remove { old } => delete(old),
        }
    }
    for h in inserts {
        if let Some(r) = rule_of(&h).filter(|r| r.family() == family) {
            lines.push(Line {
                table: r.hook().table(),
                text: format!("-I {} 1 {}", r.chain(), r.tagged(&tag_of(&h))),
            });
        }
    }
    batch(&lines)
}

/// The slow path of [`rule_changes`], from what `family`'s tables hold (`current`): every
/// rule of ours that is one of the changed entries, whatever its tag (deleted by hand, tagged
/// with another deadline, twice), is deleted; then each put is inserted. So removing a rule
/// that is gone is not an error, and nothing ends up twice.
pub fn rule_fallback(
    names: &Names,
    family: Family,
    changes: &[Change<'_, Item>],
    current: &SaveDump,
) -> String {
    let mut wanted: Vec<(Hook, String)> = Vec::new();
    let mut inserts = Vec::new();
    for c in changes {
        let (old, new) = match c {
            Change::Put { new, prior } => (*prior, Some(*new)),
            Change::Remove { old } => (Some(*old), None),
        };
        for h in old.iter().chain(new.iter()) {
            if let Some(r) = rule_of(h).filter(|r| r.family() == family) {
                wanted.push((r.hook(), r.untagged()));
            }
        }
        if let Some(h) = new
            && let Some(r) = rule_of(&h).filter(|r| r.family() == family)
        {
            inserts.push(Line {
                table: r.hook().table(),
                text: format!("-I {} 1 {}", r.chain(), r.tagged(&tag_of(&h))),
            });
        }
    }
    let mut lines = Vec::new();
    for (hook, spec) in current.ours(names) {
        let hit = split_tag(spec)
            .is_some_and(|(untagged, _, _)| wanted.iter().any(|(h, u)| *h == hook && *u == untagged));
        if hit {
            lines.push(Line { table: hook.table(), text: format!("-D {} {spec}", names.chain(hook)) });
        }
    }
    lines.extend(inserts);
    batch(&lines)
}

/// `iptables-restore --noflush` input that removes our hooks and chains from `family`.
pub fn teardown_rules(names: &Names, current: &SaveDump) -> String {
    let mut lines = Vec::new();
    for hook in Hook::ALL {
        let chain = names.chain(hook);
        for _ in 0..current.hooks(hook.table(), hook.builtin(), &chain) {
            lines.push(Line { table: hook.table(), text: format!("-D {} -j {chain}", hook.builtin()) });
        }
    }
    // Flush and delete only after every hook of the table is gone.
    for hook in Hook::ALL {
        let chain = names.chain(hook);
        if current.has_chain(hook.table(), &chain) {
            lines.push(Line { table: hook.table(), text: format!("-F {chain}") });
            lines.push(Line { table: hook.table(), text: format!("-X {chain}") });
        }
    }
    batch(&lines)
}

/// The ipset type of our sets (`with_dst`: the ones that also match the local address).
pub const fn set_type(with_dst: bool) -> &'static str {
    if with_dst { "hash:ip,port,ip" } else { "hash:ip,port" }
}

/// The `create` line of one of our sets. `timeout` enables per-member timeouts (its own value
/// is a default we never use: every member gets its own); `comment` carries the tag.
fn create_line(name: &str, family: Family, with_dst: bool) -> String {
    format!("create {name} {} family {} timeout 60 comment", set_type(with_dst), family.ipset_family())
}

/// Seconds left for a member put at `now` until `until`: at least 1 (ipset reads 0 as
/// "never expires"), at most [`MAX_SET_TIMEOUT`].
pub fn timeout(until: u64, now: u64) -> u64 {
    until.saturating_sub(now).clamp(1, MAX_SET_TIMEOUT)
}

fn add_line(set: &str, m: &Member, timeout: u64, tag: &str) -> String {
    format!("add {set} {} timeout {timeout} comment \"{tag}\"", m.text())
}

/// A member with the tag it is to carry and its seconds left.
pub type TimedMember<'a> = (&'a Member, String, u64);

/// `ipset -exist restore` input that makes our sets exist and hold exactly `live`. Each set is
/// refilled through a scratch set and swapped in, so no live member is ever missing.
pub fn prepare_sets(names: &Names, live: &[TimedMember<'_>]) -> String {
    let mut out = String::new();
    for (name, family, with_dst) in names.sets() {
        let tmp = format!("{name}-tmp");
        let _ = writeln!(out, "{}", create_line(&name, family, with_dst));
        let _ = writeln!(out, "{}", create_line(&tmp, family, with_dst));
        let _ = writeln!(out, "flush {tmp}");
        for (m, tag, secs) in live.iter().filter(|(m, _, _)| m.set() == name) {
            let _ = writeln!(out, "{}", add_line(&tmp, m, *secs, tag));
        }
        let _ = writeln!(out, "swap {name} {tmp}");
        let _ = writeln!(out, "destroy {tmp}");
    }
    out
}

/// `ipset -exist restore` input for the member changes at `now`, in order: a put adds or
/// re-times and re-tags (`-exist` updates a present member's timeout and comment), a remove
/// deletes (`-exist` ignores a member already gone).
pub fn set_changes(changes: &[Change<'_, Item>], now: u64) -> String {
    let mut out = String::new();
    for c in changes {
        match c {
            Change::Put { new, .. } => {
                if let Item::Member(m) = new.entry {
                    let _ = writeln!(out, "{}", add_line(&m.set(), m, timeout(new.until, now), &tag_of(new)));
                }
            }
            Change::Remove { old } => {
                if let Item::Member(m) = old.entry {
                    let _ = writeln!(out, "del {} {}", m.set(), m.text());
                }
            }
        }
    }
    out
}

/// `ipset restore` input that destroys those of our sets that exist.
pub fn teardown_sets(existing: &[String]) -> String {
    existing.iter().map(|s| format!("destroy {s}\n")).collect()
}

/// One member of our sets as `ipset save` writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedMember {
    /// The set.
    pub set: String,
    /// The member (`192.0.2.1,tcp:22`).
    pub text: String,
    /// Its tag.
    pub tag: Option<(GrantId, u64)>,
    /// Its seconds left.
    pub timeout: Option<u64>,
}

/// What `ipset save` says about our sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetDump {
    /// Our sets that exist (scratch sets of an interrupted prepare included).
    pub sets: Vec<String>,
    /// Their members.
    pub members: Vec<SavedMember>,
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
                let rest: Vec<&str> = words.collect();
                let after = |key: &str| rest.iter().position(|w| *w == key).and_then(|i| rest.get(i + 1));
                dump.members.push(SavedMember {
                    set: name.to_owned(),
                    text: text.to_owned(),
                    tag: after("comment").and_then(|c| parse_tag(c.trim_matches('"'))),
                    timeout: after("timeout").and_then(|t| t.parse().ok()),
                });
            }
            _ => {}
        }
    }
    dump
}

/// What [`Backend::observe`](spa_backends::Backend::observe) reports for our sets at `now`:
/// each member, in the words of [`Member`]'s `Display`, with its tag (or, untagged, the
/// deadline its timeout gives).
pub fn observed_members(dump: &SetDump, now: u64) -> Vec<Observed> {
    dump.members
        .iter()
        .map(|m| Observed {
            entry: format!("ipset {} {}", m.set, m.text),
            holder: m.tag.map(|t| t.0),
            until: m.tag.map(|t| t.1).or(m.timeout.map(|t| now.saturating_add(t))),
        })
        .collect()
}

/// What `observe` reports for the rules of `family` in our chains: tagged rules in the words
/// of [`Rule`]'s `Display` with their grant and deadline, and any other rule except the
/// static ones (a rule spad did not make) with no grant. The static rules are configuration,
/// checked by the tamper check, not grants.
pub fn observed_rules(names: &Names, config: &Config, family: Family, dump: &SaveDump) -> Vec<Observed> {
    let statics: Vec<String> = static_input(names, config, family).into_iter().map(|s| s.spec).collect();
    let mut out = Vec::new();
    for (hook, spec) in dump.ours(names) {
        let head = format!("{} -t {} -A {}", family.program(), hook.table(), names.chain(hook));
        match split_tag(spec) {
            Some((untagged, id, until)) => {
                out.push(Observed {
                    entry: format!("{head} {untagged}"),
                    holder: Some(id),
                    until: Some(until),
                });
            }
            None if hook == Hook::Input && statics.iter().any(|s| s == spec) => {}
            None => out.push(Observed { entry: format!("{head} {spec}"), holder: None, until: None }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::expand;
    use spa_backends::{Access, BackendError, Grant, Nat, Snat};

    fn g(id: u64, src: &str, access: Access, nat: Option<Nat>) -> Grant {
        Grant {
            id: GrantId(id),
            source: src.parse().unwrap(),
            source_port: None,
            packet_source: src.parse().unwrap(),
            destination: None,
            access,
            nat: nat.map(Box::new),
            created: 1_700_000_000,
            deadline: 1_700_000_030,
            stanza: "s".into(),
            username: "u".into(),
            ingress: None,
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
        let mut all_to_dst = g(10, "2001:db8::a", Access::All, None);
        all_to_dst.destination = Some("2001:db8::99".parse().unwrap());
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
            all_to_dst,
        ]
    }

    fn items(grant: &Grant) -> Vec<Item> {
        expand(&names(), grant).unwrap()
    }

    fn held<'a>(e: &'a Item, g: &'a Grant) -> Held<'a, Item> {
        Held { entry: e, holder: g, until: g.deadline }
    }

    /// Every kind of grant: its entries as displayed (what `observe` reports) and as tagged
    /// in the firewall.
    #[test]
    fn entries_for_every_kind_of_grant() {
        let mut out = String::new();
        for grant in all_grants() {
            let _ = writeln!(out, "# grant {} {} {} {:?}", grant.id, grant.source, grant.access, grant.nat);
            for e in items(&grant) {
                let _ = writeln!(out, "{e}");
                if let Item::Rule(r) = &e {
                    let _ = writeln!(out, "  tagged: {}", r.tagged(&tag(grant.id, grant.deadline)));
                }
            }
        }
        insta::assert_snapshot!(out);
    }

    /// Grants bound to a source port: every rule matches `--sport`, and plain ports become
    /// INPUT accepts (ipset has no type with two ports); put and removed like other rules.
    #[test]
    fn entries_and_changes_with_a_source_port() {
        let sp = |g: Grant| Grant { source_port: Some(40000), ..g };
        let mut with_dst = sp(g(3, "192.0.2.3", ports(&["tcp/443"]), None));
        with_dst.destination = Some("198.51.100.1".parse().unwrap());
        let grants = [
            sp(g(1, "192.0.2.1", ports(&["tcp/22", "udp/53"]), None)),
            sp(g(2, "2001:db8::1", ports(&["tcp/22"]), None)),
            with_dst,
            sp(g(
                5,
                "192.0.2.5",
                ports(&["tcp/2222"]),
                Some(Nat::Dnat {
                    to: "10.0.0.2".parse().unwrap(),
                    port: Some(22),
                    snat: Some(Snat::Masquerade),
                }),
            )),
            sp(g(8, "192.0.2.8", ports(&["tcp/80"]), Some(Nat::Route { snat: None }))),
            sp(g(9, "192.0.2.9", ports(&["tcp/80"]), Some(Nat::Redirect { port: 8080 }))),
        ];
        let mut out = String::new();
        for grant in &grants {
            let _ = writeln!(
                out,
                "# grant {} {} sport 40000 {} {:?}",
                grant.id, grant.source, grant.access, grant.nat
            );
            for e in items(grant) {
                assert!(matches!(&e, Item::Rule(r) if r.matches().contains("--sport 40000")), "{e}");
                let _ = writeln!(out, "{e}");
            }
        }
        let plain = items(&grants[0]);
        let puts: Vec<Change<'_, Item>> =
            plain.iter().map(|e| Change::Put { new: held(e, &grants[0]), prior: None }).collect();
        let removes: Vec<Change<'_, Item>> =
            plain.iter().map(|e| Change::Remove { old: held(e, &grants[0]) }).collect();
        let _ = writeln!(
            out,
            "# put\n{}# remove\n{}",
            rule_changes(Family::V4, &puts),
            rule_changes(Family::V4, &removes)
        );
        assert_eq!(set_changes(&puts, 1_700_000_010), "", "no set member for a source-port grant");
        insta::assert_snapshot!(out);
        // The same access without the source port is another entry (a set member).
        let whole = items(&g(1, "192.0.2.1", ports(&["tcp/22"]), None));
        assert!(matches!(&whole[0], Item::Member(_)));
        assert_ne!(whole[0], plain[0]);
        // Forward-all has nothing to match a source port on: refused, never widened.
        let all = sp(g(4, "192.0.2.4", Access::All, None));
        assert!(matches!(expand(&names(), &all), Err(BackendError::Unsupported(_))));
    }

    fn live_rules(grants: &[Grant]) -> Vec<(Rule, String)> {
        grants
            .iter()
            .flat_map(|g| {
                items(g).into_iter().filter_map(move |e| match e {
                    Item::Rule(r) => Some((r, tag(g.id, g.deadline))),
                    Item::Member(_) => None,
                })
            })
            .collect()
    }

    fn prepare_text(family: Family, current: &SaveDump) -> String {
        let live = live_rules(&all_grants());
        let tagged: Vec<TaggedRule<'_>> = live.iter().map(|(r, t)| (r, t.clone())).collect();
        prepare_rules(&names(), &config(), family, &tagged, current)
    }

    #[test]
    fn prepare_on_empty_tables_hooks_once() {
        insta::assert_snapshot!(prepare_text(Family::V4, &SaveDump::default()));
    }

    #[test]
    fn prepare_keeps_one_hook_and_removes_duplicates() {
        let current = parse_save(
            "*filter\n:INPUT ACCEPT [0:0]\n:SPA_INPUT - [0:0]\n-A INPUT -j SPA_INPUT\n-A INPUT -j SPA_INPUT\n\
             -A INPUT -j ACCEPT\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j SPA_PREROUTING\nCOMMIT\n",
        );
        insta::assert_snapshot!(prepare_text(Family::V6, &current));
    }

    /// A re-knock of a DNAT grant (each rule re-tagged in place), the revoke of a forward-all
    /// grant, and a plain grant that needs no iptables at all, in one batch.
    #[test]
    fn changes_replace_tagged_rules_and_delete_with_the_tag() {
        let grants = all_grants();
        let dnat = &grants[4];
        let later = Grant { deadline: dnat.deadline + 60, ..dnat.clone() };
        let dnat_items = items(dnat);
        let all_items = items(&grants[3]);
        let plain_items = items(&grants[0]);
        let mut changes: Vec<Change<'_, Item>> = dnat_items
            .iter()
            .map(|e| Change::Put { new: held(e, &later), prior: Some(held(e, dnat)) })
            .collect();
        changes.push(Change::Remove { old: held(&all_items[0], &grants[3]) });
        changes.push(Change::Put { new: held(&plain_items[0], &grants[0]), prior: None });
        insta::assert_snapshot!(rule_changes(Family::V4, &changes));
        assert_eq!(rule_changes(Family::V6, &changes), "", "nothing for the other family");
        assert_eq!(
            set_changes(&changes, 1_700_000_010),
            "add spa4 192.0.2.1,tcp:22 timeout 20 comment \"spa:id=0000000000000001:exp=1700000030\"\n"
        );
    }

    /// The slow path deletes each changed rule whatever its tag, once per copy, leaves other
    /// rules alone, and inserts the puts.
    #[test]
    fn the_fallback_deletes_by_identity_whatever_the_tag() {
        let grants = all_grants();
        let dnat = &grants[4];
        let later = Grant { deadline: dnat.deadline + 60, ..dnat.clone() };
        let dnat_items = items(dnat);
        let Item::Rule(pre) = &dnat_items[0] else { panic!() };
        let Item::Rule(fwd) = &dnat_items[1] else { panic!() };
        // The chain holds the prerouting rule twice with other tags, the forward rule not at
        // all (deleted by hand), and another grant's rule.
        let other = items(&grants[6]);
        let Item::Rule(other_pre) = &other[0] else { panic!() };
        let save = format!(
            "*filter\n:SPA_FORWARD - [0:0]\nCOMMIT\n*nat\n:SPA_PREROUTING - [0:0]\n\
             -A SPA_PREROUTING {}\n-A SPA_PREROUTING {}\n-A SPA_PREROUTING {}\nCOMMIT\n",
            pre.tagged("\"spa:id=0000000000000005:exp=1\""),
            other_pre.tagged("\"spa:id=0000000000000007:exp=1700000030\""),
            pre.tagged("\"spa:id=0000000000000099:exp=2\""),
        );
        let current = parse_save(&save);
        let changes: Vec<Change<'_, Item>> = dnat_items[..2]
            .iter()
            .map(|e| Change::Put { new: held(e, &later), prior: Some(held(e, dnat)) })
            .collect();
        let text = rule_fallback(&names(), Family::V4, &changes, &current);
        insta::assert_snapshot!(text);
        assert!(!text.contains("192.0.2.7"), "another grant's rule was touched");
        assert!(!text.contains(&format!("-D SPA_FORWARD {}", fwd.matches())), "{text}");
        // Removing rules that are not there at all: nothing to do.
        let removes: Vec<Change<'_, Item>> =
            dnat_items.iter().map(|e| Change::Remove { old: held(e, dnat) }).collect();
        assert_eq!(rule_fallback(&names(), Family::V4, &removes, &SaveDump::default()), "");
    }

    #[test]
    fn sets_prepare_change_teardown() {
        let grants = all_grants();
        let all: Vec<(Item, &Grant)> =
            grants.iter().flat_map(|g| items(g).into_iter().map(move |e| (e, g))).collect();
        let live: Vec<TimedMember<'_>> = all
            .iter()
            .filter_map(|(e, g)| match e {
                Item::Member(m) => Some((m, tag(g.id, g.deadline), 30)),
                Item::Rule(_) => None,
            })
            .collect();
        let mut text = prepare_sets(&names(), &live);
        text.push_str("# change\n");
        let (e0, g0) = &all[0];
        let (e1, g1) = &all[1];
        let changes = [Change::Remove { old: held(e1, g1) }, Change::Put { new: held(e0, g0), prior: None }];
        text.push_str(&set_changes(&changes, 1_700_000_000));
        text.push_str("# teardown\n");
        text.push_str(&teardown_sets(&["spa4".into(), "spa6d".into()]));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn set_timeouts_are_never_zero_nor_too_long() {
        assert_eq!(timeout(100, 100), 1, "0 would mean forever");
        assert_eq!(timeout(100, 200), 1);
        assert_eq!(timeout(130, 100), 30);
        assert_eq!(timeout(u64::MAX, 0), MAX_SET_TIMEOUT);
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
-A SPA_INPUT -s 10.9.9.9/32 -j ACCEPT
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
        assert_eq!(ours.len(), 3, "the rule in OTHER is not ours even with a tag: {ours:?}");
        assert_eq!(
            split_tag(ours[0].1),
            Some((
                "-s 10.0.0.1/32 -p tcp -m tcp --dport 2222 -j DNAT --to-destination 10.2.2.2:22".into(),
                GrantId(0xab),
                123
            ))
        );
        insta::assert_snapshot!(teardown_rules(&names(), &dump));
        // What observe reports: the tagged rule with its grant, the stranger without; the
        // static DROP not at all.
        let config = Config { protect: vec!["tcp/22".parse().unwrap()], ..Config::default() };
        let seen = observed_rules(&n, &config, Family::V4, &dump);
        assert_eq!(
            seen,
            vec![
                Observed {
                    entry: "iptables -t nat -A SPA_PREROUTING -s 10.0.0.1/32 -p tcp -m tcp --dport 2222 -j DNAT --to-destination 10.2.2.2:22".into(),
                    holder: Some(GrantId(0xab)),
                    until: Some(123),
                },
                Observed {
                    entry: "iptables -t filter -A SPA_INPUT -s 10.9.9.9/32 -j ACCEPT".into(),
                    holder: None,
                    until: None,
                },
            ]
        );
    }

    #[test]
    fn tags_round_trip_and_junk_is_refused() {
        let t = tag(GrantId(0xdead_beef), 1_700_000_000);
        assert_eq!(t, "spa:id=00000000deadbeef:exp=1700000000");
        assert_eq!(parse_tag(&t), Some((GrantId(0xdead_beef), 1_700_000_000)));
        for junk in [
            "spa:id=zz:exp=1",
            "spa:id=0000000000000001:exp=",
            "spa:id=1:exp=1",
            "nothing",
            "spa:id=0000000000000001:exp=1x",
        ] {
            assert_eq!(parse_tag(junk), None, "{junk}");
        }
        for (spec, untagged) in [
            (format!("-s 1.2.3.4/32 -m comment --comment \"{t}\" -j ACCEPT"), "-s 1.2.3.4/32 -j ACCEPT"),
            (format!("-s 1.2.3.4/32 -m comment --comment {t} -j ACCEPT"), "-s 1.2.3.4/32 -j ACCEPT"),
            (format!("-m comment --comment \"{t}\" -j ACCEPT"), "-j ACCEPT"),
        ] {
            assert_eq!(split_tag(&spec), Some((untagged.to_owned(), GrantId(0xdead_beef), 1_700_000_000)));
        }
        assert_eq!(split_tag("-s 1.2.3.4/32 -m comment --comment \"admin\" -j ACCEPT"), None);
        assert_eq!(split_tag("-m comment --comment \"spa:id=0000000000000001:exp=1"), None);
        // Every entry round-trips: tagged, then split, gives its untagged form.
        for grant in all_grants() {
            for e in items(&grant) {
                if let Item::Rule(r) = e {
                    let quoted = format!("\"{t}\"");
                    assert_eq!(split_tag(&r.tagged(&quoted)).map(|s| s.0), Some(r.untagged()));
                }
            }
        }
    }

    #[test]
    fn ipset_save_keeps_only_our_sets() {
        let text = "create spa4 hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 60 comment\n\
                    add spa4 10.0.0.1,tcp:22 timeout 29 comment \"spa:id=00000000000000ab:exp=123\"\n\
                    add spa4 10.0.0.2,tcp:22 timeout 9\n\
                    create other hash:ip\nadd other 10.0.0.1\ncreate spa6-tmp hash:ip,port family inet6\n";
        let d = parse_ipset_save(&names(), text);
        assert_eq!(d.sets, vec!["spa4".to_owned(), "spa6-tmp".to_owned()]);
        assert_eq!(
            observed_members(&d, 100),
            vec![
                Observed {
                    entry: "ipset spa4 10.0.0.1,tcp:22".into(),
                    holder: Some(GrantId(0xab)),
                    until: Some(123)
                },
                Observed { entry: "ipset spa4 10.0.0.2,tcp:22".into(), holder: None, until: Some(109) },
            ]
        );
    }

    #[test]
    fn mixed_families_and_impossible_nat_are_refused() {
        let n = names();
        let mut bad = all_grants()[4].clone();
        bad.nat = Some(Box::new(Nat::Dnat { to: "fd00::2".parse().unwrap(), port: None, snat: None }));
        assert!(matches!(expand(&n, &bad), Err(BackendError::Invalid(_))));
        let mut bad = all_grants()[0].clone();
        bad.destination = Some("2001:db8::9".parse().unwrap());
        assert!(expand(&n, &bad).is_err());
        let mut bad = all_grants()[8].clone();
        bad.access = Access::All;
        assert!(expand(&n, &bad).is_err());
        let mut bad = all_grants()[6].clone();
        bad.nat = Some(Box::new(Nat::Dnat { to: "10.0.0.3".parse().unwrap(), port: Some(22), snat: None }));
        assert!(expand(&n, &bad).is_err());
    }
}

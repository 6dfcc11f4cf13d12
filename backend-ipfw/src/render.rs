//! Pure rendering and parsing: configuration, table contents and changes in, ipfw batch text
//! (one command per line, as `ipfw /absolute/path` reads it) and argument vectors out; ipfw's
//! listings in, what spad owns out.
//!
//! Nothing here runs a program, so all of it is snapshot-tested without ipfw. Only typed
//! values (addresses, ports, numbers) and names checked at config load (the table prefix,
//! interfaces) are written, so no input can add a command or an option. Batch lines are not
//! shell words: `table(spa_in)` needs no quotes there (ipfw(8) reads the file itself).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use spa_backends::{Change, Observed};

use crate::config::Config;
use crate::model::{Kind, Names, Record};

/// Keys per `table ... add` line: ipfw reads a batch file line by line into a 4096-byte
/// buffer (sbin/ipfw/main.c), so a line must stay well below that.
const KEYS_PER_LINE: usize = 32;

/// The flow name of spad's dynamic rules, so `check-state :spa` finds exactly them.
const FLOW: &str = ":spa";

/// One of spad's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Its number, within spad's range.
    pub number: u16,
    /// What it does, without number, set or comment.
    pub body: String,
    /// Its comment: `spa:<name>:<fingerprint of the body>`, so a listing tells whether the
    /// rule with this number is still this rule, whatever ipfw prints for the body.
    pub comment: String,
}

impl Rule {
    fn new(number: u16, name: &str, body: String) -> Self {
        let comment = format!("spa:{name}:{:08x}", fnv1a(body.as_bytes()));
        Self { number, body, comment }
    }

    /// The batch line that adds it.
    pub fn add_line(&self, set: u8) -> String {
        format!("add {} set {set} {} // {}", self.number, self.body, self.comment)
    }
}

/// FNV-1a, 32 bits: a fingerprint of a rule's text (not a security measure: it only tells a
/// rule of an older configuration from the current one).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The NAT instance of the `i`-th forward.
pub fn nat_instance(config: &Config, i: usize) -> u16 {
    config.nat_base + i as u16
}

/// spad's rules, in number order:
///
/// | number | rule |
/// |---|---|
/// | base | `check-state :spa`: spad's dynamic rules (connections made during a grant) |
/// | base+10, +11 | `allow ip from any to me` / `me6` `flow table(<p>_in) keep-state :spa` |
/// | base+20, +21 | `allow ip from table(<p>_all) to me` / `me6` `keep-state :spa` |
/// | base+100+2i | `nat <n> <proto> from any to me <port> in recv <if> flow table(<p>_fwd)` |
/// | base+101+2i | `nat <n> <proto> from <host> <port> to any out xmit <if>` (the replies) |
/// | base+900+2j, +1 | `deny <proto> from any to me` / `me6` `<port>` per protected port |
pub fn rules(names: &Names, config: &Config) -> Vec<Rule> {
    let b = config.rule_base;
    let (tin, tall, tfwd) = (names.table(Kind::In), names.table(Kind::All), names.table(Kind::Fwd));
    let mut v = vec![
        Rule::new(b, "check", format!("check-state {FLOW}")),
        Rule::new(b + 10, "in4", format!("allow ip from any to me flow table({tin}) keep-state {FLOW}")),
        Rule::new(b + 11, "in6", format!("allow ip from any to me6 flow table({tin}) keep-state {FLOW}")),
        Rule::new(b + 20, "all4", format!("allow ip from table({tall}) to me keep-state {FLOW}")),
        Rule::new(b + 21, "all6", format!("allow ip from table({tall}) to me6 keep-state {FLOW}")),
    ];
    for (i, f) in config.forward.iter().enumerate() {
        let n = nat_instance(config, i);
        let (p, port, ifc) = (f.port.proto.name(), f.port.port, &f.interface);
        let at = b + 100 + 2 * i as u16;
        v.push(Rule::new(
            at,
            &format!("fwd-{p}-{port}"),
            format!("nat {n} {p} from any to me {port} in recv {ifc} flow table({tfwd})"),
        ));
        v.push(Rule::new(
            at + 1,
            &format!("back-{p}-{port}"),
            format!("nat {n} {p} from {} {} to any out xmit {ifc}", f.to, f.internal_port()),
        ));
    }
    for (j, pp) in config.protected().iter().enumerate() {
        let (p, port) = (pp.proto.name(), pp.port);
        let at = b + 900 + 2 * j as u16;
        v.push(Rule::new(at, &format!("deny4-{p}-{port}"), format!("deny {p} from any to me {port}")));
        v.push(Rule::new(at + 1, &format!("deny6-{p}-{port}"), format!("deny {p} from any to me6 {port}")));
    }
    v
}

/// The configuration of each forward's NAT instance, as `ipfw nat <n> config` takes it (and,
/// by ipfw(8)'s examples, as `ipfw nat show config` prints it back).
pub fn nat_configs(config: &Config) -> Vec<(u16, String)> {
    config
        .forward
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let text = format!(
                "if {} same_ports redirect_port {} {}:{} {}",
                f.interface,
                f.port.proto.name(),
                f.to,
                f.internal_port(),
                f.port.port
            );
            (nat_instance(config, i), text)
        })
        .collect()
}

/// A rule as `ipfw -S list` shows it: number, set and comment (the body is not compared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its number.
    pub number: u16,
    /// Its set, when `-S` printed it.
    pub set: Option<u8>,
    /// Its comment (after `//`), if any.
    pub comment: Option<String>,
}

/// Parses `ipfw -S list`: `10000 set 10 check-state :spa // spa:check:...` per line.
pub fn parse_list(text: &str) -> Vec<Listed> {
    text.lines()
        .filter_map(|line| {
            let (rule, comment) = match line.split_once(" // ") {
                Some((r, c)) => (r, Some(c.trim().to_owned())),
                None => (line, None),
            };
            let mut words = rule.split_whitespace();
            let number: u16 = words.next()?.parse().ok()?;
            let set = match (words.next(), words.next()) {
                (Some("set"), Some(s)) => s.parse().ok(),
                _ => None,
            };
            Some(Listed { number, set, comment })
        })
        .collect()
}

/// The rules of spad's set within its range in a listing.
pub fn ours(config: &Config, listing: &[Listed]) -> Vec<Listed> {
    listing
        .iter()
        .filter(|l| (config.rule_base..=config.rule_last()).contains(&l.number) && l.set == Some(config.set))
        .cloned()
        .collect()
}

/// What is wrong with spad's rules in a listing, if anything: a rule gone or changed (its
/// comment is not the expected one), or a rule in spad's set and range that spad did not make.
pub fn check_rules(names: &Names, config: &Config, listing: &[Listed]) -> Option<String> {
    let want = rules(names, config);
    let have = ours(config, listing);
    // A deny gone opens a port: report those first.
    let mut order: Vec<&Rule> = want.iter().collect();
    order.sort_by_key(|r| !r.comment.starts_with("spa:deny"));
    for r in order {
        if !have.iter().any(|l| l.number == r.number && l.comment.as_deref() == Some(r.comment.as_str())) {
            let name = r.comment.split(':').nth(1).unwrap_or_default();
            return Some(format!("ipfw rule {} ({name}) is gone or changed", r.number));
        }
    }
    if let Some(l) = have
        .iter()
        .find(|l| !want.iter().any(|r| r.number == l.number && l.comment.as_deref() == Some(&r.comment)))
    {
        return Some(format!("ipfw rule {} in set {} is not spad's", l.number, config.set));
    }
    None
}

/// Parses `ipfw nat show config`: `ipfw nat 100 config if em0 ...` per line, by instance.
pub fn parse_nat_configs(text: &str) -> BTreeMap<u16, String> {
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["ipfw", "nat", n, "config", rest @ ..] => Some((n.parse().ok()?, rest.join(" "))),
                _ => None,
            }
        })
        .collect()
}

fn table_lines(out: &mut String, table: &str, op: &str, items: &[String]) {
    for chunk in items.chunks(KEYS_PER_LINE) {
        let _ = writeln!(out, "table {table} {op} {}", chunk.join(" "));
    }
}

/// A table's value for a deadline: ipfw values are 32 bits.
pub fn value(until: u64) -> u32 {
    u32::try_from(until).unwrap_or(u32::MAX)
}

/// The batch that sets everything up so that the tables hold exactly `contents` (key and
/// value per table): NAT instances whose configuration differs from `nat_now`, each table
/// created if missing and refilled through a swap with a fresh twin (atomic: no moment without
/// the live grants), then rules that are not as expected deleted and the missing ones added.
/// Rules that are already right are left alone, so their dynamic rules (the connections they
/// let in) survive a restart.
pub fn prepare(
    names: &Names,
    config: &Config,
    contents: &BTreeMap<Kind, Vec<(String, u32)>>,
    listing: &[Listed],
    nat_now: &BTreeMap<u16, String>,
) -> String {
    let mut out = String::new();
    for (n, text) in nat_configs(config) {
        if nat_now.get(&n) != Some(&text) {
            let _ = writeln!(out, "nat {n} config {text}");
        }
    }
    for kind in Kind::ALL {
        let (table, ty) = (names.table(kind), kind.table_type());
        let twin = format!("{table}_n");
        let _ = writeln!(out, "table {table} create type {ty} missing");
        let _ = writeln!(out, "table {twin} create type {ty} or-flush");
        let items: Vec<String> =
            contents.get(&kind).into_iter().flatten().map(|(k, v)| format!("{k} {v}")).collect();
        table_lines(&mut out, &twin, "add", &items);
        let _ = writeln!(out, "table {table} swap {twin}");
        let _ = writeln!(out, "table {twin} destroy");
    }
    let want = rules(names, config);
    let have = ours(config, listing);
    let ok =
        |l: &Listed| want.iter().any(|r| r.number == l.number && l.comment.as_deref() == Some(&r.comment));
    let stale: BTreeSet<u16> = have.iter().filter(|l| !ok(l)).map(|l| l.number).collect();
    if !stale.is_empty() {
        let numbers: Vec<String> = stale.iter().map(u16::to_string).collect();
        let _ = writeln!(out, "set {} delete {}", config.set, numbers.join(" "));
    }
    for r in &want {
        if !have.iter().any(|l| ok(l) && l.number == r.number) {
            out.push_str(&r.add_line(config.set));
            out.push('\n');
        }
    }
    out
}

/// The batch for a list of changes: per table, the deletes (removed keys, and re-timed keys
/// whose value changes), then the adds with the new deadline as value. A key put again with
/// the deadline it has needs nothing. With `-q`, adding a key
/// that is there or deleting one that is not is not an error (ipfw(8) `-q`).
pub fn changes(changes: &[Change<'_, Record>]) -> String {
    let mut per: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for c in changes {
        match c {
            // The same key with the same deadline (another grant now holds it): nothing moves.
            Change::Put { new, prior: Some(p) }
                if value(p.until) == value(new.until) && p.entry == new.entry => {}
            Change::Put { new, prior } => {
                let (dels, adds) = per.entry(new.entry.table()).or_default();
                if prior.is_some() {
                    dels.push(new.entry.key());
                }
                adds.push(format!("{} {}", new.entry.key(), value(new.until)));
            }
            Change::Remove { old } => per.entry(old.entry.table()).or_default().0.push(old.entry.key()),
        }
    }
    let mut out = String::new();
    for (table, (dels, adds)) in per {
        table_lines(&mut out, &table, "delete", &dels);
        table_lines(&mut out, &table, "add", &adds);
    }
    out
}

/// The batch that asks for each table (`info` fails for a table that does not exist).
pub fn tables_info(names: &Names) -> String {
    Kind::ALL.iter().map(|k| format!("table {} info\n", names.table(*k))).collect()
}

/// The batch that lists each table's keys and values.
pub fn tables_list(names: &Names) -> String {
    Kind::ALL.iter().map(|k| format!("table {} list\n", names.table(*k))).collect()
}

/// Parses `ipfw table <name> list` output (`--- table(<name>), set(<n>) ---` then `<key>
/// <value>` per line) into what `observe` reports: every key of spad's tables, with its value
/// as the deadline.
pub fn observed(names: &Names, text: &str) -> Vec<Observed> {
    let mut out = Vec::new();
    let mut table: Option<String> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("--- table(") {
            table = rest.split_once(')').map(|(t, _)| t.to_owned()).filter(|t| names.kind_of(t).is_some());
            continue;
        }
        let Some(t) = &table else { continue };
        let mut w = line.split_whitespace();
        let (Some(key), value) = (w.next(), w.next()) else { continue };
        out.push(Observed {
            entry: format!("table({t}) {key}"),
            holder: None,
            until: value.and_then(|v| v.parse().ok()),
        });
    }
    out
}

/// The batch that removes everything spad owns: its rules (by number, in its set only) and its
/// tables (each created first if missing, so that the destroy cannot fail and a second
/// teardown is not an error). NAT instances are left configured: without spad's rules no
/// packet reaches them.
pub fn teardown(names: &Names, config: &Config, listing: &[Listed]) -> String {
    let mut out = String::new();
    let numbers: Vec<String> = ours(config, listing).iter().map(|l| l.number.to_string()).collect();
    if !numbers.is_empty() {
        let _ = writeln!(out, "set {} delete {}", config.set, numbers.join(" "));
    }
    for kind in Kind::ALL {
        let table = names.table(kind);
        let _ = writeln!(out, "table {table} create type {} missing", kind.table_type());
        let _ = writeln!(out, "table {table} destroy");
    }
    out
}

/// Runs a batch from stdin, quietly (`ipfw -q /dev/stdin`: "the last argument is treated as a
/// file when it starts with `/`", ipfw(8) LIST OF RULES AND PREPROCESSING).
pub fn batch_args() -> Vec<String> {
    vec!["-q".to_owned(), "/dev/stdin".to_owned()]
}

/// Runs a listing batch from stdin (not quiet: its output is what we want).
pub fn listing_batch_args() -> Vec<String> {
    vec!["/dev/stdin".to_owned()]
}

/// Lists every rule with its set (`-S`: "If this flag is not specified, disabled rules will not
/// be listed").
pub fn list_args() -> Vec<String> {
    vec!["-S".to_owned(), "list".to_owned()]
}

/// Shows every NAT instance's configuration.
pub fn nat_show_args() -> Vec<String> {
    ["nat", "show", "config"].map(str::to_owned).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::testkit::grant;
    use spa_backends::{Grant, Held};

    fn config() -> Config {
        Config::from_table(
            &"protect = [\"tcp/22\"]\n[[forward]]\nport = \"tcp/2222\"\nto = \"192.168.77.10\"\nto_port = 22\ninterface = \"em0\"\n"
                .parse()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_fresh_prepare_creates_tables_nat_and_rules() {
        let (n, c) = (Names::new("spa"), config());
        let mut contents = BTreeMap::new();
        contents.insert(
            Kind::In,
            vec![
                ("192.0.2.1,tcp,22".to_owned(), 1_700_000_030),
                ("2001:db8::1,udp,53".to_owned(), 1_700_000_060),
            ],
        );
        insta::assert_snapshot!(prepare(&n, &c, &contents, &[], &BTreeMap::new()));
    }

    #[test]
    fn a_prepare_leaves_rules_that_are_right_and_replaces_the_rest() {
        let (n, c) = (Names::new("spa"), config());
        let mut listing: Vec<Listed> = rules(&n, &c)
            .iter()
            .map(|r| Listed { number: r.number, set: Some(10), comment: Some(r.comment.clone()) })
            .collect();
        // One rule of an older configuration, one stranger in our set, one in another set.
        listing[3].comment = Some("spa:all4:00000000".into());
        listing.push(Listed { number: 10500, set: Some(10), comment: None });
        listing.push(Listed { number: 10600, set: Some(0), comment: None });
        let nat = parse_nat_configs(
            "ipfw nat 100 config if em0 same_ports redirect_port tcp 192.168.77.10:22 2222\n",
        );
        let text = prepare(&n, &c, &BTreeMap::new(), &listing, &nat);
        insta::assert_snapshot!(text);
        assert!(!text.contains("nat 100 config"), "an unchanged NAT instance is not reconfigured");
        assert_eq!(check_rules(&n, &c, &listing).unwrap(), "ipfw rule 10020 (all4) is gone or changed");
    }

    #[test]
    fn changes_delete_then_add_with_the_deadline_as_value() {
        let n = Names::new("spa");
        let c = config();
        let g: Grant = grant(1).ports("tcp/22,udp/53").times(1000, 1700).into();
        let e = crate::model::expand(&n, &c, &g).unwrap();
        let all: Grant = grant(2).all().times(1000, 1800).into();
        let ea = crate::model::expand(&n, &c, &all).unwrap();
        let h = |entry, until| Held { entry, holder: &g, until };
        let text = changes(&[
            Change::Put { new: h(&e[0], 1700), prior: None },
            Change::Put { new: h(&e[1], 1900), prior: Some(h(&e[1], 1700)) },
            Change::Remove { old: Held { entry: &ea[0], holder: &all, until: 1800 } },
        ]);
        insta::assert_snapshot!(text);
        // The same key put again with the deadline it has (another grant holds it now).
        assert_eq!(changes(&[Change::Put { new: h(&e[0], 1700), prior: Some(h(&e[0], 1700)) }]), "");
    }

    #[test]
    fn listings_are_parsed() {
        let l = parse_list(
            "10000 set 10 check-state :spa // spa:check:12345678\n10010 set 10 allow ip from any to me flow table(spa_in) keep-state :spa // spa:in4:abcdef01\n65535 set 31 deny ip from any to any\nnot a rule\n",
        );
        assert_eq!(l.len(), 3);
        assert_eq!(l[0], Listed { number: 10000, set: Some(10), comment: Some("spa:check:12345678".into()) });
        assert_eq!(l[2].comment, None);
        let c = config();
        assert_eq!(ours(&c, &l).len(), 2);
        let o = observed(
            &Names::new("spa"),
            "--- table(spa_in), set(0) ---\n192.0.2.1,tcp,22 1700\n--- table(other), set(0) ---\n10.0.0.1 5\n--- table(spa_all), set(0) ---\n192.0.2.9 0\n",
        );
        assert_eq!(
            o,
            [
                Observed { entry: "table(spa_in) 192.0.2.1,tcp,22".into(), holder: None, until: Some(1700) },
                Observed { entry: "table(spa_all) 192.0.2.9".into(), holder: None, until: Some(0) }
            ]
        );
        assert_eq!(value(u64::MAX), u32::MAX);
    }

    #[test]
    fn long_table_fills_are_split_into_short_lines() {
        let (n, c) = (Names::new("spa"), Config::default());
        let keys: Vec<(String, u32)> =
            (0..100u32).map(|i| (format!("2001:db8::{i:x},tcp,65535"), u32::MAX)).collect();
        let contents = BTreeMap::from([(Kind::In, keys)]);
        let text = prepare(&n, &c, &contents, &[], &BTreeMap::new());
        assert!(text.lines().all(|l| l.len() < 4096 / 2), "a line too long for ipfw's batch reader");
        assert_eq!(text.lines().filter(|l| l.starts_with("table spa_in_n add")).count(), 4);
    }

    #[test]
    fn teardown_and_queries() {
        let (n, c) = (Names::new("spa"), config());
        let listing = parse_list(
            "10000 set 10 check-state :spa // x\n10900 set 10 deny tcp from any to me 22 // y\n10901 set 3 count ip from any to any\n",
        );
        let mut out = teardown(&n, &c, &listing);
        out.push_str(&tables_info(&n));
        out.push_str(&tables_list(&n));
        for argv in [batch_args(), listing_batch_args(), list_args(), nat_show_args()] {
            out.push_str(&format!("ipfw {}\n", argv.join(" ")));
        }
        insta::assert_snapshot!(out);
    }
}

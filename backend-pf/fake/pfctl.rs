//! A recording fake of `pfctl(8)` for the tests of `spa-backend-pf`: it keeps the anchors'
//! rules and tables, and the state table, in a JSON file, and refuses malformed input the way
//! the manuals say pfctl does. Run as `spa-fake-pfctl --state FILE PROGRAM ARGS...` (the
//! backend's command prefix is `spa-fake-pfctl --state FILE`; PROGRAM is the configured pfctl
//! path, ignored).
//!
//! What it models, and where each behaviour comes from (FreeBSD pfctl.8 of 2025-07-04 and
//! pf.conf.5 of 2025-01-10 from freebsd/freebsd-src; OpenBSD's differences from the reference
//! sheet `shared/reference/firewalls.md` §2):
//!
//! - options as getopt(3) parses them; "At least one option must be specified"; `-t` and `-T`
//!   only together; arguments after the options only for `-T`; `-s`, `-F` and `-T` modifiers
//!   "may be abbreviated" (the first in pfctl's list order that the word starts);
//! - `-T add`: "Automatically create a persistent table if it does not exist"; adding an
//!   address that is there is not an error (`X`: "duplicated and therefore ignored"); `-T
//!   delete` of an absent address likewise; `-T delete`/`show`/`flush` on a table that does not
//!   exist fail ("Table does not exist"); `-q`: "Only print errors and warnings";
//! - `-f -`: the pf.conf(5) grammar for the statements spad writes (tables, `pass`/`block`/
//!   `match` rules, legacy `nat`/`rdr` rules, OpenBSD `rdr-to`/`nat-to` options), with the
//!   checks pfctl makes: statement order ("translation, filtering"; tables anywhere), `port`
//!   only with tcp/udp, `flags` only with tcp, address families that match, `rdr-to` only on
//!   inbound and `nat-to` only on outbound rules (OpenBSD), labels under 64 bytes, table names
//!   under 32. Loading is all or nothing. "The contents of a pre-existing table defined without
//!   a list of addresses to initialize it is not altered when pf.conf is loaded. A table
//!   initialized with the empty list, { }, will be cleared on load."
//! - flavour `openbsd`: no `nat`/`rdr` rules, no `nat-anchor`/`rdr-anchor`, no `-s nat` or
//!   `-F nat` (OpenBSD 4.7 removed them); flavour `freebsd`: no `rdr-to`/`nat-to` (FreeBSD 14;
//!   whether 15 accepts them is not known);
//! - `-k host [-k host]`: kills the states from the first to the second host or network;
//! - `-s rules|nat|Tables`, `-F rules|nat|Tables` in an anchor.
//!
//! Not modelled (exit status 2 with `fake-pfctl: not modelled`, so a test fails loudly):
//! everything else, host names (real pfctl resolves them), macros, options (`set`), anchors
//! inside anchors. Listings are printed close to, not exactly like, pfctl's: the backend only
//! relies on labels, table names and addresses in them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::IpAddr;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

/// The fake firewall, as kept in the state file between runs.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct State {
    /// `freebsd` (legacy nat/rdr) or `openbsd`.
    flavor: String,
    /// The main ruleset's filter rules, as `pfctl -s rules` prints them (the hooks).
    main_rules: Vec<String>,
    /// The main ruleset's translation rules, as `pfctl -s nat` prints them (FreeBSD).
    main_nat: Vec<String>,
    /// The anchors by path.
    anchors: BTreeMap<String, Anchor>,
    /// The state table.
    states: Vec<PfState>,
    /// Fail this many of the next runs (before changing anything), as a busy device would.
    fail_next: u32,
    /// Every run: its arguments, its stdin and its exit status.
    calls: Vec<Call>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Anchor {
    rules: Vec<String>,
    nat: Vec<String>,
    tables: BTreeMap<String, Table>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Table {
    persist: bool,
    addrs: BTreeSet<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PfState {
    src: String,
    dst: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Call {
    args: Vec<String>,
    stdin: String,
    status: u8,
}

/// How a run ends: success with stdout and stderr, a pfctl error, or something this fake does
/// not model.
enum Outcome {
    Ok(String, String),
    Fail(String),
    NotModelled(String),
}

fn fail<T>(msg: impl Into<String>) -> Result<T, Outcome> {
    Err(Outcome::Fail(msg.into()))
}

fn not_modelled<T>(msg: impl Into<String>) -> Result<T, Outcome> {
    Err(Outcome::NotModelled(msg.into()))
}

const USAGE: &str = "usage: pfctl [-AdeghMmNnOPqRrvz] [-a anchor] [-D macro=value] [-F modifier] [-f file] [-i interface] [-K host | network] [-k host | network | label | id | gateway | nat] [-o level] [-p device] [-s modifier] [-t table -T command [address ...]] [-x level]";

/// Options that take an argument (pfctl's getopt string).
const WITH_ARG: &str = "aDFfiKkopstTx";
/// Options without one.
const FLAGS: &str = "AdeghMmNnOPqRrvzS";

#[derive(Debug, Default)]
struct Opts {
    anchor: Option<String>,
    show: Option<String>,
    flush: Option<String>,
    file: Option<String>,
    table: Option<String>,
    tcmd: Option<String>,
    kill: Vec<String>,
    quiet: bool,
    noaction: bool,
    rest: Vec<String>,
}

fn parse_opts(args: &[String]) -> Result<Opts, Outcome> {
    let mut o = Opts::default();
    let mut i = 0;
    let mut any = false;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a.len() < 2 {
            break;
        }
        let chars: Vec<char> = a[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            any = true;
            if WITH_ARG.contains(c) {
                let value: String = if j + 1 < chars.len() {
                    chars[j + 1..].iter().collect()
                } else {
                    i += 1;
                    match args.get(i) {
                        Some(v) => v.clone(),
                        None => return fail(format!("pfctl: option requires an argument -- {c}\n{USAGE}")),
                    }
                };
                match c {
                    'a' => o.anchor = Some(value),
                    's' => o.show = Some(value),
                    'F' => o.flush = Some(value),
                    'f' => o.file = Some(value),
                    't' => o.table = Some(value),
                    'T' => o.tcmd = Some(value),
                    'k' => {
                        if o.kill.len() >= 2 {
                            return fail("pfctl: can only specify -k twice");
                        }
                        o.kill.push(value);
                    }
                    other => return not_modelled(format!("option -{other}")),
                }
                j = chars.len();
            } else if FLAGS.contains(c) {
                match c {
                    'q' => o.quiet = true,
                    'n' => o.noaction = true,
                    'v' => {}
                    other => return not_modelled(format!("option -{other}")),
                }
                j += 1;
            } else {
                return fail(format!("pfctl: illegal option -- {c}\n{USAGE}"));
            }
        }
        i += 1;
    }
    if !any {
        return fail(USAGE);
    }
    o.rest = args[i..].to_vec();
    if o.tcmd.is_some() != o.table.is_some() {
        return fail(USAGE);
    }
    if o.tcmd.is_none() && !o.rest.is_empty() {
        return fail(format!("pfctl: unknown command line argument: {} ...\n{USAGE}", o.rest[0]));
    }
    Ok(o)
}

/// pfctl's modifier lookup: the first entry of `list` that starts with `word` (case matters).
fn lookup<'a>(word: &str, list: &[&'a str]) -> Option<&'a str> {
    if word.is_empty() {
        return None;
    }
    list.iter().copied().find(|m| m.starts_with(word))
}

/// A table address as `-T add` and table definitions take it: `[!]addr[/bits]`. Host names are
/// not resolved here.
fn table_addr(word: &str) -> Result<String, String> {
    let w = word.strip_prefix('!').unwrap_or(word);
    if w != word {
        return Err("negated entries are not modelled".into());
    }
    let (host, bits) = match w.split_once('/') {
        Some((h, b)) => (h, Some(b)),
        None => (w, None),
    };
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("cannot decode address {word:?} (host names are not resolved here)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits: u32 = match bits {
        None => max,
        Some(b) => {
            b.parse().ok().filter(|b| *b <= max).ok_or_else(|| format!("invalid netmask in {word:?}"))?
        }
    };
    // Host bits beyond the prefix must be zero.
    let value: u128 = match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let host_bits = max - bits;
    let host_mask = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
    if value & host_mask != 0 {
        return Err("Invalid argument".into());
    }
    Ok(if bits == max { ip.to_string() } else { format!("{ip}/{bits}") })
}

// ----- the pf.conf subset -----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Punct(char),
    Arrow,
}

fn tokenize(line: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            break;
        } else if c == '"' {
            let start = i + 1;
            let end = chars[start..].iter().position(|&x| x == '"').ok_or("unterminated quoted string")?;
            out.push(Tok::Quoted(chars[start..start + end].iter().collect()));
            i = start + end + 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'>') {
            out.push(Tok::Arrow);
            i += 2;
        } else if "{}(),<>!".contains(c) {
            out.push(Tok::Punct(c));
            i += 1;
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !"{}(),<>!\"#".contains(chars[i]) {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: &'a [Tok],
    at: usize,
}

type Parsed<T> = Result<T, String>;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn word(&self) -> Option<&str> {
        match self.peek() {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn eat(&mut self, w: &str) -> bool {
        if self.word() == Some(w) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn eat_punct(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn next_word(&mut self) -> Parsed<String> {
        match self.peek() {
            Some(Tok::Word(w)) => {
                let w = w.clone();
                self.at += 1;
                Ok(w)
            }
            _ => Err("syntax error".into()),
        }
    }

    fn done(&self) -> bool {
        self.at >= self.toks.len()
    }
}

fn ifname(w: &str) -> Parsed<()> {
    let ok = w.len() < 16
        && w.starts_with(|c: char| c.is_ascii_alphabetic())
        && w.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'));
    if ok { Ok(()) } else { Err("syntax error".into()) }
}

/// The families a host expression allows (`None`: both).
type Family = Option<bool>; // Some(true): inet

fn table_name(p: &mut Parser<'_>, tables: &mut BTreeSet<String>) -> Parsed<()> {
    let name = p.next_word()?;
    if name.len() >= 32 {
        return Err(format!("table name too long: {name}"));
    }
    if !p.eat_punct('>') {
        return Err("syntax error".into());
    }
    tables.insert(name);
    Ok(())
}

/// `host` of the grammar, or `any`/`self`: returns the family of a literal address.
fn host(p: &mut Parser<'_>, tables: &mut BTreeSet<String>) -> Parsed<Family> {
    p.eat_punct('!');
    if p.eat_punct('<') {
        table_name(p, tables)?;
        return Ok(None);
    }
    if p.eat_punct('(') {
        ifname(&p.next_word()?)?;
        return if p.eat_punct(')') { Ok(None) } else { Err("syntax error".into()) };
    }
    if p.eat_punct('{') {
        let mut fam = None;
        while !p.eat_punct('}') {
            if p.done() {
                return Err("syntax error".into());
            }
            p.eat_punct(',');
            if p.peek() == Some(&Tok::Punct('}')) {
                continue;
            }
            let f = host(p, tables)?;
            fam = fam.or(f);
        }
        return Ok(fam);
    }
    let w = p.next_word()?;
    match w.as_str() {
        "any" | "self" | "no-route" | "urpf-failed" => Ok(None),
        _ => match table_addr(&w) {
            Ok(a) => Ok(Some(!a.contains(':'))),
            Err(_) if ifname(&w).is_ok() && !w.contains('.') => Ok(None), // an interface name
            Err(e) => Err(e),
        },
    }
}

fn port_value(w: &str) -> Parsed<()> {
    match w.parse::<u32>() {
        Ok(n) if n <= 65535 => Ok(()),
        Ok(_) => Err(format!("illegal port value {w}")),
        // Service names are looked up in /etc/services; spad writes numbers only.
        Err(_) => Err(format!("unknown port {w}")),
    }
}

/// `port` of the grammar, after the keyword.
fn port(p: &mut Parser<'_>) -> Parsed<()> {
    if p.eat_punct('{') {
        while !p.eat_punct('}') {
            if p.done() {
                return Err("syntax error".into());
            }
            p.eat_punct(',');
            port_value(&p.next_word()?)?;
        }
        return Ok(());
    }
    if p.eat_punct('!') {
        // `!=`
        if p.next_word()? != "=" {
            return Err("syntax error".into());
        }
    } else if matches!(p.word(), Some("=" | "<" | "<=" | ">" | ">="))
        || p.peek() == Some(&Tok::Punct('<'))
        || p.peek() == Some(&Tok::Punct('>'))
    {
        p.at += 1;
    }
    let w = p.next_word()?;
    match w.split_once(':') {
        Some((a, b)) => {
            port_value(a)?;
            port_value(b)
        }
        None => port_value(&w),
    }
}

#[derive(Debug, Default)]
struct RuleFacts {
    af: Family,
    protos: Vec<String>,
    has_port: bool,
    families: Vec<bool>,
}

fn hosts(p: &mut Parser<'_>, facts: &mut RuleFacts, tables: &mut BTreeSet<String>) -> Parsed<()> {
    if p.eat("all") {
        return Ok(());
    }
    for kw in ["from", "to"] {
        if !p.eat(kw) {
            // pfctl accepts `from` or `to` alone; the grammar has both.
            if kw == "to" {
                return Ok(());
            }
            continue;
        }
        if p.word() != Some("port")
            && let Some(f) = host(p, tables)?
        {
            facts.families.push(f);
        }
        if p.eat("port") {
            port(p)?;
            facts.has_port = true;
        }
    }
    Ok(())
}

fn head(p: &mut Parser<'_>, facts: &mut RuleFacts) -> Parsed<()> {
    if p.eat("on") {
        if p.eat_punct('{') {
            while !p.eat_punct('}') {
                p.eat_punct(',');
                p.eat_punct('!');
                ifname(&p.next_word()?)?;
            }
        } else {
            p.eat_punct('!');
            ifname(&p.next_word()?)?;
        }
    }
    if p.eat("inet") {
        facts.af = Some(true);
    } else if p.eat("inet6") {
        facts.af = Some(false);
    }
    if p.eat("proto") {
        if p.eat_punct('{') {
            while !p.eat_punct('}') {
                p.eat_punct(',');
                facts.protos.push(p.next_word()?);
            }
        } else {
            facts.protos.push(p.next_word()?);
        }
        for pr in &facts.protos {
            if !matches!(pr.as_str(), "tcp" | "udp" | "icmp" | "icmp6" | "sctp") && pr.parse::<u8>().is_err()
            {
                return Err(format!("unknown protocol {pr}"));
            }
        }
    }
    Ok(())
}

/// `redirhost [port N[:M]]`: returns the redirect address's family.
fn redirect(p: &mut Parser<'_>) -> Parsed<Family> {
    let fam = if p.eat_punct('(') {
        ifname(&p.next_word()?)?;
        if !p.eat_punct(')') {
            return Err("syntax error".into());
        }
        None
    } else {
        let a = table_addr(&p.next_word()?)?;
        Some(!a.contains(':'))
    };
    if p.eat("port") {
        let w = p.next_word()?;
        match w.split_once(':') {
            Some((a, b)) if b != "*" => {
                port_value(a)?;
                port_value(b)?;
            }
            Some((a, _)) => port_value(a)?,
            None => port_value(&w)?,
        }
    }
    Ok(fam)
}

/// The checks pfctl makes once a rule is parsed.
fn semantics(facts: &RuleFacts, redirect: Family) -> Parsed<()> {
    let tcp_udp =
        !facts.protos.is_empty() && facts.protos.iter().all(|p| matches!(p.as_str(), "tcp" | "udp" | "sctp"));
    if facts.has_port && !tcp_udp {
        return Err("port only applies to tcp/udp/sctp".into());
    }
    if let (Some(r), Some(af)) = (redirect, facts.af.or(facts.families.first().copied()))
        && r != af
    {
        return Err("no translation address with matching address family found.".into());
    }
    let mut fams: Vec<bool> = facts.families.clone();
    fams.extend(redirect);
    let mixed = match facts.af {
        Some(af) => fams.iter().any(|f| *f != af),
        None => fams.windows(2).any(|w| w[0] != w[1]),
    };
    if mixed {
        return Err("rule expands to no valid combination".into());
    }
    Ok(())
}

/// Parses one filter rule (`pass`, `block`, `match`).
fn filter_rule(p: &mut Parser<'_>, openbsd: bool, tables: &mut BTreeSet<String>) -> Parsed<()> {
    let action = p.next_word()?;
    if action == "block" {
        for r in ["drop", "return", "return-rst", "return-icmp", "return-icmp6"] {
            if p.eat(r) {
                break;
            }
        }
    }
    let dir = if p.eat("in") {
        Some("in")
    } else if p.eat("out") {
        Some("out")
    } else {
        None
    };
    p.eat("log");
    p.eat("quick");
    let mut facts = RuleFacts::default();
    head(p, &mut facts)?;
    hosts(p, &mut facts, tables)?;
    let mut redirect_family = None;
    while !p.done() {
        let w = p.next_word()?;
        match w.as_str() {
            "flags" => {
                let f = p.next_word()?;
                let ok = f == "any"
                    || f.split_once('/').is_some_and(|(a, b)| {
                        a.chars().chain(b.chars()).all(|c| "FSRPAUEW".contains(c)) && !b.is_empty()
                    });
                if !ok {
                    return Err("syntax error".into());
                }
                if facts.protos != ["tcp"] {
                    return Err("flags only apply to tcp".into());
                }
            }
            "keep" | "modulate" | "synproxy" => {
                if p.next_word()? != "state" {
                    return Err("syntax error".into());
                }
            }
            "no" => {
                if p.next_word()? != "state" {
                    return Err("syntax error".into());
                }
            }
            "label" => match p.peek() {
                Some(Tok::Quoted(l)) if l.len() < 64 => p.at += 1,
                Some(Tok::Quoted(_)) => return Err("rule label too long (max 63 chars)".into()),
                _ => return Err("syntax error".into()),
            },
            "tag" => {
                p.next_word()?;
            }
            "rdr-to" | "nat-to" if openbsd => {
                if action == "block" {
                    return Err(format!("{w} not allowed on block rules"));
                }
                if w == "rdr-to" && dir != Some("in") {
                    return Err("rdr-to can only be used with inbound rules".into());
                }
                if w == "nat-to" && dir != Some("out") {
                    return Err("nat-to can only be used with outbound rules".into());
                }
                redirect_family = redirect(p)?;
                p.eat("static-port");
            }
            _ => return Err("syntax error".into()),
        }
    }
    semantics(&facts, redirect_family)
}

/// Parses one legacy translation rule (`nat`, `rdr`, and their `no` forms).
fn translation_rule(p: &mut Parser<'_>, tables: &mut BTreeSet<String>) -> Parsed<&'static str> {
    let negated = p.eat("no");
    let kind = if p.eat("nat") {
        "nat"
    } else if p.eat("rdr") {
        "rdr"
    } else {
        return Err("syntax error".into());
    };
    if !negated {
        p.eat("pass");
    }
    let mut facts = RuleFacts::default();
    head(p, &mut facts)?;
    hosts(p, &mut facts, tables)?;
    if p.eat("tag") {
        p.next_word()?;
    }
    let mut redirect_family = None;
    if negated {
        if !p.done() {
            return Err("syntax error".into());
        }
    } else {
        if p.peek() != Some(&Tok::Arrow) {
            return Err("syntax error".into());
        }
        p.at += 1;
        redirect_family = redirect(p)?;
        for opt in ["round-robin", "random", "source-hash", "bitmask", "static-port"] {
            p.eat(opt);
        }
    }
    if !p.done() {
        return Err("syntax error".into());
    }
    semantics(&facts, redirect_family)?;
    Ok(kind)
}

/// A table definition: name, `persist`, and the list if one is given.
fn table_rule(p: &mut Parser<'_>) -> Parsed<(String, bool, Option<BTreeSet<String>>)> {
    if !p.eat_punct('<') {
        return Err("syntax error".into());
    }
    let mut names = BTreeSet::new();
    table_name(p, &mut names)?;
    let name = names.into_iter().next().unwrap_or_default();
    let (mut persist, mut list) = (false, None);
    while !p.done() {
        if p.eat("persist") {
            persist = true;
        } else if p.eat("const") || p.eat("counters") {
        } else if p.eat_punct('{') {
            let mut set = BTreeSet::new();
            while !p.eat_punct('}') {
                if p.done() {
                    return Err("syntax error".into());
                }
                if p.eat_punct(',') {
                    continue;
                }
                set.insert(table_addr(&p.next_word()?)?);
            }
            list = Some(set);
        } else if p.eat("file") {
            return Err("not modelled: table files".into());
        } else {
            return Err("syntax error".into());
        }
    }
    Ok((name, persist, list))
}

/// How a rule is listed by `-s rules`/`-s nat`: its tokens joined, `port N` shown as pfctl
/// shows it (`port = N`), so that readers cannot depend on our own spelling.
fn listing_form(toks: &[Tok]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let s = match &toks[i] {
            Tok::Word(w) => w.clone(),
            Tok::Quoted(q) => format!("\"{q}\""),
            Tok::Punct(c) => c.to_string(),
            Tok::Arrow => "->".into(),
        };
        let is_port = s == "port";
        out.push(s);
        // `port 22` after a host is printed `port = 22` (not after `->` targets).
        if is_port
            && let Some(Tok::Word(n)) = toks.get(i + 1)
            && n.parse::<u16>().is_ok()
            && !out.iter().any(|t| t == "->" || t == "rdr-to" || t == "nat-to")
        {
            out.push("=".into());
        }
        i += 1;
    }
    out.join(" ").replace("< ", "<").replace(" >", ">").replace("( ", "(").replace(" )", ")")
}

/// Parses a ruleset for `-a anchor -f -`: all of it, or an error naming the line.
fn parse_ruleset(text: &str, openbsd: bool) -> Result<(Anchor, BTreeSet<String>), String> {
    let mut anchor = Anchor::default();
    let mut defined: BTreeMap<String, (bool, Option<BTreeSet<String>>)> = BTreeMap::new();
    let mut referenced = BTreeSet::new();
    let mut seen_filter = false;
    let mut logical = String::new();
    let mut start_line = 0;
    for (n, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            start_line = n + 1;
        }
        if let Some(cont) = raw.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(raw);
        let line = std::mem::take(&mut logical);
        let toks = tokenize(&line).map_err(|e| format!("stdin:{start_line}: {e}"))?;
        if toks.is_empty() {
            continue;
        }
        let at = |e: String| format!("stdin:{start_line}: {e}");
        let mut p = Parser { toks: &toks, at: 0 };
        match p.word().unwrap_or_default() {
            "table" => {
                p.at += 1;
                let (name, persist, list) = table_rule(&mut p).map_err(at)?;
                defined.insert(name, (persist, list));
            }
            "pass" | "block" | "match" => {
                filter_rule(&mut p, openbsd, &mut referenced).map_err(at)?;
                if !p.done() {
                    return Err(at("syntax error".into()));
                }
                seen_filter = true;
                anchor.rules.push(listing_form(&toks));
            }
            "nat" | "rdr" | "no" if !openbsd => {
                if seen_filter {
                    return Err(at(
                        "Rules must be in order: options, normalization, queueing, translation, filtering"
                            .into(),
                    ));
                }
                translation_rule(&mut p, &mut referenced).map_err(at)?;
                anchor.nat.push(listing_form(&toks));
            }
            "set" | "anchor" | "nat-anchor" | "rdr-anchor" | "binat-anchor" | "load" | "scrub"
            | "antispoof" | "binat" | "include" | "ether" | "altq" | "queue" => {
                return Err(at(format!("not modelled: {}", p.word().unwrap_or_default())));
            }
            _ => return Err(at("syntax error".into())),
        }
    }
    let mut listed = BTreeSet::new();
    for (name, (persist, list)) in defined {
        if list.is_some() {
            listed.insert(name.clone());
        }
        anchor.tables.insert(name, Table { persist, addrs: list.unwrap_or_default() });
    }
    // A table a rule refers to is created if it does not exist.
    for name in referenced {
        anchor.tables.entry(name).or_default();
    }
    Ok((anchor, listed))
}

// ----- the commands -----

fn anchor_ok(name: &str) -> Result<(), Outcome> {
    if name.starts_with('_') {
        return fail("pfctl: anchor names beginning with '_' cannot be modified from the command line");
    }
    if name.len() >= 1024 || name.is_empty() {
        return fail("pfctl: anchor name too long");
    }
    Ok(())
}

fn run(state: &mut State, o: &Opts, stdin: &str) -> Result<(String, String), Outcome> {
    let openbsd = state.flavor == "openbsd";
    if let Some(a) = &o.anchor {
        anchor_ok(a)?;
    }
    let mut out = String::new();
    let mut err = String::new();
    if let Some(file) = &o.file {
        if o.tcmd.is_some() {
            return not_modelled("-f with -T");
        }
        if file != "-" {
            return not_modelled("-f with a file path");
        }
        let Some(path) = &o.anchor else { return not_modelled("loading the main ruleset") };
        let (mut parsed, listed) = parse_ruleset(stdin, openbsd).map_err(Outcome::Fail)?;
        if !o.noaction {
            let old = state.anchors.get(path).cloned().unwrap_or_default();
            // A table defined without a list, or only referred to, keeps what it holds.
            for (name, t) in parsed.tables.iter_mut() {
                if !listed.contains(name)
                    && let Some(prev) = old.tables.get(name)
                {
                    t.addrs = prev.addrs.clone();
                    t.persist |= prev.persist;
                }
            }
            // Tables the text does not mention stay as they are.
            for (name, t) in old.tables {
                parsed.tables.entry(name).or_insert(t);
            }
            state.anchors.insert(path.clone(), parsed);
        }
    }
    if let Some(m) = &o.flush {
        let list: &[&str] = if openbsd {
            &["rules", "states", "Sources", "info", "Tables", "osfp", "Reset", "all"]
        } else {
            &[
                "nat", "queue", "ethernet", "rules", "states", "Sources", "info", "Tables", "osfp", "Reset",
                "all",
            ]
        };
        let Some(m) = lookup(m, list) else {
            return fail(format!("pfctl: Unknown flush modifier '{m}'\n{USAGE}"));
        };
        let Some(path) = &o.anchor else { return not_modelled("flushing the main ruleset") };
        let a = state.anchors.entry(path.clone()).or_default();
        match m {
            "rules" => {
                a.rules.clear();
                err.push_str("rules cleared\n");
            }
            "nat" => {
                a.nat.clear();
                err.push_str("nat cleared\n");
            }
            "Tables" => {
                let n = a.tables.len();
                a.tables.clear();
                err.push_str(&format!("{n} tables deleted.\n"));
            }
            other => return not_modelled(format!("-F {other}")),
        }
    }
    if !o.kill.is_empty() {
        let nets: Vec<String> = o
            .kill
            .iter()
            .map(|k| table_addr(k))
            .collect::<Result<_, _>>()
            .map_err(|e| Outcome::Fail(format!("pfctl: {e}")))?;
        let matches = |net: &str, ip: &str| -> bool {
            let (base, bits) = net.split_once('/').map_or((net, None), |(b, n)| (b, n.parse::<u32>().ok()));
            let (Ok(base), Ok(ip)) = (base.parse::<IpAddr>(), ip.parse::<IpAddr>()) else { return false };
            let to128 = |a: IpAddr| match a {
                IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            };
            let ((b, max), (i, imax)) = (to128(base), to128(ip));
            if max != imax {
                return false;
            }
            let bits = bits.unwrap_or(max) + (128 - max);
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            b & mask == i & mask
        };
        let before = state.states.len();
        state
            .states
            .retain(|s| !(matches(&nets[0], &s.src) && nets.get(1).is_none_or(|d| matches(d, &s.dst))));
        let killed = before - state.states.len();
        err.push_str(&format!("killed {killed} states from 1 sources and {} destinations\n", nets.len() - 1));
    }
    if let (Some(tname), Some(cmd)) = (&o.table, &o.tcmd) {
        if tname.len() >= 32 {
            return fail("pfctl: pfctl_table: strlcpy");
        }
        let list =
            ["kill", "flush", "add", "delete", "expire", "replace", "show", "test", "zero", "reset", "load"];
        let Some(cmd) = lookup(cmd, &list) else {
            return fail(format!("pfctl: unknown command '{cmd}'\n{USAGE}"));
        };
        let path = o.anchor.clone().unwrap_or_default();
        let addrs: Vec<String> = match cmd {
            "add" | "delete" => o
                .rest
                .iter()
                .map(|a| table_addr(a))
                .collect::<Result<_, _>>()
                .map_err(|e| Outcome::Fail(format!("pfctl: {e}")))?,
            _ if !o.rest.is_empty() => return not_modelled(format!("addresses with -T {cmd}")),
            _ => Vec::new(),
        };
        let anchor = state.anchors.entry(path).or_default();
        match cmd {
            "add" => {
                let t = anchor
                    .tables
                    .entry(tname.clone())
                    .or_insert_with(|| Table { persist: true, addrs: BTreeSet::new() });
                let mut added = 0;
                for a in &addrs {
                    if t.addrs.insert(a.clone()) {
                        added += 1;
                    }
                }
                if !o.quiet {
                    err.push_str(&format!("{added}/{} addresses added.\n", addrs.len()));
                }
            }
            "delete" => {
                let Some(t) = anchor.tables.get_mut(tname) else {
                    return fail("pfctl: Table does not exist.");
                };
                let mut deleted = 0;
                for a in &addrs {
                    if t.addrs.remove(a) {
                        deleted += 1;
                    }
                }
                if !o.quiet {
                    err.push_str(&format!("{deleted}/{} addresses deleted.\n", addrs.len()));
                }
            }
            "show" => {
                let Some(t) = anchor.tables.get(tname) else { return fail("pfctl: Table does not exist.") };
                for a in &t.addrs {
                    out.push_str(&format!("   {a}\n"));
                }
            }
            "flush" => {
                let Some(t) = anchor.tables.get_mut(tname) else {
                    return fail("pfctl: Table does not exist.");
                };
                let n = t.addrs.len();
                t.addrs.clear();
                if !o.quiet {
                    err.push_str(&format!("{n} addresses deleted.\n"));
                }
            }
            other => return not_modelled(format!("-T {other}")),
        }
    }
    if let Some(m) = &o.show {
        let list: &[&str] = if openbsd {
            &[
                "queue",
                "rules",
                "Anchors",
                "states",
                "Sources",
                "info",
                "labels",
                "timeouts",
                "memory",
                "Tables",
                "osfp",
                "Interfaces",
                "all",
            ]
        } else {
            &[
                "nat",
                "queue",
                "ether",
                "rules",
                "Anchors",
                "states",
                "Sources",
                "info",
                "Running",
                "labels",
                "timeouts",
                "memory",
                "Tables",
                "osfp",
                "Interfaces",
                "all",
            ]
        };
        let Some(m) = lookup(m, list) else {
            return fail(format!("pfctl: Unknown show modifier '{m}'\n{USAGE}"));
        };
        let anchor = o.anchor.as_ref().map(|p| state.anchors.get(p).cloned().unwrap_or_default());
        match (m, anchor) {
            ("rules", None) => state.main_rules.iter().for_each(|r| out.push_str(&format!("{r}\n"))),
            ("nat", None) => state.main_nat.iter().for_each(|r| out.push_str(&format!("{r}\n"))),
            ("rules", Some(a)) => a.rules.iter().for_each(|r| out.push_str(&format!("{r}\n"))),
            ("nat", Some(a)) => a.nat.iter().for_each(|r| out.push_str(&format!("{r}\n"))),
            ("Tables", Some(a)) => a.tables.keys().for_each(|t| out.push_str(&format!("{t}\n"))),
            (other, _) => return not_modelled(format!("-s {other}")),
        }
    }
    Ok((out, err))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (state_path, pf_args) = match args.as_slice() {
        [flag, path, _program, rest @ ..] if flag == "--state" => (path.clone(), rest.to_vec()),
        _ => {
            eprintln!("usage: spa-fake-pfctl --state FILE PROGRAM ARGS...");
            return ExitCode::from(2);
        }
    };
    let mut state: State = match std::fs::read_to_string(&state_path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fake-pfctl: bad state file: {e}");
                return ExitCode::from(2);
            }
        },
        Err(_) => State::default(),
    };
    let mut stdin = String::new();
    if pf_args.windows(2).any(|w| w[0] == "-f" && w[1] == "-") {
        let _ = std::io::stdin().read_to_string(&mut stdin);
    }
    let outcome = if state.fail_next > 0 {
        state.fail_next -= 1;
        Outcome::Fail("pfctl: DIOCXCOMMIT: Device busy".into())
    } else {
        match parse_opts(&pf_args).and_then(|o| run(&mut state, &o, &stdin)) {
            Ok((out, err)) => Outcome::Ok(out, err),
            Err(e) => e,
        }
    };
    let status = match &outcome {
        Outcome::Ok(..) => 0,
        Outcome::Fail(_) => 1,
        Outcome::NotModelled(_) => 2,
    };
    state.calls.push(Call { args: pf_args, stdin, status });
    if let Ok(text) = serde_json::to_string_pretty(&state) {
        let _ = std::fs::write(&state_path, text);
    }
    match outcome {
        Outcome::Ok(out, err) => {
            print!("{out}");
            eprint!("{err}");
            ExitCode::SUCCESS
        }
        Outcome::Fail(msg) => {
            eprintln!("{msg}");
            ExitCode::from(1)
        }
        Outcome::NotModelled(what) => {
            eprintln!("fake-pfctl: not modelled: {what}");
            ExitCode::from(2)
        }
    }
}

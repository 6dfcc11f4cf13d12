//! A recording fake of `ipfw(8)` for the tests of `spa-backend-ipfw`: it keeps rules, lookup
//! tables and NAT instances in a JSON file, and refuses malformed input the way the manual
//! says ipfw does. Run as `spa-fake-ipfw --state FILE PROGRAM ARGS...` (the backend's command
//! prefix is `spa-fake-ipfw --state FILE`; PROGRAM is the configured ipfw path, ignored).
//!
//! What it models, from FreeBSD's ipfw.8 (2022-11-26, freebsd-src) and the reference sheet
//! `shared/reference/firewalls.md` §3 (sbin/ipfw/main.c for the batch reader):
//!
//! - batches: "An absolute pathname must be used. The file will be read line by line and
//!   applied as arguments to the ipfw utility"; lines longer than the 4096-byte read buffer are
//!   refused; the first failing line stops the batch with the earlier lines applied; only the
//!   options `-c -f -N -n -q -S` go with a batch file;
//! - `add [number] [set N] action body [// comment]` with the actions spad uses (`allow` and
//!   aliases, `deny`/`drop`, `count`, `check-state [:flow]`, `nat <n>`), the body `proto from
//!   src [ports] to dst [ports] [options]`: addresses `any`, `me`, `me6`, `table(name[,value])`,
//!   `addr[/len]`; ports only with tcp/udp/sctp ("only TCP, UDP and SCTP protocols are valid
//!   with port specifications"); options `in`, `out`, `recv`, `xmit` (which needs `out`),
//!   `via`, `setup` (tcp), `keep-state [:flow]`, `flow table(name[,value])`; rule numbers 1 to
//!   65534, sets 0 to 30 ("Set 31 is reserved for the default rule"); a table a rule names
//!   must exist and be of the right type (`addr` for addresses, `flow` for `flow`);
//! - `[set N] delete number ...` (an absent rule is an error), `-S list` (`NNNNN set N body //
//!   comment`, the default rule 65535 included);
//! - `table name create type addr|flow:<fields> [valtype ...] [missing|or-flush]` ("Tables
//!   require explicit creation via create before use"; `missing`: "Do not fail if table already
//!   exists and has exactly same options as new one"; `or-flush`: "Flush existing table with
//!   same name instead of returning error. Implies missing"), `add key [value]` or `add [key
//!   value ...]`, `delete key ...` (with `-q`: "stops a table add or delete from failing if the
//!   entry already exists or is not present"), `list`, `info`, `flush`, `swap` ("Tables of the
//!   same type can be swapped"), `destroy` (refused while a rule uses the table); keys checked
//!   against the table's type (`flow:src-ip,proto,dst-port` keys are `addr,proto,port`);
//!   values 32-bit numbers;
//! - `nat N config ...` (kept as text), `nat show config` (`ipfw nat N config ...` per line).
//!
//! Not modelled (exit status 2 with `fake-ipfw: not modelled`): everything else. Listings are
//! close to, not exactly like, ipfw's: the backend relies only on rule numbers, sets, comments,
//! table headers, keys and values in them.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct State {
    rules: Vec<Rule>,
    tables: BTreeMap<String, Table>,
    nat: BTreeMap<u16, String>,
    /// Fail this many of the next runs before changing anything.
    fail_next: u32,
    calls: Vec<Call>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rule {
    number: u16,
    set: u8,
    body: String,
    comment: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Table {
    /// `addr` or `flow:<fields>`.
    ttype: String,
    valtype: String,
    entries: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Call {
    args: Vec<String>,
    stdin: String,
    status: u8,
}

enum Error {
    Fail(String),
    NotModelled(String),
}

type Res<T> = Result<T, Error>;

fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(Error::Fail(format!("ipfw: {}", msg.into())))
}

fn not_modelled<T>(msg: impl Into<String>) -> Res<T> {
    Err(Error::NotModelled(msg.into()))
}

#[derive(Debug, Default, Clone, Copy)]
struct Flags {
    quiet: bool,
    sets: bool,
}

const FIELDS: [&str; 5] = ["src-ip", "proto", "src-port", "dst-ip", "dst-port"];
const VALTYPES: [&str; 12] =
    ["skipto", "pipe", "fib", "nat", "dscp", "tag", "divert", "netgraph", "limit", "ipv4", "ipv6", "legacy"];

fn table_name_ok(name: &str) -> Res<()> {
    let ok = !name.is_empty()
        && name.len() < 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok { Ok(()) } else { fail(format!("table name {name:?} is invalid")) }
}

fn number<T: std::str::FromStr>(w: Option<&String>, what: &str) -> Res<T> {
    match w.and_then(|w| w.parse().ok()) {
        Some(n) => Ok(n),
        None => fail(format!("invalid {what}: {}", w.map_or("(missing)", String::as_str))),
    }
}

fn addr(w: &str) -> Res<IpAddr> {
    let (host, len) = w.split_once('/').map_or((w, None), |(h, l)| (h, Some(l)));
    let Ok(ip) = host.parse::<IpAddr>() else {
        return fail(format!("hostname ``{w}'' unknown (host names are not resolved here)"));
    };
    if let Some(l) = len {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if !l.parse::<u32>().is_ok_and(|l| l <= max) {
            return fail(format!("bad width ``{l}''"));
        }
    }
    Ok(ip)
}

fn port(w: &str) -> Res<u16> {
    match w.parse::<u32>() {
        Ok(n) if n <= 65535 => Ok(n as u16),
        _ => fail(format!("invalid port {w:?} (service names are not resolved here)")),
    }
}

fn proto_ok(w: &str) -> bool {
    matches!(w, "tcp" | "udp" | "sctp" | "icmp" | "icmp6" | "ipv6-icmp" | "ip" | "all" | "ipv4" | "ipv6")
        || w.parse::<u8>().is_ok()
}

/// `table(name[,value])`: the name, checked against the state's tables and the wanted type.
fn table_ref(state: &State, w: &str, want_flow: bool) -> Res<()> {
    let Some(inner) = w.strip_prefix("table(").and_then(|r| r.strip_suffix(')')) else {
        return fail(format!("invalid table reference {w:?}"));
    };
    let (name, value) = inner.split_once(',').map_or((inner, None), |(n, v)| (n, Some(v)));
    table_name_ok(name)?;
    if let Some(v) = value {
        number::<u32>(Some(&v.to_owned()), "table value")?;
    }
    let Some(t) = state.tables.get(name) else { return fail(format!("table {name} not found")) };
    if want_flow != t.ttype.starts_with("flow") {
        return fail(format!("table {name}: table type mismatch"));
    }
    Ok(())
}

/// An address of a rule: `any`, `me`, `me6`, `table(...)`, `addr[/len][,addr...]`.
fn rule_addr(state: &State, w: &str) -> Res<()> {
    match w {
        "any" | "me" | "me6" => Ok(()),
        _ if w.starts_with("table(") => table_ref(state, w, false),
        _ => w.split(',').try_for_each(|a| addr(a).map(drop)),
    }
}

fn ports_spec(w: &str) -> Res<()> {
    for part in w.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                port(a)?;
                port(b)?;
            }
            None => {
                port(part)?;
            }
        }
    }
    Ok(())
}

/// Parses `add`'s tokens (after `add`); returns the rule.
fn parse_add(state: &State, t: &[String]) -> Res<Rule> {
    let (rule, comment) = match t.iter().position(|w| w == "//") {
        Some(i) => (&t[..i], Some(t[i + 1..].join(" "))),
        None => (t, None),
    };
    let mut i = 0;
    let mut num = 0u16;
    if let Some(n) = rule.first().and_then(|w| w.parse::<u32>().ok()) {
        if !(1..=65534).contains(&n) {
            return fail(format!("illegal rule number {n}"));
        }
        num = n as u16;
        i = 1;
    }
    let mut set = 0u8;
    if rule.get(i).map(String::as_str) == Some("set") {
        set = number(rule.get(i + 1), "set number")?;
        if set > 30 {
            return fail(format!("illegal set {set}"));
        }
        i += 2;
    }
    if num == 0 {
        return not_modelled("rules without a number");
    }
    let action = rule.get(i).map(String::as_str).unwrap_or_default();
    i += 1;
    match action {
        "allow" | "accept" | "pass" | "permit" | "deny" | "drop" | "count" => {}
        "check-state" => {
            if rule.get(i).is_some_and(|w| w.starts_with(':')) {
                i += 1;
            }
            if i != rule.len() {
                return not_modelled("check-state with a body");
            }
            return Ok(Rule { number: num, set, body: String::new(), comment }.with_body(rule, rule.len()));
        }
        "nat" => {
            let n = rule.get(i).map(String::as_str).unwrap_or_default();
            if n != "tablearg" && n != "global" && !n.parse::<u16>().is_ok_and(|n| n > 0) {
                return fail(format!("illegal nat number {n:?}"));
            }
            i += 1;
        }
        "" => return fail("missing action"),
        other => return not_modelled(format!("action {other}")),
    }
    if rule.get(i).map(String::as_str) == Some("log") {
        i += 1;
    }
    let proto = rule.get(i).cloned().unwrap_or_default();
    if !proto_ok(&proto) {
        return fail(format!("invalid protocol ``{proto}''"));
    }
    i += 1;
    let with_ports = matches!(proto.as_str(), "tcp" | "udp" | "sctp");
    for kw in ["from", "to"] {
        if rule.get(i).map(String::as_str) != Some(kw) {
            return fail(format!("missing ``{kw}''"));
        }
        i += 1;
        let Some(a) = rule.get(i) else { return fail("missing address") };
        let a = if a == "not" {
            i += 1;
            rule.get(i).cloned().unwrap_or_default()
        } else {
            a.clone()
        };
        rule_addr(state, &a)?;
        i += 1;
        if let Some(p) = rule.get(i)
            && p.starts_with(|c: char| c.is_ascii_digit())
        {
            if !with_ports {
                return fail("only TCP, UDP and SCTP protocols are valid with port specifications");
            }
            ports_spec(p)?;
            i += 1;
        }
    }
    let (mut dir_in, mut dir_out, mut xmit) = (false, false, false);
    while i < rule.len() {
        let w = rule[i].as_str();
        i += 1;
        match w {
            "in" => dir_in = true,
            "out" => dir_out = true,
            "recv" | "via" | "xmit" => {
                let Some(ifc) = rule.get(i) else { return fail(format!("missing argument for {w}")) };
                let ok = ifc.len() < 16
                    && ifc.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*'));
                if !ok && !ifc.starts_with("table(") {
                    return fail(format!("invalid interface {ifc:?}"));
                }
                xmit |= w == "xmit";
                i += 1;
            }
            "setup" | "established" => {
                if proto != "tcp" {
                    return fail(format!("{w} is valid for tcp only"));
                }
            }
            "keep-state" | "record-state" => {
                if rule.get(i).is_some_and(|f| f.starts_with(':')) {
                    i += 1;
                }
            }
            "flow" => {
                let Some(r) = rule.get(i) else { return fail("missing table for flow") };
                table_ref(state, r, true)?;
                i += 1;
            }
            other => return not_modelled(format!("rule option {other}")),
        }
    }
    if dir_in && dir_out {
        return fail("in and out are mutually exclusive");
    }
    if xmit && !dir_out {
        return fail("xmit can only be used with out");
    }
    Ok(Rule { number: num, set, body: String::new(), comment }.with_body(rule, rule.len()))
}

impl Rule {
    /// The body as listed: everything after number and set, up to `end`.
    fn with_body(mut self, rule: &[String], end: usize) -> Self {
        let start = 1 + if rule.get(1).map(String::as_str) == Some("set") { 2 } else { 0 };
        self.body = rule[start..end.max(start)].join(" ");
        self
    }
}

fn table_key(t: &Table, key: &str) -> Res<String> {
    if t.ttype == "addr" {
        let ip = addr(key)?;
        return Ok(if key.contains('/') { key.to_owned() } else { ip.to_string() });
    }
    let fields: Vec<&str> = t.ttype.strip_prefix("flow:").unwrap_or_default().split(',').collect();
    let parts: Vec<&str> = key.split(',').collect();
    if parts.len() != fields.len() {
        return fail(format!("key {key:?} does not match table type {}", t.ttype));
    }
    let mut family = None;
    for (f, v) in fields.iter().zip(&parts) {
        match *f {
            "src-ip" | "dst-ip" => {
                let ip = addr(v)?;
                if family.replace(ip.is_ipv4()).is_some_and(|fam| fam != ip.is_ipv4()) {
                    return fail(format!("key {key:?} mixes address families"));
                }
            }
            "proto" => {
                if !proto_ok(v) {
                    return fail(format!("unknown proto {v:?}"));
                }
            }
            _ => {
                port(v)?;
            }
        }
    }
    Ok(key.to_owned())
}

fn table_value(t: &Table, v: &str) -> Res<String> {
    if t.valtype == "ipv4" {
        return match v.parse::<std::net::Ipv4Addr>() {
            Ok(a) => Ok(a.to_string()),
            Err(_) => fail(format!("invalid value {v:?}")),
        };
    }
    match v.parse::<u32>() {
        Ok(n) => Ok(n.to_string()),
        Err(_) => fail(format!("invalid value {v:?}")),
    }
}

fn table_cmd(state: &mut State, flags: Flags, t: &[String], out: &mut String) -> Res<()> {
    let name = t.first().cloned().unwrap_or_default();
    table_name_ok(&name)?;
    let cmd = t.get(1).map(String::as_str).unwrap_or_default();
    let args = &t[2.min(t.len())..];
    match cmd {
        "create" => {
            let (mut ttype, mut valtype, mut missing, mut or_flush) =
                ("addr".to_owned(), "legacy".to_owned(), false, false);
            let mut i = 0;
            while i < args.len() {
                match args[i].as_str() {
                    "type" => {
                        let ty = args.get(i + 1).cloned().unwrap_or_default();
                        if let Some(fs) = ty.strip_prefix("flow:") {
                            let f: Vec<&str> = fs.split(',').collect();
                            let dup = f.iter().enumerate().any(|(k, x)| f[..k].contains(x));
                            if f.iter().any(|x| !FIELDS.contains(x)) || dup {
                                return fail(format!("invalid flow type {ty:?}"));
                            }
                        } else if ty != "addr" {
                            return not_modelled(format!("table type {ty}"));
                        }
                        ttype = ty;
                        i += 2;
                    }
                    "valtype" => {
                        let v = args.get(i + 1).cloned().unwrap_or_default();
                        if v.split(',').any(|x| !VALTYPES.contains(&x)) {
                            return fail(format!("invalid value type {v:?}"));
                        }
                        valtype = v;
                        i += 2;
                    }
                    "missing" => {
                        missing = true;
                        i += 1;
                    }
                    "or-flush" => {
                        or_flush = true;
                        i += 1;
                    }
                    other => return not_modelled(format!("create option {other}")),
                }
            }
            match state.tables.get_mut(&name) {
                Some(existing) if missing || or_flush => {
                    if existing.ttype != ttype || existing.valtype != valtype {
                        return fail(format!(
                            "Table creation failed: table {name} exists with other options"
                        ));
                    }
                    if or_flush {
                        existing.entries.clear();
                    }
                }
                Some(_) => return fail("Table creation failed: File exists"),
                None => {
                    state.tables.insert(name, Table { ttype, valtype, entries: BTreeMap::new() });
                }
            }
        }
        "add" => {
            let Some(table) = state.tables.get(&name).cloned() else {
                return fail(format!("table {name} not found"));
            };
            let pairs: Vec<(String, String)> = match args.len() {
                0 => return fail("table key required"),
                1 => vec![(table_key(&table, &args[0])?, "0".into())],
                n if n % 2 == 0 => args
                    .chunks(2)
                    .map(|p| Ok((table_key(&table, &p[0])?, table_value(&table, &p[1])?)))
                    .collect::<Res<_>>()?,
                _ => return fail("key without a value in a list of key value pairs"),
            };
            let t = state.tables.get_mut(&name).expect("checked above");
            let mut exists = false;
            for (k, v) in pairs {
                if let std::collections::btree_map::Entry::Vacant(e) = t.entries.entry(k) {
                    e.insert(v);
                } else {
                    exists = true;
                }
            }
            if exists && !flags.quiet {
                return fail("Adding record failed: record already exists");
            }
        }
        "delete" => {
            let Some(table) = state.tables.get(&name).cloned() else {
                return fail(format!("table {name} not found"));
            };
            let keys: Vec<String> = args.iter().map(|k| table_key(&table, k)).collect::<Res<_>>()?;
            let t = state.tables.get_mut(&name).expect("checked above");
            let mut absent = false;
            for k in keys {
                absent |= t.entries.remove(&k).is_none();
            }
            if absent && !flags.quiet {
                return fail("Deleting record failed: record not found");
            }
        }
        "list" | "info" | "flush" | "destroy" => {
            if !args.is_empty() {
                return fail(format!("table {cmd}: extra arguments"));
            }
            let Some(t) = state.tables.get_mut(&name) else { return fail(format!("table {name} not found")) };
            match cmd {
                "list" => {
                    out.push_str(&format!("--- table({name}), set(0) ---\n"));
                    for (k, v) in &t.entries {
                        out.push_str(&format!("{k} {v}\n"));
                    }
                }
                "info" => out.push_str(&format!(
                    "--- table({name}), set(0) ---\n kindex: 0, type: {}\n valtype: {}\n items: {}\n",
                    t.ttype,
                    t.valtype,
                    t.entries.len()
                )),
                "flush" => t.entries.clear(),
                _ => {
                    let used = state.rules.iter().any(|r| {
                        r.body.contains(&format!("table({name})"))
                            || r.body.contains(&format!("table({name},"))
                    });
                    if used {
                        return fail(format!("Table destroy failed: table {name} is in use"));
                    }
                    state.tables.remove(&name);
                }
            }
        }
        "swap" => {
            let other = args.first().cloned().unwrap_or_default();
            let (Some(a), Some(b)) = (state.tables.get(&name).cloned(), state.tables.get(&other).cloned())
            else {
                return fail("table not found");
            };
            if a.ttype != b.ttype || a.valtype != b.valtype {
                return fail("Table swap failed: tables of different types");
            }
            state.tables.get_mut(&name).expect("present").entries = b.entries;
            state.tables.get_mut(&other).expect("present").entries = a.entries;
        }
        other => return not_modelled(format!("table command {other:?}")),
    }
    Ok(())
}

fn nat_cmd(state: &mut State, t: &[String], out: &mut String) -> Res<()> {
    match t {
        [show, config] if show == "show" && config == "config" => {
            for (n, text) in &state.nat {
                out.push_str(&format!("ipfw nat {n} config {text}\n"));
            }
            Ok(())
        }
        [n, config, rest @ ..] if config == "config" => {
            let n: u16 = number(Some(n), "nat number")?;
            if n == 0 {
                return fail("illegal nat number 0");
            }
            let mut i = 0;
            while i < rest.len() {
                match rest[i].as_str() {
                    "if" => {
                        let ifc = rest.get(i + 1).cloned().unwrap_or_default();
                        if ifc.is_empty() || ifc.len() >= 16 {
                            return fail("invalid interface");
                        }
                        i += 2;
                    }
                    "ip" => {
                        addr(rest.get(i + 1).map_or("", String::as_str))?;
                        i += 2;
                    }
                    "same_ports" | "log" | "deny_in" | "reset" | "unreg_only" | "reverse" | "proxy_only"
                    | "skip_global" => i += 1,
                    "redirect_port" => {
                        let proto = rest.get(i + 1).map_or("", String::as_str);
                        if proto != "tcp" && proto != "udp" {
                            return fail(format!("redirect_port: unknown protocol {proto:?}"));
                        }
                        let local = rest.get(i + 2).map_or("", String::as_str);
                        let (host, lport) = local.split_once(':').unwrap_or((local, ""));
                        if host.parse::<std::net::Ipv4Addr>().is_err() {
                            return fail(format!("redirect_port: invalid local address {local:?}"));
                        }
                        port(lport)?;
                        let public = rest.get(i + 3).map_or("", String::as_str);
                        port(public.rsplit(':').next().unwrap_or_default())?;
                        i += 4;
                    }
                    other => return not_modelled(format!("nat option {other}")),
                }
            }
            state.nat.insert(n, rest.join(" "));
            Ok(())
        }
        _ => not_modelled(format!("nat {}", t.join(" "))),
    }
}

fn delete_cmd(state: &mut State, set: Option<u8>, t: &[String], flags_f: bool) -> Res<()> {
    if t.first().map(String::as_str) == Some("set") {
        let s: u8 = number(t.get(1), "set number")?;
        state.rules.retain(|r| r.set != s);
        return Ok(());
    }
    if t.is_empty() {
        return fail("rule number required");
    }
    for w in t {
        let n: u16 = number(Some(w), "rule number")?;
        let before = state.rules.len();
        state.rules.retain(|r| !(r.number == n && set.is_none_or(|s| s == r.set)));
        if before == state.rules.len() && !flags_f {
            return fail(format!("rule {n}: setsockopt(IP_FW_XDEL): No such process"));
        }
    }
    Ok(())
}

fn list(state: &State, flags: Flags, set: Option<u8>, out: &mut String) {
    let mut rules: Vec<&Rule> = state.rules.iter().filter(|r| set.is_none_or(|s| s == r.set)).collect();
    rules.sort_by_key(|r| r.number);
    let default = Rule { number: 65535, set: 31, body: "deny ip from any to any".into(), comment: None };
    if set.is_none_or(|s| s == 31) {
        rules.push(&default);
    }
    for r in rules {
        let set_part = if flags.sets { format!(" set {}", r.set) } else { String::new() };
        let comment = r.comment.as_ref().map(|c| format!(" // {c}")).unwrap_or_default();
        out.push_str(&format!("{:05}{set_part} {}{comment}\n", r.number, r.body));
    }
}

/// One command (a command line after the options, or a batch line).
fn command(state: &mut State, flags: Flags, t: &[String], out: &mut String) -> Res<()> {
    let (set, t) = match t {
        [kw, n, rest @ ..] if kw == "set" && n.parse::<u8>().is_ok() => {
            (Some(number::<u8>(Some(n), "set")?), rest)
        }
        _ => (None, t),
    };
    if let Some(s) = set
        && s > 31
    {
        return fail(format!("invalid set number {s}"));
    }
    match t.first().map(String::as_str) {
        Some("add") if set.is_none() => {
            let rule = parse_add(state, &t[1..])?;
            if !flags.quiet {
                out.push_str(&format!("{:05} {}\n", rule.number, rule.body));
            }
            state.rules.push(rule);
            Ok(())
        }
        Some("delete") => delete_cmd(state, set, &t[1..], false),
        Some("list" | "show") if t.len() == 1 => {
            list(state, flags, set, out);
            Ok(())
        }
        Some("table") if set.is_none() => table_cmd(state, flags, &t[1..], out),
        Some("nat") if set.is_none() => nat_cmd(state, &t[1..], out),
        Some(other) => not_modelled(format!("command {other}")),
        None => fail("bad arguments"),
    }
}

fn run(state: &mut State, args: &[String], stdin: &str) -> Res<String> {
    let mut flags = Flags::default();
    let mut i = 0;
    let mut batch_ok = true;
    while i < args.len() && args[i].starts_with('-') && args[i].len() > 1 {
        for c in args[i][1..].chars() {
            match c {
                'q' => flags.quiet = true,
                'S' => flags.sets = true,
                'f' | 'n' | 'N' | 'c' | 'a' | 'd' | 'e' | 't' | 'T' | 'b' | 'D' | 'i' => {
                    batch_ok &= matches!(c, 'c' | 'f' | 'N' | 'n');
                    if c != 'N' && c != 'c' {
                        return not_modelled(format!("option -{c}"));
                    }
                }
                other => return fail(format!("illegal option -- {other}")),
            }
        }
        i += 1;
    }
    let rest = &args[i..];
    let mut out = String::new();
    if let Some(last) = rest.last()
        && last.starts_with('/')
    {
        if rest.len() != 1 || !batch_ok {
            return fail("usage: ipfw [-cfnNqS] [-p preproc [args]] pathname");
        }
        let text = if last == "/dev/stdin" {
            stdin.to_owned()
        } else {
            return not_modelled("batch files other than /dev/stdin");
        };
        for line in text.lines() {
            if line.len() >= 4095 {
                return fail("batch line longer than the 4096-byte read buffer");
            }
            let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            if words.is_empty() || words[0].starts_with('#') {
                continue;
            }
            command(state, flags, &words, &mut out)?;
        }
        return Ok(out);
    }
    if rest.is_empty() {
        return fail("usage: ipfw [options]");
    }
    command(state, flags, rest, &mut out)?;
    Ok(out)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (state_path, ipfw_args) = match args.as_slice() {
        [flag, path, _program, rest @ ..] if flag == "--state" => (path.clone(), rest.to_vec()),
        _ => {
            eprintln!("usage: spa-fake-ipfw --state FILE PROGRAM ARGS...");
            return ExitCode::from(2);
        }
    };
    let mut state: State = match std::fs::read_to_string(&state_path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fake-ipfw: bad state file: {e}");
                return ExitCode::from(2);
            }
        },
        Err(_) => State::default(),
    };
    let mut stdin = String::new();
    if ipfw_args.last().is_some_and(|a| a == "/dev/stdin") {
        let _ = std::io::stdin().read_to_string(&mut stdin);
    }
    let result = if state.fail_next > 0 {
        state.fail_next -= 1;
        Err(Error::Fail("ipfw: setsockopt(IP_FW3): Resource temporarily unavailable".into()))
    } else {
        run(&mut state, &ipfw_args, &stdin)
    };
    let status = match &result {
        Ok(_) => 0,
        Err(Error::Fail(_)) => 1,
        Err(Error::NotModelled(_)) => 2,
    };
    state.calls.push(Call { args: ipfw_args, stdin, status });
    if let Ok(text) = serde_json::to_string_pretty(&state) {
        let _ = std::fs::write(&state_path, text);
    }
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(Error::Fail(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(1)
        }
        Err(Error::NotModelled(what)) => {
            eprintln!("fake-ipfw: not modelled: {what}");
            ExitCode::from(2)
        }
    }
}

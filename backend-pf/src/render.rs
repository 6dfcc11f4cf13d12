//! Pure rendering and parsing: configuration and table contents in, the anchor's pf.conf text
//! and pfctl argument vectors out; pfctl's listings in, what we own out.
//!
//! Nothing here runs a program, so all of it is snapshot-tested without PF. Only typed values
//! (addresses, ports, protocol names) and names checked at config load (the anchor,
//! interfaces) are written, so no input can add a rule or an option.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use spa_backends::{Observed, ProtoPort};

use crate::config::{Config, Forward, Syntax};
use crate::model::{Table, tables};

/// What each of the anchor's tables holds, by table.
pub type Contents = BTreeMap<Table, BTreeSet<IpAddr>>;

/// `inet` or `inet6` for an address.
fn af(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "inet" } else { "inet6" }
}

/// The label of a filter rule: unique in the anchor, so the tamper check can find each rule
/// in `pfctl -s rules` whatever pfctl prints around it, and an optimization barrier for pfctl's
/// ruleset optimizer (pf.conf(5)).
pub fn label(kind: &str, pp: Option<ProtoPort>) -> String {
    match pp {
        Some(pp) => format!("spa-{kind}-{}-{}", pp.proto.name(), pp.port),
        None => format!("spa-{kind}"),
    }
}

/// One rule of the anchor, as pfctl sees it: which listing shows it and what identifies it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expected {
    /// A filter rule (`pfctl -s rules`) carrying this label.
    Filter(String),
    /// A legacy translation rule (`pfctl -s nat`): its keyword (`rdr`, `nat`) and its table.
    Translation(&'static str, String),
}

/// The anchor's rules, in load order, each with what identifies it in a listing.
pub fn rules(config: &Config) -> Vec<(String, Expected)> {
    let mut out = Vec::new();
    for f in &config.forward {
        out.extend(forward_rules(config.syntax, f));
    }
    for pp in config.grantable() {
        let p = pp.proto.name();
        let flags = if p == "tcp" { " flags S/SA" } else { "" };
        let l = label("pass", Some(pp));
        out.push((
            format!(
                "pass in quick proto {p} from <{}> to self port {}{flags} keep state label \"{l}\"",
                Table::Port(pp),
                pp.port
            ),
            Expected::Filter(l),
        ));
    }
    let l = label("pass-all", None);
    out.push((
        format!("pass in quick from <{}> to self keep state label \"{l}\"", Table::All),
        Expected::Filter(l),
    ));
    for pp in config.protected() {
        let l = label("block", Some(pp));
        out.push((
            format!(
                "block drop in quick proto {} from any to self port {} label \"{l}\"",
                pp.proto.name(),
                pp.port
            ),
            Expected::Filter(l),
        ));
    }
    // Translation rules first: pfctl enforces that order (`set require-order`, pf.conf(5)).
    out.sort_by_key(|(_, e)| !matches!(e, Expected::Translation(..)));
    out
}

fn forward_rules(syntax: Syntax, f: &Forward) -> Vec<(String, Expected)> {
    let (p, fam, ext, to, port, to_port) =
        (f.port.proto.name(), af(f.to), &f.interface, f.to, f.port.port, f.internal_port());
    let (fwd, snat) = (Table::Forward(f.port), Table::Snat(f.port));
    let mut out = Vec::new();
    match syntax {
        Syntax::Legacy => {
            if let Some(int) = &f.snat_interface {
                out.push((
                    format!("nat on {int} {fam} proto {p} from <{snat}> to {to} port {to_port} -> ({int})"),
                    Expected::Translation("nat", snat.name()),
                ));
            }
            out.push((
                format!("rdr pass on {ext} {fam} proto {p} from <{fwd}> to ({ext}) port {port} -> {to} port {to_port}"),
                Expected::Translation("rdr", fwd.name()),
            ));
        }
        Syntax::OpenBsd => {
            let l = label("rdr", Some(f.port));
            out.push((
                format!(
                    "pass in quick on {ext} {fam} proto {p} from <{fwd}> to ({ext}) port {port} rdr-to {to} port {to_port} label \"{l}\""
                ),
                Expected::Filter(l),
            ));
            if let Some(int) = &f.snat_interface {
                let l = label("nat", Some(f.port));
                out.push((
                    format!(
                        "pass out quick on {int} {fam} proto {p} from <{snat}> to {to} port {to_port} nat-to ({int}) label \"{l}\""
                    ),
                    Expected::Filter(l),
                ));
            }
        }
    }
    out
}

/// The anchor's whole text for `pfctl -a <anchor> -f -`: every table declared `persist`, with
/// the contents given in `listed` (replacing what the table holds) or without a list (keeping
/// it: "The contents of a pre-existing table defined without a list of addresses to initialize
/// it is not altered when pf.conf is loaded", pf.conf(5)); then the rules.
pub fn anchor(config: &Config, listed: &Contents) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "# anchor \"{}\": written by spad, which loads it again at every start", config.anchor);
    for t in tables(config) {
        match listed.get(&t) {
            None => {
                let _ = writeln!(out, "table <{t}> persist");
            }
            Some(addrs) => {
                let _ = write!(out, "table <{t}> persist {{");
                for a in addrs {
                    let _ = write!(out, " {a}");
                }
                out.push_str(" }\n");
            }
        }
    }
    for (rule, _) in rules(config) {
        out.push_str(&rule);
        out.push('\n');
    }
    out
}

/// `pfctl` arguments: `-a <anchor>` then `rest`.
fn in_anchor(config: &Config, rest: &[&str]) -> Vec<String> {
    let mut v = vec!["-a".to_owned(), config.anchor.clone()];
    v.extend(rest.iter().map(|s| (*s).to_owned()));
    v
}

/// Loads the anchor's text from stdin.
pub fn load_args(config: &Config) -> Vec<String> {
    in_anchor(config, &["-f", "-"])
}

/// Adds (`add`) or deletes (`delete`) addresses in one table; `-q` keeps pfctl's per-call
/// summary off stderr.
pub fn table_args(config: &Config, table: Table, op: &str, addrs: &BTreeSet<IpAddr>) -> Vec<String> {
    let name = table.name();
    let mut v = in_anchor(config, &["-q", "-t", &name, "-T", op]);
    v.extend(addrs.iter().map(ToString::to_string));
    v
}

/// Kills every state from `source` (pfctl(8) `-k host`).
pub fn kill_args(source: IpAddr) -> Vec<String> {
    vec!["-k".to_owned(), source.to_string()]
}

/// Lists the anchor's tables.
pub fn tables_args(config: &Config) -> Vec<String> {
    in_anchor(config, &["-s", "Tables"])
}

/// Lists one table's addresses.
pub fn show_args(config: &Config, table: &str) -> Vec<String> {
    in_anchor(config, &["-t", table, "-T", "show"])
}

/// Lists the anchor's filter rules (`rules`) or, legacy syntax, translation rules (`nat`).
pub fn listing_args(config: &Config, what: &str) -> Vec<String> {
    in_anchor(config, &["-s", what])
}

/// Lists the main ruleset's filter rules (`rules`) or translation rules (`nat`).
pub fn main_listing_args(what: &str) -> Vec<String> {
    vec!["-s".to_owned(), what.to_owned()]
}

/// What teardown runs, in order: the anchor's filter rules, translation rules (legacy only:
/// OpenBSD's pfctl has no `-F nat`) and tables. Each flush names the anchor, so nothing outside
/// it is touched; `-F all` is avoided since it also names global things (states, options).
pub fn teardown_args(config: &Config) -> Vec<Vec<String>> {
    let mut v = vec![in_anchor(config, &["-F", "rules"])];
    if config.syntax == Syntax::Legacy {
        v.push(in_anchor(config, &["-F", "nat"]));
    }
    v.push(in_anchor(config, &["-F", "Tables"]));
    v
}

/// The names in `pfctl -s Tables` output (one per line; flags columns, printed only with `-v`,
/// are skipped if present).
pub fn parse_table_names(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.split_whitespace().last()).map(str::to_owned).collect()
}

/// The addresses in `pfctl -T show` output, one per line; a host entry may be printed with its
/// full prefix (`/32`, `/128`). Anything else (networks, negations) is returned as text.
pub fn parse_addresses(text: &str) -> Vec<Result<IpAddr, String>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let host = l.strip_suffix("/32").or_else(|| l.strip_suffix("/128")).unwrap_or(l);
            host.parse::<IpAddr>().map_err(|_| l.to_owned())
        })
        .collect()
}

/// What `observe` reports for a table's listing.
pub fn observed(table: &str, text: &str) -> Vec<Observed> {
    parse_addresses(text)
        .into_iter()
        .map(|a| {
            let addr = match a {
                Ok(ip) => ip.to_string(),
                Err(raw) => raw,
            };
            Observed { entry: format!("<{table}> {addr}"), holder: None, until: None }
        })
        .collect()
}

/// The quoted word after `keyword ` at the start of a line: `anchor "spa" all` gives `spa`.
fn quoted_after<'a>(line: &'a str, keyword: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(keyword)?.strip_prefix(' ')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

/// Whether a main-ruleset listing (`pfctl -s rules` or `-s nat`) evaluates `anchor` with
/// `keyword` (`anchor`, `rdr-anchor`, `nat-anchor`): by its own name, or for a nested anchor
/// `a/b` by its parent's wildcard `a/*` (pf.conf(5): "all anchors attached at that point").
pub fn hooked(listing: &str, keyword: &str, anchor: &str) -> bool {
    let parent_wildcard = anchor.rsplit_once('/').map(|(p, _)| format!("{p}/*"));
    listing.lines().filter_map(|l| quoted_after(l, keyword)).any(|name| {
        name == anchor || parent_wildcard.as_deref() == Some(name) || (name == "*" && !anchor.contains('/'))
    })
}

/// The labels of the rules in a listing, and the rules that carry none of ours (quoted for a
/// message, control characters replaced).
pub fn labels(listing: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut found = BTreeSet::new();
    let mut strangers = Vec::new();
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once("label \"").and_then(|(_, r)| r.split_once('"')) {
            Some((l, _)) if l.starts_with("spa-") => {
                found.insert(l.to_owned());
            }
            _ => strangers.push(quote(line)),
        }
    }
    (found, strangers)
}

/// Longest piece of a stranger's rule quoted in a message.
const QUOTE_MAX: usize = 160;

fn quote(rule: &str) -> String {
    let clean: String = rule.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if clean.chars().count() <= QUOTE_MAX {
        clean
    } else {
        format!("{}...", clean.chars().take(QUOTE_MAX).collect::<String>())
    }
}

/// What is wrong with the anchor's filter rules (`pfctl -a <anchor> -s rules`), if anything.
pub fn check_filter(config: &Config, listing: &str) -> Option<String> {
    let want: BTreeSet<String> = rules(config)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Expected::Filter(l) => Some(l),
            Expected::Translation(..) => None,
        })
        .collect();
    let (found, strangers) = labels(listing);
    if let Some(gone) = want.iter().find(|l| !found.contains(*l)) {
        return Some(format!("anchor {}: the rule labelled {gone} is gone", config.anchor));
    }
    if let Some(s) = strangers.first() {
        return Some(format!("anchor {}: a rule spad did not make: {s}", config.anchor));
    }
    if let Some(extra) = found.iter().find(|l| !want.contains(*l)) {
        return Some(format!("anchor {}: a rule labelled {extra} that spad did not make", config.anchor));
    }
    None
}

/// What is wrong with the anchor's translation rules (legacy syntax, `pfctl -a <anchor> -s
/// nat`), if anything. Translation rules carry no label in this syntax (pf.conf(5) grammar), so
/// each is recognised by its keyword and its table.
pub fn check_translation(config: &Config, listing: &str) -> Option<String> {
    let want: Vec<(&'static str, String)> = rules(config)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Expected::Translation(k, t) => Some((k, t)),
            Expected::Filter(_) => None,
        })
        .collect();
    let lines: Vec<&str> = listing.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let is = |line: &str, k: &str, t: &str| {
        line.split_whitespace().next() == Some(k) && line.contains(&format!("<{t}>"))
    };
    if let Some((k, t)) = want.iter().find(|(k, t)| !lines.iter().any(|l| is(l, k, t))) {
        return Some(format!("anchor {}: the {k} rule of <{t}> is gone", config.anchor));
    }
    if let Some(s) = lines.iter().find(|l| !want.iter().any(|(k, t)| is(l, k, t))) {
        return Some(format!("anchor {}: a translation rule spad did not make: {}", config.anchor, quote(s)));
    }
    None
}

/// What is missing from the main ruleset's hooks (listings of `pfctl -s rules` and, legacy
/// syntax with forwards, `pfctl -s nat`), if anything.
pub fn check_hooks(config: &Config, main_rules: &str, main_nat: Option<&str>) -> Option<String> {
    let a = &config.anchor;
    if !hooked(main_rules, "anchor", a) {
        return Some(format!(
            "the main ruleset does not evaluate anchor \"{a}\" (pf.conf needs: anchor \"{a}\")"
        ));
    }
    if let Some(nat) = main_nat {
        if !config.forward.is_empty() && !hooked(nat, "rdr-anchor", a) {
            return Some(format!(
                "the main ruleset does not evaluate the rdr rules of anchor \"{a}\" (pf.conf needs: rdr-anchor \"{a}\")"
            ));
        }
        if config.forward.iter().any(|f| f.snat_interface.is_some()) && !hooked(nat, "nat-anchor", a) {
            return Some(format!(
                "the main ruleset does not evaluate the nat rules of anchor \"{a}\" (pf.conf needs: nat-anchor \"{a}\")"
            ));
        }
    }
    None
}

/// Whether a check needs the translation listings (legacy syntax with forwards).
pub fn has_translation(config: &Config) -> bool {
    config.syntax == Syntax::Legacy && !config.forward.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(syntax: &str) -> Config {
        Config::from_table(
            &format!(
                "syntax = \"{syntax}\"\nports = [\"udp/53\"]\nprotect = [\"tcp/22\"]\n\
                 [[forward]]\nport = \"tcp/2222\"\nto = \"192.168.77.10\"\nto_port = 22\ninterface = \"em0\"\n\
                 snat_interface = \"em1\"\n\
                 [[forward]]\nport = \"tcp/8443\"\nto = \"fd00::10\"\nto_port = 443\ninterface = \"em0\"\n"
            )
            .parse()
            .unwrap(),
        )
        .unwrap()
    }

    fn contents() -> Contents {
        let mut c = Contents::new();
        c.insert(
            Table::Port("tcp/22".parse().unwrap()),
            ["192.0.2.1", "2001:db8::1"].iter().map(|a| a.parse().unwrap()).collect(),
        );
        c.insert(Table::Forward("tcp/2222".parse().unwrap()), BTreeSet::new());
        c
    }

    #[test]
    fn legacy_anchor_lists_given_tables_and_keeps_the_others() {
        insta::assert_snapshot!(anchor(&config("legacy"), &contents()));
    }

    #[test]
    fn openbsd_anchor_puts_translation_on_pass_rules() {
        insta::assert_snapshot!(anchor(&config("openbsd"), &contents()));
    }

    #[test]
    fn an_empty_configuration_still_has_the_forward_all_table() {
        insta::assert_snapshot!(anchor(&Config::default(), &Contents::new()));
    }

    #[test]
    fn commands() {
        let c = config("legacy");
        let addrs: BTreeSet<IpAddr> = ["192.0.2.1".parse().unwrap()].into();
        let mut out = String::new();
        for argv in [
            load_args(&c),
            table_args(&c, Table::Port("tcp/22".parse().unwrap()), "add", &addrs),
            table_args(&c, Table::All, "delete", &addrs),
            kill_args("2001:db8::1".parse().unwrap()),
            tables_args(&c),
            show_args(&c, "spa_tcp_22"),
            listing_args(&c, "rules"),
            listing_args(&c, "nat"),
            main_listing_args("rules"),
        ]
        .into_iter()
        .chain(teardown_args(&c))
        .chain(teardown_args(&config("openbsd")))
        {
            out.push_str(&format!("pfctl {}\n", argv.join(" ")));
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn listings_are_parsed() {
        assert_eq!(parse_table_names("spa_all\nspa_tcp_22\n"), ["spa_all", "spa_tcp_22"]);
        assert_eq!(parse_table_names("--a-r-- spa_all\n"), ["spa_all"]);
        let a = parse_addresses("   192.0.2.1\n   2001:db8::1/128\n   10.0.0.0/8\n\n");
        assert_eq!(
            a,
            [
                Ok("192.0.2.1".parse().unwrap()),
                Ok("2001:db8::1".parse().unwrap()),
                Err("10.0.0.0/8".to_owned())
            ]
        );
        let o = observed("spa_tcp_22", "   192.0.2.1/32\n");
        assert_eq!(o, [Observed { entry: "<spa_tcp_22> 192.0.2.1".into(), holder: None, until: None }]);
    }

    #[test]
    fn hooks_are_found_by_name_or_by_the_parents_wildcard() {
        let main = "scrub in all\nanchor \"spa\" all\npass out all keep state\n";
        assert!(hooked(main, "anchor", "spa"));
        assert!(!hooked(main, "anchor", "spad"));
        assert!(!hooked("anchor \"spa/x\" all\n", "anchor", "spa"));
        assert!(!hooked(main, "rdr-anchor", "spa"));
        assert!(hooked("rdr-anchor \"spa\" all\n", "rdr-anchor", "spa"));
        assert!(hooked("anchor \"com.apple/*\" all\n", "anchor", "com.apple/spa"));
        assert!(!hooked("anchor \"com.apple\" all\n", "anchor", "com.apple/spa"));
        let c = config("legacy");
        assert_eq!(check_hooks(&c, main, Some("rdr-anchor \"spa\" all\nnat-anchor \"spa\" all\n")), None);
        assert!(
            check_hooks(&c, main, Some("rdr-anchor \"spa\" all\n")).unwrap().contains("nat-anchor \"spa\"")
        );
        assert!(check_hooks(&c, "pass all\n", None).unwrap().contains("anchor \"spa\""));
    }

    #[test]
    fn the_tamper_check_finds_missing_and_strange_rules() {
        let c = config("legacy");
        // As pfctl prints them: ports numeric or named, options added; only labels count.
        let good = "pass in quick proto tcp from <spa_tcp_22> to self port = ssh flags S/SA keep state label \"spa-pass-tcp-22\"\n\
                    pass in quick proto udp from <spa_udp_53> to self port = domain keep state label \"spa-pass-udp-53\"\n\
                    pass in quick from <spa_all> to self flags S/SA keep state label \"spa-pass-all\"\n\
                    block drop in quick proto tcp from any to self port = ssh label \"spa-block-tcp-22\"\n";
        assert_eq!(check_filter(&c, good), None);
        let gone = good.lines().filter(|l| !l.contains("block")).collect::<Vec<_>>().join("\n");
        assert_eq!(
            check_filter(&c, &gone).unwrap(),
            "anchor spa: the rule labelled spa-block-tcp-22 is gone"
        );
        let extra = format!("{good}pass in all\n");
        assert_eq!(check_filter(&c, &extra).unwrap(), "anchor spa: a rule spad did not make: pass in all");
        let nat = "nat on em1 inet proto tcp from <spa_snat_tcp_2222> to 192.168.77.10 port = ssh -> (em1) round-robin\n\
                   rdr pass on em0 inet proto tcp from <spa_fwd_tcp_2222> to (em0) port = 2222 -> 192.168.77.10 port 22\n\
                   rdr pass on em0 inet6 proto tcp from <spa_fwd_tcp_8443> to (em0) port = 8443 -> fd00::10 port 443\n";
        assert_eq!(check_translation(&c, nat), None);
        assert_eq!(
            check_translation(&c, &nat.lines().skip(1).collect::<Vec<_>>().join("\n")).unwrap(),
            "anchor spa: the nat rule of <spa_snat_tcp_2222> is gone"
        );
        assert!(
            check_translation(&c, &format!("{nat}rdr on em0 from any to any -> 10.9.9.9\n"))
                .unwrap()
                .contains("did not make")
        );
        assert!(has_translation(&c) && !has_translation(&config("openbsd")));
    }
}

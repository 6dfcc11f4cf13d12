//! `nft -j list ruleset`, read for one question: which base chains of other tables sit on the
//! hooks our grants pass, and would their drop swallow what our chains accept?
//!
//! In nftables every base chain on a hook runs, in priority order. An `accept` ends only the
//! chain it is in; a `drop` (a `reject`, a `policy drop`) anywhere is final. So a backend
//! whose chains accept a granted packet still loses it to another table's default-drop chain,
//! unless that chain accepts the packet too: a port it allows anyway, a packet mark our chain
//! set before it ran, an established connection. iptables-nft's tables are nftables tables
//! as well, so the same holds between an iptables backend and an admin's nft ruleset.
//!
//! The reading is deliberately conservative. A rule counts as accepting only when every match
//! in it is one understood here (destination ports, the layer 4 protocol, the packet mark,
//! the conntrack state, the input interface); a drop counts only when nothing conditions it.
//! Jumps and gotos into regular chains are followed. Set contents are not needed (`-t`), so a
//! ruleset with large sets reads fast; a rule that matches a named set is not understood.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::ProtoPort;
use crate::process::{self, Environment, Invocation};
use crate::{BackendError, CommandFailure};

/// How long `nft -j list ruleset` may take.
const LIMIT: Duration = Duration::from_secs(20);
/// Deepest chain of jumps followed.
const MAX_DEPTH: usize = 16;

/// Runs `nft -j -t list ruleset` with the program `nft` (a path or a name in `PATH`).
pub fn list(nft: &str) -> Result<String, BackendError> {
    let inv = Invocation::new(nft, LIMIT)
        .args(["-j", "-t", "list", "ruleset"])
        .env(Environment::Inherit(vec![("LC_ALL".into(), "C".into())]))
        .capture_stdout();
    process::run(inv)?.success()?.stdout_text()
}

/// How a chain ends for a packet none of its rules accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropBy {
    /// `policy drop`.
    Policy,
    /// An unconditional `drop` or `reject` rule (the verdict's name).
    Rule(&'static str),
}

/// A base chain (one attached to a hook) and what it does with packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// `inet`, `ip`, `ip6`, ...
    pub family: String,
    /// Its table.
    pub table: String,
    /// Its name.
    pub name: String,
    /// The hook (`input`, `forward`, `prerouting`, ...).
    pub hook: String,
    /// `filter`, `nat`, `route`.
    pub kind: String,
    /// Its priority (lower runs first).
    pub priority: i64,
    /// Whether it drops what it does not accept, and how.
    pub drop: Option<DropBy>,
    /// The conditions of each accept reached before the drop.
    accepts: Vec<Vec<Cond>>,
}

impl Chain {
    /// `table inet filter, chain input (hook input, priority 0)`.
    pub fn describe(&self) -> String {
        format!(
            "table {} {}, chain {} (hook {}, priority {})",
            self.family, self.table, self.name, self.hook, self.priority
        )
    }

    /// `policy drop` or `an unconditional reject rule`, when it drops.
    pub fn drop_text(&self) -> Option<String> {
        self.drop.map(|d| match d {
            DropBy::Policy => "policy drop".to_owned(),
            DropBy::Rule(v) => format!("an unconditional {v} rule"),
        })
    }

    /// Whether the chain sees IPv4 packets (`inet` and `ip`) or IPv6 ones (`inet` and `ip6`).
    pub fn sees(&self, v6: bool) -> bool {
        self.family == "inet" || self.family == if v6 { "ip6" } else { "ip" }
    }

    /// Whether a rule accepts new packets to `pp` whatever their source.
    pub fn accepts_port(&self, pp: ProtoPort) -> bool {
        self.accepts.iter().any(|conds| {
            let mut port = false;
            for c in conds {
                match c {
                    Cond::Dport { proto, ranges } => {
                        let proto_ok = proto.as_deref().is_none_or(|p| p == pp.proto.name());
                        if !proto_ok || !ranges.iter().any(|&(a, b)| (a..=b).contains(&pp.port)) {
                            return false;
                        }
                        port = true;
                    }
                    Cond::L4(protos) if !protos.iter().any(|p| p == pp.proto.name()) => return false,
                    Cond::L4(_) | Cond::Iface => {}
                    Cond::Ct { new, .. } if *new => {}
                    _ => return false,
                }
            }
            port
        })
    }

    /// Whether a rule accepts packets that carry `mark` (OR-ed in by our chain).
    pub fn accepts_mark(&self, mark: u32) -> bool {
        self.accepts.iter().any(|conds| {
            let mut marked = false;
            for c in conds {
                match c {
                    Cond::Mark { mask, value } if mark & mask == *value && *value != 0 => marked = true,
                    Cond::L4(_) | Cond::Iface => {}
                    _ => return false,
                }
            }
            marked
        })
    }

    /// Whether a rule accepts packets of established connections.
    pub fn accepts_established(&self) -> bool {
        self.accepts.iter().any(|conds| {
            !conds.is_empty()
                && conds.iter().any(|c| matches!(c, Cond::Ct { established: true, .. }))
                && conds.iter().all(|c| matches!(c, Cond::Ct { established: true, .. } | Cond::Iface))
        })
    }
}

/// One match of a rule, as far as it is understood.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cond {
    /// Destination port in one of the ranges; `proto` `None` for `th dport`.
    Dport { proto: Option<String>, ranges: Vec<(u16, u16)> },
    /// Layer 4 protocol is one of these.
    L4(Vec<String>),
    /// `meta mark & mask == value`.
    Mark { mask: u32, value: u32 },
    /// `ct state` includes established / new.
    Ct { established: bool, new: bool },
    /// Input interface (index, name or type).
    Iface,
    /// Anything else (a source address, a named set, a negation, a limit...).
    Other,
}

/// How far a walk through a chain got.
enum Walk {
    /// Fell through to the end (or an unconditional `return`).
    Continue,
    /// An unconditional drop or reject.
    Dropped(&'static str),
    /// An unconditional accept: later rules are not reached.
    Accepted,
}

/// Every base chain of the ruleset (`nft -j list ruleset` output), in the order listed.
pub fn base_chains(json: &str) -> Result<Vec<Chain>, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("nft -j output is not JSON: {e}"))?;
    let items = doc.get("nftables").and_then(Value::as_array).ok_or("nft -j output has no nftables list")?;
    let mut rules: BTreeMap<(String, String, String), Vec<&Value>> = BTreeMap::new();
    let mut heads = Vec::new();
    for item in items {
        if let Some(c) = item.get("chain") {
            if c.get("hook").is_some() {
                heads.push(c);
            }
        } else if let Some(r) = item.get("rule") {
            rules.entry((text(r, "family"), text(r, "table"), text(r, "chain"))).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for c in heads {
        let (family, table, name) = (text(c, "family"), text(c, "table"), text(c, "name"));
        let mut accepts = Vec::new();
        let mut seen = Vec::new();
        let walked = walk(&rules, (&family, &table, &name), &[], 0, &mut accepts, &mut seen);
        let drop = match walked {
            Walk::Dropped(v) => Some(DropBy::Rule(v)),
            Walk::Accepted => None,
            Walk::Continue => {
                (c.get("policy").and_then(Value::as_str) == Some("drop")).then_some(DropBy::Policy)
            }
        };
        out.push(Chain {
            hook: text(c, "hook"),
            kind: text(c, "type"),
            priority: c.get("prio").and_then(Value::as_i64).unwrap_or(0),
            family,
            table,
            name,
            drop,
            accepts,
        });
    }
    Ok(out)
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

type Rules<'a> = BTreeMap<(String, String, String), Vec<&'a Value>>;

/// Walks the rules of one chain with the conditions `outer` (of the jumps that led here),
/// collecting accepts, until an unconditional verdict ends it.
fn walk(
    rules: &Rules<'_>,
    (family, table, chain): (&str, &str, &str),
    outer: &[Cond],
    depth: usize,
    accepts: &mut Vec<Vec<Cond>>,
    seen: &mut Vec<String>,
) -> Walk {
    if depth > MAX_DEPTH || seen.iter().any(|s| s == chain) {
        return Walk::Continue;
    }
    seen.push(chain.to_owned());
    let key = (family.to_owned(), table.to_owned(), chain.to_owned());
    let mut result = Walk::Continue;
    for rule in rules.get(&key).map(Vec::as_slice).unwrap_or_default() {
        let exprs = rule.get("expr").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let mut conds = outer.to_vec();
        let mut verdict = None;
        for e in exprs {
            let Some((name, body)) = e.as_object().and_then(|o| o.iter().next()) else { continue };
            match name.as_str() {
                "match" => conds.push(cond(body)),
                "accept" | "drop" | "reject" | "jump" | "goto" | "return" | "queue" | "continue" => {
                    verdict = Some((name.as_str(), body));
                }
                // Statements that do not decide anything.
                "counter" | "log" | "mangle" | "notrack" | "set" | "flow" => {}
                _ => conds.push(Cond::Other),
            }
        }
        let unconditional = conds.is_empty();
        match verdict {
            Some(("accept", _)) => {
                if unconditional {
                    result = Walk::Accepted;
                    break;
                }
                accepts.push(conds);
            }
            Some((v @ ("drop" | "reject"), _)) if unconditional => {
                result = Walk::Dropped(if v == "drop" { "drop" } else { "reject" });
                break;
            }
            Some(("return", _)) if unconditional => break,
            Some((v @ ("jump" | "goto"), body)) => {
                let target = body.get("target").and_then(Value::as_str).unwrap_or_default();
                match walk(rules, (family, table, target), &conds, depth + 1, accepts, seen) {
                    end @ (Walk::Dropped(_) | Walk::Accepted) if unconditional => {
                        result = end;
                        break;
                    }
                    // A goto does not come back: the chain that called ours goes on.
                    _ if v == "goto" && unconditional => break,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    seen.pop();
    result
}

/// What one `match` expression tests, as far as it is understood.
fn cond(m: &Value) -> Cond {
    let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
    if op != "==" && op != "in" {
        return Cond::Other;
    }
    let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else { return Cond::Other };
    if let Some(p) = left.get("payload") {
        let (proto, field) = (text(p, "protocol"), text(p, "field"));
        return match (proto.as_str(), field.as_str()) {
            ("tcp" | "udp" | "th", "dport") => match port_ranges(right) {
                Some(ranges) => Cond::Dport { proto: (proto != "th").then_some(proto), ranges },
                None => Cond::Other,
            },
            ("ip", "protocol") | ("ip6", "nexthdr") => strings(right).map_or(Cond::Other, Cond::L4),
            _ => Cond::Other,
        };
    }
    if let Some(meta) = left.get("meta") {
        return match text(meta, "key").as_str() {
            "l4proto" => strings(right).map_or(Cond::Other, Cond::L4),
            "mark" => number(right).map_or(Cond::Other, |value| Cond::Mark { mask: u32::MAX, value }),
            "iif" | "iifname" | "iiftype" => Cond::Iface,
            _ => Cond::Other,
        };
    }
    if let Some([l, mask]) = left.get("&").and_then(Value::as_array).map(Vec::as_slice)
        && l.get("meta").is_some_and(|m| text(m, "key") == "mark")
        && let (Some(mask), Some(value)) = (number(mask), number(right))
    {
        return Cond::Mark { mask, value };
    }
    if left.get("ct").is_some_and(|c| text(c, "key") == "state")
        && let Some(states) = strings(right)
    {
        return Cond::Ct {
            established: states.iter().any(|s| s == "established"),
            new: states.iter().any(|s| s == "new"),
        };
    }
    Cond::Other
}

fn number(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// A string, an array of strings, or a `{"set": [...]}` of strings.
fn strings(v: &Value) -> Option<Vec<String>> {
    if let Some(s) = v.as_str() {
        return Some(vec![s.to_owned()]);
    }
    let items = v.as_array().or_else(|| v.get("set").and_then(Value::as_array))?;
    items.iter().map(|i| i.as_str().map(str::to_owned)).collect()
}

/// A port, a `{"range": [a, b]}`, or a set of either.
fn port_ranges(v: &Value) -> Option<Vec<(u16, u16)>> {
    fn one(v: &Value) -> Option<(u16, u16)> {
        if let Some(n) = v.as_u64() {
            let p = u16::try_from(n).ok()?;
            return Some((p, p));
        }
        let [a, b] = v.get("range")?.as_array()?.as_slice() else { return None };
        Some((u16::try_from(a.as_u64()?).ok()?, u16::try_from(b.as_u64()?).ok()?))
    }
    match v.get("set").and_then(Value::as_array) {
        Some(items) => items.iter().map(one).collect(),
        None => one(v).map(|r| vec![r]),
    }
}

/// The failure of `nft` as one short text, for a finding.
pub fn describe_error(e: &BackendError) -> String {
    match e {
        BackendError::Command { failure: CommandFailure::Exit { stderr, .. }, program }
            if !stderr.is_empty() =>
        {
            format!("{program}: {stderr}")
        }
        _ => crate::error_chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `nft -j list ruleset` printed for a host ruleset (nft 1.0.6).
    const HOST: &str = r#"{"nftables": [
{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"table": {"family": "inet", "name": "filter", "handle": 1}},
{"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
{"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
{"chain": {"family": "inet", "table": "filter", "name": "svc", "handle": 10}},
{"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 3, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 256]}, "right": 256}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [22, 80, {"range": [8000, 8080]}]}}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 7, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 11, "expr": [{"jump": {"target": "svc"}}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "svc", "handle": 12, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "svc", "handle": 13, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "192.0.2.1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 9, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]}},
{"table": {"family": "ip", "name": "nat", "handle": 2}},
{"chain": {"family": "ip", "table": "nat", "name": "pre", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}
]}"#;

    fn pp(s: &str) -> ProtoPort {
        s.parse().unwrap()
    }

    #[test]
    fn base_chains_their_drops_and_what_they_accept() {
        let chains = base_chains(HOST).unwrap();
        let names: Vec<String> = chains.iter().map(Chain::describe).collect();
        assert_eq!(
            names,
            [
                "table inet filter, chain input (hook input, priority 0)",
                "table inet filter, chain forward (hook forward, priority 0)",
                "table ip nat, chain pre (hook prerouting, priority -100)",
            ]
        );
        let (input, forward, pre) = (&chains[0], &chains[1], &chains[2]);
        assert_eq!(input.drop, Some(DropBy::Policy));
        assert_eq!(input.drop_text().unwrap(), "policy drop");
        assert_eq!(forward.drop, Some(DropBy::Rule("reject")), "a final reject drops whatever the policy");
        assert_eq!(forward.drop_text().unwrap(), "an unconditional reject rule");
        assert_eq!(pre.drop, None);

        assert!(input.accepts_established() && !forward.accepts_established());
        assert!(input.accepts_mark(0x100) && input.accepts_mark(0x300) && !input.accepts_mark(0x200));
        for open in ["tcp/22", "tcp/80", "tcp/8000", "tcp/8080", "udp/53"] {
            assert!(input.accepts_port(pp(open)), "{open}");
        }
        // 443 only from one source; 8081 outside the range; udp/22 another protocol.
        for closed in ["tcp/443", "tcp/8081", "udp/22", "tcp/53"] {
            assert!(!input.accepts_port(pp(closed)), "{closed}");
        }
        assert!(input.sees(false) && input.sees(true) && pre.sees(false) && !pre.sees(true));
    }

    #[test]
    fn only_unconditional_verdicts_end_a_chain() {
        let json = |rules: &str, policy: &str| {
            format!(
                r#"{{"nftables": [
{{"chain": {{"family": "ip", "table": "t", "name": "in", "type": "filter", "hook": "input", "prio": 10, "policy": "{policy}"}}}},
{{"chain": {{"family": "ip", "table": "t", "name": "sub"}}}},
{rules}
]}}"#
            )
        };
        let rule = |chain: &str, expr: &str| {
            format!(r#"{{"rule": {{"family": "ip", "table": "t", "chain": "{chain}", "expr": [{expr}]}}}}"#)
        };
        let saddr = r#"{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "192.0.2.1"}}"#;
        let drop_of = |text: String| base_chains(&text).unwrap()[0].drop;

        // A conditional drop does not end it; the policy decides.
        let r = rule("in", &format!("{saddr}, {{\"drop\": null}}"));
        assert_eq!(drop_of(json(&r, "accept")), None);
        assert_eq!(drop_of(json(&r, "drop")), Some(DropBy::Policy));
        // An unconditional accept before the policy: nothing is dropped.
        let r = format!(
            "{}, {}",
            rule("in", r#"{"counter": null}, {"accept": null}"#),
            rule("in", r#"{"drop": null}"#)
        );
        assert_eq!(drop_of(json(&r, "drop")), None);
        // A jump into a chain that drops everything drops everything.
        let r =
            format!("{}, {}", rule("in", r#"{"jump": {"target": "sub"}}"#), rule("sub", r#"{"drop": null}"#));
        assert_eq!(drop_of(json(&r, "accept")), Some(DropBy::Rule("drop")));
        // A conditional jump there does not.
        let r = format!(
            "{}, {}",
            rule("in", &format!(r#"{saddr}, {{"jump": {{"target": "sub"}}}}"#)),
            rule("sub", r#"{"drop": null}"#)
        );
        assert_eq!(drop_of(json(&r, "accept")), None);
        // A loop of jumps ends.
        let r = format!(
            "{}, {}",
            rule("in", r#"{"jump": {"target": "sub"}}"#),
            rule("sub", r#"{"jump": {"target": "in"}}"#)
        );
        assert_eq!(drop_of(json(&r, "drop")), Some(DropBy::Policy));
        // Accepts inside a conditional jump carry the jump's condition.
        let r = format!(
            "{}, {}",
            rule("in", &format!(r#"{saddr}, {{"jump": {{"target": "sub"}}}}"#)),
            rule(
                "sub",
                r#"{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}"#
            )
        );
        assert!(!base_chains(&json(&r, "drop")).unwrap()[0].accepts_port(pp("tcp/22")));
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        assert!(base_chains("").is_err());
        assert!(base_chains("{}").is_err());
        assert!(
            base_chains(r#"{"nftables": [{"chain": {"hook": 5}}, {"rule": {"expr": [{"match": 1}]}}]}"#)
                .is_ok()
        );
    }
}

//! What `spad check` (and the start, as warnings) asks of the nft backend before it runs: the
//! `nft` program, nfnetlink, `CAP_NET_ADMIN`, and other tables whose drop would swallow what
//! our chains accept (see the crate documentation, "Living next to the admin's own ruleset").
//! It only looks: nothing in the firewall changes.

use spa_backends::preflight::ruleset::{self, Chain};
use spa_backends::preflight::{Capability, Context, Finding, find_program, require_capability};

use crate::config::NftConfig;

/// The mark suggested when none is set: one bit, rarely used by anything else.
const SUGGESTED_MARK: u32 = 0x100;

/// The nft backend's preflight (see [`spa_backends::preflight`]).
pub fn preflight(ctx: &Context<'_>) -> Vec<Finding> {
    // A table that does not parse is reported by the constructor, with its line.
    let Ok(config) = NftConfig::from_table(ctx.table) else { return Vec::new() };
    let mut out = Vec::new();
    let nft = match find_program(&config.nft, None) {
        Ok(p) => p,
        Err(why) => {
            out.push(Finding::error(
                Some("nft"),
                format!("the nft program is missing: {why}; install nftables, or set nft to its path"),
            ));
            return out;
        }
    };
    if let Some(f) = require_capability(Capability::NetAdmin, "the nft backend changes the firewall") {
        // Without it nothing below can be read either.
        out.push(f);
        return out;
    }
    if let Err(e) = spa_backends::nfgen::Generation::open(None).and_then(|mut g| g.read()) {
        out.push(Finding::error(
            None,
            format!(
                "nfnetlink is not usable: {}; spad sends grants and reads the ruleset generation \
                 through it (is the nf_tables module available?)",
                spa_backends::error_chain(&e)
            ),
        ));
    }
    let json = match ruleset::list(&nft.to_string_lossy()) {
        Ok(json) => json,
        Err(e) => {
            out.push(Finding::error(
                Some("nft"),
                format!("cannot list the ruleset: {}", ruleset::describe_error(&e)),
            ));
            return out;
        }
    };
    match ruleset::base_chains(&json) {
        Ok(chains) => out.extend(conflicts(&config, ctx.forwards, &chains)),
        Err(why) => out.push(Finding::warning(None, format!("cannot read the ruleset: {why}"))),
    }
    out
}

/// Base chains of other tables that would drop what our chains accept, with what to do.
pub fn conflicts(config: &NftConfig, forwards: bool, chains: &[Chain]) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in chains {
        let ours = c.family == "inet" && c.table == config.table;
        let Some(drop) = c.drop_text() else { continue };
        if ours || c.kind != "filter" {
            continue;
        }
        let what = match c.hook.as_str() {
            "input" => {
                // Ports it accepts anyway need nothing: our drop keeps them closed to others.
                let swallowed: Vec<String> =
                    config.protect.iter().filter(|p| !c.accepts_port(**p)).map(ToString::to_string).collect();
                if !config.protect.is_empty() && swallowed.is_empty() {
                    continue;
                }
                if swallowed.is_empty() {
                    "granted connections to this host".to_owned()
                } else {
                    format!("granted connections to this host ({})", swallowed.join(", "))
                }
            }
            "forward" if forwards => "forwarded (NAT) grants and their replies".to_owned(),
            "prerouting" if forwards => {
                out.push(Finding::warning(
                    None,
                    format!(
                        "{} has {drop}: it drops packets before spad's DNAT sees them, and no mark can \
                         help there; accept the forwarded ports in that chain",
                        c.describe()
                    ),
                ));
                continue;
            }
            _ => continue,
        };
        let established = if c.accepts_established() {
            String::new()
        } else {
            " and `ct state established,related accept` (so connections outlive the grant window)".to_owned()
        };
        match config.mark {
            Some(m) if c.accepts_mark(m) => {
                if c.priority <= i64::from(config.filter_priority) {
                    out.push(Finding::warning(
                        Some("filter_priority"),
                        format!(
                            "{} accepts mark {m:#x} but runs before spad's chains (priority {} is not \
                             above filter_priority {}), so the mark is not set yet and its {drop} drops \
                             {what}; set filter_priority below {}",
                            c.describe(),
                            c.priority,
                            config.filter_priority,
                            c.priority
                        ),
                    ));
                } else if !established.is_empty() {
                    out.push(Finding::warning(
                        Some("mark"),
                        format!(
                            "{} accepts mark {m:#x} but has {drop} and no `ct state established,related \
                             accept`: a granted connection is cut when the grant ends; add it",
                            c.describe()
                        ),
                    ));
                }
            }
            Some(m) => out.push(Finding::warning(
                Some("mark"),
                format!(
                    "{} has {drop}: it drops {what} although spad's chains accept them (in nftables an \
                     accept ends only its own chain); add `meta mark & {m:#x} == {m:#x} accept`{established} \
                     to that chain",
                    c.describe()
                ),
            )),
            None => out.push(Finding::warning(
                None,
                format!(
                    "{} has {drop}: it drops {what} although spad's chains accept them (in nftables an \
                     accept ends only its own chain); set mark = {SUGGESTED_MARK:#x} in [firewall.nft] \
                     (a bit nothing else uses) and add `meta mark & {SUGGESTED_MARK:#x} == \
                     {SUGGESTED_MARK:#x} accept`{established} to that chain (see \
                     /usr/share/doc/spad/nft/admin-example.nft)",
                    c.describe()
                ),
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(input: &str, forward: &str) -> Vec<Chain> {
        let json = format!(
            r#"{{"nftables": [
{{"chain": {{"family": "inet", "table": "spa", "name": "input", "type": "filter", "hook": "input", "prio": -10, "policy": "drop"}}}},
{{"chain": {{"family": "inet", "table": "filter", "name": "input", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}}},
{{"chain": {{"family": "ip", "table": "filter", "name": "fwd", "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}}},
{input}
{forward}
{{"chain": {{"family": "ip", "table": "nat", "name": "pre", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}}}
]}}"#
        );
        ruleset::base_chains(&json).unwrap()
    }

    fn rule(chain: &str, family: &str, table: &str, exprs: &str) -> String {
        format!(
            r#"{{"rule": {{"family": "{family}", "table": "{table}", "chain": "{chain}", "expr": [{exprs}]}}}},"#
        )
    }

    const EST: &str = r#"{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}"#;
    const MARK: &str = r#"{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 256]}, "right": 256}}, {"accept": null}"#;
    const SSH: &str = r#"{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}"#;

    fn config(extra: &str) -> NftConfig {
        NftConfig::from_table(&format!("protect = [\"tcp/22\", \"tcp/443\"]\n{extra}").parse().unwrap())
            .unwrap()
    }

    #[test]
    fn a_default_drop_input_without_the_mark_is_reported_with_what_to_do() {
        let chains = host("", "");
        let f = conflicts(&config(""), false, &chains);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].key, None);
        assert_eq!(
            f[0].message,
            "table inet filter, chain input (hook input, priority 0) has policy drop: it drops granted \
             connections to this host (tcp/22, tcp/443) although spad's chains accept them (in nftables \
             an accept ends only its own chain); set mark = 0x100 in [firewall.nft] (a bit nothing else \
             uses) and add `meta mark & 0x100 == 0x100 accept` and `ct state established,related accept` \
             (so connections outlive the grant window) to that chain (see \
             /usr/share/doc/spad/nft/admin-example.nft)"
        );
        // The forward chain matters only when grants are forwarded.
        let f = conflicts(&config(""), true, &chains);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[1].message.starts_with("table ip filter, chain fwd (hook forward, priority 0) has policy drop: it drops forwarded (NAT) grants"), "{}", f[1].message);
    }

    #[test]
    fn the_mark_accepted_after_our_chains_is_enough() {
        let input =
            format!("{}{}", rule("input", "inet", "filter", EST), rule("input", "inet", "filter", MARK));
        let chains = host(&input, "");
        assert!(conflicts(&config("mark = 0x100"), false, &chains).is_empty());
        // Another mark than the chain accepts.
        let f = conflicts(&config("mark = 0x200"), false, &chains);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].key, Some("mark"));
        assert!(
            f[0].message.contains("add `meta mark & 0x200 == 0x200 accept` to that chain"),
            "{}",
            f[0].message
        );
        // Our chains after theirs: the mark comes too late.
        let f = conflicts(&config("mark = 0x100\nfilter_priority = 0"), false, &chains);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].key, Some("filter_priority"));
        assert!(f[0].message.contains("priority 0 is not above filter_priority 0"), "{}", f[0].message);
        assert!(f[0].message.ends_with("set filter_priority below 0"), "{}", f[0].message);
    }

    #[test]
    fn ports_the_host_accepts_anyway_need_nothing() {
        let ssh = rule("input", "inet", "filter", SSH);
        let chains = host(&ssh, "");
        let f = conflicts(&config(""), false, &chains);
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("connections to this host (tcp/443)"), "{}", f[0].message);
        let only_ssh = NftConfig::from_table(&"protect = [\"tcp/22\"]".parse().unwrap()).unwrap();
        assert!(conflicts(&only_ssh, false, &chains).is_empty());
    }
}

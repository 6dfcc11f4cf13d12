//! What `spad check` (and the start, as warnings) asks of the iptables backend before it runs:
//! the iptables and ipset programs of the variant, `CAP_NET_ADMIN`, and rules that would
//! swallow our grants: a drop placed before our jump, a `FORWARD` that drops the replies of
//! forwarded grants, and another nftables table's drop (an iptables `ACCEPT` does not stop
//! it). It only looks: nothing in the firewall changes.

use spa_backends::preflight::ruleset::{self, Chain};
use spa_backends::preflight::{Capability, Context, Finding, find_program, require_capability};

use crate::IptablesBackend;
use crate::config::{Config, Variant};
use crate::model::{Family, Hook, Names};
use crate::render;

/// The iptables backend's preflight (see [`spa_backends::preflight`]).
pub fn preflight(ctx: &Context<'_>) -> Vec<Finding> {
    // A table that does not parse is reported by the constructor, with its line.
    let Ok(config) = Config::from_table(ctx.table) else { return Vec::new() };
    let mut out = Vec::new();
    let variants: &[Variant] = match config.variant {
        Variant::Auto => &[Variant::Nft, Variant::Legacy],
        Variant::Nft => &[Variant::Nft],
        Variant::Legacy => &[Variant::Legacy],
    };
    let missing: Vec<Vec<String>> = variants.iter().map(|v| missing_programs(*v)).collect();
    if missing.iter().all(|m| !m.is_empty()) {
        let what = missing.iter().map(|m| m.join(", ")).collect::<Vec<_>>().join("; or ");
        out.push(Finding::error(
            Some("variant"),
            format!("iptables programs are missing: {what}; install iptables"),
        ));
    }
    if let Err(why) = find_program("ipset", None) {
        out.push(Finding::error(None, format!("ipset is missing ({why}); install ipset")));
    }
    if let Some(f) = require_capability(Capability::NetAdmin, "the iptables backend changes the firewall") {
        out.push(f);
    }
    if !out.is_empty() {
        // Nothing below can be read without them.
        return out;
    }
    let mut backend = IptablesBackend::new(config.clone());
    let names = Names::new(&config.chain_prefix);
    let mut uses_nft = true;
    match backend.variant_suffix() {
        Ok(suffix) => {
            uses_nft = suffix == "nft";
            for family in Family::ALL {
                let prog = format!("{}-{suffix}-save", family.program());
                match backend.runner.run(&prog, &["-t", "filter"], "") {
                    Ok(text) => out.extend(filter_table(family, &text, &names, ctx.forwards)),
                    Err(e) => out.push(Finding::error(
                        Some("variant"),
                        format!("cannot read the filter table: {}", ruleset::describe_error(&e)),
                    )),
                }
            }
        }
        Err(e) => out.push(Finding::error(
            Some("variant"),
            format!("cannot tell which iptables to use: {}", spa_backends::error_chain(&e)),
        )),
    }
    // Other nftables tables on the same hooks drop what our chains accept, whichever variant
    // we use; without the nft program there is nothing to read them with.
    if let Ok(nft) = find_program("nft", None) {
        match ruleset::list(&nft.to_string_lossy())
            .map_err(|e| ruleset::describe_error(&e))
            .and_then(|j| ruleset::base_chains(&j))
        {
            Ok(chains) => out.extend(nft_conflicts(&config, ctx.forwards, uses_nft, &chains)),
            Err(why) => out.push(Finding::warning(None, format!("cannot read the nftables ruleset: {why}"))),
        }
    }
    out
}

/// The programs of `variant` that are not installed.
fn missing_programs(variant: Variant) -> Vec<String> {
    let suffix = variant.suffix().unwrap_or_default();
    let mut missing = Vec::new();
    for family in Family::ALL {
        for what in ["restore", "save"] {
            let prog = format!("{}-{suffix}-{what}", family.program());
            if find_program(&prog, None).is_err() {
                missing.push(prog);
            }
        }
    }
    missing
}

/// `iptables-save -t filter` of one family: a `DROP`/`REJECT` before our jump in `INPUT`
/// (or `FORWARD`), and a dropping `FORWARD` without an `ESTABLISHED` accept while grants are
/// forwarded (our forward accepts cover the client's direction only).
pub fn filter_table(family: Family, save: &str, names: &Names, forwards: bool) -> Vec<Finding> {
    let dump = render::parse_save(save);
    let program = family.program();
    let mut out = Vec::new();
    let hooks: &[Hook] = if forwards { &[Hook::Input, Hook::Forward] } else { &[Hook::Input] };
    for hook in hooks {
        let builtin = hook.builtin();
        let jump = format!("-j {}", names.chain(*hook));
        let rules: Vec<&str> = dump.rules_of("filter", builtin).collect();
        // Before spad's first start there is no jump: it will be put first.
        let Some(at) = rules.iter().position(|r| *r == jump) else { continue };
        for r in &rules[..at] {
            if r.ends_with("-j DROP") || r.contains("-j REJECT") {
                out.push(Finding::warning(
                    None,
                    format!(
                        "{program} {builtin}: `-A {builtin} {r}` comes before the jump to {}: what it \
                         drops never reaches spad's grants; delete it or put it after the jump",
                        names.chain(*hook)
                    ),
                ));
            }
        }
    }
    if forwards {
        let policy_drop = save.lines().any(|l| l.starts_with(":FORWARD DROP"));
        let rules: Vec<&str> = dump.rules_of("filter", "FORWARD").collect();
        let final_drop = rules.iter().any(|r| *r == "-j DROP" || r.starts_with("-j REJECT"));
        let established = rules.iter().any(|r| r.contains("ESTABLISHED") && r.ends_with("-j ACCEPT"));
        if (policy_drop || final_drop) && !established {
            let how = if policy_drop { "has policy DROP" } else { "ends in a DROP" };
            out.push(Finding::warning(
                None,
                format!(
                    "{program} FORWARD {how} and accepts no ESTABLISHED traffic: spad's {} accepts the \
                     client's side of a forwarded grant, the replies are dropped; add `{program} -I \
                     FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`",
                    names.chain(Hook::Forward)
                ),
            ));
        }
    }
    out
}

/// Base chains of nftables tables that drop on our hooks, other than the built-in chains of
/// iptables-nft's own tables when we use iptables-nft (`uses_nft`): those hold our jump, and
/// [`filter_table`] reads them.
pub fn nft_conflicts(config: &Config, forwards: bool, uses_nft: bool, chains: &[Chain]) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in chains {
        let iptables_own = uses_nft
            && matches!(c.family.as_str(), "ip" | "ip6")
            && matches!(c.table.as_str(), "filter" | "nat" | "mangle" | "raw" | "security")
            && c.name.chars().all(|ch| ch.is_ascii_uppercase());
        let Some(drop) = c.drop_text() else { continue };
        if iptables_own || c.kind != "filter" {
            continue;
        }
        let advice = match c.hook.as_str() {
            "input" => {
                let swallowed: Vec<String> =
                    config.protect.iter().filter(|p| !c.accepts_port(**p)).map(ToString::to_string).collect();
                if !config.protect.is_empty() && swallowed.is_empty() {
                    continue;
                }
                let ports = if swallowed.is_empty() { "the granted ports".to_owned() } else { swallowed.join(", ") };
                format!(
                    "it drops granted connections to {ports} although spad's chain accepts them (an \
                     iptables ACCEPT does not stop another table's drop); accept them in that chain \
                     (spad's DROP keeps protected ports closed to everyone else)"
                )
            }
            "forward" if forwards => "it drops forwarded (NAT) grants although spad's chain accepts them; add \
                                      `ct status dnat accept` and `ct state established,related accept` to that \
                                      chain"
                .to_owned(),
            _ => continue,
        };
        out.push(Finding::warning(None, format!("{} has {drop}: {advice}", c.describe())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                        :SPA_INPUT - [0:0]\n-A INPUT -s 10.0.0.0/8 -j DROP\n-A INPUT -j SPA_INPUT\n\
                        -A FORWARD -j SPA_FORWARD\nCOMMIT\n";

    #[test]
    fn a_drop_before_our_jump_and_a_forward_that_drops_replies() {
        let names = Names::new("SPA");
        let f = filter_table(Family::V4, SAVE, &names, false);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            f[0].message,
            "iptables INPUT: `-A INPUT -s 10.0.0.0/8 -j DROP` comes before the jump to SPA_INPUT: what \
             it drops never reaches spad's grants; delete it or put it after the jump"
        );
        let f = filter_table(Family::V6, SAVE, &names, true);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[1].message.starts_with("ip6tables FORWARD has policy DROP and accepts no ESTABLISHED"),
            "{}",
            f[1].message
        );
        let fixed = SAVE.replace(
            "-A FORWARD -j SPA_FORWARD",
            "-A FORWARD -j SPA_FORWARD\n-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        );
        assert_eq!(filter_table(Family::V4, &fixed, &names, true).len(), 1);
        // Before the first start there is no jump yet: it will be put first.
        let fresh = "*filter\n:INPUT DROP [0:0]\n-A INPUT -j DROP\nCOMMIT\n";
        assert!(filter_table(Family::V4, fresh, &names, false).is_empty());
    }

    #[test]
    fn another_nft_table_that_drops_is_reported_and_iptables_own_chains_are_not() {
        let json = r#"{"nftables": [
{"chain": {"family": "ip", "table": "filter", "name": "INPUT", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
{"chain": {"family": "inet", "table": "host", "name": "input", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}
]}"#;
        let chains = ruleset::base_chains(json).unwrap();
        let config = Config::from_table(&"protect = [\"tcp/22\"]".parse().unwrap()).unwrap();
        let f = nft_conflicts(&config, false, true, &chains);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].message.starts_with(
                "table inet host, chain input (hook input, priority 0) has policy drop: it drops granted \
                 connections to tcp/22"
            ),
            "{}",
            f[0].message
        );
        // With iptables-legacy, iptables-nft's chains are someone else's.
        assert_eq!(nft_conflicts(&config, false, false, &chains).len(), 2);
    }
}

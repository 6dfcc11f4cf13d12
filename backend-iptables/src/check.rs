//! The tamper check's judgement, pure: does what `iptables-save` and `ipset list -t` print
//! still hold what `prepare` set up? Each function returns what is wrong, in words for the
//! audit trail, or `None`.
//!
//! What must hold, in each family:
//! - our four chains exist, each in its table;
//! - each built-in chain jumps to ours exactly once, unconditionally (`-A INPUT -j SPA_INPUT`);
//!   where in the built-in chain is not judged: fail2ban, Docker and admins insert their own
//!   rules first, and that is theirs to do;
//! - `<prefix>_INPUT` holds, besides tagged grant rules, exactly the static rules in order
//!   (per protected port an `ESTABLISHED,RELATED` accept, the two set matches, per protected
//!   port a `DROP`); the other chains hold tagged grant rules only. A rule without our tag is
//!   one spad did not make: it is reported (and the rebuild removes it), since it runs with
//!   our chain's authority.
//!
//! And our four sets exist, with their type, family, timeouts and comments.
//!
//! Not judged: which tagged rules and set members exist (the ledger's business; `spad list
//! --firewall` shows them beside the ledger), and set members added or flushed by hand.

use crate::config::Config;
use crate::model::{Family, Hook, Names};
use crate::render::{SaveDump, set_type, split_tag, static_input};

/// Longest piece of a stranger's rule quoted in a message.
const QUOTE_MAX: usize = 160;

fn quote(rule: &str) -> String {
    let clean: String = rule.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if clean.chars().count() <= QUOTE_MAX {
        clean
    } else {
        let cut: String = clean.chars().take(QUOTE_MAX).collect();
        format!("{cut}...")
    }
}

/// What is wrong with our chains and hooks in `family`'s tables (`dump`, from
/// `iptables-save`), if anything.
pub fn chains(names: &Names, config: &Config, family: Family, dump: &SaveDump) -> Option<String> {
    let prog = family.program();
    for hook in Hook::ALL {
        let chain = names.chain(hook);
        if !dump.has_chain(hook.table(), &chain) {
            return Some(format!("{prog} chain {chain} is gone"));
        }
    }
    for hook in Hook::ALL {
        let chain = names.chain(hook);
        match dump.hooks(hook.table(), hook.builtin(), &chain) {
            1 => {}
            0 => return Some(format!("{prog} {} no longer jumps to {chain}", hook.builtin())),
            n => return Some(format!("{prog} {} jumps to {chain} {n} times", hook.builtin())),
        }
    }
    for hook in Hook::ALL {
        let chain = names.chain(hook);
        let untagged: Vec<&str> =
            dump.rules_of(hook.table(), &chain).filter(|s| split_tag(s).is_none()).collect();
        let expected = if hook == Hook::Input { static_input(names, config, family) } else { Vec::new() };
        if untagged.iter().copied().eq(expected.iter().map(|s| s.spec.as_str())) {
            continue;
        }
        // The most telling first: a DROP gone opens a port, a set match gone closes grants.
        let mut missing: Vec<&str> = expected
            .iter()
            .filter(|s| !untagged.contains(&s.spec.as_str()))
            .map(|s| s.what.as_str())
            .collect();
        missing.sort_by_key(|w| (!w.starts_with("the DROP"), !w.starts_with("the match")));
        if let Some(first) = missing.first() {
            let more = match missing.len() - 1 {
                0 => String::new(),
                1 => " (and 1 more of its rules)".to_owned(),
                n => format!(" (and {n} more of its rules)"),
            };
            return Some(format!("{prog} {chain}: {first} is gone{more}"));
        }
        if let Some(stranger) = untagged.iter().find(|u| !expected.iter().any(|s| s.spec == **u)) {
            return Some(format!("{prog} {chain}: a rule spad did not make: {}", quote(stranger)));
        }
        return Some(format!("{prog} {chain}: its fixed rules are out of order or doubled"));
    }
    None
}

/// One set as `ipset list -t` describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetHeader {
    /// `Name:`.
    pub name: String,
    /// `Type:`.
    pub kind: String,
    /// `Header:` (`family inet hashsize 1024 ... timeout 60 comment ...`).
    pub header: String,
}

/// Parses `ipset list -t` (every set's header, no members).
pub fn parse_headers(text: &str) -> Vec<SetHeader> {
    let mut out: Vec<SetHeader> = Vec::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("Name:") {
            out.push(SetHeader { name: n.trim().to_owned(), ..SetHeader::default() });
        } else if let Some(last) = out.last_mut() {
            if let Some(t) = line.strip_prefix("Type:") {
                last.kind = t.trim().to_owned();
            } else if let Some(h) = line.strip_prefix("Header:") {
                last.header = h.trim().to_owned();
            }
        }
    }
    out
}

/// What is wrong with our sets, as `ipset list -t` lists them, if anything.
pub fn sets(names: &Names, listing: &[SetHeader]) -> Option<String> {
    for (name, family, with_dst) in names.sets() {
        let Some(h) = listing.iter().find(|h| h.name == name) else {
            return Some(format!("ipset {name} is gone"));
        };
        let want = set_type(with_dst);
        if h.kind != want {
            return Some(format!("ipset {name} is of type {}, not {want}", quote(&h.kind)));
        }
        let words: Vec<&str> = h.header.split_whitespace().collect();
        let fam = words.iter().position(|w| *w == "family").and_then(|i| words.get(i + 1));
        if fam != Some(&family.ipset_family()) {
            return Some(format!("ipset {name} is not of family {}", family.ipset_family()));
        }
        if !words.contains(&"timeout") || !words.contains(&"comment") {
            return Some(format!("ipset {name} has no timeouts or no comments"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::parse_save;

    fn config() -> Config {
        Config { protect: vec!["tcp/22".parse().unwrap(), "udp/53".parse().unwrap()], ..Config::default() }
    }

    /// What a fresh prepare leaves (as iptables-save prints it), with one grant rule in each
    /// chain, and the static rules of `SPA_INPUT` replaced by `input`.
    fn save(input: &[&str], extra: &str) -> String {
        let tag = "-m comment --comment \"spa:id=0000000000000001:exp=9\"";
        let mut s = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:SPA_INPUT - [0:0]\n:SPA_FORWARD - [0:0]\n\
             -A INPUT -s 10.0.0.0/8 -j DROP\n-A INPUT -j SPA_INPUT\n-A FORWARD -j SPA_FORWARD\n",
        );
        s.push_str(&format!("-A SPA_INPUT -s 192.0.2.4/32 {tag} -j ACCEPT\n"));
        for r in input {
            s.push_str(&format!("-A SPA_INPUT {r}\n"));
        }
        s.push_str(&format!("-A SPA_FORWARD -s 192.0.2.5/32 {tag} -j ACCEPT\n"));
        s.push_str(extra);
        s.push_str(
            "COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:SPA_PREROUTING - [0:0]\n\
             :SPA_POSTROUTING - [0:0]\n-A PREROUTING -j SPA_PREROUTING\n-A POSTROUTING -j SPA_POSTROUTING\nCOMMIT\n",
        );
        s
    }

    const STATIC: [&str; 6] = [
        "-p tcp -m tcp --dport 22 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-p udp -m udp --dport 53 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-m set --match-set spa4 src,dst -j ACCEPT",
        "-m set --match-set spa4d src,dst,dst -j ACCEPT",
        "-p tcp -m tcp --dport 22 -j DROP",
        "-p udp -m udp --dport 53 -j DROP",
    ];

    fn judge(text: &str) -> Option<String> {
        chains(&Names::new("SPA"), &config(), Family::V4, &parse_save(text))
    }

    #[test]
    fn a_fresh_setup_with_grants_and_foreign_rules_elsewhere_is_intact() {
        assert_eq!(judge(&save(&STATIC, "")), None);
        // Rules of others, even tagged-looking ones, outside our chains: none of our business.
        assert_eq!(
            judge(&save(&STATIC, "-A FORWARD -j ACCEPT\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n")),
            None
        );
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let cases: Vec<(String, &str)> = vec![
            (save(&STATIC, "").replace(":SPA_FORWARD - [0:0]\n", ""), "iptables chain SPA_FORWARD is gone"),
            (
                save(&STATIC, "").replace("-A INPUT -j SPA_INPUT\n", ""),
                "iptables INPUT no longer jumps to SPA_INPUT",
            ),
            (
                save(&STATIC, "").replace("-A INPUT -j SPA_INPUT\n", "-A INPUT -i eth0 -j SPA_INPUT\n"),
                "iptables INPUT no longer jumps to SPA_INPUT",
            ),
            (save(&STATIC, "-A FORWARD -j SPA_FORWARD\n"), "iptables FORWARD jumps to SPA_FORWARD 2 times"),
            (save(&[], ""), "iptables SPA_INPUT: the DROP for tcp/22 is gone (and 5 more of its rules)"),
            (save(&STATIC[..5], ""), "iptables SPA_INPUT: the DROP for udp/53 is gone"),
            (
                save(&[STATIC[0], STATIC[1], STATIC[3], STATIC[4], STATIC[5]], ""),
                "iptables SPA_INPUT: the match on set spa4 is gone",
            ),
            (
                save(
                    &[
                        STATIC[0],
                        STATIC[1],
                        STATIC[2],
                        STATIC[3],
                        "-p tcp -m tcp --dport 22 -j ACCEPT",
                        STATIC[5],
                    ],
                    "",
                ),
                "iptables SPA_INPUT: the DROP for tcp/22 is gone",
            ),
            (
                save(&[&["-j ACCEPT"], &STATIC[..]].concat(), ""),
                "iptables SPA_INPUT: a rule spad did not make: -j ACCEPT",
            ),
            (
                save(&STATIC, "-A SPA_FORWARD -s 192.0.2.9/32 -j ACCEPT\n"),
                "iptables SPA_FORWARD: a rule spad did not make: -s 192.0.2.9/32 -j ACCEPT",
            ),
            (
                save(&[STATIC[0], STATIC[1], STATIC[2], STATIC[3], STATIC[5], STATIC[4]], ""),
                "iptables SPA_INPUT: its fixed rules are out of order or doubled",
            ),
            (
                save(&[&STATIC[..], &[STATIC[5]]].concat(), ""),
                "iptables SPA_INPUT: its fixed rules are out of order or doubled",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(judge(&text).as_deref(), Some(want), "{text}");
        }
        // A missing nat table (as iptables-nft-save prints it when nothing made one).
        let no_nat = save(&STATIC, "").split("*nat").next().unwrap().to_owned();
        assert_eq!(judge(&no_nat).as_deref(), Some("iptables chain SPA_PREROUTING is gone"));
    }

    #[test]
    fn a_strangers_rule_is_quoted_short_and_clean() {
        let long = format!("-s 192.0.2.9/32 -m comment --comment \"{}\u{7}\" -j ACCEPT", "x".repeat(400));
        let text = save(&STATIC, &format!("-A SPA_FORWARD {long}\n"));
        let msg = judge(&text).unwrap();
        assert!(msg.len() < 260 && msg.ends_with("...") && !msg.contains('\u{7}'), "{msg}");
    }

    const LIST: &str = "Name: f2b-sshd\nType: hash:ip\nRevision: 6\nHeader: family inet hashsize 1024 maxelem 65536\n\
Size in memory: 200\nReferences: 1\nNumber of entries: 0\n\
Name: spa4\nType: hash:ip,port\nRevision: 7\nHeader: family inet hashsize 1024 maxelem 65536 timeout 60 comment bucketsize 12 initval 0x1\n\
Size in memory: 327\nReferences: 2\nNumber of entries: 1\n\
Name: spa4d\nType: hash:ip,port,ip\nHeader: family inet hashsize 1024 maxelem 65536 timeout 60 comment\n\
Name: spa6\nType: hash:ip,port\nHeader: family inet6 hashsize 1024 maxelem 65536 timeout 60 comment\n\
Name: spa6d\nType: hash:ip,port,ip\nHeader: family inet6 hashsize 1024 maxelem 65536 timeout 60 comment\n";

    #[test]
    fn sets_are_judged_by_name_type_family_and_extensions() {
        let n = Names::new("SPA");
        assert_eq!(sets(&n, &parse_headers(LIST)), None);
        let cases = [
            (LIST.replace("Name: spa6d", "Name: other"), "ipset spa6d is gone"),
            (
                LIST.replace("Type: hash:ip,port\nRevision: 7", "Type: hash:ip\nRevision: 7"),
                "ipset spa4 is of type hash:ip, not hash:ip,port",
            ),
            (
                LIST.replace(
                    "family inet6 hashsize 1024 maxelem 65536 timeout 60 comment\nName: spa6d",
                    "family inet hashsize 1\nName: spa6d",
                ),
                "ipset spa6 is not of family inet6",
            ),
            (
                LIST.replace("65536 timeout 60 comment\nName: spa6\n", "65536\nName: spa6\n"),
                "ipset spa4d has no timeouts or no comments",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(sets(&n, &parse_headers(&text)).as_deref(), Some(want), "{text}");
        }
    }
}

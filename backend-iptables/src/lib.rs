//! The `iptables` backend: iptables/ip6tables plus ipset, on iptables-nft or iptables-legacy.
//!
//! # What it creates (prefix `SPA`, the default)
//!
//! In both the IPv4 and the IPv6 tables, four chains, each jumped to once from the first
//! position of its built-in chain at [`Backend::prepare`]:
//!
//! | chain | table | hooked from | holds |
//! |---|---|---|---|
//! | `SPA_INPUT` | filter | `INPUT` | per-grant redirect/forward-all accepts; then, per protected port, an `ESTABLISHED,RELATED` accept; then `-m set --match-set spa4 src,dst -j ACCEPT` (and `spa4d src,dst,dst`); then one `DROP` per protected port |
//! | `SPA_FORWARD` | filter | `FORWARD` | per-grant accepts for DNAT-translated (`--ctstate DNAT --ctorigdstport`) or routed flows |
//! | `SPA_PREROUTING` | nat | `PREROUTING` | per-grant DNAT / REDIRECT |
//! | `SPA_POSTROUTING` | nat | `POSTROUTING` | per-grant SNAT / MASQUERADE |
//!
//! Four ipsets with per-entry timeouts and comments: `spa4`, `spa6` (`hash:ip,port`: source,
//! proto:port) and `spa4d`, `spa6d` (`hash:ip,port,ip`: also the local destination address).
//!
//! Plain port grants are set entries `<source>,tcp:22 timeout <seconds left> comment
//! "spa:id=<grant id>:exp=<unix deadline>"`: the kernel removes them at the deadline, with or
//! without the daemon. Everything ipset cannot express (DNAT, REDIRECT, SNAT, forwarding,
//! forward-all) is a rule carrying `-m comment --comment spa:id=<grant id>:exp=<deadline>`;
//! the daemon's deadline queue removes it, and after a restart [`Backend::prepare`] rebuilds the
//! chains from the daemon's record, so a stale rule never outlives a restart. Hence
//! `native_expiry` is false, although plain grants expire in the kernel too.
//!
//! Every change is one `ipset -exist restore` and/or one `iptables-restore --noflush` per
//! address family (atomic per table), never one process per rule; a plain grant costs one
//! process. Nothing outside our chains and sets is touched, except the four jump rules.
//!
//! Fail-closed: the `DROP`s of protected ports stay when the daemon stops or crashes; only
//! [`Backend::teardown`] (an explicit admin action) removes them. `conf/iptables/` holds the
//! same protection as boot-time files, so the ports are closed before the daemon starts.
//!
//! Limits, said plainly:
//! - NAT, routing and forward-all rules depend on the daemon for expiry: after a crash they stay
//!   until the daemon's next start (whose `prepare` drops them, their deadlines having passed).
//! - The forward accept covers the client-to-internal direction of the translated flow; replies,
//!   and forwarded connections after the window, pass by the admin's own FORWARD policy (an
//!   `ESTABLISHED,RELATED` accept, as fwknop also assumes).
//! - Without a grant `destination`, DNAT and REDIRECT apply only to traffic addressed to this
//!   host (`-m addrtype --dst-type LOCAL`), not to the client's traffic routed through it.
//! - A plain forward-all grant (`Access::All`, no NAT) is a tagged accept rule, not a set entry.
//!
//! # Configuration
//!
//! ```toml
//! [firewall.iptables]
//! protect = ["tcp/22"]     # closed except for granted sources (IPv4 and IPv6)
//! variant = "auto"         # or "nft" / "legacy": which iptables binaries
//! chain_prefix = "SPA"     # SPA_INPUT, ...; sets spa4, spa6, spa4d, spa6d
//! ```
//!
//! [`Backend::list`] reports every set entry and every rule in our chains: tagged ones with
//! their grant id and deadline, the fixed ones (protection, set matches) without.
//!
//! # Inspecting
//!
//! ```text
//! iptables -S SPA_INPUT;  iptables -t nat -S SPA_PREROUTING;  ip6tables -S SPA_INPUT
//! ipset list spa4;  ipset list spa6
//! ```
//! (With `variant = "legacy"` use `iptables-legacy`, with `"nft"` `iptables-nft`.)
//!
//! # Removing by hand
//!
//! ```text
//! for t in iptables ip6tables; do
//!   $t -D INPUT -j SPA_INPUT; $t -D FORWARD -j SPA_FORWARD
//!   $t -t nat -D PREROUTING -j SPA_PREROUTING; $t -t nat -D POSTROUTING -j SPA_POSTROUTING
//!   $t -F SPA_INPUT; $t -X SPA_INPUT; $t -F SPA_FORWARD; $t -X SPA_FORWARD
//!   $t -t nat -F SPA_PREROUTING; $t -t nat -X SPA_PREROUTING
//!   $t -t nat -F SPA_POSTROUTING; $t -t nat -X SPA_POSTROUTING
//! done
//! for s in spa4 spa6 spa4d spa6d; do ipset destroy $s; done
//! ```
//!
//! # Why not fwknop's way
//!
//! fwknopd runs about five processes per rule (list, create, two checks, insert), expires by
//! re-listing chains (and, through a bug, every loop: fwknop #270), duplicates rules on each
//! re-knock (#158), has no IPv6 (#1), breaks where legacy and nft rules meet (#290), and adds
//! `--to-ports` to MASQUERADE. Here: batches, kernel timeouts, re-knock = re-time the same
//! entry or replace the same rule, ip6tables for IPv6, one variant chosen once, plain
//! MASQUERADE.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use spa_backends::{Backend, BackendDescriptor, BackendError, Capabilities, Grant, GrantId, Owned};

pub mod config;
mod exec;
pub mod render;

pub use config::{Config, Variant};

use exec::{LOCK_WAIT_SECS, Runner};
use render::{Element, Family, Names, Plan, Rule, SaveDump, TimedElement};

inventory::submit! {
    BackendDescriptor {
        name: "iptables",
        description: "iptables/ip6tables + ipset (nft or legacy): own SPA_* chains, timed sets, tagged NAT rules",
        create: IptablesBackend::from_table,
    }
}

/// Longest ipset timeout (seconds) the kernel accepts (about 24 days). A plain grant longer
/// than that loses its set entry early: it closes too soon, never stays open too long.
const MAX_SET_TIMEOUT: u64 = 2_147_483;

/// How often `ipset destroy` is retried at teardown: iptables-nft may release its reference to
/// a set a moment after the rule using it is gone.
const DESTROY_TRIES: u32 = 20;

/// The backend. See the module documentation for what it creates.
#[derive(Debug)]
pub struct IptablesBackend {
    config: Config,
    names: Names,
    runner: Runner,
    /// The variant in use, once resolved (at the first call that touches the firewall).
    resolved: Option<Variant>,
    /// Grants applied by this process, with what each put in.
    applied: BTreeMap<GrantId, (Grant, Plan)>,
}

impl IptablesBackend {
    /// Builds it from `[firewall.iptables]`.
    pub fn from_table(table: &toml::Table) -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(Self::new(Config::from_table(table)?)))
    }

    /// Builds it from a checked configuration.
    pub fn new(config: Config) -> Self {
        Self::with_command_prefix(config, Vec::new())
    }

    /// Builds it so that every program runs as `prefix... program args...`. For tests, which
    /// run everything through `ip netns exec <ns>`; not reachable from the configuration.
    #[doc(hidden)]
    pub fn with_command_prefix(config: Config, prefix: Vec<String>) -> Self {
        let names = Names::new(&config.chain_prefix);
        Self { config, names, runner: Runner::new(prefix), resolved: None, applied: BTreeMap::new() }
    }

    /// Processes started so far (for measurements).
    #[doc(hidden)]
    pub fn exec_count(&self) -> u64 {
        self.runner.execs()
    }

    /// The variant in use, once the first call resolved `auto`.
    pub fn variant(&self) -> Option<Variant> {
        self.resolved
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// Picks the binaries once: the configured ones, or for `auto` the variant that already
    /// holds rules; if neither or both do, the one `iptables -V` (the system default) names.
    fn variant_suffix(&mut self) -> Result<&'static str, BackendError> {
        if self.resolved.is_none() {
            let v = match self.config.variant {
                Variant::Auto => self.detect()?,
                v => v,
            };
            self.resolved = Some(v);
        }
        self.resolved
            .and_then(Variant::suffix)
            .ok_or(BackendError::Unsupported("an unresolved iptables variant"))
    }

    fn detect(&mut self) -> Result<Variant, BackendError> {
        let mut in_use = |v: Variant| -> bool {
            let prog = format!("iptables-{}-save", v.suffix().unwrap_or_default());
            // A missing binary or a kernel without that subsystem means: not in use.
            self.runner.run(&prog, &[], "").is_ok_and(|out| render::parse_save(&out).in_use())
        };
        match (in_use(Variant::Nft), in_use(Variant::Legacy)) {
            (true, false) => return Ok(Variant::Nft),
            (false, true) => return Ok(Variant::Legacy),
            _ => {}
        }
        let out = self.runner.run("iptables", &["-V"], "")?;
        if out.contains("nf_tables") {
            Ok(Variant::Nft)
        } else if out.contains("legacy") {
            Ok(Variant::Legacy)
        } else {
            Err(BackendError::Parse { program: "iptables -V".into(), detail: out.trim().to_owned() })
        }
    }

    fn save(&mut self, family: Family) -> Result<SaveDump, BackendError> {
        let prog = format!("{}-{}-save", family.program(), self.variant_suffix()?);
        Ok(render::parse_save(&self.runner.run(&prog, &[], "")?))
    }

    fn restore(&mut self, family: Family, text: &str) -> Result<(), BackendError> {
        if text.is_empty() {
            return Ok(());
        }
        let prog = format!("{}-{}-restore", family.program(), self.variant_suffix()?);
        let wait = format!("--wait={LOCK_WAIT_SECS}");
        self.runner.run(&prog, &["--noflush", &wait], text).map(drop)
    }

    fn ipset(&mut self, text: &str) -> Result<(), BackendError> {
        if text.is_empty() {
            return Ok(());
        }
        self.runner.run("ipset", &["-exist", "restore"], text).map(drop)
    }

    /// The grant (other than `except`) with the latest deadline that also holds `e`.
    fn holder(&self, e: &Element, except: Option<GrantId>) -> Option<(GrantId, u64)> {
        self.applied
            .iter()
            .filter(|(id, (_, p))| Some(**id) != except && p.elements.contains(e))
            .map(|(id, (g, _))| (*id, g.deadline))
            .max_by_key(|(_, d)| *d)
    }

    fn timed(e: &Element, holder: (GrantId, u64), now: u64) -> TimedElement {
        let timeout = holder.1.saturating_sub(now).clamp(1, MAX_SET_TIMEOUT);
        TimedElement { element: e.clone(), timeout, tag: holder }
    }

    /// Set changes that remove `gone` (entries of `id` no longer wanted), keeping each entry
    /// another grant still holds, re-timed to that grant.
    fn release(&self, id: GrantId, gone: &[Element], now: u64) -> (Vec<TimedElement>, Vec<Element>) {
        let (mut keep, mut del) = (Vec::new(), Vec::new());
        for e in gone {
            match self.holder(e, Some(id)).filter(|(_, d)| *d > now) {
                Some(h) => keep.push(Self::timed(e, h, now)),
                None => del.push(e.clone()),
            }
        }
        (keep, del)
    }

    /// Deletes the rules tagged with `id` that the firewall holds (for grants this process
    /// does not know, or whose rules changed behind its back).
    fn delete_tagged(&mut self, family: Family, id: GrantId) -> Result<(), BackendError> {
        let dump = self.save(family)?;
        let rules: Vec<Rule> = dump
            .ours(&self.names)
            .filter(|(_, spec)| render::parse_tag(spec).is_some_and(|(i, _)| i == id))
            .map(|(hook, spec)| Rule { family, hook, spec: spec.to_owned() })
            .collect();
        let text = render::change_rules(&self.names, family, &rules, &[]);
        self.restore(family, &text)
    }

    /// Replaces `old` rules with `new` ones of grant `id` in one batch per family; if some old
    /// rule is no longer there, deletes by tag and inserts.
    fn swap_rules(&mut self, id: GrantId, old: &[Rule], new: &[Rule]) -> Result<(), BackendError> {
        for family in Family::ALL {
            let text = render::change_rules(&self.names, family, old, new);
            if let Err(e) = self.restore(family, &text) {
                if !old.iter().any(|r| r.family == family) {
                    return Err(e);
                }
                self.delete_tagged(family, id)?;
                let text = render::change_rules(&self.names, family, &[], new);
                self.restore(family, &text)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, g: &Grant, now: u64) -> Result<(), BackendError> {
        let new = render::plan(&self.names, g)?;
        let old = self.applied.get(&g.id).map(|(_, p)| p.clone()).unwrap_or_default();
        // Sets: every entry of the grant gets the latest deadline of all grants holding it.
        self.applied.insert(g.id, (g.clone(), new.clone()));
        let mut add: Vec<TimedElement> = new
            .elements
            .iter()
            .map(|e| {
                let h = self.holder(e, None).unwrap_or((g.id, g.deadline));
                Self::timed(e, h, now)
            })
            .collect();
        let gone: Vec<Element> = old.elements.iter().filter(|e| !new.elements.contains(e)).cloned().collect();
        let (keep, del) = self.release(g.id, &gone, now);
        add.extend(keep);
        self.ipset(&render::change_sets(&add, &del))?;
        self.swap_rules(g.id, &old.rules, &new.rules)
    }
}

impl Backend for IptablesBackend {
    fn name(&self) -> &str {
        "iptables"
    }

    fn capabilities(&self) -> Capabilities {
        // Plain grants expire in the kernel (ipset timeouts), NAT rules do not: the daemon
        // must keep its deadline queue for this backend.
        Capabilities { nat: true, ipv6: true, native_expiry: false }
    }

    fn prepare(&mut self, live: &[Grant]) -> Result<(), BackendError> {
        self.variant_suffix()?;
        let now = Self::now();
        let mut applied = BTreeMap::new();
        for g in live.iter().filter(|g| g.deadline > now) {
            applied.insert(g.id, (g.clone(), render::plan(&self.names, g)?));
        }
        self.applied = applied;
        let mut elements: BTreeMap<Element, (GrantId, u64)> = BTreeMap::new();
        for (id, (g, p)) in &self.applied {
            for e in &p.elements {
                let h = elements.entry(e.clone()).or_insert((*id, g.deadline));
                if g.deadline > h.1 {
                    *h = (*id, g.deadline);
                }
            }
        }
        let timed: Vec<TimedElement> = elements.iter().map(|(e, h)| Self::timed(e, *h, now)).collect();
        // Sets first: the rules refer to them.
        self.ipset(&render::prepare_sets(&self.names, &timed))?;
        let rules: Vec<Rule> = self.applied.values().flat_map(|(_, p)| p.rules.iter().cloned()).collect();
        for family in Family::ALL {
            let current = self.save(family)?;
            let text = render::prepare_rules(&self.names, &self.config, family, &rules, &current);
            self.restore(family, &text)?;
        }
        Ok(())
    }

    fn grant(&mut self, grant: &Grant) -> Result<(), BackendError> {
        let now = Self::now();
        if grant.deadline <= now {
            // An ipset timeout of 0 would mean "forever": a grant already over is a revoke.
            return self.revoke(grant);
        }
        let before = self.applied.get(&grant.id).cloned();
        let result = self.apply(grant, now);
        if result.is_err() {
            match before {
                Some(b) => self.applied.insert(grant.id, b),
                None => self.applied.remove(&grant.id),
            };
        }
        result
    }

    fn revoke(&mut self, grant: &Grant) -> Result<(), BackendError> {
        let now = Self::now();
        let (known, plan) = match self.applied.remove(&grant.id) {
            Some((_, p)) => (true, p),
            None => (false, render::plan(&self.names, grant)?),
        };
        let (keep, del) = self.release(grant.id, &plan.elements, now);
        self.ipset(&render::change_sets(&keep, &del))?;
        if known {
            self.swap_rules(grant.id, &plan.rules, &[])
        } else if plan.rules.is_empty() {
            Ok(())
        } else {
            // Not applied by this process: its rules may carry another deadline; find them by id.
            self.delete_tagged(Family::of(grant.source), grant.id)
        }
    }

    fn list(&mut self) -> Result<Vec<Owned>, BackendError> {
        let mut owned = Vec::new();
        let sets = render::parse_ipset_save(&self.names, &self.runner.run("ipset", &["save"], "")?);
        for (e, tag) in sets.elements {
            owned.push(Owned {
                id: tag.map(|t| t.0),
                entry: format!("ipset {} {}", e.set, e.text),
                deadline: tag.map(|t| t.1),
            });
        }
        for family in Family::ALL {
            let dump = self.save(family)?;
            for (hook, spec) in dump.ours(&self.names) {
                let tag = render::parse_tag(spec);
                owned.push(Owned {
                    id: tag.map(|t| t.0),
                    entry: format!(
                        "{} -t {} -A {} {spec}",
                        family.program(),
                        hook.table(),
                        self.names.chain(hook)
                    ),
                    deadline: tag.map(|t| t.1),
                });
            }
        }
        Ok(owned)
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.applied.clear();
        let mut first_error = None;
        for family in Family::ALL {
            let result = self.save(family).and_then(|current| {
                let text = render::teardown_rules(&self.names, &current);
                self.restore(family, &text)
            });
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        let mut tries = 0;
        loop {
            let result = self
                .runner
                .run("ipset", &["save"], "")
                .map(|out| render::parse_ipset_save(&self.names, &out).sets)
                .and_then(|sets| self.ipset(&render::teardown_sets(&sets)));
            match result {
                Ok(()) => break,
                Err(_) if tries < DESTROY_TRIES => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    break;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn options_are_parsed_and_checked() {
        let c =
            Config::from_table(&table("protect = [\"tcp/22\"]\nvariant = \"legacy\"\nchain_prefix = \"KN\""))
                .unwrap();
        assert_eq!(c.variant, Variant::Legacy);
        assert_eq!(c.protect, vec!["tcp/22".parse().unwrap()]);
        assert_eq!(Config::from_table(&table("")).unwrap(), Config::default());
        let unknown = Config::from_table(&table("protekt = []")).unwrap_err().to_string();
        assert_eq!(unknown, "invalid backend configuration");
        for bad in [
            "chain_prefix = \"\"",
            "chain_prefix = \"A B\"",
            "chain_prefix = \"ABCDEFGHIJKLMNOPQ\"",
            "variant = \"both\"",
            "protect = [\"tcp/0\"]",
        ] {
            assert!(Config::from_table(&table(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn registered_as_iptables() {
        let r = spa_backends::Registry::collect().unwrap();
        assert!(r.names().contains(&"iptables"));
        let b = r.create("iptables", &table("protect = [\"tcp/22\"]")).unwrap();
        assert_eq!(b.name(), "iptables");
        assert_eq!(b.capabilities(), Capabilities { nat: true, ipv6: true, native_expiry: false });
    }
}

#[cfg(test)]
mod boot_files {
    //! The boot-time files in `conf/iptables/` must be exactly what `prepare(&[])` renders for
    //! `protect = ["tcp/22"]` on empty tables, so that spad, starting after them, finds its
    //! chains and hooks already in place and only refills them.

    use super::*;

    fn without_comments(text: &str) -> String {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn expected(family: Family) -> String {
        let config = Config { protect: vec!["tcp/22".parse().unwrap()], ..Config::default() };
        render::prepare_rules(&Names::new("SPA"), &config, family, &[], &SaveDump::default())
    }

    #[test]
    fn boot_rules_match_the_renderer() {
        assert_eq!(
            without_comments(include_str!("../../conf/iptables/spa-protect.rules.v4")),
            expected(Family::V4)
        );
        assert_eq!(
            without_comments(include_str!("../../conf/iptables/spa-protect.rules.v6")),
            expected(Family::V6)
        );
    }

    #[test]
    fn boot_sets_match_the_renderer() {
        let creates: String = render::prepare_sets(&Names::new("SPA"), &[])
            .lines()
            .filter(|l| l.starts_with("create ") && !l.contains("-tmp "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(without_comments(include_str!("../../conf/iptables/spa-protect.ipset")), creates);
    }
}

//! The `iptables` backend: iptables/ip6tables plus ipset, on iptables-nft or iptables-legacy.
//!
//! # What it creates (prefix `SPA`, the default)
//!
//! In both the IPv4 and the IPv6 tables, four chains, each jumped to once from its built-in
//! chain (inserted first when [`Backend::prepare`] finds no jump):
//!
//! | chain | table | hooked from | holds |
//! |---|---|---|---|
//! | `SPA_INPUT` | filter | `INPUT` | per-grant redirect/forward-all accepts; then, per protected port, an `ESTABLISHED,RELATED` accept; then `-m set --match-set spa4 src,dst -j ACCEPT` (and `spa4d src,dst,dst`); then one `DROP` per protected port |
//! | `SPA_FORWARD` | filter | `FORWARD` | per-grant accepts for DNAT-translated (`--ctstate DNAT --ctorigdstport`) or routed flows |
//! | `SPA_PREROUTING` | nat | `PREROUTING` | per-grant DNAT / REDIRECT |
//! | `SPA_POSTROUTING` | nat | `POSTROUTING` | per-grant SNAT / MASQUERADE |
//!
//! Four ipsets with per-member timeouts and comments: `spa4`, `spa6` (`hash:ip,port`: source,
//! proto:port) and `spa4d`, `spa6d` (`hash:ip,port,ip`: also the local destination address).
//!
//! # What a grant becomes, and who decides when
//!
//! What a grant needs is the pure [`model::expand`]: plain port grants are set members
//! (`<source>,tcp:22`), everything ipset cannot express (DNAT, REDIRECT, SNAT, forwarding,
//! forward-all) is a rule. When an entry is put, re-timed or removed is decided by the grant
//! ledger of `spa-backends` (re-knocks, entries shared by several grants, expiry, retries of
//! failed closes), never here; this crate only renders and applies its changes, with the time
//! it is given (it never reads the clock).
//!
//! Every member and rule carries the tag `spa:id=<grant id>:exp=<unix deadline>` (an ipset
//! comment, a `-m comment`), written from the grant the ledger says holds it. The tag is not
//! part of the entry: a re-knock re-times the same member (`ipset -exist add` updates timeout
//! and comment) and replaces each rule by itself with the new tag. Set members get an ipset
//! timeout, so the **kernel** removes them at the deadline, with or without the daemon. Rules
//! do not expire by themselves: the ledger removes them at the deadline, and after a restart
//! [`Backend::prepare`] rebuilds the chains from the daemon's record, so a stale rule never
//! outlives a restart. Hence `native_expiry` is false, although plain grants expire in the
//! kernel too.
//!
//! Every change is one `ipset -exist restore` and/or one `iptables-restore --noflush` per
//! address family (atomic per table), never one process per rule; a plain grant, its re-knock
//! and its revoke cost one process each, its expiry none. A rule is deleted by its exact text
//! (with the tag it was put with); if that fails (the rule was deleted or changed by hand),
//! the chain is read once and every copy of the rule, whatever its tag, is deleted instead, so
//! removing what is gone is not an error and nothing is left twice. The set step and the rule
//! step are separate programs, so a change is not atomic as a whole (`atomic_apply` is
//! false; the ledger undoes a half-made grant). Nothing outside our chains and sets is
//! touched, except the four jump rules.
//!
//! # Source ports
//!
//! A grant bound to the client's source port (knock-and-connect with the modern format) matches
//! it in every rule (`-p tcp -m tcp --sport 40000 --dport 22`), so only that connection gets in,
//! not the other hosts behind the client's NAT address. ipset has no type holding two ports, so
//! such a grant's plain ports are tagged `SPA_INPUT` accepts rather than set members (the ledger
//! removes them at the deadline; the connection, once established, stays through conntrack where
//! the host's ruleset accepts established traffic).
//!
//! # Failing closed, and tampering
//!
//! The `DROP`s of protected ports stay when the daemon stops or crashes; only
//! [`Backend::teardown`] (an explicit admin action) removes them. `conf/iptables/` holds the
//! same protection as boot-time files, so the ports are closed before the daemon starts.
//!
//! [`Backend::check`] (the daemon calls it about once a second, and after a failed change)
//! looks for what an admin's `iptables -F`, a firewall reload or a flush script does to us:
//! a chain gone in either family, a built-in chain that no longer jumps to ours (or does twice),
//! a static rule of `SPA_INPUT` gone, changed or out of order, a rule spad did not make in one
//! of our chains, a set gone or of another type. It reports the first thing found
//! (`ip6tables chain SPA_INPUT is gone`, `iptables INPUT no longer jumps to SPA_INPUT`,
//! `iptables SPA_INPUT: the DROP for tcp/22 is gone`), and the daemon rebuilds everything with
//! every live grant (see [`check`] for the rules). Rules that others add elsewhere, before our
//! jump included, are not tamper.
//!
//! A full look lists both families' tables and the sets' headers (three short processes). It
//! runs at most once per `check_interval_ms` (default 2 s), and right after a failed change.
//! With iptables-nft most looks are skipped: each check first asks the kernel for the nftables
//! ruleset generation over netlink (no process); if it moved by exactly the transactions of
//! our own `iptables-restore` runs since the last look, nobody else committed anything, so
//! nothing of ours can have changed. With iptables-legacy there is no such counter and every
//! due check lists.
//!
//! Not detected: set members added, removed or flushed by hand (flushed grants simply close:
//! fail closed; `spad list --firewall` shows the sets beside the ledger), a tagged rule
//! changed into another tagged rule, and rules placed before our jump in a built-in chain.
//! A set cannot be destroyed while our rules use it.
//!
//! # Limits, said plainly
//!
//! - NAT, routing and forward-all rules depend on the daemon for expiry: after a crash they
//!   stay until the daemon's next start (whose `prepare` drops them, their deadlines having
//!   passed).
//! - The forward accept covers the client-to-internal direction of the translated flow;
//!   replies, and forwarded connections after the window, pass by the admin's own FORWARD
//!   policy (an `ESTABLISHED,RELATED` accept, as fwknop also assumes).
//! - Without a grant `destination`, DNAT and REDIRECT apply only to traffic addressed to this
//!   host (`-m addrtype --dst-type LOCAL`), not to the client's traffic routed through it.
//! - A plain forward-all grant (`Access::All`, no NAT) is a tagged accept rule, not a set
//!   member.
//! - Two grants of one source whose rules match the same packets with different targets (a
//!   DNAT of one port to two hosts) cannot both be live: the second is refused, never allowed
//!   to take the first's traffic.
//! - An ipset timeout is at most 2,147,483 s (about 24 days): a longer plain grant closes
//!   early, never late.
//!
//! # Configuration
//!
//! ```toml
//! [firewall.iptables]
//! protect = ["tcp/22"]       # closed except for granted sources (IPv4 and IPv6)
//! variant = "auto"           # or "nft" / "legacy": which iptables binaries
//! chain_prefix = "SPA"       # SPA_INPUT, ...; sets spa4, spa6, spa4d, spa6d
//! check_interval_ms = 2000   # least time between two full tamper looks
//! ```
//!
//! [`Backend::observe`] reports every set member and every rule in our chains: tagged ones
//! with their grant id and deadline (in the words of [`model::Item`]'s `Display`:
//! `ipset spa4 192.0.2.1,tcp:22`, `iptables -t nat -A SPA_PREROUTING -s 192.0.2.1/32 ...`,
//! without the tag), any untagged rule other than the static ones without a grant. The static
//! rules are configuration, not grants, and are not listed.
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
//! Stop spad first: otherwise its tamper check puts everything back within seconds.
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
//! member or replace the same rule, ip6tables for IPv6, one variant chosen once, plain
//! MASQUERADE.

use spa_backends::{
    Backend, BackendDescriptor, BackendError, Capabilities, Change, CommandFailure, Grant, Health, Held,
    Observed,
};

pub mod check;
pub mod config;
mod exec;
pub mod model;
pub mod preflight;
pub mod render;

pub use config::{Config, Variant};
pub use model::Item;

use exec::{LOCK_WAIT_SECS, Runner};
use model::{Family, Names};
use render::{TaggedRule, TimedMember};

inventory::submit! {
    BackendDescriptor {
        name: "iptables",
        description: "iptables/ip6tables + ipset (nft or legacy): own SPA_* chains, timed sets, tagged NAT rules",
        create: spa_backends::create::<IptablesBackend>,
        preflight: Some(preflight::preflight),
    }
}

/// How often `ipset destroy` is retried at teardown: iptables-nft may release its reference to
/// a set a moment after the rule using it is gone.
const DESTROY_TRIES: u32 = 20;

/// The nftables ruleset generation as far as our tamper check follows it (iptables-nft only).
#[derive(Debug, Clone, Copy)]
struct Generation {
    /// At the last full look that found everything intact (or at the end of `prepare`).
    seen: u32,
    /// What our own `iptables-restore` runs moved it by since.
    ours: u32,
}

/// What the tamper check knows; reset by `prepare`, gone after `teardown`.
#[derive(Debug, Default)]
struct Watch {
    /// iptables-nft: the generation reference; `None` when unknown (legacy, or a read failed).
    generation: Option<Generation>,
    /// When the last full look found everything intact; `None`: look at the next check.
    looked: Option<u64>,
    /// Something may have changed that the generation cannot vouch for (a change failed, or
    /// someone else committed while we did): look at the next check.
    dirty: bool,
}

/// The backend. See the crate documentation for what it creates.
#[derive(Debug)]
pub struct IptablesBackend {
    config: Config,
    names: Names,
    runner: Runner,
    /// The variant in use, once resolved (at the first call that touches the firewall).
    resolved: Option<Variant>,
    /// For tests: the named network namespace the programs run in (`ip netns exec NS`), where
    /// the generation socket must be opened too.
    netns: Option<String>,
    /// The netlink socket for the ruleset generation (iptables-nft), opened at prepare.
    generation: Option<spa_backends::nfgen::Generation>,
    watch: Option<Watch>,
}

impl IptablesBackend {
    /// Builds it from a checked configuration.
    pub fn new(config: Config) -> Self {
        Self::with_command_prefix(config, Vec::new())
    }

    /// Builds it so that every program runs as `prefix... program args...`. For tests, which
    /// run everything through `ip netns exec <ns>`; not reachable from the configuration.
    #[doc(hidden)]
    pub fn with_command_prefix(config: Config, prefix: Vec<String>) -> Self {
        let names = Names::new(&config.chain_prefix);
        let netns = match prefix.as_slice() {
            [ip, netns, exec, ns, ..] if ip == "ip" && netns == "netns" && exec == "exec" => Some(ns.clone()),
            _ => None,
        };
        Self {
            config,
            names,
            runner: Runner::new(prefix),
            resolved: None,
            netns,
            generation: None,
            watch: None,
        }
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
            Err(BackendError::command("iptables -V", CommandFailure::Output(out.trim().to_owned())))
        }
    }

    fn save(&mut self, family: Family) -> Result<render::SaveDump, BackendError> {
        let prog = format!("{}-{}-save", family.program(), self.variant_suffix()?);
        Ok(render::parse_save(&self.runner.run(&prog, &[], "")?))
    }

    /// The ruleset generation now, if we follow it (iptables-nft).
    fn read_generation(&mut self) -> Option<u32> {
        self.generation.as_mut().and_then(|g| g.read().ok())
    }

    /// Runs one `iptables-restore --noflush`. With iptables-nft, counts the transactions it
    /// committed (the generation before and after), so the tamper check does not mistake
    /// them for someone else's.
    fn restore(&mut self, family: Family, text: &str) -> Result<(), BackendError> {
        if text.is_empty() {
            return Ok(());
        }
        let prog = format!("{}-{}-restore", family.program(), self.variant_suffix()?);
        let wait = format!("--wait={LOCK_WAIT_SECS}");
        let following = self.watch.as_ref().is_some_and(|w| w.generation.is_some());
        let before = if following { self.read_generation() } else { None };
        let result = self.runner.run(&prog, &["--noflush", &wait], text).map(drop);
        if following {
            let after = self.read_generation();
            if let Some(w) = self.watch.as_mut() {
                match (w.generation.as_mut(), before, after) {
                    (Some(g), Some(b), Some(a)) => {
                        // Someone else committed since the last look: only a listing can tell.
                        if b != g.seen.wrapping_add(g.ours) {
                            w.dirty = true;
                        }
                        g.ours = g.ours.wrapping_add(a.wrapping_sub(b));
                    }
                    _ => w.dirty = true,
                }
            }
        }
        result
    }

    fn ipset(&mut self, text: &str) -> Result<(), BackendError> {
        if text.is_empty() {
            return Ok(());
        }
        self.runner.run("ipset", &["-exist", "restore"], text).map(drop)
    }

    fn apply_changes(&mut self, changes: &[Change<'_, Item>], now: u64) -> Result<(), BackendError> {
        self.ipset(&render::set_changes(changes, now))?;
        for family in Family::ALL {
            let text = render::rule_changes(family, changes);
            if text.is_empty() {
                continue;
            }
            if self.restore(family, &text).is_err() {
                // A rule to delete is not there as tagged (deleted or changed by hand), or the
                // batch failed for another reason: read the chains and do it from what they
                // hold. If our chains are gone this fails too, and the gate rebuilds them.
                let current = self.save(family)?;
                let text = render::rule_fallback(&self.names, family, changes, &current);
                self.restore(family, &text)?;
            }
        }
        Ok(())
    }

    /// Lists both families' tables and the sets' headers, and says what is wrong, if anything.
    fn look(&mut self) -> Result<Option<String>, BackendError> {
        for family in Family::ALL {
            let dump = self.save(family)?;
            if let Some(d) = check::chains(&self.names, &self.config, family, &dump) {
                return Ok(Some(d));
            }
        }
        let listing = self.runner.run("ipset", &["list", "-t"], "")?;
        Ok(check::sets(&self.names, &check::parse_headers(&listing)))
    }
}

impl Backend for IptablesBackend {
    type Entry = Item;

    fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
        Ok(Self::new(Config::from_table(table)?))
    }

    fn name(&self) -> &'static str {
        "iptables"
    }

    fn capabilities(&self) -> Capabilities {
        // Plain grants expire in the kernel (ipset timeouts), NAT rules do not; the set and
        // the rule step are separate programs.
        Capabilities {
            nat: true,
            ipv6: true,
            native_expiry: false,
            exact_prepare: true,
            atomic_apply: false,
            source_port: true,
        }
    }

    fn entries(&self, grant: &Grant) -> Result<Vec<Item>, BackendError> {
        model::expand(&self.names, grant)
    }

    fn prepare(&mut self, live: &[Held<'_, Item>], now: u64) -> Result<(), BackendError> {
        let suffix = self.variant_suffix()?;
        self.watch = None;
        let live: Vec<&Held<'_, Item>> = live.iter().filter(|h| h.until > now).collect();
        let members: Vec<TimedMember<'_>> = live
            .iter()
            .filter_map(|h| match h.entry {
                Item::Member(m) => Some((m, render::tag_of(h), render::timeout(h.until, now))),
                Item::Rule(_) => None,
            })
            .collect();
        let rules: Vec<TaggedRule<'_>> = live
            .iter()
            .filter_map(|h| match h.entry {
                Item::Rule(r) => Some((r, render::tag_of(h))),
                Item::Member(_) => None,
            })
            .collect();
        // Sets first: the rules refer to them.
        self.ipset(&render::prepare_sets(&self.names, &members))?;
        for family in Family::ALL {
            let current = self.save(family)?;
            let text = render::prepare_rules(&self.names, &self.config, family, &rules, &current);
            self.restore(family, &text)?;
        }
        // The tamper check's reference: with iptables-nft the generation now; either way a
        // full look at the next check. A socket that cannot be opened only costs listings.
        if suffix == "nft" && self.generation.is_none() {
            self.generation = spa_backends::nfgen::Generation::open(self.netns.as_deref()).ok();
        }
        let generation = self.read_generation().map(|seen| Generation { seen, ours: 0 });
        self.watch = Some(Watch { generation, looked: None, dirty: false });
        Ok(())
    }

    fn apply(&mut self, changes: &[Change<'_, Item>], now: u64) -> Result<(), BackendError> {
        let result = self.apply_changes(changes, now);
        if result.is_err()
            && let Some(w) = self.watch.as_mut()
        {
            w.dirty = true;
        }
        result
    }

    fn check(&mut self, now: u64) -> Result<Health, BackendError> {
        let Some(w) = self.watch.as_ref() else {
            return Ok(Health::Damaged(format!("the {} chains were never set up", self.names.chain_glob())));
        };
        let (dirty, looked, reference) = (w.dirty, w.looked, w.generation);
        // iptables-nft only (no socket otherwise); a failed read just means a listing.
        let generation = self.read_generation();
        if !dirty
            && looked.is_some()
            && let (Some(now_gen), Some(r)) = (generation, reference)
            && now_gen == r.seen.wrapping_add(r.ours)
        {
            // Only our own transactions since the last look.
            if let Some(w) = self.watch.as_mut() {
                w.generation = Some(Generation { seen: now_gen, ours: 0 });
            }
            return Ok(Health::Intact);
        }
        let interval = self.config.check_interval_ms.div_ceil(1000);
        let due = looked.is_none_or(|t| now < t || now >= t.saturating_add(interval));
        if !dirty && !due {
            return Ok(Health::Intact);
        }
        if let Some(damage) = self.look()? {
            return Ok(Health::Damaged(damage));
        }
        if let Some(w) = self.watch.as_mut() {
            w.generation = generation.map(|seen| Generation { seen, ours: 0 });
            w.looked = Some(now);
            w.dirty = false;
        }
        Ok(Health::Intact)
    }

    fn observe(&mut self, now: u64) -> Result<Vec<Observed>, BackendError> {
        self.variant_suffix()?;
        let sets = render::parse_ipset_save(&self.names, &self.runner.run("ipset", &["save"], "")?);
        let mut out = render::observed_members(&sets, now);
        for family in Family::ALL {
            let dump = self.save(family)?;
            out.extend(render::observed_rules(&self.names, &self.config, family, &dump));
        }
        Ok(out)
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.watch = None;
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
        let c = Config::from_table(&table(
            "protect = [\"tcp/22\"]\nvariant = \"legacy\"\nchain_prefix = \"KN\"\ncheck_interval_ms = 5000",
        ))
        .unwrap();
        assert_eq!(c.variant, Variant::Legacy);
        assert_eq!(c.protect, vec!["tcp/22".parse().unwrap()]);
        assert_eq!(c.check_interval_ms, 5000);
        assert_eq!(Config::from_table(&table("")).unwrap(), Config::default());
        assert_eq!(Config::default().check_interval_ms, 2000);
        let unknown = Config::from_table(&table("protekt = []")).unwrap_err().to_string();
        assert_eq!(unknown, "invalid backend configuration");
        for bad in [
            "chain_prefix = \"\"",
            "chain_prefix = \"A B\"",
            "chain_prefix = \"ABCDEFGHIJKLMNOPQ\"",
            "variant = \"both\"",
            "protect = [\"tcp/0\"]",
            "check_interval_ms = -1",
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
        assert_eq!(
            b.capabilities(),
            Capabilities {
                nat: true,
                ipv6: true,
                native_expiry: false,
                exact_prepare: true,
                atomic_apply: false,
                source_port: true
            }
        );
        assert!(r.create("iptables", &table("chain_prefix = \"A-B\"")).is_err());
    }

    #[test]
    fn a_backend_never_set_up_is_damaged_and_tests_find_their_namespace() {
        let mut b = IptablesBackend::new(Config::default());
        assert!(matches!(b.check(0), Ok(Health::Damaged(d)) if d == "the SPA_* chains were never set up"));
        let prefix = ["ip", "netns", "exec", "lab-1", "x"].map(String::from).to_vec();
        assert_eq!(
            IptablesBackend::with_command_prefix(Config::default(), prefix).netns.as_deref(),
            Some("lab-1")
        );
    }
}

#[cfg(test)]
mod boot_files {
    //! The boot-time files in `conf/iptables/` must be exactly what `prepare(&[])` renders for
    //! `protect = ["tcp/22"]` on empty tables, so that spad, starting after them, finds its
    //! chains and hooks already in place and only refills them.

    use super::*;
    use render::SaveDump;

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

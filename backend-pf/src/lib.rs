//! The `pf` backend: PF on FreeBSD, OpenBSD and macOS, driven through `pfctl`.
//!
//! # What it creates
//!
//! Everything lives in one anchor (`spa` by default); nothing outside it is touched. The anchor
//! holds, loaded once at start (`pfctl -a spa -f -`):
//!
//! - one table per grantable port (`<spa_tcp_22>`), one for forward-all grants (`<spa_all>`),
//!   one per configured forward (`<spa_fwd_tcp_2222>`) and one per forward with source NAT
//!   (`<spa_snat_tcp_2222>`), all `persist`;
//! - per grantable port a `pass in quick ... from <spa_tcp_22> to self port 22 keep state`, a
//!   `pass in quick from <spa_all> to self keep state`, per forward an `rdr pass` (legacy
//!   syntax: FreeBSD, macOS) or a `pass in ... rdr-to` (OpenBSD) and, with `snat_interface`, a
//!   `nat` or `pass out ... nat-to`; then per protected port a `block drop in quick ... to self
//!   port 22`. Every filter rule carries a label `spa-...`.
//!
//! A grant adds its source to the tables of the rules it needs (`pfctl -a spa -t spa_tcp_22 -T
//! add 192.0.2.1`), its end deletes it: the rules never change for a grant. PF keeps a
//! connection's state once a `pass` rule created it, so connections made during the window
//! survive its end, as with conntrack; with `kill_states_on_revoke` a grant ended early (an
//! admin's revoke, a stop without `keep_grants_on_exit`) also runs `pfctl -k <source>`.
//!
//! # One process per change
//!
//! A change touching one table is one `pfctl -T add` or `-T delete`. PF's `-T` takes one table
//! per run, so a change touching several (a grant of `tcp/22,udp/53`, a forward with source
//! NAT) reloads the anchor in one run instead: the touched tables with their whole contents,
//! the others declared without a list, which pf.conf(5) says leaves them unchanged. The backend
//! keeps what it put in each table (it is the anchor's only writer) to write those lists.
//!
//! # Expiry
//!
//! PF tables have no per-entry timeout (`native_expiry` false): the ledger deletes each source
//! at its grant's deadline. After a crash, the next start's `prepare` loads exactly the live
//! grants, so nothing expired survives a restart. While spad is down nothing removes entries;
//! `conf/freebsd/spa-pf-expire` is a cron job that runs `pfctl -a spa -t <table> -T expire
//! <seconds>` on every table of the anchor as a safety net ("Delete addresses which had their
//! statistics cleared more than number seconds ago", pfctl(8); re-knocks do not reset that
//! clock, so choose it above the longest grant including re-knocks).
//!
//! # Hooking the anchor, and protection from boot
//!
//! pf.conf must evaluate the anchor. OpenBSD: `anchor "spa"`. FreeBSD and macOS: `anchor
//! "spa"`, plus `rdr-anchor "spa"` (and `nat-anchor "spa"` for source NAT) when forwards are
//! configured. With `load anchor "spa" from "/usr/local/etc/spad/pf-spa.conf"` (the file in
//! `conf/freebsd/`) the protected ports are closed from boot, before spad starts. `prepare` and
//! the tamper check look for the hooks in `pfctl -s rules` / `-s nat` and fail without them
//! (`require_hook`), since without them nothing in the anchor has any effect.
//!
//! # Source ports
//!
//! A grant bound to the client's source port (knock-and-connect with the modern format) is
//! refused with a clear error: the anchor's rules match whole-address tables, and widening
//! such a grant to the address would let in every host behind the client's NAT. (PF rules
//! can match `from A port P`, but that would be one anchor rule per grant; not done.)
//!
//! # Tampering
//!
//! [`Backend::check`] (at most every `check_interval_ms`, and after a failed change) lists the
//! main ruleset's hooks and the anchor's rules and tables: a hook gone, a rule of ours gone or
//! a stranger's rule in the anchor, a table gone, is reported and the daemon loads the anchor
//! again with every live grant. Not detected: addresses deleted from or added to the tables by
//! hand (`spad list --firewall` shows the tables beside the ledger).
//!
//! # Inspecting and removing by hand
//!
//! ```text
//! pfctl -a spa -s rules; pfctl -a spa -s nat; pfctl -a spa -s Tables; pfctl -a spa -t spa_tcp_22 -T show
//! pfctl -a spa -F rules; pfctl -a spa -F nat; pfctl -a spa -F Tables    # stop spad first
//! ```
//! (OpenBSD has no `-s nat`/`-F nat`: translation is in the filter rules.)
//!
//! # Configuration
//!
//! ```toml
//! [firewall.pf]
//! anchor = "spa"
//! ports = ["udp/1194"]            # grantable local ports
//! protect = ["tcp/22"]            # grantable, and closed to everyone else
//! kill_states_on_revoke = false
//! # syntax = "legacy"             # or "openbsd"; default: the system spad was built for
//! [[firewall.pf.forward]]
//! port = "tcp/2222"               # the port clients ask for (NAT_ACCESS ...,2222)
//! to = "192.168.77.10"
//! to_port = 22
//! interface = "em0"
//! snat_interface = "em1"          # optional: for stanzas with force_masquerade
//! ```
//!
//! Grants for ports or forwards the configuration does not list are refused (the anchor has no
//! rule for them), as are grants restricted to one local address (a stanza `destination`),
//! routed forwarding and local redirects.

use std::collections::BTreeSet;
use std::net::IpAddr;

use spa_backends::{
    Backend, BackendDescriptor, BackendError, Capabilities, Change, Grant, Health, Held, Observed,
};

pub mod config;
mod exec;
pub mod model;
pub mod preflight;
pub mod render;

pub use config::{Config, Forward, Syntax};
pub use model::{Member, Table};

use render::Contents;
use spa_backends::process::Tool;

inventory::submit! {
    BackendDescriptor {
        name: "pf",
        description: "PF (FreeBSD, OpenBSD, macOS): one anchor, granted sources in tables, rdr/nat forwards",
        create: spa_backends::create::<PfBackend>,
        preflight: Some(preflight::preflight),
    }
}

/// What the tamper check knows; reset by `prepare`, gone after `teardown`.
#[derive(Debug)]
struct Watch {
    /// When the last look found everything intact; `None`: look at the next check.
    looked: Option<u64>,
    /// A change failed: look at the next check whatever the interval.
    dirty: bool,
}

/// The backend. See the crate documentation for what it creates.
#[derive(Debug)]
pub struct PfBackend {
    config: Config,
    runner: Tool,
    /// What each table holds, as far as this backend put it there (it is the anchor's only
    /// writer); `None` until `prepare`.
    contents: Option<Contents>,
    watch: Option<Watch>,
}

impl PfBackend {
    /// Builds it from a checked configuration.
    pub fn new(config: Config) -> Self {
        Self::with_command_prefix(config, Vec::new())
    }

    /// Builds it so that pfctl runs as `prefix... pfctl args...`. For tests, which run the
    /// recording fake; not reachable from the configuration.
    #[doc(hidden)]
    pub fn with_command_prefix(config: Config, prefix: Vec<String>) -> Self {
        let runner = exec::pfctl(config.pfctl.clone(), prefix);
        Self { config, runner, contents: None, watch: None }
    }

    /// Processes started so far (for tests and measurements).
    #[doc(hidden)]
    pub fn exec_count(&self) -> u64 {
        self.runner.execs()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn run(&mut self, args: &[String], stdin: &str) -> Result<String, BackendError> {
        self.runner.run(args, stdin)
    }

    /// What is wrong with the hooks in the main ruleset, if anything.
    fn look_hooks(&mut self) -> Result<Option<String>, BackendError> {
        let main_rules = self.run(&render::main_listing_args("rules"), "")?;
        let main_nat = if render::has_translation(&self.config) {
            Some(self.run(&render::main_listing_args("nat"), "")?)
        } else {
            None
        };
        Ok(render::check_hooks(&self.config, &main_rules, main_nat.as_deref()))
    }

    /// Lists hooks, rules and tables, and says what is wrong, if anything.
    fn look(&mut self) -> Result<Option<String>, BackendError> {
        if self.config.require_hook
            && let Some(d) = self.look_hooks()?
        {
            return Ok(Some(d));
        }
        let filter = self.run(&render::listing_args(&self.config, "rules"), "")?;
        if let Some(d) = render::check_filter(&self.config, &filter) {
            return Ok(Some(d));
        }
        if render::has_translation(&self.config) {
            let nat = self.run(&render::listing_args(&self.config, "nat"), "")?;
            if let Some(d) = render::check_translation(&self.config, &nat) {
                return Ok(Some(d));
            }
        }
        let names: BTreeSet<String> =
            render::parse_table_names(&self.run(&render::tables_args(&self.config), "")?)
                .into_iter()
                .collect();
        Ok(model::tables(&self.config)
            .into_iter()
            .find(|t| !names.contains(&t.name()))
            .map(|t| format!("anchor {}: table <{t}> is gone", self.config.anchor)))
    }

    /// Carries out `changes` against `contents` (which it updates on success).
    fn apply_changes(&mut self, changes: &[Change<'_, Member>], now: u64) -> Result<(), BackendError> {
        let Some(current) = self.contents.as_ref() else {
            return Err(BackendError::Other(format!("anchor {} was never set up", self.config.anchor)));
        };
        let mut next = current.clone();
        // Per table, what to add and what to delete; the last change of an address wins.
        let mut ops: std::collections::BTreeMap<Table, (BTreeSet<IpAddr>, BTreeSet<IpAddr>)> =
            Default::default();
        let mut revoked = BTreeSet::new();
        for c in changes {
            match c {
                Change::Put { new, prior } => {
                    let m = new.entry;
                    // A re-timed member that is there needs nothing: PF keeps no deadline.
                    if prior.is_some() && current.get(&m.table).is_some_and(|s| s.contains(&m.source)) {
                        continue;
                    }
                    let (add, del) = ops.entry(m.table).or_default();
                    del.remove(&m.source);
                    add.insert(m.source);
                    next.entry(m.table).or_default().insert(m.source);
                }
                Change::Remove { old } => {
                    let m = old.entry;
                    let (add, del) = ops.entry(m.table).or_default();
                    add.remove(&m.source);
                    del.insert(m.source);
                    next.entry(m.table).or_default().remove(&m.source);
                    if now < old.until {
                        revoked.insert(m.source);
                    }
                }
            }
        }
        let commands: Vec<(Table, &str, &BTreeSet<IpAddr>)> = ops
            .iter()
            .flat_map(|(t, (add, del))| [(*t, "add", add), (*t, "delete", del)])
            .filter(|(_, _, set)| !set.is_empty())
            .collect();
        match commands.as_slice() {
            [] => {}
            [(table, op, addrs)] => {
                let args = render::table_args(&self.config, *table, op, addrs);
                self.run(&args, "")?;
            }
            _ => {
                // Several tables: one load of the anchor, listing only the touched tables.
                let touched: Contents =
                    ops.keys().map(|t| (*t, next.get(t).cloned().unwrap_or_default())).collect();
                let text = render::anchor(&self.config, &touched);
                self.run(&render::load_args(&self.config), &text)?;
            }
        }
        self.contents = Some(next);
        if self.config.kill_states_on_revoke {
            for source in revoked {
                self.run(&render::kill_args(source), "")?;
            }
        }
        Ok(())
    }
}

impl Backend for PfBackend {
    type Entry = Member;

    fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
        Ok(Self::new(Config::from_table(table)?))
    }

    fn name(&self) -> &'static str {
        "pf"
    }

    fn capabilities(&self) -> Capabilities {
        // One pfctl run per change: a table operation or an anchor load, each all or nothing
        // in the kernel (a state kill after a revoke is retried with the revoke).
        Capabilities {
            nat: true,
            ipv6: true,
            native_expiry: false,
            exact_prepare: true,
            atomic_apply: true,
            source_port: false,
        }
    }

    fn entries(&self, grant: &Grant) -> Result<Vec<Member>, BackendError> {
        model::expand(&self.config, grant)
    }

    fn prepare(&mut self, live: &[Held<'_, Member>], now: u64) -> Result<(), BackendError> {
        self.watch = None;
        let mut contents: Contents =
            model::tables(&self.config).into_iter().map(|t| (t, BTreeSet::new())).collect();
        for h in live.iter().filter(|h| h.until > now) {
            contents.entry(h.entry.table).or_default().insert(h.entry.source);
        }
        // Rules and every table's contents in one load: the anchor holds exactly these after.
        let text = render::anchor(&self.config, &contents);
        self.run(&render::load_args(&self.config), &text)?;
        self.contents = Some(contents);
        if self.config.require_hook
            && let Some(missing) = self.look_hooks()?
        {
            return Err(BackendError::Other(missing));
        }
        self.watch = Some(Watch { looked: Some(now), dirty: false });
        Ok(())
    }

    fn apply(&mut self, changes: &[Change<'_, Member>], now: u64) -> Result<(), BackendError> {
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
            return Ok(Health::Damaged(format!("anchor {} was never set up", self.config.anchor)));
        };
        let interval = self.config.check_interval_ms.div_ceil(1000);
        let due = w.looked.is_none_or(|t| now < t || now >= t.saturating_add(interval));
        if !w.dirty && !due {
            return Ok(Health::Intact);
        }
        if let Some(damage) = self.look()? {
            return Ok(Health::Damaged(damage));
        }
        self.watch = Some(Watch { looked: Some(now), dirty: false });
        Ok(Health::Intact)
    }

    fn observe(&mut self, _now: u64) -> Result<Vec<Observed>, BackendError> {
        let names = render::parse_table_names(&self.run(&render::tables_args(&self.config), "")?);
        let mut out = Vec::new();
        for name in names {
            let listing = self.run(&render::show_args(&self.config, &name), "")?;
            out.extend(render::observed(&name, &listing));
        }
        Ok(out)
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.watch = None;
        self.contents = None;
        let mut first_error = None;
        for args in render::teardown_args(&self.config) {
            if let Err(e) = self.run(&args, "") {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_as_pf() {
        let r = spa_backends::Registry::collect().unwrap();
        assert!(r.names().contains(&"pf"));
        let b = r.create("pf", &"protect = [\"tcp/22\"]".parse().unwrap()).unwrap();
        assert_eq!(b.name(), "pf");
        assert_eq!(
            b.capabilities(),
            Capabilities {
                nat: true,
                ipv6: true,
                native_expiry: false,
                exact_prepare: true,
                atomic_apply: true,
                source_port: false
            }
        );
        assert!(r.create("pf", &"anchor = \"a b\"".parse().unwrap()).is_err());
    }

    #[test]
    fn a_backend_never_set_up_is_damaged_and_refuses_changes() {
        let mut b = PfBackend::new(Config::default());
        assert!(matches!(b.check(0), Ok(Health::Damaged(d)) if d == "anchor spa was never set up"));
        let g: Grant = spa_backends::testkit::grant(1).into();
        let m = Member { table: Table::All, source: g.source };
        let err =
            b.apply(&[Change::Remove { old: Held { entry: &m, holder: &g, until: 0 } }], 0).unwrap_err();
        assert_eq!(err.to_string(), "anchor spa was never set up");
        assert_eq!(b.exec_count(), 0);
    }
}

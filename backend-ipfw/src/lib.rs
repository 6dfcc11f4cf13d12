//! The `ipfw` backend: ipfw on FreeBSD, driven through `ipfw` batches.
//!
//! # What it creates
//!
//! Three lookup tables (prefix `spa` by default), whose entries' values are the grants'
//! deadlines (Unix seconds, as `ipfw table spa_in list` shows them):
//!
//! - `spa_in`, type `flow:src-ip,proto,dst-port`: `198.51.100.7,tcp,22` lets that source reach
//!   local port tcp/22 (IPv4 and IPv6 keys in one table);
//! - `spa_all`, type `addr`: sources allowed everything on this host (forward-all grants);
//! - `spa_fwd`, type `flow:src-ip,proto,dst-port`: sources whose connections to an external
//!   port are redirected by that forward's `ipfw nat` instance.
//!
//! And, in its own rule set (10) and number range (10000 to 10999), rules that look the tables
//! up, fixed by the configuration (see [`render::rules`]): a `check-state :spa`, `allow ... flow
//! table(spa_in) keep-state :spa` for `me` and `me6`, the same for `spa_all`, per forward a `nat
//! <n>` rule for the granted sources and one for the replies, and per protected port a `deny`
//! for `me` and `me6`. Each rule's comment (`// spa:in4:1a2b3c4d`) names it and fingerprints its
//! text. Per forward one NAT instance (from 100): `ipfw nat 100 config if em0 same_ports
//! redirect_port tcp 192.168.77.10:22 2222`.
//!
//! A grant adds keys to the tables, its end deletes them; rules never change for a grant.
//! Connections made during a grant are dynamic rules of `:spa`; removing a table key leaves
//! them (they do not look at the table again: ipfw(8) STATEFUL FIREWALL), so they survive the
//! grant's end, as with conntrack. `prepare` leaves rules that are already right alone, since
//! deleting a rule deletes its dynamic rules.
//!
//! # One process per change
//!
//! Every change is one `ipfw -q /dev/stdin` batch (ipfw reads a file named by an absolute path
//! line by line and runs each line as a command): a grant of any number of ports, its re-knock
//! (the key deleted and added again with the later deadline as value) and its end each cost one
//! process. A batch is not atomic: a line that fails stops it with the earlier lines applied
//! (`atomic_apply` false; the ledger undoes a half-made grant). With `-q`, adding a key that is
//! there or deleting one that is not is not an error.
//!
//! # Expiry
//!
//! ipfw tables have no timeouts (`native_expiry` false): the ledger deletes each key at its
//! grant's deadline, and after a crash the next start's `prepare` refills the tables with the
//! live grants only. While spad is down nothing removes keys; `conf/freebsd/spa-ipfw-expire` is
//! a cron job that deletes the keys whose value (the deadline) has passed.
//!
//! # Protection from boot
//!
//! `conf/freebsd/ipfw-spa.rules` holds the same tables and rules for `protect = ["tcp/22"]`, to
//! run at boot (`ipfw -q /usr/local/etc/spad/ipfw-spa.rules` from `firewall_script`), so the
//! port is closed before spad starts; spad then finds its rules in place and only fills the
//! tables.
//!
//! # Source ports
//!
//! A grant bound to the client's source port (knock-and-connect with the modern format) is
//! refused with a clear error: the tables' keys have no source port, and widening such a grant
//! to the address would let in every host behind the client's NAT. (An ipfw flow table of
//! type `flow:src-ip,proto,src-port,dst-port` could hold it; not done.)
//!
//! # Tampering
//!
//! [`Backend::check`] (at most every `check_interval_ms`, and after a failed change) lists the
//! rules (`ipfw -S list`) and asks for each table: a rule of spad's gone or changed, a rule in
//! spad's set and range that spad did not make, a table gone, is reported and the daemon sets
//! everything up again with every live grant. Rules of other sets in spad's range are the
//! admin's and are neither touched nor reported. Not detected: keys deleted or added by hand
//! (`spad list --firewall` shows the tables beside the ledger), a NAT instance reconfigured.
//!
//! # Inspecting and removing by hand
//!
//! ```text
//! ipfw -S set 10 list; ipfw table spa_in list; ipfw table spa_all list; ipfw nat show config
//! ipfw set 10 delete 10000 10010 ...        # stop spad first; then:
//! ipfw table spa_in destroy; ipfw table spa_all destroy; ipfw table spa_fwd destroy
//! ```
//!
//! # Configuration
//!
//! ```toml
//! [firewall.ipfw]
//! protect = ["tcp/22"]        # closed to everyone else (IPv4 and IPv6)
//! rule_base = 10000           # spad owns rules 10000-10999 of set 10
//! set = 10
//! tables = "spa"              # spa_in, spa_all, spa_fwd
//! nat_base = 100              # NAT instances 100, 101, ... one per forward
//! [[firewall.ipfw.forward]]
//! port = "tcp/2222"           # the port clients ask for (NAT_ACCESS ...,2222)
//! to = "192.168.77.10"        # IPv4 only: ipfw nat is libalias
//! to_port = 22
//! interface = "em0"
//! ```
//!
//! Any local port can be granted (one rule covers them all). Refused: grants restricted to one
//! local address (stanza `destination`), source NAT, IPv6 forwards, routed forwarding, local
//! redirects. `ipfw nat` needs the `ipfw_nat` module (`kldload ipfw_nat`) and, by ipfw(8),
//! does not work with TSO on the interface.

use std::collections::BTreeMap;

use spa_backends::{
    Backend, BackendDescriptor, BackendError, Capabilities, Change, Grant, Health, Held, Observed,
    error_chain,
};

pub mod config;
mod exec;
pub mod model;
pub mod preflight;
pub mod render;

pub use config::{Config, Forward};
pub use model::{Kind, Names, Record};

use spa_backends::process::Tool;

inventory::submit! {
    BackendDescriptor {
        name: "ipfw",
        description: "ipfw (FreeBSD): lookup tables with deadlines as values, an owned rule range and set, ipfw nat forwards",
        create: spa_backends::create::<IpfwBackend>,
        preflight: Some(preflight::preflight),
    }
}

/// What the tamper check knows; reset by `prepare`, gone after `teardown`.
#[derive(Debug)]
struct Watch {
    /// When the last look found everything intact.
    looked: u64,
    /// A change failed: look at the next check whatever the interval.
    dirty: bool,
}

/// The backend. See the crate documentation for what it creates.
#[derive(Debug)]
pub struct IpfwBackend {
    config: Config,
    names: Names,
    runner: Tool,
    watch: Option<Watch>,
}

impl IpfwBackend {
    /// Builds it from a checked configuration.
    pub fn new(config: Config) -> Self {
        Self::with_command_prefix(config, Vec::new())
    }

    /// Builds it so that ipfw runs as `prefix... ipfw args...`. For tests, which run the
    /// recording fake; not reachable from the configuration.
    #[doc(hidden)]
    pub fn with_command_prefix(config: Config, prefix: Vec<String>) -> Self {
        let runner = exec::ipfw(config.ipfw.clone(), prefix);
        let names = Names::new(&config.tables);
        Self { config, names, runner, watch: None }
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

    fn batch(&mut self, text: &str) -> Result<(), BackendError> {
        if text.is_empty() {
            return Ok(());
        }
        self.run(&render::batch_args(), text).map(drop)
    }

    fn listing(&mut self) -> Result<Vec<render::Listed>, BackendError> {
        Ok(render::parse_list(&self.run(&render::list_args(), "")?))
    }

    /// Lists rules and asks for the tables, and says what is wrong, if anything.
    fn look(&mut self) -> Result<Option<String>, BackendError> {
        let listing = self.listing()?;
        if let Some(d) = render::check_rules(&self.names, &self.config, &listing) {
            return Ok(Some(d));
        }
        // `table <name> info` fails for a table that does not exist, and stops the batch.
        let info = render::tables_info(&self.names);
        match self.run(&render::listing_batch_args(), &info) {
            Ok(_) => Ok(None),
            Err(e) => Ok(Some(format!("a table of spad's is gone: {}", error_chain(&e)))),
        }
    }
}

impl Backend for IpfwBackend {
    type Entry = Record;

    fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
        Ok(Self::new(Config::from_table(table)?))
    }

    fn name(&self) -> &'static str {
        "ipfw"
    }

    fn capabilities(&self) -> Capabilities {
        // A batch stops at its first failing line with the earlier ones applied.
        Capabilities {
            nat: true,
            ipv6: true,
            native_expiry: false,
            exact_prepare: true,
            atomic_apply: false,
            source_port: false,
        }
    }

    fn entries(&self, grant: &Grant) -> Result<Vec<Record>, BackendError> {
        model::expand(&self.names, &self.config, grant)
    }

    fn prepare(&mut self, live: &[Held<'_, Record>], now: u64) -> Result<(), BackendError> {
        self.watch = None;
        let listing = self.listing()?;
        let nat_now = if self.config.forward.is_empty() {
            BTreeMap::new()
        } else {
            render::parse_nat_configs(&self.run(&render::nat_show_args(), "")?)
        };
        // One value per key: the latest deadline of the grants that hold it.
        let mut keys: BTreeMap<(Kind, String), u32> = BTreeMap::new();
        for h in live.iter().filter(|h| h.until > now) {
            let v = keys.entry((h.entry.kind, h.entry.key())).or_default();
            *v = (*v).max(render::value(h.until));
        }
        let mut contents: BTreeMap<Kind, Vec<(String, u32)>> = BTreeMap::new();
        for ((kind, key), value) in keys {
            contents.entry(kind).or_default().push((key, value));
        }
        let text = render::prepare(&self.names, &self.config, &contents, &listing, &nat_now);
        self.batch(&text)?;
        self.watch = Some(Watch { looked: now, dirty: false });
        Ok(())
    }

    fn apply(&mut self, changes: &[Change<'_, Record>], _now: u64) -> Result<(), BackendError> {
        if self.watch.is_none() {
            return Err(BackendError::Other("the ipfw tables were never set up".into()));
        }
        let result = self.batch(&render::changes(changes));
        if result.is_err()
            && let Some(w) = self.watch.as_mut()
        {
            w.dirty = true;
        }
        result
    }

    fn check(&mut self, now: u64) -> Result<Health, BackendError> {
        let Some(w) = self.watch.as_ref() else {
            return Ok(Health::Damaged("the ipfw rules and tables were never set up".into()));
        };
        let interval = self.config.check_interval_ms.div_ceil(1000);
        let due = now < w.looked || now >= w.looked.saturating_add(interval);
        if !w.dirty && !due {
            return Ok(Health::Intact);
        }
        if let Some(damage) = self.look()? {
            return Ok(Health::Damaged(damage));
        }
        self.watch = Some(Watch { looked: now, dirty: false });
        Ok(Health::Intact)
    }

    fn observe(&mut self, _now: u64) -> Result<Vec<Observed>, BackendError> {
        let text = render::tables_list(&self.names);
        let out = self.run(&render::listing_batch_args(), &text)?;
        Ok(render::observed(&self.names, &out))
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.watch = None;
        let listing = self.listing()?;
        let text = render::teardown(&self.names, &self.config, &listing);
        self.batch(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_as_ipfw() {
        let r = spa_backends::Registry::collect().unwrap();
        assert!(r.names().contains(&"ipfw"));
        let b = r.create("ipfw", &"protect = [\"tcp/22\"]".parse().unwrap()).unwrap();
        assert_eq!(b.name(), "ipfw");
        assert_eq!(
            b.capabilities(),
            Capabilities {
                nat: true,
                ipv6: true,
                native_expiry: false,
                exact_prepare: true,
                atomic_apply: false,
                source_port: false
            }
        );
        assert!(r.create("ipfw", &"set = 31".parse().unwrap()).is_err());
    }

    #[test]
    fn a_backend_never_set_up_is_damaged_and_refuses_changes() {
        let mut b = IpfwBackend::new(Config::default());
        assert!(matches!(b.check(0), Ok(Health::Damaged(_))));
        assert!(b.apply(&[], 0).is_err());
        assert_eq!(b.exec_count(), 0);
    }
}

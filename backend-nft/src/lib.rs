//! The native nftables backend (`backend = "nft"`, options in `[firewall.nft]`).
//!
//! # What it creates
//!
//! One table, `inet spa` (name configurable), and nothing outside it:
//!
//! - `set protect`: the `proto . port` pairs kept closed (`protect = ["tcp/22"]`);
//! - timed sets and maps, one per kind of access and address family (`allow4`, `allow6`,
//!   `dnat4`, `fwd4`, `snat4`, `masq4`, `redirect4`, `route_all4`, ...); a grant is a handful of
//!   elements whose per-element timeout is the grant's remaining time, so the **kernel** removes
//!   them at the deadline, even if spad is stopped or has crashed;
//! - four base chains matching those sets with static rules:
//!   - `input` (filter, `filter - 10`): established/related accept, granted `saddr . proto .
//!     dport` accept, then `drop` for the protected ports;
//!   - `forward` (filter, `filter - 10`): established/related accept, accept for exactly the
//!     granted (translated) flows;
//!   - `prerouting` (nat, `dstnat`): DNAT and redirect through timed maps;
//!   - `postrouting` (nat, `srcnat`): SNAT and masquerade keyed on the translated flow.
//!
//! Every element carries the comment `spa:<grant id>`.
//!
//! # Inspecting and removing it by hand
//!
//! ```text
//! nft list table inet spa          # everything, with each element's remaining time
//! nft list set inet spa allow4     # one set
//! nft delete table inet spa        # removes the protection too: the protected ports open
//! ```
//!
//! # Failing closed
//!
//! Stopping spad never removes the table: grants expire in the kernel and the protection (the
//! `drop` rule) stays until an explicit teardown or `nft delete table inet spa`. At boot,
//! before spad runs, `conf/nft/spa-protect.nft` (included from `/etc/nftables.conf`) creates the
//! same table with the protection and empty sets; spad's start replaces it atomically.
//!
//! # Living next to the admin's own ruleset
//!
//! In nftables an `accept` only ends the current base chain: another table's chain on the same
//! hook still runs, and its `drop` wins. Our `drop` is final everywhere, but our `accept` is not.
//! When the host has its own default-drop table, set `mark = 0x...`: our chains then OR that
//! mark into every granted packet, and our chains run first (`filter_priority`, default -10,
//! must stay below the admin chain's priority), so the admin chain only needs
//! `meta mark & 0x... == 0x... accept` (see `conf/nft/README.md`).
//!
//! # How it talks to nft
//!
//! Grants add and delete set elements directly over nfnetlink (see [`netlink`]): one batch per
//! grant, one kernel transaction, no process at all (`grant_path = "netlink"`, the default).
//! With `grant_path = "nft"` they go through one long-lived `nft -i` process instead (see
//! [`session`]), which costs 0.4–1 ms per grant for nft to rebuild its cache. Resetting the
//! table (`prepare`), removing it (`teardown`) and reading it back (`list`, via
//! `nft -j list table`) are rare and run a one-shot `nft`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spa_backends::{Backend, BackendDescriptor, BackendError, Capabilities, Grant, GrantId, Owned};

pub mod config;
pub mod listing;
pub mod model;
pub mod netlink;
pub mod render;
pub mod session;

pub use config::NftConfig;

use model::{Elem, SetRef};
use render::{Op, Timed};
use session::{Program, Session};

/// Lines one `nft -i` process runs before it is replaced by a fresh one.
const RECYCLE_AFTER: u64 = 256;

inventory::submit! {
    BackendDescriptor {
        name: "nft",
        description: "nftables: one owned table, kernel-timed sets and maps, NAT, IPv6",
        create: NftBackend::from_table,
    }
}

/// An element's identity in the kernel: the set and the key (maps hold one datum per key).
type ElemKey = (SetRef, String);

/// What we believe an element in the kernel looks like and which grants hold it. Two grants
/// can need the same element (same source and port); it lives as long as the longest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Held {
    data: Option<String>,
    owners: BTreeMap<GrantId, u64>,
}

/// Our picture of what the kernel holds in our sets, so that a grant is one small transaction
/// (no listing of the table on the grant path).
#[derive(Debug, Default)]
struct Model {
    /// Every element we put in, with the grants that need it.
    elems: HashMap<ElemKey, Held>,
    /// Applied grants: deadline and elements.
    grants: HashMap<GrantId, (u64, Vec<Elem>)>,
    /// Deadlines to forget grants the kernel has expired (the daemon need not revoke them).
    expiry: BTreeMap<u64, Vec<GrantId>>,
}

/// The nft backend.
#[derive(Debug)]
pub struct NftBackend {
    config: NftConfig,
    program: Program,
    session: Option<Session>,
    /// The netlink socket of the grant path (`grant_path = "netlink"`), opened at prepare.
    netlink: Option<netlink::Netlink>,
    /// For tests: the named network namespace the netlink socket must be opened in.
    netns: Option<String>,
    model: Model,
    /// Unix seconds now (a field so tests can fix it).
    clock: fn() -> u64,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl NftBackend {
    /// The registry constructor: `[firewall.nft]` in, backend out. Starts nothing yet.
    pub fn from_table(table: &toml::Table) -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(Self::new(NftConfig::from_table(table)?)?))
    }

    /// Builds the backend from a validated configuration.
    pub fn new(config: NftConfig) -> Result<Self, BackendError> {
        config.validate()?;
        let program = Program::new(vec![config.nft.clone()]);
        Ok(Self {
            config,
            program,
            session: None,
            netlink: None,
            netns: None,
            model: Model::default(),
            clock: unix_now,
        })
    }

    /// For tests: runs nft through `argv` (e.g. `["ip", "netns", "exec", NS, "nft"]`), so the
    /// exact production code path runs inside a network namespace without `setns` and unsafe.
    #[doc(hidden)]
    pub fn with_program(config: NftConfig, argv: Vec<String>) -> Result<Self, BackendError> {
        let mut b = Self::new(config)?;
        if argv.is_empty() {
            return Err(BackendError::Invalid("empty nft program argv".into()));
        }
        // The netlink socket must be made in the namespace the program runs in; a program that
        // is not `ip netns exec NS ...` is a stand-in without a kernel behind it.
        match argv.as_slice() {
            [ip, netns, exec, ns, ..] if ip == "ip" && netns == "netns" && exec == "exec" => {
                b.netns = Some(ns.clone());
            }
            _ => b.config.grant_path = config::GrantPath::Nft,
        }
        b.program = Program::new(argv);
        Ok(b)
    }

    /// The configuration in use.
    pub fn config(&self) -> &NftConfig {
        &self.config
    }

    fn limit(&self) -> Duration {
        Duration::from_millis(self.config.command_timeout_ms)
    }

    /// Runs one line through the long-lived nft, starting it if needed. After any failure
    /// other than a rejected command the process is dropped and restarted on the next call.
    fn run_line(&mut self, line: &str) -> Result<(), BackendError> {
        let limit = self.limit();
        let mut session = match self.session.take() {
            Some(s) => s,
            None => Session::start(&self.program)?,
        };
        let result = session.run(line, limit);
        // A rejected command leaves nft running and in sync; anything else (timeout, broken
        // pipe) drops it, and the next call starts a fresh one.
        if result.is_ok() || matches!(result, Err(BackendError::Rejected { .. })) {
            if session.commands() >= RECYCLE_AFTER {
                // `nft -i` gets slower with every command one process has run (measured on nft
                // 1.0.6: 0.4 ms per add after 5,000 commands, 1.4 ms after 20,000, whatever the
                // set size). A fresh process is started now, so its start-up overlaps the wait
                // for the next grant; with this the median stays flat (0.19 ms at 30,000).
                drop(session);
                self.session = Session::start(&self.program).ok();
            } else {
                self.session = Some(session);
            }
        }
        result
    }

    /// Turns the new states of the touched elements into ops; owners past `now` are dropped.
    fn ops_for(&self, touched: &BTreeMap<ElemKey, (Held, Option<String>)>, now: u64) -> Vec<Op> {
        let mut ops = Vec::with_capacity(touched.len());
        for (k, (held, prior)) in touched {
            let elem = Elem { set: k.0, key: k.1.clone(), data: held.data.clone() };
            match held.owners.iter().max_by_key(|(_, d)| **d) {
                Some((id, deadline)) if *deadline > now => ops.push(Op::Put {
                    elem,
                    timeout: deadline - now,
                    comment: listing::tag(*id),
                    prior: prior.clone(),
                    // Not in the model means not in the kernel: the model forgets an element
                    // only after deleting it, or a second after the kernel's own expiry.
                    fresh: !self.model.elems.contains_key(k),
                }),
                _ => ops.push(Op::Remove { elem, prior: prior.clone() }),
            }
        }
        ops
    }

    /// The current state of an element (and the data the kernel may hold for it).
    fn current(&self, touched: &mut BTreeMap<ElemKey, (Held, Option<String>)>, e: &Elem) -> ElemKey {
        let k = (e.set, e.key.clone());
        if !touched.contains_key(&k) {
            let held = self.model.elems.get(&k).cloned().unwrap_or_default();
            let prior = held.data.clone();
            touched.insert(k.clone(), (held, prior));
        }
        k
    }

    /// Applies the touched states to the kernel (one transaction) and then to our model.
    fn commit(
        &mut self,
        touched: BTreeMap<ElemKey, (Held, Option<String>)>,
        id: GrantId,
        elems: Option<(u64, Vec<Elem>)>,
    ) -> Result<(), BackendError> {
        let now = (self.clock)();
        let ops = self.ops_for(&touched, now);
        if !ops.is_empty() {
            match (self.config.grant_path, self.netlink.as_mut()) {
                (config::GrantPath::Netlink, Some(nl)) => nl.apply(&self.config.table, &ops)?,
                (config::GrantPath::Netlink, None) => {
                    // No prepare yet in this process: open the socket now.
                    let mut nl = netlink::Netlink::open(self.netns.as_deref())?;
                    nl.apply(&self.config.table, &ops)?;
                    self.netlink = Some(nl);
                }
                (config::GrantPath::Nft, _) => {
                    let line = render::ops_line(&self.config, &ops);
                    self.run_line(&line)?;
                }
            }
        }
        for (k, (held, _)) in touched {
            if held.owners.values().any(|d| *d > now) {
                self.model.elems.insert(k, held);
            } else {
                self.model.elems.remove(&k);
            }
        }
        match elems {
            Some((deadline, e)) => {
                self.model.expiry.entry(deadline).or_default().push(id);
                self.model.grants.insert(id, (deadline, e));
            }
            None => {
                self.model.grants.remove(&id);
            }
        }
        Ok(())
    }

    /// Forgets grants whose deadline is more than a second past: the kernel has removed their
    /// elements already (an element added at wall time `w` with timeout `deadline - floor(w)`
    /// expires before `deadline + 1`), so this changes only our model. Amortised O(1) per grant.
    fn forget_expired(&mut self, now: u64) {
        let later = self.model.expiry.split_off(&now);
        let due = std::mem::replace(&mut self.model.expiry, later);
        for id in due.into_values().flatten() {
            let Some((deadline, _)) = self.model.grants.get(&id) else { continue };
            if *deadline >= now {
                continue; // extended by a re-knock; queued again under its new deadline
            }
            let Some((_, elems)) = self.model.grants.remove(&id) else { continue };
            for e in elems {
                let k = (e.set, e.key);
                if let Some(held) = self.model.elems.get_mut(&k) {
                    held.owners.remove(&id);
                    if !held.owners.values().any(|d| *d >= now) {
                        self.model.elems.remove(&k);
                    }
                }
            }
        }
    }

    /// Builds our model of the kernel for exactly these grants (those still running).
    fn model_of(live: &[Grant], now: u64) -> Result<Model, BackendError> {
        let mut elems: HashMap<ElemKey, Held> = HashMap::new();
        let mut grants = HashMap::new();
        let mut expiry: BTreeMap<u64, Vec<GrantId>> = BTreeMap::new();
        for g in live.iter().filter(|g| g.remaining(now) > 0) {
            let es = model::expand(g)?;
            for e in &es {
                let held = elems.entry((e.set, e.key.clone())).or_default();
                held.data.clone_from(&e.data);
                held.owners.insert(g.id, g.deadline);
            }
            grants.insert(g.id, (g.deadline, es));
            expiry.entry(g.deadline).or_default().push(g.id);
        }
        Ok(Model { elems, grants, expiry })
    }
}

impl Backend for NftBackend {
    fn name(&self) -> &str {
        "nft"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { nat: true, ipv6: true, native_expiry: true }
    }

    fn prepare(&mut self, live: &[Grant]) -> Result<(), BackendError> {
        let now = (self.clock)();
        let model = Self::model_of(live, now)?;
        let timed: Vec<(Elem, u64, String)> = model
            .elems
            .iter()
            .filter_map(|((set, key), held)| {
                let (id, deadline) = held.owners.iter().max_by_key(|(_, d)| **d)?;
                let elem = Elem { set: *set, key: key.clone(), data: held.data.clone() };
                Some((elem, deadline - now, listing::tag(*id)))
            })
            .collect();
        let timed: Vec<Timed<'_>> = timed
            .iter()
            .map(|(elem, timeout, comment)| Timed { elem, timeout: *timeout, comment: comment.clone() })
            .collect();
        let script = render::table_script(&self.config, &timed);
        // The long-lived process may cache the old table; start a fresh one afterwards.
        self.session = None;
        self.program.run_once(&["-f", "-"], &script)?;
        self.model = model;
        match self.config.grant_path {
            config::GrantPath::Netlink => self.netlink = Some(netlink::Netlink::open(self.netns.as_deref())?),
            config::GrantPath::Nft => {
                // Start the grant path's process now, and let it read the table once, so the
                // first grant after a start does not pay nft's start-up (tens of milliseconds
                // on a busy host). A failure here is not fatal: the first grant starts one.
                let warm = format!("list set inet {} protect", self.config.table);
                if self.run_line(&warm).is_err() {
                    self.session = None;
                }
            }
        }
        Ok(())
    }

    fn grant(&mut self, grant: &Grant) -> Result<(), BackendError> {
        let now = (self.clock)();
        if grant.remaining(now) == 0 {
            return self.revoke(grant);
        }
        self.forget_expired(now);
        let new = model::expand(grant)?;
        let mut touched = BTreeMap::new();
        if let Some((_, old)) = self.model.grants.get(&grant.id) {
            for e in old.clone().iter().filter(|e| !new.contains(e)) {
                let k = self.current(&mut touched, e);
                if let Some((held, _)) = touched.get_mut(&k) {
                    held.owners.remove(&grant.id);
                }
            }
        }
        for e in &new {
            let k = self.current(&mut touched, e);
            if let Some((held, _)) = touched.get_mut(&k) {
                held.data.clone_from(&e.data);
                held.owners.insert(grant.id, grant.deadline);
            }
        }
        self.commit(touched, grant.id, Some((grant.deadline, new)))
    }

    fn revoke(&mut self, grant: &Grant) -> Result<(), BackendError> {
        let elems = match self.model.grants.get(&grant.id) {
            Some((_, e)) => e.clone(),
            // Not ours (any more): remove what it would have created, unless others hold it.
            None => match model::expand(grant) {
                Ok(e) => e,
                Err(_) => return Ok(()),
            },
        };
        let mut touched = BTreeMap::new();
        for e in &elems {
            let k = self.current(&mut touched, e);
            if let Some((held, _)) = touched.get_mut(&k) {
                held.owners.remove(&grant.id);
                if held.owners.is_empty() && held.data.is_none() {
                    held.data.clone_from(&e.data);
                }
            }
        }
        self.commit(touched, grant.id, None)
    }

    fn list(&mut self) -> Result<Vec<Owned>, BackendError> {
        let out = self.program.run_once(&["-j", "list", "table", "inet", &self.config.table], "")?;
        listing::parse(&out, (self.clock)())
            .map_err(|detail| BackendError::Parse { program: self.program.name(), detail })
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.session = None;
        self.program.run_once(&["-f", "-"], &render::teardown_script(&self.config))?;
        self.model = Model::default();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::{Access, Nat};

    /// A stand-in for `nft -i` that records every line in `log` and answers like nft 1.0.6:
    /// nothing on success, an error block for lines containing `reject`, and the syntax error
    /// for our sentinel.
    const FAKE: &str = r#"log="$1"; echo $$ >> "$log.starts"; while IFS= read -r l; do
        case "$l" in
          nf_sync_*) printf 'Error: syntax error, unexpected newline, expecting string\n%s\n         ^\n' "$l" >&2 ;;
          *reject*) printf 'Error: Could not process rule: File exists\n%s\n^^^\n' "$l" >&2; echo "$l" >> "$log" ;;
          *hang*) sleep 5 ;;
          *die*) exit 3 ;;
          *) echo "$l" >> "$log" ;;
        esac
      done"#;

    fn fake(dir: &tempfile::TempDir, timeout_ms: u64) -> (NftBackend, std::path::PathBuf) {
        let log = dir.path().join("log");
        // `-i` comes after the log path, as the script's $2.
        let argv = ["sh", "-c", FAKE, "fake", log.to_str().unwrap()].map(String::from).to_vec();
        let config = NftConfig { command_timeout_ms: timeout_ms, ..NftConfig::default() };
        let mut b = NftBackend::with_program(config, argv).unwrap();
        b.clock = || NOW;
        (b, log)
    }

    fn lines(log: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    const NOW: u64 = 1_800_000_000;

    fn grant(id: u64, source: &str, ports: &[&str], secs: u64) -> Grant {
        let now = NOW;
        Grant {
            id: GrantId(id),
            source: source.parse().unwrap(),
            packet_source: source.parse().unwrap(),
            destination: None,
            access: Access::Ports(ports.iter().map(|p| p.parse().unwrap()).collect()),
            nat: None,
            created: now,
            deadline: now + secs,
            stanza: "s".into(),
            username: "u".into(),
        }
    }

    #[test]
    fn a_long_lived_nft_is_replaced_after_many_commands() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, log) = fake(&dir, 2000);
        let n = RECYCLE_AFTER + 10;
        for i in 0..n {
            let a = std::net::Ipv4Addr::from(0xc000_0200 + i as u32).to_string();
            b.grant(&grant(i + 1, &a, &["tcp/22"], 100)).unwrap();
        }
        assert_eq!(lines(&log).len() as u64, n, "every grant reached nft");
        let starts = std::fs::read_to_string(dir.path().join("log.starts")).unwrap();
        assert_eq!(starts.lines().count(), 2, "one replacement after {RECYCLE_AFTER} commands");
    }

    #[test]
    fn one_line_per_grant_and_shared_elements_outlive_one_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, log) = fake(&dir, 2000);
        b.grant(&grant(1, "192.0.2.1", &["tcp/22"], 100)).unwrap();
        b.grant(&grant(2, "192.0.2.1", &["tcp/22", "tcp/443"], 200)).unwrap();
        b.revoke(&grant(1, "192.0.2.1", &["tcp/22"], 100)).unwrap();
        b.revoke(&grant(2, "192.0.2.1", &["tcp/22", "tcp/443"], 200)).unwrap();
        let l = lines(&log);
        assert_eq!(l.len(), 4, "{l:#?}");
        // Grant 1 puts tcp/22 for 100 s; grant 2 puts both for 200 s.
        // A new element is one plain add; one already there is replaced (delete + add).
        assert_eq!(
            l[0],
            "add element inet spa allow4 { 192.0.2.1 . tcp . 22 timeout 100s comment \"spa:0000000000000001\" }"
        );
        assert_eq!(l[1].matches("timeout 200s comment \"spa:0000000000000002\"").count(), 2, "{}", l[1]);
        assert_eq!(l[1].matches("delete element").count(), 1, "{}", l[1]);
        // Revoking grant 1 keeps tcp/22 (grant 2 still needs it) at grant 2's timeout.
        assert!(
            l[2].contains("timeout 200s")
                && !l[2].ends_with("delete element inet spa allow4 { 192.0.2.1 . tcp . 22 }"),
            "{}",
            l[2]
        );
        // Revoking grant 2 removes both, each add+delete so a missing element is no error.
        assert_eq!(l[3].matches("delete element").count(), 2, "{}", l[3]);
        assert!(!l[3].contains("timeout"), "{}", l[3]);
        assert!(b.model.elems.is_empty() && b.model.grants.is_empty());
    }

    #[test]
    fn reknock_resets_the_timeout_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, log) = fake(&dir, 2000);
        let g = grant(7, "2001:db8::1", &["udp/53"], 30);
        b.grant(&g).unwrap();
        b.grant(&Grant { deadline: g.deadline + 60, ..g.clone() }).unwrap();
        let l = lines(&log);
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[1],
            "add element inet spa allow6 { 2001:db8::1 . udp . 53 }; delete element inet spa allow6 { 2001:db8::1 . udp . 53 }; \
             add element inet spa allow6 { 2001:db8::1 . udp . 53 timeout 90s comment \"spa:0000000000000007\" }"
        );
        assert_eq!(b.model.grants.len(), 1);
    }

    #[test]
    fn a_rejected_command_is_an_error_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _log) = fake(&dir, 2000);
        let mut g = grant(1, "192.0.2.1", &["tcp/22"], 30);
        g.nat = Some(Nat::Redirect { port: 2222 });
        b.grant(&g).unwrap();
        // Make the next line contain "reject": the fake refuses it like nft would.
        b.config.table = "reject".into();
        let err = b.grant(&grant(2, "192.0.2.9", &["tcp/22"], 30)).unwrap_err();
        assert!(matches!(err, BackendError::Rejected { .. }));
        assert!(err.to_string().contains("File exists"), "{err}");
        assert!(!b.model.grants.contains_key(&GrantId(2)));
        // The same nft keeps serving.
        b.config.table = "spa".into();
        b.grant(&grant(3, "192.0.2.3", &["tcp/22"], 30)).unwrap();
    }

    #[test]
    fn a_hung_or_dead_nft_is_reported_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _log) = fake(&dir, 300);
        b.config.table = "hang".into();
        let err = b.grant(&grant(1, "192.0.2.1", &["tcp/22"], 30)).unwrap_err();
        assert!(matches!(err, BackendError::Timeout { limit_ms: 300, .. }), "{err}");
        assert!(b.session.is_none());
        b.config.table = "die".into();
        let err = b.grant(&grant(1, "192.0.2.1", &["tcp/22"], 30)).unwrap_err();
        assert!(matches!(err, BackendError::Io { .. }), "{err}");
        b.config.table = "spa".into();
        b.grant(&grant(1, "192.0.2.1", &["tcp/22"], 30)).unwrap();
    }

    #[test]
    fn expired_grants_are_forgotten_without_a_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, log) = fake(&dir, 2000);
        let mut old = grant(1, "192.0.2.1", &["tcp/22"], 30);
        b.grant(&old).unwrap();
        // Pretend its deadline has passed (the kernel expired the element on its own).
        old.deadline = NOW - 1;
        b.model.grants.get_mut(&GrantId(1)).unwrap().0 = old.deadline;
        b.model.expiry.entry(old.deadline).or_default().push(GrantId(1));
        b.model.elems.values_mut().for_each(|h| {
            h.owners.insert(GrantId(1), old.deadline);
        });
        b.grant(&grant(2, "192.0.2.2", &["tcp/22"], 30)).unwrap();
        assert!(!b.model.grants.contains_key(&GrantId(1)));
        assert_eq!(b.model.elems.len(), 1);
        // A grant whose deadline is already past only removes.
        b.grant(&old).unwrap();
        assert!(
            lines(&log).last().unwrap().ends_with("delete element inet spa allow4 { 192.0.2.1 . tcp . 22 }")
        );
    }
}

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
//! Every element carries the comment `spa:<grant id>`. What a grant becomes is decided by the
//! pure [`model::expand`] (the backend's entries); when it is put, re-timed or removed is
//! decided by the grant ledger in `spa-backends`, never here.
//!
//! A grant bound to the client's source port (knock-and-connect with the modern format) goes
//! into the `_sport` twin of each set (`allow_sport4`: `saddr . l4proto . sport . dport`),
//! matched by `ip saddr . meta l4proto . th sport . th dport @allow_sport4 accept`, so only that
//! one connection gets in, not the other hosts behind the client's NAT address. Once it is
//! established, `ct state established,related accept` keeps it after the element expires.
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
//! # Tampering
//!
//! [`Backend::check`] asks the kernel for the ruleset generation (one netlink request, no
//! process): every committed transaction anywhere bumps it. If it moved by exactly the number
//! of our own transactions since the last look, nothing else changed anything. Otherwise it
//! reads our table's structure (`nft -t -j list table`, which omits set elements, plus the
//! `protect` set) and compares it with what it read right after `prepare`: a deleted table
//! (`flush ruleset`, a firewall reload), a changed chain, rule or protected port is reported
//! as damage, and the gate rebuilds the table with every live grant. Elements added or
//! removed by hand inside our sets are not detected this way; `spad list --firewall` shows
//! them.
//!
//! # How it talks to nft
//!
//! Grants add and delete set elements directly over nfnetlink (see [`netlink`]): one batch per
//! grant, one kernel transaction, no process at all (`grant_path = "netlink"`, the default).
//! With `grant_path = "nft"` they go through one long-lived `nft -i` process instead (see
//! [`session`]), which costs 0.4–1 ms per grant for nft to rebuild its cache. Resetting the
//! table (`prepare`), removing it (`teardown`) and reading it back (`observe`, via
//! `nft -j list table`) are rare and run a one-shot `nft`.

use std::collections::BTreeMap;
use std::time::Duration;

use spa_backends::{
    Backend, BackendDescriptor, BackendError, Capabilities, Change, CommandFailure, Grant, Health, Held,
    Observed,
};

pub mod config;
pub mod listing;
pub mod model;
pub mod netlink;
pub mod preflight;
pub mod render;
pub mod session;

pub use config::NftConfig;

use model::Elem;
use render::{Op, Timed};
use session::{Program, Session};

/// Lines one `nft -i` process runs before it is replaced by a fresh one.
const RECYCLE_AFTER: u64 = 256;

inventory::submit! {
    BackendDescriptor {
        name: "nft",
        description: "nftables: one owned table, kernel-timed sets and maps, NAT, IPv6",
        create: spa_backends::create::<NftBackend>,
        preflight: Some(preflight::preflight),
    }
}

/// What the table looked like right after our `prepare`, and the generation since which only
/// our own transactions have run.
#[derive(Debug)]
struct Verified {
    structure: BTreeMap<String, String>,
    /// The ruleset generation at the last full look.
    generation: Option<u32>,
    /// Our own transactions committed since then.
    ours: u32,
}

/// The nft backend.
#[derive(Debug)]
pub struct NftBackend {
    config: NftConfig,
    program: Program,
    session: Option<Session>,
    /// The netlink socket (grant path and generation checks), opened at prepare.
    netlink: Option<netlink::Netlink>,
    /// For tests: the named network namespace the netlink socket must be opened in.
    netns: Option<String>,
    /// For tests: a stand-in for nft with no kernel behind it (no tamper checks).
    stand_in: bool,
    verified: Option<Verified>,
}

impl NftBackend {
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
            stand_in: false,
            verified: None,
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
            _ => {
                b.config.grant_path = config::GrantPath::Nft;
                b.stand_in = true;
            }
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
        if result.is_ok()
            || matches!(result, Err(BackendError::Command { failure: CommandFailure::Rejected(_), .. }))
        {
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

    fn netlink(&mut self) -> Result<&mut netlink::Netlink, BackendError> {
        if self.netlink.is_none() {
            self.netlink = Some(netlink::Netlink::open(self.netns.as_deref())?);
        }
        self.netlink.as_mut().ok_or(BackendError::Other("netlink socket missing".into()))
    }

    /// Our table's structure as the kernel has it now; `None` when the table is gone.
    fn structure(&self) -> Result<Option<BTreeMap<String, String>>, BackendError> {
        let t = &self.config.table;
        let terse = match self.program.run_once(&["-t", "-j", "list", "table", "inet", t], "") {
            Ok(out) => out,
            Err(BackendError::Command { failure: CommandFailure::Exit { stderr, .. }, .. })
                if stderr.contains("No such file or directory") =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let protect = match self.program.run_once(&["-j", "list", "set", "inet", t, "protect"], "") {
            Ok(out) => out,
            Err(BackendError::Command { failure: CommandFailure::Exit { stderr, .. }, .. })
                if stderr.contains("No such file or directory") =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        listing::structure(&terse, &protect)
            .map(Some)
            .map_err(|detail| BackendError::command(self.program.name(), CommandFailure::Output(detail)))
    }

    /// Reads the generation, then the structure, and remembers both as the reference.
    fn remember_structure(&mut self) -> Result<(), BackendError> {
        let generation = if self.stand_in { None } else { Some(self.netlink()?.genid()?) };
        let structure = self.structure()?.ok_or_else(|| {
            BackendError::Other(format!("table inet {} vanished during prepare", self.config.table))
        })?;
        self.verified = Some(Verified { structure, generation, ours: 0 });
        Ok(())
    }

    fn count_own_transaction(&mut self) {
        if let Some(v) = self.verified.as_mut() {
            v.ours = v.ours.wrapping_add(1);
        }
    }
}

/// The ops for a batch of changes at `now`.
fn ops(changes: &[Change<'_, Elem>], now: u64) -> Vec<Op> {
    changes
        .iter()
        .map(|c| match c {
            Change::Put { new, prior } => Op::Put {
                elem: *new.entry,
                // The kernel needs at least a second; the ledger never puts an entry that
                // has already ended.
                timeout: new.until.saturating_sub(now).max(1),
                comment: listing::tag(new.holder.id),
                prior: prior.and_then(|p| p.entry.data),
                fresh: prior.is_none(),
            },
            Change::Remove { old } => Op::Remove { elem: *old.entry, prior: old.entry.data },
        })
        .collect()
}

impl Backend for NftBackend {
    type Entry = Elem;

    fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
        Self::new(NftConfig::from_table(table)?)
    }

    fn name(&self) -> &'static str {
        "nft"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            nat: true,
            ipv6: true,
            native_expiry: true,
            exact_prepare: true,
            atomic_apply: true,
            source_port: true,
        }
    }

    fn entries(&self, grant: &Grant) -> Result<Vec<Elem>, BackendError> {
        model::expand(grant)
    }

    fn prepare(&mut self, live: &[Held<'_, Elem>], now: u64) -> Result<(), BackendError> {
        let timed: Vec<Timed<'_>> = live
            .iter()
            .filter(|h| h.until > now)
            .map(|h| Timed { elem: h.entry, timeout: h.until - now, comment: listing::tag(h.holder.id) })
            .collect();
        let script = render::table_script(&self.config, &timed);
        // The long-lived process may cache the old table; start a fresh one afterwards.
        self.session = None;
        self.verified = None;
        self.program.run_once(&["-f", "-"], &script)?;
        match self.config.grant_path {
            config::GrantPath::Netlink => {
                self.netlink = None;
                self.netlink()?;
            }
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
        if !self.stand_in {
            self.remember_structure()?;
        }
        Ok(())
    }

    fn apply(&mut self, changes: &[Change<'_, Elem>], now: u64) -> Result<(), BackendError> {
        let ops = ops(changes, now);
        if ops.is_empty() {
            return Ok(());
        }
        match self.config.grant_path {
            config::GrantPath::Netlink => {
                let table = self.config.table.clone();
                self.netlink()?.apply(&table, &ops)?;
            }
            config::GrantPath::Nft => {
                let line = render::ops_line(&self.config, &ops);
                self.run_line(&line)?;
            }
        }
        self.count_own_transaction();
        Ok(())
    }

    fn check(&mut self, _now: u64) -> Result<Health, BackendError> {
        if self.stand_in {
            return Ok(Health::Intact);
        }
        let Some(v) = self.verified.as_ref() else {
            return Ok(Health::Damaged(format!("table inet {} was never set up", self.config.table)));
        };
        let (seen, ours) = (v.generation, v.ours);
        let generation = self.netlink()?.genid()?;
        if seen.is_some_and(|g| g.wrapping_add(ours) == generation) {
            return Ok(Health::Intact);
        }
        // Someone else committed something: look at our table.
        let Some(found) = self.structure()? else {
            return Ok(Health::Damaged(format!("table inet {} is gone", self.config.table)));
        };
        let v = self.verified.as_mut().ok_or(BackendError::Other("no reference structure".into()))?;
        if found == v.structure {
            v.generation = Some(generation);
            v.ours = 0;
            Ok(Health::Intact)
        } else {
            Ok(Health::Damaged(format!(
                "table inet {}: {}",
                self.config.table,
                listing::differences(&v.structure, &found)
            )))
        }
    }

    fn observe(&mut self, now: u64) -> Result<Vec<Observed>, BackendError> {
        let out = self.program.run_once(&["-j", "list", "table", "inet", &self.config.table], "")?;
        listing::parse(&out, now)
            .map_err(|detail| BackendError::command(self.program.name(), CommandFailure::Output(detail)))
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.session = None;
        self.verified = None;
        self.program.run_once(&["-f", "-"], &render::teardown_script(&self.config))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::testkit::{MemoryJournal, grant as g};
    use spa_backends::{Driver, Event, Gate, GrantId};

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

    const NOW: u64 = 1_800_000_000;

    fn fake(dir: &tempfile::TempDir, timeout_ms: u64) -> (Gate<NftBackend>, std::path::PathBuf) {
        let log = dir.path().join("log");
        // `-i` comes after the log path, as the script's $2.
        let argv = ["sh", "-c", FAKE, "fake", log.to_str().unwrap()].map(String::from).to_vec();
        let config = NftConfig { command_timeout_ms: timeout_ms, ..NftConfig::default() };
        (Gate::new(NftBackend::with_program(config, argv).unwrap()), log)
    }

    fn lines(log: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn grant(id: u64, source: &str, ports: &str, secs: u64) -> Grant {
        g(id).source(source).ports(ports).times(NOW, NOW + secs).into()
    }

    fn ok(events: Vec<Event>) {
        assert!(
            events.iter().all(|e| matches!(e, Event::Granted(_) | Event::Extended(_) | Event::Ended { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn a_long_lived_nft_is_replaced_after_many_commands() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, log) = fake(&dir, 2000);
        let mut j = MemoryJournal::default();
        let n = RECYCLE_AFTER + 10;
        for i in 0..n {
            let a = std::net::Ipv4Addr::from(0xc000_0200 + i as u32).to_string();
            ok(b.grant(grant(i + 1, &a, "tcp/22", 100), NOW, &mut j));
        }
        assert_eq!(lines(&log).len() as u64, n, "every grant reached nft");
        let starts = std::fs::read_to_string(dir.path().join("log.starts")).unwrap();
        assert_eq!(starts.lines().count(), 2, "one replacement after {RECYCLE_AFTER} commands");
    }

    #[test]
    fn one_line_per_grant_and_shared_elements_outlive_one_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, log) = fake(&dir, 2000);
        let mut j = MemoryJournal::default();
        ok(b.grant(grant(1, "192.0.2.1", "tcp/22", 100), NOW, &mut j));
        ok(b.grant(grant(2, "192.0.2.1", "tcp/22,tcp/443", 200), NOW, &mut j));
        ok(b.revoke(GrantId(2), NOW, &mut j));
        ok(b.revoke(GrantId(1), NOW, &mut j));
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
        // Revoking grant 2 gives tcp/22 back to grant 1 (100 s) and removes tcp/443.
        assert!(l[2].contains("tcp . 22 timeout 100s comment \"spa:0000000000000001\""), "{}", l[2]);
        assert!(l[2].ends_with("delete element inet spa allow4 { 192.0.2.1 . tcp . 443 }"), "{}", l[2]);
        // Revoking grant 1 removes tcp/22, add+delete so a missing element is no error.
        assert_eq!(l[3].matches("delete element").count(), 1, "{}", l[3]);
        assert!(!l[3].contains("timeout"), "{}", l[3]);
        assert!(b.ledger().is_empty());
    }

    #[test]
    fn reknock_resets_the_timeout_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, log) = fake(&dir, 2000);
        let mut j = MemoryJournal::default();
        ok(b.grant(grant(7, "2001:db8::1", "udp/53", 30), NOW, &mut j));
        let ev = b.grant(grant(8, "2001:db8::1", "udp/53", 90), NOW, &mut j);
        assert!(matches!(ev.as_slice(), [Event::Extended(x)] if x.id == GrantId(7)), "{ev:?}");
        let l = lines(&log);
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[1],
            "add element inet spa allow6 { 2001:db8::1 . udp . 53 }; delete element inet spa allow6 { 2001:db8::1 . udp . 53 }; \
             add element inet spa allow6 { 2001:db8::1 . udp . 53 timeout 90s comment \"spa:0000000000000007\" }"
        );
        assert_eq!(b.ledger().len(), 1);
    }

    #[test]
    fn a_rejected_command_is_an_error_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _log) = fake(&dir, 2000);
        let mut j = MemoryJournal::default();
        let mut first = grant(1, "192.0.2.1", "tcp/22", 30);
        first.nat = Some(Box::new(spa_backends::Nat::Redirect { port: 2222 }));
        ok(b.grant(first, NOW, &mut j));
        // Make the next line contain "reject": the fake refuses it like nft would.
        b.backend_mut().config.table = "reject".into();
        let ev = b.grant(grant(2, "192.0.2.9", "tcp/22", 30), NOW, &mut j);
        match ev.as_slice() {
            [Event::Refused { cause: spa_backends::RefusedBecause::Backend(e), .. }] => {
                assert!(
                    matches!(e, BackendError::Command { failure: CommandFailure::Rejected(_), .. }),
                    "{e}"
                );
                assert!(spa_backends::error_chain(e).contains("File exists"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(b.ledger().get(GrantId(2)).is_none() && !j.grants.contains_key(&GrantId(2)));
        // The same nft keeps serving.
        b.backend_mut().config.table = "spa".into();
        ok(b.grant(grant(3, "192.0.2.3", "tcp/22", 30), NOW, &mut j));
    }

    #[test]
    fn a_hung_or_dead_nft_is_reported_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _log) = fake(&dir, 300);
        let mut j = MemoryJournal::default();
        b.backend_mut().config.table = "hang".into();
        let ev = b.grant(grant(1, "192.0.2.1", "tcp/22", 30), NOW, &mut j);
        assert!(
            matches!(
                ev.as_slice(),
                [Event::Refused {
                    cause: spa_backends::RefusedBecause::Backend(BackendError::Command {
                        failure: CommandFailure::Timeout { limit_ms: 300 },
                        ..
                    }),
                    ..
                }]
            ),
            "{ev:?}"
        );
        assert!(b.backend().session.is_none());
        b.backend_mut().config.table = "die".into();
        let ev = b.grant(grant(1, "192.0.2.1", "tcp/22", 30), NOW, &mut j);
        assert!(
            matches!(
                ev.as_slice(),
                [Event::Refused {
                    cause: spa_backends::RefusedBecause::Backend(BackendError::Command {
                        failure: CommandFailure::Io(_),
                        ..
                    }),
                    ..
                }]
            ),
            "{ev:?}"
        );
        b.backend_mut().config.table = "spa".into();
        ok(b.grant(grant(1, "192.0.2.1", "tcp/22", 30), NOW, &mut j));
    }

    #[test]
    fn expiry_is_the_kernels_job() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, log) = fake(&dir, 2000);
        let mut j = MemoryJournal::default();
        ok(b.grant(grant(1, "192.0.2.1", "tcp/22", 30), NOW, &mut j));
        let ev = b.tick(NOW + 30, &mut j);
        assert!(matches!(ev.as_slice(), [Event::Ended { .. }]), "{ev:?}");
        assert_eq!(lines(&log).len(), 1, "an expiry sends nothing to nft");
        // A new grant for the same element within the grace second re-times it.
        ok(b.grant(grant(2, "192.0.2.1", "tcp/22", 60), NOW + 30, &mut j));
        assert!(lines(&log)[1].contains("delete element"), "{:?}", lines(&log));
    }
}

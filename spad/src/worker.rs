//! The backend worker: the one thread that changes the firewall.
//!
//! A thin shell around the backend's [`Driver`] (the grant ledger and the backend): it turns
//! accepted requests into grants, feeds them and the time to the driver, lets the driver write
//! the grant journal, and writes what happened to the log and the audit trail. It sleeps in
//! `recv_timeout` until the next deadline, retry or tamper check (a second at most), so an
//! idle daemon costs one cheap look at the firewall a second.

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use spa_backends::{Driver, EndKind, Event, Grant, GrantId, Ingress, Nat, RefusedBecause, State};
use spa_engine::{Action, GrantRequest, NatHost};

use crate::audit::{Audit, Requester, rfc3339};
use crate::config::error_chain;
use crate::shared_state::Publisher;
use crate::state::{GrantStore, Interner, PersistentReplay};
use crate::stats::Stats;

/// How often the worker asks the backend whether its setup was tampered with.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Work for the worker.
pub enum Msg {
    /// An accepted packet, when it was accepted, and the index of the interface it arrived on
    /// (0 when unknown).
    Request(Box<GrantRequest>, Instant, u32),
    /// End a live grant now (asked through the shared store's revoke channel).
    Revoke {
        /// The grant.
        id: GrantId,
        /// Who asked, for the audit trail.
        by: String,
    },
    /// End live grants now, asked over the control socket; the reply lists what ended.
    RevokeNow {
        /// Which grants.
        target: RevokeTarget,
        /// Who asked, for the audit trail.
        by: Requester,
        /// What was revoked (empty: nothing matched).
        reply: Sender<Vec<Revoked>>,
    },
    /// Stop: revoke everything (unless `keep`), then confirm.
    Shutdown {
        /// Keep grants in the firewall.
        keep: bool,
        /// Confirmation.
        done: Sender<()>,
    },
}

/// Which live grants a revoke asked over the control socket ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeTarget {
    /// The grant with this id.
    Id(GrantId),
    /// Every live grant for this address: opened for it, or asked for from it.
    Address(IpAddr),
}

/// A grant a revoke ended, or tried to.
#[derive(Clone, Debug)]
pub struct Revoked {
    /// The grant.
    pub grant: Grant,
    /// `None` when it is closed; else why closing failed (it stays recorded as closing and
    /// is retried).
    pub error: Option<String>,
}

/// How often the count of live grants is refreshed at most, besides once a second.
const RECOUNT_EVERY: Duration = Duration::from_millis(100);

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How long until the wall clock reaches Unix second `t` (zero if it has).
fn until_unix(t: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Duration::from_secs(t).saturating_sub(now)
}

fn new_id() -> GrantId {
    let mut b = [0u8; 8];
    // If the OS has no randomness left something is very wrong; fall back to time.
    if getrandom::fill(&mut b).is_err() {
        let n = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        b = n.to_le_bytes();
    }
    GrantId(u64::from_le_bytes(b).max(1))
}

/// Writes what the driver reports to the log and the audit trail.
pub fn report(audit: &Mutex<Audit>, events: Vec<Event>) {
    let audit = || audit.lock().unwrap_or_else(PoisonError::into_inner);
    let stats = audit().stats();
    for e in events {
        match e {
            Event::Granted(g) => {
                tracing::info!(
                    "grant {} for {} ({}) until {}",
                    g.id,
                    g.source,
                    g.access,
                    rfc3339(g.deadline, 0)
                );
                audit().grant("grant", &g, 0);
            }
            Event::Extended(g) => {
                tracing::info!(
                    "extend {} for {} ({}) until {}",
                    g.id,
                    g.source,
                    g.access,
                    rfc3339(g.deadline, 0)
                );
                audit().grant("extend", &g, 0);
            }
            Event::Reknocked(g) => audit().grant("reknock", &g, 0),
            Event::Refused { grant, extension, cause } => {
                let action = if extension { "extend" } else { "grant" };
                let text = match &cause {
                    RefusedBecause::StateUnwritable(_) => "state_unwritable".to_owned(),
                    other => error_chain(other),
                };
                tracing::error!(
                    "{action} {} for {} refused: {}",
                    grant.id,
                    grant.source,
                    error_chain(&cause)
                );
                stats.backend_error(&format!("{action} {} refused: {}", grant.id, error_chain(&cause)));
                audit().error(action, &grant, &text);
            }
            Event::Ended { grant, why, attempts } => {
                tracing::info!("{} {} for {}", why.event(), grant.id, grant.source);
                audit().grant(why.event(), &grant, attempts);
            }
            Event::CloseFailed { grant, closing, error } => {
                tracing::error!(
                    "{} {} failed ({} attempts; next in {} s): {}",
                    closing.why.event(),
                    grant.id,
                    closing.attempts,
                    closing.retry_at.saturating_sub(unix_now()),
                    error_chain(&error)
                );
                stats.backend_error(&format!(
                    "{} {} failed: {}",
                    closing.why.event(),
                    grant.id,
                    error_chain(&error)
                ));
                audit().closing(&grant, &closing, &error_chain(&error));
            }
            Event::Tampered { detail } => {
                tracing::warn!("the firewall was changed under us: {detail}; rebuilding");
                stats.tampered(&detail);
                audit().daemon("tamper", serde_json::json!({ "what": detail }));
            }
            Event::Repaired { live } => {
                tracing::warn!("protection rebuilt with {live} live grants");
                stats.repaired(true);
                audit().daemon("repaired", serde_json::json!({ "live_grants": live }));
            }
            Event::RepairFailed { error } => {
                tracing::error!("rebuilding the protection failed: {}", error_chain(&error));
                stats.repaired(false);
                stats.backend_error(&format!("rebuilding the protection failed: {}", error_chain(&error)));
                audit().daemon("repair_failed", serde_json::json!({ "error": error_chain(&error) }));
            }
        }
    }
}

/// The worker's state.
pub struct Worker {
    driver: Box<dyn Driver>,
    store: GrantStore,
    interner: Interner,
    replay: Arc<Mutex<PersistentReplay>>,
    audit: Arc<Mutex<Audit>>,
    last_sync: Instant,
    last_check: Instant,
    dirty: bool,
    heartbeat: Arc<AtomicU64>,
    publisher: Option<Publisher>,
    stats: Arc<Stats>,
    last_count: Instant,
    /// Grants changed since the last count.
    count_due: bool,
}

impl Worker {
    /// Takes over a started driver.
    pub fn new(
        driver: Box<dyn Driver>,
        store: GrantStore,
        interner: Interner,
        replay: Arc<Mutex<PersistentReplay>>,
        audit: Arc<Mutex<Audit>>,
        heartbeat: Arc<AtomicU64>,
    ) -> Self {
        let stats = audit.lock().unwrap_or_else(PoisonError::into_inner).stats();
        let mut driver = driver;
        driver.observe_calls(stats.clone());
        Self {
            driver,
            store,
            interner,
            replay,
            audit,
            last_sync: Instant::now(),
            last_check: Instant::now(),
            dirty: true,
            heartbeat,
            publisher: None,
            stats,
            last_count: Instant::now(),
            count_due: true,
        }
    }

    /// Counts the live grants for `spad status` and the metrics (a walk over the ledger): once
    /// a second, and after changes, at most every [`RECOUNT_EVERY`] (a burst of grants is
    /// counted once).
    fn recount(&mut self, force: bool) {
        if !force && (!self.count_due || self.last_count.elapsed() < RECOUNT_EVERY) {
            return;
        }
        self.count_due = false;
        self.last_count = Instant::now();
        let now = unix_now();
        let live = self.driver.ledger().live().filter(|g| g.deadline > now).count();
        self.stats.live_grants.store(live as u64, Ordering::Relaxed);
    }

    /// Also publishes the grants to the shared store (`[replay] store = "redis"`).
    pub fn with_publisher(mut self, publisher: Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    fn audit(&self) -> MutexGuard<'_, Audit> {
        self.audit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn report(&self, events: Vec<Event>) {
        if !events.is_empty() {
            if let Some(p) = &self.publisher {
                p.events(&events);
            }
            report(&self.audit, events);
        }
    }

    /// Runs until a shutdown message (or all senders are gone).
    pub fn run(mut self, rx: Receiver<Msg>, watchdog: Option<Duration>) {
        loop {
            let now = unix_now();
            let events = self.driver.tick(now, &mut self.store);
            self.dirty |= !events.is_empty();
            self.count_due |= !events.is_empty();
            self.report(events);
            self.recount(false);
            if self.last_check.elapsed() >= CHECK_EVERY {
                self.last_check = Instant::now();
                let events = self.driver.check(now, &mut self.store);
                self.dirty |= !events.is_empty();
                self.report(events);
                self.recount(true);
            }
            if let Some(p) = &self.publisher
                && p.wants_snapshot()
            {
                p.snapshot(self.driver.ledger().live());
            }
            self.sync_if_due();
            self.heartbeat.store(unix_now(), Ordering::Relaxed);
            // Wake for the next due item (whole seconds: deadlines are), the next tamper check,
            // the watchdog, and the journal's fsync.
            let mut wait = CHECK_EVERY.saturating_sub(self.last_check.elapsed());
            if let Some(due) = self.driver.next_due() {
                wait = wait.min(until_unix(due));
            }
            if let Some(wd) = watchdog {
                wait = wait.min(wd);
            }
            if self.count_due {
                wait = wait.min(RECOUNT_EVERY.saturating_sub(self.last_count.elapsed()));
            }
            match rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(Msg::Request(req, accepted, ifindex)) => {
                    let queued = accepted.elapsed();
                    self.handle(*req, ifindex);
                    self.count_due = true;
                    tracing::debug!(
                        "request handled {} µs after acceptance ({} µs queued)",
                        accepted.elapsed().as_micros(),
                        queued.as_micros()
                    );
                }
                Ok(Msg::Revoke { id, by }) => {
                    self.revoke(id, &Requester::text(&by));
                    self.count_due = true;
                }
                Ok(Msg::RevokeNow { target, by, reply }) => {
                    let done = self.revoke_now(target, &by);
                    self.recount(true);
                    let _ = reply.send(done);
                }
                Ok(Msg::Shutdown { keep, done }) => {
                    self.shutdown(keep);
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.recount(false);
        }
    }

    /// fsyncs the journals once a second while anything is pending. A grant journal that lost
    /// a record is rewritten from the ledger instead, retried every second until it works
    /// (new grants are refused meanwhile).
    fn sync_if_due(&mut self) {
        if !self.dirty || self.last_sync.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_sync = Instant::now();
        let mut retry = false;
        if self.store.needs_rewrite() {
            retry = !self.rewrite_grants();
        } else if let Err(e) = self.store.sync() {
            tracing::error!("{}; it will be rewritten", error_chain(&e));
            retry = true;
        }
        if let Ok(mut r) = self.replay.lock() {
            if let Err(e) = r.sync() {
                self.stats.replay_store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{}", error_chain(&e));
            }
            retry |= r.needs_rewrite();
        }
        // Stay dirty so that the next second tries again.
        self.dirty = retry;
    }

    /// Rewrites the grant journal from the ledger; reports the first failure of a run of them
    /// (then one a minute) and the recovery. True when the journal is whole again.
    fn rewrite_grants(&mut self) -> bool {
        match self.store.rewrite(self.driver.ledger().records()) {
            Ok(()) => {
                tracing::info!("grant journal rewritten; new grants are recorded again");
                true
            }
            Err(e) => {
                if self.store.failed_rewrites() % 60 == 1 {
                    tracing::error!("{}; new grants are refused until it can be rewritten", error_chain(&e));
                }
                false
            }
        }
    }

    fn resolve(host: &NatHost, like: IpAddr) -> Option<IpAddr> {
        match host {
            NatHost::Ip(ip) => Some(*ip),
            NatHost::Name(n) => {
                let addrs: Vec<IpAddr> = (n.as_str(), 0).to_socket_addrs().ok()?.map(|a| a.ip()).collect();
                addrs.iter().find(|a| a.is_ipv4() == like.is_ipv4()).or(addrs.first()).copied()
            }
        }
    }

    fn handle(&mut self, req: GrantRequest, ifindex: u32) {
        let now = unix_now();
        // Command messages run on their own threads (crate::command), never here.
        let Action::Open { access, nat } = req.action.clone() else { return };
        // A knock bound to a source port on a backend that cannot bind one is refused here,
        // with its reason, rather than widened to the whole address (the backend would refuse
        // it too, less plainly).
        if req.source_port.is_some() && !self.driver.capabilities().source_port {
            tracing::warn!(
                "knock from {} asks for a grant bound to a source port; backend {} cannot bind one",
                req.packet_source,
                self.driver.name()
            );
            self.audit().reject(
                req.packet_source,
                "source_port_unsupported",
                Some("the firewall backend cannot bind a grant to a source port"),
                Some(&req.stanza),
            );
            return;
        }
        let nat = match nat {
            None => None,
            Some(spa_engine::Nat::Redirect { port }) => Some(Nat::Redirect { port }),
            Some(spa_engine::Nat::Route { snat }) => Some(Nat::Route { snat }),
            Some(spa_engine::Nat::Dnat { host, port, snat }) => {
                match Self::resolve(&host, req.allowed_source) {
                    Some(to) => Some(Nat::Dnat { to, port, snat }),
                    None => {
                        tracing::warn!("NAT target {host} from {} does not resolve", req.packet_source);
                        self.audit().reject(
                            req.packet_source,
                            "nat_target_unresolvable",
                            None,
                            Some(&req.stanza),
                        );
                        return;
                    }
                }
            }
        };
        // A fresh id (a 64-bit random one is all but certainly new; make sure).
        let mut id = new_id();
        while self.driver.ledger().get(id).is_some() {
            id = new_id();
        }
        let grant = Grant {
            id,
            source: req.allowed_source,
            source_port: req.source_port,
            packet_source: req.packet_source,
            destination: req.destination,
            access: self.interner.access(&access),
            nat: nat.map(Box::new),
            created: now,
            deadline: now + u64::from(req.timeout),
            stanza: self.interner.name(&req.stanza),
            username: self.interner.name(&req.username),
            ingress: Some(self.interner.ingress(Ingress {
                addr: req.packet_destination,
                interface: crate::receive::interface_name(ifindex),
            })),
        };
        // A journal that lost a record is rewritten before anything new is recorded.
        if self.store.needs_rewrite() {
            self.rewrite_grants();
        }
        let started = Instant::now();
        let events = self.driver.grant(grant, now, &mut self.store);
        tracing::debug!("backend {} took {} µs", self.driver.name(), started.elapsed().as_micros());
        self.report(events);
        self.dirty = true;
    }

    /// Ends live grants asked for over the control socket: one by id, or every one for an
    /// address (opened for it, or asked for from it). Returns what was ended; an id or
    /// address that matches no live grant is audited as `revoke_unknown`.
    fn revoke_now(&mut self, target: RevokeTarget, by: &Requester) -> Vec<Revoked> {
        let now = unix_now();
        let ids: Vec<GrantId> = match target {
            RevokeTarget::Id(id) => vec![id],
            RevokeTarget::Address(a) => {
                let a = spa_engine::stanza::canonical(a);
                let mut ids: Vec<GrantId> = self
                    .driver
                    .ledger()
                    .live()
                    .filter(|g| g.deadline > now && (g.source == a || g.packet_source == a))
                    .map(|g| g.id)
                    .collect();
                ids.sort_unstable();
                if ids.is_empty() {
                    tracing::warn!("revoke of {a} asked by {:?}: no live grant for that address", by.by);
                    let mut detail = serde_json::json!({"address": a.to_string()});
                    by.annotate(&mut detail);
                    self.audit().daemon("revoke_unknown", detail);
                }
                ids
            }
        };
        ids.into_iter().filter_map(|id| self.revoke(id, by)).collect()
    }

    /// Ends a live grant on request, auditing `revoke` with who asked. An id that names no
    /// live grant is logged and audited as `revoke_unknown`; a close that fails is retried like
    /// any other (audited as `error` with `"closing": true`). Returns what became of the
    /// grant, if there was one.
    fn revoke(&mut self, id: GrantId, by: &Requester) -> Option<Revoked> {
        if self.driver.ledger().get(id).is_none_or(|r| r.state != State::Live) {
            tracing::warn!("revoke of {id} asked by {:?}: no live grant has that id", by.by);
            let mut detail = serde_json::json!({"id": id.to_string()});
            by.annotate(&mut detail);
            self.audit().daemon("revoke_unknown", detail);
            return None;
        }
        let events = self.driver.revoke(id, unix_now(), &mut self.store);
        self.dirty = true;
        if let Some(p) = &self.publisher {
            p.events(&events);
        }
        let mut outcome = None;
        for e in events {
            match e {
                Event::Ended { grant, why: EndKind::Revoke, attempts } if grant.id == id => {
                    tracing::info!("revoke {id} for {} (asked by {:?})", grant.source, by.by);
                    self.audit().revoked(&grant, attempts, by);
                    outcome = Some(Revoked { grant, error: None });
                }
                Event::CloseFailed { grant, closing, error } if grant.id == id => {
                    let text = error_chain(&error);
                    let grant_copy = grant.clone();
                    report(&self.audit, vec![Event::CloseFailed { grant, closing, error }]);
                    outcome = Some(Revoked { grant: grant_copy, error: Some(text) });
                }
                other => report(&self.audit, vec![other]),
            }
        }
        outcome
    }

    fn shutdown(&mut self, keep: bool) {
        let events = self.driver.stop(keep, unix_now(), &mut self.store);
        self.report(events);
        if let Some(p) = &self.publisher {
            // What ended is unpublished, and the gateway marker removed, before spad exits.
            p.stop(Duration::from_secs(2));
        }
        if self.store.needs_rewrite() {
            // A grant still recorded as live after this is reopened (until its deadline) by
            // the next start.
            self.rewrite_grants();
        } else if let Err(e) = self.store.sync() {
            tracing::error!("{}", error_chain(&e));
        }
        if let Ok(mut r) = self.replay.lock()
            && let Err(e) = r.sync()
        {
            tracing::error!("{}", error_chain(&e));
        }
    }
}

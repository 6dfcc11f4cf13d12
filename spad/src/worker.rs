//! The backend worker: the one thread that changes the firewall.
//!
//! It owns the backend, the live grants, a deadline queue and the grant journal. Requests from
//! the receivers arrive on a channel; the thread sleeps in `recv_timeout` until the next
//! deadline (or forever when nothing is due), so an idle daemon uses no CPU. A re-knock for the
//! same source and access extends the existing grant instead of adding a second one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use spa_backends::{Access, Backend, Grant, GrantId, Nat};
use spa_engine::{Action, GrantRequest, NatHost};

use crate::audit::Audit;
use crate::config::error_chain;
use crate::state::{GrantStore, PersistentReplay};

/// Work for the worker.
pub enum Msg {
    /// An accepted packet, and when it was accepted.
    Request(Box<GrantRequest>, Instant),
    /// Stop: revoke everything (unless `keep`), then confirm.
    Shutdown {
        /// Keep grants in the firewall.
        keep: bool,
        /// Confirmation.
        done: Sender<()>,
    },
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn new_id() -> GrantId {
    let mut b = [0u8; 8];
    // If the OS has no randomness left something is very wrong; fall back to time.
    if getrandom::fill(&mut b).is_err() {
        let n = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        b = n.to_le_bytes();
    }
    GrantId(u64::from_le_bytes(b))
}

type AccessKey = (IpAddr, Option<IpAddr>, Access, Option<Nat>);

fn key_of(g: &Grant) -> AccessKey {
    (g.source, g.destination, g.access.clone(), g.nat.clone())
}

/// The worker's state.
pub struct Worker {
    backend: Box<dyn Backend>,
    grants: HashMap<GrantId, Grant>,
    by_access: HashMap<AccessKey, GrantId>,
    deadlines: BinaryHeap<Reverse<(u64, GrantId)>>,
    store: GrantStore,
    replay: Arc<Mutex<PersistentReplay>>,
    audit: Arc<Mutex<Audit>>,
    last_sync: Instant,
    dirty: bool,
    heartbeat: Arc<std::sync::atomic::AtomicU64>,
}

impl Worker {
    /// Takes over `live` grants (already applied by `prepare`).
    pub fn new(
        backend: Box<dyn Backend>,
        live: Vec<Grant>,
        store: GrantStore,
        replay: Arc<Mutex<PersistentReplay>>,
        audit: Arc<Mutex<Audit>>,
        heartbeat: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        let mut w = Self {
            backend,
            grants: HashMap::new(),
            by_access: HashMap::new(),
            deadlines: BinaryHeap::new(),
            store,
            replay,
            audit,
            last_sync: Instant::now(),
            dirty: false,
            heartbeat,
        };
        for g in live {
            w.track(g);
        }
        w
    }

    fn track(&mut self, g: Grant) {
        self.deadlines.push(Reverse((g.deadline, g.id)));
        self.by_access.insert(key_of(&g), g.id);
        self.grants.insert(g.id, g);
    }

    fn audit(&self) -> std::sync::MutexGuard<'_, Audit> {
        self.audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs until a shutdown message (or all senders are gone).
    pub fn run(mut self, rx: Receiver<Msg>, watchdog: Option<Duration>) {
        loop {
            let now = unix_now();
            self.expire_due(now);
            self.sync_if_due();
            self.heartbeat.store(unix_now(), std::sync::atomic::Ordering::Relaxed);
            let mut wait =
                self.deadlines.peek().map(|Reverse((d, _))| Duration::from_secs(d.saturating_sub(now)));
            // Pending journal data is fsynced within a second; the watchdog needs a heartbeat.
            if self.dirty {
                wait = Some(wait.map_or(Duration::from_secs(1), |w| w.min(Duration::from_secs(1))));
            }
            if let Some(wd) = watchdog {
                wait = Some(wait.map_or(wd, |w| w.min(wd)));
            }
            let msg = match wait {
                Some(w) => match rx.recv_timeout(w.max(Duration::from_millis(1))) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            match msg {
                Msg::Request(req, accepted) => {
                    let queued = accepted.elapsed();
                    self.handle(*req);
                    tracing::debug!(
                        "request handled {} µs after acceptance ({} µs queued)",
                        accepted.elapsed().as_micros(),
                        queued.as_micros()
                    );
                }
                Msg::Shutdown { keep, done } => {
                    self.shutdown(keep);
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// fsyncs the journals once a second while anything is pending. A grant journal that lost
    /// a record is rewritten from the live grants instead, retried every second until it
    /// works (new grants are refused meanwhile).
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
                tracing::error!("{}", error_chain(&e));
            }
            retry |= r.needs_rewrite();
        }
        // Stay dirty so that the next second tries again.
        self.dirty = retry;
    }

    /// Rewrites the grant journal with the live grants; reports the first failure of a run of
    /// them (then one a minute) and the recovery. True when the journal is whole again.
    fn rewrite_grants(&mut self) -> bool {
        match self.store.rewrite(self.grants.values()) {
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

    fn expire_due(&mut self, now: u64) {
        while let Some(&Reverse((deadline, id))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            // Skip stale queue entries (the grant was extended or revoked since).
            let Some(g) = self.grants.get(&id) else { continue };
            if g.deadline != deadline {
                continue;
            }
            let g = g.clone();
            self.end(&g, "expire");
        }
    }

    fn end(&mut self, g: &Grant, event: &'static str) {
        match self.backend.revoke(g) {
            Ok(()) => self.audit().grant(event, g),
            Err(e) => {
                tracing::error!("revoking {} failed: {}", g.id, error_chain(&e));
                self.audit().error("revoke", g, &error_chain(&e));
            }
        }
        self.grants.remove(&g.id);
        self.by_access.remove(&key_of(g));
        if let Err(e) = self.store.del(g.id) {
            // The grant has ended; the journal still says it is live, so it is rewritten.
            tracing::error!(
                "the end of {} was not recorded: {}; the journal will be rewritten",
                g.id,
                error_chain(&e)
            );
        }
        self.dirty = true;
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

    fn handle(&mut self, req: GrantRequest) {
        let now = unix_now();
        if let Action::Command(cmd) = &req.action {
            return self.run_command(&req, cmd);
        }
        let Action::Open { access, nat } = req.action.clone() else { return };
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
        let mut grant = Grant {
            id: new_id(),
            source: req.allowed_source,
            packet_source: req.packet_source,
            destination: None,
            access,
            nat,
            created: now,
            deadline: now + u64::from(req.timeout),
            stanza: req.stanza.to_string(),
            username: req.username,
        };
        if let Some(&id) = self.by_access.get(&key_of(&grant))
            && let Some(existing) = self.grants.get(&id)
        {
            if grant.deadline <= existing.deadline {
                // Nothing to extend; the re-knock is still recorded.
                let e = existing.clone();
                self.audit().grant("extend", &e);
                return;
            }
            let mut extended = existing.clone();
            extended.deadline = grant.deadline;
            extended.packet_source = grant.packet_source;
            self.apply(extended, "extend");
            return;
        }
        if grant.id.0 == 0 || self.grants.contains_key(&grant.id) {
            grant.id = new_id();
        }
        self.apply(grant, "grant");
    }

    /// Records, then applies a grant. A grant that cannot be recorded is not made: after a
    /// restart nothing would know to close it, and its packet could be accepted again.
    fn apply(&mut self, grant: Grant, event: &'static str) {
        if self.store.needs_rewrite() && !self.rewrite_grants() {
            self.dirty = true;
        }
        if let Err(e) = self.store.put(&grant) {
            tracing::error!(
                "{event} {} for {} refused, its record cannot be written: {}",
                grant.id,
                grant.source,
                error_chain(&e)
            );
            self.audit().error(event, &grant, "state_unwritable");
            return;
        }
        let started = Instant::now();
        let result = self.backend.grant(&grant);
        tracing::debug!("backend {} took {} µs", self.backend.name(), started.elapsed().as_micros());
        match result {
            Ok(()) => {
                tracing::info!(
                    "{event} {} for {} ({}) until {}",
                    grant.id,
                    grant.source,
                    grant.access,
                    grant.deadline
                );
                self.audit().grant(event, &grant);
                self.track(grant);
            }
            Err(e) => {
                tracing::error!("{event} {} failed: {}", grant.id, error_chain(&e));
                self.audit().error(event, &grant, &error_chain(&e));
                if event == "grant" {
                    let _ = self.store.del(grant.id);
                }
            }
        }
        self.dirty = true;
    }

    /// Runs an accepted command message (`enable_cmd_exec`) as `/bin/sh -c CMD`, as fwknopd
    /// does: in `/`, with an empty environment (fwknopd passes none; we set only `PATH`),
    /// stdin and stdout on `/dev/null`, stderr read (bounded) and dropped, killed after 5 s
    /// together with its whole process group (what it put in the background too). The event
    /// `command` records how it ended: its exit code, `signal`, `timeout`, or why it could not
    /// start.
    fn run_command(&mut self, req: &GrantRequest, cmd: &str) {
        use spa_backends::process::{self, DEFAULT_PATH, Environment, Invocation};
        /// fwknopd's limit for a command; the worker (which changes the firewall) waits for it.
        const LIMIT: Duration = Duration::from_secs(5);
        let inv = Invocation::new("/bin/sh", LIMIT)
            .args(["-c", cmd])
            .env(Environment::Clear(vec![("PATH".into(), DEFAULT_PATH.into())]))
            .label("command");
        let status = match process::run(inv) {
            Ok(outcome) => outcome.status.code().map_or_else(|| "signal".to_owned(), |c| c.to_string()),
            Err(spa_backends::BackendError::Timeout { .. }) => "timeout".to_owned(),
            Err(e) => error_chain(&e),
        };
        tracing::info!("command from {} ({}) ended: {status}", req.packet_source, req.stanza);
        self.audit().daemon(
            "command",
            serde_json::json!({
                "packet_source": req.packet_source.to_string(),
                "allowed_source": req.allowed_source.to_string(),
                "stanza": &*req.stanza,
                "username": req.username,
                "exit": status,
            }),
        );
    }

    fn shutdown(&mut self, keep: bool) {
        if !keep {
            let all: Vec<Grant> = self.grants.values().cloned().collect();
            for g in all {
                self.end(&g, "revoke");
            }
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

//! What the running daemon counts about itself, for `spad status` (the control socket) and the
//! Prometheus endpoint (`[metrics]`).
//!
//! Everything here is cheap to update from the packet path: counters are relaxed atomics, the
//! reject reasons are a fixed array (a reason code the daemon does not know is counted as
//! `other`, so no label value is ever chosen by the sender of a packet), and the backend call
//! histograms are arrays of atomic buckets. The few things that carry text (the last tamper
//! repair, the last backend error) are written by the backend worker only, under a mutex of
//! their own that nothing on the packet path takes.
//!
//! The audit trail feeds most of it ([`crate::audit::Audit`] counts every reject, grant and
//! end it writes), so the numbers agree with the audit file by construction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use spa_backends::Call;
use spa_engine::RejectReason;

use crate::audit::rfc3339;
use crate::worker::unix_now;

/// Reject reasons the daemon adds to the engine's ([`RejectReason::ALL_CODES`]): decisions
/// taken after a packet authenticated (rate limit, a full worker or command queue, shutdown, a
/// NAT target that does not resolve).
pub const DAEMON_REJECT_CODES: [&str; 6] = [
    "rate_limited",
    "backend_busy",
    "command_busy",
    "shutting_down",
    "nat_target_unresolvable",
    "source_port_unsupported",
];

/// The label of a reject whose code is in neither list (a new reason someone forgot to add
/// here): counted, never turned into a label of its own.
pub const OTHER_REASON: &str = "other";

/// How many reject reasons are counted: the engine's, the daemon's, and `other`.
const REASONS: usize = RejectReason::ALL_CODES.len() + DAEMON_REJECT_CODES.len() + 1;

/// Every reject reason in the order of the counters.
pub fn reject_reasons() -> impl Iterator<Item = &'static str> {
    RejectReason::ALL_CODES.iter().chain(DAEMON_REJECT_CODES.iter()).copied().chain([OTHER_REASON])
}

fn reason_index(code: &str) -> usize {
    reject_reasons().position(|r| r == code).unwrap_or(REASONS - 1)
}

/// Upper bounds of the backend call histogram buckets, in seconds: 100 µs (a netlink batch) to
/// 10 s (a hung command, killed at its timeout).
pub const CALL_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Latencies of one kind of backend call.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; the last one is above every bound).
    buckets: [AtomicU64; CALL_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one call.
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = CALL_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(CALL_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the `le` buckets of Prometheus, `+Inf` last), the count
    /// and the sum in seconds.
    pub fn cumulative(&self) -> (Vec<u64>, u64, f64) {
        let mut total = 0;
        let buckets = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        // The count is the +Inf bucket, so the two always agree in one scrape.
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (buckets, total, sum)
    }
}

/// Something that happened, when, and what was said about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Noted {
    /// Unix seconds.
    pub at: u64,
    /// What happened (our own text, or a backend's error chain), at most [`NOTE_MAX`] bytes.
    pub text: String,
}

/// Longest note kept.
pub const NOTE_MAX: usize = 512;

impl Noted {
    fn now(text: &str) -> Self {
        let mut end = text.len().min(NOTE_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Self { at: unix_now(), text: text[..end].to_owned() }
    }

    fn json(&self) -> Value {
        json!({"time": rfc3339(self.at, 0), "message": self.text})
    }
}

/// How many packets the kernel dropped before a receiver could read them.
pub trait ReceiveDrops: Send + Sync {
    /// Packets dropped since the receiver was opened, or `None` where the system does not
    /// tell (BSD sockets).
    fn drops(&self) -> Option<u64>;
}

/// The last tamper and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tamper {
    /// What was found changed, and when.
    pub found: Noted,
    /// Whether the protection was rebuilt (`None` while that is under way).
    pub repaired: Option<bool>,
}

/// The daemon's counters and gauges.
pub struct Stats {
    started: u64,
    /// New grants.
    pub grants: AtomicU64,
    /// Re-knocks that moved a grant's deadline.
    pub extends: AtomicU64,
    /// Re-knocks that changed nothing (the grant already lasted longer).
    pub reknocks: AtomicU64,
    /// Grants ended on request (control socket, shared store, shutdown).
    pub revokes: AtomicU64,
    /// Grants ended at their deadline.
    pub expires: AtomicU64,
    rejects: [AtomicU64; REASONS],
    /// Reject lines the audit file left out (counted in its summaries only).
    pub audit_suppressed: AtomicU64,
    /// Times the backend found its setup changed under it.
    pub tampers: AtomicU64,
    /// Times the protection was rebuilt after a tamper.
    pub tamper_repairs: AtomicU64,
    /// Backend failures: refused grants and extensions, failed closes, failed repairs.
    pub backend_errors: AtomicU64,
    /// Failures of the replay store: its journal could not be written or synced, or the
    /// shared store did not answer.
    pub replay_store_errors: AtomicU64,
    /// Live grants, as the worker last counted them.
    pub live_grants: AtomicU64,
    calls: [Histogram; 3],
    last_tamper: Mutex<Option<Tamper>>,
    last_backend_error: Mutex<Option<Noted>>,
    receivers: Mutex<Vec<(String, Arc<dyn ReceiveDrops>)>>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").field("started", &self.started).finish_non_exhaustive()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: unix_now(),
            grants: AtomicU64::new(0),
            extends: AtomicU64::new(0),
            reknocks: AtomicU64::new(0),
            revokes: AtomicU64::new(0),
            expires: AtomicU64::new(0),
            rejects: std::array::from_fn(|_| AtomicU64::new(0)),
            audit_suppressed: AtomicU64::new(0),
            tampers: AtomicU64::new(0),
            tamper_repairs: AtomicU64::new(0),
            backend_errors: AtomicU64::new(0),
            replay_store_errors: AtomicU64::new(0),
            live_grants: AtomicU64::new(0),
            calls: Default::default(),
            last_tamper: Mutex::new(None),
            last_backend_error: Mutex::new(None),
            receivers: Mutex::new(Vec::new()),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// Counters at zero, started now.
    pub fn new() -> Self {
        Self::default()
    }

    /// When the daemon started (Unix seconds).
    pub fn started(&self) -> u64 {
        self.started
    }

    /// A rejected packet, by its reason code.
    pub fn reject(&self, code: &str) {
        bump(&self.rejects[reason_index(code)]);
    }

    /// Rejects so far, per reason, in the order of [`reject_reasons`].
    pub fn rejects(&self) -> Vec<(&'static str, u64)> {
        reject_reasons().zip(self.rejects.iter().map(|c| c.load(Ordering::Relaxed))).collect()
    }

    /// A grant event as the audit trail names it (`grant`, `extend`, `reknock`, `revoke`,
    /// `expire`).
    pub fn grant_event(&self, event: &str) {
        match event {
            "grant" => bump(&self.grants),
            "extend" => bump(&self.extends),
            "reknock" => bump(&self.reknocks),
            "revoke" => bump(&self.revokes),
            "expire" => bump(&self.expires),
            _ => {}
        }
    }

    /// The backend found its setup changed.
    pub fn tampered(&self, detail: &str) {
        bump(&self.tampers);
        *self.last_tamper.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Tamper { found: Noted::now(detail), repaired: None });
    }

    /// The rebuild after a tamper worked (`true`) or failed.
    pub fn repaired(&self, ok: bool) {
        if ok {
            bump(&self.tamper_repairs);
        }
        if let Some(t) = self.last_tamper.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            t.repaired = Some(ok);
        }
    }

    /// A backend failure.
    pub fn backend_error(&self, message: &str) {
        bump(&self.backend_errors);
        *self.last_backend_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(Noted::now(message));
    }

    /// The last tamper found, if any.
    pub fn last_tamper(&self) -> Option<Tamper> {
        self.last_tamper.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The last backend failure, if any.
    pub fn last_backend_error(&self) -> Option<Noted> {
        self.last_backend_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The latencies of one kind of backend call.
    pub fn calls(&self, call: Call) -> &Histogram {
        &self.calls[call_index(call)]
    }

    /// A receiver whose kernel drops are reported under `name` (from the configuration:
    /// `udp 0.0.0.0:62201`, `capture eth0`).
    pub fn add_receiver(&self, name: String, r: Arc<dyn ReceiveDrops>) {
        self.receivers.lock().unwrap_or_else(PoisonError::into_inner).push((name, r));
    }

    /// Each receiver's kernel drops (`None`: the system does not tell).
    pub fn receive_drops(&self) -> Vec<(String, Option<u64>)> {
        let list: Vec<(String, Arc<dyn ReceiveDrops>)> =
            self.receivers.lock().unwrap_or_else(PoisonError::into_inner).clone();
        list.into_iter().map(|(name, r)| (name, r.drops())).collect()
    }

    /// The counters as `spad status --json` shows them.
    pub fn json(&self) -> Value {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let now = unix_now();
        let rejects: serde_json::Map<String, Value> = self
            .rejects()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r.to_owned(), json!(n)))
            .collect();
        let drops: Vec<Value> =
            self.receive_drops().into_iter().map(|(name, d)| json!({"receiver": name, "drops": d})).collect();
        json!({
            "started": rfc3339(self.started, 0),
            "uptime_seconds": now.saturating_sub(self.started),
            "live_grants": load(&self.live_grants),
            "grants": load(&self.grants),
            "extends": load(&self.extends),
            "reknocks": load(&self.reknocks),
            "revokes": load(&self.revokes),
            "expires": load(&self.expires),
            "rejects": rejects,
            "rejects_total": self.rejects().iter().map(|(_, n)| n).sum::<u64>(),
            "audit_rejects_suppressed": load(&self.audit_suppressed),
            "tampers": load(&self.tampers),
            "tamper_repairs": load(&self.tamper_repairs),
            "last_tamper": self.last_tamper().map(|t| {
                let mut v = t.found.json();
                v["repaired"] = json!(t.repaired);
                v
            }),
            "backend_errors": load(&self.backend_errors),
            "last_backend_error": self.last_backend_error().map(|n| n.json()),
            "receive_drops": drops,
            "replay_store_errors": load(&self.replay_store_errors),
        })
    }
}

/// The index of a call kind in [`Stats::calls`].
fn call_index(call: Call) -> usize {
    match call {
        Call::Apply => 0,
        Call::Check => 1,
        Call::Prepare => 2,
    }
}

/// Every kind of backend call, with its label.
pub const CALLS: [(Call, &str); 3] =
    [(Call::Apply, "apply"), (Call::Check, "check"), (Call::Prepare, "prepare")];

impl spa_backends::CallObserver for Stats {
    fn observed(&self, call: Call, took: Duration) {
        self.calls(call).observe(took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_counter_and_unknown_codes_are_other() {
        let s = Stats::new();
        s.reject("hmac_mismatch");
        s.reject("hmac_mismatch");
        s.reject("rate_limited");
        s.reject("made_up_by_someone");
        let r = s.rejects();
        assert_eq!(r.len(), REASONS);
        let get = |code: &str| r.iter().find(|(c, _)| *c == code).unwrap().1;
        assert_eq!((get("hmac_mismatch"), get("rate_limited"), get(OTHER_REASON)), (2, 1, 1));
        assert!(r.iter().all(|(c, _)| *c != "made_up_by_someone"));
        // The codes are unique, so each has exactly one counter.
        let mut codes: Vec<&str> = reject_reasons().collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), REASONS);
    }

    /// Every reject code the daemon writes as a literal has a counter of its own (a new one
    /// would otherwise be counted as `other` without anyone noticing).
    #[test]
    fn every_literal_reject_code_of_the_daemon_is_counted() {
        let sources = [include_str!("lib.rs"), include_str!("worker.rs"), include_str!("command.rs")];
        let mut found = Vec::new();
        for text in sources {
            for (i, _) in text.match_indices("reject(") {
                let rest = text[i + "reject(".len()..].trim_start();
                let rest = rest.strip_prefix("req.packet_source,").map_or(rest, str::trim_start);
                if let Some(code) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    found.push(code);
                }
            }
        }
        assert!(found.contains(&"command_busy") && found.contains(&"nat_target_unresolvable"), "{found:?}");
        for code in found {
            assert!(
                reject_reasons().any(|r| r == code),
                "{code} has no counter: add it to DAEMON_REJECT_CODES"
            );
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_the_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (b, count, sum) = h.cumulative();
        assert_eq!(b.len(), CALL_BUCKETS.len() + 1);
        assert_eq!(count, 4);
        assert_eq!(b[0], 2, "le=0.0001 holds 50 µs and exactly 100 µs");
        assert_eq!(b[CALL_BUCKETS.iter().position(|x| *x == 0.005).unwrap()], 3);
        assert_eq!(b[CALL_BUCKETS.len() - 1], 3, "60 s is above every bound");
        assert_eq!(b[CALL_BUCKETS.len()], 4);
        assert!((sum - 60.00315).abs() < 1e-9, "{sum}");
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn notes_are_bounded_on_a_character_boundary() {
        let s = Stats::new();
        s.backend_error(&"é".repeat(NOTE_MAX));
        let n = s.last_backend_error().unwrap();
        assert!(n.text.len() <= NOTE_MAX && n.text.chars().all(|c| c == 'é'));
        s.tampered("table spa vanished");
        assert_eq!(s.last_tamper().unwrap().repaired, None);
        s.repaired(true);
        assert_eq!(s.last_tamper().unwrap().repaired, Some(true));
        assert_eq!(s.tamper_repairs.load(Ordering::Relaxed), 1);
    }
}

//! The audit trail: one JSON line per decision, written as it happens.
//!
//! Grants, extensions, expiries, revocations and backend errors are always written. Rejects
//! are written up to `max_rejects_per_second` in all, and up to a fifth of that per source
//! (IPv6 sources by their /64); beyond either they are counted and a `reject_summary` line
//! reports the counts once per second, so a flood of junk can neither fill the disk, nor push
//! real events out of view, nor hide the rejects of other sources behind its own. Attacker-controlled text never reaches the
//! log: only addresses, reason codes and our own names do.
//!
//! The daemon's log gets a summary of all rejects (counts by reason, and how many the audit
//! file left out) once a minute while there are any, so an admin reading the journal sees
//! that packets are being refused without a line per packet.
//!
//! An audit file is reopened on SIGHUP and SIGUSR1 (after logrotate moved it away).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use spa_backends::{Access, Grant, Nat};

use crate::ratelimit::RateLimiter;
use crate::stats::Stats;

/// Formats Unix time (seconds and milliseconds) as RFC 3339 UTC.
pub fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Now as RFC 3339 UTC with milliseconds: the one time format of the audit trail and the log.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

/// The access of a grant as the audit log shows it: `["tcp/22"]` or `"all"`.
pub fn access_json(access: &Access) -> Value {
    match access {
        Access::All => json!("all"),
        Access::Ports(p) => json!(p.iter().map(ToString::to_string).collect::<Vec<_>>()),
    }
}

/// How often the daemon's log gets a summary of the rejects.
const LOG_SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Opens an audit file for appending, creating it (mode 0600: it names clients and stanzas)
/// and its directory.
fn open_file(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// Where audit lines go, with the reject budget.
pub struct Audit {
    out: Box<dyn Write + Send>,
    /// The file `out` writes to, to reopen; `None` for stdout and other writers.
    path: Option<PathBuf>,
    max_rejects: u32,
    per_source: RateLimiter,
    window_start: Instant,
    written_in_window: u32,
    suppressed: BTreeMap<&'static str, u64>,
    /// Rejects since the last summary in the daemon's log, by reason, and how many of them
    /// the audit file left out.
    log_counts: BTreeMap<&'static str, u64>,
    log_suppressed: u64,
    log_window_start: Instant,
    /// Counts what is written here (and what is left out), for `spad status` and metrics.
    stats: std::sync::Arc<Stats>,
}

/// Who asked for something done on request (a revoke, a reload), as the audit trail records
/// it: a text for the `by` field, and what the kernel said about the asker where it was asked
/// over the control socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    /// Free text: `root (uid 0, pid 4242)`, or what a shared store's revoke message said
    /// (short printable ASCII, checked before it gets here).
    pub by: String,
    /// The asker's user id (control socket: from the kernel).
    pub uid: Option<u32>,
    /// That user's name, if the system has one for it.
    pub user: Option<String>,
    /// The asker's process id, where the system tells it.
    pub pid: Option<u32>,
}

impl Requester {
    /// A request that carries only a text (the shared store's revoke channel).
    pub fn text(by: &str) -> Self {
        Self { by: by.to_owned(), ..Self::default() }
    }

    /// Adds `by`, `uid`, `user` and `pid` (those known) to an audit line.
    pub fn annotate(&self, v: &mut Value) {
        v["by"] = json!(self.by);
        if let Some(uid) = self.uid {
            v["uid"] = json!(uid);
        }
        if let Some(user) = &self.user {
            v["user"] = json!(user);
        }
        if let Some(pid) = self.pid {
            v["pid"] = json!(pid);
        }
    }
}

impl Audit {
    /// Writes to `out`, at most `max_rejects` reject lines per second.
    pub fn new(out: Box<dyn Write + Send>, max_rejects: u32) -> Self {
        Self {
            out,
            path: None,
            max_rejects,
            per_source: per_source_budget(max_rejects),
            window_start: Instant::now(),
            written_in_window: 0,
            suppressed: BTreeMap::new(),
            log_counts: BTreeMap::new(),
            log_suppressed: 0,
            log_window_start: Instant::now(),
            stats: std::sync::Arc::default(),
        }
    }

    /// The counters this audit trail feeds.
    pub fn stats(&self) -> std::sync::Arc<Stats> {
        self.stats.clone()
    }

    /// Writes to the file at `path` (appending; created 0600 with its directory), or to
    /// stdout for `-`.
    pub fn open(path: &str, max_rejects: u32) -> std::io::Result<Self> {
        if path == "-" {
            return Ok(Self::new(Box::new(std::io::stdout()), max_rejects));
        }
        let file = open_file(Path::new(path))?;
        Ok(Self { path: Some(path.into()), ..Self::new(Box::new(file), max_rejects) })
    }

    /// Opens the audit file again by its name (SIGHUP, SIGUSR1), so that lines go to a new
    /// file after logrotate renamed the old one. If that fails, lines keep going where they
    /// went. Returns the file, if there is one.
    pub fn reopen(&mut self) -> std::io::Result<Option<&Path>> {
        let Some(path) = &self.path else { return Ok(None) };
        let file = open_file(path)?;
        let _ = self.out.flush();
        self.out = Box::new(file);
        Ok(Some(path))
    }

    fn write(&mut self, mut v: Value) {
        if let Value::Object(m) = &mut v {
            m.insert("time".into(), json!(now_rfc3339()));
        }
        // An audit write failure must not stop the daemon; it is reported once per line on
        // stderr by the caller's logger.
        // One write per line, so a reader never sees half a line.
        let mut line = v.to_string();
        line.push('\n');
        if let Err(e) = self.out.write_all(line.as_bytes()).and_then(|()| self.out.flush()) {
            tracing::error!("audit write failed: {e}");
        }
    }

    /// Changes the reject budget (on reload).
    pub fn set_max_rejects(&mut self, max: u32) {
        if max != self.max_rejects {
            self.max_rejects = max;
            self.per_source = per_source_budget(max);
        }
    }

    /// Whether a summary of suppressed rejects is waiting for its second to end.
    pub fn has_pending_summary(&self) -> bool {
        !self.suppressed.is_empty()
    }

    /// Emits the summary of suppressed rejects if a second has passed, and the log's summary
    /// of all rejects if a minute has.
    pub fn tick(&mut self) {
        if self.log_window_start.elapsed() >= LOG_SUMMARY_EVERY {
            self.log_summary();
        }
        if self.window_start.elapsed() < Duration::from_secs(1) {
            return;
        }
        if !self.suppressed.is_empty() {
            let counts = std::mem::take(&mut self.suppressed);
            self.write(json!({"event": "reject_summary", "suppressed": counts}));
        }
        self.window_start = Instant::now();
        self.written_in_window = 0;
    }

    /// A dropped packet.
    pub fn reject(
        &mut self,
        source: IpAddr,
        reason: &'static str,
        detail: Option<&str>,
        stanza: Option<&str>,
    ) {
        self.tick();
        self.stats.reject(reason);
        *self.log_counts.entry(reason).or_default() += 1;
        if self.written_in_window >= self.max_rejects || !self.per_source.allow(source) {
            *self.suppressed.entry(reason).or_default() += 1;
            self.log_suppressed += 1;
            self.stats.audit_suppressed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        self.written_in_window += 1;
        let mut v = json!({"event": "reject", "packet_source": source.to_string(), "reason": reason});
        if let Some(d) = detail {
            v["detail"] = json!(d);
        }
        if let Some(s) = stanza {
            v["stanza"] = json!(s);
        }
        self.write(v);
    }

    /// Writes the daemon's log line that sums up the rejects since the last one (reason codes
    /// and counts only), if there were any.
    fn log_summary(&mut self) {
        let seconds = self.log_window_start.elapsed().as_secs();
        self.log_window_start = Instant::now();
        if self.log_counts.is_empty() {
            return;
        }
        let counts = std::mem::take(&mut self.log_counts);
        let total: u64 = counts.values().sum();
        let by_reason: Vec<String> = counts.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let left_out = std::mem::take(&mut self.log_suppressed);
        tracing::info!(
            "rejected {total} packets in the last {seconds} s ({}); {left_out} of them counted only in audit summaries",
            by_reason.join(", ")
        );
    }

    /// A grant made, extended, re-knocked, expired or revoked (`event` says which);
    /// `attempts` counts earlier attempts to end it that failed.
    pub fn grant(&mut self, event: &'static str, g: &Grant, attempts: u32) {
        self.tick();
        self.stats.grant_event(event);
        let v = grant_json(event, g, attempts);
        self.write(v);
    }

    /// A grant revoked on request, with who asked.
    pub fn revoked(&mut self, g: &Grant, attempts: u32, by: &Requester) {
        self.tick();
        self.stats.grant_event("revoke");
        let mut v = grant_json("revoke", g, attempts);
        by.annotate(&mut v);
        self.write(v);
    }

    /// A daemon-level event done on request (`reload` over the control socket), with who
    /// asked.
    pub fn daemon_by(&mut self, event: &'static str, mut detail: Value, by: &Requester) {
        by.annotate(&mut detail);
        self.daemon(event, detail);
    }

    /// An authenticated packet let through on this gateway's replay cache alone, because the
    /// shared store could not answer (`on_store_down = "local"`): it could have been accepted
    /// at another gateway too.
    pub fn degraded(&mut self, source: IpAddr, stanza: &str) {
        self.tick();
        self.write(json!({
            "event": "replay_store_degraded",
            "packet_source": source.to_string(),
            "stanza": stanza,
        }));
    }

    /// A backend failure for a grant.
    pub fn error(&mut self, action: &'static str, g: &Grant, error: &str) {
        self.write(json!({
            "event": "error",
            "action": action,
            "id": g.id.to_string(),
            "packet_source": g.packet_source.to_string(),
            "allowed_source": g.source.to_string(),
            "access": access_json(&g.access),
            "stanza": g.stanza,
            "error": error,
        }));
    }

    /// Ending a grant failed; it stays recorded as closing and is retried.
    pub fn closing(&mut self, g: &Grant, c: &spa_backends::Closing, error: &str) {
        self.write(json!({
            "event": "error",
            "action": c.why.event(),
            "id": g.id.to_string(),
            "packet_source": g.packet_source.to_string(),
            "allowed_source": g.source.to_string(),
            "access": access_json(&g.access),
            "stanza": g.stanza,
            "error": error,
            "closing": true,
            "attempts": c.attempts,
            "retry_at": rfc3339(c.retry_at, 0),
        }));
    }

    /// A daemon-level event (start, reload, stop). At `stop` the log also gets the summary of
    /// the rejects not yet summed up.
    pub fn daemon(&mut self, event: &'static str, detail: Value) {
        if event == "stop" {
            self.log_summary();
        }
        self.write(json!({"event": event, "detail": detail}));
    }
}

/// The audit line of a grant event.
fn grant_json(event: &'static str, g: &Grant, attempts: u32) -> Value {
    let mut v = json!({
        "event": event,
        "id": g.id.to_string(),
        "packet_source": g.packet_source.to_string(),
        "allowed_source": g.source.to_string(),
        "access": access_json(&g.access),
        "nat": g.nat.as_deref().map(nat_json),
        "stanza": g.stanza,
        "username": g.username,
        "expires": rfc3339(g.deadline, 0),
    });
    if let Some(d) = g.destination {
        v["destination"] = json!(d.to_string());
    }
    if let Some(p) = g.source_port {
        v["source_port"] = json!(p);
    }
    if attempts > 0 {
        v["failed_attempts"] = json!(attempts);
    }
    v
}

/// Reject lines one source may write per second: a fifth of the total (at least one), with a
/// burst of twice that, so one flooding source leaves room for the others.
fn per_source_budget(max_rejects: u32) -> RateLimiter {
    let rate = f64::from((max_rejects / 5).max(1));
    RateLimiter::new(4096, rate, 2.0 * rate)
}

/// NAT as the audit log shows it.
pub fn nat_json(n: &Nat) -> Value {
    serde_json::to_value(n).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_796_412, 5), "2026-11-27T16:20:12.005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn rejects_are_budgeted_per_source_and_in_all_then_summarised() {
        let buf = Buf::default();
        // 10 lines a second in all; 2 a second (burst 4) per source.
        let mut a = Audit::new(Box::new(buf.clone()), 10);
        for source in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            for _ in 0..10 {
                a.reject(source.parse().unwrap(), "hmac_mismatch", None, Some("s"));
            }
        }
        assert!(a.has_pending_summary());
        a.window_start -= Duration::from_secs(2);
        a.tick();
        assert!(!a.has_pending_summary());
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let written = |src: &str| lines.iter().filter(|l| l["packet_source"] == src).count();
        // The first flooding source cannot take the whole budget: the others still get lines.
        assert_eq!((written("192.0.2.1"), written("192.0.2.2"), written("192.0.2.3")), (4, 4, 2));
        assert_eq!(lines.len(), 11);
        assert_eq!(lines[0]["event"], "reject");
        assert_eq!(lines[0]["reason"], "hmac_mismatch");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[10]["event"], "reject_summary");
        assert_eq!(lines[10]["suppressed"]["hmac_mismatch"], 20);
    }
}

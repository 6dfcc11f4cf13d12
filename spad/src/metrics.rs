//! The Prometheus endpoint (`[metrics] listen = "127.0.0.1:9862"`, off by default): the
//! daemon's counters ([`crate::stats::Stats`]) in the text exposition format 0.0.4, served by
//! a deliberately small HTTP/1.1 server on a std `TcpListener` in threads of its own.
//!
//! The server answers `GET /metrics` (and `HEAD`) and nothing else, one request per
//! connection. Whoever can reach it may be hostile: a request head is read up to
//! [`MAX_REQUEST`] bytes within [`REQUEST_TIME`] in all (a slow sender is cut off), at most
//! [`MAX_CONNECTIONS`] connections are served at once (more are closed at once), and nothing a
//! client sends ends up in a reply, a log line or a label. Label values are the daemon's own:
//! reason codes from a fixed list, backend call kinds, receiver names from the configuration.
//! The endpoint has no authentication: bind it to loopback or to a management address the
//! firewall keeps to the scraper. It reveals counts, never addresses or keys.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::shared_state::ReplayShare;
use crate::stats::{CALL_BUCKETS, CALLS, Stats};

/// Longest request head read (request line and headers); a longer one is refused.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Longest time a client has to send its request head, in all.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// Longest wait for one read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 4;

/// `[metrics]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where the Prometheus endpoint listens (`127.0.0.1:9862`); not set: no endpoint.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// What the metrics say besides the counters.
pub struct Facts {
    /// The running backend's name.
    pub backend: &'static str,
    /// The shared replay store, if any.
    pub share: Option<Arc<ReplayShare>>,
}

/// `\`, `"` and newlines escaped, as label values need.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A float as Prometheus writes it.
fn float(v: f64) -> String {
    if v.is_infinite() { if v > 0.0 { "+Inf".into() } else { "-Inf".into() } } else { format!("{v}") }
}

/// `# HELP` and `# TYPE` of a metric.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The counters as Prometheus text (exposition format 0.0.4).
pub fn render(stats: &Stats, facts: &Facts) -> String {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::with_capacity(8 * 1024);
    head(&mut out, "spad_build_info", "gauge", "The running spad: version, commit and backend (always 1).");
    let _ = writeln!(
        out,
        "spad_build_info{{version=\"{}\",commit=\"{}\",backend=\"{}\"}} 1",
        label(env!("CARGO_PKG_VERSION")),
        label(env!("SPA_GIT_COMMIT")),
        label(facts.backend)
    );
    head(&mut out, "spad_start_time_seconds", "gauge", "When spad started, in Unix seconds.");
    let _ = writeln!(out, "spad_start_time_seconds {}", stats.started());

    let counters = [
        ("spad_grants_total", "New grants.", &stats.grants),
        ("spad_extends_total", "Re-knocks that moved a live grant's deadline.", &stats.extends),
        ("spad_reknocks_total", "Re-knocks of a live grant that changed nothing.", &stats.reknocks),
        ("spad_revokes_total", "Grants ended on request (spad revoke, shutdown).", &stats.revokes),
        ("spad_expires_total", "Grants ended at their deadline.", &stats.expires),
    ];
    for (name, help, c) in counters {
        head(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", load(c));
    }
    head(&mut out, "spad_live_grants", "gauge", "Live grants (counted by the backend worker every second).");
    let _ = writeln!(out, "spad_live_grants {}", load(&stats.live_grants));

    head(&mut out, "spad_rejects_total", "counter", "Packets refused, by reason code.");
    for (reason, n) in stats.rejects() {
        let _ = writeln!(out, "spad_rejects_total{{reason=\"{}\"}} {n}", label(reason));
    }
    head(
        &mut out,
        "spad_audit_rejects_suppressed_total",
        "counter",
        "Reject lines the audit file left out (over max_rejects_per_second; counted in its summaries).",
    );
    let _ = writeln!(out, "spad_audit_rejects_suppressed_total {}", load(&stats.audit_suppressed));

    head(
        &mut out,
        "spad_backend_call_duration_seconds",
        "histogram",
        "Time the firewall backend took per call: apply (grant changes), check (tamper check), prepare (setup).",
    );
    for (call, name) in CALLS {
        let (buckets, count, sum) = stats.calls(call).cumulative();
        let bounds = CALL_BUCKETS.iter().copied().chain([f64::INFINITY]);
        for (le, n) in bounds.zip(buckets) {
            let _ = writeln!(
                out,
                "spad_backend_call_duration_seconds_bucket{{operation=\"{name}\",le=\"{}\"}} {n}",
                float(le)
            );
        }
        let _ =
            writeln!(out, "spad_backend_call_duration_seconds_sum{{operation=\"{name}\"}} {}", float(sum));
        let _ = writeln!(out, "spad_backend_call_duration_seconds_count{{operation=\"{name}\"}} {count}");
    }
    let more = [
        (
            "spad_backend_errors_total",
            "Backend failures: refused grants and extensions, failed closes, failed repairs.",
            &stats.backend_errors,
        ),
        (
            "spad_tampers_total",
            "Times the backend found its firewall setup changed under it.",
            &stats.tampers,
        ),
        (
            "spad_tamper_repairs_total",
            "Times the protection was rebuilt after a tamper.",
            &stats.tamper_repairs,
        ),
        (
            "spad_replay_store_errors_total",
            "Replay store failures: its journal not written or synced, or the shared store not answering.",
            &stats.replay_store_errors,
        ),
    ];
    for (name, help, c) in more {
        head(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", load(c));
    }
    let drops: Vec<(String, u64)> =
        stats.receive_drops().into_iter().filter_map(|(name, d)| Some((name, d?))).collect();
    if !drops.is_empty() {
        head(
            &mut out,
            "spad_receive_drops_total",
            "counter",
            "Packets the kernel dropped before spad read them (socket or capture buffer full), per receiver.",
        );
        for (name, n) in drops {
            let _ = writeln!(out, "spad_receive_drops_total{{receiver=\"{}\"}} {n}", label(&name));
        }
    }
    if let Some(share) = &facts.share {
        head(
            &mut out,
            "spad_shared_store_up",
            "gauge",
            "Whether the shared replay store (Redis) has a ready connection.",
        );
        let _ = writeln!(out, "spad_shared_store_up {}", u8::from(share.connected()));
    }
    out
}

/// Binds the endpoint's address (before the firewall is touched, so a busy port stops spad
/// cleanly).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves the endpoint in threads of its own.
pub fn serve(listener: TcpListener, stats: Arc<Stats>, facts: Facts) -> std::io::Result<()> {
    let facts = Arc::new(facts);
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            if let Err(e) = crate::privs::drop_thread_capabilities() {
                tracing::warn!("metrics: cannot drop capabilities: {e}");
            }
            accept(&listener, &stats, &facts);
        })
        .map(drop)
}

/// Releases a connection slot when its handler ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept(listener: &TcpListener, stats: &Arc<Stats>, facts: &Arc<Facts>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut failures = crate::shared_state::Throttle::new(Duration::from_secs(60));
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, say: report once a minute, and do not spin.
                if let Some(n) = failures.allow() {
                    tracing::error!("metrics: accept: {e}{}", crate::shared_state::more(n));
                }
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            drop(stream);
            continue;
        }
        let slot = Slot(active.clone());
        let (stats, facts) = (stats.clone(), facts.clone());
        let spawned = thread::Builder::new().name("metrics conn".into()).spawn(move || {
            let _slot = slot;
            let _ = handle(stream, &stats, &facts);
        });
        if let Err(e) = spawned
            && let Some(n) = failures.allow()
        {
            tracing::error!("metrics: cannot start a thread: {e}{}", crate::shared_state::more(n));
        }
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// `GET /metrics` (`head`: `HEAD /metrics`).
    Metrics { head: bool },
    /// Another path.
    NotFound,
    /// Another method.
    BadMethod,
    /// Not an HTTP/1.x request line, or too long.
    Bad,
}

/// Reads the request head: up to the empty line, at most [`MAX_REQUEST`] bytes, within
/// [`REQUEST_TIME`]. `None` when it did not come whole.
fn read_head(stream: &mut impl Read) -> Option<Vec<u8>> {
    let started = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Some(buf);
        }
        if buf.len() >= MAX_REQUEST || started.elapsed() >= REQUEST_TIME {
            return None;
        }
        let room = (MAX_REQUEST - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Parses a request head's first line.
fn parse(head: &[u8]) -> Asked {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else { return Asked::Bad };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Bad;
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") || method.is_empty() || !target.starts_with('/') {
        return Asked::Bad;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Asked::Metrics { head: method == "HEAD" },
        ("GET" | "HEAD", _) => Asked::NotFound,
        _ => Asked::BadMethod,
    }
}

/// A whole response.
fn response(status: &str, extra: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        r.extend_from_slice(body.as_bytes());
    }
    r
}

fn handle(mut stream: TcpStream, stats: &Stats, facts: &Facts) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let asked = read_head(&mut stream).map_or(Asked::Bad, |h| parse(&h));
    let text = "text/plain; charset=utf-8";
    let reply = match asked {
        Asked::Metrics { head } => {
            let body = render(stats, facts);
            response("200 OK", "", "text/plain; version=0.0.4; charset=utf-8", &body, head)
        }
        Asked::NotFound => response("404 Not Found", "", text, "spad serves /metrics only\n", false),
        Asked::BadMethod => {
            response("405 Method Not Allowed", "Allow: GET, HEAD\r\n", text, "GET /metrics\n", false)
        }
        Asked::Bad => response("400 Bad Request", "", text, "bad request\n", false),
    };
    stream.write_all(&reply)?;
    stream.flush()?;
    // Let the client read the reply before the connection goes.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

impl std::fmt::Debug for Facts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facts").field("backend", &self.backend).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_told_apart() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Asked::Metrics { head: false });
        assert_eq!(parse(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"), Asked::Metrics { head: true });
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Asked::BadMethod);
        for junk in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"\xff\xfe GET /metrics HTTP/1.1\r\n\r\n",
            b"",
            b"\r\n\r\n",
        ] {
            assert_eq!(parse(junk), Asked::Bad, "{}", String::from_utf8_lossy(junk));
        }
    }

    #[test]
    fn heads_are_bounded() {
        let mut ok = &b"GET /metrics HTTP/1.1\r\n\r\n"[..];
        assert!(read_head(&mut ok).is_some());
        let long = vec![b'a'; 3 * MAX_REQUEST];
        assert!(read_head(&mut &long[..]).is_none());
        let mut cut = &b"GET /metrics HTTP/1.1\r\nHost"[..];
        assert!(read_head(&mut cut).is_none());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_text_names_every_reason_and_call() {
        let s = Stats::new();
        s.reject("replay");
        s.calls(spa_backends::Call::Apply).observe(Duration::from_millis(2));
        let text = render(&s, &Facts { backend: "nft", share: None });
        assert!(text.contains("spad_rejects_total{reason=\"replay\"} 1\n"), "{text}");
        assert!(text.contains("spad_rejects_total{reason=\"hmac_mismatch\"} 0\n"));
        assert!(
            text.contains("spad_backend_call_duration_seconds_bucket{operation=\"apply\",le=\"0.0025\"} 1\n")
        );
        assert!(
            text.contains("spad_backend_call_duration_seconds_bucket{operation=\"check\",le=\"+Inf\"} 0\n")
        );
        assert!(text.contains("spad_build_info{version=\""));
        assert!(text.lines().all(|l| l.starts_with('#') || l.starts_with("spad_")), "{text}");
    }
}

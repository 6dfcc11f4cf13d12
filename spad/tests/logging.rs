//! What an admin reads from a running spad, in a namespace of its own: plain log lines with RFC
//! 3339 times and no terminal escapes when stderr is not a terminal, rejects summed up in the
//! log as well as the audit file, the audit file reopened on SIGUSR1 and SIGHUP after
//! logrotate moved it, and receiver threads that hold no capability while the backend worker
//! keeps its own.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use spa_e2e::Netns;

mod support;
use support::{Daemon, is, send_from};

const KEY: &str = "spad-logging-test-encryption-32b";
const HMAC_KEY: &str = "spad-logging-test-hmac-key-0123456789abcdef";
const PORT: u16 = 62201;

fn config(dir: &Path) -> String {
    format!(
        r#"
[listen]
addresses = ["127.0.0.1:{PORT}"]

[firewall]
backend = "none"

[replay]
state_dir = "{dir}/state"

[log]
audit = "{dir}/audit.jsonl"
max_rejects_per_second = 1000

[[access]]
name = "clients"
source = "any"
open_ports = ["tcp/22"]
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
"#,
        dir = dir.display()
    )
}

/// Waits (20 s at most) until `done` holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(20), "no {what} after 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn to() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], PORT))
}

/// Sends `n` datagrams of junk from inside the namespace.
fn junk(ns: &Netns, n: usize) {
    for i in 0..n {
        send_from(ns, to(), format!("not an SPA packet {i}").into_bytes());
    }
}

/// Whether `s` is an RFC 3339 UTC time as spad writes it: `2026-11-30T14:46:00.123Z`.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

#[test]
fn log_lines_are_plain_with_rfc3339_times_and_sum_up_the_rejects() {
    let ns = Netns::new("spadlog");
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&ns, dir.path(), &config(dir.path()));
    junk(&ns, 5);
    wait_until("5 rejects in the audit file", || d.count(|e| is(e, "reject")) == 5);
    d.stop();

    let log = d.log.lock().unwrap().clone();
    assert!(!log.contains('\u{1b}'), "terminal escapes in a log that goes to a pipe:\n{log}");
    for line in log.lines() {
        let time = line.split_whitespace().next().unwrap_or_default();
        assert!(is_rfc3339(time), "not an RFC 3339 time at the start of {line:?}");
    }
    // The summary in the log counts them by reason, without a line per packet.
    let summary =
        log.lines().find(|l| l.contains("rejected 5 packets in the last")).unwrap_or_else(|| panic!("{log}"));
    // All five for one reason (junk fails the same cheap gate), named by its code.
    assert!(summary.contains(" 5); "), "{summary}");
    assert!(summary.ends_with("0 of them counted only in audit summaries"), "{summary}");
    assert!(!log.contains("not an SPA packet"), "packet contents reached the log:\n{log}");
    for e in d.events() {
        assert!(e["time"].as_str().is_some_and(is_rfc3339), "{e}");
    }
}

/// logrotate renames the audit file and signals spad; lines then go to a new file by the old
/// name, and none are lost or written to the moved one.
#[test]
fn the_audit_file_is_reopened_on_sigusr1_and_sighup() {
    let ns = Netns::new("spadrot");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&ns, dir.path(), &config(dir.path()));
    let audit = dir.path().join("audit.jsonl");
    junk(&ns, 1);
    wait_until("a reject", || d.count(|e| is(e, "reject")) == 1);

    for (n, signal) in [(1, "USR1"), (2, "HUP")] {
        let moved = dir.path().join(format!("audit.jsonl.{n}"));
        std::fs::rename(&audit, &moved).unwrap();
        d.signal(signal);
        wait_until("the reopened file", || audit.exists());
        junk(&ns, 1);
        wait_until("a reject in the new file", || d.count(|e| is(e, "reject")) == 1);
        let new_mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&audit).unwrap().permissions());
        assert_eq!(new_mode & 0o777, 0o600, "the audit file names clients: owner only");
        let old = std::fs::read_to_string(&moved).unwrap();
        assert_eq!(old.lines().filter(|l| l.contains("\"reject\"")).count(), 1, "{old}");
        if signal == "HUP" {
            // SIGHUP also reloads; its audit line goes to the new file.
            d.wait_event("reload", |e| is(e, "reload"));
        }
    }
    let log = d.log.lock().unwrap().clone();
    assert_eq!(log.matches("reopened").count(), 2, "{log}");
}

/// The threads that read packets from the network hold no capability; the backend worker,
/// which changes the firewall, keeps its own. (Only meaningful with capabilities to drop:
/// the suite runs as root.)
#[test]
fn receiver_threads_hold_no_capabilities() {
    let ns = Netns::new("spadcap");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&ns, dir.path(), &config(dir.path()));
    // Running: a packet was received, so the receiver thread has passed its start.
    junk(&ns, 1);
    wait_until("a reject", || d.count(|e| is(e, "reject")) == 1);

    // `ip netns exec` runs spad itself (exec), so the child's pid is spad's.
    let pid = d.child.as_ref().unwrap().id();
    let mut seen = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap().trim().to_owned();
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let caps = |set: &str| {
            let line = status.lines().find(|l| l.starts_with(set)).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        seen.push((name, caps("CapEff:"), caps("CapPrm:")));
    }
    let udp: Vec<_> = seen.iter().filter(|(n, ..)| n.starts_with("udp ")).collect();
    assert_eq!(udp.len(), 1, "{seen:?}");
    assert_eq!((udp[0].1, udp[0].2), (0, 0), "{seen:?}");
    let backend = seen.iter().find(|(n, ..)| n == "backend").unwrap_or_else(|| panic!("{seen:?}"));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_ne!(backend.1, 0, "the worker keeps what it needs: {seen:?}");
    }
}

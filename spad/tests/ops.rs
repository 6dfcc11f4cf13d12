//! Operating a running spad, as an admin would: `spad status`, `spad revoke`, `spad reload`
//! over the control socket, and the Prometheus endpoint scraped with curl and checked with
//! `promtool`. Each test runs spad in a lab's gateway namespace; the client knocks with the
//! real `spa` binary (or packets made with the engine), and the assertions read what the
//! commands print, the audit trail, and real TCP connections through the firewall.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use spa_e2e::GatewayLab;

mod support;
use support::{Daemon, is, send_from, spa_bin, write_private};

const KEY: &str = "spad-ops-test-encryption-key-32b";
const HMAC_KEY: &str = "spad-ops-test-hmac-key-0123456789abcdef0123";

/// How long anything may take to show (generous: the machine may be busy).
const PATIENCE: Duration = Duration::from_secs(20);

/// The metrics endpoint inside the gateway's namespace.
const METRICS: &str = "127.0.0.1:9862";

fn config(dir: &Path, firewall: &str, extra: &str) -> String {
    format!(
        r#"
[listen]
mode = "socket"
addresses = ["0.0.0.0:62201", "[::]:62201"]

{firewall}

[replay]
state_dir = "{dir}/state"

[log]
audit = "{dir}/audit.jsonl"
max_rejects_per_second = 1000

[control]
socket = "{dir}/control.sock"
{extra}
[[access]]
name = "clients"
source = "10.201.1.0/24, fd00:201:1::/64"
open_ports = ["tcp/22"]
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
fw_access_timeout = 100
"#,
        dir = dir.display()
    )
}

const NONE: &str = "[firewall]\nbackend = \"none\"";
const NFT: &str = "[firewall]\nbackend = \"nft\"\n[firewall.nft]\ntable = \"spaops\"\nprotect = [\"tcp/22\"]";

/// Our `spa` knocks for tcp/22 from the client.
fn knock(lab: &GatewayLab, home: &Path) {
    let out = lab
        .client
        .cmd(spa_bin().to_str().unwrap())
        .env("HOME", home)
        .args(["-A", "tcp/22", "-a", GatewayLab::CLIENT4, "-D", GatewayLab::GW4, "--no-rc-file"])
        .args(["--key-rijndael", KEY, "--key-hmac", HMAC_KEY])
        .output()
        .unwrap();
    assert!(out.status.success(), "spa: {}", String::from_utf8_lossy(&out.stderr));
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn ok(out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status.code());
    stdout
}

/// `spad status --json`.
fn status(d: &Daemon) -> Value {
    serde_json::from_str(&ok(d.spad(&["status", "--json"]))).expect("status --json is JSON")
}

/// Waits until `pred` holds of `spad status --json`; returns that status.
fn wait_status(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = status(d);
        if pred(&s) {
            return s;
        }
        assert!(start.elapsed() < PATIENCE, "status never showed {what}:\n{s:#}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_and_revoke_close_grants_at_once_and_audit_who_asked() {
    spa_e2e::require_root();
    let lab = GatewayLab::new("op1");
    let dir = tempfile::tempdir().unwrap();
    let _ssh = lab.gw.tcp_server(22, "ssh");
    let ssh = GatewayLab::addr(GatewayLab::GW4, 22);
    let short = Duration::from_secs(1);
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), NFT, ""));

    let s = status(&d);
    assert_eq!(s["pid"], d.pid(), "{s:#}");
    assert_eq!((&s["backend"], &s["mode"], &s["live_grants"]), (&"nft".into(), &"socket".into(), &0.into()));
    assert!(s["uptime_seconds"].is_u64() && s["version"].as_str().unwrap().contains("commit"), "{s:#}");
    let drops = s["receive_drops"].as_array().unwrap();
    assert_eq!(drops.len(), 2, "{s:#}");
    assert!(drops.iter().any(|r| r["receiver"] == "udp 0.0.0.0:62201" && r["drops"] == 0), "{s:#}");
    assert!(s["last_tamper"].is_null() && s["last_backend_error"].is_null() && s["shared_store"].is_null());
    assert!(!lab.client.tcp_connects(ssh, short), "open before any knock");

    // A knock: the port opens; status and list show the grant with the audit's id.
    knock(&lab, dir.path());
    let g = d.wait_event("grant", |e| is(e, "grant"));
    let id = g["id"].as_str().unwrap().to_owned();
    assert!(lab.client.wait_tcp(ssh, Duration::from_secs(5)).is_some(), "closed after the knock");
    let s = wait_status(&d, "the grant", |s| s["live_grants"] == 1);
    assert_eq!(s["grants"], 1);
    let listed = d.listed();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str(), "spad list --json names the grant as the audit log does");
    assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let table = ok(d.spad(&["list"]));
    assert!(table.starts_with(&id) && table.contains("s left)") && table.contains("(1m "), "{table}");

    // A packet that fails: counted by reason.
    send_from(&lab.client, GatewayLab::addr(GatewayLab::GW4, 62201), vec![b'A'; 200]);
    let s = wait_status(&d, "a reject", |s| s["rejects_total"] == 1);
    let reasons = s["rejects"].as_object().unwrap();
    assert_eq!(reasons.len(), 1, "{s:#}");
    let human = ok(d.spad(&["status"]));
    for needle in ["backend:        nft (socket mode)", "live grants:    1", "rejects:        1 ("] {
        assert!(human.contains(needle), "{needle:?} not in:\n{human}");
    }

    // Revoke by id: closed at once for new connections, audited with who asked.
    let out = ok(d.spad(&["revoke", &id]));
    assert!(out.starts_with(&format!("revoked {id} for {}", GatewayLab::CLIENT4)), "{out}");
    assert!(!lab.client.tcp_connects(ssh, short), "still open after spad revoke");
    let r = d.wait_event("revoke", |e| is(e, "revoke") && e["id"] == id.as_str());
    assert_eq!((&r["uid"], &r["user"]), (&0.into(), &"root".into()), "{r}");
    assert!(r["pid"].as_u64().is_some_and(|p| p > 0), "{r}");
    assert!(r["by"].as_str().unwrap().starts_with("root (uid 0, pid "), "{r}");
    assert!(d.listed().is_empty());

    // Nothing left to revoke: exit 1, saying so; audited as revoke_unknown.
    let again = d.spad(&["revoke", &id]);
    let (_, stderr) = text(&again);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing revoked"), "{stderr}");
    d.wait_event("revoke_unknown", |e| is(e, "revoke_unknown") && e["detail"]["id"] == id.as_str());

    // Revoke by address: every live grant of the client.
    knock(&lab, dir.path());
    let g2 = d.wait_nth_event(1, "second grant", |e| is(e, "grant"));
    assert!(lab.client.wait_tcp(ssh, Duration::from_secs(5)).is_some(), "closed after the second knock");
    let out = ok(d.spad(&["revoke", GatewayLab::CLIENT4]));
    assert!(out.contains(&format!("revoked {}", g2["id"].as_str().unwrap())), "{out}");
    assert!(!lab.client.tcp_connects(ssh, short), "still open after revoking the address");
    let nobody = d.spad(&["revoke", "10.201.9.9"]);
    assert_eq!(nobody.status.code(), Some(1));
    let bad = d.spad(&["revoke", "not-a-grant"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).1.contains("neither a grant id"), "{}", text(&bad).1);

    let s = wait_status(&d, "two revokes", |s| s["revokes"] == 2 && s["live_grants"] == 0);
    assert_eq!(s["grants"], 2);

    // Someone deletes spad's table: status tells when, and that it was rebuilt.
    lab.gw.sh("nft delete table inet spaops");
    let s = wait_status(&d, "the repair", |s| s["tamper_repairs"] == 1);
    assert_eq!((&s["tampers"], &s["last_tamper"]["repaired"]), (&1.into(), &true.into()), "{s:#}");
    assert!(s["last_tamper"]["time"].as_str().unwrap().ends_with('Z'), "{s:#}");
    assert!(ok(d.spad(&["status"])).contains("1 found, 1 repaired; last at "));
}

#[test]
fn a_close_that_fails_is_reported_by_revoke_and_status_and_capture_drops_are_counted() {
    spa_e2e::require_root();
    let lab = GatewayLab::new("op5");
    let dir = tempfile::tempdir().unwrap();
    // The script backend: `close` fails while a flag file exists.
    let flag = dir.path().join("fail-close");
    let script = dir.path().join("fw.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$SPA_ACTION\" = close ] && [ -e {} ]; then echo 'firewall busy' >&2; exit 3; fi\n",
            flag.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let firewall = format!(
        "[firewall]\nbackend = \"script\"\n[firewall.script]\nopen = [\"{s}\"]\nclose = [\"{s}\"]",
        s = script.display()
    );
    let written = config(dir.path(), &firewall, "").replace(
        "mode = \"socket\"\naddresses = [\"0.0.0.0:62201\", \"[::]:62201\"]",
        "mode = \"capture\"\ninterfaces = [\"c0\"]",
    );
    let d = Daemon::start(&lab.gw, dir.path(), &written);
    let s = status(&d);
    assert_eq!(s["mode"], "capture");
    assert_eq!(s["receive_drops"], serde_json::json!([{"receiver": "capture c0", "drops": 0}]), "{s:#}");

    send_from(
        &lab.client,
        GatewayLab::addr(GatewayLab::GW4, 62201),
        support::packet(KEY, HMAC_KEY, GatewayLab::CLIENT4, "tcp/22", 0),
    );
    let g = d.wait_event("grant", |e| is(e, "grant"));
    let id = g["id"].as_str().unwrap();
    std::fs::write(&flag, "").unwrap();
    let out = d.spad(&["revoke", id]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("closing {id} for {}", GatewayLab::CLIENT4)) && stdout.contains("FAILED"),
        "{stdout}"
    );
    assert!(stderr.contains("could not be closed yet"), "{stderr}");
    let s = status(&d);
    assert_eq!(s["backend_errors"], 1, "{s:#}");
    let last = &s["last_backend_error"];
    assert!(last["message"].as_str().unwrap().starts_with(&format!("revoke {id} failed: ")), "{s:#}");
    assert!(last["time"].as_str().unwrap().ends_with('Z'), "{s:#}");
    // The audit has it too, and no revoke yet: the grant is closing, and retried.
    d.wait_event("the failed close", |e| is(e, "error") && e["id"] == id && e["closing"] == true);
    assert_eq!(d.count(|e| is(e, "revoke")), 0);
}

#[test]
fn reload_reports_the_result_and_a_broken_config_with_file_and_line() {
    spa_e2e::require_root();
    let lab = GatewayLab::new("op2");
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), NONE, "");
    let mut d = Daemon::start(&lab.gw, dir.path(), &good);
    send_from(
        &lab.client,
        GatewayLab::addr(GatewayLab::GW4, 62201),
        support::packet(KEY, HMAC_KEY, GatewayLab::CLIENT4, "tcp/22", 0),
    );
    let g = d.wait_event("grant", |e| is(e, "grant"));
    wait_status(&d, "the grant", |s| s["live_grants"] == 1);

    let out = ok(d.spad(&["reload"]));
    assert!(out.contains("configuration reloaded: 1 access stanzas"), "{out}");
    let r = d.wait_event("reload", |e| is(e, "reload"));
    assert_eq!((&r["detail"]["uid"], &r["detail"]["user"]), (&0.into(), &"root".into()), "{r}");

    // A typo: refused with its file, line and key; the running configuration and the grant stay.
    let broken =
        good.replace("max_rejects_per_second = 1000", "max_rejects_per_second = 1000\nmax_reject = 5");
    let line = broken.lines().position(|l| l.starts_with("max_reject =")).unwrap() + 1;
    write_private(&d.config, &broken);
    let out = d.spad(&["reload"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let located = format!("{}:{line}:", d.config.display());
    assert!(
        stderr.contains("reload failed") && stderr.contains(&located) && stderr.contains("max_reject"),
        "{stderr}"
    );
    let failed = d.wait_event("reload_failed", |e| is(e, "reload_failed"));
    assert_eq!(failed["detail"]["uid"], 0, "{failed}");
    assert!(d.alive(), "a broken reload stopped spad");
    assert_eq!(status(&d)["live_grants"], 1);

    // Fixed, with a second stanza and the endpoint asked for: taken, [metrics] waits.
    let two = format!(
        "{good}\n[[access]]\nname = \"more\"\nsource = \"10.201.3.0/24\"\nopen_ports = [\"tcp/22\"]\n\
         key = \"{KEY}\"\nhmac_key = \"{HMAC_KEY}\"\n"
    )
    .replace("[control]", "[metrics]\nlisten = \"127.0.0.1:9862\"\n\n[control]");
    write_private(&d.config, &two);
    let out = ok(d.spad(&["reload"]));
    assert!(out.contains("2 access stanzas") && out.contains("changes to [metrics] take effect"), "{out}");
    let listed = d.listed();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], g["id"], "the grant stayed through both reloads");

    // A crash leaves the socket file behind; the next spad replaces it.
    write_private(&d.config, &good);
    d.kill9();
    assert!(dir.path().join("control.sock").exists());
    d.spawn(&lab.gw);
    assert_eq!(status(&d)["pid"], d.pid());
}

/// Runs `spad <args>` as the unprivileged user `nobody`.
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_spad"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn only_root_may_use_the_control_socket() {
    spa_e2e::require_root();
    let lab = GatewayLab::new("op3");
    let dir = tempfile::tempdir().unwrap();
    // Others may look into the directory (so the socket's own mode is what keeps them out).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), NONE, ""));
    let sock = dir.path().join("control.sock");
    let sock_arg = sock.to_str().unwrap();
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.permissions().mode() & 0o777, std::os::unix::fs::MetadataExt::uid(&meta)), (0o600, 0));

    let out = as_nobody(&["status", "--socket", sock_arg]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Permission denied") && stderr.contains("for root"), "{stderr}");

    // Even with the file opened to everyone, spad serves root (and its own user) only.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in
        [&["status", "--socket", sock_arg][..], &["revoke", "--socket", sock_arg, GatewayLab::CLIENT4]]
    {
        let out = as_nobody(args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("serves root only"), "{stderr}");
    }
    d.wait_log("control socket: refused uid 65534");
    assert_eq!(d.count(|e| is(e, "revoke") || is(e, "revoke_unknown")), 0);
    // Root still gets its answer.
    assert_eq!(status(&d)["pid"], d.pid());
}

/// `curl` inside the gateway's namespace: the status code and the body.
fn curl(lab: &GatewayLab, extra: &[&str]) -> (String, String) {
    let out = lab
        .gw
        .cmd("curl")
        .args(["-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("http://{METRICS}/metrics"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "curl: {stderr}");
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    (code.to_owned(), body.to_owned())
}

/// A scrape, checked by `promtool check metrics` (the Prometheus project's own parser and
/// linter for the text format).
fn scrape(lab: &GatewayLab) -> String {
    let (code, body) = curl(lab, &[]);
    assert_eq!(code, "200", "{body}");
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "promtool check metrics:\n{o}{e}\n--- scraped:\n{body}");
    assert!(o.trim().is_empty() && e.trim().is_empty(), "promtool lint:\n{o}{e}");
    body
}

/// The value of the sample `series` (name and labels as written), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn wait_metric(lab: &GatewayLab, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let body = scrape(lab);
        if pred(&body) {
            return body;
        }
        assert!(start.elapsed() < PATIENCE, "metrics never showed {what}:\n{body}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `request` to the endpoint from inside the gateway and returns what came back
/// (possibly nothing: the server may close on junk).
fn raw(lab: &GatewayLab, request: Vec<u8>) -> String {
    lab.gw.run_in(move || {
        let mut s = TcpStream::connect(METRICS).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&request);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).into_owned()
    })
}

#[test]
fn metrics_are_prometheus_text_that_moves_and_junk_does_not_kill_the_endpoint() {
    spa_e2e::require_root();
    let lab = GatewayLab::new("op4");
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        &lab.gw,
        dir.path(),
        &config(dir.path(), NONE, &format!("[metrics]\nlisten = \"{METRICS}\"\n")),
    );
    d.wait_log(&format!("metrics on http://{METRICS}/metrics"));

    let body = scrape(&lab);
    assert_eq!(sample(&body, "spad_grants_total"), Some(0.0), "{body}");
    assert_eq!(sample(&body, "spad_rejects_total{reason=\"replay\"}"), Some(0.0));
    assert_eq!(sample(&body, "spad_receive_drops_total{receiver=\"udp 0.0.0.0:62201\"}"), Some(0.0));
    assert!(body.contains("spad_build_info{version=\""), "{body}");
    assert_eq!(status(&d)["metrics"], METRICS);

    // A knock, then the same packet again (a replay).
    let packet = support::packet(KEY, HMAC_KEY, GatewayLab::CLIENT4, "tcp/22", 0);
    let to = GatewayLab::addr(GatewayLab::GW4, 62201);
    send_from(&lab.client, to, packet.clone());
    d.wait_event("grant", |e| is(e, "grant"));
    send_from(&lab.client, to, packet);
    let body = wait_metric(&lab, "the grant and the replay", |b| {
        sample(b, "spad_grants_total") == Some(1.0)
            && sample(b, "spad_live_grants") == Some(1.0)
            && sample(b, "spad_rejects_total{reason=\"replay\"}") == Some(1.0)
    });
    assert_eq!(total(&body, "spad_rejects_total"), 1.0, "only the replay was refused:\n{body}");
    let applied = sample(&body, "spad_backend_call_duration_seconds_count{operation=\"apply\"}").unwrap();
    assert!(applied >= 1.0, "{body}");
    let inf = sample(&body, "spad_backend_call_duration_seconds_bucket{operation=\"apply\",le=\"+Inf\"}");
    assert_eq!(inf, Some(applied));
    wait_metric(&lab, "a tamper check", |b| {
        sample(b, "spad_backend_call_duration_seconds_count{operation=\"check\"}").is_some_and(|n| n >= 1.0)
    });

    // Junk: none of it gets more than an error, and the endpoint keeps serving.
    assert!(raw(&lab, b"\x00\x01\x02 garbage\r\n\r\n".to_vec()).starts_with("HTTP/1.1 400 "));
    assert!(raw(&lab, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).starts_with("HTTP/1.1 405 "));
    assert!(raw(&lab, b"GET /../../etc/passwd HTTP/1.1\r\n\r\n".to_vec()).starts_with("HTTP/1.1 404 "));
    let huge = raw(&lab, [b"GET /metrics HTTP/1.1\r\nX: ".as_slice(), &vec![b'a'; 64 * 1024]].concat());
    assert!(!huge.contains("200 OK"), "{huge}");
    let (code, body) = curl(&lab, &["-I"]);
    assert_eq!(code, "200");
    assert!(body.contains("text/plain; version=0.0.4"), "{body}");
    for _ in 0..50 {
        lab.gw.run_in(|| drop(TcpStream::connect(METRICS).unwrap()));
    }
    // Connections that send nothing, more than it serves at once: cut off after their time,
    // not held forever, so a scrape gets through again while they are still open.
    let idle: Vec<TcpStream> =
        lab.gw.run_in(|| (0..8).map(|_| TcpStream::connect(METRICS).unwrap()).collect());
    let start = Instant::now();
    let body = loop {
        let out = lab
            .gw
            .cmd("curl")
            .args(["-sS", "-m", "10", &format!("http://{METRICS}/metrics")])
            .output()
            .unwrap();
        if out.status.success() {
            break text(&out).0;
        }
        assert!(start.elapsed() < PATIENCE, "no scrape got through past idle connections");
        thread::sleep(Duration::from_millis(200));
    };
    drop(idle);
    assert_eq!(sample(&body, "spad_grants_total"), Some(1.0));
    scrape(&lab);
    assert!(d.alive(), "spad died");
}

/// The sum of every sample of a metric.
fn total(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The shipped alert rules load, and the reject-storm alert fires on a storm and not on a
/// trickle (`promtool test rules`, Prometheus's own rule evaluator).
#[test]
fn the_shipped_alert_rules_are_valid_and_the_storm_alert_fires() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/prometheus/spad-alerts.yml");
    let out = Command::new("promtool").args(["check", "rules"]).arg(&rules).output().expect("promtool");
    assert!(out.status.success(), "{}{}", text(&out).0, text(&out).1);
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("test.yml");
    std::fs::write(
        &test,
        format!(
            r#"rule_files: ["{}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # 300 rejects a second, split over two reasons.
      - series: 'spad_rejects_total{{instance="gw1", job="spad", reason="hmac_mismatch"}}'
        values: '0+12000x30'
      - series: 'spad_rejects_total{{instance="gw1", job="spad", reason="replay"}}'
        values: '0+6000x30'
      # One a minute: no storm.
      - series: 'spad_rejects_total{{instance="gw2", job="spad", reason="hmac_mismatch"}}'
        values: '0+1x30'
    alert_rule_test:
      - eval_time: 5m
        alertname: SpadRejectStorm
        exp_alerts: []
      - eval_time: 20m
        alertname: SpadRejectStorm
        exp_alerts:
          - exp_labels:
              severity: warning
              instance: gw1
              job: spad
            exp_annotations:
              summary: "spad on gw1 refuses 300 packets/s"
              description: "Rejects by reason: sum by (reason) (rate(spad_rejects_total[5m])). Reject lines beyond max_rejects_per_second are only counted in the audit file's summaries (spad_audit_rejects_suppressed_total)."
"#,
            rules.display()
        ),
    )
    .unwrap();
    let out = Command::new("promtool").args(["test", "rules"]).arg(&test).output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out).0, text(&out).1);
}

/// The new tables are checked like the others: a bad value is refused with its file and line.
#[test]
fn bad_control_and_metrics_settings_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), NONE, "");
    for (from, to, key) in [
        (
            format!("socket = \"{}/control.sock\"", dir.path().display()),
            "socket = \"control.sock\"".to_owned(),
            "control.socket: control.sock is not an absolute path",
        ),
        ("[control]".to_owned(), "[metrics]\nlisten = \"localhost\"\n[control]".to_owned(), "listen"),
        (
            "[control]".to_owned(),
            "[metrics]\nlisten_on = \"127.0.0.1:9862\"\n[control]".to_owned(),
            "listen_on",
        ),
    ] {
        let written = good.replacen(&from, &to, 1);
        let path = dir.path().join("spad.toml");
        write_private(&path, &written);
        let set = to.lines().find(|l| l.contains('=')).unwrap();
        let line = written.lines().position(|l| l == set).unwrap() + 1;
        let out = support::spad_cmd(&path, &["check"]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let located = format!("{}:{line}: ", path.display());
        assert!(stderr.contains(&located) && stderr.contains(key), "{located} {key}:\n{stderr}");
    }
}

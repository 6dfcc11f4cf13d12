//! A grant's life through a running spad, as an admin sees it: the firewall changed under the
//! daemon and healed without any knock, a close that keeps failing (recorded as closing,
//! retried, shown by `spad list`, finished after a restart), grants kept or revoked at exit,
//! the systemd watchdog, and `spad teardown`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use spa_e2e::GatewayLab;

mod support;
use support::{Daemon, is, send_from, write_private};

const KEY: &str = "spad-lifecycle-encryption-key-32";
const HMAC_KEY: &str = "spad-lifecycle-hmac-key-0123456789abcdef";
const SEC: Duration = Duration::from_secs(1);

fn config(dir: &Path, firewall: &str, timeout: u32) -> String {
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

[[access]]
name = "clients"
source = "any"
open_ports = ["tcp/22"]
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
fw_access_timeout = {timeout}
"#,
        dir = dir.display()
    )
}

fn knock(lab: &GatewayLab) {
    let p = support::packet(KEY, HMAC_KEY, GatewayLab::CLIENT4, "tcp/22", 0);
    send_from(&lab.client, GatewayLab::addr(GatewayLab::GW4, 62201), p);
}

fn ssh_open(lab: &GatewayLab, from_attacker: bool) -> bool {
    if from_attacker {
        lab.attacker.tcp_connects(GatewayLab::addr(GatewayLab::GW_ATTACKER4, 22), SEC)
    } else {
        lab.client.tcp_connects(GatewayLab::addr(GatewayLab::GW4, 22), SEC)
    }
}

/// Someone deletes our table (what `flush ruleset` or a firewall reload does) or flushes our
/// chain: the port is open to everyone until spad notices, which it does by itself within a
/// few seconds, rebuilding the protection with the live grant, audited as `tamper`.
fn healed_after(prefix: &str, firewall: &str, tamper: &str) {
    let lab = GatewayLab::new(prefix);
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), firewall, 120));
    assert!(!ssh_open(&lab, true), "open before any knock");
    knock(&lab);
    d.wait_event("grant", |e| is(e, "grant"));
    assert!(lab.client.wait_tcp(GatewayLab::addr(GatewayLab::GW4, 22), Duration::from_secs(5)).is_some());

    lab.gw.sh(tamper);
    let t = d.wait_event("tamper", |e| is(e, "tamper"));
    assert!(t["detail"]["what"].as_str().is_some_and(|s| !s.is_empty()), "{t}");
    let r = d.wait_event("repaired", |e| is(e, "repaired"));
    assert_eq!(r["detail"]["live_grants"], 1, "{r}");
    d.wait_log("protection rebuilt");
    assert!(!ssh_open(&lab, true), "the protection did not come back");
    assert!(ssh_open(&lab, false), "the live grant did not come back");
    // And the daemon keeps working: a re-knock is acted on.
    knock(&lab);
    d.wait_event("re-knock after the repair", |e| is(e, "extend") || is(e, "reknock"));
}

#[test]
fn a_deleted_nft_table_is_rebuilt_without_a_knock() {
    healed_after(
        "lcn",
        "[firewall]\nbackend = \"nft\"\n[firewall.nft]\nprotect = [\"tcp/22\"]",
        "nft delete table inet spa",
    );
}

#[test]
fn a_flushed_iptables_chain_is_rebuilt_without_a_knock() {
    healed_after(
        "lci",
        "[firewall]\nbackend = \"iptables\"\n[firewall.iptables]\nprotect = [\"tcp/22\"]",
        "iptables -F SPA_INPUT",
    );
}

/// The script backend's `close` fails while a flag file exists.
fn flaky_script(dir: &Path) -> String {
    let log = dir.join("calls");
    let flag = dir.join("fail-close");
    let script = dir.join("fw.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$SPA_ACTION $SPA_SOURCE\" >> {log}\n\
             if [ \"$SPA_ACTION\" = close ] && [ -e {flag} ]; then echo 'firewall busy' >&2; exit 3; fi\n",
            log = log.display(),
            flag = flag.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        "[firewall]\nbackend = \"script\"\n[firewall.script]\nopen = [\"{s}\"]\nclose = [\"{s}\"]\n",
        s = script.display()
    )
}

#[test]
fn a_failed_close_is_recorded_retried_listed_and_finished_after_a_restart() {
    let lab = GatewayLab::new("lcc");
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("fail-close");
    std::fs::write(&flag, "").unwrap();
    let mut d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), &flaky_script(dir.path()), 2));
    knock(&lab);
    let g = d.wait_event("grant", |e| is(e, "grant"));
    // At the deadline the close fails: the grant stays, recorded as closing, and says so.
    let c = d.wait_event("failed close", |e| is(e, "error") && e["closing"] == true);
    assert_eq!(
        (&c["id"], &c["action"], &c["attempts"]),
        (&g["id"], &serde_json::json!("expire"), &serde_json::json!(1))
    );
    assert!(c["error"].as_str().unwrap().contains("firewall busy"), "{c}");
    let listed = String::from_utf8(d.spad(&["list"]).stdout).unwrap();
    assert!(listed.contains(g["id"].as_str().unwrap()) && listed.contains("closing"), "{listed}");
    // It is retried with backoff (a second failure), not forgotten.
    d.wait_event("second attempt", |e| is(e, "error") && e["closing"] == true && e["attempts"] == 2);
    // Stopped while closing: the record survives the restart, and the start finishes it.
    d.stop();
    std::fs::remove_file(&flag).unwrap();
    d.spawn(&lab.gw);
    let done = d.wait_event("expire after the restart", |e| is(e, "expire") && e["id"] == g["id"]);
    assert!(done["failed_attempts"].as_u64().unwrap() >= 2, "{done}");
    let listed = String::from_utf8(d.spad(&["list"]).stdout).unwrap();
    assert!(listed.contains("no active grants"), "{listed}");
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert_eq!(calls.matches("open").count(), 1, "{calls}");
    assert!(calls.matches("close").count() >= 3, "{calls}");
}

fn nft(prefix: &str, keep: bool) -> (GatewayLab, tempfile::TempDir, Daemon) {
    let lab = GatewayLab::new(prefix);
    let dir = tempfile::tempdir().unwrap();
    let fw = format!(
        "[firewall]\nbackend = \"nft\"\nkeep_grants_on_exit = {keep}\n[firewall.nft]\nprotect = [\"tcp/22\"]"
    );
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), &fw, 60));
    (lab, dir, d)
}

#[test]
fn grants_are_revoked_at_exit_unless_kept() {
    for keep in [false, true] {
        let (lab, _dir, mut d) = nft(if keep { "lck" } else { "lcr" }, keep);
        let _ssh = lab.gw.tcp_server(22, "gw-ssh");
        knock(&lab);
        let g = d.wait_event("grant", |e| is(e, "grant"));
        assert!(lab.client.wait_tcp(GatewayLab::addr(GatewayLab::GW4, 22), Duration::from_secs(5)).is_some());
        d.stop();
        let stop = d.wait_event("stop", |e| is(e, "stop"));
        assert_eq!(stop["detail"]["kept_grants"], keep);
        // The protection stays either way; the grant only when kept.
        assert!(!ssh_open(&lab, true), "stopping opened the port");
        assert_eq!(ssh_open(&lab, false), keep, "keep_grants_on_exit = {keep}");
        assert_eq!(d.count(|e| is(e, "revoke") && e["id"] == g["id"]), usize::from(!keep));
    }
}

#[test]
fn the_watchdog_is_fed_while_the_worker_runs_and_starves_when_it_hangs() {
    let lab = GatewayLab::new("lcw");
    let dir = tempfile::tempdir().unwrap();
    // An open command that hangs for 4 s, with markers at its start and end.
    let script = dir.path().join("slow.sh");
    let (started, ended) = (dir.path().join("started"), dir.path().join("ended"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch {}\nsleep 4\ntouch {}\n", started.display(), ended.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fw = format!(
        "[firewall]\nbackend = \"script\"\n[firewall.script]\nopen = [\"{s}\"]\nclose = [\"/bin/true\"]\ntimeout_ms = 10000\n",
        s = script.display()
    );
    let text = config(dir.path(), &fw, 60);
    let conf = dir.path().join("spad.toml");
    write_private(&conf, &text);
    support::own_control_socket(&conf, dir.path());
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut child = lab
        .gw
        .cmd(env!("CARGO_BIN_EXE_spad"))
        .args(["--config", conf.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // (Messages with their arrival time.)
    let mut got: Vec<(Instant, String)> = Vec::new();
    let recv_until = |until: Instant, got: &mut Vec<(Instant, String)>| {
        let mut buf = [0u8; 512];
        while Instant::now() < until {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        }
    };
    recv_until(Instant::now() + Duration::from_secs(3), &mut got);
    assert!(got.iter().any(|(_, m)| m.contains("READY=1")), "{got:?}");
    let pings = got.iter().filter(|(_, m)| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "the watchdog was fed {pings} times in 3 s: {got:?}");
    // Now the worker hangs in the open command for 4 s.
    got.clear();
    knock(&lab);
    while !started.exists() {
        thread::sleep(Duration::from_millis(10));
    }
    let hang_start = Instant::now();
    recv_until(Instant::now() + Duration::from_secs(6), &mut got);
    assert!(ended.exists(), "the command did not finish");
    // While it hung (after the 1 s the heartbeat may be old, plus slack), no ping; after it,
    // pings again.
    let quiet = got
        .iter()
        .filter(|(t, m)| {
            m.contains("WATCHDOG=1")
                && *t > hang_start + Duration::from_millis(2500)
                && *t < hang_start + Duration::from_millis(3800)
        })
        .count();
    assert_eq!(quiet, 0, "the watchdog was fed while the worker hung: {got:?}");
    assert!(
        got.iter().any(|(t, m)| m.contains("WATCHDOG=1") && *t > hang_start + Duration::from_millis(4200)),
        "the watchdog was not fed again after the worker recovered: {got:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn teardown_is_refused_while_spad_runs_then_removes_the_table() {
    let (lab, _dir, mut d) = nft("lct", false);
    knock(&lab);
    d.wait_event("grant", |e| is(e, "grant"));
    let out = d.spad(&["teardown"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot tear down while spad runs"));
    assert!(lab.gw.sh("nft list tables").contains("inet spa"), "a refused teardown touched the firewall");
    d.kill9();
    // Run in the gateway's namespace, where the table is.
    let out = lab
        .gw
        .cmd(env!("CARGO_BIN_EXE_spad"))
        .args(["teardown", "--config", d.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!lab.gw.sh("nft list tables").contains("inet spa"), "teardown left the table");
    let listed = String::from_utf8(d.spad(&["list"]).stdout).unwrap();
    assert!(listed.contains("no active grants"), "{listed}");
}

/// `spad list --firewall`, run where the firewall is (the gateway's namespace).
fn list_firewall(lab: &GatewayLab, d: &Daemon) -> String {
    let out = lab
        .gw
        .cmd(env!("CARGO_BIN_EXE_spad"))
        .args(["list", "--firewall", "--config", d.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn list_firewall_shows_the_firewall_beside_the_ledger_with_differences_marked() {
    let (lab, _dir, d) = nft("lcl", false);
    knock(&lab);
    let g = d.wait_event("grant", |e| is(e, "grant"));
    let id = g["id"].as_str().unwrap();
    let line = |text: &str, entry: &str| text.lines().find(|l| l.contains(entry)).map(str::to_owned);
    let client = "allow4 { 10.201.1.2 . tcp . 22 }";
    let out = list_firewall(&lab, &d);
    let l = line(&out, client).unwrap_or_else(|| panic!("{out}"));
    assert!(l.starts_with("  ") && l.contains(id) && l.ends_with("ok"), "{l}");
    // Someone adds an element by hand (the tamper check does not look inside sets), and
    // removes the client's: both are marked.
    lab.gw.sh("nft add element inet spa allow4 '{ 10.201.3.2 . tcp . 22 timeout 60s }'");
    lab.gw.sh("nft delete element inet spa allow4 '{ 10.201.1.2 . tcp . 22 }'");
    let out = list_firewall(&lab, &d);
    let rogue = line(&out, "allow4 { 10.201.3.2 . tcp . 22 }").unwrap_or_else(|| panic!("{out}"));
    assert!(rogue.starts_with("+ ") && rogue.ends_with("not in the ledger"), "{rogue}");
    let gone = line(&out, client).unwrap_or_else(|| panic!("{out}"));
    assert!(gone.starts_with("- ") && gone.ends_with("missing"), "{gone}");
}

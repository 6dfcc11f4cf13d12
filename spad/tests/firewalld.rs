//! The daemon with the firewalld backend against a real firewalld (Debian 12: 1.3) running in
//! the lab's gateway on a private system bus, checked the way an admin would: the real
//! fwknop client and our own client knock, the client gets in and the attacker does not, the
//! port closes after the window, `firewall-cmd --reload` keeps the grant (audited), a killed
//! spad leaves the port closed after the window, and a zone that opens a protected port is
//! refused by `spad check` and at start.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use spa_backend_firewalld::testlab::{FirewalldLab, SPA_ZONE, SSH_ZONE};
use spa_e2e::{GatewayLab, Netns};

mod support;
use support::{Daemon, is, spa_bin, write_private};

const KEY: &str = "spad-firewalld-encryption-key-32";
const HMAC_KEY: &str = "spad-firewalld-hmac-key-0123456789abcdef";
const SEC: Duration = Duration::from_secs(1);

fn config(dir: &Path, timeout: u32) -> String {
    format!(
        r#"
[listen]
mode = "socket"
addresses = ["0.0.0.0:62201", "[::]:62201"]

[firewall]
backend = "firewalld"

[firewall.firewalld]
protect = ["tcp/22"]

[replay]
state_dir = "{dir}/state"

[log]
audit = "{dir}/audit.jsonl"

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

/// Starts spad in `gw` talking to the lab's firewalld (through `DBUS_SYSTEM_BUS_ADDRESS`, set
/// for the child only: tests run side by side, each with its own bus).
fn start(gw: &Netns, fw: &FirewalldLab, dir: &Path, text: &str) -> Daemon {
    let config = dir.join("spad.toml");
    write_private(&config, text);
    support::own_control_socket(&config, dir);
    let mut child = gw
        .cmd(env!("CARGO_BIN_EXE_spad"))
        .args(["--config", config.to_str().unwrap()])
        .env("DBUS_SYSTEM_BUS_ADDRESS", fw.address())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start spad");
    let stderr = child.stderr.take().unwrap();
    let log: Arc<Mutex<String>> = Arc::default();
    let l = log.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            l.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let d = Daemon { child: Some(child), dir: dir.to_owned(), config, log };
    d.wait_log("spad ready");
    d
}

/// `spad check` on `config`, on the lab's bus: (success, stdout + stderr).
fn spad_check(fw: &FirewalldLab, config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spad"))
        .args(["check", "--config", config.to_str().unwrap()])
        .env("DBUS_SYSTEM_BUS_ADDRESS", fw.address())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn fwknop(lab: &GatewayLab, home: &Path) {
    let out = lab
        .client
        .cmd("fwknop")
        .env("HOME", home)
        .args(["-A", "tcp/22", "-a", GatewayLab::CLIENT4, "-D", GatewayLab::GW4, "--use-hmac"])
        .args(["--key-rijndael", KEY, "--key-hmac", HMAC_KEY, "--no-save-args", "--no-rc-file"])
        .output()
        .unwrap();
    assert!(out.status.success(), "fwknop: {}", String::from_utf8_lossy(&out.stderr));
}

fn spa(lab: &GatewayLab, home: &Path, dest: &str) {
    let out = lab
        .client
        .cmd(spa_bin().to_str().unwrap())
        .env("HOME", home)
        .args([
            "-A",
            "tcp/22",
            "-s",
            "-D",
            dest,
            "--no-rc-file",
            "--key-rijndael",
            KEY,
            "--key-hmac",
            HMAC_KEY,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "spa: {}", String::from_utf8_lossy(&out.stderr));
}

/// Waits (at most `limit`) until `cond` holds.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(200));
    }
    cond()
}

#[test]
fn firewalld_backend_opens_for_the_client_only_survives_a_reload_and_fails_closed() {
    spa_e2e::require_root();
    let lab = GatewayLab::new("fdd");
    // The zone opens the SPA port (socket mode) and nothing else.
    let fw = FirewalldLab::start(&lab.gw, SPA_ZONE);
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let dir = tempfile::tempdir().unwrap();
    let ssh4 = GatewayLab::addr(GatewayLab::GW4, 22);
    let ssh6 = GatewayLab::addr(GatewayLab::GW6, 22);
    let attacker = GatewayLab::addr(GatewayLab::GW_ATTACKER4, 22);
    let text = config(dir.path(), 8);
    write_private(&dir.path().join("spad.toml"), &text);
    let (ok, out) = spad_check(&fw, &dir.path().join("spad.toml"));
    assert!(ok, "spad check: {out}");
    let mut d = start(&lab.gw, &fw, dir.path(), &text);

    assert!(!lab.client.tcp_connects(ssh4, SEC), "open before any knock");
    // The real fwknop client.
    fwknop(&lab, dir.path());
    assert!(
        lab.client.wait_tcp(ssh4, Duration::from_secs(5)).is_some(),
        "closed after the knock:\n{}",
        d.log.lock().unwrap()
    );
    assert!(!lab.attacker.tcp_connects(attacker, SEC), "open for the attacker");
    assert!(!lab.client.tcp_connects(ssh6, SEC), "IPv6 open without an IPv6 knock");
    let rules = fw.rich_rules("public");
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert!(
        rules[0].contains(r#"source address="10.201.1.2" port port="22" protocol="tcp" accept"#),
        "{rules:?}"
    );

    // Our client over IPv6.
    spa(&lab, dir.path(), GatewayLab::GW6);
    assert!(lab.client.wait_tcp(ssh6, Duration::from_secs(5)).is_some(), "IPv6 closed after the knock");

    // After the window new connections fail.
    assert!(
        eventually(Duration::from_secs(15), || !lab.client.tcp_connects(ssh4, SEC)),
        "still open after the window"
    );
    assert!(
        eventually(Duration::from_secs(10), || fw.rich_rules("public").is_empty()),
        "{:?}",
        fw.rich_rules("public")
    );

    // `firewall-cmd --reload` drops runtime rules; spad puts the live grant back by itself.
    spa(&lab, dir.path(), GatewayLab::GW4);
    assert!(lab.client.wait_tcp(ssh4, Duration::from_secs(5)).is_some());
    fw.firewall_cmd(&["--reload"]);
    // Seen from firewalld's `Reloaded` signal (or, when the once-every-10-s look at the zone
    // runs while firewalld reloads, from the rule missing: both are damage, healed the same way).
    let t = d.wait_event("tamper", |e| is(e, "tamper"));
    let what = t["detail"]["what"].as_str().unwrap_or_default();
    assert!(what.contains("firewalld reloaded") || what.contains("vanished"), "{t}");
    let r = d.wait_event("repaired", |e| is(e, "repaired"));
    assert_eq!(r["detail"]["live_grants"], 1, "{r}");
    assert!(lab.client.tcp_connects(ssh4, SEC), "the grant was not re-applied after the reload");
    assert!(!lab.attacker.tcp_connects(attacker, SEC));

    // Killed: nothing opens, and the grant still ends at its deadline (firewalld's timer).
    d.kill9();
    assert!(!lab.attacker.tcp_connects(attacker, SEC), "a crash opened the port");
    assert!(
        eventually(Duration::from_secs(15), || !lab.client.tcp_connects(ssh4, SEC)),
        "grant outlived its window with spad dead"
    );
    assert!(eventually(Duration::from_secs(10), || fw.rich_rules("public").is_empty()));
    // A restart after that reopens nothing.
    let _d = start(&lab.gw, &fw, dir.path(), &text);
    assert!(!lab.client.tcp_connects(ssh4, SEC), "a restart reopened an expired grant");
}

#[test]
fn a_zone_that_opens_a_protected_port_is_refused() {
    spa_e2e::require_root();
    let ns = Netns::new("fdp");
    let fw = FirewalldLab::start(&ns, SSH_ZONE);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spad.toml");
    write_private(&config, &config_text(dir.path()));
    let (ok, out) = spad_check(&fw, &config);
    assert!(!ok, "spad check accepted a zone with ssh open: {out}");
    assert!(out.contains("zone public opens protected tcp/22 to everyone"), "{out}");
    assert!(out.contains("service ssh"), "{out}");
    // And the daemon refuses to start, saying the same.
    let out = ns
        .cmd(env!("CARGO_BIN_EXE_spad"))
        .args(["--config", config.to_str().unwrap()])
        .env("DBUS_SYSTEM_BUS_ADDRESS", fw.address())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("service ssh"), "{err}");
    assert!(fw.rich_rules("public").is_empty());
}

fn config_text(dir: &Path) -> String {
    config(dir, 30)
}

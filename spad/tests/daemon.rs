//! End-to-end tests of the daemon in a network-namespace lab: the real fwknop client (and
//! packets made with the engine) knock a running `spad`, and the assertions read its audit
//! trail, its state and its process, as an admin would.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use spa_e2e::{GatewayLab, Netns};

mod support;
use support::{Daemon, is, send_from, spa_bin, write_private};

const KEY: &str = "spad-daemon-test-encryption-key!";
const HMAC_KEY: &str = "spad-daemon-test-hmac-key-0123456789abcdef012345";

fn config(dir: &Path, listen: &str, extra_access: &str) -> String {
    format!(
        r#"
{listen}

[firewall]
backend = "none"

[replay]
state_dir = "{dir}/state"
max_packet_age = 120

[log]
audit = "{dir}/audit.jsonl"
max_rejects_per_second = 1000

[[access]]
name = "clients"
source = "10.201.1.0/24, fd00:201:1::/64"
open_ports = ["tcp/22", "udp/53"]
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
fw_access_timeout = 30
{extra_access}
"#,
        dir = dir.display()
    )
}

const SOCKET: &str = "[listen]\nmode = \"socket\"\naddresses = [\"0.0.0.0:62201\", \"[::]:62201\"]";

/// Runs the real fwknop client in the client namespace against the gateway.
fn fwknop(lab: &GatewayLab, home: &Path, args: &[&str]) -> Output {
    let out = lab
        .client
        .cmd("fwknop")
        .env("HOME", home)
        .args(["-D", GatewayLab::GW4, "--no-save-args", "--no-rc-file", "--key-rijndael", KEY, "--use-hmac"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "fwknop failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn knocks_are_granted_and_bad_packets_rejected_with_reasons() {
    let lab = GatewayLab::new("sd1");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), SOCKET, ""));

    // A valid knock from the real fwknop client, saved so it can be replayed.
    let saved = dir.path().join("packet");
    fwknop(
        &lab,
        dir.path(),
        &["-A", "tcp/22", "-a", GatewayLab::CLIENT4, "--key-hmac", HMAC_KEY, "-B", saved.to_str().unwrap()],
    );
    let g = d.wait_event("grant", |e| is(e, "grant"));
    assert_eq!(g["allowed_source"], GatewayLab::CLIENT4);
    assert_eq!(g["packet_source"], GatewayLab::CLIENT4);
    assert_eq!(g["access"], serde_json::json!(["tcp/22"]));
    assert_eq!(g["stanza"], "clients");
    assert_eq!(g["username"], "root");
    assert!(g["expires"].as_str().unwrap().ends_with('Z'));

    // The same packet again is a replay.
    let packet = std::fs::read_to_string(&saved).unwrap();
    let packet = packet.lines().last().unwrap().trim().to_owned();
    send_from(&lab.client, GatewayLab::addr(GatewayLab::GW4, 62201), packet.into_bytes());
    d.wait_event("replay reject", |e| is(e, "reject") && e["reason"] == "replay");

    // Wrong encryption key (same HMAC key): the HMAC passes, decryption fails.
    let out = lab
        .client
        .cmd("fwknop")
        .env("HOME", dir.path())
        .args([
            "-D",
            GatewayLab::GW4,
            "--no-save-args",
            "--no-rc-file",
            "--use-hmac",
            "-A",
            "tcp/22",
            "-a",
            GatewayLab::CLIENT4,
        ])
        .args(["--key-rijndael", "wrongkey", "--key-hmac", HMAC_KEY])
        .output()
        .unwrap();
    assert!(out.status.success());
    d.wait_event("decrypt reject", |e| is(e, "reject") && e["reason"] == "decrypt_failed");

    // Wrong HMAC key.
    fwknop(&lab, dir.path(), &["-A", "tcp/22", "-a", GatewayLab::CLIENT4, "--key-hmac", "otherhmac"]);
    d.wait_event("hmac reject", |e| is(e, "reject") && e["reason"] == "hmac_mismatch");

    // A port the stanza does not open.
    fwknop(&lab, dir.path(), &["-A", "tcp/23", "-a", GatewayLab::CLIENT4, "--key-hmac", HMAC_KEY]);
    d.wait_event("port reject", |e| is(e, "reject") && e["reason"] == "port_not_permitted");

    // A timestamp from ten minutes ago.
    fwknop(
        &lab,
        dir.path(),
        &["-A", "tcp/22", "-a", GatewayLab::CLIENT4, "--key-hmac", HMAC_KEY, "--time-offset-minus", "10min"],
    );
    d.wait_event("stale reject", |e| is(e, "reject") && e["reason"] == "stale_timestamp");

    // Junk from a host no stanza covers.
    send_from(&lab.attacker, GatewayLab::addr(GatewayLab::GW_ATTACKER4, 62201), vec![b'A'; 200]);
    d.wait_event("no stanza reject", |e| {
        is(e, "reject")
            && e["reason"] == "no_stanza_for_source"
            && e["packet_source"] == GatewayLab::ATTACKER4
    });

    // A re-knock for the same access that asks for longer extends the grant instead of adding
    // one; one that asks for less changes nothing and says so.
    fwknop(
        &lab,
        dir.path(),
        &["-A", "tcp/22", "-a", GatewayLab::CLIENT4, "--key-hmac", HMAC_KEY, "-f", "200"],
    );
    let ext = d.wait_event("extend", |e| is(e, "extend"));
    assert_eq!(ext["id"], g["id"]);
    assert!(ext["expires"].as_str() > g["expires"].as_str(), "{ext} does not end later than {g}");
    fwknop(
        &lab,
        dir.path(),
        &["-A", "tcp/22", "-a", GatewayLab::CLIENT4, "--key-hmac", HMAC_KEY, "-f", "10"],
    );
    let same = d.wait_event("reknock", |e| is(e, "reknock"));
    assert_eq!(
        (&same["id"], &same["expires"]),
        (&g["id"], &ext["expires"]),
        "a shorter re-knock moved the deadline"
    );
    assert_eq!(d.count(|e| is(e, "grant")), 1);
    assert_eq!(d.count(|e| is(e, "extend")), 1, "an extend event without a later deadline");

    // spad list shows it.
    let out = d.spad(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(GatewayLab::CLIENT4) && text.contains("tcp/22"), "{text}");
    // No secret ever reaches the log or the audit trail.
    let all = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap() + &d.log.lock().unwrap();
    assert!(!all.contains(KEY) && !all.contains(HMAC_KEY));
}

fn engine_packet(src_allow: &str, port: &str, ts_offset: i64) -> Vec<u8> {
    support::packet(KEY, HMAC_KEY, src_allow, port, ts_offset)
}

#[test]
fn ipv6_knock_is_granted() {
    let lab = GatewayLab::new("sd2");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), SOCKET, ""));
    send_from(&lab.client, GatewayLab::addr(GatewayLab::GW6, 62201), engine_packet("::", "tcp/22", 0));
    let g = d.wait_event("grant", |e| is(e, "grant"));
    assert_eq!(g["allowed_source"], GatewayLab::CLIENT6);
}

#[test]
fn restarts_keep_grants_and_the_replay_cache() {
    let lab = GatewayLab::new("sd3");
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), SOCKET, ""));
    let packet = engine_packet(GatewayLab::CLIENT4, "tcp/22", 0);
    send_from(&lab.client, GatewayLab::addr(GatewayLab::GW4, 62201), packet.clone());
    let g = d.wait_event("grant", |e| is(e, "grant"));

    // Crash, then start again: the grant is still recorded and the packet is still a replay.
    d.kill9();
    d.log.lock().unwrap().clear();
    d.spawn(&lab.gw);
    let starts: Vec<Value> = d.events().into_iter().filter(|e| is(e, "start")).collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[1]["detail"]["live_grants"], 1);
    let out = d.spad(&["list", "--json"]);
    let listed: Value = serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(listed["id"], g["id"], "spad list --json names the grant as the audit log does");
    assert_eq!(listed["state"], "live");
    send_from(&lab.client, GatewayLab::addr(GatewayLab::GW4, 62201), packet);
    d.wait_event("replay after restart", |e| is(e, "reject") && e["reason"] == "replay");

    // A clean stop revokes what was granted.
    d.stop();
    let r = d.wait_event("revoke", |e| is(e, "revoke"));
    assert_eq!(r["id"], g["id"]);
    let out = d.spad(&["list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no active grants"));
}

#[test]
fn sighup_with_a_broken_config_keeps_the_daemon_and_its_grants() {
    let lab = GatewayLab::new("sd4");
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), SOCKET, "");
    let mut d = Daemon::start(&lab.gw, dir.path(), &good);
    send_from(
        &lab.client,
        GatewayLab::addr(GatewayLab::GW4, 62201),
        engine_packet(GatewayLab::CLIENT4, "tcp/22", 0),
    );
    d.wait_event("grant", |e| is(e, "grant"));

    write_private(
        &d.config,
        &good.replace("open_ports = [\"tcp/22\", \"udp/53\"]", "open_ports = [\"tcp/99999\"]"),
    );
    d.signal("HUP");
    let f = d.wait_event("reload_failed", |e| is(e, "reload_failed"));
    assert!(f["detail"]["error"].as_str().unwrap().contains("tcp/99999"), "{f}");
    assert!(d.alive());
    // The old configuration still grants, and the first grant is still there.
    send_from(
        &lab.client,
        GatewayLab::addr(GatewayLab::GW4, 62201),
        engine_packet(GatewayLab::CLIENT4, "udp/53", 0),
    );
    d.wait_event("second grant", |e| is(e, "grant") && e["access"] == serde_json::json!(["udp/53"]));

    // A good new configuration takes effect without dropping grants.
    write_private(
        &d.config,
        &good.replace(
            "open_ports = [\"tcp/22\", \"udp/53\"]",
            "open_ports = [\"tcp/22\", \"udp/53\", \"tcp/443\"]",
        ),
    );
    d.signal("HUP");
    d.wait_event("reload", |e| is(e, "reload"));
    send_from(
        &lab.client,
        GatewayLab::addr(GatewayLab::GW4, 62201),
        engine_packet(GatewayLab::CLIENT4, "tcp/443", 0),
    );
    d.wait_event("grant 443", |e| is(e, "grant") && e["access"] == serde_json::json!(["tcp/443"]));
    assert_eq!(d.count(|e| is(e, "revoke") || is(e, "expire")), 0);
    let listed = String::from_utf8_lossy(&d.spad(&["list"]).stdout).into_owned();
    for port in ["tcp/22", "udp/53", "tcp/443"] {
        assert!(listed.contains(port), "{listed}");
    }
}

/// Sends junk datagrams of SPA size to `to` from inside `ns` at about `rate` per second
/// until `stop`; returns how many it sent.
fn junk_flood(
    ns: &Netns,
    to: SocketAddr,
    rate: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<u64> {
    let path = format!("/var/run/netns/{}", ns.name());
    thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd affects only this thread.
        assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) }, 0);
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut junk = [b'A'; 204];
        let mut sent = 0u64;
        let start = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
            // Keep to the rate: as many as are due by now, then a short sleep.
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                junk[(sent % 200) as usize] = b'a' + (sent % 26) as u8;
                let _ = s.send_to(&junk, to);
                sent += 1;
            }
            thread::sleep(Duration::from_millis(2));
        }
        sent
    })
}

fn accepted(e: &Value) -> bool {
    is(e, "grant") || is(e, "extend") || is(e, "reknock")
}

#[test]
fn valid_knocks_during_a_junk_flood_are_granted_and_the_rejects_are_budgeted() {
    let lab = GatewayLab::new("sd5");
    let dir = tempfile::tempdir().unwrap();
    // The flooder is inside a stanza's source range, so its junk reaches the HMAC check; the
    // reject budget is the shipped default, 50 lines a second.
    let text = config(
        dir.path(),
        SOCKET,
        "\n[[access]]\nname = \"wide\"\nsource = \"any\"\nkey = \"spad-daemon-flood-encryption-k!!\"\n\
         hmac_key = \"spad-daemon-flood-hmac-key-0123456789abcdef\"\n",
    )
    .replace("max_rejects_per_second = 1000", "max_rejects_per_second = 50");
    let d = Daemon::start(&lab.gw, dir.path(), &text);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood =
        junk_flood(&lab.attacker, GatewayLab::addr(GatewayLab::GW_ATTACKER4, 62201), 5000, stop.clone());
    thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        send_from(
            &lab.client,
            GatewayLab::addr(GatewayLab::GW4, 62201),
            engine_packet(GatewayLab::CLIENT4, "tcp/22", 0),
        );
        let start = Instant::now();
        while d.count(accepted) <= i {
            assert!(start.elapsed() < Duration::from_secs(20), "knock {i} not granted under the flood");
            thread::sleep(Duration::from_millis(20));
        }
    }
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    // Summaries of the last second are written within a second even with no more traffic.
    thread::sleep(Duration::from_millis(1500));
    let events = d.events();
    assert_eq!(events.iter().filter(|e| is(e, "grant")).count(), 1, "the flood got a grant");
    let lines = events.iter().filter(|e| is(e, "reject")).count() as u64;
    let summarised: u64 = events
        .iter()
        .filter(|e| is(e, "reject_summary"))
        .flat_map(|e| e["suppressed"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()))
        .sum();
    // Every junk packet was judged (a line or a count), and few got a line of their own.
    assert!(lines + summarised >= sent * 9 / 10, "{lines} lines + {summarised} counted of {sent} sent");
    let seconds = events.iter().filter(|e| is(e, "reject_summary")).count() as u64 + 2;
    assert!(lines <= 20 + 10 * seconds, "{lines} reject lines from one flooding source in {seconds} s");
    assert!(summarised > 0, "no reject_summary under a flood");
}

/// The fault of the first version: a budget charged before the HMAC let spoofed junk from a
/// client's own address starve its knocks. 1000 junk packets a second from the client's
/// address, and each of 20 fresh knocks is still acted on.
#[test]
fn a_junk_flood_from_the_clients_own_address_does_not_stop_its_knocks() {
    let lab = GatewayLab::new("sdq");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), SOCKET, ""));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = junk_flood(&lab.client, GatewayLab::addr(GatewayLab::GW4, 62201), 1000, stop.clone());
    thread::sleep(Duration::from_millis(500));
    for i in 0..20 {
        send_from(
            &lab.client,
            GatewayLab::addr(GatewayLab::GW4, 62201),
            engine_packet(GatewayLab::CLIENT4, "tcp/22", 0),
        );
        let start = Instant::now();
        while d.count(accepted) <= i {
            assert!(start.elapsed() < Duration::from_secs(20), "knock {i} of 20 not acted on");
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(flood.join().unwrap() >= 1000, "the flood did not run");
    assert_eq!(d.count(|e| is(e, "reject") && e["reason"] == "rate_limited"), 0);
}

#[test]
fn capture_mode_works_while_the_spa_port_is_dropped() {
    let lab = GatewayLab::new("sd6");
    lab.gw.sh("nft add table inet t && nft add chain inet t in '{ type filter hook input priority 0; }' && nft add rule inet t in udp dport 62201 drop");
    let dir = tempfile::tempdir().unwrap();
    let listen = "[listen]\nmode = \"capture\"\ninterfaces = [\"c0\", \"a0\"]\nport = 62201";
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), listen, ""));
    fwknop(&lab, dir.path(), &["-A", "tcp/22", "-a", GatewayLab::CLIENT4, "--key-hmac", HMAC_KEY]);
    let g = d.wait_event("grant", |e| is(e, "grant"));
    assert_eq!(g["allowed_source"], GatewayLab::CLIENT4);
    // IPv6 is captured too.
    send_from(&lab.client, GatewayLab::addr(GatewayLab::GW6, 62201), engine_packet("::", "udp/53", 0));
    d.wait_event("ipv6 grant", |e| is(e, "grant") && e["allowed_source"] == GatewayLab::CLIENT6);
    // Nothing listens on the port: the drop rule counted the packets, no socket got them.
    let ss = lab.gw.sh("ss -Huln 'sport = :62201'");
    assert!(ss.trim().is_empty(), "{ss}");
}

/// The script backend driven by the daemon: what the admin's scripts see, when they run.
#[test]
fn script_backend_sees_every_port_and_closes_at_expiry_and_after_a_crash() {
    let lab = GatewayLab::new("sd7");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    let script = dir.path().join("fw.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$SPA_ACTION $1 $2 $SPA_TIMEOUT\" >> {}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fw = format!(
        "[firewall]\nbackend = \"script\"\n[firewall.script]\nopen = [\"{s}\", \"{{source}}\", \"{{proto}}/{{port}}\"]\nclose = [\"{s}\", \"{{source}}\", \"{{proto}}/{{port}}\"]\n",
        s = script.display()
    );
    let text = config(dir.path(), SOCKET, "")
        .replace("[firewall]\nbackend = \"none\"\n", &fw)
        .replace("fw_access_timeout = 30", "fw_access_timeout = 2");
    let calls = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut d = Daemon::start(&lab.gw, dir.path(), &text);

    // A multi-port knock from the real fwknop client: one open per port (fwknop itself only
    // uses the first).
    fwknop(&lab, dir.path(), &["-A", "tcp/22,udp/53", "-a", GatewayLab::CLIENT4, "--key-hmac", HMAC_KEY]);
    d.wait_event("grant", |e| is(e, "grant"));
    let c = calls();
    assert!(c.contains("open 10.201.1.2 tcp/22 2") && c.contains("open 10.201.1.2 udp/53 2"), "{c}");
    // At the deadline the daemon runs close for each port.
    d.wait_event("expire", |e| is(e, "expire"));
    let c = calls();
    assert!(c.contains("close 10.201.1.2 tcp/22") && c.contains("close 10.201.1.2 udp/53"), "{c}");

    // Crash while a grant is open, restart after its deadline: close still runs.
    fwknop(&lab, dir.path(), &["-A", "tcp/22", "-a", GatewayLab::CLIENT4, "--key-hmac", HMAC_KEY]);
    let start = Instant::now();
    while calls().matches("open").count() < 3 {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", calls());
        thread::sleep(Duration::from_millis(20));
    }
    d.kill9();
    thread::sleep(Duration::from_secs(3));
    d.spawn(&lab.gw);
    let start = Instant::now();
    while calls().matches("close 10.201.1.2 tcp/22").count() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", calls());
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(calls().matches("open").count(), 3, "no open after the restart: the grant was over");
}

#[test]
fn the_spa_client_knocks_over_ipv4_and_ipv6_with_nat_requests_refused_when_disabled() {
    let lab = GatewayLab::new("sd8");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), SOCKET, ""));
    let knock = |dest: &str, extra: &[&str]| {
        let out = lab
            .client
            .cmd(spa_bin().to_str().unwrap())
            .env("HOME", dir.path())
            .args(["knock", "--no-rc-file", "-D", dest, "--key-rijndael", KEY, "--key-hmac", HMAC_KEY])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "spa: {}", String::from_utf8_lossy(&out.stderr));
    };
    knock(GatewayLab::GW4, &["-A", "tcp/22,udp/53", "-s", "-f", "60", "-U", "alice"]);
    let g = d.wait_event("grant", |e| is(e, "grant"));
    assert_eq!(g["access"], serde_json::json!(["tcp/22", "udp/53"]));
    assert_eq!(g["username"], "alice");
    assert_eq!(g["allowed_source"], GatewayLab::CLIENT4);
    knock(GatewayLab::GW6, &["-A", "tcp/22", "-s"]);
    d.wait_event("ipv6 grant", |e| is(e, "grant") && e["allowed_source"] == GatewayLab::CLIENT6);
    knock(GatewayLab::GW4, &["-A", "tcp/22", "-s", "-N", "10.201.2.2,22"]);
    d.wait_event("nat reject", |e| is(e, "reject") && e["reason"] == "nat_not_enabled");
}

#[test]
fn test_mode_decides_and_logs_but_changes_no_firewall() {
    let lab = GatewayLab::new("sd9");
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), SOCKET, "").replace(
        "[firewall]\nbackend = \"none\"\n",
        "[firewall]\nbackend = \"nft\"\n[firewall.nft]\nprotect = [\"tcp/22\"]\n",
    );
    let config_path = dir.path().join("spad.toml");
    write_private(&config_path, &text);
    let mut child = lab
        .gw
        .cmd(env!("CARGO_BIN_EXE_spad"))
        .args(["--config", config_path.to_str().unwrap(), "--test"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    while !ready.contains("spad ready") {
        assert!(err.read_line(&mut ready).unwrap() > 0, "spad exited: {ready}");
    }
    send_from(
        &lab.client,
        GatewayLab::addr(GatewayLab::GW4, 62201),
        engine_packet(GatewayLab::CLIENT4, "tcp/22", 0),
    );
    let audit = dir.path().join("audit.jsonl");
    let start = Instant::now();
    while !std::fs::read_to_string(&audit).unwrap_or_default().contains("\"event\":\"grant\"") {
        assert!(start.elapsed() < Duration::from_secs(10), "no grant event");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(lab.gw.sh("nft list tables").trim().is_empty(), "test mode touched the firewall");
    // Test mode keeps its state apart from the real daemon's.
    assert!(dir.path().join("state/test/grants.jsonl").exists());
    assert!(!dir.path().join("state/grants.jsonl").exists());
    let _ = child.kill();
    let _ = child.wait();
}

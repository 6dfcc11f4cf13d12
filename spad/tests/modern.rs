//! The modern format end to end: keys made by `spad keygen` and `spa keygen --modern`, real
//! spad with the nft backend in the namespace lab, the real `spa` client. A modern knock opens
//! the port for the client and no one else; a user removed from `users` and reloaded is
//! refused while another still gets in; a replayed packet is refused; `spa connect` works as
//! ssh's ProxyCommand with both formats, and with the modern format the knock names the very
//! source port the connection comes from.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use spa_e2e::{Background, GatewayLab, Netns};

mod support;
use support::{Daemon, is, send_from, spa_bin, write_private};

const KEY: &str = "spad-modern-test-encryption-key!";
const HMAC_KEY: &str = "spad-modern-test-hmac-key-0123456789abcdef";
const SHORT: Duration = Duration::from_secs(1);

/// `spad keygen` into `dir/server.key`; the public key it printed.
fn server_key(dir: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spad"))
        .args(["keygen", "--out", dir.join("server.key").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(public.starts_with("x25519:"), "{public}");
    public
}

/// `spa keygen --modern` for `name` into `dir/NAME.key`; the `users` line it printed.
fn user_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.key"));
    let out = std::process::Command::new(spa_bin())
        .args(["keygen", "--modern", "--name", name, "--out", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(line.starts_with("ed25519:") && line.ends_with(&format!(" {name}")), "{line}");
    (path, line)
}

/// A configuration with the nft backend protecting tcp/22 and tcp/2222: a modern stanza for
/// `users` opening tcp/22, and an fwknop stanza opening tcp/2222.
fn config(dir: &Path, table: &str, users: &[&str]) -> String {
    let users: Vec<String> = users.iter().map(|u| format!("{u:?}")).collect();
    format!(
        r#"
[listen]
addresses = ["0.0.0.0:62201"]
[firewall]
backend = "nft"
[firewall.nft]
table = "{table}"
protect = ["tcp/22", "tcp/2222"]
[replay]
state_dir = "{dir}/state"
[log]
audit = "{dir}/audit.jsonl"
[server]
key_file = "{dir}/server.key"

[[access]]
name = "pk"
source = "any"
format = "modern"
users = [{users}]
open_ports = ["tcp/22"]
fw_access_timeout = 30

[[access]]
name = "classic"
source = "any"
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
open_ports = ["tcp/2222"]
fw_access_timeout = 30
"#,
        dir = dir.display(),
        users = users.join(", ")
    )
}

/// A modern knock from `ns` to the gateway's `dest` for tcp/22 with `key`, saving the packet
/// to `save`.
fn knock(ns: &Netns, dest: &str, server: &str, key: &Path, save: &Path) -> Output {
    ns.cmd(spa_bin().to_str().unwrap())
        .args(["--no-rc-file", "--no-save-args", "--format", "modern", "--server-key", server])
        .args(["--user-key-file", key.to_str().unwrap(), "-A", "tcp/22", "-s", "-D", dest])
        .args(["-B", save.to_str().unwrap()])
        .output()
        .unwrap()
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An echo service on `port` of the gateway that first says which source port the
/// connection came from (`peer PORT`), then echoes what it reads.
fn echo_service(gw: &Netns, port: u16) -> Background {
    let bg = gw.spawn(
        gw.cmd("socat")
            .args([&format!("TCP4-LISTEN:{port},reuseaddr,fork"), "SYSTEM:echo peer $SOCAT_PEERPORT; cat"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let start = std::time::Instant::now();
    while !gw.sh_ok(&format!("ss -Hltn 'sport = :{port}' | grep -q LISTEN")) {
        assert!(start.elapsed() < Duration::from_secs(5), "echo service on {port} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    bg
}

/// Runs `spa connect ARGS` in the client as ssh runs a ProxyCommand: writes a line to its
/// stdin, reads the service's greeting and the echo from its stdout, closes stdin and waits
/// for it to end. Returns (greeting, echoed line, stderr).
fn proxy(lab: &GatewayLab, args: &[&str]) -> (String, String, String) {
    let mut child = lab
        .client
        .cmd(spa_bin().to_str().unwrap())
        .arg("connect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello through the knock\n").unwrap();
    stdin.flush().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut greeting = String::new();
    let mut echoed = String::new();
    stdout.read_line(&mut greeting).unwrap();
    stdout.read_line(&mut echoed).unwrap();
    drop(stdin);
    // The service ends when its input ends; spa then sees the end of the stream and exits.
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "spa connect failed: {stderr}");
    assert!(rest.is_empty(), "more after the echo: {rest:?}");
    (greeting, echoed, stderr)
}

/// The fields of a modern packet, opened with the server's key by `spa decode`.
fn decode(dir: &Path, packet: &Path) -> Value {
    let text = std::fs::read_to_string(packet).unwrap();
    let out = std::process::Command::new(spa_bin())
        .args(["decode", "--server-secret-key-file", dir.join("server.key").to_str().unwrap(), text.trim()])
        .output()
        .unwrap();
    ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn modern_knocks_revocation_and_replay() {
    let lab = GatewayLab::new("mk");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = server_key(d);
    let (alice, alice_line) = user_key(d, "alice");
    let (bob, bob_line) = user_key(d, "bob");
    let _ssh = lab.gw.tcp_server(22, "ssh");
    let ssh = GatewayLab::addr(GatewayLab::GW4, 22);
    let spad = Daemon::start(&lab.gw, d, &config(d, "spamk", &[&alice_line, &bob_line]));

    assert!(!lab.client.tcp_connects(ssh, SHORT), "open before any knock");
    let first = d.join("alice-1.pkt");
    ok(&knock(&lab.client, GatewayLab::GW4, &server, &alice, &first));
    let g = spad.wait_event("alice's grant", |e| is(e, "grant") && e["username"] == "alice");
    assert_eq!(g["stanza"], "pk", "{g}");
    assert!(lab.client.wait_tcp(ssh, Duration::from_secs(5)).is_some(), "closed after the knock");
    assert!(
        !lab.attacker.tcp_connects(GatewayLab::addr(GatewayLab::GW_ATTACKER4, 22), SHORT),
        "open for another host"
    );

    // The same packet again, from the same host: refused before any public-key work.
    let packet = std::fs::read(&first).unwrap();
    let packet = packet.trim_ascii_end().to_vec();
    send_from(&lab.client, GatewayLab::addr(GatewayLab::GW4, 62201), packet);
    spad.wait_event("replay reject", |e| is(e, "reject") && e["reason"] == "replay");

    // Revoke alice: one line out, reload.
    write_private(&d.join("spad.toml"), &config(d, "spamk", &[&bob_line]));
    support::own_control_socket(&d.join("spad.toml"), d);
    let out = spad.spad(&["reload"]);
    ok(&out);
    ok(&knock(&lab.client, GatewayLab::GW4, &server, &alice, &d.join("alice-2.pkt")));
    spad.wait_event("alice refused", |e| is(e, "reject") && e["reason"] == "unknown_user");
    // Bob, on another host, still gets in (with a grant of his own).
    let bob_ssh = GatewayLab::addr(GatewayLab::GW_ATTACKER4, 22);
    ok(&knock(&lab.attacker, GatewayLab::GW_ATTACKER4, &server, &bob, &d.join("bob.pkt")));
    let g = spad.wait_event("bob's grant", |e| is(e, "grant") && e["username"] == "bob");
    assert_eq!(g["allowed_source"], GatewayLab::ATTACKER4, "{g}");
    assert!(lab.attacker.wait_tcp(bob_ssh, Duration::from_secs(5)).is_some(), "closed for bob");
    assert_eq!(spad.count(|e| is(e, "grant") && e["username"] == "alice"), 1, "alice got in once only");
}

#[test]
fn connect_relays_through_the_knock_with_both_formats() {
    let lab = GatewayLab::new("mc");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = server_key(d);
    let (alice, alice_line) = user_key(d, "alice");
    let _echo22 = echo_service(&lab.gw, 22);
    let _echo2222 = echo_service(&lab.gw, 2222);
    let spad = Daemon::start(&lab.gw, d, &config(d, "spamc", &[&alice_line]));
    let rc = d.join("fwknoprc");
    write_private(
        &rc,
        &format!(
            "[classic]\nKEY {KEY}\nHMAC_KEY {HMAC_KEY}\nUSE_HMAC Y\nNO_SAVE_ARGS Y\n\n\
             [pk]\nSPA_FORMAT modern\nSPA_SERVER_KEY {server}\nSPA_USER_KEY_FILE {}\nNO_SAVE_ARGS Y\n",
            alice.display()
        ),
    );
    let rc = rc.to_str().unwrap();
    assert!(!lab.client.tcp_connects(GatewayLab::addr(GatewayLab::GW4, 2222), SHORT), "2222 open");
    assert!(!lab.client.tcp_connects(GatewayLab::addr(GatewayLab::GW4, 22), SHORT), "22 open");

    // fwknop format: knock, then connect.
    let (greeting, echoed, _) = proxy(&lab, &["--rc-file", rc, "-n", "classic", GatewayLab::GW4, "2222"]);
    assert!(greeting.starts_with("peer "), "{greeting:?}");
    assert_eq!(echoed, "hello through the knock\n");
    spad.wait_event("classic grant", |e| is(e, "grant") && e["stanza"] == "classic");

    // Modern format: the knock names the connection's source port.
    let saved = d.join("connect.pkt");
    let (greeting, echoed, stderr) =
        proxy(&lab, &["--rc-file", rc, "-n", "pk", "-B", saved.to_str().unwrap(), GatewayLab::GW4, "22"]);
    assert_eq!(echoed, "hello through the knock\n", "{stderr}");
    let peer: u16 = greeting.trim().strip_prefix("peer ").and_then(|p| p.parse().ok()).unwrap_or_else(|| {
        panic!("{greeting:?}");
    });
    let fields = decode(d, &saved);
    assert_eq!(fields["source_port"], peer, "the knock names the connection's source port: {fields}");
    assert_eq!(fields["ports"], serde_json::json!(["tcp/22"]), "{fields}");
    spad.wait_event("modern grant", |e| is(e, "grant") && e["username"] == "alice");
}

#[test]
fn connect_without_a_knock_configuration_fails_on_stderr() {
    let lab = GatewayLab::new("mn");
    let dir = tempfile::tempdir().unwrap();
    let _echo = echo_service(&lab.gw, 22);
    let rc = dir.path().join("fwknoprc");
    write_private(&rc, "[other]\nSPA_SERVER 10.201.1.1\n");
    for args in [
        vec!["--rc-file", rc.to_str().unwrap(), "-n", "gw", GatewayLab::GW4, "22"],
        vec!["--no-rc-file", GatewayLab::GW4, "22"],
        vec!["--no-rc-file", "--format", "modern", "--user-key-file", "/nonexistent", GatewayLab::GW4, "22"],
    ] {
        let out = lab
            .client
            .cmd(spa_bin().to_str().unwrap())
            .arg("connect")
            .args(&args)
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?}: stdout is the stream, yet: {:?}", out.stdout);
        assert!(stderr.starts_with("spa: ") && stderr.lines().count() == 1, "{args:?}: {stderr}");
    }
}

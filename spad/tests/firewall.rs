//! The daemon with real firewall backends, checked the way an admin would: TCP connections
//! from the client and from an attacker, before and after a knock, after the window, and
//! across a crash of the daemon.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use spa_e2e::{GatewayLab, Netns};

mod support;
use support::{Daemon, spa_bin};

const KEY: &str = "spad-firewall-test-encryption-k!";
const HMAC_KEY: &str = "spad-firewall-test-hmac-key-0123456789abcdef";

/// spad started in `gw` on the configuration `write_config` wrote (`dir/spad.toml`).
fn start(gw: &Netns, config: &Path) -> Daemon {
    Daemon::start_written(gw, config.parent().unwrap())
}

fn knock(lab: &GatewayLab, home: &Path, dest: &str) {
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
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Writes a spad configuration for `backend` protecting tcp/22, with one stanza opening
/// `port` for `timeout` seconds; returns its path.
fn write_config(
    dir: &Path,
    backend: &str,
    backend_extra: &str,
    extra: &str,
    port: &str,
    timeout: u32,
) -> PathBuf {
    let config = dir.join("spad.toml");
    let text = format!(
        r#"
[listen]
addresses = ["0.0.0.0:62201", "[::]:62201"]
[firewall]
backend = "{backend}"
[firewall.{backend}]
{backend_extra}
protect = ["tcp/22"]
[replay]
state_dir = "{dir}/state"
[log]
audit = "{dir}/audit.jsonl"
{extra}
[[access]]
source = "any"
open_ports = ["{port}"]
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
fw_access_timeout = {timeout}
"#,
        dir = dir.display()
    );
    std::fs::write(&config, text).unwrap();
    // spad refuses key files open to group or others; set the mode whatever the umask.
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    config
}

fn scenario(prefix: &str, backend: &str, table: &str) {
    let lab = GatewayLab::new(prefix);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), backend, table, "", "tcp/22", 3);
    let _srv = lab.gw.tcp_server(22, "ssh");
    let ssh4 = GatewayLab::addr(GatewayLab::GW4, 22);
    let ssh6 = GatewayLab::addr(GatewayLab::GW6, 22);
    let short = Duration::from_secs(1);
    let mut spad = start(&lab.gw, &config);

    assert!(!lab.client.tcp_connects(ssh4, short), "open before any knock");
    // The real fwknop client first.
    let out = lab
        .client
        .cmd("fwknop")
        .env("HOME", dir.path())
        .args(["-A", "tcp/22", "-a", GatewayLab::CLIENT4, "-D", GatewayLab::GW4, "--use-hmac"])
        .args(["--key-rijndael", KEY, "--key-hmac", HMAC_KEY, "--no-save-args", "--no-rc-file"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        lab.client.wait_tcp(ssh4, Duration::from_secs(5)).is_some(),
        "closed after the knock:\n{}",
        spad.log_text()
    );
    assert!(
        !lab.attacker.tcp_connects(GatewayLab::addr(GatewayLab::GW_ATTACKER4, 22), short),
        "open for the attacker"
    );
    assert!(!lab.client.tcp_connects(ssh6, short), "IPv6 open without an IPv6 knock");

    // IPv6 knock with our client, IPv6 access.
    knock(&lab, dir.path(), GatewayLab::GW6);
    assert!(lab.client.wait_tcp(ssh6, Duration::from_secs(5)).is_some(), "IPv6 closed after the knock");

    // After the 3 s window new connections fail.
    thread::sleep(Duration::from_secs(5));
    assert!(!lab.client.tcp_connects(ssh4, short), "still open after the window");

    // A crash never opens the port, and a restart keeps the live grant.
    knock(&lab, dir.path(), GatewayLab::GW4);
    assert!(lab.client.wait_tcp(ssh4, Duration::from_secs(5)).is_some());
    spad.kill9();
    assert!(
        !lab.attacker.tcp_connects(GatewayLab::addr(GatewayLab::GW_ATTACKER4, 22), short),
        "crash opened the port"
    );
    let mut spad = start(&lab.gw, &config);
    assert!(lab.client.tcp_connects(ssh4, short), "live grant lost across the restart");

    // Killed again and left dead: the grant still ends at its deadline (the kernel expires it).
    spad.kill9();
    thread::sleep(Duration::from_secs(4));
    assert!(!lab.client.tcp_connects(ssh4, short), "grant outlived its window with the daemon dead");
    assert!(!lab.attacker.tcp_connects(GatewayLab::addr(GatewayLab::GW_ATTACKER4, 22), short));
    // A restart after that reopens nothing.
    let _spad = start(&lab.gw, &config);
    assert!(!lab.client.tcp_connects(ssh4, short), "restart reopened an expired grant");
}

#[test]
fn iptables_backend_opens_for_the_client_only_and_fails_closed() {
    spa_e2e::require_root();
    scenario("fwi", "iptables", "");
}

#[test]
fn nft_backend_opens_for_the_client_only_and_fails_closed() {
    spa_e2e::require_root();
    scenario("fwn", "nft", "table = \"spa\"");
}

/// A NAT access knock (`spa -N internal,port`) through the daemon: the client reaches the
/// internal host through the gateway's external port; the attacker does not.
fn nat_scenario(prefix: &str, backend: &str) {
    let lab = GatewayLab::new(prefix);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), backend, "", "[nat]\nenable_forwarding = true", "tcp/2222", 30);
    let _srv = lab.internal.tcp_server(22, "internal-ssh");
    let _spad = start(&lab.gw, &config);
    let short = Duration::from_secs(1);
    let ext = GatewayLab::addr(GatewayLab::GW4, 2222);
    assert!(!lab.client.tcp_connects(ext, short), "forwarded before any knock");
    let out = lab
        .client
        .cmd(spa_bin().to_str().unwrap())
        .env("HOME", dir.path())
        .args(["-A", "tcp/2222", "-s", "-N", "10.201.2.2,22", "-D", GatewayLab::GW4, "--no-rc-file"])
        .args(["--key-rijndael", KEY, "--key-hmac", HMAC_KEY])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        lab.client.wait_tcp(ext, Duration::from_secs(5)).is_some(),
        "DNAT to the internal host does not work"
    );
    let banner = lab.client.sh("nc -n -w 1 10.201.1.1 2222 </dev/null || true");
    assert!(banner.contains("internal-ssh"), "reached something else: {banner:?}");
    assert!(
        !lab.attacker.tcp_connects(GatewayLab::addr(GatewayLab::GW_ATTACKER4, 2222), short),
        "the attacker is forwarded too"
    );
}

#[test]
fn nft_backend_forwards_a_nat_knock_to_the_internal_host() {
    spa_e2e::require_root();
    nat_scenario("fnn", "nft");
}

#[test]
fn iptables_backend_forwards_a_nat_knock_to_the_internal_host() {
    spa_e2e::require_root();
    nat_scenario("fni", "iptables");
}

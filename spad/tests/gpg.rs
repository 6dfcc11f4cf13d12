//! fwknop's GPG mode end to end (cargo feature `gpg`): the real fwknop client, signing and
//! encrypting with a GnuPG keyring the test makes, knocks spad (nft backend, in the gateway of
//! a namespace lab), which reads the exported keys; then our own `spa` does the same from the
//! exported files. Checked as an admin would: TCP connections through the firewall and the
//! audit trail, which names the signer.
//!
//! Needs root (network namespaces), gpg and fwknop; and `spa` built with the feature too
//! (`cargo build -p spa --features gpg`, or `cargo test -p spad -p spa --features gpg`).
#![cfg(feature = "gpg")]

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use spa_e2e::{GatewayLab, Gnupg, GpgKey};

mod support;
use support::{Daemon, is, spa_bin};

const HMAC_KEY: &str = "spad-gpg-test-hmac-key-0123456789abcdef";
const SERVER_PW: &str = "spad-gpg-test-server-passphrase-0123";

/// The lab's keys: the server's (with a passphrase), an allowed client's and a stranger's
/// (both without), all in one GnuPG home the fwknop client uses.
struct Keys {
    gnupg: Gnupg,
    server: GpgKey,
    client: GpgKey,
    stranger: GpgKey,
}

fn keys() -> Keys {
    let gnupg = Gnupg::new();
    let server = gnupg.rsa_key("spa-server <server@example.invalid>", SERVER_PW);
    let client = gnupg.rsa_key("spa-client <client@example.invalid>", "");
    let stranger = gnupg.rsa_key("stranger <stranger@example.invalid>", "");
    Keys { gnupg, server, client, stranger }
}

fn write_config(dir: &Path, k: &Keys) {
    k.gnupg.export_secret(&k.server, SERVER_PW, &dir.join("server-secret.asc"));
    // The stranger's key is known (a real keyring holds many keys) but not allowed.
    k.gnupg.export_public(&[&k.client, &k.stranger], &dir.join("clients.asc"));
    let text = format!(
        r#"
[listen]
addresses = ["0.0.0.0:62201"]
[firewall]
backend = "nft"
[firewall.nft]
table = "spagpg"
protect = ["tcp/22", "tcp/23"]
[replay]
state_dir = "{d}/state"
[log]
audit = "{d}/audit.jsonl"
max_rejects_per_second = 1000

[[access]]
name = "gpg-users"
source = "any"
open_ports = ["tcp/22", "tcp/23"]
gpg_decrypt_key_file = "{d}/server-secret.asc"
gpg_decrypt_pw = "{SERVER_PW}"
gpg_decrypt_id = "{server}"
gpg_remote_keys_file = "{d}/clients.asc"
gpg_remote_id = "{client}"
hmac_key = "{HMAC_KEY}"
fw_access_timeout = 30
"#,
        d = dir.display(),
        server = k.server.short_id,
        client = k.client.short_id,
    );
    support::write_private(&dir.join("spad.toml"), &text);
}

/// The real fwknop client in GPG mode, from the client namespace; `signer` `None` sends an
/// unsigned packet.
fn fwknop(lab: &GatewayLab, k: &Keys, home: &Path, port: &str, signer: Option<&GpgKey>) -> Output {
    let mut cmd = lab.client.cmd("fwknop");
    cmd.env("HOME", home)
        .args([
            "-D",
            GatewayLab::GW4,
            "--no-save-args",
            "--no-rc-file",
            "-A",
            port,
            "-a",
            GatewayLab::CLIENT4,
        ])
        .args(["--gpg-recipient-key", &k.server.short_id, "--gpg-home-dir"])
        .arg(k.gnupg.home())
        .args(["--use-hmac", "--key-hmac", HMAC_KEY]);
    if let Some(s) = signer {
        cmd.args(["--gpg-signer-key", &s.short_id, "--gpg-no-signing-pw"]);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "fwknop failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn the_real_fwknop_client_in_gpg_mode_opens_spad_and_spa_does_too() {
    let lab = GatewayLab::new("gpg");
    let dir = tempfile::tempdir().unwrap();
    let k = keys();
    write_config(dir.path(), &k);
    let d = Daemon::start_written(&lab.gw, dir.path());
    let _ssh = lab.gw.tcp_server(22, "ssh");
    let _telnet = lab.gw.tcp_server(23, "telnet");
    let ssh = GatewayLab::addr(GatewayLab::GW4, 22);
    let short = Duration::from_millis(500);
    assert!(!lab.client.tcp_connects(ssh, short), "open before any knock");

    // Signed by a key that is known but not listed: refused.
    fwknop(&lab, &k, dir.path(), "tcp/22", Some(&k.stranger));
    let r = d.wait_event("stranger refused", |e| is(e, "reject") && e["reason"] == "signer_not_allowed");
    assert_eq!(r["stanza"], "gpg-users");
    // Not signed at all, where a signature is required: refused.
    fwknop(&lab, &k, dir.path(), "tcp/22", None);
    d.wait_event("unsigned refused", |e| is(e, "reject") && e["reason"] == "signature_missing");
    assert!(!lab.client.tcp_connects(ssh, short), "open after refused knocks");

    // Signed by the listed client: granted, and the audit line names the signer.
    fwknop(&lab, &k, dir.path(), "tcp/22", Some(&k.client));
    let g = d.wait_event("grant", |e| is(e, "grant"));
    assert_eq!(g["username"], format!("gpg:{}", k.client.fingerprint));
    assert_eq!(g["allowed_source"], GatewayLab::CLIENT4);
    assert_eq!(g["access"], serde_json::json!(["tcp/22"]));
    assert!(lab.client.wait_tcp(ssh, Duration::from_secs(5)).is_some(), "closed after the knock");
    assert!(
        !lab.attacker.tcp_connects(GatewayLab::addr(GatewayLab::GW_ATTACKER4, 22), short),
        "the attacker got in"
    );

    // Our client, from the exported files: the same server key, the client's secret key.
    let telnet = GatewayLab::addr(GatewayLab::GW4, 23);
    assert!(!lab.client.tcp_connects(telnet, short), "tcp/23 open before its knock");
    let help = lab.client.cmd(spa_bin().to_str().unwrap()).arg("--help").output().unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--gpg-recipient-key-file"),
        "{} was built without the gpg feature: cargo build -p spa --features gpg",
        spa_bin().display()
    );
    k.gnupg.export_public(&[&k.server], &dir.path().join("server.asc"));
    k.gnupg.export_secret(&k.client, "", &dir.path().join("me.asc"));
    let out = lab
        .client
        .cmd(spa_bin().to_str().unwrap())
        .env("HOME", dir.path())
        .args([
            "-D",
            GatewayLab::GW4,
            "--no-save-args",
            "--no-rc-file",
            "-A",
            "tcp/23",
            "-a",
            GatewayLab::CLIENT4,
        ])
        .arg("--gpg-recipient-key-file")
        .arg(dir.path().join("server.asc"))
        .arg("--gpg-signer-key-file")
        .arg(dir.path().join("me.asc"))
        .args(["--gpg-recipient-key", &k.server.short_id, "--gpg-signer-key", &k.client.short_id])
        .args(["--key-hmac", HMAC_KEY])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "spa failed: {}", String::from_utf8_lossy(&out.stderr));
    let g = d.wait_event("spa's grant", |e| is(e, "grant") && e["access"] == serde_json::json!(["tcp/23"]));
    assert_eq!(g["username"], format!("gpg:{}", k.client.fingerprint));
    assert!(lab.client.wait_tcp(telnet, Duration::from_secs(5)).is_some(), "tcp/23 closed after spa's knock");
}

//! End-to-end (cargo feature `gpg`): `spa` in fwknop's GPG mode, from exported key files,
//! opens the real `fwknopd` (Debian `fwknop-server`, iptables) in the gateway of a namespace
//! lab; fwknopd decrypts and checks the signature with a GnuPG keyring the test makes
//! (`GPG_HOME_DIR`, `GPG_DECRYPT_ID`, `GPG_REMOTE_ID`). A packet signed by a key fwknopd does
//! not list opens nothing.
//!
//! fwknopd's server key has no passphrase (`GPG_ALLOW_NO_PW`): fwknop 2.6 hands passphrases to
//! gpgme through a callback, which GnuPG 2.1 and later ignore unless the caller also asks for
//! loopback pinentry (fwknop does not), so a protected key cannot be used by fwknopd without
//! a pinentry program. spad reads protected keys (`gpg_decrypt_pw`): spad's own GPG test.
//!
//! Needs root (network namespaces), gpg and fwknopd.
#![cfg(feature = "gpg")]

use std::path::Path;
use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use spa_e2e::{Fwknopd, GatewayLab, Gnupg, GpgKey, Netns};

const SPA: &str = env!("CARGO_BIN_EXE_spa");
const HMAC_KEY: &str = "spa-gpg-fwknopd-hmac-key-0123456789ab";

fn rules(ns: &Netns) -> String {
    let o = ns.cmd("iptables").args(["-S", "FWKNOP_INPUT"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `spa` in GPG mode from the client namespace, signed with the secret key in `signer_file`.
fn knock(lab: &GatewayLab, dir: &Path, port: &str, signer_file: &Path, signer: &GpgKey) -> Output {
    let o = lab
        .client
        .cmd(SPA)
        .env("HOME", dir)
        .args([
            "--no-rc-file",
            "--no-save-args",
            "-D",
            GatewayLab::GW4,
            "-A",
            port,
            "-a",
            GatewayLab::CLIENT4,
        ])
        .arg("--gpg-recipient-key-file")
        .arg(dir.join("server.asc"))
        .arg("--gpg-signer-key-file")
        .arg(signer_file)
        .args(["--gpg-signer-key", &signer.short_id, "--gpg-no-signing-pw", "--key-hmac", HMAC_KEY])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "spa failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

#[test]
fn fwknopd_accepts_spas_gpg_packets_from_listed_signers_only() {
    let lab = GatewayLab::new("cg");
    let dir = tempfile::tempdir().unwrap();
    let gnupg = Gnupg::new();
    let server = gnupg.rsa_key("fwknopd <server@example.invalid>", "");
    let client = gnupg.rsa_key("spa-client <client@example.invalid>", "");
    let stranger = gnupg.rsa_key("stranger <stranger@example.invalid>", "");
    gnupg.export_public(&[&server], &dir.path().join("server.asc"));
    gnupg.export_secret(&client, "", &dir.path().join("client.asc"));
    gnupg.export_secret(&stranger, "", &dir.path().join("stranger.asc"));
    let access = format!(
        "SOURCE ANY\nOPEN_PORTS tcp/22,tcp/23\nGPG_HOME_DIR {home}\nGPG_DECRYPT_ID {server}\n\
         GPG_ALLOW_NO_PW Y\nGPG_REQUIRE_SIG Y\nGPG_REMOTE_ID {client}\nHMAC_KEY {HMAC_KEY}\n\
         FW_ACCESS_TIMEOUT 60\n",
        home = gnupg.home().display(),
        server = server.short_id,
        client = client.short_id,
    );
    let d = Fwknopd::start(&lab.gw, "PCAP_INTF c0;\nPCAP_FILTER udp port 62201;\n", &access);
    let src = format!("-s {}/32", GatewayLab::CLIENT4);

    // A key fwknopd knows (it is in its keyring) but does not list: refused, nothing opens.
    knock(&lab, dir.path(), "tcp/23", &dir.path().join("stranger.asc"), &stranger);
    d.wait_log(&format!("signed by ID: {}, but that ID is not in the GPG_REMOTE_ID list", stranger.short_id));
    assert!(!rules(&lab.gw).contains("--dport 23 "), "opened for a stranger:\n{}", rules(&lab.gw));

    // The listed client: fwknopd opens the port for the client's address.
    knock(&lab, dir.path(), "tcp/22", &dir.path().join("client.asc"), &client);
    let start = Instant::now();
    loop {
        let all = rules(&lab.gw);
        if all.lines().any(|l| l.contains(&src) && l.contains("--dport 22 ") && l.contains("-j ACCEPT")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "fwknopd opened nothing for spa's GPG packet; rules:\n{all}\nfwknopd log:\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

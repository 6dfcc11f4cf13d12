//! `spad import-fwknop`: fwknop's shipped configuration and hand-written ones turned into
//! spad's, checked with `spad check`, then knocked by the real fwknop client against a spad
//! running the imported files in a namespace lab.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use spa_e2e::{GatewayLab, Netns};

mod support;
use support::{Daemon, is, write_private};

fn spad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spad")).args(args).output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `spad import-fwknop --access A --config C --out OUT [extra]`.
fn import(access: &Path, config: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "import-fwknop",
        "--access",
        access.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    spad(&args)
}

/// The 1-based line of `file` that starts with `start`.
fn line_of(file: &Path, start: &str) -> usize {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().position(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start} in {}", file.display()))
        + 1
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A namespace with an interface of this name (a dummy), for `spad check` of capture mode.
fn ns_with(name: &str) -> Netns {
    let ns = Netns::new("imc");
    ns.ip(&["link", "add", name, "type", "veth", "peer", "name", "peer0"]);
    ns.ip(&["link", "set", name, "up"]);
    ns
}

fn check_in(ns: &Netns, config: &Path) -> Output {
    ns.cmd(env!("CARGO_BIN_EXE_spad")).args(["check", "--config", config.to_str().unwrap()]).output().unwrap()
}

#[test]
fn the_shipped_fwknop_files_import_with_their_placeholders_named() {
    spa_e2e::require_root();
    let access = Path::new("/etc/fwknop/access.conf");
    let config = Path::new("/etc/fwknop/fwknopd.conf");
    let out_dir = tempfile::tempdir().unwrap();
    let out = import(access, config, out_dir.path(), &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // Debian's access.conf has one stanza, with fwknop's placeholders for both keys; its
    // fwknopd.conf sets nothing.
    let key = line_of(access, "KEY_BASE64");
    let hmac = line_of(access, "HMAC_KEY_BASE64");
    let why = "is fwknop's placeholder __CHANGEME__; put a key from `spa keygen` in its place (spad check \
               refuses the placeholder)";
    assert_eq!(
        stderr,
        format!(
            "not carried over: KEY_BASE64 ({a}:{key}): {why}\nnot carried over: HMAC_KEY_BASE64 ({a}:{hmac}): {why}\n",
            a = access.display()
        )
    );
    let written = out_dir.path().join("spad.toml");
    assert_eq!(stdout.lines().next().unwrap(), format!("wrote {}", written.display()));
    assert_eq!(mode(&written), 0o600);
    let toml = std::fs::read_to_string(&written).unwrap();
    // fwknopd's defaults: pcap on eth0, udp/62201, iptables.
    for want in [
        "mode = \"capture\"",
        "interfaces = [\"eth0\"]",
        "port = 62201",
        "backend = \"iptables\"",
        "max_packet_age = 120",
        "source = \"any\"",
        "key_base64 = \"REPLACE_WITH_KEY_BASE64\"",
        "hmac_key_base64 = \"REPLACE_WITH_HMAC_KEY_BASE64\"",
    ] {
        assert!(toml.lines().any(|l| l == want), "{want} not in:\n{toml}");
    }
    assert!(toml.contains(&format!("#   KEY_BASE64 ({}:{key}): {why}", access.display())), "{toml}");

    // spad check names the placeholder, as fwknopd refuses it.
    let ns = ns_with("eth0");
    let (_, err) = text(&check_in(&ns, &written));
    assert_eq!(
        err,
        format!(
            "error: {}:{}: access stanza fwknop-1: key_base64 is still the example's placeholder; put a key from \
             `spa keygen` there (and give it to the clients)\n",
            written.display(),
            line_of(&written, "key_base64")
        )
    );
    // With keys in place, it passes.
    let keyed = toml
        .replace("REPLACE_WITH_KEY_BASE64", "c3BhZC1pbXBvcnQta2V5LWItMzItYnl0ZXMtbG9uZyE=")
        .replace("REPLACE_WITH_HMAC_KEY_BASE64", &"QUJD".repeat(16));
    write_private(&written, &keyed);
    let out = check_in(&ns, &written);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.ends_with("ok (1 access stanzas, backend iptables, capture mode)\n"), "{stdout}");
}

const KEY_A: &str = "spad-import-key-a-32-bytes-long!";
const HMAC_A: &str = "spad-import-hmac-a-key-of-forty-bytes!!!";
const KEY_B64: &str = "c3BhZC1pbXBvcnQta2V5LWItMzItYnl0ZXMtbG9uZyE=";
const HMAC_B64: &str =
    "c3BhZC1pbXBvcnQtaG1hYy1iLWtleS10aGF0LWlzLTY0LWJ5dGVzLWxvbmctZm9yLXNoYTUxMi1kaWdlc3QhIQ==";
const KEY_C: &str = "spad-import-key-c-32-bytes-long!";
const HMAC_C: &str = "spad-import-hmac-c-key-of-forty-bytes!!!";

/// Writes a hand-written fwknop setup into `dir`: fwknopd.conf and access.conf with
/// `%include`, `%include_folder` and `%include_keys`. Stanzas, in fwknop's order:
/// 1. the client network, text keys, tcp/22, tcp/23 restricted (access.conf);
/// 2. GnuPG only (gpg.conf, included): spad cannot run it;
/// 3. the client, base64 keys from a keys file, HMAC-SHA512, tcp/2022 (conf.d/b64.conf);
/// 4. the client, NAT to the internal host (access.conf, after the includes).
fn fwknop_setup(dir: &Path, pcap_intf: &str) -> (PathBuf, PathBuf) {
    let conf_d = dir.join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    let write = |p: &Path, t: &str| write_private(p, t);
    let config = dir.join("fwknopd.conf");
    write(
        &config,
        &format!(
            "# fwknopd.conf, hand-written\nPCAP_INTF                   {pcap_intf};\nPCAP_FILTER                 udp \
             port 62201;\nMAX_SPA_PACKET_AGE          90;\nENABLE_IPT_FORWARDING       Y;\nENABLE_TCP_SERVER           \
             Y;\nENABLE_SPA_OVER_HTTP        Y;\nENABLE_PCAP_PROMISC         Y;\nFLUSH_IPT_AT_EXIT           N;\n\
             BOGUS_SETTING               1;\n"
        ),
    );
    let access = dir.join("access.conf");
    write(
        &access,
        &format!(
            "# access.conf, hand-written\nOPEN_PORTS tcp/99;\n\nSOURCE: 10.201.1.0/24, 10.201.9.9;\nOPEN_PORTS \
             tcp/22;\nRESTRICT_PORTS tcp/23;\nKEY {KEY_A};\nHMAC_KEY {HMAC_A};\nFW_ACCESS_TIMEOUT 30;\n\
             GPG_REMOTE_ID ABCD1234;\n%include {gpg}\nCMD_CYCLE_OPEN /bin/true;\n%include_folder {conf_d}\n\n\
             SOURCE 10.201.1.2;\nOPEN_PORTS tcp/2222;\nKEY {KEY_C};\nHMAC_KEY {HMAC_C};\nFORCE_NAT 10.201.2.2 22;\n\
             FORCE_MASQUERADE Y;\n",
            gpg = dir.join("gpg.conf").display(),
            conf_d = conf_d.display(),
        ),
    );
    write(
        &dir.join("gpg.conf"),
        "SOURCE ANY;\nGPG_DECRYPT_ID ABCD1234;\nGPG_DECRYPT_PW secret;\nGPG_REMOTE_ID 1234ABCD;\n",
    );
    write(
        &conf_d.join("b64.conf"),
        &format!(
            "SOURCE 10.201.1.2;\nOPEN_PORTS tcp/2022;\n%include_keys {keys}\nHMAC_DIGEST_TYPE sha512;\n\
             REQUIRE_SOURCE_ADDRESS Y;\n",
            keys = dir.join("keys.inc").display()
        ),
    );
    write(&conf_d.join("notes.txt"), "SOURCE ANY;\n");
    write(
        &dir.join("keys.inc"),
        &format!("KEY_BASE64 {KEY_B64};\nHMAC_KEY_BASE64 {HMAC_B64};\nOPEN_PORTS tcp/1;\n"),
    );
    (access, config)
}

#[test]
fn a_hand_written_setup_with_includes_nat_and_gpg_is_carried_over_and_the_rest_listed() {
    spa_e2e::require_root();
    let dir = tempfile::tempdir().unwrap();
    let (access, config) = fwknop_setup(dir.path(), "eth0");
    let out_dir = dir.path().join("spad");
    let out = import(&access, &config, &out_dir, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");

    // Files: spad.toml, and one access.d file per run of stanzas from one fwknop file, in
    // fwknop's order; each 0600.
    let names = [
        "spad.toml",
        "access.d/01-access.toml",
        "access.d/02-gpg.toml",
        "access.d/03-b64.toml",
        "access.d/04-access.toml",
    ];
    let wrote: Vec<String> =
        stdout.lines().filter_map(|l| l.strip_prefix("wrote ")).map(str::to_owned).collect();
    assert_eq!(wrote, names.map(|n| out_dir.join(n).display().to_string()));
    for n in names {
        assert_eq!(mode(&out_dir.join(n)), 0o600, "{n}");
    }
    assert!(stdout.ends_with(&format!(
        "3 access stanzas; 6 fwknop variables not carried over or needing attention (listed above and in the \
         file); check with: spad check --config {}\n",
        out_dir.join("spad.toml").display()
    )), "{stdout}");

    // Everything not carried over, with its file and line, and why.
    let a = access.display();
    let c = config.display();
    let keys = dir.path().join("keys.inc");
    let expected = [
        format!(
            "ENABLE_PCAP_PROMISC ({c}:8): spad captures what is addressed to this host (no promiscuous mode)"
        ),
        format!(
            "BOGUS_SETTING ({c}:10): is not an fwknopd.conf variable spad knows; fwknopd ignores unknown ones too"
        ),
        format!("OPEN_PORTS ({a}:2): comes before the first SOURCE of its file; fwknopd ignores it too"),
        format!(
            "OPEN_PORTS ({}:3): %include_keys takes only key variables from its file; fwknopd ignores the rest too",
            keys.display()
        ),
        format!(
            "CMD_CYCLE_OPEN ({a}:12): spad runs custom commands through the script backend ([firewall] backend = \"script\"), not per stanza"
        ),
        format!(
            "GPG_REMOTE_ID ({a}:10): this stanza also takes GnuPG packets in fwknop; spad can too (gpg_* keys, \
             with its gpg feature) once the keys are exported to files: add them by hand (README: fwknop's GPG mode)"
        ),
    ];
    let listed: Vec<&str> = stderr.lines().filter_map(|l| l.strip_prefix("not carried over: ")).collect();
    assert_eq!(listed, expected, "{stderr}");
    assert!(!stderr.contains("secret") && !stderr.contains(KEY_A), "a key in the report: {stderr}");

    let main = std::fs::read_to_string(out_dir.join("spad.toml")).unwrap();
    for want in [
        "interfaces = [\"eth0\"]   # fwknop PCAP_INTF",
        "max_packet_age = 90   # fwknop MAX_SPA_PACKET_AGE",
        "keep_grants_on_exit = true   # fwknop FLUSH_IPT_AT_EXIT",
        "enable_forwarding = true   # fwknop ENABLE_IPT_FORWARDING",
        "protect = [\"tcp/22\", \"tcp/2022\", \"tcp/2222\"]",
        "[listen.tcp]",
        "enable = true   # fwknop ENABLE_TCP_SERVER",
        "addresses = [\"0.0.0.0:62201\", \"[::]:62201\"]",
        "http = true   # fwknop ENABLE_SPA_OVER_HTTP",
    ] {
        assert!(main.lines().any(|l| l.starts_with(want)), "{want} not in:\n{main}");
    }
    for e in &expected {
        assert!(main.contains(&format!("#   {e}")), "{e} not in spad.toml");
    }
    let first = std::fs::read_to_string(out_dir.join("access.d/01-access.toml")).unwrap();
    assert!(first.contains(&format!(
        "[[access]]\nname = \"fwknop-1\"\nsource = [\"10.201.1.0/24\", \"10.201.9.9\"]\nopen_ports = [\"tcp/22\"]\n\
         restrict_ports = [\"tcp/23\"]\nkey = \"{KEY_A}\"\nhmac_key = \"{HMAC_A}\"\nfw_access_timeout = 30\n"
    )), "{first}");
    let gpg_out = std::fs::read_to_string(out_dir.join("access.d/02-gpg.toml")).unwrap();
    // The GnuPG-only stanza: its gpg_* keys written, left out until the keys are exported.
    assert!(
        gpg_out.contains(
            "# Left out: it uses GnuPG, whose keys spad reads from exported files: run `gpg --export-secret-keys \
             --armor ABCD1234 > /etc/spad/gpg/fwknop-2-server.asc` and `gpg --export --armor 1234ABCD > \
             /etc/spad/gpg/fwknop-2-signers.asc`"
        ),
        "{gpg_out}"
    );
    for line in [
        "# gpg_decrypt_key_file = \"/etc/spad/gpg/fwknop-2-server.asc\"",
        "# gpg_decrypt_id = \"ABCD1234\"",
        "# gpg_decrypt_pw = \"secret\"",
        "# gpg_remote_id = [\"1234ABCD\"]",
        "# gpg_remote_keys_file = \"/etc/spad/gpg/fwknop-2-signers.asc\"",
    ] {
        assert!(gpg_out.lines().any(|l| l == line), "{line} not in:\n{gpg_out}");
    }
    assert!(!gpg_out.lines().any(|l| l.starts_with("[[access]]")), "{gpg_out}");
    let b64 = std::fs::read_to_string(out_dir.join("access.d/03-b64.toml")).unwrap();
    assert!(b64.contains(&format!(
        "[[access]]\nname = \"fwknop-3\"\nsource = [\"10.201.1.2\"]\nopen_ports = [\"tcp/2022\"]\nkey_base64 = \
         \"{KEY_B64}\"\nhmac_key_base64 = \"{HMAC_B64}\"\nhmac_digest_type = \"sha512\"\nrequire_source_address = true\n"
    )), "{b64}");
    let nat = std::fs::read_to_string(out_dir.join("access.d/04-access.toml")).unwrap();
    assert!(nat.contains("force_nat = \"10.201.2.2 22\"\nforce_masquerade = true\n"), "{nat}");

    // spad check passes on it (in a namespace that has eth0).
    let ns = ns_with("eth0");
    let out = check_in(&ns, &out_dir.join("spad.toml"));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.ends_with("ok (3 access stanzas, backend iptables, capture mode)\n"), "{stdout}");

    // Existing files are never replaced without --force; nothing is written then.
    write_private(&out_dir.join("access.d/03-b64.toml"), "# mine\n");
    let out = import(&access, &config, &out_dir, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("already exist; nothing written (--force replaces them"), "{stderr}");
    assert_eq!(std::fs::read_to_string(out_dir.join("access.d/03-b64.toml")).unwrap(), "# mine\n");
    std::fs::set_permissions(out_dir.join("spad.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = import(&access, &config, &out_dir, &["--force"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(std::fs::read_to_string(out_dir.join("access.d/03-b64.toml")).unwrap(), b64);
    assert_eq!(mode(&out_dir.join("spad.toml")), 0o600, "--force keeps the mode private");
}

#[test]
fn without_includes_the_stanzas_stay_in_spad_toml_and_a_udp_server_becomes_socket_mode() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fwknopd.conf");
    write_private(
        &config,
        "ENABLE_UDP_SERVER Y;\nUDPSERV_PORT 62300;\nFIREWALL_EXE /usr/sbin/nft-ish-iptables;\n",
    );
    let access = dir.path().join("access.conf");
    write_private(
        &access,
        &format!(
            "SOURCE ANY\nKEY {KEY_A}\nENABLE_CMD_EXEC Y\nCMD_EXEC_USER nobody\nHMAC_KEY short\n\nSOURCE 192.0.2.0/24\n\
             KEY {KEY_C}\nOPEN_PORTS tcp/22\nACCESS_EXPIRE 12/31/2030\n"
        ),
    );
    let out_dir = dir.path().join("out");
    let out = import(&access, &config, &out_dir, &["--backend", "nft"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!out_dir.join("access.d").exists());
    let main = std::fs::read_to_string(out_dir.join("spad.toml")).unwrap();
    for want in [
        "mode = \"socket\"",
        "addresses = [\"0.0.0.0:62300\"]   # fwknop UDPSERV_PORT",
        "backend = \"nft\"",
        "[firewall.nft]",
        "name = \"fwknop-1\"",
        "name = \"fwknop-2\"",
        "allow_no_hmac = true",
        "access_expire = \"12/31/2030\"",
    ] {
        assert!(main.lines().any(|l| l.starts_with(want)), "{want} not in:\n{main}");
    }
    // Commands run as fwknop ran them: as CMD_EXEC_USER.
    for want in ["enable_cmd_exec = true", "cmd_exec_user = \"nobody\""] {
        assert!(main.lines().any(|l| l.starts_with(want)), "{want} not in:\n{main}");
    }
    let a = access.display();
    for want in [
        format!("HMAC_KEY ({a}:5): is 5 bytes; spad requires at least 16 (spad check refuses it)"),
        format!("HMAC_KEY ({a}:7): the stanza has no HMAC key: written with allow_no_hmac = true"),
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&format!("not carried over: {want}"))),
            "{want}\nnot in:\n{stderr}"
        );
    }
    // The short key is refused by spad check, at its line.
    let spad_toml = out_dir.join("spad.toml");
    let (_, err) = text(&spad(&["check", "--config", spad_toml.to_str().unwrap()]));
    assert!(
        err.starts_with(&format!(
            "error: {}:{}: access stanza fwknop-1: hmac_key is 5 bytes; at least 16 are required",
            spad_toml.display(),
            line_of(&spad_toml, "hmac_key = ")
        )),
        "{err}"
    );
}

/// The real fwknop client in the client namespace.
fn fwknop(lab: &GatewayLab, home: &Path, args: &[&str]) {
    let out = lab
        .client
        .cmd("fwknop")
        .env("HOME", home)
        .args([
            "-D",
            GatewayLab::GW4,
            "-a",
            GatewayLab::CLIENT4,
            "--use-hmac",
            "--no-save-args",
            "--no-rc-file",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "fwknop {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn real_fwknop_knocks_work_against_the_imported_configuration() {
    let lab = GatewayLab::new("imp");
    let dir = tempfile::tempdir().unwrap();
    // fwknopd would capture on the gateway's client-side interface.
    let (access, config) = fwknop_setup(dir.path(), "c0");
    let out_dir = dir.path().join("spad");
    let out = import(&access, &config, &out_dir, &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    // The only edits: where this test keeps state and the audit trail.
    let main = out_dir.join("spad.toml");
    let t = std::fs::read_to_string(&main)
        .unwrap()
        .replace("state_dir = \"/var/lib/spad\"", &format!("state_dir = \"{}/state\"", dir.path().display()))
        .replace(
            "audit = \"/var/log/spad/audit.jsonl\"",
            &format!("audit = \"{}/audit.jsonl\"", out_dir.display()),
        );
    write_private(&main, &t);
    let (_, err) = text(&check_in(&lab.gw, &main));
    assert!(err.is_empty(), "spad check: {err}");

    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let _other = lab.gw.tcp_server(2022, "gw-other");
    let _internal = lab.internal.tcp_server(22, "internal-ssh");
    let d = Daemon::start_written(&lab.gw, &out_dir);
    let ssh = GatewayLab::addr(GatewayLab::GW4, 22);
    let short = Duration::from_secs(1);
    assert!(!lab.client.tcp_connects(ssh, short), "open before any knock");

    // Stanza 1 (text keys): tcp/22 opens; tcp/23 is restricted, and refused.
    fwknop(&lab, dir.path(), &["-A", "tcp/23", "--key-rijndael", KEY_A, "--key-hmac", HMAC_A]);
    d.wait_event("port reject", |e| is(e, "reject") && e["reason"] == "port_not_permitted");
    fwknop(&lab, dir.path(), &["-A", "tcp/22", "--key-rijndael", KEY_A, "--key-hmac", HMAC_A]);
    let g = d.wait_event("grant", |e| is(e, "grant") && e["stanza"] == "fwknop-1");
    assert_eq!(g["access"], serde_json::json!(["tcp/22"]));
    assert!(
        lab.client.wait_tcp(ssh, Duration::from_secs(5)).is_some(),
        "closed after the knock:\n{}",
        d.log_text()
    );
    assert!(
        !lab.attacker.tcp_connects(GatewayLab::addr(GatewayLab::GW_ATTACKER4, 22), short),
        "open for the attacker"
    );

    // Stanza 3 (base64 keys from %include_keys, HMAC-SHA512): its own port, knocked over TCP
    // (ENABLE_TCP_SERVER became [listen.tcp]; the capture sees only UDP).
    let other = GatewayLab::addr(GatewayLab::GW4, 2022);
    assert!(!lab.client.tcp_connects(other, short), "tcp/2022 open before its knock");
    fwknop(
        &lab,
        dir.path(),
        &[
            "-P",
            "tcp",
            "-A",
            "tcp/2022",
            "--key-base64-rijndael",
            KEY_B64,
            "--key-base64-hmac",
            HMAC_B64,
            "--hmac-digest-type",
            "sha512",
        ],
    );
    d.wait_event("grant of the included stanza", |e| is(e, "grant") && e["stanza"] == "fwknop-3");
    assert!(lab.client.wait_tcp(other, Duration::from_secs(5)).is_some(), "tcp/2022 closed after its knock");

    // Stanza 4: FORCE_NAT sends the knock's port to the internal host's ssh.
    let ext = GatewayLab::addr(GatewayLab::GW4, 2222);
    assert!(!lab.client.tcp_connects(ext, short), "forwarded before the NAT knock");
    // Knocked as an HTTP request (ENABLE_SPA_OVER_HTTP became [listen.tcp] http).
    fwknop(
        &lab,
        dir.path(),
        &["-P", "http", "-A", "tcp/2222", "--key-rijndael", KEY_C, "--key-hmac", HMAC_C],
    );
    d.wait_event("NAT grant", |e| is(e, "grant") && e["stanza"] == "fwknop-4");
    assert!(lab.client.wait_tcp(ext, Duration::from_secs(5)).is_some(), "NAT grant does not forward");
    let banner = lab.client.sh("nc -n -w 1 10.201.1.1 2222 </dev/null || true");
    assert!(banner.contains("internal-ssh"), "reached something else: {banner:?}");

    // A port none of the stanzas allows: refused, nothing granted.
    fwknop(&lab, dir.path(), &["-A", "tcp/2223", "--key-rijndael", KEY_C, "--key-hmac", HMAC_C]);
    d.wait_nth_event(1, "second port reject", |e| is(e, "reject") && e["reason"] == "port_not_permitted");
    let grants = d.listed();
    assert!(
        grants.iter().all(|g| g["access"] != serde_json::json!(["tcp/2223"])
            && g["access"] != serde_json::json!(["tcp/23"])),
        "{grants:?}"
    );
}

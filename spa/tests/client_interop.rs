//! End-to-end: packets sent by `spa` from the client namespace open the real `fwknopd`
//! (Debian `fwknop-server`, iptables backend) in the gateway namespace of a
//! [`spa_e2e::GatewayLab`]. One fwknopd serves every case: its access.conf has one stanza per
//! HMAC type and per encryption mode (each with its own keys), and it sniffs UDP and TCP on the
//! client-facing interface. Each knock asks for its own port, so each rule is found by port in
//! fwknopd's own chains.
//!
//! Needs root (network namespaces); fails loudly without it.

use std::fmt::Write as _;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spa_e2e::{Fwknopd, GatewayLab, Netns, require_root};

const SPA: &str = env!("CARGO_BIN_EXE_spa");
const HMAC_TYPES: [&str; 7] = ["md5", "sha1", "sha256", "sha384", "sha512", "sha3_256", "sha3_512"];
const DIGEST_TYPES: [&str; 7] = HMAC_TYPES;
/// CBC is the default and is covered by the HMAC stanzas.
const OTHER_MODES: [&str; 4] = ["ecb", "cfb", "ofb", "ctr"];

/// Keys of one access.conf stanza, as `spa` options.
#[derive(Clone, Debug)]
struct Keys(Vec<String>);

/// fwknopd's settings for the lab: it sniffs UDP and TCP knocks (and SPA over HTTP) on `intf`,
/// with forwarding and local NAT enabled.
fn fwknopd_conf(intf: &str) -> String {
    format!(
        "PCAP_INTF {intf};\n\
         PCAP_FILTER udp port 62201 or tcp port 62201;\n\
         ENABLE_TCP_SERVER Y;\n\
         ENABLE_SPA_OVER_HTTP Y;\n\
         ENABLE_IPT_FORWARDING Y;\n\
         ENABLE_IPT_LOCAL_NAT Y;\n"
    )
}

/// `iptables -t <table> -S <chain>` inside `ns`.
fn rules(ns: &Netns, table: &str, chain: &str) -> String {
    let o = ns.cmd("iptables").args(["-t", table, "-S", chain]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits (safety limit 15 s) until a rule in `chain` contains every needle; returns it.
fn wait_rule(lab: &GatewayLab, d: &Fwknopd, table: &str, chain: &str, needles: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let all = rules(&lab.gw, table, chain);
        if let Some(rule) = all.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return rule.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no {table}/{chain} rule with {needles:?}; chain:\n{all}\nfwknopd log:\n{}",
            d.log_tail()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `spa` in the client namespace against the gateway; asserts it succeeds.
fn knock(lab: &GatewayLab, keys: &Keys, args: &[&str]) -> Output {
    let o = lab
        .client
        .cmd(SPA)
        .args(["--no-rc-file", "--no-save-args", "-D", GatewayLab::GW4])
        .args(&keys.0)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "spa {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// `spa keygen` output → (KEY_BASE64, HMAC_KEY_BASE64).
fn keygen(hmac: &str) -> (String, String) {
    let o = Command::new(SPA).args(["keygen", "--hmac-digest-type", hmac]).output().unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    let get = |p: &str| out.lines().find_map(|l| l.strip_prefix(p)).unwrap().to_owned();
    (get("KEY_BASE64: "), get("HMAC_KEY_BASE64: "))
}

/// The access.conf and the client keys for each stanza.
struct Config {
    access_conf: String,
    hmac: Vec<(&'static str, Keys)>,
    modes: Vec<(&'static str, Keys)>,
    legacy: Keys,
}

fn config() -> Config {
    let mut conf = String::new();
    let stanza_tail = "FW_ACCESS_TIMEOUT 900\nMAX_FW_TIMEOUT 1000\n\n";
    let mut hmac = Vec::new();
    // One stanza per HMAC type, with keys made by `spa keygen` for that type.
    for t in HMAC_TYPES {
        let (k, h) = keygen(t);
        write!(conf, "SOURCE ANY\nKEY_BASE64 {k}\nHMAC_KEY_BASE64 {h}\nHMAC_DIGEST_TYPE {t}\n{stanza_tail}")
            .unwrap();
        let keys = Keys(vec![
            "--key-base64-rijndael".into(),
            k,
            "--key-base64-hmac".into(),
            h,
            "--hmac-digest-type".into(),
            t.into(),
        ]);
        hmac.push((t, keys));
    }
    // One stanza per other encryption mode, with text keys.
    let mut modes = Vec::new();
    for m in OTHER_MODES {
        let (k, h) = (format!("key-{m}-client"), format!("hmac-{m}-client"));
        write!(
            conf,
            "SOURCE ANY\nKEY {k}\nHMAC_KEY {h}\nENCRYPTION_MODE {}\n{stanza_tail}",
            m.to_uppercase()
        )
        .unwrap();
        modes
            .push((m, Keys(vec!["--key-rijndael".into(), k, "--key-hmac".into(), h, "-M".into(), m.into()])));
    }
    write!(conf, "SOURCE ANY\nKEY legacykey\nENCRYPTION_MODE legacy\n{stanza_tail}").unwrap();
    let legacy = Keys(vec!["--key-rijndael".into(), "legacykey".into(), "-M".into(), "legacy".into()]);
    Config { access_conf: conf, hmac, modes, legacy }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The `_exp_<unix time>` of an fwknop rule.
fn expiry(rule: &str) -> u64 {
    let tail = rule.split("_exp_").nth(1).expect("rule has an _exp_ comment");
    tail.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn fwknopd_accepts_every_digest_hmac_mode_and_message_type() {
    require_root();
    let lab = GatewayLab::new("cl");
    let cfg = config();
    let d = Fwknopd::start(&lab.gw, &fwknopd_conf("c0"), &cfg.access_conf);
    let client = GatewayLab::CLIENT4;
    let src = format!("-s {client}/32");
    let sha256 = cfg.hmac.iter().find(|(t, _)| *t == "sha256").unwrap().1.clone();

    // Every inner digest type (HMAC-SHA256, CBC).
    for (i, digest) in DIGEST_TYPES.iter().enumerate() {
        let port = (10000 + i).to_string();
        knock(&lab, &sha256, &["-A", &format!("tcp/{port}"), "-a", client, "-m", digest]);
        wait_rule(&lab, &d, "filter", "FWKNOP_INPUT", &[&src, &format!("--dport {port} ")]);
    }
    // Every HMAC type, keys from `spa keygen`.
    for (i, (t, keys)) in cfg.hmac.iter().enumerate() {
        let port = (10100 + i).to_string();
        knock(&lab, keys, &["-A", &format!("tcp/{port}"), "-a", client]);
        let r = wait_rule(&lab, &d, "filter", "FWKNOP_INPUT", &[&src, &format!("--dport {port} ")]);
        assert!(r.contains("-j ACCEPT"), "{t}: {r}");
    }
    // Every other encryption mode, and legacy (no HMAC).
    for (i, (m, keys)) in cfg.modes.iter().chain([("legacy", cfg.legacy.clone())].iter()).enumerate() {
        let port = (10200 + i).to_string();
        knock(&lab, keys, &["-A", &format!("udp/{port}"), "-a", client]);
        let r = wait_rule(&lab, &d, "filter", "FWKNOP_INPUT", &[&src, "-p udp", &format!("--dport {port} ")]);
        assert!(r.contains("-j ACCEPT"), "{m}: {r}");
    }

    // Several ports in one message; -s (0.0.0.0) makes fwknopd use the packet's source.
    knock(&lab, &sha256, &["-A", "tcp/10300,udp/10301", "-s"]);
    wait_rule(&lab, &d, "filter", "FWKNOP_INPUT", &[&src, "-p tcp", "--dport 10300 "]);
    wait_rule(&lab, &d, "filter", "FWKNOP_INPUT", &[&src, "-p udp", "--dport 10301 "]);

    // Client timeout (type 3): the rule expires after the client's 45 s, not the stanza's 900.
    let t0 = now();
    knock(&lab, &sha256, &["-A", "tcp/10400", "-a", client, "-f", "45"]);
    let r = wait_rule(&lab, &d, "filter", "FWKNOP_INPUT", &[&src, "--dport 10400 "]);
    let exp = expiry(&r);
    assert!(exp >= t0 + 45 && exp < t0 + 450, "client timeout honoured: {r} (sent at {t0})");

    // The other transports: TCP (connect, then send) and HTTP GET.
    knock(&lab, &sha256, &["-A", "tcp/10700", "-a", client, "-P", "tcp"]);
    wait_rule(&lab, &d, "filter", "FWKNOP_INPUT", &[&src, "--dport 10700 "]);
    knock(&lab, &sha256, &["-A", "tcp/10701", "-a", client, "-P", "http"]);
    wait_rule(&lab, &d, "filter", "FWKNOP_INPUT", &[&src, "--dport 10701 "]);

    // NAT access (type 2): the message carries the external port, the NAT field the internal
    // target; a real connection to the gateway's port reaches the internal host.
    let _ssh = lab.internal.tcp_server(22, "internal-ssh");
    let external = GatewayLab::addr(GatewayLab::GW4, 10500);
    assert!(!lab.client.tcp_connects(external, Duration::from_secs(2)), "closed before the knock");
    knock(&lab, &sha256, &["-A", "tcp/10500", "-a", client, "-N", &format!("{}:22", GatewayLab::INTERNAL4)]);
    let to = format!("--to-destination {}:22", GatewayLab::INTERNAL4);
    wait_rule(&lab, &d, "nat", "FWKNOP_PREROUTING", &[&src, "--dport 10500 ", &to]);
    wait_rule(&lab, &d, "filter", "FWKNOP_FORWARD", &[&src, "--dport 22 "]);
    assert!(
        lab.client.wait_tcp(external, Duration::from_secs(10)).is_some(),
        "DNAT to the internal host works"
    );

    // NAT access with a client timeout (type 4) and --nat-port.
    let t0 = now();
    knock(
        &lab,
        &sha256,
        &[
            "-A",
            "tcp/2222",
            "--nat-port",
            "10501",
            "-a",
            client,
            "-N",
            &format!("{},2222", GatewayLab::INTERNAL4),
            "-f",
            "45",
        ],
    );
    let to = format!("--to-destination {}:2222", GatewayLab::INTERNAL4);
    let r = wait_rule(&lab, &d, "nat", "FWKNOP_PREROUTING", &[&src, "--dport 10501 ", &to]);
    assert!(expiry(&r) < t0 + 450, "client timeout honoured: {r}");

    // Local NAT (type 5): the NAT host is the -D string; connect through the redirect.
    let _local = lab.gw.tcp_server(10601, "gw-local");
    knock(&lab, &sha256, &["-A", "tcp/10601", "--nat-local", "--nat-port", "10600", "-a", client]);
    let to = format!("--to-destination {}:10601", GatewayLab::GW4);
    wait_rule(&lab, &d, "nat", "FWKNOP_PREROUTING", &[&src, "--dport 10600 ", &to]);
    wait_rule(&lab, &d, "filter", "FWKNOP_INPUT", &[&src, "--dport 10601 "]);
    assert!(lab.client.wait_tcp(GatewayLab::addr(GatewayLab::GW4, 10600), Duration::from_secs(10)).is_some());

    // Refusals: a wrong key and a timestamp moved 10 minutes back open nothing. fwknopd
    // handles packets in order, so once the valid knock after them shows, they were seen.
    let wrong =
        Keys(vec!["--key-rijndael".into(), "not-a-key".into(), "--key-hmac".into(), "not-an-hmac".into()]);
    knock(&lab, &wrong, &["-A", "tcp/10998", "-a", client]);
    knock(&lab, &sha256, &["-A", "tcp/10999", "-a", client, "--time-offset-minus", "10min"]);
    knock(&lab, &sha256, &["-A", "tcp/11000", "-a", client]);
    wait_rule(&lab, &d, "filter", "FWKNOP_INPUT", &[&src, "--dport 11000 "]);
    let all = rules(&lab.gw, "filter", "FWKNOP_INPUT");
    assert!(!all.contains("--dport 10998 "), "wrong key opened a port: {all}");
    assert!(!all.contains("--dport 10999 "), "stale packet opened a port: {all}");
}

#[test]
fn packets_reach_an_ipv6_destination() {
    require_root();
    let lab = GatewayLab::new("cl6");
    // A UDP listener on the gateway's IPv6 address prints what it receives.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received");
    let mut cmd = lab.gw.cmd("socat");
    cmd.args(["-u", "UDP6-RECV:62201", &format!("OPEN:{},creat", out.display())]);
    let _rx = lab.gw.spawn(&mut cmd);
    let start = Instant::now();
    while !lab.gw.sh_ok("ss -Hlun 'sport = :62201' | grep -q 62201") {
        assert!(start.elapsed() < Duration::from_secs(5), "listener did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let o = lab
        .client
        .cmd(SPA)
        .args([
            "--no-rc-file",
            "--no-save-args",
            "-D",
            GatewayLab::GW6,
            "-A",
            "tcp/22",
            "-a",
            GatewayLab::CLIENT4,
        ])
        .args(["--key-rijndael", "k6", "--key-hmac", "h6"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let start = Instant::now();
    let received = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if !text.is_empty() {
            break text;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "nothing received over IPv6");
        thread::sleep(Duration::from_millis(50));
    };
    let o =
        Command::new(SPA).args(["decode", "--key", "k6", "--hmac-key", "h6", &received]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["message"], format!("{},tcp/22", GatewayLab::CLIENT4));
}

#[test]
fn fwknop_knocks_with_a_stanza_spa_saved() {
    require_root();
    let lab = GatewayLab::new("cs");
    let (k, h) = keygen("sha512");
    let conf = format!(
        "SOURCE ANY\nKEY_BASE64 {k}\nHMAC_KEY_BASE64 {h}\nHMAC_DIGEST_TYPE sha512\nENCRYPTION_MODE CTR\n\
         FW_ACCESS_TIMEOUT 900\n\n"
    );
    let d = Fwknopd::start(&lab.gw, &fwknopd_conf("c0"), &conf);
    let home = tempfile::tempdir().unwrap();
    let client = GatewayLab::CLIENT4;
    // spa writes the stanza (sending nothing: -T) ...
    let o = Command::new(SPA)
        .env("HOME", home.path())
        .args(["-n", "gw", "--save-rc-stanza", "-D", GatewayLab::GW4, "-A", "tcp/10800", "-a", client])
        .args([
            "--key-base64-rijndael",
            &k,
            "--key-base64-hmac",
            &h,
            "--hmac-digest-type",
            "sha512",
            "-M",
            "ctr",
        ])
        .args(["-T", "--no-save-args"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "spa --save-rc-stanza: {}", String::from_utf8_lossy(&o.stderr));
    // ... and the real fwknop client knocks with it alone.
    let o = lab
        .client
        .cmd("fwknop")
        .env("HOME", home.path())
        .args(["-n", "gw", "--no-save-args"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "fwknop -n gw: {out}");
    assert!(!out.contains("permissions"), "spa wrote the rc file 0600: {out}");
    let r = wait_rule(&lab, &d, "filter", "FWKNOP_INPUT", &[&format!("-s {client}/32"), "--dport 10800 "]);
    assert!(r.contains("-j ACCEPT"), "{r}");
}

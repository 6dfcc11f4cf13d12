//! Several gateways sharing one Redis (`[replay] store = "redis"`): a real `redis-server` on a
//! unix socket in a temporary directory (every network namespace reaches it), and real spads
//! in namespaces of their own, knocked from a client namespace linked to both. The assertions
//! read what an admin would: the audit trails, `spad list --all-gateways`, `spad revoke`, and
//! the keys in Redis (with `redis-cli`).
//!
//! The spads connect as a Redis user restricted by the ACL that README.md documents, so the
//! documented ACL is the one tested.

#![cfg(feature = "replay-redis")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use spa_e2e::{Netns, link, require_root};

mod support;
use support::{Daemon, is, packet, send_from};

const KEY: &str = "redis-tests-encryption-key-32byt";
const HMAC_KEY: &str = "redis-tests-hmac-key-of-32-bytes";
const PREFIX: &str = "spatest";
/// The password of the restricted Redis user the spads connect as.
const PASSWORD: &str = "redis-tests-spad-password-0123456789";
/// The ACL of README.md, for the prefix `spatest`.
const ACL: &[&str] = &[
    "ACL",
    "SETUSER",
    "spad",
    "reset",
    "on",
    ">redis-tests-spad-password-0123456789",
    "~spatest:*",
    "&spatest:revoke:*",
    "+ping",
    "+set",
    "+del",
    "+exists",
    "+scan",
    "+mget",
    "+publish",
    "+subscribe",
];

/// A `redis-server` of our own on a unix socket, without persistence; killed on drop.
struct Redis {
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    fn start(dir: &Path) -> Self {
        let mut r = Self { dir: dir.to_owned(), child: None };
        r.spawn();
        r
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Starts the server (again, on the same socket: empty, as after a restart without
    /// persistence) and gives the spads' user its ACL.
    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (Debian package redis-server; scripts/test installs it)");
        self.child = Some(child);
        let start = Instant::now();
        while self.try_cli(&["PING"]).is_none_or(|o| o.trim() != "PONG") {
            assert!(start.elapsed() < Duration::from_secs(20), "redis-server did not start");
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(self.cli(ACL).trim(), "OK");
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli").arg("-s").arg(self.socket()).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `redis-cli` as the default (unrestricted) user.
    fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> =
            self.cli(&["--scan", "--pattern", pattern]).lines().map(str::to_owned).collect();
        keys.sort();
        keys
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client linked to two gateways, `gw-a` (10.213.1.1) and `gw-b` (10.213.2.1).
struct Lab {
    client: Netns,
    a: Netns,
    b: Netns,
}

impl Lab {
    fn new(prefix: &str) -> Self {
        require_root();
        let client = Netns::new(&format!("{prefix}c"));
        let a = Netns::new(&format!("{prefix}a"));
        let b = Netns::new(&format!("{prefix}b"));
        link(&client, "a0", &["10.213.1.2/24"], &a, "c0", &["10.213.1.1/24"]);
        link(&client, "b0", &["10.213.2.2/24"], &b, "c0", &["10.213.2.1/24"]);
        Self { client, a, b }
    }

    fn knock_a(&self, p: &[u8]) {
        send_from(&self.client, "10.213.1.1:62201".parse().unwrap(), p.to_vec());
    }

    fn knock_b(&self, p: &[u8]) {
        send_from(&self.client, "10.213.2.1:62201".parse().unwrap(), p.to_vec());
    }
}

fn config(dir: &Path, redis: &Redis, gateway: &str, on_store_down: &str) -> String {
    format!(
        r#"
[listen]
mode = "socket"
addresses = ["0.0.0.0:62201"]

[firewall]
backend = "none"

[replay]
state_dir = "{dir}/state"
max_packet_age = 120
store = "redis"

[replay.redis]
url = "redis+unix://{socket}?user=spad&pass={PASSWORD}"
prefix = "{PREFIX}"
gateway = "{gateway}"
timeout_ms = 500
on_store_down = "{on_store_down}"

[log]
audit = "{dir}/audit.jsonl"
max_rejects_per_second = 1000

[[access]]
name = "clients"
source = "10.213.0.0/16"
open_ports = ["tcp/22"]
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
fw_access_timeout = 30
"#,
        dir = dir.display(),
        socket = redis.socket().display(),
    )
}

/// A spad for gateway `name` in `ns`, with its files in `root/name`.
fn gateway(ns: &Netns, root: &Path, redis: &Redis, name: &str, on_store_down: &str) -> Daemon {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    Daemon::start(ns, &dir, &config(&dir, redis, name, on_store_down))
}

fn knock() -> Vec<u8> {
    packet(KEY, HMAC_KEY, "10.213.1.2", "tcp/22", 0)
}

fn rejected(e: &Value, reason: &str) -> bool {
    is(e, "reject") && e["reason"] == reason
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `spad list --all-gateways --json`: (gateway, id) of each grant listed.
fn all_gateways(d: &Daemon) -> Vec<(String, String)> {
    let text = ok(&d.spad(&["list", "--all-gateways", "--json"]));
    let mut rows: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["gateway"].as_str().unwrap().to_owned(), v["id"].as_str().unwrap().to_owned())
        })
        .collect();
    rows.sort();
    rows
}

/// Waits (generously) until `spad list --all-gateways` shows exactly `want`.
fn wait_listed(d: &Daemon, want: &[(&str, &str)]) {
    let mut want: Vec<(String, String)> =
        want.iter().map(|(g, i)| ((*g).to_owned(), (*i).to_owned())).collect();
    want.sort();
    let start = Instant::now();
    loop {
        let got = all_gateways(d);
        if got == want {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "listed {got:?}, expected {want:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn id(e: &Value) -> String {
    e["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_packet_granted_at_one_gateway_is_a_replay_at_the_other_and_grants_are_seen_and_revoked_everywhere() {
    let lab = Lab::new("rd1");
    let root = tempfile::tempdir().unwrap();
    let redis = Redis::start(root.path());
    let a = gateway(&lab.a, root.path(), &redis, "gw-a", "reject");
    let b = gateway(&lab.b, root.path(), &redis, "gw-b", "reject");

    // Granted at A; the same bytes, captured on their way to A, are a replay at B.
    let p = knock();
    lab.knock_a(&p);
    let granted_a = a.wait_event("grant at gw-a", |e| is(e, "grant"));
    lab.knock_b(&p);
    b.wait_event("replay at gw-b", |e| rejected(e, "replay"));
    assert_eq!(b.count(|e| is(e, "grant")), 0);
    // Redis holds the packet's digest, with the gateway that took it, and nothing else of it.
    let replays = redis.keys(&format!("{PREFIX}:replay:*"));
    assert_eq!(replays.len(), 1, "{replays:?}");
    assert_eq!(replays[0].len(), format!("{PREFIX}:replay:").len() + 32);
    assert_eq!(redis.cli(&["GET", &replays[0]]).trim(), "gw-a");
    let ttl: u64 = redis.cli(&["PTTL", &replays[0]]).trim().parse().unwrap();
    assert!(ttl > 200_000 && ttl <= 240_000, "{ttl}");

    // A fresh knock at B is granted there; both grants are listed from either gateway.
    lab.knock_b(&knock());
    let granted_b = b.wait_event("grant at gw-b", |e| is(e, "grant"));
    wait_listed(&a, &[("gw-a", &id(&granted_a)), ("gw-b", &id(&granted_b))]);
    let text = ok(&b.spad(&["list", "--all-gateways"]));
    assert!(text.contains("gateways connected: gw-a, gw-b"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("gw-b") && l.contains(&id(&granted_b))), "{text}");
    // A grant is published with the time it has left (30 s).
    let ttl: u64 =
        redis.cli(&["PTTL", &format!("{PREFIX}:grant:gw-b:{}", id(&granted_b))]).trim().parse().unwrap();
    assert!(ttl > 20_000 && ttl <= 30_000, "{ttl}");

    // Revoked at B from A's host, through B's channel: B's audit says who asked.
    let out = ok(&a.spad(&["revoke", "--gateway", "gw-b", &id(&granted_b)]));
    assert_eq!(out.trim(), format!("revoked grant {} on gateway gw-b", id(&granted_b)));
    let revoked = b.wait_event("revoke at gw-b", |e| is(e, "revoke"));
    assert_eq!(revoked["id"], granted_b["id"]);
    assert!(revoked["by"].as_str().unwrap().ends_with("(spad revoke)"), "{revoked}");
    assert!(b.listed().is_empty(), "{:?}", b.listed());
    wait_listed(&a, &[("gw-a", &id(&granted_a))]);

    // A grant nobody publishes, and a gateway nobody runs, are refused with a reason.
    let out = a.spad(&["revoke", "--gateway", "gw-b", &id(&granted_b)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway gw-b publishes no grant"), "{out:?}");
    let out = a.spad(&["revoke", "--gateway", "gw-c", &id(&granted_a)]);
    assert!(!out.status.success());
    // A message on a channel that is not a revoke request is ignored, and said so.
    redis.cli(&["PUBLISH", &format!("{PREFIX}:revoke:gw-a"), "{\"id\":\"x\",\"by\":\"me\"}"]);
    a.wait_log("ignored a message on spatest:revoke:gw-a that is not a revoke request");
    assert_eq!(a.count(|e| is(e, "revoke")), 0);

    // A stopped gateway takes its grants and its marker with it.
    let mut a = a;
    a.stop();
    wait_listed(&b, &[]);
    let text = ok(&b.spad(&["list", "--all-gateways"]));
    assert!(
        text.contains("no active grants on any gateway") && text.contains("gateways connected: gw-b"),
        "{text}"
    );
}

#[test]
fn with_redis_down_reject_refuses_and_local_accepts_once_then_sharing_resumes() {
    let lab = Lab::new("rd2");
    let root = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(root.path());
    let a = gateway(&lab.a, root.path(), &redis, "gw-a", "reject");
    let b = gateway(&lab.b, root.path(), &redis, "gw-b", "local");

    redis.stop();
    for d in [&a, &b] {
        let e = d.wait_event("replay_store_unreachable", |e| is(e, "replay_store_unreachable"));
        assert!(!e["detail"]["url"].as_str().unwrap().contains(PASSWORD), "{e}");
    }
    assert!(!a.log_text().contains(PASSWORD) && !b.log_text().contains(PASSWORD));

    // reject: refused, with its own reason.
    lab.knock_a(&knock());
    a.wait_event("replay_store_down", |e| rejected(e, "replay_store_down"));
    assert_eq!(a.count(|e| is(e, "grant")), 0);
    // `spad status` says so: the store is not connected, and the refusal is a store error.
    let s = status(&a);
    assert_eq!(s["shared_store"]["connected"], false, "{s:#}");
    assert_eq!(s["shared_store"]["gateway"], "gw-a");
    assert!(!s["shared_store"]["url"].as_str().unwrap().contains(PASSWORD), "{s:#}");
    assert_eq!((&s["replay_store_errors"], &s["rejects"]["replay_store_down"]), (&1.into(), &1.into()));
    // local: accepted once, audited as degraded; the same packet again is a replay.
    let p = knock();
    lab.knock_b(&p);
    let during = b.wait_event("grant at gw-b", |e| is(e, "grant"));
    let degraded = b.wait_event("replay_store_degraded", |e| is(e, "replay_store_degraded"));
    assert_eq!(degraded["packet_source"], "10.213.2.2");
    lab.knock_b(&p);
    b.wait_event("replay at gw-b", |e| rejected(e, "replay"));
    assert_eq!(b.count(|e| is(e, "grant")), 1);

    // Redis returns (empty): both reconnect, and sharing resumes.
    redis.spawn();
    for d in [&a, &b] {
        d.wait_event("replay_store_reachable", |e| is(e, "replay_store_reachable"));
    }
    assert_eq!(status(&a)["shared_store"]["connected"], true);
    let p = knock();
    lab.knock_a(&p);
    let after = a.wait_event("grant at gw-a", |e| is(e, "grant"));
    lab.knock_b(&p);
    b.wait_nth_event(1, "replay at gw-b", |e| rejected(e, "replay"));
    assert_eq!(b.count(|e| is(e, "grant")), 1);
    // The grant made while Redis was down is published once it is back.
    wait_listed(&a, &[("gw-a", &id(&after)), ("gw-b", &id(&during))]);
}

/// `spad status --json` of a gateway.
fn status(d: &Daemon) -> Value {
    serde_json::from_str(&ok(&d.spad(&["status", "--json"]))).unwrap()
}

#[test]
fn a_restarted_gateway_refuses_what_it_saw_even_when_redis_forgot() {
    let lab = Lab::new("rd3");
    let root = tempfile::tempdir().unwrap();
    let redis = Redis::start(root.path());
    let mut a = gateway(&lab.a, root.path(), &redis, "gw-a", "reject");
    let p = knock();
    lab.knock_a(&p);
    a.wait_event("grant", |e| is(e, "grant"));
    a.stop();
    redis.cli(&["FLUSHALL"]);
    a.spawn(&lab.a);
    lab.knock_a(&p);
    a.wait_event("replay after restart", |e| rejected(e, "replay"));
    assert_eq!(a.count(|e| is(e, "grant")), 1);
    // Its own journal refused it locally: Redis was not asked, so it still holds nothing.
    assert!(redis.keys(&format!("{PREFIX}:replay:*")).is_empty());
}

/// Runs openssl in `dir`, panicking on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A certificate authority `name` in `dir` (`name.pem`, `name.key`).
fn make_ca(dir: &Path, name: &str) {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// A certificate `name` signed by the CA `ca`, with the extensions in `ext`.
fn make_cert(dir: &Path, ca: &str, name: &str, ext: &str) {
    let (pem, key, csr, extfile) =
        (format!("{name}.pem"), format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"));
    std::fs::write(dir.join(&extfile), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ],
    );
    std::fs::set_permissions(dir.join(&key), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

#[test]
fn rediss_checks_the_server_certificate_and_presents_the_client_one() {
    let lab = Lab::new("rd4");
    let root = tempfile::tempdir().unwrap();
    let tls = root.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    make_ca(&tls, "ca");
    make_ca(&tls, "other-ca");
    make_cert(&tls, "ca", "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    make_cert(&tls, "ca", "client", "extendedKeyUsage=clientAuth\n");
    let f = |name: &str| tls.join(name).display().to_string();
    // Redis with TLS only, inside the gateway's namespace; it requires client certificates.
    let _redis = lab.a.spawn(
        lab.a
            .cmd("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                "6380",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-cert-file", &f("server.pem"), "--tls-key-file", &f("server.key")])
            .args(["--tls-ca-cert-file", &f("ca.pem"), "--dir", &f("")])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let cli = |args: &[&str]| {
        lab.a
            .cmd("redis-cli")
            .args(["--tls", "--cacert", &f("ca.pem"), "--cert", &f("client.pem"), "--key", &f("client.key")])
            .args(["-h", "127.0.0.1", "-p", "6380"])
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let start = Instant::now();
    while cli(&["PING"]).as_deref() != Some("PONG") {
        assert!(start.elapsed() < Duration::from_secs(20), "redis-server with TLS did not start");
        thread::sleep(Duration::from_millis(20));
    }

    let config = |dir: &Path, port: u16, ca: &str| {
        format!(
            r#"
[listen]
mode = "socket"
addresses = ["0.0.0.0:{port}"]

[firewall]
backend = "none"

[replay]
state_dir = "{dir}/state"
store = "redis"

[replay.redis]
url = "rediss://127.0.0.1:6380/0"
gateway = "gw-tls"
prefix = "{PREFIX}"
tls_ca_file = "{ca}"
tls_cert_file = "{cert}"
tls_key_file = "{key}"

[log]
audit = "{dir}/audit.jsonl"

[[access]]
source = "10.213.0.0/16"
open_ports = ["tcp/22"]
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
"#,
            dir = dir.display(),
            ca = f(ca),
            cert = f("client.pem"),
            key = f("client.key"),
        )
    };
    let dir = root.path().join("good");
    std::fs::create_dir(&dir).unwrap();
    let good = Daemon::start(&lab.a, &dir, &config(&dir, 62201, "ca.pem"));
    let p = knock();
    lab.knock_a(&p);
    good.wait_event("grant over TLS", |e| is(e, "grant"));
    let replays = cli(&["--scan", "--pattern", &format!("{PREFIX}:replay:*")]).unwrap();
    assert_eq!(replays.lines().count(), 1, "{replays}");

    // A spad that trusts another authority does not talk to this server: it says so, and
    // (on_store_down = "reject") refuses knocks.
    let dir = root.path().join("wrong-ca");
    std::fs::create_dir(&dir).unwrap();
    let wrong = Daemon::start(&lab.a, &dir, &config(&dir, 62202, "other-ca.pem"));
    let e = wrong.wait_event("replay_store_unreachable", |e| is(e, "replay_store_unreachable"));
    assert!(e["detail"]["error"].as_str().unwrap().to_lowercase().contains("certificate"), "{e}");
    send_from(&lab.client, "10.213.1.1:62202".parse().unwrap(), knock());
    wrong.wait_event("replay_store_down", |e| rejected(e, "replay_store_down"));
    assert_eq!(wrong.count(|e| is(e, "grant")), 0);
}

#[test]
fn the_shipped_example_of_a_shared_store_passes_check() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/spad.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    // Uncomment its [replay.redis] settings (not the TLS files: the example's url is redis://).
    // And drop the [firewall.nft] table: the test runs with the `none` backend.
    let mut lines = Vec::new();
    let mut in_nft = false;
    let mut in_redis = false;
    for line in text.lines() {
        if line == "[firewall.nft]" {
            in_nft = true;
            continue;
        }
        if in_nft && (line.is_empty() || line.starts_with('[')) {
            in_nft = false;
        }
        if in_nft && !line.starts_with('#') {
            continue;
        }
        if line.starts_with("# [") || line.starts_with('[') {
            in_redis = line == "# [replay.redis]";
        }
        let setting = line.starts_with("# store = ")
            || line == "# [replay.redis]"
            || in_redis
                && ["# url = ", "# prefix = ", "# gateway = ", "# timeout_ms", "# connect_timeout_ms"]
                    .iter()
                    .chain(&["# on_store_down"])
                    .any(|p| line.starts_with(p));
        lines.push(if setting { line.trim_start_matches("# ").to_owned() } else { line.to_owned() });
    }
    let text = lines
        .join("\n")
        .replace("store = \"local\"", "store = \"redis\"")
        .replace("REPLACE_WITH_KEY_BASE64", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY")
        .replace("REPLACE_WITH_HMAC_KEY_BASE64", &"QUJD".repeat(16))
        .replace("backend = \"nft\"", "backend = \"none\"");
    assert_eq!(text.matches("\nurl = ").count(), 1, "{text}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("spad.toml");
    support::write_private(&p, &text);
    let out = support::spad_cmd(&p, &["check"]);
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    // And each documented value is what spad reads.
    let c = spad::config::Config::load(&p).unwrap();
    let r = c.replay.redis.unwrap();
    assert_eq!(
        (r.gateway(), r.prefix.as_str(), r.timeout_ms, r.connect_timeout_ms),
        ("gw1", "spa", 100, 1000)
    );
    assert_eq!(r.on_store_down, spad::config::OnStoreDown::Reject);
}

#[test]
fn junk_and_replays_seen_here_cost_no_round_trip_to_redis() {
    let lab = Lab::new("rd5");
    let root = tempfile::tempdir().unwrap();
    let redis = Redis::start(root.path());
    let a = gateway(&lab.a, root.path(), &redis, "gw-a", "reject");
    let seen = knock();
    lab.knock_a(&seen);
    a.wait_event("grant", |e| is(e, "grant"));

    // Every command Redis executes from now on, in order.
    let log = root.path().join("monitor.log");
    let mut monitor = Command::new("redis-cli")
        .arg("-s")
        .arg(redis.socket())
        .arg("MONITOR")
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().starts_with("OK") {
        assert!(start.elapsed() < Duration::from_secs(20), "MONITOR did not start");
        thread::sleep(Duration::from_millis(20));
    }
    // Junk of every kind the engine refuses before or at the HMAC, and a replay of a packet
    // this gateway has seen.
    let wrong_hmac = packet(KEY, "another-hmac-key-of-32-bytes-xyz", "10.213.1.2", "tcp/22", 0);
    for _ in 0..10 {
        lab.knock_a(&wrong_hmac);
        lab.knock_a(&vec![b'A'; 300]);
    }
    lab.knock_a(&seen);
    a.wait_nth_event(9, "hmac_mismatch", |e| rejected(e, "hmac_mismatch"));
    a.wait_event("replay", |e| rejected(e, "replay"));
    // A fresh knock (the same access again: audited as `extend` or `reknock`): its check is
    // the only one Redis sees, and it comes after all the rest.
    lab.knock_a(&knock());
    a.wait_nth_event(1, "second knock", |e| ["grant", "extend", "reknock"].iter().any(|k| is(e, k)));
    let replay_checks = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|l| l.contains(&format!("\"{PREFIX}:replay:")))
            .count()
    };
    let start = Instant::now();
    while replay_checks() == 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "no replay check in MONITOR");
        thread::sleep(Duration::from_millis(20));
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert_eq!(replay_checks(), 1, "{}", std::fs::read_to_string(&log).unwrap());
}

//! What sharing replays through Redis adds to each authenticated packet.
//!
//! Starts its own `redis-server` (Debian package `redis-server`) on a unix socket in a
//! temporary directory, and on a free TCP port of 127.0.0.1, then verifies distinct valid
//! packets exactly as a receiver thread does (`Verifier::verify` with spad's replay store:
//! the local cache and its journal, then Redis), once with `[replay] store = "local"` and once
//! with `store = "redis"` over each transport. Each packet is timed alone; the medians and
//! tails are printed. Junk and replays this spad has seen never reach Redis, so they cost
//! nothing more and are not measured here.
//!
//! ```text
//! cargo run --release -p spad --example replay_bench [packets]   # default 20000 per row
//! ```

use std::hint::black_box;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spa_engine::{
    DigestType, EncryptionKey, EncryptionMode, HmacKey, MessageType, PacketMeta, SpaMessage, Verdict, packet,
};
use spad::audit::Audit;
use spad::config::Config;
use spad::shared_state::{self, Replays};
use spad::state::{PersistentReplay, StateLock};

const KEY: &str = "replay-bench-encryption-key-32by";
const HMAC_KEY: &str = "replay-bench-hmac-key-of-32-byte";

struct Os;

impl spa_engine::Entropy for Os {
    fn fill(&mut self, buf: &mut [u8]) {
        getrandom::fill(buf).expect("randomness");
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// `n` distinct valid access packets for 192.0.2.10.
fn packets(n: usize) -> Vec<Vec<u8>> {
    let key = EncryptionKey::new(KEY.as_bytes().to_vec()).expect("key");
    let hkey = HmacKey::new(HMAC_KEY.as_bytes().to_vec()).expect("hmac key");
    let opts = packet::SealOptions {
        key: &key,
        mode: EncryptionMode::Cbc,
        digest: DigestType::Sha256,
        hmac: Some((&hkey, DigestType::Sha256)),
    };
    (0..n)
        .map(|_| {
            let msg = SpaMessage {
                random: spa_engine::random_value(&mut Os),
                username: "bench".into(),
                timestamp: now(),
                version: "3.0.0".into(),
                message_type: MessageType::Access,
                message: "192.0.2.10,tcp/22".into(),
                nat_access: None,
                server_auth: None,
                client_timeout: None,
            };
            packet::seal(&msg, &opts, &mut Os).expect("seal").into_bytes()
        })
        .collect()
}

fn config(dir: &Path, store: &str) -> Config {
    let text = format!(
        r#"
[replay]
state_dir = "{dir}/state"
{store}

[[access]]
source = "192.0.2.0/24"
open_ports = ["tcp/22"]
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
"#,
        dir = dir.display()
    );
    let p = dir.join("spad.toml");
    std::fs::write(&p, text).expect("write config");
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    Config::load(&p).expect("config")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Verifies each packet with the store `dir`'s configuration makes, and returns the sorted
/// per-packet times.
fn run(dir: &Path, store: &str, packets: &[Vec<u8>]) -> Vec<Duration> {
    std::fs::create_dir_all(dir).expect("dir");
    let c = config(dir, store);
    let lock = StateLock::acquire(&c.replay.state_dir).expect("state lock");
    let local = Mutex::new(PersistentReplay::open(&lock, 240, 1_000_000, now()).expect("replay journal"));
    let audit = Arc::new(Mutex::new(Audit::new(Box::new(std::io::sink()), 50)));
    let (tx, _rx) = crossbeam_channel::bounded(16);
    let started = shared_state::start(&c, 1, audit, tx).expect("shared store");
    let share = started.as_ref().map(|s| s.replay.clone());
    let meta = PacketMeta {
        source: "192.0.2.10".parse().expect("ip"),
        destination: "198.51.100.1".parse().expect("ip"),
    };
    let mut times = Vec::with_capacity(packets.len());
    let t = now();
    for p in packets {
        let started = Instant::now();
        let mut replays = Replays::new(&local, share.as_deref());
        let v = c.verifier.verify(black_box(p), meta, t, &mut replays);
        times.push(started.elapsed());
        assert!(matches!(v, Verdict::Accept(_)), "{v:?}");
    }
    times.sort();
    times
}

fn redis_server(dir: &Path, port: u16) -> Child {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--unixsocket"])
        .arg(dir.join("redis.sock"))
        .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (apt-get install redis-server)");
    let start = Instant::now();
    while !Command::new("redis-cli")
        .arg("-s")
        .arg(dir.join("redis.sock"))
        .arg("PING")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
    {
        assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(20_000, |a| a.parse().expect("packets: a number"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("port").port();
    let mut redis = redis_server(dir.path(), port);
    let sock = dir.path().join("redis.sock");
    let rows = [
        ("local only (store = \"local\")", String::new()),
        (
            "Redis, unix socket",
            format!(
                "store = \"redis\"\n[replay.redis]\nurl = \"redis+unix://{}\"\ngateway = \"bench\"",
                sock.display()
            ),
        ),
        (
            "Redis, TCP 127.0.0.1",
            format!(
                "store = \"redis\"\n[replay.redis]\nurl = \"redis://127.0.0.1:{port}/0\"\ngateway = \"bench\""
            ),
        ),
    ];
    println!("{n} distinct valid packets per row, each verified and timed alone");
    println!("{:<32} {:>10} {:>10} {:>10}", "replay store", "median", "p90", "p99");
    let mut base = Duration::ZERO;
    for (i, (name, store)) in rows.iter().enumerate() {
        let times = run(&dir.path().join(format!("run{i}")), store, &packets(n));
        let median = percentile(&times, 0.5);
        if i == 0 {
            base = median;
        }
        let added = if i == 0 {
            String::new()
        } else {
            format!("   (+{:.1} µs)", (median - base).as_secs_f64() * 1e6)
        };
        println!(
            "{name:<32} {:>7.1} µs {:>7.1} µs {:>7.1} µs{added}",
            median.as_secs_f64() * 1e6,
            percentile(&times, 0.9).as_secs_f64() * 1e6,
            percentile(&times, 0.99).as_secs_f64() * 1e6,
        );
    }
    let _ = redis.kill();
    let _ = redis.wait();
}

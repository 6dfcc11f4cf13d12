//! Grant latency of the nft backend with many grants active (root needed).
//!
//! For each size it makes a fresh network namespace, loads that many grants at start (one
//! `prepare` transaction), then times single grants (new sources), re-knocks (later deadline)
//! and revokes, each through the grant ledger and the configured grant path, as the daemon's
//! worker makes them (nfnetlink by default; set
//! `SPA_GRANT_PATH=nft` for the long-lived `nft -i`), and finally checks that nothing in the
//! namespace uses CPU while idle.
//!
//! ```text
//! cargo run --release -p spa-backend-nft --example grant_bench [sizes...]   # default 1000 10000 100000
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spa_backend_nft::{NftBackend, NftConfig};
use spa_backends::{Access, Driver, Event, Gate, Grant, GrantId, NoJournal, Record, State};
use spa_e2e::Netns;

const SAMPLES: u32 = 1000;

fn grant(i: u32, deadline: u64) -> Grant {
    let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    Grant {
        id: GrantId(u64::from(i) + 1),
        source,
        source_port: None,
        packet_source: source,
        destination: None,
        access: Access::Ports(vec!["tcp/22".parse().expect("port")].into()),
        nat: None,
        created: deadline - 600,
        deadline,
        stanza: "bench".into(),
        username: "bench".into(),
        ingress: None,
    }
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3;
    format!("median {:.3} ms  p90 {:.3} ms  p99 {:.3} ms", at(0.5), at(0.9), at(0.99))
}

/// utime + stime (clock ticks) of every process in the namespace.
fn cpu_ticks(ns: &Netns) -> u64 {
    let out = Command::new("ip").args(["netns", "pids", ns.name()]).output().expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the ")" that closes the command name: state is field 3, utime 14.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            // rest starts at field 3 (state, not numeric), so utime/stime are f[10], f[11].
            f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
        })
        .sum()
}

fn main() {
    spa_e2e::require_root();
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1_000, 10_000, 100_000] } else { sizes };
    for n in sizes {
        let ns = Netns::new("nfbench");
        let argv = ["ip", "netns", "exec", ns.name(), "nft"].map(String::from).to_vec();
        let grant_path = match std::env::var("SPA_GRANT_PATH").as_deref() {
            Ok("nft") => spa_backend_nft::config::GrantPath::Nft,
            _ => spa_backend_nft::config::GrantPath::Netlink,
        };
        let config =
            NftConfig { protect: vec!["tcp/22".parse().expect("port")], grant_path, ..NftConfig::default() };
        let mut b = Gate::new(NftBackend::with_program(config, argv).expect("backend"));
        let j = &mut NoJournal;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let live: Vec<Record> =
            (0..n).map(|i| Record { grant: grant(i, now + 600), state: State::Live }).collect();
        let t = Instant::now();
        b.start(live, now, j).expect("prepare");
        let prepare = t.elapsed();

        let mut grants = Vec::new();
        for i in 0..SAMPLES {
            let g = grant(n + i, now + 600);
            let t = Instant::now();
            let ev = b.grant(g, now, j);
            grants.push(t.elapsed());
            assert!(matches!(ev.as_slice(), [Event::Granted(_)]), "{ev:?}");
        }
        let mut reknocks = Vec::new();
        for i in 0..SAMPLES {
            let g = grant(n + i, now + 900);
            let t = Instant::now();
            let ev = b.grant(g, now, j);
            reknocks.push(t.elapsed());
            assert!(matches!(ev.as_slice(), [Event::Extended(_)]), "{ev:?}");
        }
        let mut revokes = Vec::new();
        for i in 0..SAMPLES {
            let t = Instant::now();
            let ev = b.revoke(GrantId(u64::from(n + i) + 1), now, j);
            revokes.push(t.elapsed());
            assert!(matches!(ev.as_slice(), [Event::Ended { .. }]), "{ev:?}");
        }
        let listed = b.observe(now).expect("list").len();
        let before = cpu_ticks(&ns);
        std::thread::sleep(Duration::from_secs(3));
        let idle = cpu_ticks(&ns) - before;

        println!(
            "{n} grants active (prepare of {n}: {:.1} ms; {listed} listed)",
            prepare.as_secs_f64() * 1e3
        );
        println!("  grant     {}", percentiles(grants));
        println!("  re-knock  {}", percentiles(reknocks));
        println!("  revoke    {}", percentiles(revokes));
        println!("  processes in the namespace while idle: {idle} CPU ticks in 3 s");
    }
}

//! Grant latency of the firewalld backend (root needed; firewalld and dbus installed).
//!
//! For each size it starts a fresh namespace with its own bus and firewalld (Debian 12: 1.3),
//! loads that many grants at start (one `prepare`: one `addRichRule` each), then times single
//! grants (new sources), re-knocks (later deadline: a new rule text replaces the old one) and
//! revokes, each through the grant ledger and the gate, as spad's backend worker makes them:
//! one D-Bus call per rule, no process.
//!
//! ```text
//! cargo run --release -p spa-backend-firewalld --features testlab --example firewalld_grant_bench [sizes...]   # default 0 1000
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spa_backend_firewalld::testlab::{CLOSED_ZONE, FirewalldLab};
use spa_backends::{Access, Driver, Event, Gate, Grant, GrantId, NoJournal, Record, State};
use spa_e2e::Netns;

const SAMPLES: u32 = 200;

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

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

fn main() {
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![0, 1000] } else { sizes };
    for n in sizes {
        let ns = Netns::new("fwbench");
        let fw = FirewalldLab::start(&ns, CLOSED_ZONE);
        let backend = fw.backend("verify_interval = 0").expect("backend");
        println!("firewalld {} in zone {}, {n} grants active", backend.version(), backend.zone());
        let mut gate = Gate::new(backend);
        let deadline = now() + 3600;
        let records: Vec<Record> =
            (0..n).map(|i| Record { grant: grant(i, deadline), state: State::Live }).collect();
        let t = Instant::now();
        gate.start(records, now(), &mut NoJournal).expect("start");
        println!("  prepare of {n} grants: {:.2} s", t.elapsed().as_secs_f64());

        let mut grants = Vec::new();
        let mut reknocks = Vec::new();
        let mut revokes = Vec::new();
        for k in 0..SAMPLES {
            let g = grant(n + k, now() + 600);
            let t = Instant::now();
            let ev = gate.grant(g.clone(), now(), &mut NoJournal);
            grants.push(t.elapsed());
            assert!(matches!(ev.as_slice(), [Event::Granted(_)]), "{ev:?}");
            let again =
                Grant { id: GrantId(u64::from(n + k) + 1_000_000), deadline: now() + 1200, ..g.clone() };
            let t = Instant::now();
            let ev = gate.grant(again, now(), &mut NoJournal);
            reknocks.push(t.elapsed());
            assert!(matches!(ev.as_slice(), [Event::Extended(_)]), "{ev:?}");
            let t = Instant::now();
            let ev = gate.revoke(g.id, now(), &mut NoJournal);
            revokes.push(t.elapsed());
            assert!(matches!(ev.as_slice(), [Event::Ended { .. }]), "{ev:?}");
        }
        println!("  grant   {}", percentiles(grants));
        println!("  re-knock {}", percentiles(reknocks));
        println!("  revoke  {}", percentiles(revokes));
        drop(gate);
        drop(fw);
    }
}

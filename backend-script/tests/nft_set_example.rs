//! The shipped example `conf/script/nft-set.sh`, driven by the script backend in its gate
//! (as the daemon drives it) against real nftables inside a network namespace: a knock lets
//! exactly the client in, a revoke shuts it out again, a restart with `check` restores what
//! was lost, and the backend keeps the contract every backend keeps. Needs root.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use spa_backend_script::ScriptBackend;
use spa_backends::testkit::{ContractSetup, MemoryJournal, contract};
use spa_backends::{
    Access, Backend, BackendError, Driver, Event, Gate, Grant, GrantId, Observed, Record, RefusedBecause,
    State,
};
use spa_e2e::{GatewayLab, Netns};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/script/nft-set.sh");
const CONNECT: Duration = Duration::from_secs(2);
/// The daemon's time in these tests (the kernel's timeouts are relative, so any will do).
const NOW: u64 = 1_800_000_000;

fn backend(ns: &Netns) -> ScriptBackend {
    // The daemon would run the script directly; here it runs inside the namespace.
    let argv = serde_json::to_string(&["ip", "netns", "exec", ns.name(), SCRIPT]).unwrap();
    let toml = format!("open = {argv}\nclose = {argv}\ncheck = {argv}\nreopen_on_extend = true\n");
    ScriptBackend::from_table(&toml::from_str(&toml).unwrap()).unwrap()
}

/// The backend in its gate, with a journal: what the daemon's worker holds.
struct Gw {
    gate: Gate<ScriptBackend>,
    journal: MemoryJournal,
}

impl Gw {
    /// Started at `now` with the live grants of `journal` (a daemon (re)start).
    fn start(backend: ScriptBackend, journal: MemoryJournal, now: u64) -> Self {
        let records =
            journal.grants.values().map(|g| Record { grant: g.clone(), state: State::Live }).collect();
        let mut gw = Gw { gate: Gate::new(backend), journal };
        gw.gate.start(records, now, &mut gw.journal).unwrap();
        gw
    }

    fn grant(&mut self, g: &Grant, now: u64) -> Result<(), BackendError> {
        outcome(self.gate.grant(g.clone(), now, &mut self.journal))
    }

    fn revoke(&mut self, id: u64, now: u64) -> Result<(), BackendError> {
        outcome(self.gate.revoke(GrantId(id), now, &mut self.journal))
    }
}

/// The first backend error among the events; any other failure is a test bug.
fn outcome(events: Vec<Event>) -> Result<(), BackendError> {
    for e in events {
        match e {
            Event::Refused { cause: RefusedBecause::Backend(error), .. }
            | Event::CloseFailed { error, .. } => {
                return Err(error);
            }
            Event::Granted(_) | Event::Extended(_) | Event::Reknocked(_) | Event::Ended { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    Ok(())
}

fn grant(id: u64, source: &str, secs: u64) -> Grant {
    Grant {
        id: GrantId(id),
        source: source.parse().unwrap(),
        source_port: None,
        packet_source: source.parse().unwrap(),
        destination: None,
        access: Access::Ports(vec!["tcp/22".parse().unwrap()].into()),
        nat: None,
        created: NOW,
        deadline: NOW + secs,
        stanza: "lab".into(),
        username: "alice".into(),
        ingress: None,
    }
}

/// The elements of one of the example's sets as `nft -j` gives them (empty when the table
/// does not exist yet).
fn elements(ns: &Netns, set: &str) -> Vec<serde_json::Value> {
    let out = ns.cmd("nft").args(["-j", "list", "set", "inet", "spa_script", set]).output().unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["set"]["elem"].as_array())
        .flatten()
        .map(|e| e["elem"].clone())
        .collect()
}

/// The timeout (seconds) of each element of `set`, as nft reports it.
fn timeouts(ns: &Netns, set: &str) -> Vec<u64> {
    elements(ns, set).iter().map(|e| e["timeout"].as_u64().unwrap()).collect()
}

/// What the example's sets hold, in the words of the backend's units (`192.0.2.1 tcp/22`):
/// the contract suite's reader, since the backend cannot read what its scripts made.
fn observe(ns: &Netns, now: u64) -> Vec<Observed> {
    ["allow4", "allow6"]
        .iter()
        .flat_map(|set| elements(ns, set))
        .map(|e| {
            let v = e["val"]["concat"].as_array().unwrap();
            let (addr, proto, port) =
                (v[0].as_str().unwrap(), v[1].as_str().unwrap(), v[2].as_u64().unwrap());
            Observed {
                entry: format!("{addr} {proto}/{port}"),
                holder: None,
                until: e["expires"].as_u64().map(|left| now + left),
            }
        })
        .collect()
}

#[test]
fn nft_set_example_keeps_the_contract() {
    spa_e2e::require_root();
    let ns = Rc::new(Netns::new("scc"));
    let (made, seen) = (Rc::clone(&ns), Rc::clone(&ns));
    contract(ContractSetup {
        make: Box::new(move || backend(&made)),
        observe: Some(Box::new(move |_, now| observe(&seen, now))),
        source4: "192.0.2.1",
        source6: Some("2001:db8::1"),
        // The example does local access only (it refuses NAT with exit 2).
        dnat4: None,
    });
    // The suite ends with everything revoked: the example's sets are empty, its table stays
    // (the backend owns no table: teardown runs nothing).
    assert!(observe(&ns, NOW).is_empty());
    assert!(ns.sh_ok("nft list table inet spa_script >/dev/null"));
}

#[test]
fn nft_set_example_opens_and_closes_for_exactly_the_client() {
    let lab = GatewayLab::new("sc");
    let _ssh = lab.gw.tcp_server(22, "ssh");
    let gw4 = GatewayLab::addr(GatewayLab::GW4, 22);
    let gw6 = GatewayLab::addr(GatewayLab::GW6, 22);
    let gw_attacker = GatewayLab::addr(GatewayLab::GW_ATTACKER4, 22);
    let mut b = Gw::start(backend(&lab.gw), MemoryJournal::default(), NOW);

    let v4 = grant(1, GatewayLab::CLIENT4, 600);
    let v6 = grant(2, GatewayLab::CLIENT6, 600);
    b.grant(&v4, NOW).unwrap();
    b.grant(&v6, NOW).unwrap();
    // The first open created the table; now hide the service (the admin's one-time step).
    lab.gw.sh("nft add element inet spa_script guarded '{ tcp . 22 }'");

    assert!(lab.client.tcp_connects(gw4, CONNECT), "granted IPv4 client is let in");
    assert!(lab.client.tcp_connects(gw6, CONNECT), "granted IPv6 client is let in");
    assert!(!lab.attacker.tcp_connects(gw_attacker, CONNECT), "the attacker stays out");
    assert_eq!(timeouts(&lab.gw, "allow4"), [600]);
    let units: BTreeSet<String> = observe(&lab.gw, NOW).into_iter().map(|o| o.entry).collect();
    let expected: BTreeSet<String> = b.gate.expected(NOW).into_iter().map(|(e, ..)| e).collect();
    assert_eq!(units, expected, "the firewall holds what the ledger expects");

    // A re-knock with reopen_on_extend pushes the kernel-side timeout out (to the new
    // deadline, counted from the `now` the daemon passes in).
    let later = grant(3, GatewayLab::CLIENT4, 3600);
    b.grant(&later, NOW + 10).unwrap();
    assert_eq!(timeouts(&lab.gw, "allow4"), [3590]);

    b.revoke(1, NOW + 20).unwrap();
    assert!(timeouts(&lab.gw, "allow4").is_empty());
    assert!(!lab.client.tcp_connects(gw4, CONNECT), "revoked IPv4 client is out again");
    assert!(lab.client.tcp_connects(gw6, CONNECT), "the IPv6 grant is untouched");

    // A restarted daemon: the element was lost meanwhile; check finds it absent, open restores
    // it (for what is left of the grant).
    lab.gw
        .sh(&format!("nft delete element inet spa_script allow6 '{{ {} . tcp . 22 }}'", GatewayLab::CLIENT6));
    assert!(!lab.client.tcp_connects(gw6, CONNECT));
    let journal = std::mem::take(&mut b.journal);
    assert_eq!(journal.grants.keys().copied().collect::<Vec<_>>(), [GrantId(2)]);
    let restarted = Gw::start(backend(&lab.gw), journal, NOW + 30);
    assert_eq!(timeouts(&lab.gw, "allow6"), [570]);
    assert!(lab.client.tcp_connects(gw6, CONNECT), "prepare restored the lost grant");
    // And when it is present, a start leaves it as it is (no duplicate, no error, no re-time).
    let mut again = Gw::start(backend(&lab.gw), restarted.journal, NOW + 40);
    assert_eq!(timeouts(&lab.gw, "allow6"), [570]);

    // A stop that does not keep the grants closes them; teardown changes nothing more.
    again.gate.stop(false, NOW + 50, &mut again.journal);
    assert!(timeouts(&lab.gw, "allow6").is_empty());
    assert!(!lab.client.tcp_connects(gw6, CONNECT));
    assert!(again.journal.grants.is_empty());
    again.gate.teardown().unwrap();
    // Closing what is already gone is not an error (the example's close is idempotent): the
    // first daemon still has grant 2 on its ledger.
    b.revoke(2, NOW + 60).unwrap();
}

#[test]
fn nft_set_example_refuses_what_it_cannot_do() {
    let lab = GatewayLab::new("sc");
    let mut b = Gw::start(backend(&lab.gw), MemoryJournal::default(), NOW);
    let mut all = grant(3, GatewayLab::CLIENT4, 60);
    all.access = Access::All;
    let err = spa_backends::error_chain(&b.grant(&all, NOW).unwrap_err());
    assert!(err.contains("forward-all"), "{err}");
    assert!(err.contains("exit status: 2"), "{err}");
    assert!(b.gate.ledger().live().next().is_none());

    // Even when the admin says the scripts bind source ports, the example (whose sets hold
    // whole addresses) refuses a grant bound to one rather than open the address.
    let argv = serde_json::to_string(&["ip", "netns", "exec", lab.gw.name(), SCRIPT]).unwrap();
    let toml = format!("open = {argv}\nclose = {argv}\ncheck = {argv}\nsource_port = true\n");
    let backend = ScriptBackend::from_table(&toml::from_str(&toml).unwrap()).unwrap();
    let mut b = Gw::start(backend, MemoryJournal::default(), NOW);
    let mut bound = grant(4, GatewayLab::CLIENT4, 60);
    bound.source_port = Some(40000);
    let err = spa_backends::error_chain(&b.grant(&bound, NOW).unwrap_err());
    assert!(err.contains("source port"), "{err}");
    assert!(err.contains("exit status: 2"), "{err}");
    assert!(b.gate.ledger().live().next().is_none());
}

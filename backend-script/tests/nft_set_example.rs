//! The shipped example `conf/script/nft-set.sh`, driven by the script backend against real
//! nftables inside the gateway namespace of a lab: a knock lets exactly the client in, a
//! revoke shuts it out again, a restart with `check` restores what was lost. Needs root.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spa_backend_script::ScriptBackend;
use spa_backends::{Access, Backend, Grant, GrantId};
use spa_e2e::GatewayLab;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/script/nft-set.sh");
const CONNECT: Duration = Duration::from_secs(2);

fn backend(lab: &GatewayLab) -> ScriptBackend {
    // The daemon would run the script directly; here it runs inside the lab's gateway.
    let argv = serde_json::to_string(&["ip", "netns", "exec", lab.gw.name(), SCRIPT]).unwrap();
    let toml = format!("open = {argv}\nclose = {argv}\ncheck = {argv}\nreopen_on_extend = true\n");
    ScriptBackend::new(&toml::from_str(&toml).unwrap()).unwrap()
}

fn grant(id: u64, source: &str, secs: u64) -> Grant {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    Grant {
        id: GrantId(id),
        source: source.parse().unwrap(),
        packet_source: source.parse().unwrap(),
        destination: None,
        access: Access::Ports(vec!["tcp/22".parse().unwrap()]),
        nat: None,
        created: now,
        deadline: now + secs,
        stanza: "lab".into(),
        username: "alice".into(),
    }
}

/// The timeout (seconds) of each element of `set`, as nft reports it.
fn timeouts(lab: &GatewayLab, set: &str) -> Vec<u64> {
    let out = lab.gw.sh(&format!("nft -j list set inet spa_script {set}"));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["set"]["elem"].as_array())
        .flatten()
        .map(|e| e["elem"]["timeout"].as_u64().unwrap())
        .collect()
}

#[test]
fn nft_set_example_opens_and_closes_for_exactly_the_client() {
    let lab = GatewayLab::new("sc");
    let _ssh = lab.gw.tcp_server(22, "ssh");
    let gw4 = GatewayLab::addr(GatewayLab::GW4, 22);
    let gw6 = GatewayLab::addr(GatewayLab::GW6, 22);
    let gw_attacker = GatewayLab::addr(GatewayLab::GW_ATTACKER4, 22);
    let mut b = backend(&lab);

    let v4 = grant(1, GatewayLab::CLIENT4, 600);
    let v6 = grant(2, GatewayLab::CLIENT6, 600);
    b.grant(&v4).unwrap();
    b.grant(&v6).unwrap();
    // The first open created the table; now hide the service (the admin's one-time step).
    lab.gw.sh("nft add element inet spa_script guarded '{ tcp . 22 }'");

    assert!(lab.client.tcp_connects(gw4, CONNECT), "granted IPv4 client is let in");
    assert!(lab.client.tcp_connects(gw6, CONNECT), "granted IPv6 client is let in");
    assert!(!lab.attacker.tcp_connects(gw_attacker, CONNECT), "the attacker stays out");
    let t = timeouts(&lab, "allow4");
    assert!(t.len() == 1 && (590..=600).contains(&t[0]), "{t:?}");

    // A re-knock with reopen_on_extend pushes the kernel-side timeout out.
    let mut later = v4.clone();
    later.deadline += 3000;
    b.grant(&later).unwrap();
    let t = timeouts(&lab, "allow4");
    assert!(t.len() == 1 && t[0] >= 3590, "{t:?}");

    b.revoke(&later).unwrap();
    assert!(timeouts(&lab, "allow4").is_empty());
    assert!(!lab.client.tcp_connects(gw4, CONNECT), "revoked IPv4 client is out again");
    assert!(lab.client.tcp_connects(gw6, CONNECT), "the IPv6 grant is untouched");

    // A restarted daemon: the element was lost meanwhile; check finds it absent, open restores it.
    lab.gw
        .sh(&format!("nft delete element inet spa_script allow6 '{{ {} . tcp . 22 }}'", GatewayLab::CLIENT6));
    assert!(!lab.client.tcp_connects(gw6, CONNECT));
    let mut restarted = backend(&lab);
    restarted.prepare(std::slice::from_ref(&v6)).unwrap();
    assert_eq!(timeouts(&lab, "allow6").len(), 1);
    assert!(lab.client.tcp_connects(gw6, CONNECT), "prepare restored the lost grant");
    // And when it is present, prepare leaves it as it is (no duplicate, no error).
    restarted.prepare(std::slice::from_ref(&v6)).unwrap();
    assert_eq!(timeouts(&lab, "allow6").len(), 1);

    restarted.teardown().unwrap();
    assert!(timeouts(&lab, "allow6").is_empty());
    assert!(!lab.client.tcp_connects(gw6, CONNECT));
    // Closing what is already gone is not an error (the example's close is idempotent).
    b.revoke(&v6).unwrap();
}

#[test]
fn nft_set_example_refuses_what_it_cannot_do() {
    let lab = GatewayLab::new("sc");
    let mut b = backend(&lab);
    let mut all = grant(3, GatewayLab::CLIENT4, 60);
    all.access = Access::All;
    let err = b.grant(&all).unwrap_err().to_string();
    assert!(err.contains("forward-all"), "{err}");
    assert!(err.contains("exit status: 2"), "{err}");
}

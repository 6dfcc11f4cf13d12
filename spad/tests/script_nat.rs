//! The shipped NAT example `conf/script/nft-dnat.sh` end to end: spad with the script backend
//! runs it in a lab's gateway; the real fwknop client knocks, and then reaches the internal
//! host's service through the gateway, while nobody else does, neither through the gateway's
//! port nor straight to the internal host; the grant's expiry closes the door again.

use std::path::Path;
use std::time::{Duration, Instant};

use spa_e2e::GatewayLab;

mod support;
use support::{Daemon, is};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/script/nft-dnat.sh");
const KEY: &str = "spad-nat-script-encryption-key!!";
const HMAC_KEY: &str = "spad-nat-script-hmac-key-0123456789abcdef012345";
/// The grant's length: long enough to connect, short enough to see it end.
const WINDOW: u64 = 6;

fn config(dir: &Path) -> String {
    let argv = serde_json::to_string(&[SCRIPT, "{ingress_if}", "{ingress_addr}"]).unwrap();
    format!(
        r#"
[listen]
addresses = ["0.0.0.0:62201"]

[firewall]
backend = "script"

[firewall.script]
open = {argv}
close = {argv}
check = {argv}
reopen_on_extend = true

[nat]
enable_forwarding = true

[replay]
state_dir = "{dir}/state"

[log]
audit = "{dir}/audit.jsonl"

[[access]]
name = "to-internal"
source = "10.201.1.0/24"
open_ports = ["tcp/2222"]
force_nat = "{internal} 8080"
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
fw_access_timeout = {WINDOW}
"#,
        dir = dir.display(),
        internal = GatewayLab::INTERNAL4,
    )
}

#[test]
fn the_nat_example_forwards_the_client_only_until_the_grant_ends() {
    let lab = GatewayLab::new("sn1");
    let dir = tempfile::tempdir().unwrap();
    let _service = lab.internal.tcp_server(8080, "internal-service");
    // The admin's part: the table, and the internal service hidden behind the gateway.
    let init = lab.gw.cmd(SCRIPT).arg("--init").output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    lab.gw
        .sh(&format!("nft add element inet spa_nat guarded4 '{{ {} . tcp . 8080 }}'", GatewayLab::INTERNAL4));
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path()));

    let short = Duration::from_secs(1);
    let ext = GatewayLab::addr(GatewayLab::GW4, 2222);
    let direct = GatewayLab::addr(GatewayLab::INTERNAL4, 8080);
    assert!(!lab.client.tcp_connects(ext, short), "forwarded before any knock");
    assert!(!lab.client.tcp_connects(direct, short), "the internal service is not hidden");

    let out = lab
        .client
        .cmd("fwknop")
        .env("HOME", dir.path())
        .args(["-A", "tcp/2222", "-a", GatewayLab::CLIENT4, "-D", GatewayLab::GW4, "--use-hmac"])
        .args(["--key-rijndael", KEY, "--key-hmac", HMAC_KEY, "--no-save-args", "--no-rc-file"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let g = d.wait_event("grant", |e| is(e, "grant"));
    assert!(lab.client.wait_tcp(ext, Duration::from_secs(5)).is_some(), "no DNAT:\n{}", d.log_text());
    let banner = lab.client.sh(&format!("nc -n -w 1 {} 2222 </dev/null || true", GatewayLab::GW4));
    assert!(banner.contains("internal-service"), "reached something else: {banner:?}");
    // The DNAT is for the client, on the interface and address its knock came in on.
    let map = lab.gw.sh("nft list map inet spa_nat dnat4");
    let key = format!("\"c0\" . {} . {} . tcp . 2222", GatewayLab::CLIENT4, GatewayLab::GW4);
    assert!(map.contains(&key) && map.contains(&format!("{} . 8080", GatewayLab::INTERNAL4)), "{map}");
    // Nobody else: not the attacker through its side of the gateway or through the client's
    // side, and not the client straight to the internal host.
    assert!(!lab.attacker.tcp_connects(GatewayLab::addr(GatewayLab::GW_ATTACKER4, 2222), short));
    assert!(!lab.attacker.tcp_connects(ext, short), "the attacker is forwarded too");
    assert!(!lab.attacker.tcp_connects(direct, short), "the attacker reaches the internal host");
    assert!(!lab.client.tcp_connects(direct, short), "the client reaches around the DNAT");

    // The grant ends at its deadline: spad closes it (and the kernel would, by itself).
    let ended = d.wait_event("expire", |e| is(e, "expire") && e["id"] == g["id"]);
    assert_eq!(ended["stanza"], "to-internal");
    let start = Instant::now();
    while lab.client.tcp_connects(ext, short) {
        assert!(start.elapsed() < Duration::from_secs(20), "still forwarded after the grant ended");
    }
    let map = lab.gw.sh("nft list map inet spa_nat dnat4");
    assert!(!map.contains(GatewayLab::CLIENT4), "{map}");
    assert!(!lab.gw.sh("nft list set inet spa_nat fwd4").contains(GatewayLab::CLIENT4));
    assert_eq!(d.count(|e| is(e, "error")), 0, "{:#?}", d.events());
}

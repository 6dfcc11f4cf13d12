//! The nft backend against real nftables, in network namespaces (root needed).
//!
//! The backend runs nft through `ip netns exec <gw> nft` (the hidden `with_program`
//! constructor), so the production code path — the long-lived `nft -i` included — runs inside
//! the lab's gateway, driven by the grant ledger exactly as the daemon drives it (a `Gate`).
//! Grants are short (2-3 s) so expiry can be watched.

use std::net::SocketAddr;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spa_backend_nft::config::GrantPath;
use spa_backend_nft::{NftBackend, NftConfig};
use spa_backends::testkit::{ContractSetup, MemoryJournal, contract};
use spa_backends::{Access, Driver, Event, Gate, Grant, GrantId, Nat, Observed, Record, Snat, State};
use spa_e2e::{GatewayLab, Netns};

type Lab = GatewayLab;

const SEC: Duration = Duration::from_secs(1);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn config(protect: &[&str]) -> NftConfig {
    NftConfig { protect: protect.iter().map(|p| p.parse().unwrap()).collect(), ..NftConfig::default() }
}

fn nft_in(ns: &Netns, config: NftConfig) -> NftBackend {
    let argv = ["ip", "netns", "exec", ns.name(), "nft"].map(String::from).to_vec();
    NftBackend::with_program(config, argv).unwrap()
}

/// The backend in its gate, with the calls these tests make.
struct B {
    gate: Gate<NftBackend>,
    journal: MemoryJournal,
}

impl B {
    fn prepare(&mut self, live: &[Grant]) -> Result<Vec<Event>, spa_backends::BackendError> {
        let records = live.iter().map(|g| Record { grant: g.clone(), state: State::Live }).collect();
        self.gate.start(records, now(), &mut self.journal)
    }

    fn expect_ok(events: Vec<Event>) -> Result<(), String> {
        match events.as_slice() {
            [] | [Event::Granted(_) | Event::Extended(_) | Event::Reknocked(_) | Event::Ended { .. }] => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    }

    fn grant(&mut self, g: &Grant) -> Result<(), String> {
        Self::expect_ok(self.gate.grant(g.clone(), now(), &mut self.journal))
    }

    fn revoke(&mut self, g: &Grant) -> Result<(), String> {
        Self::expect_ok(self.gate.revoke(g.id, now(), &mut self.journal))
    }

    fn list(&mut self) -> Result<Vec<Observed>, spa_backends::BackendError> {
        self.gate.observe(now())
    }

    fn teardown(&mut self) -> Result<(), spa_backends::BackendError> {
        self.gate.teardown()
    }
}

fn backend(lab: &Lab, config: NftConfig) -> B {
    B { gate: Gate::new(nft_in(&lab.gw, config)), journal: MemoryJournal::default() }
}

fn grant(id: u64, source: &str, ports: &[&str], nat: Option<Nat>, secs: u64) -> Grant {
    let t = now();
    Grant {
        id: GrantId(id),
        source: source.parse().unwrap(),
        source_port: None,
        packet_source: source.parse().unwrap(),
        destination: None,
        access: Access::Ports(ports.iter().map(|p| p.parse().unwrap()).collect()),
        nat: nat.map(Box::new),
        created: t,
        deadline: t + secs,
        stanza: "test".into(),
        username: "u".into(),
        ingress: None,
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    Lab::addr(ip, port)
}

/// The first line a TCP server at `to` sends, read from inside `ns`; `None` if no connection.
fn banner(ns: &Netns, to: SocketAddr) -> Option<String> {
    let target = match to {
        SocketAddr::V4(a) => format!("TCP4:{a},connect-timeout=2"),
        SocketAddr::V6(a) => format!("TCP6:{a},connect-timeout=2"),
    };
    let out = ns.cmd("socat").args(["-T", "1", "-u", &target, "-"]).stderr(Stdio::null()).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).trim().trim_start_matches('[').trim_end_matches(']').to_owned();
    // socat writes IPv6 peers in full (`fd00:0201:...`); print addresses the usual way.
    let text = text.parse::<std::net::IpAddr>().map_or(text, |a| a.to_string());
    (!text.is_empty()).then_some(text)
}

/// A server on `port` in `ns` (IPv4 and IPv6) that answers each connection with the peer's
/// address.
fn peer_echo_server(ns: &Netns, port: u16) -> [spa_e2e::Background; 2] {
    let spawn = |listen: String| {
        ns.spawn(
            ns.cmd("socat")
                .args([listen.as_str(), "SYSTEM:echo $SOCAT_PEERADDR; sleep 1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let v4 = spawn(format!("TCP4-LISTEN:{port},reuseaddr,fork"));
    let v6 = spawn(format!("TCP6-LISTEN:{port},reuseaddr,fork,ipv6only=1"));
    wait_listen(ns, port);
    [v4, v6]
}

fn wait_listen(ns: &Netns, port: u16) {
    for _ in 0..100 {
        if ns.sh_ok(&format!("ss -Hltn 'sport = :{port}' | grep -q LISTEN")) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

fn table_exists(lab: &Lab, table: &str) -> bool {
    lab.gw.cmd("nft").args(["list", "table", "inet", table]).output().unwrap().status.success()
}

#[test]
fn grant_opens_for_the_client_only_and_expiry_keeps_established() {
    let lab = Lab::new("nfa");
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let _echo = lab.gw.spawn(
        lab.gw.cmd("socat").args(["TCP-LISTEN:2022,reuseaddr,fork", "EXEC:cat"]).stdout(Stdio::null()),
    );
    wait_listen(&lab.gw, 2022);
    let mut b = backend(&lab, config(&["tcp/22", "tcp/2022"]));
    b.prepare(&[]).unwrap();
    assert!(table_exists(&lab, "spa"));

    assert!(!lab.client.tcp_connects(addr(Lab::GW4, 22), SEC), "open before any grant");
    let g = grant(1, Lab::CLIENT4, &["tcp/22", "tcp/2022"], None, 3);
    b.grant(&g).unwrap();
    // A connection made inside the window, used again well after it ends.
    let mut conn = lab
        .client
        .cmd("sh")
        .args(["-c", "(echo before; sleep 7; echo after; sleep 1) | socat -T 10 - TCP4:10.201.1.1:2022"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(banner(&lab.client, addr(Lab::GW4, 22)).as_deref(), Some("gw-ssh"));
    assert!(!lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 22), SEC), "attacker let in");

    while now() <= g.deadline {
        thread::sleep(Duration::from_millis(200));
    }
    assert!(!lab.client.tcp_connects(addr(Lab::GW4, 22), SEC), "new connection after the window");
    assert!(!lab.client.tcp_connects(addr(Lab::GW4, 2022), SEC), "new connection after the window");
    assert!(b.list().unwrap().is_empty(), "the kernel did not expire the elements");
    assert!(b.gate.tick(now(), &mut b.journal).iter().all(|e| matches!(e, Event::Ended { .. })));
    let out = conn.wait_with_output_checked();
    assert_eq!(out, "before\nafter\n", "the established connection did not survive the window");
    assert!(!lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 22), SEC));
}

trait WaitOut {
    fn wait_with_output_checked(&mut self) -> String;
}

impl WaitOut for std::process::Child {
    fn wait_with_output_checked(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut o) = self.stdout.take() {
            std::io::Read::read_to_string(&mut o, &mut s).unwrap();
        }
        let _ = self.wait();
        s
    }
}

#[test]
fn reknock_extends_and_revoke_closes() {
    reknock_extends_and_revoke_closes_via(GrantPath::Netlink, "nfb");
}

/// The same through the long-lived `nft -i` grant path.
#[test]
fn reknock_extends_and_revoke_closes_through_nft() {
    reknock_extends_and_revoke_closes_via(GrantPath::Nft, "nfq");
}

fn reknock_extends_and_revoke_closes_via(path: GrantPath, prefix: &str) {
    let lab = Lab::new(prefix);
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let mut b = backend(&lab, NftConfig { grant_path: path, ..config(&["tcp/22"]) });
    b.prepare(&[]).unwrap();
    let g = grant(5, Lab::CLIENT4, &["tcp/22"], None, 2);
    b.grant(&g).unwrap();
    let longer = Grant { deadline: now() + 8, ..g.clone() };
    b.grant(&longer).unwrap();
    let owned = b.list().unwrap();
    assert_eq!(owned.len(), 1, "{owned:?}");
    assert_eq!(owned[0].holder, Some(GrantId(5)));
    assert!(owned[0].until.unwrap() >= now() + 6, "{owned:?}");
    thread::sleep(Duration::from_secs(3));
    assert!(lab.client.tcp_connects(addr(Lab::GW4, 22), SEC), "re-knock did not extend the grant");

    b.revoke(&longer).unwrap();
    assert!(!lab.client.tcp_connects(addr(Lab::GW4, 22), SEC), "revoked grant still open");
    assert!(b.list().unwrap().is_empty());
    // Revoking again (or a grant never made) is not an error.
    b.revoke(&longer).unwrap();
    b.revoke(&grant(99, Lab::ATTACKER4, &["tcp/22"], None, 5)).unwrap();
    // The elements themselves: removing an absent one is not an error either.
    assert!(b.gate.ledger().is_empty());
}

#[test]
fn shared_elements_live_as_long_as_their_longest_grant() {
    let lab = Lab::new("nfs");
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let mut b = backend(&lab, config(&["tcp/22", "tcp/443"]));
    b.prepare(&[]).unwrap();
    let short = grant(1, Lab::CLIENT4, &["tcp/22"], None, 30);
    let long = grant(2, Lab::CLIENT4, &["tcp/22", "tcp/443"], None, 60);
    b.grant(&short).unwrap();
    b.grant(&long).unwrap();
    b.revoke(&short).unwrap();
    assert!(lab.client.tcp_connects(addr(Lab::GW4, 22), SEC), "revoking one grant closed another's port");
    let owned = b.list().unwrap();
    assert_eq!(owned.len(), 2, "{owned:?}");
    assert!(owned.iter().all(|o| o.holder == Some(GrantId(2))));
}

#[test]
fn ipv6_grant() {
    let lab = Lab::new("nf6");
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let mut b = backend(&lab, config(&["tcp/22"]));
    b.prepare(&[]).unwrap();
    assert!(!lab.client.tcp_connects(addr(Lab::GW6, 22), SEC));
    b.grant(&grant(1, Lab::CLIENT6, &["tcp/22"], None, 30)).unwrap();
    assert_eq!(banner(&lab.client, addr(Lab::GW6, 22)).as_deref(), Some("gw-ssh"));
    assert!(!lab.client.tcp_connects(addr(Lab::GW4, 22), SEC), "an IPv6 grant opened IPv4");
    assert!(!lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER6, 22), SEC));
}

#[test]
fn dnat_reaches_the_internal_host_for_the_client_only() {
    let lab = Lab::new("nfd");
    // One internal port per grant: source NAT is keyed on the translated flow.
    let _srv: Vec<_> = [22, 23, 24].map(|p| peer_echo_server(&lab.internal, p)).into_iter().collect();
    let mut b = backend(&lab, config(&["tcp/22"]));
    b.prepare(&[]).unwrap();
    let internal4 = Lab::INTERNAL4.parse().unwrap();
    let internal6 = Lab::INTERNAL6.parse().unwrap();
    b.grant(&grant(
        1,
        Lab::CLIENT4,
        &["tcp/2222"],
        Some(Nat::Dnat { to: internal4, port: Some(22), snat: None }),
        30,
    ))
    .unwrap();
    b.grant(&grant(
        2,
        Lab::CLIENT4,
        &["tcp/2223"],
        Some(Nat::Dnat { to: internal4, port: Some(23), snat: Some(Snat::Masquerade) }),
        30,
    ))
    .unwrap();
    b.grant(&grant(
        3,
        Lab::CLIENT4,
        &["tcp/2224"],
        Some(Nat::Dnat {
            to: internal4,
            port: Some(24),
            snat: Some(Snat::To(Lab::GW_INTERNAL4.parse().unwrap())),
        }),
        30,
    ))
    .unwrap();
    b.grant(&grant(
        4,
        Lab::CLIENT6,
        &["tcp/2222"],
        Some(Nat::Dnat { to: internal6, port: Some(22), snat: None }),
        30,
    ))
    .unwrap();

    // The internal host sees the client itself, or the gateway when source NAT was asked for.
    assert_eq!(banner(&lab.client, addr(Lab::GW4, 2222)).as_deref(), Some(Lab::CLIENT4));
    assert_eq!(banner(&lab.client, addr(Lab::GW4, 2223)).as_deref(), Some(Lab::GW_INTERNAL4));
    assert_eq!(banner(&lab.client, addr(Lab::GW4, 2224)).as_deref(), Some(Lab::GW_INTERNAL4));
    assert_eq!(banner(&lab.client, addr(Lab::GW6, 2222)).as_deref(), Some(Lab::CLIENT6));
    assert_eq!(banner(&lab.attacker, addr(Lab::GW_ATTACKER4, 2222)), None, "attacker got through the dnat");
    assert_eq!(banner(&lab.attacker, addr(Lab::GW_ATTACKER6, 2222)), None);
}

#[test]
fn local_nat_redirects_to_a_local_port() {
    let lab = Lab::new("nfr");
    let _srv = lab.gw.tcp_server(5555, "gw-local");
    let mut b = backend(&lab, config(&["tcp/5555"]));
    b.prepare(&[]).unwrap();
    b.grant(&grant(1, Lab::CLIENT4, &["tcp/2222"], Some(Nat::Redirect { port: 5555 }), 30)).unwrap();
    assert_eq!(banner(&lab.client, addr(Lab::GW4, 2222)).as_deref(), Some("gw-local"));
    assert_eq!(banner(&lab.attacker, addr(Lab::GW_ATTACKER4, 2222)), None);
    assert!(!lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 5555), SEC));
}

#[test]
fn forward_all_routes_the_client_through() {
    let lab = Lab::new("nff");
    let _srv = peer_echo_server(&lab.internal, 8080);
    // The admin forbids forwarding by default; our forward accept must be marked to pass.
    lab.gw.sh("nft -f - <<'EOF'
table inet admin {
  chain forward { type filter hook forward priority 0; policy drop;
    ct state established,related accept
    meta mark & 0x100 == 0x100 accept
  }
}
EOF");
    let mut b = backend(&lab, NftConfig { mark: Some(0x100), ..config(&[]) });
    b.prepare(&[]).unwrap();
    assert_eq!(banner(&lab.client, addr(Lab::INTERNAL4, 8080)), None, "forwarded before any grant");
    let mut g = grant(1, Lab::CLIENT4, &[], Some(Nat::Route { snat: None }), 30);
    g.access = Access::All;
    b.grant(&g).unwrap();
    assert_eq!(banner(&lab.client, addr(Lab::INTERNAL4, 8080)).as_deref(), Some(Lab::CLIENT4));
    assert_eq!(banner(&lab.attacker, addr(Lab::INTERNAL4, 8080)), None);
}

#[test]
fn prepare_after_a_restart_keeps_live_grants_and_drops_stale_ones() {
    let lab = Lab::new("nfp");
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let live = grant(1, Lab::CLIENT4, &["tcp/22"], None, 60);
    let stale = grant(2, Lab::ATTACKER4, &["tcp/22"], None, 60);
    {
        let mut first = backend(&lab, config(&["tcp/22"]));
        first.prepare(&[]).unwrap();
        first.grant(&live).unwrap();
        first.grant(&stale).unwrap();
        assert!(lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 22), SEC));
        // Dropped without teardown: a daemon stop or crash.
    }
    assert!(table_exists(&lab, "spa"), "stopping removed the protection");
    let mut second = backend(&lab, config(&["tcp/22"]));
    second.prepare(std::slice::from_ref(&live)).unwrap();
    assert!(lab.client.tcp_connects(addr(Lab::GW4, 22), SEC), "live grant lost");
    assert!(!lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 22), SEC), "stale grant kept");
    let owned = second.list().unwrap();
    assert_eq!(owned.len(), 1, "{owned:?}");
    assert_eq!(owned[0].holder, Some(GrantId(1)));
    assert_eq!(owned[0].entry, "allow4 { 10.201.1.2 . tcp . 22 }");
}

#[test]
fn teardown_removes_only_our_table() {
    let lab = Lab::new("nft");
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    lab.gw.sh("nft add table inet other");
    let mut b = backend(&lab, NftConfig { table: "spa_test".into(), ..config(&["tcp/22"]) });
    b.prepare(&[]).unwrap();
    assert!(!lab.client.tcp_connects(addr(Lab::GW4, 22), SEC));
    b.teardown().unwrap();
    assert!(!table_exists(&lab, "spa_test"));
    assert!(table_exists(&lab, "other"), "teardown touched another table");
    assert!(lab.client.tcp_connects(addr(Lab::GW4, 22), SEC));
    // Tearing down twice is fine.
    b.teardown().unwrap();
}

#[test]
fn a_lost_table_is_noticed_and_rebuilt_with_the_live_grants() {
    let lab = Lab::new("nfl");
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let mut b = backend(&lab, config(&["tcp/22"]));
    b.prepare(&[]).unwrap();
    let live = grant(1, Lab::CLIENT4, &["tcp/22"], None, 60);
    b.grant(&live).unwrap();
    // Another table's change moves the generation: no false alarm.
    lab.gw.sh("nft add table inet other");
    assert!(b.gate.check(now(), &mut b.journal).is_empty());
    // What a `flush ruleset` or a firewall reload does: the protected port is open to all.
    lab.gw.sh("nft delete table inet spa");
    assert!(lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 22), SEC), "the lab does not show the hole");
    let ev = b.gate.check(now(), &mut b.journal);
    assert!(
        matches!(ev.as_slice(), [Event::Tampered { detail }, Event::Repaired { live: 1 }] if detail.contains("is gone")),
        "{ev:?}"
    );
    assert!(!lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 22), SEC), "protection not rebuilt");
    assert!(lab.client.tcp_connects(addr(Lab::GW4, 22), SEC), "the live grant was not put back");
    // A grant made while the table is gone: noticed on the failing change, rebuilt, granted.
    lab.gw.sh("nft flush ruleset");
    let ev = b.gate.grant(grant(2, Lab::CLIENT6, &["tcp/22"], None, 60), now(), &mut b.journal);
    assert!(
        matches!(ev.as_slice(), [Event::Tampered { .. }, Event::Repaired { live: 1 }, Event::Granted(_)]),
        "{ev:?}"
    );
    assert!(lab.client.tcp_connects(addr(Lab::GW6, 22), SEC));
    assert!(!lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER6, 22), SEC));
}

#[test]
fn a_changed_rule_or_protected_port_is_noticed() {
    let lab = Lab::new("nfk");
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let mut b = backend(&lab, config(&["tcp/22"]));
    b.prepare(&[]).unwrap();
    // Someone takes tcp/22 out of the protection: open to all.
    lab.gw.sh("nft delete element inet spa protect '{ tcp . 22 }'");
    assert!(lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 22), SEC));
    let ev = b.gate.check(now(), &mut b.journal);
    assert!(
        matches!(ev.as_slice(), [Event::Tampered { detail }, Event::Repaired { .. }] if detail.contains("set protect elements changed")),
        "{ev:?}"
    );
    assert!(!lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 22), SEC));
    // Someone replaces the drop with an accept.
    lab.gw.sh("nft flush chain inet spa input && nft add rule inet spa input accept");
    let ev = b.gate.check(now(), &mut b.journal);
    assert!(
        matches!(ev.as_slice(), [Event::Tampered { detail }, Event::Repaired { .. }] if detail.contains("rules of chain input changed")),
        "{ev:?}"
    );
    assert!(!lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 22), SEC));
    // Our own grants move the generation too, without a false alarm.
    for i in 0..5 {
        b.grant(&grant(10 + i, &format!("10.201.9.{i}"), &["tcp/22"], None, 60)).unwrap();
    }
    assert!(b.gate.check(now(), &mut b.journal).is_empty());
}

#[test]
fn the_backend_keeps_the_contract() {
    spa_e2e::require_root();
    let gw = std::rc::Rc::new(Netns::new("nfc"));
    let ns = gw.clone();
    contract(ContractSetup {
        make: Box::new(move || nft_in(&ns, config(&["tcp/22"]))),
        observe: None,
        source4: "192.0.2.1",
        source6: Some("2001:db8::1"),
        dnat4: Some("10.0.0.2"),
    });
    drop(gw);
}

fn nmap_state(lab: &Lab) -> String {
    let out = lab
        .attacker
        .cmd("nmap")
        .args(["-Pn", "-sS", "-n", "--max-retries", "1", "-p", "22", Lab::GW_ATTACKER4])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line =
        text.lines().find(|l| l.starts_with("22/tcp")).unwrap_or_else(|| panic!("no port line in {text}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

#[test]
fn nmap_sees_the_protected_port_filtered_before_and_after_a_grant() {
    let lab = Lab::new("nfn");
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let mut b = backend(&lab, config(&["tcp/22"]));
    b.prepare(&[]).unwrap();
    assert_eq!(nmap_state(&lab), "filtered");
    b.grant(&grant(1, Lab::CLIENT4, &["tcp/22"], None, 30)).unwrap();
    assert!(lab.client.tcp_connects(addr(Lab::GW4, 22), SEC));
    assert_eq!(nmap_state(&lab), "filtered");
    b.teardown().unwrap();
    assert_eq!(nmap_state(&lab), "open", "the scan itself does not work");
}

/// The documented integration, loaded as shipped.
const ADMIN_TABLE: &str = include_str!("../../conf/nft/admin-example.nft");

fn load(ns: &Netns, script: &str) {
    let mut child = ns.cmd("nft").args(["-f", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft -f - failed for {script}");
}

#[test]
fn admin_default_drop_table_accepts_our_mark() {
    let lab = Lab::new("nfm");
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    let _srv = peer_echo_server(&lab.internal, 22);
    load(&lab.gw, ADMIN_TABLE);

    // Without the mark our accept is not final: the admin's drop policy still applies.
    let mut b = backend(&lab, config(&["tcp/22"]));
    b.prepare(&[]).unwrap();
    b.grant(&grant(1, Lab::CLIENT4, &["tcp/22"], None, 30)).unwrap();
    assert!(!lab.client.tcp_connects(addr(Lab::GW4, 22), SEC), "admin drop policy bypassed without the mark");

    let mut b = backend(&lab, NftConfig { mark: Some(0x100), ..config(&["tcp/22"]) });
    b.prepare(&[]).unwrap();
    b.grant(&grant(1, Lab::CLIENT4, &["tcp/22"], None, 30)).unwrap();
    b.grant(&grant(
        2,
        Lab::CLIENT4,
        &["tcp/2222"],
        Some(Nat::Dnat { to: Lab::INTERNAL4.parse().unwrap(), port: Some(22), snat: None }),
        30,
    ))
    .unwrap();
    assert_eq!(banner(&lab.client, addr(Lab::GW4, 22)).as_deref(), Some("gw-ssh"));
    assert_eq!(banner(&lab.client, addr(Lab::GW4, 2222)).as_deref(), Some(Lab::CLIENT4));
    assert!(!lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 22), SEC));
    assert_eq!(banner(&lab.attacker, addr(Lab::GW_ATTACKER4, 2222)), None);
    // The admin's table is untouched by everything we did.
    let admin = String::from_utf8(
        lab.gw.cmd("nft").args(["list", "table", "inet", "admin"]).output().unwrap().stdout,
    )
    .unwrap();
    assert!(admin.contains("policy drop") && admin.contains("meta mark & 0x00000100 == 0x00000100 accept"));
}

#[test]
fn the_registry_builds_it_by_name() {
    let reg = spa_backends::Registry::collect().unwrap();
    assert!(reg.names().contains(&"nft"));
    let table: toml::Table = "table = \"gate\"\nprotect = [\"tcp/22\"]".parse().unwrap();
    let b = reg.create("nft", &table).unwrap();
    assert_eq!(b.name(), "nft");
    assert!(b.capabilities().exact_prepare && b.capabilities().atomic_apply);
    assert!(b.capabilities().native_expiry && b.capabilities().nat && b.capabilities().ipv6);
    assert!(reg.create("nft", &"protect = [\"tcp/99999\"]".parse().unwrap()).is_err());
}

#[test]
fn the_boot_snippet_protects_until_spad_takes_over() {
    let lab = Lab::new("nfz");
    let _ssh = lab.gw.tcp_server(22, "gw-ssh");
    assert!(lab.client.tcp_connects(addr(Lab::GW4, 22), SEC), "the lab itself does not work");
    load(&lab.gw, include_str!("../../conf/nft/spa-protect.nft"));
    assert!(!lab.client.tcp_connects(addr(Lab::GW4, 22), SEC), "boot snippet does not protect");
    assert!(!lab.client.tcp_connects(addr(Lab::GW6, 22), SEC), "boot snippet does not protect IPv6");
    let mut b = backend(&lab, config(&["tcp/22"]));
    b.prepare(&[]).unwrap();
    b.grant(&grant(1, Lab::CLIENT4, &["tcp/22"], None, 30)).unwrap();
    assert!(lab.client.tcp_connects(addr(Lab::GW4, 22), SEC));
    assert!(!lab.attacker.tcp_connects(addr(Lab::GW_ATTACKER4, 22), SEC));
}

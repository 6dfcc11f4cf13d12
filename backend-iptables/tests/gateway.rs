//! End-to-end: the backend, driven by the grant ledger exactly as the daemon drives it (a
//! `Gate`), runs real iptables and ipset inside the gateway namespace of a `GatewayLab`, once
//! with iptables-nft and once with iptables-legacy, and real TCP connections check what a user
//! would check. Also here: the backend contract suite against real iptables, and tamper tests
//! that play the careless admin.
//!
//! The backend runs every program through `ip netns exec <gw>` (its hidden command-prefix
//! constructor) rather than entering the namespace with `setns` on a thread: the test process
//! and its other threads stay in the host namespace, both variants run in parallel without
//! sharing a thread's namespace state, and the argv path is the same as in production, only
//! prefixed. The cost is one extra `ip` exec per program (in the same process: `ip` execs the
//! program, so the exec counts below count it once), which the timings below include.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spa_backend_iptables::{Config, IptablesBackend, Variant};
use spa_backends::testkit::{ContractSetup, MemoryJournal, contract};
use spa_backends::{
    Access, BackendError, Driver, EndKind, Event, Gate, Grant, GrantId, Nat, Observed, Record, Snat, State,
};
use spa_e2e::{Background, GatewayLab, Netns, require_root};

const SSH: u16 = 22;
const T: Duration = Duration::from_secs(2);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn grant(id: u64, source: &str, ports: &[&str], nat: Option<Nat>, secs: u64) -> Grant {
    Grant {
        id: GrantId(id),
        source: source.parse().unwrap(),
        source_port: None,
        packet_source: source.parse().unwrap(),
        destination: None,
        access: Access::Ports(ports.iter().map(|p| p.parse().unwrap()).collect()),
        nat: nat.map(Box::new),
        created: now(),
        deadline: now() + secs,
        stanza: "test".into(),
        username: "u".into(),
        ingress: None,
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    GatewayLab::addr(ip, port)
}

/// A TCP echo server (so an established connection can be proven alive later).
fn echo_server(ns: &Netns, port: u16) -> Background {
    let bg = ns.spawn(
        ns.cmd("socat")
            .args([&format!("TCP6-LISTEN:{port},reuseaddr,fork,ipv6only=0"), "EXEC:cat"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let start = Instant::now();
    while !ns.sh_ok(&format!("ss -Hltn 'sport = :{port}' | grep -q LISTEN")) {
        assert!(start.elapsed() < Duration::from_secs(5), "echo server on {port} did not start");
        thread::sleep(Duration::from_millis(20));
    }
    bg
}

/// One long-lived connection to an echo server.
struct EchoClient {
    _proc: Background,
    input: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl EchoClient {
    fn connect(ns: &Netns, to: SocketAddr) -> Self {
        let mut child = ns
            .cmd("socat")
            .args(["-", &format!("TCP:{}:{},connect-timeout=2", to.ip(), to.port())])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { _proc: Background(Some(child)), input, lines }
    }

    /// Whether `msg` comes back (safety limit 5 s).
    fn echoes(&mut self, msg: &str) -> bool {
        if writeln!(self.input, "{msg}").and_then(|()| self.input.flush()).is_err() {
            return false;
        }
        self.lines.recv_timeout(Duration::from_secs(5)).is_ok_and(|l| l == msg)
    }
}

/// What a server at `to` says first, if a connection works.
fn banner(ns: &Netns, to: SocketAddr) -> Option<String> {
    let host = match to.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let out = ns
        .cmd("socat")
        .args(["-t", "2", "-T", "3", "-", &format!("TCP:{host}:{},connect-timeout=2", to.port())])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn sh(ns: &Netns, script: &str) -> String {
    ns.sh(script)
}

/// Every iptables and ip6tables rule and chain of variant `name` in `ns`, without counters
/// (traffic changes those; only a change made by a program shows here).
fn rules(ns: &Netns, name: &str) -> String {
    let dump = sh(ns, &format!("iptables-{name}-save; ip6tables-{name}-save"));
    dump.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The rules of one of our chains, as `iptables-<name>-save` prints them.
fn chain_rules(ns: &Netns, name: &str, table: &str, chain: &str) -> Vec<String> {
    sh(ns, &format!("iptables-{name}-save -t {table}"))
        .lines()
        .filter(|l| l.starts_with(&format!("-A {chain} ")))
        .map(str::to_owned)
        .collect()
}

/// Waits until `cond` holds, at most `limit`; returns whether it did.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

fn config(variant: Variant) -> Config {
    Config { protect: vec!["tcp/22".parse().unwrap()], variant, ..Config::default() }
}

fn backend_in(ns: &Netns, config: Config) -> IptablesBackend {
    let prefix = ["ip", "netns", "exec", ns.name()].map(str::to_owned).to_vec();
    IptablesBackend::with_command_prefix(config, prefix)
}

/// The backend in its gate, with the calls these tests make (each at the wall-clock time).
struct B {
    gate: Gate<IptablesBackend>,
    journal: MemoryJournal,
}

impl B {
    fn new(gw: &Netns, variant: Variant) -> Self {
        Self { gate: Gate::new(backend_in(gw, config(variant))), journal: MemoryJournal::default() }
    }

    /// A daemon start with `live` on record.
    fn prepare(&mut self, live: &[Grant]) -> Result<Vec<Event>, BackendError> {
        let records = live.iter().map(|g| Record { grant: g.clone(), state: State::Live }).collect();
        self.gate.start(records, now(), &mut self.journal)
    }

    fn grant(&mut self, g: &Grant) -> Vec<Event> {
        self.gate.grant(g.clone(), now(), &mut self.journal)
    }

    fn revoke(&mut self, id: GrantId) -> Vec<Event> {
        self.gate.revoke(id, now(), &mut self.journal)
    }

    fn check(&mut self, at: u64) -> Vec<Event> {
        self.gate.check(at, &mut self.journal)
    }

    fn list(&mut self) -> Vec<Observed> {
        self.gate.observe(now()).expect("observe")
    }

    fn execs(&self) -> u64 {
        self.gate.backend().exec_count()
    }

    fn variant(&self) -> Option<Variant> {
        self.gate.backend().variant()
    }
}

/// Asserts that a call went through: granted, extended, re-knocked or ended.
#[track_caller]
fn ok(events: &[Event]) {
    assert!(
        matches!(
            events,
            [Event::Granted(_) | Event::Extended(_) | Event::Reknocked(_) | Event::Ended { .. }]
        ),
        "{events:?}"
    );
}

fn binaries_exist(variant: &str) {
    for b in [
        format!("iptables-{variant}-restore"),
        format!("iptables-{variant}-save"),
        format!("ip6tables-{variant}-restore"),
        format!("ip6tables-{variant}-save"),
        "ipset".to_owned(),
    ] {
        let found = Command::new("sh")
            .args(["-c", "command -v \"$1\"", "sh", &b])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(found, "{b} is missing (Debian 12 package iptables / ipset)");
    }
}

fn dnat(to: &str, port: u16, snat: Option<Snat>) -> Option<Nat> {
    Some(Nat::Dnat { to: to.parse().unwrap(), port: Some(port), snat })
}

fn scenario(variant: Variant, name: &str, other: &str, ns_prefix: &str) {
    require_root();
    binaries_exist(name);
    let lab = GatewayLab::new(ns_prefix);
    let gw = &lab.gw;
    let _gw_echo = echo_server(gw, SSH);
    let _internal = lab.internal.tcp_server(SSH, "internal");
    let _local = lab.gw.tcp_server(2022, "gw-local");

    // Open before we start: everything reaches the gateway.
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW4, SSH), T));

    let mut b = B::new(gw, variant);
    b.prepare(&[]).expect("prepare");
    assert_eq!(b.variant(), Some(variant));
    let save = format!("iptables-{name}-save; ip6tables-{name}-save");
    assert!(sh(gw, &save).contains(":SPA_INPUT"), "chains are made with iptables-{name}");
    let other_save = format!("iptables-{other}-save; ip6tables-{other}-save");
    assert!(!sh(gw, &other_save).contains("SPA_"), "iptables-{other} is never used");

    // Protected: nobody gets in, on IPv4 or IPv6.
    assert!(!lab.client.tcp_connects(addr(GatewayLab::GW4, SSH), T));
    assert!(!lab.attacker.tcp_connects(addr(GatewayLab::GW4, SSH), T));
    assert!(!lab.client.tcp_connects(addr(GatewayLab::GW6, SSH), T));
    // Other ports are not ours to close.
    assert_eq!(banner(&lab.attacker, addr(GatewayLab::GW4, 2022)).as_deref(), Some("gw-local"));

    // A plain grant (short window): the client only. It costs one process, an `ipset`
    // restore, and leaves the rules exactly as they were (checked once the window is used:
    // it is short).
    let g1 = grant(1, GatewayLab::CLIENT4, &["tcp/22"], None, 3);
    let rules_before = rules(gw, name);
    assert!(rules_before.contains("-j SPA_INPUT"), "{rules_before}");
    let (execs, start) = (b.execs(), Instant::now());
    ok(&b.grant(&g1));
    let (took, n) = (start.elapsed(), b.execs() - execs);
    eprintln!("[{name}] plain grant: {took:?}, {n} process(es) (each via ip netns exec)");
    assert_eq!(n, 1, "a plain grant is one batched process");
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW4, SSH), T), "granted client gets in");
    assert!(!lab.attacker.tcp_connects(addr(GatewayLab::GW4, SSH), T), "attacker still cannot");
    let mut established = EchoClient::connect(&lab.client, addr(GatewayLab::GW4, SSH));
    assert!(established.echoes("during the window"));
    assert_eq!(rules(gw, name), rules_before, "a plain grant runs no iptables");

    // A plain grant and its revoke: one `ipset` restore each, no iptables process.
    let g9 = grant(9, GatewayLab::CLIENT4, &["udp/53"], None, 60);
    let entry = format!("{},udp:53", GatewayLab::CLIENT4);
    let execs = b.execs();
    ok(&b.grant(&g9));
    assert_eq!(b.execs() - execs, 1, "a plain grant is one process");
    assert!(sh(gw, "ipset list spa4").contains(&entry));
    let execs = b.execs();
    ok(&b.revoke(g9.id));
    assert_eq!(b.execs() - execs, 1, "a plain revoke is one process");
    assert!(!sh(gw, "ipset list spa4").contains(&entry), "revoked entry is gone");
    assert_eq!(rules(gw, name), rules_before, "a plain grant and revoke run no iptables");

    // DNAT to the internal host, client only: one iptables-restore; measured.
    let g2 = grant(
        2,
        GatewayLab::CLIENT4,
        &["tcp/2222"],
        dnat(GatewayLab::INTERNAL4, SSH, Some(Snat::Masquerade)),
        60,
    );
    let (execs, start) = (b.execs(), Instant::now());
    ok(&b.grant(&g2));
    let (took, n) = (start.elapsed(), b.execs() - execs);
    eprintln!("[{name}] DNAT grant: {took:?}, {n} process(es)");
    assert_eq!(n, 1, "a NAT grant is one iptables-restore");
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2222)).as_deref(), Some("internal"));
    assert_eq!(banner(&lab.attacker, addr(GatewayLab::GW4, 2222)), None);
    assert_eq!(banner(&lab.attacker, addr(GatewayLab::GW_ATTACKER4, 2222)), None);

    // IPv6.
    let g3 = grant(3, GatewayLab::CLIENT6, &["tcp/22"], None, 60);
    ok(&b.grant(&g3));
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW6, SSH), T), "IPv6 client gets in");
    assert!(!lab.attacker.tcp_connects(addr(GatewayLab::GW6, SSH), T), "IPv6 attacker cannot");

    // IPv6 DNAT (ip6tables nat), client only.
    let g8 = grant(8, GatewayLab::CLIENT6, &["tcp/2222"], dnat(GatewayLab::INTERNAL6, SSH, None), 60);
    ok(&b.grant(&g8));
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW6, 2222)).as_deref(), Some("internal"));
    assert_eq!(banner(&lab.attacker, addr(GatewayLab::GW6, 2222)), None);
    ok(&b.revoke(g8.id));
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW6, 2222)), None);

    // The window of g1 closes in the kernel, with no call from us: new connections fail,
    // the established one lives on. The ledger's expiry then changes nothing.
    assert!(
        eventually(Duration::from_secs(10), || !lab.client.tcp_connects(addr(GatewayLab::GW4, SSH), T)),
        "the plain grant never expired"
    );
    assert!(g1.deadline <= now(), "closed only once the deadline passed");
    assert!(established.echoes("after the window"), "established connection was cut");
    let execs = b.execs();
    let ev = b.gate.tick(now(), &mut b.journal);
    assert!(matches!(ev.as_slice(), [Event::Ended { why: EndKind::Expire, .. }]), "{ev:?}");
    assert_eq!(b.execs(), execs, "the expiry of a set member runs nothing");

    // Shared: two grants of the client need tcp/22; revoking the longer one hands the member
    // to the shorter one (re-timed, re-tagged), in one process.
    let s1 = grant(11, GatewayLab::CLIENT4, &["tcp/22"], None, 30);
    let s2 = grant(12, GatewayLab::CLIENT4, &["tcp/22", "udp/53"], None, 90);
    ok(&b.grant(&s1));
    ok(&b.grant(&s2));
    let member = format!("ipset spa4 {},tcp:22", GatewayLab::CLIENT4);
    let held = |b: &mut B| b.list().into_iter().filter(|o| o.entry == member).collect::<Vec<_>>();
    assert!(
        matches!(held(&mut b).as_slice(), [o] if o.holder == Some(s2.id) && o.until == Some(s2.deadline))
    );
    let execs = b.execs();
    ok(&b.revoke(s2.id));
    assert_eq!(b.execs() - execs, 1);
    assert!(
        matches!(held(&mut b).as_slice(), [o] if o.holder == Some(s1.id) && o.until == Some(s1.deadline))
    );
    assert!(
        lab.client.tcp_connects(addr(GatewayLab::GW4, SSH), T),
        "revoking one grant closed another's port"
    );
    assert!(!sh(gw, "ipset list spa4").contains(&entry), "the udp/53 member only s2 needed stays");
    ok(&b.revoke(s1.id));
    assert!(!lab.client.tcp_connects(addr(GatewayLab::GW4, SSH), T));

    // Re-knock (a new packet, a new id, the same access, later): the live grant is extended,
    // each rule and member re-tagged in place, never duplicated; one process each.
    let g2b = Grant { id: GrantId(21), deadline: g2.deadline + 120, ..g2.clone() };
    let execs = b.execs();
    let ev = b.grant(&g2b);
    assert!(matches!(ev.as_slice(), [Event::Extended(g)] if g.id == g2.id), "{ev:?}");
    assert_eq!(b.execs() - execs, 1, "a NAT re-knock is one iptables-restore");
    let g3b = Grant { id: GrantId(31), deadline: g3.deadline + 120, ..g3.clone() };
    ok(&b.grant(&g3b));
    let execs = b.execs();
    let ev = b.grant(&g3b);
    assert!(matches!(ev.as_slice(), [Event::Reknocked(_)]), "{ev:?}");
    assert_eq!(b.execs(), execs, "a re-knock that moves nothing runs nothing");
    let owned = b.list();
    let of = |id: GrantId| owned.iter().filter(|o| o.holder == Some(id)).collect::<Vec<_>>();
    assert_eq!(of(g2.id).len(), 3, "DNAT + forward + masquerade, once each: {owned:#?}");
    assert!(of(g2.id).iter().all(|o| o.until == Some(g2b.deadline)), "re-tagged: {owned:#?}");
    assert_eq!(of(g3.id).len(), 1, "one set member: {owned:#?}");
    assert_eq!(of(g3.id)[0].until, Some(g3b.deadline));
    assert!(of(g2b.id).is_empty() && of(g3b.id).is_empty(), "re-knocks keep the first id: {owned:#?}");
    let spa6 = sh(gw, "ipset list spa6");
    assert_eq!(spa6.matches(GatewayLab::CLIENT6).count(), 1, "{spa6}");
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2222)).as_deref(), Some("internal"));

    // A local redirect and a plain grant, left behind by a "crash".
    let g4 = grant(4, GatewayLab::CLIENT4, &["tcp/8022"], Some(Nat::Redirect { port: SSH }), 60);
    ok(&b.grant(&g4));
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW4, 8022), T), "redirect works for the client");
    assert!(!lab.attacker.tcp_connects(addr(GatewayLab::GW4, 8022), T));
    let g5 = grant(5, GatewayLab::CLIENT4, &["tcp/22"], None, 60);
    ok(&b.grant(&g5));
    let recorded: Vec<Grant> = [g2.id, g3.id].iter().map(|id| b.journal.grants[id].clone()).collect();
    assert_eq!(recorded[0].deadline, g2b.deadline, "the journal holds the extension");

    // Crash: the process state is lost, the firewall keeps failing closed.
    drop(b);
    assert!(!lab.attacker.tcp_connects(addr(GatewayLab::GW4, SSH), T), "protection survives the daemon");

    // Restart with a record of g2 and g3 only (g4 and g5 stale): prepare keeps exactly those.
    let mut b = B::new(gw, Variant::Auto);
    b.prepare(&recorded).expect("prepare after restart");
    assert_eq!(b.variant(), Some(variant), "auto finds the variant in use");
    let owned = b.list();
    let ids: Vec<_> = owned.iter().filter_map(|o| o.holder).collect();
    assert!(!ids.contains(&g4.id) && !ids.contains(&g5.id), "stale gone: {owned:#?}");
    assert_eq!(ids.iter().filter(|i| **i == g2.id).count(), 3, "live kept: {owned:#?}");
    assert!(ids.contains(&g3.id), "live kept: {owned:#?}");
    assert!(owned.iter().all(|o| o.holder.is_some()), "only tagged entries: {owned:#?}");
    let hooks = sh(gw, &format!("iptables-{name} -S INPUT; iptables-{name} -t nat -S PREROUTING"));
    assert_eq!(hooks.matches("-j SPA_INPUT").count(), 1, "{hooks}");
    assert_eq!(hooks.matches("-j SPA_PREROUTING").count(), 1, "{hooks}");
    assert!(!lab.client.tcp_connects(addr(GatewayLab::GW4, 8022), T), "stale redirect gone");
    assert!(!lab.client.tcp_connects(addr(GatewayLab::GW4, SSH), T), "stale set member gone");
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2222)).as_deref(), Some("internal"));
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW6, SSH), T));

    // Revoke removes exactly one grant; a second revoke, or one of a grant not on record, is
    // nothing to do.
    ok(&b.revoke(g2.id));
    assert!(b.revoke(g2.id).is_empty());
    assert!(b.revoke(g4.id).is_empty());
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2222)), None);
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW6, SSH), T), "the other grant stays");
    assert!(b.list().iter().all(|o| o.holder != Some(g2.id)));

    // Rules changed behind our back: an admin flushes our nat chain (the grant's rules are
    // the ledger's business, not tamper), then the client re-knocks. The batch that replaces
    // the tagged rules fails; the backend deletes what is left by identity and re-inserts,
    // without duplicates.
    let g6 = grant(6, GatewayLab::CLIENT4, &["tcp/2223"], dnat(GatewayLab::INTERNAL4, SSH, None), 60);
    ok(&b.grant(&g6));
    sh(gw, &format!("iptables-{name} -t nat -F SPA_PREROUTING"));
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2223)), None, "flushed by hand");
    assert!(b.check(now() + 5).is_empty(), "a flushed grant rule is no damage to the setup");
    let g6b = Grant { id: GrantId(61), deadline: g6.deadline + 30, ..g6.clone() };
    let ev = b.grant(&g6b);
    assert!(matches!(ev.as_slice(), [Event::Extended(_)]), "re-knock after a hand flush: {ev:?}");
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2223)).as_deref(), Some("internal"));
    let tagged: Vec<_> = b.list().into_iter().filter(|o| o.holder == Some(g6.id)).collect();
    assert_eq!(tagged.len(), 2, "DNAT + forward, once each: {tagged:#?}");
    // A daemon that crashed between the re-knock and its journal write restarts with the
    // earlier deadline on record: its revoke still removes the rules (tagged with the later
    // one) by identity.
    let mut restarted = B::new(gw, variant);
    restarted.gate.adopt(vec![Record { grant: g6.clone(), state: State::Live }]);
    ok(&restarted.revoke(g6.id));
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2223)), None);
    assert!(b.list().iter().all(|o| o.holder != Some(g6.id)));

    // Teardown: nothing of ours is left, in either variant or in ipset.
    b.gate.teardown().expect("teardown");
    let all = sh(gw, &format!("{save}; {other_save}; ipset list -n"));
    assert!(!all.contains("SPA") && !all.contains("spa"), "left behind:\n{all}");
    assert!(lab.attacker.tcp_connects(addr(GatewayLab::GW4, SSH), T), "protection removed by teardown");
}

#[test]
fn gateway_with_iptables_nft() {
    scenario(Variant::Nft, "nft", "legacy", "ipn");
}

#[test]
fn gateway_with_iptables_legacy() {
    scenario(Variant::Legacy, "legacy", "nft", "ipl");
}

/// A DNAT re-knock replaces each of the grant's rules by itself with the new deadline in its
/// tag (one rule before and after, one process), and the expiry the ledger decides at the
/// deadline removes them all (the kernel does not expire rules).
#[test]
fn a_nat_reknock_retags_each_rule_in_place_and_expiry_removes_them() {
    require_root();
    binaries_exist("nft");
    let lab = GatewayLab::new("ipk");
    let gw = &lab.gw;
    let _internal = lab.internal.tcp_server(SSH, "internal");
    let mut b = B::new(gw, Variant::Nft);
    b.prepare(&[]).unwrap();
    let g = grant(
        1,
        GatewayLab::CLIENT4,
        &["tcp/2222"],
        dnat(GatewayLab::INTERNAL4, SSH, Some(Snat::Masquerade)),
        60,
    );
    ok(&b.grant(&g));
    let ours = |chain: &str| {
        let table = if chain == "SPA_FORWARD" { "filter" } else { "nat" };
        chain_rules(gw, "nft", table, chain)
    };
    let tag = |deadline: u64| format!("\"spa:id={}:exp={deadline}\"", g.id);
    for chain in ["SPA_PREROUTING", "SPA_FORWARD", "SPA_POSTROUTING"] {
        let r = ours(chain);
        assert!(matches!(r.as_slice(), [one] if one.contains(&tag(g.deadline))), "{chain}: {r:#?}");
    }
    let before = ours("SPA_PREROUTING");

    let later = Grant { id: GrantId(2), deadline: g.deadline + 100, ..g.clone() };
    let execs = b.execs();
    let ev = b.grant(&later);
    assert!(
        matches!(ev.as_slice(), [Event::Extended(x)] if x.id == g.id && x.deadline == later.deadline),
        "{ev:?}"
    );
    assert_eq!(b.execs() - execs, 1, "one iptables-restore");
    for chain in ["SPA_PREROUTING", "SPA_FORWARD", "SPA_POSTROUTING"] {
        let r = ours(chain);
        assert!(matches!(r.as_slice(), [one] if one.contains(&tag(later.deadline))), "{chain}: {r:#?}");
    }
    assert_eq!(
        ours("SPA_PREROUTING")[0].replace(&tag(later.deadline), &tag(g.deadline)),
        before[0],
        "the same rule, only its tag changed"
    );
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2222)).as_deref(), Some("internal"));

    // Nothing is due before the deadline; at it, the ledger ends the grant and its rules go.
    assert!(b.gate.tick(later.deadline - 1, &mut b.journal).is_empty());
    let ev = b.gate.tick(later.deadline, &mut b.journal);
    assert!(matches!(ev.as_slice(), [Event::Ended { why: EndKind::Expire, .. }]), "{ev:?}");
    for chain in ["SPA_PREROUTING", "SPA_FORWARD", "SPA_POSTROUTING"] {
        assert!(ours(chain).is_empty(), "{chain} still holds {:#?}", ours(chain));
    }
    assert!(b.journal.grants.is_empty() && b.gate.ledger().is_empty());
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2222)), None);
}

/// Checks at `t`, `t+1`, ... until something is reported (at most the default interval plus
/// one); returns the events and advances `t` past them.
fn check_until_reported(b: &mut B, t: &mut u64) -> Vec<Event> {
    for _ in 0..3 {
        let ev = b.check(*t);
        *t += 1;
        if !ev.is_empty() {
            return ev;
        }
    }
    Vec::new()
}

#[track_caller]
fn repaired(ev: &[Event], want: &str, live: usize) {
    assert!(
        matches!(ev, [Event::Tampered { detail }, Event::Repaired { live: n }] if detail == want && *n == live),
        "wanted Tampered({want}) + Repaired({live}): {ev:?}"
    );
}

/// The careless admin: flushes our input chain, unhooks it, does the same on ip6tables, then
/// reloads the whole firewall; and adds rules of their own elsewhere (no false alarm). Each
/// time the check names the damage, the protection is rebuilt and the live grants work.
fn tamper(variant: Variant, name: &str, prefix: &str) {
    require_root();
    binaries_exist(name);
    let lab = GatewayLab::new(prefix);
    let gw = &lab.gw;
    let _ssh = gw.tcp_server(SSH, "gw-ssh");
    let _internal = lab.internal.tcp_server(SSH, "internal");
    let attack4 = addr(GatewayLab::GW_ATTACKER4, SSH);
    let attack6 = addr(GatewayLab::GW_ATTACKER6, SSH);
    let mut b = B::new(gw, variant);
    let t0 = now();
    b.gate.start(Vec::new(), t0, &mut b.journal).unwrap();
    ok(&b.grant(&grant(1, GatewayLab::CLIENT4, &["tcp/22"], None, 600)));
    ok(&b.grant(&grant(2, GatewayLab::CLIENT6, &["tcp/22"], None, 600)));
    ok(&b.grant(&grant(3, GatewayLab::CLIENT4, &["tcp/2222"], dnat(GatewayLab::INTERNAL4, SSH, None), 600)));
    let live = 3;

    // The first check after a start lists; while nothing changes, the next ones cost no
    // process within the interval, and with iptables-nft none at all.
    let execs = b.execs();
    assert!(b.check(t0).is_empty(), "a fresh setup is intact");
    assert_eq!(b.execs() - execs, 3, "a full look: two saves and the set headers");
    let execs = b.execs();
    assert!(b.check(t0 + 1).is_empty());
    assert_eq!(b.execs(), execs, "within the interval, a check runs nothing");
    let execs = b.execs();
    assert!(b.check(t0 + 5).is_empty());
    let looked = b.execs() - execs;
    match variant {
        Variant::Nft => assert_eq!(looked, 0, "an unchanged nftables generation needs no listing"),
        _ => assert_eq!(looked, 3, "iptables-legacy lists once the interval passed"),
    }
    // Our own NAT grant moves the generation: no false alarm, and still no listing.
    ok(&b.grant(&grant(4, GatewayLab::CLIENT4, &["tcp/2223"], dnat(GatewayLab::INTERNAL4, SSH, None), 600)));
    let live = live + 1;
    let execs = b.execs();
    assert!(b.check(t0 + 10).is_empty(), "our own change is no tamper");
    if variant == Variant::Nft {
        assert_eq!(b.execs(), execs, "our own transactions are counted, not listed");
    }

    let mut t = t0 + 20;
    // `iptables -F SPA_INPUT`: the protected port is open to all.
    sh(gw, &format!("iptables-{name} -F SPA_INPUT"));
    assert!(lab.attacker.tcp_connects(attack4, T), "the lab does not show the hole");
    let ev = check_until_reported(&mut b, &mut t);
    repaired(&ev, "iptables SPA_INPUT: the DROP for tcp/22 is gone (and 3 more of its rules)", live);
    assert!(!lab.attacker.tcp_connects(attack4, T), "the attacker is not dropped again");
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW4, SSH), T), "the live grant was lost");
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2222)).as_deref(), Some("internal"));

    // `iptables -D INPUT -j SPA_INPUT`.
    t += 5;
    sh(gw, &format!("iptables-{name} -D INPUT -j SPA_INPUT"));
    assert!(lab.attacker.tcp_connects(attack4, T), "the lab does not show the hole");
    let ev = check_until_reported(&mut b, &mut t);
    repaired(&ev, "iptables INPUT no longer jumps to SPA_INPUT", live);
    assert!(!lab.attacker.tcp_connects(attack4, T));
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW4, SSH), T));

    // The same on ip6tables.
    t += 5;
    sh(gw, &format!("ip6tables-{name} -F SPA_INPUT"));
    assert!(lab.attacker.tcp_connects(attack6, T), "the lab does not show the hole");
    let ev = check_until_reported(&mut b, &mut t);
    repaired(&ev, "ip6tables SPA_INPUT: the DROP for tcp/22 is gone (and 3 more of its rules)", live);
    assert!(!lab.attacker.tcp_connects(attack6, T));
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW6, SSH), T));
    t += 5;
    sh(gw, &format!("ip6tables-{name} -D INPUT -j SPA_INPUT"));
    let ev = check_until_reported(&mut b, &mut t);
    repaired(&ev, "ip6tables INPUT no longer jumps to SPA_INPUT", live);
    assert!(!lab.attacker.tcp_connects(attack6, T));
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW6, SSH), T));

    // The admin's own rules elsewhere (before our jump too), a chain of theirs, NAT of
    // theirs: no false alarm, however often we look.
    sh(
        gw,
        &format!(
            "iptables-{name} -I INPUT 1 -s 10.9.9.9/32 -j DROP && iptables-{name} -N ADMIN && \
             iptables-{name} -A FORWARD -s 10.9.9.9/32 -j DROP && \
             ip6tables-{name} -t nat -A POSTROUTING -s fd00:9::/64 -j MASQUERADE"
        ),
    );
    for _ in 0..3 {
        t += 2;
        let ev = b.check(t);
        assert!(ev.is_empty(), "false alarm: {ev:?}");
    }

    // A firewall reload that flushes and deletes everything (ours included): a NAT grant
    // fails on the missing chains, the gate notices, rebuilds and grants.
    sh(
        gw,
        &format!(
            "for c in iptables-{name} ip6tables-{name}; do $c -F; $c -X; $c -t nat -F; $c -t nat -X; done"
        ),
    );
    assert!(lab.attacker.tcp_connects(attack4, T), "the lab does not show the hole");
    let ev =
        b.grant(&grant(5, GatewayLab::CLIENT4, &["tcp/2224"], dnat(GatewayLab::INTERNAL4, SSH, None), 600));
    assert!(
        matches!(ev.as_slice(), [Event::Tampered { .. }, Event::Repaired { live: n }, Event::Granted(_)] if *n == live),
        "{ev:?}"
    );
    assert!(!lab.attacker.tcp_connects(attack4, T));
    assert!(!lab.attacker.tcp_connects(attack6, T));
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2224)).as_deref(), Some("internal"));
    assert_eq!(banner(&lab.client, addr(GatewayLab::GW4, 2222)).as_deref(), Some("internal"));
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW6, SSH), T));
    t += 5;
    assert!(b.check(t).is_empty(), "intact after the rebuild");
}

#[test]
fn tampering_is_repaired_with_iptables_nft() {
    tamper(Variant::Nft, "nft", "ipt");
}

#[test]
fn tampering_is_repaired_with_iptables_legacy() {
    tamper(Variant::Legacy, "legacy", "ipu");
}

fn contract_with(variant: Variant, prefix: &str) {
    require_root();
    let ns = std::rc::Rc::new(Netns::new(prefix));
    let inner = ns.clone();
    contract(ContractSetup {
        make: Box::new(move || backend_in(&inner, config(variant))),
        observe: None,
        source4: "192.0.2.1",
        source6: Some("2001:db8::1"),
        dnat4: Some("10.0.0.2"),
    });
    // Nothing of ours is left after the suite's teardown.
    let left = ns.sh(
        "iptables-nft-save; ip6tables-nft-save; iptables-legacy-save; ip6tables-legacy-save; ipset list -n",
    );
    assert!(!left.contains("SPA") && !left.contains("spa"), "left behind:\n{left}");
}

#[test]
fn the_backend_keeps_the_contract_with_iptables_nft() {
    contract_with(Variant::Nft, "ipc");
}

#[test]
fn the_backend_keeps_the_contract_with_iptables_legacy() {
    contract_with(Variant::Legacy, "ipd");
}

/// The boot-time files of `conf/iptables/` load (sets first, then rules), close the port, and
/// spad starting after them adopts them: same variant, one hook per chain.
#[test]
fn boot_files_load_and_spad_adopts_them() {
    require_root();
    binaries_exist("legacy");
    let lab = GatewayLab::new("ipb");
    let gw = &lab.gw;
    let _server = gw.tcp_server(SSH, "gw");
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/iptables");
    // Load them with the legacy binaries, the system default being nft, so that `auto` must
    // find the variant from the rules rather than from `iptables -V`.
    gw.sh(&format!(
        "ipset -exist restore -file {conf}/spa-protect.ipset && \
         iptables-legacy-restore --noflush --wait=10 {conf}/spa-protect.rules.v4 && \
         ip6tables-legacy-restore --noflush --wait=10 {conf}/spa-protect.rules.v6"
    ));
    assert!(!lab.client.tcp_connects(addr(GatewayLab::GW4, SSH), T), "closed before spad runs");
    assert!(!lab.client.tcp_connects(addr(GatewayLab::GW6, SSH), T), "closed before spad runs");

    let mut b = B::new(gw, Variant::Auto);
    b.prepare(&[]).expect("prepare");
    assert_eq!(b.variant(), Some(Variant::Legacy));
    for t in ["iptables-legacy", "ip6tables-legacy"] {
        let hooks = sh(
            gw,
            &format!("{t} -S INPUT; {t} -S FORWARD; {t} -t nat -S PREROUTING; {t} -t nat -S POSTROUTING"),
        );
        assert_eq!(hooks.matches("-j SPA_").count(), 4, "{t}: one hook per chain:\n{hooks}");
    }
    assert!(!sh(gw, "iptables-nft-save; ip6tables-nft-save").contains("SPA_"));
    assert!(b.check(now()).is_empty(), "what the boot files and prepare make is intact");
    ok(&b.grant(&grant(7, GatewayLab::CLIENT4, &["tcp/22"], None, 60)));
    assert!(lab.client.tcp_connects(addr(GatewayLab::GW4, SSH), T));
    b.gate.teardown().expect("teardown");
}

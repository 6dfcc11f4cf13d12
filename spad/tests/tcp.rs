//! Knocks over TCP and HTTP (`[listen.tcp]`, fwknop's `ENABLE_TCP_SERVER` and
//! `ENABLE_SPA_OVER_HTTP`) end to end: the real fwknop client (`-P tcp`, `-P http`) and ours
//! knock a running spad in a lab's gateway, and the client reaches the protected port; junk,
//! idle connections and oversized requests from an attacker do not keep a knock out, and
//! nothing is ever written back to them.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use spa_e2e::GatewayLab;

mod support;
use support::{Daemon, is, spa_bin};

const KEY: &str = "spad-tcp-test-encryption-key-32!";
const HMAC_KEY: &str = "spad-tcp-test-hmac-key-0123456789abcdef0123456789";
/// The protected ports, one per way of knocking, so each knock is seen to open its own.
const PORTS: [u16; 4] = [22, 2201, 2202, 2203];

fn config(dir: &Path, backend: &str, tcp: &str) -> String {
    format!(
        r#"
[listen]
mode = "socket"
addresses = ["0.0.0.0:62201", "[::]:62201"]

[listen.tcp]
enable = true
addresses = ["0.0.0.0:62201", "[::]:62201"]
http = true
{tcp}

[firewall]
backend = "{backend}"
{backend_table}

[replay]
state_dir = "{dir}/state"

[log]
audit = "{dir}/audit.jsonl"
max_rejects_per_second = 1000

[[access]]
name = "clients"
source = "10.201.1.0/24, fd00:201:1::/64"
open_ports = ["tcp/22", "tcp/2201", "tcp/2202", "tcp/2203", "udp/53"]
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
fw_access_timeout = 120
"#,
        dir = dir.display(),
        backend_table = if backend == "nft" {
            "[firewall.nft]\nprotect = [\"tcp/22\", \"tcp/2201\", \"tcp/2202\", \"tcp/2203\"]"
        } else {
            ""
        },
    )
}

/// The real fwknop client in the client namespace, over `proto` (tcp or http).
fn fwknop(lab: &GatewayLab, home: &Path, proto: &str, port: &str) {
    let out = lab
        .client
        .cmd("fwknop")
        .env("HOME", home)
        .args(["-D", GatewayLab::GW4, "-P", proto, "-A", port, "-a", GatewayLab::CLIENT4])
        .args(["--use-hmac", "--key-rijndael", KEY, "--key-hmac", HMAC_KEY, "--no-save-args", "--no-rc-file"])
        .output()
        .unwrap();
    assert!(out.status.success(), "fwknop -P {proto}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Our client in the client namespace, over `proto`.
fn spa(lab: &GatewayLab, home: &Path, dest: &str, proto: &str, port: &str) {
    let out = lab
        .client
        .cmd(spa_bin().to_str().unwrap())
        .env("HOME", home)
        .args(["knock", "--no-rc-file", "-D", dest, "-P", proto, "-A", port, "-s"])
        .args(["--key-rijndael", KEY, "--key-hmac", HMAC_KEY])
        .output()
        .unwrap();
    assert!(out.status.success(), "spa -P {proto}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The grant `spad list --json` shows for `port`.
fn listed(d: &Daemon, port: &str) -> Value {
    d.listed()
        .into_iter()
        .find(|g| g["access"]["ports"] == serde_json::json!([port]))
        .unwrap_or_else(|| panic!("no grant for {port}: {:?}", d.listed()))
}

#[test]
fn fwknop_and_spa_knock_over_tcp_and_http_and_the_port_opens() {
    let lab = GatewayLab::new("tk1");
    let dir = tempfile::tempdir().unwrap();
    let _servers: Vec<_> = PORTS.iter().map(|p| lab.gw.tcp_server(*p, "service")).collect();
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), "nft", ""));
    d.wait_log("listening on tcp 0.0.0.0:62201 (also HTTP)");
    let short = Duration::from_secs(1);
    let at4 = |port| GatewayLab::addr(GatewayLab::GW4, port);
    let at6 = |port| GatewayLab::addr(GatewayLab::GW6, port);
    for p in PORTS {
        assert!(!lab.client.tcp_connects(at4(p), short), "tcp/{p} open before any knock");
    }

    // fwknop -P tcp: connect, write the packet, close.
    fwknop(&lab, dir.path(), "tcp", "tcp/22");
    assert!(lab.client.wait_tcp(at4(22), Duration::from_secs(10)).is_some(), "{}", d.log_text());
    // fwknop -P http: GET /<packet with - and _> HTTP/1.1.
    assert!(!lab.client.tcp_connects(at4(2201), short));
    fwknop(&lab, dir.path(), "http", "tcp/2201");
    assert!(lab.client.wait_tcp(at4(2201), Duration::from_secs(10)).is_some(), "{}", d.log_text());
    // Ours, over TCP and IPv6, then over HTTP.
    assert!(!lab.client.tcp_connects(at6(2202), short));
    spa(&lab, dir.path(), GatewayLab::GW6, "tcp", "tcp/2202");
    assert!(lab.client.wait_tcp(at6(2202), Duration::from_secs(10)).is_some(), "{}", d.log_text());
    assert!(!lab.client.tcp_connects(at4(2203), short));
    spa(&lab, dir.path(), GatewayLab::GW4, "http", "tcp/2203");
    assert!(lab.client.wait_tcp(at4(2203), Duration::from_secs(10)).is_some(), "{}", d.log_text());

    // Each was one grant, audited like a UDP knock; the attacker gets nothing.
    let grants: Vec<Value> = d.events().into_iter().filter(|e| is(e, "grant")).collect();
    assert_eq!(grants.len(), 4, "{grants:#?}");
    assert!(grants.iter().all(|g| g["stanza"] == "clients"), "{grants:#?}");
    for p in PORTS {
        assert!(!lab.attacker.tcp_connects(GatewayLab::addr(GatewayLab::GW_ATTACKER4, p), short));
    }
    // The grants know where the knocks came in: the gateway's address on the client side,
    // through its interface c0 (over IPv4 and IPv6).
    for (port, addr) in
        [("tcp/22", GatewayLab::GW4), ("tcp/2201", GatewayLab::GW4), ("tcp/2202", GatewayLab::GW6)]
    {
        let g = listed(&d, port);
        assert_eq!(g["ingress"], serde_json::json!({"addr": addr, "interface": "c0"}), "{g}");
    }
}

/// Opens a TCP connection from `from` (an address of the attacker) to the gateway.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.bind(&SocketAddr::new(from.parse().unwrap(), 0).into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(5)).unwrap();
    s.into()
}

/// Whether anything at all came back on `s` (it must not: spad answers nobody).
fn answered(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(n) => n > 0,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::ConnectionReset),
    }
}

#[test]
fn junk_idle_and_oversized_connections_do_not_keep_a_knock_out() {
    let lab = GatewayLab::new("tk2");
    let dir = tempfile::tempdir().unwrap();
    // A small table and a long deadline: the idle connections would hold it for the whole test.
    let limits = "max_connections = 8\nmax_connections_per_source = 2\nread_timeout_ms = 60000";
    let d = Daemon::start(&lab.gw, dir.path(), &config(dir.path(), "none", limits));
    d.wait_log("listening on tcp");
    // Each kind of abuse from addresses of its own, so none is refused for another's sake.
    let addrs: Vec<String> = (10..21).map(|i| format!("10.201.3.{i}")).collect();
    for a in &addrs {
        lab.attacker.ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"]);
    }
    let gw = GatewayLab::addr(GatewayLab::GW_ATTACKER4, 62201);
    let held = lab.attacker.run_in(move || {
        let mut held = Vec::new();
        // Junk, an HTTP request that is not a knock, and far too much.
        for (from, payload) in [
            (&addrs[0], b"junk that is not a packet".to_vec()),
            (&addrs[1], b"GET /index.html HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec()),
            (&addrs[2], vec![b'A'; 100_000]),
        ] {
            let mut s = connect_from(from, gw);
            let _ = s.write_all(&payload);
            let _ = s.shutdown(std::net::Shutdown::Write);
            held.push(s);
        }
        // One that sends half a request line and then nothing.
        let mut s = connect_from(&addrs[3], gw);
        s.write_all(b"GET /abc").unwrap();
        held.push(s);
        // Slowloris: more idle connections than the table holds, from seven sources, three
        // each (one more than a source may have).
        for a in &addrs[4..] {
            for _ in 0..3 {
                held.push(connect_from(a, gw));
            }
        }
        held
    });

    // The junk is refused and audited like junk over UDP.
    d.wait_event("too long", |e| is(e, "reject") && e["reason"] == "too_long");
    for (source, what) in [("10.201.3.10", "junk"), ("10.201.3.11", "a request that is no knock")] {
        d.wait_event(what, |e| is(e, "reject") && e["packet_source"] == source && e["reason"] == "too_short");
    }
    // A knock still gets in, over TCP and over HTTP.
    fwknop(&lab, dir.path(), "tcp", "tcp/22");
    let g = d.wait_event("grant", |e| is(e, "grant"));
    assert_eq!(g["allowed_source"], GatewayLab::CLIENT4);
    fwknop(&lab, dir.path(), "http", "udp/53");
    d.wait_event("grant over http", |e| is(e, "grant") && e["access"] == serde_json::json!(["udp/53"]));
    // Nobody was answered anything.
    let mut held = held;
    let answered: Vec<usize> =
        held.iter_mut().enumerate().filter_map(|(i, s)| answered(s).then_some(i)).collect();
    assert!(answered.is_empty(), "connections {answered:?} got an answer");
    // The daemon still runs and took no more than its table.
    assert!(d.log_text().contains("spad ready"));
}

//! Knock-and-connect bound to the client's source port, for real: two clients behind one NAT
//! address (a namespace that masquerades them), a gateway running spad with the nft or the
//! iptables backend in front of a TCP service, and a modern knock naming the source port.
//!
//! ```text
//! c1 10.210.1.2 ─┐
//!                ├─ nat (masquerade to 10.210.9.2) ── gw 10.210.9.1: spad, tcp/22 protected
//! c2 10.210.2.2 ─┘
//! ```
//!
//! What Linux NAT does with the port: masquerade keeps a connection's source port when the
//! public tuple (10.210.9.2:P -> gw:22) is free, and picks another port when it is taken. So
//! while client 1's connection from P is open, client 2 connecting from P leaves the NAT from
//! another port and is dropped like any other port; the grant lets in exactly one public
//! (address, port). (A host behind the same NAT that uses the public port P *before* client 1
//! does would get in: the binding narrows the opening to one port of the NAT address, which is
//! what a server can see; a NAT that never keeps ports makes the connection fail, closed.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use spa_e2e::{Background, Netns, link, require_root};
use spa_engine::modern::{ModernRequest, ServerSecretKey, UserSigningKey};
use spa_engine::{Proto, ProtoPort};

mod support;
use support::{Daemon, is, send_from, write_private};

const GW: &str = "10.210.9.1";
const NAT_PUBLIC: &str = "10.210.9.2";
/// The source port client 1 names in its knock and connects from.
const PORT: u16 = 40022;
/// How long a grant lasts (seconds).
const TIMEOUT: u64 = 6;

/// Two clients behind a masquerading NAT, and the gateway.
struct Lab {
    c1: Netns,
    c2: Netns,
    _nat: Netns,
    gw: Netns,
}

impl Lab {
    fn new(prefix: &str) -> Self {
        require_root();
        let c1 = Netns::new(&format!("{prefix}1"));
        let c2 = Netns::new(&format!("{prefix}2"));
        let nat = Netns::new(&format!("{prefix}n"));
        let gw = Netns::new(&format!("{prefix}g"));
        link(&c1, "eth0", &["10.210.1.2/24"], &nat, "l1", &["10.210.1.1/24"]);
        link(&c2, "eth0", &["10.210.2.2/24"], &nat, "l2", &["10.210.2.1/24"]);
        link(&nat, "wan0", &["10.210.9.2/24"], &gw, "n0", &["10.210.9.1/24"]);
        c1.ip(&["route", "add", "default", "via", "10.210.1.1"]);
        c2.ip(&["route", "add", "default", "via", "10.210.2.1"]);
        nat.ip(&["route", "add", "default", "via", GW]);
        nat.sysctl("net.ipv4.ip_forward", "1");
        let out = nat
            .cmd("nft")
            .args([
                "add table ip lab; add chain ip lab post { type nat hook postrouting priority srcnat; }; \
                 add rule ip lab post oifname \"wan0\" masquerade",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "nat: {}", String::from_utf8_lossy(&out.stderr));
        Self { c1, c2, _nat: nat, gw }
    }
}

/// An echo service on the gateway's tcp/22 (every connection gets back what it sends).
fn echo_server(gw: &Netns) -> Background {
    let bg = gw.spawn(
        gw.cmd("socat")
            .args(["TCP4-LISTEN:22,reuseaddr,fork", "EXEC:cat"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let start = Instant::now();
    while !gw.sh_ok("ss -Hltn 'sport = :22' | grep -q LISTEN") {
        assert!(start.elapsed() < Duration::from_secs(5), "echo server did not start");
        thread::sleep(Duration::from_millis(20));
    }
    bg
}

/// A TCP connection from inside `ns` to the service, from local port `port` (`None`: any),
/// with an echo round trip; `None` when it cannot be made within two seconds (a firewall drop).
fn connect(ns: &Netns, port: Option<u16>) -> Option<TcpStream> {
    ns.run_in(move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.set_reuse_address(true).unwrap();
        if let Some(p) = port {
            s.bind(&SocketAddr::from(([0, 0, 0, 0], p)).into()).unwrap();
        }
        let to: SocketAddr = format!("{GW}:22").parse().unwrap();
        s.connect_timeout(&to.into(), Duration::from_secs(2)).ok()?;
        let stream: TcpStream = s.into();
        echoes(&stream).then_some(stream)
    })
}

/// Whether the connection still carries data both ways.
fn echoes(mut stream: &TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 5];
    stream.write_all(b"ping\n").is_ok() && stream.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
}

/// Closes a connection with a reset, so that neither end keeps its tuple in TIME_WAIT and the
/// same port can connect again at once.
fn reset(stream: TcpStream) {
    Socket::from(stream).set_linger(Some(Duration::ZERO)).unwrap();
}

/// The modern knock client 1 sends: tcp/22 for the packet's source, bound to `PORT`.
fn knock(user: &UserSigningKey, server: &ServerSecretKey) -> Vec<u8> {
    struct Os;
    impl spa_engine::Entropy for Os {
        fn fill(&mut self, buf: &mut [u8]) {
            getrandom::fill(buf).unwrap();
        }
    }
    let req = ModernRequest {
        allow: None,
        ports: vec![ProtoPort::new(Proto::Tcp, 22)],
        source_port: Some(PORT),
        nat: None,
        username: Some("alice".into()),
        client_timeout: None,
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    spa_engine::modern::seal(&req, user, &server.public_key(), now, &mut Os).unwrap().into_bytes()
}

fn write_config(dir: &Path, backend: &str, user: &UserSigningKey, server: &ServerSecretKey) {
    write_private(&dir.join("server.key"), &server.to_file());
    let text = format!(
        r#"[server]
key_file = "{dir}/server.key"
[listen]
addresses = ["0.0.0.0:62201"]
[firewall]
backend = "{backend}"
[firewall.{backend}]
protect = ["tcp/22"]
[replay]
state_dir = "{dir}/state"
[log]
audit = "{dir}/audit.jsonl"
[[access]]
name = "ops"
format = "modern"
source = "any"
open_ports = ["tcp/22"]
users = ["{key} alice"]
fw_access_timeout = {TIMEOUT}
"#,
        dir = dir.display(),
        key = user.public_key(),
    );
    write_private(&dir.join("spad.toml"), &text);
}

/// The whole story with one backend; `entry_present` says whether the firewall still holds the
/// grant's entry (an nft element expires in the kernel up to a second after spad's `expire`).
fn binds_the_grant_to_the_source_port(prefix: &str, backend: &str, entry_present: impl Fn(&Netns) -> bool) {
    let lab = Lab::new(prefix);
    let _echo = echo_server(&lab.gw);
    let dir = tempfile::tempdir().unwrap();
    let user = UserSigningKey::from_seed(&[0x5a; 32]);
    let server = ServerSecretKey::from_bytes(&[0x3c; 32]);
    write_config(dir.path(), backend, &user, &server);
    let d = Daemon::start_written(&lab.gw, dir.path());

    // Closed before the knock, from the port too.
    assert!(connect(&lab.c1, Some(PORT)).is_none(), "tcp/22 is open before any knock");

    send_from(&lab.c1, format!("{GW}:62201").parse().unwrap(), knock(&user, &server));
    let g = d.wait_event("grant", |e| is(e, "grant"));
    assert_eq!(g["allowed_source"], NAT_PUBLIC, "{g}");
    assert_eq!(g["source_port"], PORT, "{g}");
    let listed = d.listed();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["source_port"], PORT, "{listed:?}");

    // Client 2, same public address, any other port: dropped.
    assert!(connect(&lab.c2, Some(PORT + 1)).is_none(), "client 2 got in from another port");
    assert!(connect(&lab.c2, None).is_none(), "client 2 got in from an ephemeral port");
    // Client 1 from the named port: in.
    let held = connect(&lab.c1, Some(PORT)).expect("client 1 cannot connect from its port");
    assert!(entry_present(&lab.gw), "the firewall does not hold the grant bound to the port");
    // Client 2 from the same local port while client 1's connection holds the public tuple:
    // the NAT gives it another public port, which the grant does not cover.
    assert!(connect(&lab.c2, Some(PORT)).is_none(), "client 2 got in through the NAT from port {PORT}");
    // Client 1 from another port: not granted either.
    assert!(connect(&lab.c1, Some(PORT + 2)).is_none(), "client 1 got in from an unnamed port");

    // The grant ends; the established connection stays (conntrack), a new one is dropped.
    let id = g["id"].as_str().unwrap().to_owned();
    d.wait_event("expire", |e| is(e, "expire") && e["id"] == id.as_str());
    let start = Instant::now();
    while entry_present(&lab.gw) {
        assert!(start.elapsed() < Duration::from_secs(5), "the entry outlived its grant");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(echoes(&held), "the established connection was cut at the end of the window");
    reset(held);
    assert!(connect(&lab.c1, Some(PORT)).is_none(), "a new connection from port {PORT} got in after expiry");
}

#[test]
fn nft_binds_the_grant_to_the_source_port() {
    let element = format!("{NAT_PUBLIC} . tcp . {PORT} . 22");
    binds_the_grant_to_the_source_port("spn", "nft", move |gw| {
        gw.sh("nft list set inet spa allow_sport4").contains(&element)
    });
}

#[test]
fn iptables_binds_the_grant_to_the_source_port() {
    let rule = format!("-s {NAT_PUBLIC}/32 -p tcp -m tcp --sport {PORT} --dport 22");
    binds_the_grant_to_the_source_port("spi", "iptables", move |gw| {
        gw.sh("iptables-save -t filter").lines().any(|l| l.starts_with("-A SPA_INPUT") && l.contains(&rule))
    });
}

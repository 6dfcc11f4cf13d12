//! `spa-flood` from inside a network namespace: the datagrams arrive there, SPA-shaped, as
//! many as asked, and the report says so. Needs root; fails loudly without it.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use spa_e2e::{Netns, require_root};

#[test]
fn flood_sends_the_count_of_spa_shaped_junk_inside_the_namespace() {
    require_root();
    let ns = Netns::new("bnt");
    // A receiver inside the namespace, on loopback there.
    let name = ns.name().to_owned();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        spa_bench::netns::enter(&name).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        port_tx.send(sock.local_addr().unwrap().port()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    });
    let port = port_rx.recv().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spa-flood"))
        .args(["--netns", ns.name(), "--target", &format!("127.0.0.1:{port}"), "--count", "2000"])
        .args(["--rate", "20000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sent"], 2000);
    let got = receiver.join().unwrap();
    assert_eq!(got.len(), 2000, "every datagram arrived in the namespace");
    for p in &got {
        assert!((150..=250).contains(&p.len()), "length {}", p.len());
        assert!(p.iter().all(|b| spa_bench::junk::ALPHABET.contains(b)), "base64 alphabet only");
    }
    let distinct: std::collections::HashSet<&Vec<u8>> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "no datagram repeats");
}

#[test]
fn flood_refuses_to_run_without_an_end() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_spa-flood")).args(["--target", "127.0.0.1:9"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--duration"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! What spad reads off the wire, on real sockets in network namespaces: every datagram of a
//! batch is judged with its own bytes and its own source, also when the receiver skips frames
//! in the middle of a batch (outgoing frames, packets the parser refuses), and the kernel
//! filter of capture mode passes exactly unfragmented UDP to the SPA port.
//!
//! A receiver that paired the `i`-th kept datagram with buffer `i` verified, after a skipped
//! frame, every later datagram with another datagram's bytes: a victim's valid `-s` knock
//! followed by an attacker's junk of the same length granted the attacker. These tests catch
//! that at the receiver and at the daemon.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use spa_e2e::{GatewayLab, Netns, link, require_root};
use spad::receive::{Batch, CaptureReceiver, Meta, UdpReceiver, parse_ip_udp, udp_port_filter};

const PORT: u16 = 62201;
const KEY: &str = "spad-receive-test-encryption-key";
const HMAC_KEY: &str = "spad-receive-test-hmac-key-32byt";
const _: () = assert!(KEY.len() == 32 && HMAC_KEY.len() == 32);
/// Length of the labelled test datagrams (all equal, so every payload range is the same).
const LEN: usize = 96;

// ---- the lab -------------------------------------------------------------------------------

const R_ADDRS: [&str; 4] = ["10.88.0.1/24", "10.88.0.11/24", "fd00:88::1/64", "fd00:88::11/64"];
const P_ADDRS: [&str; 4] = ["10.88.0.2/24", "10.88.0.3/24", "fd00:88::2/64", "fd00:88::3/64"];

fn ip(s: &str) -> IpAddr {
    s.split('/').next().unwrap().parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A receiver namespace (`r0`, [`R_ADDRS`]) joined to a sender namespace (`p0`, [`P_ADDRS`]).
fn pair(prefix: &str) -> (Netns, Netns) {
    require_root();
    let r = Netns::new(&format!("{prefix}r"));
    let p = Netns::new(&format!("{prefix}p"));
    link(&r, "r0", &R_ADDRS, &p, "p0", &P_ADDRS);
    neighbours(&r, "r0", &R_ADDRS, &p, "p0", &P_ADDRS);
    (r, p)
}

fn mac(ns: &Netns, ifname: &str) -> String {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["address"].as_str().unwrap().to_owned()
}

/// Permanent neighbour entries both ways, so no burst waits in a neighbour queue (and no
/// resolution splits it).
fn neighbours(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) {
    for (ns, ifname, peer, peer_if, peer_addrs) in [(a, a_if, b, b_if, b_addrs), (b, b_if, a, a_if, a_addrs)]
    {
        let lladdr = mac(peer, peer_if);
        for addr in peer_addrs {
            let addr = ip(addr).to_string();
            ns.ip(&["neigh", "replace", &addr, "lladdr", &lladdr, "dev", ifname, "nud", "permanent"]);
        }
    }
}

// ---- crafted packets -----------------------------------------------------------------------

/// An IPv4 packet with `frag` as flags and fragment offset (the kernel fills in the header
/// checksum on an IP_HDRINCL socket).
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, frag: u16, proto: u8, l4: &[u8]) -> Vec<u8> {
    static ID: AtomicU16 = AtomicU16::new(1);
    let id = ID.fetch_add(1, Ordering::Relaxed);
    let total = u16::try_from(20 + l4.len()).unwrap();
    let mut p = vec![0x45, 0];
    p.extend(total.to_be_bytes());
    p.extend(id.to_be_bytes());
    p.extend(frag.to_be_bytes());
    p.extend([64, proto, 0, 0]);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(l4);
    p
}

/// The same packet with a 4-byte option word (NOP NOP NOP EOL): the UDP header moves.
fn with_ip_options(mut p: Vec<u8>) -> Vec<u8> {
    p[0] = 0x46;
    p.splice(20..20, [1, 1, 1, 0]);
    let total = u16::try_from(p.len()).unwrap();
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p
}

const MF: u16 = 0x2000;
const DF: u16 = 0x4000;

/// A UDP header (no checksum) and payload.
fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap();
    [&40000u16.to_be_bytes()[..], &dport.to_be_bytes(), &len.to_be_bytes(), &[0, 0], payload].concat()
}

/// UDP whose length field (4) is shorter than its header: the kernel filter passes it (it
/// checks only the port), the parser refuses it, so the receiver skips it in user space.
fn udp_bad_length(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = udp(dport, payload);
    u[4..6].copy_from_slice(&4u16.to_be_bytes());
    u
}

/// A TCP SYN carrying `payload`.
fn tcp_syn(dport: u16, payload: &[u8]) -> Vec<u8> {
    let head = [&40000u16.to_be_bytes()[..], &dport.to_be_bytes(), &[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02]];
    [&head.concat()[..], &[0xff, 0xff, 0, 0, 0, 0], payload].concat()
}

/// `text` padded with dots to [`LEN`] bytes.
fn padded(text: &str) -> Vec<u8> {
    let mut v = text.as_bytes().to_vec();
    v.resize(LEN.max(v.len()), b'.');
    v
}

/// A datagram that names its own source and destination: `<src>><dst> <tag>;` padded.
fn label(src: IpAddr, dst: IpAddr, tag: &str) -> Vec<u8> {
    padded(&format!("{src}>{dst} {tag};"))
}

/// The label of a received datagram (up to the `;`).
fn label_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.split_inclusive(';').next().unwrap_or_default().to_owned()
}

/// An IPPROTO_RAW socket (IP_HDRINCL) in the current namespace: we write the source address
/// and the fragment bits.
fn raw4() -> Socket {
    Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).unwrap()
}

fn send_raw(s: &Socket, packet: &[u8]) {
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let n = s.send_to(packet, &SockAddr::from(SocketAddr::new(dst.into(), 0))).unwrap();
    assert_eq!(n, packet.len());
}

fn bind_udp(addr: &str) -> UdpSocket {
    UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(self::ip(ip), port)
}

// ---- receiving -----------------------------------------------------------------------------

/// One received datagram, copied out of its batch.
struct Got {
    meta: Meta,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}>{} {:?}", self.meta.src, self.meta.dst, String::from_utf8_lossy(&self.bytes))
    }
}

/// A batch as the test sees it, with whether `payload(i)` agreed with `datagrams()`.
type Received = (Vec<Got>, bool);

/// A receiver on its own thread (`recv` blocks) that reads one batch each time it is asked,
/// so nothing is read while a test sends a burst: the burst then arrives in one batch.
struct Pump {
    ask: mpsc::Sender<()>,
    got: mpsc::Receiver<Received>,
}

fn pump(mut recv: impl FnMut(&mut Batch) -> std::io::Result<()> + Send + 'static) -> Pump {
    let (ask, asked) = mpsc::channel();
    let (tx, got) = mpsc::channel();
    thread::spawn(move || {
        let mut batch = Batch::new();
        while asked.recv().is_ok() && recv(&mut batch).is_ok() {
            let got: Vec<Got> = batch.datagrams().map(|(m, b)| Got { meta: *m, bytes: b.to_vec() }).collect();
            let agrees = got.len() == batch.metas.len()
                && got.iter().enumerate().all(|(i, g)| batch.payload(i) == g.bytes);
            if tx.send((got, agrees)).is_err() {
                break;
            }
        }
    });
    Pump { ask, got }
}

/// Batches until one holds a datagram whose label contains `sentinel`; each checked at once.
fn until(p: &Pump, sentinel: &str) -> Vec<Vec<Got>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut batches = Vec::new();
    loop {
        p.ask.send(()).unwrap();
        let left = deadline.saturating_duration_since(Instant::now());
        let (got, agrees) =
            p.got.recv_timeout(left).unwrap_or_else(|e| panic!("no {sentinel:?} ({e}); got {batches:#?}"));
        assert!(agrees, "payload(i) and datagrams() disagree: {got:#?}");
        let done = labels(&got).iter().any(|l| l.contains(sentinel));
        batches.push(got);
        if done {
            return batches;
        }
    }
}

/// The labels received, each checked to have come with the source and destination it names.
fn labels<'a>(batch: impl IntoIterator<Item = &'a Got>) -> BTreeSet<String> {
    batch
        .into_iter()
        .map(|g| {
            let l = label_of(&g.bytes);
            assert!(
                l.starts_with(&format!("{}>{} ", g.meta.src, g.meta.dst)),
                "datagram {l:?} was paired with source {} and destination {}",
                g.meta.src,
                g.meta.dst
            );
            l
        })
        .collect()
}

fn set(items: &[Vec<u8>]) -> BTreeSet<String> {
    items.iter().map(|b| label_of(b)).collect()
}

// ---- receivers -----------------------------------------------------------------------------

#[test]
fn capture_pairs_every_datagram_with_its_own_bytes_and_source_across_skipped_frames() {
    let (r, p) = pair("rxc");
    let rx = r.run_in(|| CaptureReceiver::open("r0", PORT).unwrap());
    let raw = p.run_in(raw4);
    let from_c = p.run_in(|| bind_udp("[fd00:88::3]:0"));
    // Sent by the receiving host itself: an outgoing frame to the SPA port on that interface.
    let outgoing = r.run_in(|| bind_udp("10.88.0.1:0"));
    let batches = pump(move |b| rx.recv(b));
    let (a, b, dst) = (v4("10.88.0.2"), v4("10.88.0.3"), v4("10.88.0.1"));
    let mut whole = 0;
    for round in 0..5 {
        let from_a = label(a.into(), dst.into(), &format!("a{round}"));
        let from_b = label(b.into(), dst.into(), &format!("b{round}"));
        let v6 = label(ip("fd00:88::3"), ip("fd00:88::1"), &format!("c{round}"));
        let end = label(a.into(), dst.into(), &format!("end{round}"));
        let skipped = |tag: &str| {
            outgoing.send_to(&padded(&format!("outgoing {tag}")), sock("10.88.0.2", PORT)).unwrap();
            send_raw(&raw, &ipv4(a, dst, MF, 17, &udp(PORT, &padded(&format!("first fragment {tag}")))));
            send_raw(
                &raw,
                &ipv4(a, dst, 0, 17, &udp_bad_length(PORT, &padded(&format!("bad length {tag}")))),
            );
        };
        // Frames to skip before, between and after the datagrams, all before one recv.
        skipped("1");
        send_raw(&raw, &ipv4(a, dst, 0, 17, &udp(PORT, &from_a)));
        skipped("2");
        send_raw(&raw, &ipv4(b, dst, 0, 17, &udp(PORT, &from_b)));
        skipped("3");
        from_c.send_to(&v6, sock("fd00:88::1", PORT)).unwrap();
        send_raw(&raw, &ipv4(a, dst, 0, 17, &udp(PORT, &end)));
        // Let the kernel queue the whole burst (nothing reads meanwhile), so one recvmmsg
        // reads it all.
        thread::sleep(Duration::from_millis(300));
        let got = until(&batches, &format!("end{round}"));
        assert_eq!(labels(got.iter().flatten()), set(&[from_a, from_b, v6, end]), "round {round}: {got:#?}");
        for g in got.iter().flatten() {
            assert_eq!((g.bytes.len(), g.meta.truncated), (LEN, false), "{g:?}");
        }
        whole += usize::from(got.len() == 1);
    }
    // Frames were skipped in the middle of a batch only if a burst arrived in one batch.
    assert!(whole > 0, "no burst arrived in a single batch");
}

#[test]
fn sockets_pair_every_datagram_with_its_own_source_destination_and_bytes() {
    let (r, p) = pair("rxu");
    let (rx4, rx6) = r.run_in(|| {
        (UdpReceiver::bind(sock("0.0.0.0", PORT)).unwrap(), UdpReceiver::bind(sock("::", PORT)).unwrap())
    });
    let senders: Vec<UdpSocket> = p.run_in(|| {
        ["10.88.0.2:0", "10.88.0.3:0", "[fd00:88::2]:0", "[fd00:88::3]:0"].into_iter().map(bind_udp).collect()
    });
    let (got4, got6) = (pump(move |b| rx4.recv(b)), pump(move |b| rx6.recv(b)));
    let dsts = R_ADDRS.map(ip);
    for round in 0..3 {
        for (family, got) in [(0, &got4), (2, &got6)] {
            let mut expect = Vec::new();
            let mut send = |k: usize, tag: String, bytes: &dyn Fn(Vec<u8>) -> Vec<u8>| {
                let (s, dst) = (&senders[family + k % 2], dsts[family + (k / 2) % 2]);
                let l = label(s.local_addr().unwrap().ip(), dst, &tag);
                s.send_to(&bytes(l.clone()), SocketAddr::new(dst, PORT)).unwrap();
                expect.push(l);
            };
            // Two sources to two destinations, interleaved.
            for k in 0..8 {
                send(k, format!("{round}.{k}"), &|l| l);
            }
            // Longer than a batch buffer: kept cut, and marked.
            send(1, format!("{round}.big"), &|l| [l, vec![b'x'; 3000]].concat());
            send(2, format!("end{round}"), &|l| l);
            let batches = until(got, &format!("end{round}"));
            assert_eq!(labels(batches.iter().flatten()), set(&expect), "{batches:#?}");
            for g in batches.iter().flatten() {
                if label_of(&g.bytes).contains("big") {
                    assert!(g.meta.truncated && g.bytes.len() < LEN + 3000, "{g:?}");
                    assert!(g.bytes[LEN..].iter().all(|&c| c == b'x'), "{g:?}");
                } else {
                    assert_eq!((g.bytes.len(), g.meta.truncated), (LEN, false), "{g:?}");
                }
            }
        }
    }
}

// ---- the kernel filter ---------------------------------------------------------------------

/// A bare AF_PACKET socket on `ifname` (current namespace) with spad's filter for `port`, or
/// with none; reads time out after 10 s.
fn packet_socket(ifname: &str, port: Option<u16>) -> Socket {
    let s = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0))).unwrap();
    if let Some(port) = port {
        s.attach_filter(&udp_port_filter(port)).unwrap();
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = CString::new(ifname).unwrap();
    // SAFETY: `name` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "no {ifname}");
    // SAFETY: all-zero is a valid sockaddr_ll; we fill family, protocol and ifindex.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = i32::try_from(ifindex).unwrap();
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: a valid fd and a sockaddr_ll of the stated size.
    let r = unsafe { libc::bind(s.as_raw_fd(), (&raw const sll).cast(), len) };
    assert_eq!(r, 0, "bind to {ifname}: {}", std::io::Error::last_os_error());
    s
}

/// Incoming frames (from the IP header on) read from `s` until one contains `sentinel`.
fn frames_until(s: &Socket, sentinel: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the buffer and the address have the stated sizes and outlive the call.
        let n = unsafe {
            libc::recvfrom(
                s.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut sll).cast(),
                &mut len,
            )
        };
        let n = usize::try_from(n).unwrap_or_else(|_| {
            let e = std::io::Error::last_os_error();
            panic!("no frame with {:?} ({e}); got {} frames", String::from_utf8_lossy(sentinel), frames.len())
        });
        if sll.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let frame = buf[..n].to_vec();
        let done = contains(&frame, sentinel);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_kernel_filter_passes_only_unfragmented_udp_to_the_port() {
    let (r, p) = pair("rxf");
    let (filtered, everything) = r.run_in(|| (packet_socket("r0", Some(PORT)), packet_socket("r0", None)));
    let raw = p.run_in(raw4);
    let (u4, u6) = p.run_in(|| (bind_udp("10.88.0.2:0"), bind_udp("[fd00:88::2]:0")));
    let (a, dst) = (v4("10.88.0.2"), v4("10.88.0.1"));
    let (to4, to6) = (sock("10.88.0.1", PORT), sock("fd00:88::1", PORT));
    let big = |tag: &str| [tag.as_bytes(), &[b'x'; 3000]].concat();

    let pass: Vec<&str> = vec!["pass v4 plain", "pass v4 df", "pass v4 options", "pass v6"];
    send_raw(&raw, &ipv4(a, dst, 0, 17, &udp(PORT, b"pass v4 plain")));
    send_raw(&raw, &ipv4(a, dst, DF, 17, &udp(PORT, b"pass v4 df")));
    send_raw(&raw, &with_ip_options(ipv4(a, dst, 0, 17, &udp(PORT, b"pass v4 options"))));
    u6.send_to(b"pass v6", to6).unwrap();

    let drop: Vec<&str> = vec![
        "drop v4 other port",
        "drop v4 tcp",
        "drop v4 first fragment",
        "drop v4 options first fragment",
        "drop v4 last fragment",
        "drop v4 middle fragment",
        "drop v4 fragmented datagram",
        "drop v6 other port",
        "drop v6 fragmented datagram",
    ];
    send_raw(&raw, &ipv4(a, dst, 0, 17, &udp(PORT + 1, b"drop v4 other port")));
    send_raw(&raw, &ipv4(a, dst, 0, 6, &tcp_syn(PORT, b"drop v4 tcp")));
    send_raw(&raw, &ipv4(a, dst, MF, 17, &udp(PORT, b"drop v4 first fragment")));
    let options_fragment = ipv4(a, dst, MF, 17, &udp(PORT, b"drop v4 options first fragment"));
    send_raw(&raw, &with_ip_options(options_fragment));
    // Later fragments whose data looks like a UDP header to the port.
    send_raw(&raw, &ipv4(a, dst, 0x10, 17, &udp(PORT, b"drop v4 last fragment")));
    send_raw(&raw, &ipv4(a, dst, MF | 0x10, 17, &udp(PORT, b"drop v4 middle fragment")));
    // Larger than the link MTU: the sending kernel fragments them.
    u4.send_to(&big("drop v4 fragmented datagram"), to4).unwrap();
    u6.send_to(b"drop v6 other port", sock("fd00:88::1", PORT + 1)).unwrap();
    u6.send_to(&big("drop v6 fragmented datagram"), to6).unwrap();
    p.run_in(move || {
        // TCP to the port over IPv6 (nothing listens: refused).
        assert!(TcpStream::connect_timeout(&to6, Duration::from_secs(5)).is_err());
    });
    send_raw(&raw, &ipv4(a, dst, 0, 17, &udp(PORT, b"pass end")));

    // Everything reached the interface...
    let all = frames_until(&everything, b"pass end");
    for tag in pass.iter().chain(&drop) {
        assert!(all.iter().any(|f| contains(f, tag.as_bytes())), "{tag:?} never reached r0");
    }
    // ...and exactly the unfragmented UDP datagrams to the port passed the filter.
    let passed: BTreeSet<String> = frames_until(&filtered, b"pass end")
        .iter()
        .map(|f| {
            let m = parse_ip_udp(f, PORT).unwrap_or_else(|| {
                panic!("passed but not UDP to the port: {:?}", String::from_utf8_lossy(f))
            });
            String::from_utf8_lossy(&f[m.range.0..m.range.1]).into_owned()
        })
        .collect();
    let expected: BTreeSet<String> = pass.iter().chain(&["pass end"]).map(|s| (*s).to_owned()).collect();
    assert_eq!(passed, expected);
}

// ---- the daemon ----------------------------------------------------------------------------

fn config(dir: &Path, listen: &str) -> String {
    // The stanza takes any source: a roaming client knocks with `-s`, so the attacker's
    // address is one the stanza would accept.
    format!(
        r#"{listen}

[firewall]
backend = "none"

[replay]
state_dir = "{dir}/state"

[log]
audit = "{dir}/audit.jsonl"
max_rejects_per_second = 1000

[control]
socket = "{dir}/control.sock"

[[access]]
name = "roaming"
source = "any"
open_ports = ["tcp/22"]
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
fw_access_timeout = 30
"#,
        dir = dir.display()
    )
}

/// A running spad in `gw`, killed on drop.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(gw: &Netns, listen: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spad.toml");
        std::fs::write(&path, config(dir.path(), listen)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut child = gw
            .cmd(env!("CARGO_BIN_EXE_spad"))
            .args(["--config", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        while !log.lock().unwrap().contains("spad ready") {
            let line =
                lines.next().unwrap_or_else(|| panic!("spad exited: {}", log.lock().unwrap())).unwrap();
            log.lock().unwrap().push_str(&(line + "\n"));
        }
        let rest = log.clone();
        thread::spawn(move || {
            lines.map_while(Result::ok).for_each(|l| rest.lock().unwrap().push_str(&(l + "\n")))
        });
        Self { child, dir, log }
    }

    /// Runs `send` while spad is stopped (SIGSTOP), so that its receiver finds the whole burst
    /// queued when it runs again and reads it in one batch, as it would under load.
    fn frozen(&self, send: impl FnOnce()) {
        let pid = i32::try_from(self.child.id()).unwrap();
        let tasks = format!("/proc/{pid}/task");
        let stopped = || {
            std::fs::read_dir(&tasks).unwrap().all(|t| {
                let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
            })
        };
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        let start = Instant::now();
        while !stopped() {
            assert!(start.elapsed() < Duration::from_secs(10), "spad did not stop");
            thread::sleep(Duration::from_millis(5));
        }
        send();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    }

    fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Waits until `n` knocks were accepted and `n` packets rejected, then checks that every
    /// accepted knock was the victim's and every reject the attacker's.
    fn judged_apart(&self, n: usize) {
        let is = |e: &Value, names: &[&str]| names.iter().any(|name| e["event"] == *name);
        let start = Instant::now();
        loop {
            let ev = self.events();
            let accepted = ev.iter().filter(|e| is(e, &["grant", "extend", "reknock"])).count();
            let rejected = ev.iter().filter(|e| is(e, &["reject", "reject_summary"])).count();
            if accepted >= n && rejected >= n {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "waiting for {n} accepts and {n} rejects; audit: {ev:#?}\nlog:\n{}",
                self.log.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
        let ev = self.events();
        for e in ev.iter().filter(|e| is(e, &["grant", "extend", "reknock"])) {
            assert_eq!(e["packet_source"], GatewayLab::CLIENT4, "{e}");
            assert_eq!(e["allowed_source"], GatewayLab::CLIENT4, "{e}");
        }
        for e in ev.iter().filter(|e| is(e, &["reject", "reject_summary"])) {
            assert_eq!(e["packet_source"], GatewayLab::ATTACKER4, "{e}");
        }
        assert_eq!(ev.iter().filter(|e| is(e, &["grant"])).count(), 1, "{ev:#?}");
        assert_eq!(ev.iter().filter(|e| is(e, &["grant", "extend", "reknock"])).count(), n, "{ev:#?}");
        assert_eq!(ev.iter().filter(|e| is(e, &["reject"])).count(), n, "{ev:#?}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh `-s` knock (allow address `0.0.0.0`: the packet's source) for tcp/22.
fn knock() -> Vec<u8> {
    use spa_engine::{DigestType, EncryptionKey, EncryptionMode, HmacKey, MessageType, SpaMessage, packet};
    struct Os;
    impl spa_engine::Entropy for Os {
        fn fill(&mut self, buf: &mut [u8]) {
            getrandom::fill(buf).unwrap();
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let msg = SpaMessage {
        random: spa_engine::random_value(&mut Os),
        username: "victim".into(),
        timestamp: now,
        version: "3.0.0".into(),
        message_type: MessageType::Access,
        message: "0.0.0.0,tcp/22".into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let key = EncryptionKey::new(KEY.as_bytes().to_vec()).unwrap();
    let hkey = HmacKey::new(HMAC_KEY.as_bytes().to_vec()).unwrap();
    let opts = packet::SealOptions {
        key: &key,
        mode: EncryptionMode::Cbc,
        digest: DigestType::Sha256,
        hmac: Some((&hkey, DigestType::Sha256)),
    };
    packet::seal(&msg, &opts, &mut Os).unwrap().into_bytes()
}

/// Junk of the knock's length that gets as far as the HMAC check.
fn junk(len: usize) -> Vec<u8> {
    b"QUJD".iter().copied().cycle().take(len).collect()
}

#[test]
fn capture_mode_never_grants_a_victims_knock_to_the_junk_behind_it() {
    let lab = GatewayLab::new("rxd");
    neighbours(&lab.client, "eth0", &["10.201.1.2/24"], &lab.gw, "c0", &["10.201.1.1/24"]);
    let d =
        Daemon::start(&lab.gw, "[listen]\nmode = \"capture\"\ninterfaces = [\"c0\", \"a0\"]\nport = 62201");
    // On the victim's link: its own knock, then frames spad skips, then junk spoofed from the
    // attacker's address (capture sees it before any reverse-path check).
    let raw = lab.client.run_in(raw4);
    let outgoing = lab.gw.run_in(|| bind_udp("10.201.1.1:0"));
    let (victim, attacker, gw) = (v4(GatewayLab::CLIENT4), v4(GatewayLab::ATTACKER4), v4(GatewayLab::GW4));
    for round in 0..4 {
        let knock = knock();
        let len = knock.len();
        let skip = |which: usize| match which {
            0 => send_raw(&raw, &ipv4(victim, gw, 0, 17, &udp_bad_length(PORT, &junk(len)))),
            1 => {
                outgoing.send_to(&junk(len), sock(GatewayLab::CLIENT4, PORT)).unwrap();
            }
            _ => send_raw(&raw, &ipv4(victim, gw, MF, 17, &udp(PORT, &junk(len)))),
        };
        // Exactly one skipped frame before the knock: a receiver that paired the second kept
        // datagram with the second buffer would judge the attacker with the victim's knock.
        d.frozen(|| {
            skip(round % 2);
            send_raw(&raw, &ipv4(victim, gw, 0, 17, &udp(PORT, &knock)));
            (0..3).for_each(skip);
            send_raw(&raw, &ipv4(attacker, gw, 0, 17, &udp(PORT, &junk(len))));
        });
        d.judged_apart(round + 1);
    }
}

#[test]
fn socket_mode_judges_interleaved_datagrams_of_two_sources_each_with_its_own_bytes() {
    let lab = GatewayLab::new("rxs");
    let d = Daemon::start(&lab.gw, "[listen]\nmode = \"socket\"\naddresses = [\"0.0.0.0:62201\"]");
    let victim = lab.client.run_in(|| bind_udp("10.201.1.2:0"));
    let attacker = lab.attacker.run_in(|| bind_udp("10.201.3.2:0"));
    let n = 6;
    d.frozen(|| {
        for _ in 0..n {
            let knock = knock();
            victim.send_to(&knock, sock(GatewayLab::GW4, PORT)).unwrap();
            attacker.send_to(&junk(knock.len()), sock(GatewayLab::GW_ATTACKER4, PORT)).unwrap();
        }
    });
    d.judged_apart(n);
}

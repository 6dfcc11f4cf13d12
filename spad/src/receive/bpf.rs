//! The BSD packet filter's side of capture mode, as pure code: the classic BPF program that
//! passes only UDP to the SPA port (the same decisions as Linux's socket filter, at link-layer
//! offsets, since a BPF device delivers whole frames), and the walker over a BPF read buffer
//! (records of a `bpf_hdr`, the captured bytes, padding to the word alignment).
//!
//! Nothing here makes a system call, so it builds and is tested on every platform: the
//! Ethernet program runs in the Linux kernel in the tests (classic BPF is one instruction set;
//! an AF_PACKET raw socket delivers the same frames a BSD BPF device does on Ethernet), and the
//! walker reads buffers laid out as FreeBSD, OpenBSD and macOS lay them out. The device itself
//! (`/dev/bpf`, ioctls) is in `bsd.rs`.

use super::{BUF, Meta, parse_ip_udp};

/// One classic BPF instruction (`struct bpf_insn` in net/bpf.h; `struct sock_filter` on Linux:
/// the same layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Operation.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

// Instruction classes, sizes, modes and operations: the same numbers on every BSD and on Linux
// (net/bpf.h, linux/bpf_common.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MSH: u16 = 0xa0;
const JEQ: u16 = 0x10;
const JSET: u16 = 0x40;
const K: u16 = 0x00;

/// The link layer a BPF device delivers (its `BIOCGDLT`), as far as capture mode handles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// `DLT_EN10MB`: a 14-byte Ethernet header; the ethertype at 12.
    Ethernet,
    /// `DLT_NULL` (loopback): a 4-byte address family in host byte order.
    Null {
        /// The system's `AF_INET6` (28 FreeBSD, 24 OpenBSD, 30 macOS).
        af_inet6: u32,
    },
    /// `DLT_LOOP` (OpenBSD's loopback): a 4-byte address family in network byte order.
    Loop {
        /// The system's `AF_INET6`.
        af_inet6: u32,
    },
}

/// `AF_INET`, 2 on every system spad runs on.
const AF_INET: u32 = 2;

impl Link {
    /// The bytes before the IP header.
    pub fn header_len(self) -> usize {
        match self {
            Link::Ethernet => 14,
            Link::Null { .. } | Link::Loop { .. } => 4,
        }
    }

    /// How the program reads the family: (offset, load size, IPv4 value, IPv6 value), the
    /// values as a BPF load sees them (loads are big-endian).
    fn family(self) -> (u32, u16, u32, u32) {
        // A host-order 32-bit field read as big-endian.
        let host = |v: u32| u32::from_be_bytes(v.to_ne_bytes());
        match self {
            Link::Ethernet => (12, H, 0x0800, 0x86dd),
            Link::Null { af_inet6 } => (0, W, host(AF_INET), host(af_inet6)),
            Link::Loop { af_inet6 } => (0, W, AF_INET, af_inet6),
        }
    }

    /// The family of a captured frame, read the way the program reads it.
    fn is_ip(self, frame: &[u8]) -> bool {
        let (at, size, v4, v6) = self.family();
        let at = at as usize;
        let value = if size == H {
            frame.get(at..at + 2).map(|b| u32::from(u16::from_be_bytes([b[0], b[1]])))
        } else {
            frame.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        value.is_some_and(|v| v == v4 || v == v6)
    }
}

/// The program: UDP to `port` over IPv4 (unfragmented: neither more-fragments nor an offset,
/// so a first fragment is dropped too) or IPv6 (no extension headers), keeping at most the
/// link header and [`BUF`] bytes of each packet (the wire length stays in the record, so a
/// longer datagram is seen as cut). Everything else is dropped in the kernel.
pub fn udp_port_filter(link: Link, port: u16) -> Vec<Insn> {
    let (fam_at, fam_size, v4, v6) = link.family();
    let l3 = link.header_len() as u32;
    let p = u32::from(port);
    let snap = l3 + BUF as u32;
    let i = |code: u16, jt: u8, jf: u8, k: u32| Insn { code, jt, jf, k };
    vec![
        i(LD | fam_size | ABS, 0, 0, fam_at), // 0: A = family
        i(JMP | JEQ | K, 0, 7, v4),           // 1: IPv4? else 9
        i(LD | B | ABS, 0, 0, l3 + 9),        // 2: A = ip proto
        i(JMP | JEQ | K, 0, 11, 17),          // 3: UDP? else drop
        i(LD | H | ABS, 0, 0, l3 + 6),        // 4: A = flags/frag offset
        i(JMP | JSET | K, 9, 0, 0x3fff),      // 5: any fragment (MF or offset) -> drop
        i(LDX | B | MSH, 0, 0, l3),           // 6: X = header length
        i(LD | H | IND, 0, 0, l3 + 2),        // 7: A = udp dport
        i(JMP | JEQ | K, 5, 6, p),            // 8: port? accept : drop
        i(JMP | JEQ | K, 0, 5, v6),           // 9: IPv6? else drop
        i(LD | B | ABS, 0, 0, l3 + 6),        // 10: A = next header
        i(JMP | JEQ | K, 0, 3, 17),           // 11: UDP? else drop
        i(LD | H | ABS, 0, 0, l3 + 42),       // 12: A = udp dport
        i(JMP | JEQ | K, 0, 1, p),            // 13: port? accept : drop
        i(RET | K, 0, 0, snap),               // 14: accept
        i(RET | K, 0, 0, 0),                  // 15: drop
    ]
}

/// Where a `struct bpf_hdr`'s fields are, and the record alignment (`BPF_WORDALIGN`), on one
/// system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HdrLayout {
    /// Offset of `bh_caplen` (u32, host order).
    pub caplen: usize,
    /// Offset of `bh_datalen` (u32).
    pub datalen: usize,
    /// Offset of `bh_hdrlen` (u16): where the captured bytes start.
    pub hdrlen: usize,
    /// `BPF_ALIGNMENT`: records start at multiples of it.
    pub align: usize,
}

/// One record of a read buffer: where the captured bytes are, and the packet's length on the
/// wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The captured bytes, as a range of the buffer.
    pub data: (usize, usize),
    /// The packet's length on the wire (more than captured when the filter cut it).
    pub datalen: usize,
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_ne_bytes(bytes)).ok()
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 2] = b.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(usize::from(u16::from_ne_bytes(bytes)))
}

/// The records of a read buffer (`buf` is what `read(2)` returned). Every length is checked:
/// a record that does not fit ends the walk, never a panic.
pub fn records(buf: &[u8], layout: HdrLayout) -> impl Iterator<Item = Record> + '_ {
    let align = layout.align.max(1);
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let rest = buf.get(at..)?;
        let caplen = u32_at(rest, layout.caplen)?;
        let datalen = u32_at(rest, layout.datalen)?;
        let hdrlen = u16_at(rest, layout.hdrlen)?;
        let start = at.checked_add(hdrlen)?;
        let end = start.checked_add(caplen)?;
        if hdrlen < layout.hdrlen + 2 || end > buf.len() {
            return None;
        }
        // BPF_WORDALIGN(hdrlen + caplen)
        let next = hdrlen.checked_add(caplen)?.checked_add(align - 1)? / align * align;
        at = at.checked_add(next)?;
        Some(Record { data: (start, end), datalen })
    })
}

/// The datagram in a captured frame, with its payload range made absolute in `buf`; `None`
/// unless it is UDP to `port` over IP (the filter's decision, made again: hostile input).
pub fn datagram(buf: &[u8], record: Record, link: Link, port: u16) -> Option<Meta> {
    let frame = buf.get(record.data.0..record.data.1)?;
    if !link.is_ip(frame) {
        return None;
    }
    let l3 = link.header_len();
    let packet = frame.get(l3..)?;
    let meta = parse_ip_udp(packet, port)?;
    let base = record.data.0 + l3;
    // The frame was cut by the filter's snap length when it is shorter on the wire.
    let cut = record.datalen > record.data.1 - record.data.0;
    Some(Meta {
        range: (base + meta.range.0, base + meta.range.1),
        truncated: meta.truncated || (cut && meta.range.1 == packet.len()),
        ..meta
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FreeBSD amd64: `struct timeval` (16 bytes) first; records aligned to `sizeof(long)`.
    const FREEBSD64: HdrLayout = HdrLayout { caplen: 16, datalen: 20, hdrlen: 24, align: 8 };
    /// OpenBSD and macOS: a 32-bit timeval pair (8 bytes) first; records aligned to 4.
    const SMALL: HdrLayout = HdrLayout { caplen: 8, datalen: 12, hdrlen: 16, align: 4 };

    fn ipv4_udp(payload: &[u8], dport: u16) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
            192,
            0,
            2,
            1,
            198,
            51,
            100,
            7,
        ];
        let ul = 8 + payload.len();
        p.extend_from_slice(&[0x30, 0x39, (dport >> 8) as u8, dport as u8, (ul >> 8) as u8, ul as u8, 0, 0]);
        p.extend_from_slice(payload);
        p
    }

    fn record(layout: HdrLayout, frame: &[u8], datalen: usize) -> Vec<u8> {
        let hdrlen = layout.hdrlen + 2 + 2; // some systems pad the header
        let mut r = vec![0u8; hdrlen];
        r[layout.caplen..layout.caplen + 4].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        r[layout.datalen..layout.datalen + 4].copy_from_slice(&(datalen as u32).to_ne_bytes());
        r[layout.hdrlen..layout.hdrlen + 2].copy_from_slice(&(hdrlen as u16).to_ne_bytes());
        r.extend_from_slice(frame);
        while !r.len().is_multiple_of(layout.align) {
            r.push(0xee);
        }
        r
    }

    fn ethernet(packet: &[u8], ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(packet);
        f
    }

    #[test]
    fn buffers_are_walked_record_by_record_on_every_layout() {
        for layout in [FREEBSD64, SMALL] {
            let a = ethernet(&ipv4_udp(b"first", 62201), 0x0800);
            let b = ethernet(&ipv4_udp(b"second!", 62201), 0x0800);
            let c = ethernet(&ipv4_udp(b"other port", 53), 0x0800);
            let buf = [record(layout, &a, a.len()), record(layout, &b, b.len()), record(layout, &c, c.len())]
                .concat();
            let recs: Vec<Record> = records(&buf, layout).collect();
            assert_eq!(recs.len(), 3, "{layout:?}");
            let payloads: Vec<&[u8]> = recs
                .iter()
                .filter_map(|r| datagram(&buf, *r, Link::Ethernet, 62201))
                .map(|m| &buf[m.range.0..m.range.1])
                .collect();
            assert_eq!(payloads, [&b"first"[..], &b"second!"[..]]);
        }
    }

    #[test]
    fn hostile_or_cut_buffers_never_panic() {
        let f = ethernet(&ipv4_udp(b"hello", 62201), 0x0800);
        let buf = record(FREEBSD64, &f, f.len());
        for cut in 0..buf.len() {
            for r in records(&buf[..cut], FREEBSD64) {
                let _ = datagram(&buf[..cut], r, Link::Ethernet, 62201);
            }
        }
        // A header length that points past the buffer, or below the header itself.
        let mut bad = buf.clone();
        bad[FREEBSD64.hdrlen..FREEBSD64.hdrlen + 2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(records(&bad, FREEBSD64).count(), 0);
        let mut bad = buf.clone();
        bad[FREEBSD64.hdrlen..FREEBSD64.hdrlen + 2].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(records(&bad, FREEBSD64).count(), 0);
        let mut bad = buf;
        bad[FREEBSD64.caplen..FREEBSD64.caplen + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(records(&bad, FREEBSD64).count(), 0);
    }

    #[test]
    fn a_frame_cut_by_the_snap_length_is_marked_truncated() {
        let f = ethernet(&ipv4_udp(&[b'x'; 100], 62201), 0x0800);
        let cut = &f[..60];
        let buf = record(SMALL, cut, f.len());
        let r = records(&buf, SMALL).next().unwrap();
        let m = datagram(&buf, r, Link::Ethernet, 62201).unwrap();
        assert!(m.truncated);
        let buf = record(SMALL, &f, f.len());
        let m = datagram(&buf, records(&buf, SMALL).next().unwrap(), Link::Ethernet, 62201).unwrap();
        assert!(!m.truncated && m.range.1 - m.range.0 == 100);
    }

    #[test]
    fn loopback_families_are_read_in_their_byte_order() {
        let p = ipv4_udp(b"lo", 62201);
        let mut null = 2u32.to_ne_bytes().to_vec();
        null.extend_from_slice(&p);
        let mut lo = 2u32.to_be_bytes().to_vec();
        lo.extend_from_slice(&p);
        let (n, l) = (Link::Null { af_inet6: 28 }, Link::Loop { af_inet6: 24 });
        let rec = |f: &[u8]| Record { data: (0, f.len()), datalen: f.len() };
        assert!(datagram(&null, rec(&null), n, 62201).is_some());
        assert!(datagram(&lo, rec(&lo), l, 62201).is_some());
        // The wrong byte order is another family: dropped.
        assert!(datagram(&lo, rec(&lo), n, 62201).is_none() || cfg!(target_endian = "big"));
        assert!(datagram(&null, rec(&null), l, 62201).is_none() || cfg!(target_endian = "big"));
    }

    #[test]
    fn the_program_has_the_linux_filters_shape_at_link_offsets() {
        let prog = udp_port_filter(Link::Ethernet, 62201);
        assert_eq!(prog.len(), 16);
        assert_eq!(prog[0], Insn { code: 0x28, jt: 0, jf: 0, k: 12 }); // ldh [12]
        assert_eq!(prog[12].k, 14 + 42);
        assert_eq!(prog[14].k, 14 + BUF as u32);
        // Every jump lands inside the program.
        for (at, insn) in prog.iter().enumerate() {
            if insn.code & 0x07 == JMP {
                assert!(at + 1 + usize::from(insn.jt.max(insn.jf)) < prog.len(), "{at}: {insn:?}");
            }
        }
        let null = udp_port_filter(Link::Null { af_inet6: 28 }, 1);
        assert_eq!((null[0].code, null[0].k, null[2].k), (0x20, 0, 4 + 9));
    }

    /// The Ethernet program, run by the Linux kernel on an AF_PACKET raw socket (which delivers
    /// frames with their Ethernet header, as a BSD BPF device does), passes exactly UDP to the
    /// port over IPv4 and IPv6, and no fragment, other port or other protocol.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_ethernet_program_filters_real_packets_in_the_kernel() {
        use socket2::{Domain, Protocol, SockFilter, Socket, Type};
        use std::os::fd::AsRawFd;
        use std::time::Duration;

        spa_e2e::require_root();
        let ns = spa_e2e::Netns::new("spa-bpf");
        // A small MTU on loopback so that a 2000-byte datagram leaves in fragments.
        ns.ip(&["link", "set", "lo", "mtu", "1280"]);
        let seen: Vec<String> = ns.run_in(|| {
            const PORT: u16 = 62201;
            let prog: Vec<SockFilter> = udp_port_filter(Link::Ethernet, PORT)
                .iter()
                .map(|i| SockFilter::new(i.code, i.jt, i.jf, i.k))
                .collect();
            let s = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0))).unwrap();
            s.attach_filter(&prog).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
            // SAFETY: all-zero is a valid sockaddr_ll; we fill family, protocol and ifindex.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: a NUL-terminated literal.
            sll.sll_ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
            // SAFETY: a valid fd and a sockaddr_ll of the stated size.
            let r = unsafe {
                libc::bind(
                    s.as_raw_fd(),
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(r, 0);
            let send = |to: &str, payload: &[u8]| {
                let to: std::net::SocketAddr = to.parse().unwrap();
                let bind = if to.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" };
                std::net::UdpSocket::bind(bind).unwrap().send_to(payload, to).unwrap();
            };
            send("127.0.0.1:62201", b"v4-port");
            send("127.0.0.1:62202", b"v4-other-port");
            send("[::1]:62201", b"v6-port");
            send("[::1]:62202", b"v6-other-port");
            send("127.0.0.1:62201", &[b"v4-fragmented".as_slice(), &[b'x'; 2000]].concat());
            let _ = std::net::TcpStream::connect_timeout(
                &"127.0.0.1:62201".parse().unwrap(),
                Duration::from_millis(200),
            );
            send("127.0.0.1:62201", b"v4-end");
            let mut seen = Vec::new();
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            while let Ok(n) = s.recv(&mut buf) {
                // SAFETY: recv initialised the first n bytes.
                let frame: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
                let rec = Record { data: (0, frame.len()), datalen: frame.len() };
                let m = datagram(&frame, rec, Link::Ethernet, PORT)
                    .expect("the program passed a frame the parser refuses");
                let label = String::from_utf8_lossy(&frame[m.range.0..m.range.1]).into_owned();
                if !seen.contains(&label) {
                    seen.push(label);
                }
            }
            seen
        });
        assert_eq!(seen, ["v4-port", "v6-port", "v4-end"]);
    }
}

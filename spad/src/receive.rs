//! Getting datagrams in: bound UDP sockets, or passive capture with a kernel filter on the
//! SPA port. What is the same everywhere lives here: the datagram's facts ([`Meta`]), the
//! parser of captured IP/UDP packets ([`parse_ip_udp`], hostile input) and the classic BPF
//! programs and capture-buffer walker of the BSDs ([`bpf`], pure, so they are tested on Linux
//! too). The system calls live in one sibling module per platform, re-exported here with the
//! same names ([`Batch`], [`UdpReceiver`], [`CaptureReceiver`]):
//!
//! - `linux`: `recvmmsg` batches, `IP_PKTINFO`/`IPV6_PKTINFO`, AF_PACKET capture with a
//!   socket filter (it sees packets before netfilter, so the SPA port can stay dropped);
//! - `bsd` (FreeBSD, OpenBSD, macOS): `recvmsg` batches (one blocking read, then the queued
//!   rest without blocking), `IP_RECVDSTADDR`/`IPV6_PKTINFO`, capture through the BSD packet
//!   filter device (`/dev/bpf`, which sees packets before pf and ipfw) with the same filter.
//!
//! Every receiver blocks until at least one datagram is there: no sleeps, no polling.
//!
//! Knocks over TCP and HTTP (fwknop's `ENABLE_TCP_SERVER`, `ENABLE_SPA_OVER_HTTP`) come in
//! through [`tcp`], which hands each packet on with the same [`Meta`] as a datagram.

use std::net::IpAddr;

pub mod bpf;
pub mod tcp;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::{Batch, CaptureReceiver, UdpReceiver, udp_port_filter};

#[cfg(any(target_os = "freebsd", target_os = "openbsd", target_os = "macos"))]
mod bsd;
#[cfg(any(target_os = "freebsd", target_os = "openbsd", target_os = "macos"))]
pub use bsd::{Batch, CaptureReceiver, UdpReceiver};

#[cfg(not(any(target_os = "linux", target_os = "freebsd", target_os = "openbsd", target_os = "macos")))]
compile_error!("spad receives on Linux, FreeBSD, OpenBSD and macOS");

/// Datagrams read per system call (socket mode; a capture read returns what the buffer holds).
pub const BATCH: usize = 32;
/// Largest datagram kept (fwknopd's maximum SPA packet is 1500 bytes).
pub(crate) const BUF: usize = 2048;

/// One received datagram's facts; the payload is in the batch buffer.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    /// Network-layer source.
    pub src: IpAddr,
    /// Network-layer destination.
    pub dst: IpAddr,
    /// Which buffer of the batch holds the datagram. Receivers skip some frames (outgoing
    /// ones, packets the parser refuses), so the position in `metas` is not the buffer's.
    pub buf: usize,
    /// Where the payload starts and ends in that buffer.
    pub range: (usize, usize),
    /// Bytes on the wire (the payload may have been cut at the buffer size).
    pub truncated: bool,
    /// The interface it arrived on (its index; 0 when unknown).
    pub ifindex: u32,
}

/// The name of interface `ifindex` (`if_indextoname`), for scripts told where a knock came
/// in; `None` for 0 or an interface that is gone.
pub fn interface_name(ifindex: u32) -> Option<String> {
    if ifindex == 0 {
        return None;
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, which is what if_indextoname writes at most
    // (the name and its NUL).
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    name.to_str().ok().map(str::to_owned)
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses an IPv4 or IPv6 packet carrying UDP to `port`; returns the addresses and the payload
/// range. Everything is bounds-checked: this is hostile input.
#[inline]
pub fn parse_ip_udp(b: &[u8], port: u16) -> Option<Meta> {
    let version = b.first()? >> 4;
    let (src, dst, udp_at, ip_end) = match version {
        4 => {
            let ihl = usize::from(b[0] & 0x0f) * 4;
            let total = usize::from(be16(b, 2)?);
            if ihl < 20 || *b.get(9)? != 17 || be16(b, 6)? & 0x3fff != 0 || total < ihl + 8 {
                return None;
            }
            let src: [u8; 4] = b.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = b.get(16..20)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), ihl, total)
        }
        6 => {
            if *b.get(6)? != 17 {
                return None;
            }
            let src: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = b.get(24..40)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), 40, 40 + usize::from(be16(b, 4)?))
        }
        _ => return None,
    };
    if be16(b, udp_at + 2)? != port {
        return None;
    }
    let udp_len = usize::from(be16(b, udp_at + 4)?);
    if udp_len < 8 {
        return None;
    }
    let wire_end = (udp_at + udp_len).min(ip_end);
    let end = wire_end.min(b.len());
    let start = udp_at + 8;
    (start <= end).then_some(Meta {
        src,
        dst,
        buf: 0,
        range: (start, end),
        truncated: end < wire_end,
        ifindex: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ipv4_udp(payload: &[u8], dport: u16, frag: u16) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p =
            vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, (frag >> 8) as u8, frag as u8, 64, 17, 0, 0];
        p.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 7]);
        let ul = 8 + payload.len();
        p.extend_from_slice(&[0x30, 0x39, (dport >> 8) as u8, dport as u8, (ul >> 8) as u8, ul as u8, 0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn parses_ipv4_udp() {
        let p = ipv4_udp(b"hello", 62201, 0);
        let m = parse_ip_udp(&p, 62201).unwrap();
        assert_eq!(m.src, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(m.dst, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(&p[m.range.0..m.range.1], b"hello");
        assert!(parse_ip_udp(&p, 1).is_none());
        assert!(parse_ip_udp(&ipv4_udp(b"x", 62201, 0x2000), 62201).is_none(), "fragments are dropped");
    }

    #[test]
    fn first_fragments_and_short_udp_lengths_are_refused_but_df_is_not() {
        assert!(parse_ip_udp(&ipv4_udp(b"x", 62201, 0x2000), 62201).is_none(), "MF=1, offset 0");
        assert!(parse_ip_udp(&ipv4_udp(b"x", 62201, 0x0001), 62201).is_none(), "offset 8");
        assert!(parse_ip_udp(&ipv4_udp(b"x", 62201, 0x4000), 62201).is_some(), "DF only");
        let mut p = ipv4_udp(b"hello", 62201, 0);
        p[25] = 4; // UDP length shorter than its own header
        assert!(parse_ip_udp(&p, 62201).is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn interface_indexes_have_names() {
        // SAFETY: a NUL-terminated literal.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert!(lo > 0);
        assert_eq!(interface_name(lo).as_deref(), Some("lo"));
        assert_eq!(interface_name(0), None);
        assert_eq!(interface_name(u32::MAX), None);
    }

    #[test]
    fn hostile_headers_never_panic() {
        let p = ipv4_udp(b"hello", 62201, 0);
        for cut in 0..p.len() {
            let _ = parse_ip_udp(&p[..cut], 62201);
        }
        let mut q = p.clone();
        q[0] = 0x4f; // ihl beyond the packet
        assert!(parse_ip_udp(&q, 62201).is_none());
        let mut q = p;
        q[24] = 0xff; // udp length beyond the packet
        q[25] = 0xff;
        let m = parse_ip_udp(&q, 62201).unwrap();
        assert!(m.range.1 <= q.len());
        let v6 = [0x60u8; 3];
        assert!(parse_ip_udp(&v6, 62201).is_none());
    }
}

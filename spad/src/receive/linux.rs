//! Linux: bound UDP sockets and passive AF_PACKET capture with a kernel filter.
//!
//! Both read in batches with `recvmmsg` (up to [`BATCH`] datagrams per system call, blocking
//! until at least one is there: no sleeps, no polling). Socket mode learns each datagram's
//! destination address and arrival interface from `IP_PKTINFO`/`IPV6_PKTINFO`, so stanza
//! `destination` rules work on wildcard binds and scripts learn where a knock came in. Capture mode attaches a classic BPF program that passes only UDP to the SPA
//! port (IPv4 unfragmented, IPv6), so a flood of other traffic never reaches user space, and
//! it works while the firewall drops that port, since AF_PACKET sees packets before netfilter.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

use super::{BATCH, BUF, Meta, parse_ip_udp};

const CONTROL: usize = 128;

/// Reusable buffers for one `recvmmsg` call.
pub struct Batch {
    bufs: Box<[[u8; BUF]; BATCH]>,
    names: Box<[libc::sockaddr_storage; BATCH]>,
    controls: Box<[[u8; CONTROL]; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
    /// The datagrams of the last call.
    pub metas: Vec<Meta>,
}

// SAFETY: the raw pointers inside `iovs`/`hdrs` point only into the Batch's own boxed buffers,
// which move with it; they are rebuilt before every use.
unsafe impl Send for Batch {}

impl Batch {
    /// Allocates the buffers once.
    pub fn new() -> Self {
        // SAFETY: these are plain C structs for which all-zero bytes is a valid value.
        let (names, iovs, hdrs) = unsafe { (Box::new(zeroed()), Box::new(zeroed()), Box::new(zeroed())) };
        Self {
            bufs: Box::new([[0; BUF]; BATCH]),
            names,
            controls: Box::new([[0; CONTROL]; BATCH]),
            iovs,
            hdrs,
            metas: Vec::with_capacity(BATCH),
        }
    }

    /// The payload of datagram `i` of the last call (the `i`-th kept one, read from its own
    /// buffer).
    pub fn payload(&self, i: usize) -> &[u8] {
        self.bytes(&self.metas[i])
    }

    /// Every datagram of the last call with its own bytes.
    pub fn datagrams(&self) -> impl Iterator<Item = (&Meta, &[u8])> + '_ {
        self.metas.iter().map(|m| (m, self.bytes(m)))
    }

    fn bytes(&self, m: &Meta) -> &[u8] {
        self.bufs.get(m.buf).and_then(|b| b.get(m.range.0..m.range.1)).unwrap_or_default()
    }

    /// Blocks until at least one datagram is there, then reads up to [`BATCH`]. Returns how
    /// many raw messages arrived (before filtering).
    fn recv(&mut self, fd: i32, with_control: bool) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: BUF };
            // SAFETY: msghdr is a plain C struct; all-zero is valid.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_name = (&raw mut self.names[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &raw mut self.iovs[i];
            h.msg_iovlen = 1;
            if with_control {
                h.msg_control = self.controls[i].as_mut_ptr().cast();
                h.msg_controllen = CONTROL;
            }
            self.hdrs[i] = libc::mmsghdr { msg_hdr: h, msg_len: 0 };
        }
        loop {
            // SAFETY: `hdrs` holds BATCH initialised mmsghdrs whose pointers refer to buffers
            // owned by self that outlive the call; the kernel writes within the given lengths.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

fn sockaddr_ip(s: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(std::ptr::from_ref(s).cast()) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(std::ptr::from_ref(s).cast()) };
            Some(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// A bound UDP socket.
pub struct UdpReceiver {
    socket: Socket,
    local: SocketAddr,
}

impl UdpReceiver {
    /// Binds `addr` (IPv6 sockets are v6-only so `0.0.0.0` and `[::]` can both be bound) and
    /// asks for each datagram's destination address.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_recv_buffer_size(4 << 20)?;
        let on: libc::c_int = 1;
        let (level, opt) = if addr.is_ipv6() {
            (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
        } else {
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
        };
        // SAFETY: valid fd, option value points to a c_int of the stated size.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                opt,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        socket.bind(&addr.into())?;
        Ok(Self { socket, local: addr })
    }

    /// The address bound.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Reads a batch into `batch.metas`.
    pub fn recv(&self, batch: &mut Batch) -> io::Result<()> {
        let n = batch.recv(self.socket.as_raw_fd(), true)?;
        batch.metas.clear();
        for i in 0..n {
            let h = &batch.hdrs[i].msg_hdr;
            let len = batch.hdrs[i].msg_len as usize;
            let Some(src) = sockaddr_ip(&batch.names[i]) else { continue };
            let (dst, ifindex) = pktinfo(h).unwrap_or((self.local.ip(), 0));
            let truncated = h.msg_flags & libc::MSG_TRUNC != 0;
            batch.metas.push(Meta { src, dst, buf: i, range: (0, len.min(BUF)), truncated, ifindex });
        }
        Ok(())
    }
}

/// Reads a socket option into a plain C value; `None` if the kernel refuses it.
fn get_option<T: Copy>(fd: i32, level: libc::c_int, name: libc::c_int, mut value: T) -> Option<T> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a plain C value of `len` bytes that the kernel writes at most.
    let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
    (r == 0).then_some(value)
}

impl crate::stats::ReceiveDrops for UdpReceiver {
    /// `SO_MEMINFO`'s drop counter: datagrams the kernel dropped since the socket was opened
    /// because its receive buffer was full. Read on demand; nothing is done per packet.
    fn drops(&self) -> Option<u64> {
        const VARS: usize = libc::SK_MEMINFO_DROPS as usize + 1;
        let info = get_option(self.socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MEMINFO, [0u32; VARS])?;
        Some(u64::from(info[VARS - 1]))
    }
}

/// The destination address and the index of the interface the datagram arrived on, from an
/// `IP_PKTINFO`/`IPV6_PKTINFO` control message.
fn pktinfo(h: &libc::msghdr) -> Option<(IpAddr, u32)> {
    // SAFETY: `h` was filled by recvmmsg; the CMSG macros walk within msg_control/controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::IPPROTO_IP && ty == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let ifindex = u32::try_from(info.ipi_ifindex).unwrap_or(0);
                return Some((IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))), ifindex));
            }
            if level == libc::IPPROTO_IPV6 && ty == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some((IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)), info.ipi6_ifindex));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Asks a TCP listener to keep, for each connection it accepts, the interface the connection
/// arrived on (`IP_PKTINFO`/`IPV6_RECVPKTINFO`, inherited by accepted sockets), for
/// [`tcp_ifindex`].
pub(super) fn want_tcp_ifindex(socket: &Socket, ipv6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, opt) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: valid fd, option value points to a c_int of the stated size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            opt,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `IPV6_2292PKTOPTIONS` (linux/in6.h): the options of the last packet a TCP socket received.
const IPV6_2292PKTOPTIONS: libc::c_int = 6;

/// The index of the interface an accepted TCP connection arrived on, from the kernel's
/// `IP_PKTOPTIONS`/`IPV6_2292PKTOPTIONS` (Linux keeps it for sockets whose listener asked,
/// see [`want_tcp_ifindex`]); 0 when it says nothing.
pub(super) fn tcp_ifindex(stream: &std::net::TcpStream, ipv6: bool) -> u32 {
    /// Control messages are read through `cmsghdr` pointers: the buffer is aligned for them.
    #[repr(C, align(8))]
    struct Control([u8; CONTROL]);
    let mut control = Control([0; CONTROL]);
    let control = &mut control.0;
    let mut len = CONTROL as libc::socklen_t;
    let (level, opt) = if ipv6 {
        (libc::IPPROTO_IPV6, IPV6_2292PKTOPTIONS)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTOPTIONS)
    };
    // SAFETY: valid fd; the kernel writes at most `len` bytes of control messages into
    // `control` and stores how many in `len`.
    let r = unsafe {
        libc::getsockopt(stream.as_raw_fd(), level, opt, control.as_mut_ptr().cast(), &raw mut len)
    };
    if r != 0 {
        return 0;
    }
    // SAFETY: msghdr is a plain C struct; all-zero is valid. Only the control fields are
    // used, and they describe the bytes the kernel wrote.
    let mut h: libc::msghdr = unsafe { zeroed() };
    h.msg_control = control.as_mut_ptr().cast();
    h.msg_controllen = (len as usize).min(CONTROL);
    pktinfo(&h).map_or(0, |(_, ifindex)| ifindex)
}

/// Classic BPF: accept UDP to `port` over IPv4 (unfragmented: neither more-fragments nor an
/// offset, so a first fragment is dropped too) or IPv6 (no extension headers),
/// at network-header offsets (SOCK_DGRAM packet sockets start at the IP header).
pub fn udp_port_filter(port: u16) -> Vec<SockFilter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const LD_H_IND: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
    const LDX_MSH: u16 = (libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let proto_off = (libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL) as u32;
    let p = u32::from(port);
    vec![
        SockFilter::new(LD_W_ABS, 0, 0, proto_off), // 0: A = ethertype
        SockFilter::new(JEQ, 0, 7, 0x0800),         // 1: IPv4? else 9
        SockFilter::new(LD_B_ABS, 0, 0, 9),         // 2: A = ip proto
        SockFilter::new(JEQ, 0, 11, 17),            // 3: UDP? else drop
        SockFilter::new(LD_H_ABS, 0, 0, 6),         // 4: A = flags/frag offset
        SockFilter::new(JSET, 9, 0, 0x3fff),        // 5: any fragment (MF or offset) -> drop
        SockFilter::new(LDX_MSH, 0, 0, 0),          // 6: X = header length
        SockFilter::new(LD_H_IND, 0, 0, 2),         // 7: A = udp dport
        SockFilter::new(JEQ, 5, 6, p),              // 8: port? accept : drop
        SockFilter::new(JEQ, 0, 5, 0x86dd),         // 9: IPv6? else drop
        SockFilter::new(LD_B_ABS, 0, 0, 6),         // 10: A = next header
        SockFilter::new(JEQ, 0, 3, 17),             // 11: UDP? else drop
        SockFilter::new(LD_H_ABS, 0, 0, 42),        // 12: A = udp dport
        SockFilter::new(JEQ, 0, 1, p),              // 13: port? accept : drop
        SockFilter::new(RET, 0, 0, 0xffff),         // 14: accept
        SockFilter::new(RET, 0, 0, 0),              // 15: drop
    ]
}

/// Passive capture on one interface.
pub struct CaptureReceiver {
    fd: OwnedFd,
    port: u16,
    interface: String,
    ifindex: u32,
    /// Drops reported so far (`PACKET_STATISTICS` resets the kernel's count at each read).
    drops: AtomicU64,
}

impl CaptureReceiver {
    /// Opens an AF_PACKET socket on `interface` that sees only UDP to `port`.
    pub fn open(interface: &str, port: u16) -> io::Result<Self> {
        let name = std::ffi::CString::new(interface).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {interface:?}")));
        }
        // Protocol 0: receives nothing until bound, so no unfiltered packet slips in before
        // the filter is attached.
        let socket = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0)))?;
        socket.attach_filter(&udp_port_filter(port))?;
        socket.set_recv_buffer_size(4 << 20)?;
        // SAFETY: all-zero is a valid sockaddr_ll; we fill family, protocol and ifindex.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: valid fd and a sockaddr_ll of the stated size.
        let r = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd: socket.into(),
            port,
            interface: interface.to_owned(),
            ifindex,
            drops: AtomicU64::new(0),
        })
    }

    /// The interface.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Reads a batch, keeping incoming UDP datagrams to the port.
    pub fn recv(&self, batch: &mut Batch) -> io::Result<()> {
        let n = batch.recv(self.fd.as_raw_fd(), false)?;
        batch.metas.clear();
        for i in 0..n {
            // SAFETY: for AF_PACKET the name is a sockaddr_ll.
            let sll: &libc::sockaddr_ll = unsafe { &*(std::ptr::from_ref(&batch.names[i]).cast()) };
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let len = (batch.hdrs[i].msg_len as usize).min(BUF);
            if let Some(meta) = parse_ip_udp(&batch.bufs[i][..len], self.port) {
                batch.metas.push(Meta { buf: i, ifindex: self.ifindex, ..meta });
            }
        }
        Ok(())
    }
}

impl crate::stats::ReceiveDrops for CaptureReceiver {
    /// `PACKET_STATISTICS`: packets that passed the filter but found the socket's buffer full.
    /// The kernel resets its count at each read, so the reads are summed here.
    fn drops(&self) -> Option<u64> {
        // SAFETY: tpacket_stats is a plain C struct; all-zero is valid.
        let zero: libc::tpacket_stats = unsafe { zeroed() };
        let s = get_option(self.fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_STATISTICS, zero)?;
        Some(self.drops.fetch_add(u64::from(s.tp_drops), Ordering::Relaxed) + u64::from(s.tp_drops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket nobody reads overflows, and the kernel's count of what it dropped shows.
    #[test]
    fn a_full_socket_reports_its_drops() {
        use crate::stats::ReceiveDrops;
        let r = UdpReceiver::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = r.socket.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(r.drops(), Some(0));
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Far more than the receive buffer (at most net.core.rmem_max, doubled) holds.
        let payload = [0u8; 1400];
        let mut sent = 0u64;
        while r.drops().unwrap() == 0 && sent < 200_000 {
            s.send_to(&payload, to).unwrap();
            sent += 1;
        }
        let drops = r.drops().unwrap();
        assert!(drops > 0 && drops < sent, "{drops} of {sent}");
    }

    #[test]
    fn each_datagram_is_read_from_its_own_buffer_when_frames_were_skipped() {
        let mut batch = Batch::new();
        for (i, text) in [b"skipped!", b"victim..", b"skipped!", b"attacker"].iter().enumerate() {
            batch.bufs[i][..8].copy_from_slice(*text);
        }
        let meta = |src: [u8; 4], buf| Meta {
            src: IpAddr::from(src),
            dst: IpAddr::from([192, 0, 2, 9]),
            buf,
            range: (0, 8),
            truncated: false,
            ifindex: 0,
        };
        batch.metas = vec![meta([192, 0, 2, 1], 1), meta([192, 0, 2, 66], 3)];
        let pairs: Vec<(IpAddr, &[u8])> = batch.datagrams().map(|(m, p)| (m.src, p)).collect();
        assert_eq!(
            pairs,
            [
                (IpAddr::from([192, 0, 2, 1]), &b"victim.."[..]),
                (IpAddr::from([192, 0, 2, 66]), &b"attacker"[..])
            ]
        );
        assert_eq!((batch.payload(0), batch.payload(1)), (&b"victim.."[..], &b"attacker"[..]));
        // A meta pointing outside the batch yields nothing rather than a panic.
        batch.metas = vec![
            Meta { buf: BATCH, ..meta([192, 0, 2, 1], 0) },
            Meta { range: (4, BUF + 1), ..meta([192, 0, 2, 1], 0) },
        ];
        assert!(batch.datagrams().all(|(_, p)| p.is_empty()));
    }
}

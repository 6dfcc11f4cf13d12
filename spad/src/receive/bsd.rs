//! FreeBSD, OpenBSD and macOS: bound UDP sockets, and passive capture through the BSD packet
//! filter device.
//!
//! Socket mode reads in batches with `recvmsg`: one blocking call, then whatever else is queued
//! without blocking (`MSG_DONTWAIT`), up to [`BATCH`] datagrams (these systems have no
//! `recvmmsg` in common; the batching keeps one wake-up per burst). Each datagram's
//! destination address comes from `IP_RECVDSTADDR` (IPv4) or `IPV6_PKTINFO` (IPv6), so stanza
//! `destination` rules work on wildcard binds, and its arrival interface from `IP_RECVIF`
//! (IPv4) or the same `IPV6_PKTINFO`.
//!
//! Capture mode opens `/dev/bpf` (or the first free `/dev/bpfN`: macOS has no cloning device),
//! attaches it to the interface and loads the classic BPF program of [`super::bpf`] for the
//! interface's link type, so only UDP to the SPA port reaches user space; it sees packets
//! before pf and ipfw, so the SPA port can stay blocked. Reads return as soon as packets arrive
//! (`BIOCIMMEDIATE`) and deliver every packet buffered since the last read: one read is one
//! batch. Packets this host sends are not delivered (`BIOCSDIRECTION`/`BIOCSSEESENT`/
//! `BIOCSDIRFILT`).
//!
//! The ioctl numbers are computed from net/bpf.h's definitions with the `_IOW`/`_IOR`
//! encoding of sys/ioccom.h (the same on the three systems) and checked at compile time against
//! the `libc` crate's values where it has them.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::{c_int, c_uint, c_ulong};
use socket2::{Domain, Protocol, Socket, Type};

use super::bpf::{self, HdrLayout, Insn, Link};
use super::{BATCH, BUF, Meta};

const CONTROL: usize = 128;

// ----- ioctls (sys/ioccom.h, net/bpf.h) ---------------------------------------------------

const IOC_OUT: c_ulong = 0x4000_0000;
const IOC_IN: c_ulong = 0x8000_0000;
const IOCPARM_MASK: c_ulong = 0x1fff;

const fn ioc(inout: c_ulong, num: u8, len: usize) -> c_ulong {
    inout | (((len as c_ulong) & IOCPARM_MASK) << 16) | ((b'B' as c_ulong) << 8) | num as c_ulong
}

/// `struct ifreq`: the interface name, then a 16-byte union (32 bytes on all three systems).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; 16],
    _union: [u64; 2],
}

/// `struct bpf_program`.
#[repr(C)]
struct BpfProgram {
    len: c_uint,
    insns: *const Insn,
}

const BIOCGBLEN: c_ulong = ioc(IOC_OUT, 102, size_of::<c_uint>());
const BIOCSBLEN: c_ulong = ioc(IOC_IN | IOC_OUT, 102, size_of::<c_uint>());
const BIOCSETF: c_ulong = ioc(IOC_IN, 103, size_of::<BpfProgram>());
const BIOCGDLT: c_ulong = ioc(IOC_OUT, 106, size_of::<c_uint>());
const BIOCSETIF: c_ulong = ioc(IOC_IN, 108, size_of::<IfReq>());
const BIOCIMMEDIATE: c_ulong = ioc(IOC_IN, 112, size_of::<c_uint>());
/// `struct bpf_stat`: packets received and dropped by the device since it was opened.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct BpfStat {
    _recv: c_uint,
    drop: c_uint,
}
const BIOCGSTATS: c_ulong = ioc(IOC_OUT, 111, size_of::<BpfStat>());
/// FreeBSD `BIOCSDIRECTION` (its old name, and macOS's, is `BIOCSSEESENT`): 0 (`BPF_D_IN`,
/// or "do not see sent") delivers incoming packets only.
#[cfg(any(target_os = "freebsd", target_os = "macos"))]
const BIOCSDIRECTION: c_ulong = ioc(IOC_IN, 119, size_of::<c_uint>());
/// OpenBSD `BIOCSDIRFILT`: packets of the directions given are not delivered.
#[cfg(target_os = "openbsd")]
const BIOCSDIRFILT: c_ulong = ioc(IOC_IN, 125, size_of::<c_uint>());
/// OpenBSD `BPF_DIRECTION_OUT`.
#[cfg(target_os = "openbsd")]
const BPF_DIRECTION_OUT: c_uint = 1 << 1;

// The encoding checked against the libc crate wherever it defines the same ioctls.
const _: () = assert!(size_of::<IfReq>() == 32 && BIOCSETIF == libc::BIOCSETIF as c_ulong);
const _: () = assert!(BIOCGBLEN == libc::BIOCGBLEN as c_ulong && BIOCSBLEN == libc::BIOCSBLEN as c_ulong);
const _: () = assert!(BIOCIMMEDIATE == libc::BIOCIMMEDIATE as c_ulong);
#[cfg(any(target_os = "freebsd", target_os = "macos"))]
const _: () = assert!(BIOCGSTATS == libc::BIOCGSTATS as c_ulong);
#[cfg(any(target_os = "freebsd", target_os = "macos"))]
const _: () = assert!(BIOCGDLT == libc::BIOCGDLT as c_ulong);
#[cfg(target_os = "freebsd")]
const _: () =
    assert!(BIOCSETF == libc::BIOCSETF as c_ulong && BIOCSDIRECTION == libc::BIOCSSEESENT as c_ulong);
#[cfg(target_os = "macos")]
const _: () = assert!(BIOCSETF == libc::BIOCSETF as c_ulong);

/// `DLT_NULL`, `DLT_EN10MB`, `DLT_LOOP` (net/dlt.h; `DLT_LOOP` is 12 on OpenBSD only).
const DLT_NULL: c_uint = 0;
const DLT_EN10MB: c_uint = 1;
#[cfg(target_os = "openbsd")]
const DLT_LOOP: c_uint = 12;
#[cfg(not(target_os = "openbsd"))]
const DLT_LOOP: c_uint = 108;

/// Where `struct bpf_hdr`'s fields are, and `BPF_ALIGNMENT`.
#[cfg(target_os = "freebsd")]
const LAYOUT: HdrLayout = HdrLayout {
    caplen: std::mem::offset_of!(libc::bpf_hdr, bh_caplen),
    datalen: std::mem::offset_of!(libc::bpf_hdr, bh_datalen),
    hdrlen: std::mem::offset_of!(libc::bpf_hdr, bh_hdrlen),
    align: libc::BPF_ALIGNMENT,
};
#[cfg(target_os = "macos")]
const LAYOUT: HdrLayout = HdrLayout {
    caplen: std::mem::offset_of!(libc::bpf_hdr, bh_caplen),
    datalen: std::mem::offset_of!(libc::bpf_hdr, bh_datalen),
    hdrlen: std::mem::offset_of!(libc::bpf_hdr, bh_hdrlen),
    // `BPF_ALIGNMENT sizeof(int32_t)` in Darwin's net/bpf.h.
    align: 4,
};
/// OpenBSD: `struct bpf_timeval` (two 32-bit fields) first; `BPF_ALIGNMENT sizeof(u_int32_t)`.
#[cfg(target_os = "openbsd")]
const LAYOUT: HdrLayout = HdrLayout { caplen: 8, datalen: 12, hdrlen: 16, align: 4 };

/// The buffer size asked for; the kernel may set less (`BIOCSBLEN` returns what it set).
const CAPTURE_BUFFER: c_uint = 1 << 19;

/// Runs an ioctl whose argument is `arg`.
///
/// # Safety
///
/// `request` must be an ioctl whose argument has `T`'s type.
unsafe fn ioctl<T>(fd: c_int, request: c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: the caller guarantees that `arg` is what `request` reads or writes.
    let r = unsafe { libc::ioctl(fd, request, std::ptr::from_mut(arg)) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

// ----- batches ------------------------------------------------------------------------------

/// Reusable buffers: one per datagram for sockets, one read buffer for capture.
pub struct Batch {
    bufs: Box<[[u8; BUF]; BATCH]>,
    controls: Box<[[u8; CONTROL]; BATCH]>,
    capture: Vec<u8>,
    /// The last call filled `capture` (the metas' ranges are in it), not `bufs`.
    captured: bool,
    /// The datagrams of the last call.
    pub metas: Vec<Meta>,
}

impl Batch {
    /// Allocates the socket buffers once (the capture buffer grows to the device's size at
    /// the first capture).
    pub fn new() -> Self {
        Self {
            bufs: Box::new([[0; BUF]; BATCH]),
            controls: Box::new([[0; CONTROL]; BATCH]),
            capture: Vec::new(),
            captured: false,
            metas: Vec::with_capacity(BATCH),
        }
    }

    /// The payload of datagram `i` of the last call.
    pub fn payload(&self, i: usize) -> &[u8] {
        self.bytes(&self.metas[i])
    }

    /// Every datagram of the last call with its own bytes.
    pub fn datagrams(&self) -> impl Iterator<Item = (&Meta, &[u8])> + '_ {
        self.metas.iter().map(|m| (m, self.bytes(m)))
    }

    fn bytes(&self, m: &Meta) -> &[u8] {
        let buf: Option<&[u8]> =
            if self.captured { Some(&self.capture) } else { self.bufs.get(m.buf).map(|b| &b[..]) };
        buf.and_then(|b| b.get(m.range.0..m.range.1)).unwrap_or_default()
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

// ----- sockets ------------------------------------------------------------------------------

fn sockaddr_ip(s: &libc::sockaddr_storage) -> Option<IpAddr> {
    match c_int::from(s.ss_family) {
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

/// The destination address (from an `IP_RECVDSTADDR` or `IPV6_PKTINFO` control message) and
/// the index of the arrival interface (from `IP_RECVIF`'s link-level address or the same
/// `IPV6_PKTINFO`; 0 when absent).
fn destination(h: &libc::msghdr) -> (Option<IpAddr>, u32) {
    let (mut dst, mut ifindex) = (None, 0);
    // SAFETY: `h` was filled by recvmsg; the CMSG macros walk within msg_control/controllen,
    // and each payload is read unaligned with the type its level and type announce.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::IPPROTO_IP && ty == libc::IP_RECVDSTADDR {
                let a: libc::in_addr = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.s_addr))));
            }
            if level == libc::IPPROTO_IP && ty == libc::IP_RECVIF {
                let a: libc::sockaddr_dl = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                ifindex = u32::from(a.sdl_index);
            }
            if level == libc::IPPROTO_IPV6 && ty == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                dst = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                ifindex = info.ipi6_ifindex;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    (dst, ifindex)
}

fn set_int(socket: &Socket, level: c_int, opt: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: a valid fd; the option value points to a c_int of the stated size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            opt,
            (&raw const value).cast(),
            size_of::<c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
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
        // A large receive buffer rides out bursts; these systems refuse sizes above their
        // limit (FreeBSD's kern.ipc.maxsockbuf is 2 MiB by default) rather than lower them.
        for size in [4 << 20, 2 << 20, 1 << 20, 512 << 10] {
            if socket.set_recv_buffer_size(size).is_ok() {
                break;
            }
        }
        if addr.is_ipv6() {
            set_int(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        } else {
            set_int(&socket, libc::IPPROTO_IP, libc::IP_RECVDSTADDR, 1)?;
            set_int(&socket, libc::IPPROTO_IP, libc::IP_RECVIF, 1)?;
        }
        socket.bind(&addr.into())?;
        Ok(Self { socket, local: addr })
    }

    /// The address bound.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Blocks until a datagram is there, then reads it and up to [`BATCH`]` - 1` more that
    /// are already queued.
    pub fn recv(&self, batch: &mut Batch) -> io::Result<()> {
        batch.metas.clear();
        batch.captured = false;
        let fd = self.socket.as_raw_fd();
        for i in 0..BATCH {
            // SAFETY: plain C structs for which all-zero bytes are valid values.
            let (mut name, mut h): (libc::sockaddr_storage, libc::msghdr) = unsafe { (zeroed(), zeroed()) };
            let mut iov = libc::iovec { iov_base: batch.bufs[i].as_mut_ptr().cast(), iov_len: BUF };
            h.msg_name = (&raw mut name).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut iov;
            h.msg_iovlen = 1;
            h.msg_control = batch.controls[i].as_mut_ptr().cast();
            h.msg_controllen = CONTROL as _;
            let flags = if i == 0 { 0 } else { libc::MSG_DONTWAIT };
            let n = loop {
                // SAFETY: `h` points to `name`, `iov` (into `bufs[i]`) and `controls[i]`, all
                // alive across the call; the kernel writes within the lengths given.
                let r = unsafe { libc::recvmsg(fd, &raw mut h, flags) };
                if r >= 0 {
                    break r as usize;
                }
                let e = io::Error::last_os_error();
                match (i, e.kind()) {
                    (0, io::ErrorKind::Interrupted) => continue,
                    (0, _) => return Err(e),
                    // Nothing more queued (or an error the next blocking call reports).
                    _ => return Ok(()),
                }
            };
            let Some(src) = sockaddr_ip(&name) else { continue };
            let (dst, ifindex) = destination(&h);
            let dst = dst.unwrap_or(self.local.ip());
            let truncated = h.msg_flags & libc::MSG_TRUNC != 0;
            batch.metas.push(Meta { src, dst, buf: i, range: (0, n.min(BUF)), truncated, ifindex });
        }
        Ok(())
    }
}

impl crate::stats::ReceiveDrops for UdpReceiver {
    /// These systems keep no per-socket drop count that a program can read (FreeBSD's and
    /// macOS's `netstat -s` counts "dropped due to full socket buffers" for all sockets).
    fn drops(&self) -> Option<u64> {
        None
    }
}

// ----- capture ------------------------------------------------------------------------------

/// Opens the first BPF device that is free: `/dev/bpf` (cloning, FreeBSD and OpenBSD), else
/// `/dev/bpf0`, `/dev/bpf1`, ... (macOS).
fn open_device() -> io::Result<OwnedFd> {
    let try_open = |path: &str| -> io::Result<OwnedFd> {
        let p = CString::new(path).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: `p` is a valid NUL-terminated path; the flags are plain open(2) flags.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: `fd` was just opened and is owned by nothing else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    };
    match try_open("/dev/bpf") {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    for n in 0..256 {
        match try_open(&format!("/dev/bpf{n}")) {
            Ok(fd) => return Ok(fd),
            // In use by another reader: try the next one.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = e,
            Err(e) => return Err(if e.kind() == io::ErrorKind::NotFound { last } else { e }),
        }
    }
    Err(last)
}

/// Passive capture on one interface.
pub struct CaptureReceiver {
    fd: OwnedFd,
    port: u16,
    interface: String,
    ifindex: u32,
    ifr: IfReq,
    insns: Vec<Insn>,
    link: Link,
    buflen: usize,
}

/// Loads `insns` as the device's filter.
fn set_filter(fd: c_int, insns: &[Insn]) -> io::Result<()> {
    let mut prog = BpfProgram { len: insns.len() as c_uint, insns: insns.as_ptr() };
    // SAFETY: BIOCSETF reads a struct bpf_program, whose instructions (`insns`) outlive the
    // call; the kernel copies them.
    unsafe { ioctl(fd, BIOCSETF, &mut prog) }
}

impl CaptureReceiver {
    /// Opens a BPF device on `interface` that sees only incoming UDP to `port`.
    pub fn open(interface: &str, port: u16) -> io::Result<Self> {
        let bad_name =
            || io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {interface:?}"));
        let name = CString::new(interface).map_err(|_| bad_name())?;
        let bytes = name.as_bytes_with_nul();
        // SAFETY: all-zero is a valid ifreq.
        let mut ifr: IfReq = unsafe { zeroed() };
        if bytes.len() > ifr.name.len() {
            return Err(bad_name());
        }
        for (d, s) in ifr.name.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let dev = open_device()?;
        let fd = dev.as_raw_fd();
        // The buffer size must be set before the interface; the kernel may keep its default.
        let mut len: c_uint = CAPTURE_BUFFER;
        // SAFETY: BIOCSBLEN reads and writes a u_int.
        let _kept_the_default = unsafe { ioctl(fd, BIOCSBLEN, &mut len) };
        // SAFETY: BIOCSETIF reads a struct ifreq.
        unsafe { ioctl(fd, BIOCSETIF, &mut ifr) }?;
        let mut dlt: c_uint = 0;
        // SAFETY: BIOCGDLT writes a u_int.
        unsafe { ioctl(fd, BIOCGDLT, &mut dlt) }?;
        let af_inet6 = libc::AF_INET6 as u32;
        let link = match dlt {
            DLT_EN10MB => Link::Ethernet,
            DLT_NULL => Link::Null { af_inet6 },
            DLT_LOOP => Link::Loop { af_inet6 },
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{interface} has link type {other}; capture handles Ethernet and loopback"),
                ));
            }
        };
        let mut on: c_uint = 1;
        // SAFETY: BIOCIMMEDIATE reads a u_int.
        unsafe { ioctl(fd, BIOCIMMEDIATE, &mut on) }?;
        #[cfg(any(target_os = "freebsd", target_os = "macos"))]
        {
            let mut incoming_only: c_uint = 0;
            // SAFETY: BIOCSDIRECTION (BIOCSSEESENT) reads a u_int.
            unsafe { ioctl(fd, BIOCSDIRECTION, &mut incoming_only) }?;
        }
        #[cfg(target_os = "openbsd")]
        {
            let mut drop_outgoing: c_uint = BPF_DIRECTION_OUT;
            // SAFETY: BIOCSDIRFILT reads a u_int.
            unsafe { ioctl(fd, BIOCSDIRFILT, &mut drop_outgoing) }?;
        }
        let mut buflen: c_uint = 0;
        // SAFETY: BIOCGBLEN writes a u_int.
        unsafe { ioctl(fd, BIOCGBLEN, &mut buflen) }?;
        // Setting the filter also discards what the device buffered before it.
        let insns = bpf::udp_port_filter(link, port);
        set_filter(fd, &insns)?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        Ok(Self {
            fd: dev,
            port,
            interface: interface.to_owned(),
            ifindex,
            ifr,
            insns,
            link,
            buflen: buflen as usize,
        })
    }

    /// The interface.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// `BIOCGSTATS`: packets the device dropped (its buffer was full) since it was opened.
    fn dropped(&self) -> io::Result<u64> {
        let mut s = BpfStat::default();
        // SAFETY: BIOCGSTATS writes a struct bpf_stat.
        unsafe { ioctl(self.fd.as_raw_fd(), BIOCGSTATS, &mut s) }?;
        Ok(u64::from(s.drop))
    }

    fn reattach(&self) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        let mut ifr = IfReq { name: self.ifr.name, _union: [0; 2] };
        // SAFETY: BIOCSETIF reads a struct ifreq.
        unsafe { ioctl(fd, BIOCSETIF, &mut ifr) }?;
        set_filter(fd, &self.insns)
    }

    /// Blocks until packets arrive, then reads every one the device holds, keeping UDP
    /// datagrams to the port.
    pub fn recv(&self, batch: &mut Batch) -> io::Result<()> {
        batch.metas.clear();
        batch.captured = true;
        // A BPF read must ask for exactly the device's buffer size.
        batch.capture.resize(self.buflen, 0);
        let mut reattached = false;
        let n = loop {
            // SAFETY: the buffer holds `buflen` writable bytes.
            let r =
                unsafe { libc::read(self.fd.as_raw_fd(), batch.capture.as_mut_ptr().cast(), self.buflen) };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The interface went away: the device is detached and every read would fail at
            // once. Attach it again (the interface may be back, renamed links aside); while
            // that fails, report the error at most once a second instead of spinning.
            if e.raw_os_error() == Some(libc::ENXIO) && !reattached && self.reattach().is_ok() {
                reattached = true;
                continue;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
            return Err(e);
        };
        let buf = &batch.capture[..n.min(batch.capture.len())];
        for record in bpf::records(buf, LAYOUT) {
            if let Some(meta) = bpf::datagram(buf, record, self.link, self.port) {
                batch.metas.push(Meta { ifindex: self.ifindex, ..meta });
            }
        }
        Ok(())
    }
}

impl crate::stats::ReceiveDrops for CaptureReceiver {
    fn drops(&self) -> Option<u64> {
        self.dropped().ok()
    }
}

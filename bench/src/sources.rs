//! Many packet sources from one socket: each datagram leaves from a source address chosen for
//! it, with an `IP_PKTINFO` control message on `sendmsg` (`ipi_spec_dst` picks the source).
//!
//! The addresses must be local. The bench makes a whole prefix local in the client namespace
//! with one route (`ip route add local 10.64.0.0/10 dev lo`, "AnyIP"), so fill knocks come
//! from 100,000 different sources, as 100,000 grants do in real life, without 100,000
//! interface addresses. Loopback's `127.0.0.0/8` is such a prefix on every Linux host.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::{Error, Result};

/// An IPv4 UDP socket that sends each datagram from a source address of the caller's choice.
#[derive(Debug)]
pub struct SourceSocket {
    sock: Socket,
}

/// Room for one `in_pktinfo` control message, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; 64]);

impl SourceSocket {
    /// An unbound socket (the kernel picks one port at the first send; the address comes with
    /// every datagram).
    pub fn new() -> Result<Self> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(Error::Socket)?;
        sock.set_send_buffer_size(4 << 20).map_err(Error::Socket)?;
        Ok(Self { sock })
    }

    /// Sends `payload` to `to` from `from` (a local address). A full send buffer is waited out.
    pub fn send(&self, payload: &[u8], from: Ipv4Addr, to: SocketAddrV4) -> Result<()> {
        loop {
            match self.send_once(payload, from, to) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)) => {
                    std::thread::yield_now();
                }
                Err(e) => return Err(Error::Send(e)),
            }
        }
    }

    fn send_once(&self, payload: &[u8], from: Ipv4Addr, to: SocketAddrV4) -> io::Result<()> {
        let mut dest = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*to.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
        let mut control = Control([0; 64]);
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr { s_addr: u32::from(from).to_be() },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        // SAFETY: msghdr is a plain C struct for which all-zero bytes are valid.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&raw mut dest).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;
        debug_assert!(space <= control.0.len());
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, suitably aligned bytes owned by
        // `control`, room for one header and an in_pktinfo; CMSG_FIRSTHDR returns a pointer
        // into it (not null, since msg_controllen covers a header) and CMSG_DATA the data part
        // after that header, which is written unaligned.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&raw const msg);
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
        }
        // SAFETY: msg points at the address, the iovec (over `payload`) and the control
        // buffer, all alive for the call; the kernel only reads them.
        let r = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &raw const msg, 0) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, UdpSocket};
    use std::time::Duration;

    #[test]
    fn each_datagram_leaves_from_the_address_chosen_for_it() {
        // 127.0.0.0/8 is one local route on loopback: every address in it is ours, as the
        // client's AnyIP prefix is in the lab.
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = v4(&rx);
        let s = SourceSocket::new().unwrap();
        let froms: Vec<Ipv4Addr> =
            ["127.0.0.1", "127.0.0.9", "127.3.2.1", "127.0.1.0"].iter().map(|a| a.parse().unwrap()).collect();
        for (i, from) in froms.iter().enumerate() {
            s.send(format!("knock {i}").as_bytes(), *from, to).unwrap();
        }
        let mut buf = [0u8; 64];
        let mut port = None;
        for (i, from) in froms.iter().enumerate() {
            let (n, src) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], format!("knock {i}").as_bytes());
            assert_eq!(src.ip(), IpAddr::V4(*from), "datagram {i}");
            assert_eq!(*port.get_or_insert(src.port()), src.port(), "one socket, one port");
        }
    }

    #[test]
    fn an_address_that_is_not_local_is_refused() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = v4(&rx);
        let s = SourceSocket::new().unwrap();
        // 192.0.2.0/24 (TEST-NET-1) is on no host; the kernel refuses to send from it, and the
        // datagram goes nowhere (its destination is loopback anyway).
        assert!(matches!(s.send(b"x", "192.0.2.7".parse().unwrap(), to), Err(Error::Send(_))));
    }

    fn v4(s: &UdpSocket) -> SocketAddrV4 {
        match s.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(a) => panic!("bound to 127.0.0.1, got {a}"),
        }
    }
}

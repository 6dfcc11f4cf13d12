//! Open latency: how long after a knock a TCP connection to the protected port first works.
//!
//! Waiting on one `connect` would measure the SYN retransmit timer (1 s, then 2 s ...), not
//! the daemon. Instead a new non-blocking connect starts every [`Prober::interval`] (100 µs by
//! default), all in flight at once and polled together; the first one that completes ends the
//! measurement and everything is closed. The resolution is the interval plus one round trip.
//! Sockets older than [`Prober::max_inflight`] intervals are closed early: their next SYN
//! would only come after a second, so they could not finish first anyway.

use std::collections::VecDeque;
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Connect-storm settings.
#[derive(Clone, Copy, Debug)]
pub struct Prober {
    /// Time between two new connects.
    pub interval: Duration,
    /// Most connects in flight.
    pub max_inflight: usize,
}

impl Default for Prober {
    fn default() -> Self {
        Self { interval: Duration::from_micros(100), max_inflight: 1000 }
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

enum Started {
    Connected,
    Pending(OwnedFd),
}

/// Starts one non-blocking connect from `src` (any port) to `dst`.
fn start(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<Started> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    // SAFETY: valid fd; the option value is a c_int of the stated size. Choosing the port at
    // connect time lets thousands of sockets share the source address.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let local = sockaddr(SocketAddrV4::new(src, 0));
    // SAFETY: valid fd and a sockaddr_in of the stated size.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const local).cast(), size_of::<libc::sockaddr_in>() as u32) }
        != 0
    {
        return Err(io::Error::last_os_error());
    }
    let remote = sockaddr(dst);
    // SAFETY: as above.
    let r = unsafe {
        libc::connect(fd.as_raw_fd(), (&raw const remote).cast(), size_of::<libc::sockaddr_in>() as u32)
    };
    if r == 0 {
        return Ok(Started::Connected);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINPROGRESS) { Ok(Started::Pending(fd)) } else { Err(e) }
}

fn so_error(fd: &OwnedFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd; err/len point to a c_int and its size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        )
    };
    if r != 0 { -1 } else { err }
}

impl Prober {
    /// Keeps starting connects from `src` to `dst` until one completes or `limit` after `t0`
    /// has passed; returns the time from `t0` to the first completed connect, or `None`.
    pub fn open_latency(
        &self,
        src: Ipv4Addr,
        dst: SocketAddrV4,
        t0: Instant,
        limit: Duration,
    ) -> Result<Option<Duration>> {
        let deadline = t0 + limit;
        let mut inflight: VecDeque<OwnedFd> = VecDeque::new();
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        let mut next = Instant::now();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if now >= next {
                match start(src, dst) {
                    Ok(Started::Connected) => return Ok(Some(Instant::now() - t0)),
                    Ok(Started::Pending(fd)) => inflight.push_back(fd),
                    // A refused connect is an answer from a closed port: keep trying.
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
                    Err(e) => return Err(Error::Socket(e)),
                }
                while inflight.len() > self.max_inflight {
                    inflight.pop_front();
                }
                next += self.interval;
                if next < now {
                    next = now + self.interval;
                }
            }
            pfds.clear();
            pfds.extend(inflight.iter().map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            }));
            let wait = next.min(deadline).saturating_duration_since(Instant::now());
            let ts = libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            };
            // SAFETY: pfds is a valid array of pollfd of the given length; ts outlives the call.
            let r = unsafe {
                libc::ppoll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, &raw const ts, std::ptr::null())
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Poll(e));
            }
            if r == 0 {
                continue;
            }
            let at = Instant::now();
            for i in (0..pfds.len()).rev() {
                let rev = pfds[i].revents;
                if rev == 0 {
                    continue;
                }
                if rev & libc::POLLOUT != 0 && so_error(&inflight[i]) == 0 {
                    return Ok(Some(at - t0));
                }
                inflight.remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn an_open_port_answers_at_once_and_a_closed_one_never() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = Prober::default();
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let t = p.open_latency(Ipv4Addr::LOCALHOST, dst, Instant::now(), Duration::from_secs(5)).unwrap();
        assert!(t.is_some());
        drop(l);
        // Nothing listens any more: every connect is refused, so it never opens.
        let t = p.open_latency(Ipv4Addr::LOCALHOST, dst, Instant::now(), Duration::from_millis(50)).unwrap();
        assert_eq!(t, None);
    }
}

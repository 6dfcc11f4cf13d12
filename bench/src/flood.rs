//! Batched UDP sending with `sendmmsg(2)`: many datagrams per system call, at full speed or
//! paced to a rate, bounded by a count, a duration and a stop flag.
//!
//! The socket is unconnected (each message names its destination), so ICMP errors coming
//! back from a host with nothing listening cannot fail the sends.

use std::io;
use std::mem::zeroed;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{Error, Result};

/// Most datagrams per `sendmmsg` call.
pub const MAX_BATCH: usize = 256;

/// What to send, how fast and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Destination.
    pub target: SocketAddr,
    /// Datagrams per second; `None` sends as fast as the machine allows.
    pub rate: Option<u64>,
    /// Stop after this many datagrams.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Datagrams per system call (1..=[`MAX_BATCH`]).
    pub batch: usize,
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Report {
    /// Datagrams the kernel took.
    pub sent: u64,
    /// Time from the first to the last send.
    pub elapsed: Duration,
    /// `sendmmsg` calls that failed with a transient error (`ENOBUFS`, `EAGAIN`) and were
    /// retried.
    pub retries: u64,
}

impl Report {
    /// Datagrams per second.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.sent as f64 / s } else { 0.0 }
    }
}

/// A UDP socket made for flooding (large send buffer).
pub fn socket(target: SocketAddr) -> Result<Socket> {
    let domain = if target.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(Error::Socket)?;
    s.set_send_buffer_size(4 << 20).map_err(Error::Socket)?;
    Ok(s)
}

/// Sends datagrams produced by `fill` (which writes one payload into the buffer it gets) on
/// `sock` until the count, the duration or `stop` says so.
pub fn run(
    sock: &Socket,
    spec: &Spec,
    stop: &AtomicBool,
    mut fill: impl FnMut(&mut Vec<u8>),
) -> Result<Report> {
    let dest = SockAddr::from(spec.target);
    let mut batch = spec.batch.clamp(1, MAX_BATCH);
    if let Some(rate) = spec.rate {
        // Paced: about one call per half millisecond, so the pacing stays smooth.
        batch = batch.min((rate / 2000).max(1) as usize);
    }
    let mut bufs: Vec<Vec<u8>> = (0..batch).map(|_| Vec::with_capacity(1500)).collect();
    let start = Instant::now();
    let mut report = Report::default();
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        if spec.duration.is_some_and(|d| now - start >= d) {
            break;
        }
        let mut n = batch;
        if let Some(c) = spec.count {
            if report.sent >= c {
                break;
            }
            n = n.min((c - report.sent) as usize);
        }
        if let Some(rate) = spec.rate {
            let due = start + Duration::from_secs_f64(report.sent as f64 / rate as f64);
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        for b in &mut bufs[..n] {
            fill(b);
        }
        let mut done = 0;
        while done < n {
            match send_batch(sock, &dest, &bufs[done..n]) {
                Ok(k) => done += k,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)) => {
                    report.retries += 1;
                    std::thread::yield_now();
                }
                Err(e) => return Err(Error::Send(e)),
            }
        }
        report.sent += n as u64;
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// One `sendmmsg` call for `bufs`; returns how many the kernel took.
fn send_batch(sock: &Socket, dest: &SockAddr, bufs: &[Vec<u8>]) -> io::Result<usize> {
    let mut iovs: [libc::iovec; MAX_BATCH] =
        [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_BATCH];
    // SAFETY: mmsghdr is a plain C struct for which all-zero bytes are valid.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    for (i, b) in bufs.iter().enumerate() {
        iovs[i] = libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() };
        hdrs[i].msg_hdr.msg_name = dest.as_ptr() as *mut libc::c_void;
        hdrs[i].msg_hdr.msg_namelen = dest.len();
        hdrs[i].msg_hdr.msg_iov = &raw mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first bufs.len() headers point at live buffers, the iovecs and the address,
    // all of which outlive the call; the kernel only reads them (and writes msg_len).
    let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), bufs.len() as u32, 0) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn sends_the_count_in_batches_to_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let target = rx.local_addr().unwrap();
        let sock = socket(target).unwrap();
        let spec = Spec { target, rate: None, count: Some(100), duration: None, batch: 32 };
        let mut i = 0u32;
        let r = run(&sock, &spec, &AtomicBool::new(false), |b| {
            b.clear();
            b.extend_from_slice(format!("packet {i}").as_bytes());
            i += 1;
        })
        .unwrap();
        assert_eq!(r.sent, 100);
        let mut buf = [0u8; 64];
        for want in 0..100 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], format!("packet {want}").as_bytes());
        }
    }

    #[test]
    fn a_rate_is_kept() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = rx.local_addr().unwrap();
        let sock = socket(target).unwrap();
        let spec = Spec { target, rate: Some(2000), count: Some(400), duration: None, batch: 64 };
        let r = run(&sock, &spec, &AtomicBool::new(false), |b| {
            b.clear();
            b.push(b'x');
        })
        .unwrap();
        assert_eq!(r.sent, 400);
        // 400 datagrams at 2000/s cannot be done in much less than 0.2 s.
        assert!(r.elapsed >= Duration::from_millis(150), "{:?}", r.elapsed);
    }
}

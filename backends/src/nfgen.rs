//! The nftables ruleset generation, read over netlink: a cheap way for a backend's tamper
//! check to learn whether anything changed the ruleset since its last look.
//!
//! The kernel counts every committed nf_tables transaction in a network namespace (ours and
//! everyone else's: `nft`, `iptables-nft`, firewalld). Asking for the count is one netlink
//! request and answer, no process and no listing, so it can run every second. A backend
//! remembers the generation at its last full look and the number of transactions it made
//! itself since; if the generation moved by exactly that, nobody else changed anything and
//! the full look can be skipped. (`iptables-legacy` and `ipset` do not move it.)

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::BackendError;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

/// What a failure of this module's requests is about, for the error.
const OP: &str = "reading the ruleset generation";

fn io(source: std::io::Error) -> BackendError {
    BackendError::kernel(OP, source)
}

/// Opens a netfilter netlink socket (with a 5 s receive timeout, so no answer can block a
/// caller for longer) in the caller's network namespace, or, for tests, in the named one
/// (`/var/run/netns/<name>`, as `ip netns add` makes them).
pub fn socket(netns: Option<&str>) -> Result<OwnedFd, BackendError> {
    match netns {
        None => open_socket().map_err(io),
        Some(name) => {
            let path = format!("/var/run/netns/{name}");
            std::thread::spawn(move || -> std::io::Result<OwnedFd> {
                let ns = std::fs::File::open(&path)?;
                // SAFETY: setns with a namespace fd we opened; it changes only this
                // short-lived thread, and the socket keeps the namespace it was made in.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                open_socket()
            })
            .join()
            .map_err(|_| io(std::io::Error::other("namespace thread panicked")))?
            .map_err(io)
        }
    }
}

fn open_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    // SAFETY: valid fd and a timeval of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// The `NFT_MSG_GETGEN` request with sequence number `seq`.
fn request(seq: u32) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[..4].copy_from_slice(&20u32.to_ne_bytes());
    m[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // Port id 0 (the kernel fills it in); nfgenmsg: family 0, version 0, resource id 0.
    m
}

/// What one datagram of answers says about request `seq`.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Nothing final yet (other sequence numbers, or the generation before its ack).
    Pending(Option<u32>),
    /// The request was acknowledged; the generation, if it came.
    Done(Option<u32>),
    /// The kernel refused it with this errno.
    Refused(i32),
}

/// Reads the answers to `seq` in `buf` (several netlink messages); `seen` is a generation
/// found in an earlier datagram. Bounds-checked everywhere: the kernel is trusted, but a
/// short or odd message ends the walk rather than a panic.
fn parse(buf: &[u8], seq: u32, mut seen: Option<u32>) -> Answer {
    let word = |o: usize| buf.get(o..o + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let half = |o: usize| buf.get(o..o + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let mut at = 0usize;
    while at + 16 <= buf.len() {
        let len = word(at).unwrap_or(0) as usize;
        let ty = half(at + 4).unwrap_or(0);
        let mseq = word(at + 8).unwrap_or(0);
        if len < 16 || at + len > buf.len() {
            break;
        }
        if mseq == seq && ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
            // Attributes follow the 16-byte header and the 4-byte nfgenmsg.
            let mut a = at + 20;
            while a + 4 <= at + len {
                let alen = usize::from(half(a).unwrap_or(0));
                let aty = half(a + 2).unwrap_or(0) & !NLA_F_NESTED;
                if alen < 4 || a + alen > at + len {
                    break;
                }
                if aty == NFTA_GEN_ID && alen >= 8 {
                    seen = buf.get(a + 4..a + 8).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                }
                a += alen.next_multiple_of(4);
            }
        }
        if mseq == seq && ty == NLMSG_ERROR && len >= 20 {
            let code = word(at + 16).map_or(0, |w| w as i32);
            return if code == 0 { Answer::Done(seen) } else { Answer::Refused(-code) };
        }
        at += len.next_multiple_of(4);
    }
    Answer::Pending(seen)
}

/// Asks the kernel, through `fd` (from [`socket`]), for the ruleset generation of the
/// socket's network namespace; `seq` must differ from the previous request's on that socket
/// (answers to older requests still queued are skipped).
pub fn generation(fd: BorrowedFd<'_>, seq: u32) -> Result<u32, BackendError> {
    let req = request(seq);
    // SAFETY: all-zero is a valid sockaddr_nl; pid 0 addresses the kernel.
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: valid fd, buffer and address of the stated lengths.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 || n as usize != req.len() {
        return Err(io(std::io::Error::last_os_error()));
    }
    let mut buf = vec![0u8; 4096];
    let mut seen = None;
    loop {
        // SAFETY: valid fd and buffer; the receive timeout set at open bounds the wait.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io(e));
        }
        match parse(&buf[..n as usize], seq, seen) {
            Answer::Pending(s) => seen = s,
            Answer::Done(Some(g)) => return Ok(g),
            Answer::Done(None) => {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "no generation id in the answer",
                )));
            }
            Answer::Refused(errno) => {
                return Err(io(std::io::Error::from_raw_os_error(errno)));
            }
        }
    }
}

/// A socket kept for repeated generation queries (one per backend).
#[derive(Debug)]
pub struct Generation {
    fd: OwnedFd,
    seq: u32,
}

impl Generation {
    /// Opens the socket (see [`socket`] for `netns`).
    pub fn open(netns: Option<&str>) -> Result<Self, BackendError> {
        Ok(Self { fd: socket(netns)?, seq: 1 })
    }

    /// The current generation.
    pub fn read(&mut self) -> Result<u32, BackendError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        generation(self.fd.as_fd(), seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A named network namespace of our own, removed on drop.
    struct Ns(String);

    impl Ns {
        fn new() -> Self {
            // SAFETY: geteuid has no preconditions.
            assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (a network namespace)");
            let name = format!("nfgen-{}", std::process::id());
            let ok = Command::new("ip").args(["netns", "add", &name]).status().unwrap().success();
            assert!(ok, "ip netns add {name} failed");
            Self(name)
        }

        fn nft(&self, args: &[&str]) {
            let ok = Command::new("ip")
                .args(["netns", "exec", &self.0, "nft"])
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "nft {args:?} failed");
        }
    }

    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn every_commit_moves_the_generation_by_one_and_reads_do_not() {
        let ns = Ns::new();
        let mut g = Generation::open(Some(&ns.0)).unwrap();
        let first = g.read().unwrap();
        assert_eq!(g.read().unwrap(), first, "a read moved the generation");
        ns.nft(&["add", "table", "inet", "t"]);
        assert_eq!(g.read().unwrap(), first.wrapping_add(1));
        // One transaction with several commands is one step.
        ns.nft(&["add chain inet t a; add chain inet t b"]);
        assert_eq!(g.read().unwrap(), first.wrapping_add(2));
        // A refused transaction commits nothing.
        let refused = Command::new("ip")
            .args(["netns", "exec", &ns.0, "nft", "delete", "table", "inet", "missing"])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!refused.success());
        assert_eq!(g.read().unwrap(), first.wrapping_add(2));
    }

    #[test]
    fn a_missing_namespace_is_an_error() {
        let e = Generation::open(Some("no-such-namespace-for-nfgen")).unwrap_err();
        assert!(matches!(e, BackendError::Kernel { .. }), "{e}");
    }

    #[test]
    fn answers_are_parsed_with_bounds_and_other_sequences_skipped() {
        // NEWGEN for seq 7 with NFTA_GEN_ID = 0x01020304, then the ack for seq 7.
        let mut buf = Vec::new();
        let newgen = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN;
        let mut msg = |ty: u16, seq: u32, body: &[u8]| {
            buf.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
            buf.extend_from_slice(&ty.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(body);
        };
        let mut gen_body = vec![0u8; 4];
        gen_body.extend_from_slice(&8u16.to_ne_bytes());
        gen_body.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        gen_body.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        msg(newgen, 6, &gen_body); // an old request's answer: ignored
        msg(newgen, 7, &gen_body);
        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend_from_slice(&[0u8; 16]);
        msg(NLMSG_ERROR, 7, &ack);
        assert_eq!(parse(&buf, 7, None), Answer::Done(Some(0x0102_0304)));
        assert_eq!(parse(&buf, 8, None), Answer::Pending(None));
        // Truncated anywhere: no panic, nothing final.
        for cut in 0..buf.len() {
            let a = parse(&buf[..cut], 7, None);
            assert!(matches!(a, Answer::Pending(_)), "{cut}: {a:?}");
        }
        let mut refused = Vec::new();
        refused.extend_from_slice(&20u32.to_ne_bytes());
        refused.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        refused.extend_from_slice(&0u16.to_ne_bytes());
        refused.extend_from_slice(&9u32.to_ne_bytes());
        refused.extend_from_slice(&0u32.to_ne_bytes());
        refused.extend_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(parse(&refused, 9, None), Answer::Refused(1));
    }
}

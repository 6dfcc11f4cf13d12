//! The grant path without any process: set elements added and deleted over nfnetlink.
//!
//! `nft -i` costs 0.4–1 ms per command, most of it rebuilding its cache of our table after every
//! commit. A grant only adds or deletes elements of sets that already exist, so we send those
//! messages ourselves: one `NFNL_MSG_BATCH_BEGIN` … `NFT_MSG_NEWSETELEM`/`NFT_MSG_DELSETELEM`
//! … `NFNL_MSG_BATCH_END` batch per grant, which the kernel applies as one transaction, exactly
//! as `nft` would for the same line, with each message acknowledged.
//!
//! Element encoding follows nftables: a concatenated key or data value is its components in
//! order, each padded to 4 bytes (addresses and ports in network order); a single `inet_service`
//! map value is its 2 bytes. A timeout is milliseconds (big-endian u64); the comment is the
//! `NFTNL_UDATA_SET_ELEM_COMMENT` user-data record nft itself writes, so `nft list` shows it.
//! Everything else (creating, resetting, listing, removing the table) stays with `nft -f`.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use spa_backends::BackendError;

use crate::model::{Data, Elem, Key};
use crate::render::Op;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;
const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;

/// One netlink message under construction.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Self { buf, nests: Vec::new() }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, value: &[u8]) {
        let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    fn strz(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v);
    }

    fn begin(&mut self, ty: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    fn end(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn push_addr(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

/// A key as the kernel stores it: each component padded to 4 bytes (addresses as they are,
/// the protocol number in the first byte, each port big-endian in the first two; the source
/// port, when the key has one, between the protocol and the destination port).
fn encode_key(k: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(44);
    push_addr(&mut out, k.src);
    if let Some(d) = k.dst {
        push_addr(&mut out, d);
    }
    if let Some(p) = k.port {
        out.extend_from_slice(&[p.proto.number(), 0, 0, 0]);
        if let Some(sp) = k.sport {
            out.extend_from_slice(&sp.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
        out.extend_from_slice(&p.port.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out
}

/// Map data as the kernel stores it: a lone `inet_service` is its 2 bytes; in a
/// concatenation the port is padded to 4.
fn encode_data(d: &Data) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    match *d {
        Data::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
        Data::Addr(a) => push_addr(&mut out, a),
        Data::AddrPort(a, p) => {
            push_addr(&mut out, a);
            out.extend_from_slice(&p.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
    }
    out
}

/// One element's attributes inside `NFTA_SET_ELEM_LIST_ELEMENTS`.
fn element(m: &mut Msg, elem: &Elem, data: Option<&Data>, timeout: Option<(u64, &str)>) {
    m.begin(NFTA_LIST_ELEM);
    m.begin(NFTA_SET_ELEM_KEY);
    m.attr(NFTA_DATA_VALUE, &encode_key(&elem.key));
    m.end();
    if let Some((secs, comment)) = timeout {
        m.attr(NFTA_SET_ELEM_TIMEOUT, &secs.saturating_mul(1000).to_be_bytes());
        let mut ud = vec![NFTNL_UDATA_SET_ELEM_COMMENT, u8::try_from(comment.len() + 1).unwrap_or(u8::MAX)];
        ud.extend_from_slice(comment.as_bytes());
        ud.push(0);
        m.attr(NFTA_SET_ELEM_USERDATA, &ud);
    }
    if let Some(d) = data {
        m.begin(NFTA_SET_ELEM_DATA);
        m.attr(NFTA_DATA_VALUE, &encode_data(d));
        m.end();
    }
    m.end();
}

/// A netlink socket to the nftables subsystem of one network namespace.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a socket in the caller's network namespace (`netns`: a named one, for tests).
    pub fn open(netns: Option<&str>) -> Result<Self, BackendError> {
        Ok(Self { fd: spa_backends::nfgen::socket(netns)?, seq: 1 })
    }

    /// Applies `ops` to `table` as one transaction; an error names the kernel's reason.
    pub fn apply(&mut self, table: &str, ops: &[Op]) -> Result<(), BackendError> {
        let base = self.seq;
        let mut msgs: Vec<(u32, String)> = Vec::new();
        let mut batch = Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, base, 0, NFNL_SUBSYS_NFTABLES).finish();
        let mut seq = base;
        let mut push = |ty: u16, elem: &Elem, data: Option<&Data>, timeout: Option<(u64, &str)>| {
            seq += 1;
            let flags = NLM_F_REQUEST | NLM_F_ACK | if ty == NFT_MSG_NEWSETELEM { NLM_F_CREATE } else { 0 };
            let mut m = Msg::new((NFNL_SUBSYS_NFTABLES << 8) | ty, flags, seq, NFPROTO_INET, 0);
            m.strz(NFTA_SET_ELEM_LIST_TABLE, table);
            m.strz(NFTA_SET_ELEM_LIST_SET, &elem.set.name());
            m.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
            element(&mut m, elem, data, timeout);
            m.end();
            batch.extend_from_slice(&m.finish());
            let verb = if ty == NFT_MSG_NEWSETELEM { "add" } else { "delete" };
            msgs.push((seq, format!("{verb} element {} {{ {} }}", elem.set.name(), elem.key)));
        };
        for op in ops {
            match op {
                Op::Put { elem, timeout, comment, fresh: true, .. } => {
                    push(NFT_MSG_NEWSETELEM, elem, elem.data.as_ref(), Some((*timeout, comment)));
                }
                Op::Put { elem, timeout, comment, fresh: false, .. } => {
                    // As the nft line does: make sure it exists (with the data the kernel may
                    // hold), delete it, add it with the new timeout; one transaction.
                    push(NFT_MSG_NEWSETELEM, elem, op.existing_data(), None);
                    push(NFT_MSG_DELSETELEM, elem, None, None);
                    push(NFT_MSG_NEWSETELEM, elem, elem.data.as_ref(), Some((*timeout, comment)));
                }
                Op::Remove { elem, .. } => {
                    push(NFT_MSG_NEWSETELEM, elem, op.existing_data(), None);
                    push(NFT_MSG_DELSETELEM, elem, None, None);
                }
            }
        }
        seq += 1;
        batch.extend_from_slice(
            &Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES).finish(),
        );
        self.seq = seq.wrapping_add(1);
        self.send(&batch)?;
        self.acks(&msgs)
    }

    /// The ruleset's generation: the kernel counts every committed transaction (ours and
    /// everyone else's) in this network namespace. Cheap: one request, no listing (see
    /// [`spa_backends::nfgen`]).
    pub fn genid(&mut self) -> Result<u32, BackendError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        spa_backends::nfgen::generation(self.fd.as_fd(), seq)
    }

    fn send(&self, buf: &[u8]) -> Result<(), BackendError> {
        // SAFETY: all-zero is a valid sockaddr_nl; pid 0 addresses the kernel.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: valid fd, buffer and address of the stated lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 || n as usize != buf.len() {
            return Err(BackendError::kernel("sending a batch", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Reads one acknowledgement per message; the first error names its message. (After an
    /// error the kernel has aborted the whole batch; answers still queued for it carry old
    /// sequence numbers and are skipped by the next call.)
    fn acks(&self, msgs: &[(u32, String)]) -> Result<(), BackendError> {
        let mut pending: Vec<u32> = msgs.iter().map(|(s, _)| *s).collect();
        let mut buf = vec![0u8; 16384];
        while !pending.is_empty() {
            // SAFETY: valid fd and buffer; the receive timeout set at open bounds the wait.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(BackendError::kernel("reading acknowledgements", e));
            }
            let mut at = 0usize;
            let n = n as usize;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
                if len < 16 || at + len > n {
                    break;
                }
                if ty == NLMSG_ERROR && len >= 20 {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap_or_default());
                    if pending.contains(&seq) && code != 0 {
                        let what = msgs.iter().find(|(s, _)| *s == seq).map_or("batch", |(_, w)| w.as_str());
                        return Err(BackendError::kernel(what, std::io::Error::from_raw_os_error(-code)));
                    }
                    pending.retain(|s| *s != seq);
                }
                at += len.next_multiple_of(4);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_encoded_like_nft() {
        let tcp22: spa_backends::ProtoPort = "tcp/22".parse().unwrap();
        let k = Key { src: "192.0.2.1".parse().unwrap(), dst: None, port: Some(tcp22), sport: None };
        assert_eq!(encode_key(&k), [192, 0, 2, 1, 6, 0, 0, 0, 0, 22, 0, 0]);
        let k = Key { sport: Some(40000), ..k };
        assert_eq!(encode_key(&k), [192, 0, 2, 1, 6, 0, 0, 0, 0x9c, 0x40, 0, 0, 0, 22, 0, 0]);
        assert_eq!(
            encode_data(&Data::AddrPort("10.0.0.2".parse().unwrap(), 2222)),
            [10, 0, 0, 2, 0x08, 0xae, 0, 0]
        );
        assert_eq!(encode_data(&Data::Port(2222)), [0x08, 0xae]);
        let v6 = Key {
            src: "2001:db8::1".parse().unwrap(),
            dst: Some("2001:db8::2".parse().unwrap()),
            port: None,
            sport: None,
        };
        assert_eq!(encode_key(&v6).len(), 32);
    }

    #[test]
    fn messages_are_aligned_and_nested() {
        let mut m = Msg::new(0x0a0c, NLM_F_REQUEST, 7, NFPROTO_INET, 0);
        m.strz(NFTA_SET_ELEM_LIST_TABLE, "spa");
        m.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        m.attr(NFTA_DATA_VALUE, &[1, 2, 3]);
        m.end();
        let b = m.finish();
        assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()) as usize, b.len());
        assert_eq!(b.len() % 4, 0);
        // header 16 + nfgenmsg 4 + "spa\0" attr 8 + nest header 4 + 3-byte attr padded to 8
        assert_eq!(b.len(), 16 + 4 + 8 + 4 + 8);
        assert_eq!(u16::from_ne_bytes(b[28..30].try_into().unwrap()), 12);
    }
}

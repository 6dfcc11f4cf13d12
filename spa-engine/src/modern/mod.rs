//! The modern wire format (`SPA1.`): per-user Ed25519 signatures, packets sealed to the
//! server's X25519 key with HPKE, a cheap MAC in front. Specified in `docs/modern-format.md`;
//! this module is that document in code, and the two must agree (its test vectors are
//! `testdata/modern-vectors.txt`).
//!
//! ```text
//! wire   = "SPA1." base64(packet)                     (standard alphabet, no '=')
//! packet = version(1) timestamp(8) enc(32) ciphertext(n+16) mac(16)
//!          \____ header ____/
//! ciphertext = HPKE-seal(server key, info "spa modern v1", aad header,
//!                        plaintext = user key(32) signature(64) body(m, padded to 32))
//! signature  = Ed25519(user, "spa modern v1 signature" server-key header enc user-key body)
//! mac        = HMAC-SHA256(SHA-256("spa modern v1 mac key" server-key), packet before mac)[..16]
//! ```
//!
//! - Client: build a [`ModernRequest`], then [`seal`] it with the user's key, the server's
//!   public key, the time and randomness.
//! - Server: the [`crate::Verifier`] opens `SPA1.` packets for stanzas with
//!   `format = "modern"` (see [`crate::Verifier::with_server_key`]).
//! - Debugging: [`open`] authenticates and decodes one packet with the server's secret key.

pub(crate) mod hpke;
pub mod keys;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest as _, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::access::{AccessMessage, NatAccess, NatHost, Proto, ProtoPort};
use crate::message::{MAX_CLIENT_TIMEOUT, MAX_USERNAME_LEN, Request, valid_username};
use crate::verdict::{Field, RejectReason};
use crate::{Entropy, Error, b64};

pub(crate) use keys::UserVerifier;
pub use keys::{ServerPublicKey, ServerSecretKey, UserPublicKey, UserSigningKey};

/// What every modern packet starts with on the wire. The `.` never occurs in an fwknop packet
/// (base64 text), so the two formats cannot be confused; the `1` is the format version.
pub const TEXT_PREFIX: &str = "SPA1.";
/// The version byte that starts the binary packet.
pub const VERSION: u8 = 1;
/// HPKE's `info` for every packet.
pub const HPKE_INFO: &[u8] = b"spa modern v1";
/// What the user's signature covers first (domain separation from any other use of the key).
pub const SIGNATURE_CONTEXT: &[u8] = b"spa modern v1 signature";
/// Hashed with the server's public key into the key of the cheap MAC.
pub const MAC_KEY_LABEL: &[u8] = b"spa modern v1 mac key";

/// Version and timestamp: the cleartext header, the AEAD's associated data.
pub const HEADER_LEN: usize = 9;
/// The ephemeral X25519 public key (HPKE's `enc`).
pub const ENC_LEN: usize = 32;
/// The Poly1305 tag.
pub const TAG_LEN: usize = hpke::TAG_LEN;
/// The truncated HMAC at the end.
pub const MAC_LEN: usize = 16;
/// The user's public key at the start of the plaintext.
pub const USER_KEY_LEN: usize = 32;
/// The Ed25519 signature after it.
pub const SIGNATURE_LEN: usize = 64;
/// The random nonce at the start of the body.
pub const NONCE_LEN: usize = 16;
/// The plaintext is padded with zeros to a multiple of this.
pub const PAD_TO: usize = 32;
/// Most ports one packet may ask for.
pub const MAX_PORTS: usize = 32;
/// Bytes of the packet around the plaintext: header, enc, tag, MAC.
pub const OVERHEAD: usize = HEADER_LEN + ENC_LEN + TAG_LEN + MAC_LEN;
/// The smallest plaintext: key, signature, the shortest body (22 bytes), padded.
pub const MIN_PLAINTEXT_LEN: usize = 128;
/// The shortest packet, in bytes.
pub const MIN_PACKET_LEN: usize = OVERHEAD + MIN_PLAINTEXT_LEN;
/// The shortest wire text.
pub const MIN_TEXT_LEN: usize = TEXT_PREFIX.len() + b64::encoded_len(MIN_PACKET_LEN);
/// The longest wire text accepted. The largest packet the encoder can make (32 ports, a
/// 253-character NAT host name, a 48-byte username, every option) is 828 characters, so a
/// knock fits one datagram well below 1200 bytes on any path (IPv6's minimum MTU included).
pub const MAX_TEXT_LEN: usize = 1024;
/// The longest packet, in bytes.
pub const MAX_PACKET_LEN: usize = (MAX_TEXT_LEN - TEXT_PREFIX.len()) * 3 / 4;

const FLAG_SOURCE_PORT: u8 = 0x01;
const FLAG_NAT: u8 = 0x02;
const FLAG_LOCAL_NAT: u8 = 0x04;
const FLAG_USERNAME: u8 = 0x08;
const FLAG_TIMEOUT: u8 = 0x10;
const FLAGS_KNOWN: u8 = 0x1f;

const ADDR_SOURCE: u8 = 0;
const ADDR_NAME: u8 = 2;
const ADDR_V4: u8 = 4;
const ADDR_V6: u8 = 6;

/// True when `payload` is a modern packet (`SPA` + a version character + `.`), of any
/// version; everything else is for the fwknop path.
pub fn is_modern(payload: &[u8]) -> bool {
    payload.len() >= TEXT_PREFIX.len() && payload.starts_with(b"SPA") && payload[4] == b'.'
}

/// What a user asks for in one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModernRequest {
    /// The address to let in; `None` means "the address this packet comes from".
    pub allow: Option<IpAddr>,
    /// The ports to open (1 to [`MAX_PORTS`]); with NAT, the ports as seen from outside.
    pub ports: Vec<ProtoPort>,
    /// The TCP source port the client will connect from, so the server can grant exactly that
    /// connection (knock-and-connect); `None` for a grant to the whole address.
    pub source_port: Option<u16>,
    /// Forwarding to an internal host, or a redirect to a local port.
    pub nat: Option<NatRequest>,
    /// The client's user name, for the audit trail (the identity is the signing key).
    pub username: Option<String>,
    /// Seconds of access asked for (1 to 65536); the stanza caps it.
    pub client_timeout: Option<u32>,
}

/// A NAT request, as fwknop's NAT access message types carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatRequest {
    /// Forward the requested port to `host:port` (fwknop `-N host:port`).
    Forward {
        /// The internal host: an address, or a DNS name the server resolves.
        host: NatHost,
        /// The internal port.
        port: u16,
    },
    /// Redirect the requested port to this local port (fwknop `--nat-local`).
    Local {
        /// The local port.
        port: u16,
    },
}

/// The decoded body of a packet: its random nonce and the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    /// 16 random bytes: two packets never have the same body.
    pub nonce: [u8; NONCE_LEN],
    /// What is asked for.
    pub request: ModernRequest,
}

/// An authenticated, decoded packet (see [`open`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The client's clock at sealing time, Unix seconds.
    pub timestamp: u64,
    /// Who signed it.
    pub user: UserPublicKey,
    /// What it says.
    pub body: Body,
}

/// Maps IPv4-mapped IPv6 addresses to IPv4, so each address has one encoding.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    crate::stanza::canonical(ip)
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            out.push(ADDR_V4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(ADDR_V6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

impl Body {
    /// The body's bytes, padded with zeros so that the plaintext (key, signature and body) is
    /// a multiple of [`PAD_TO`] bytes. Refuses requests outside the format's limits.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let r = &self.request;
        let bad = |f| Err(Error::InvalidField(f));
        let mut out = Zeroizing::new(Vec::with_capacity(128));
        out.extend_from_slice(&self.nonce);
        let mut flags = 0;
        if r.source_port.is_some() {
            flags |= FLAG_SOURCE_PORT;
        }
        match r.nat {
            Some(NatRequest::Forward { .. }) => flags |= FLAG_NAT,
            Some(NatRequest::Local { .. }) => flags |= FLAG_LOCAL_NAT,
            None => {}
        }
        if r.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        if r.client_timeout.is_some() {
            flags |= FLAG_TIMEOUT;
        }
        out.push(flags);
        match r.allow.map(canonical_ip) {
            Some(ip) if ip.is_unspecified() => return bad(Field::Message),
            Some(ip) => put_ip(&mut out, ip),
            None => out.push(ADDR_SOURCE),
        }
        if let Some(p) = r.source_port {
            if p == 0 {
                return bad(Field::SourcePort);
            }
            out.extend_from_slice(&p.to_be_bytes());
        }
        if r.ports.is_empty() || r.ports.len() > MAX_PORTS || r.ports.iter().any(|p| p.port == 0) {
            return bad(Field::Message);
        }
        out.push(r.ports.len() as u8);
        for p in &r.ports {
            out.push(p.proto.number());
            out.extend_from_slice(&p.port.to_be_bytes());
        }
        match &r.nat {
            Some(NatRequest::Forward { host, port }) => {
                match host {
                    NatHost::Ip(ip) if canonical_ip(*ip).is_unspecified() => return bad(Field::NatAccess),
                    NatHost::Ip(ip) => put_ip(&mut out, *ip),
                    NatHost::Name(name) => {
                        if !matches!(name.parse::<NatHost>(), Ok(NatHost::Name(_))) {
                            return bad(Field::NatAccess);
                        }
                        out.push(ADDR_NAME);
                        out.push(name.len() as u8);
                        out.extend_from_slice(name.as_bytes());
                    }
                }
                if *port == 0 {
                    return bad(Field::NatAccess);
                }
                out.extend_from_slice(&port.to_be_bytes());
            }
            Some(NatRequest::Local { port }) => {
                if *port == 0 {
                    return bad(Field::NatAccess);
                }
                out.extend_from_slice(&port.to_be_bytes());
            }
            None => {}
        }
        if let Some(u) = &r.username {
            if !valid_username(u) {
                return bad(Field::Username);
            }
            out.push(u.len() as u8);
            out.extend_from_slice(u.as_bytes());
        }
        if let Some(t) = r.client_timeout {
            if t == 0 || t > MAX_CLIENT_TIMEOUT {
                return bad(Field::ClientTimeout);
            }
            out.extend_from_slice(&t.to_be_bytes());
        }
        // The plaintext before the body (key and signature) is a multiple of PAD_TO already.
        let padded = out.len().next_multiple_of(PAD_TO);
        out.resize(padded, 0);
        Ok(out)
    }

    /// Decodes a padded body, strictly: every request has exactly one encoding, so a body that
    /// decodes re-encodes to the same bytes.
    pub fn decode(padded: &[u8]) -> Result<Body, RejectReason> {
        let mut r = Reader(padded);
        let nonce = r.array::<NONCE_LEN>(Field::Framing)?;
        let flags = r.u8(Field::Framing)?;
        if flags & !FLAGS_KNOWN != 0 || flags & (FLAG_NAT | FLAG_LOCAL_NAT) == FLAG_NAT | FLAG_LOCAL_NAT {
            return Err(RejectReason::MalformedField(Field::Framing));
        }
        let allow = match r.u8(Field::Message)? {
            ADDR_SOURCE => None,
            tag => Some(r.ip(tag, Field::Message)?),
        };
        let source_port = if flags & FLAG_SOURCE_PORT != 0 { Some(r.port(Field::SourcePort)?) } else { None };
        let count = usize::from(r.u8(Field::Message)?);
        if count == 0 || count > MAX_PORTS {
            return Err(RejectReason::MalformedField(Field::Message));
        }
        let mut ports = Vec::with_capacity(count);
        for _ in 0..count {
            let proto = match r.u8(Field::Message)? {
                6 => Proto::Tcp,
                17 => Proto::Udp,
                _ => return Err(RejectReason::MalformedField(Field::Message)),
            };
            ports.push(ProtoPort::new(proto, r.port(Field::Message)?));
        }
        let nat = if flags & FLAG_NAT != 0 {
            let host = match r.u8(Field::NatAccess)? {
                ADDR_NAME => {
                    let len = usize::from(r.u8(Field::NatAccess)?);
                    let name = std::str::from_utf8(r.take(len, Field::NatAccess)?)
                        .map_err(|_| RejectReason::MalformedField(Field::NatAccess))?;
                    // A name that reads as an address must be sent as one.
                    match name.parse::<NatHost>() {
                        Ok(NatHost::Name(n)) => NatHost::Name(n),
                        _ => return Err(RejectReason::MalformedField(Field::NatAccess)),
                    }
                }
                tag => NatHost::Ip(r.ip(tag, Field::NatAccess)?),
            };
            Some(NatRequest::Forward { host, port: r.port(Field::NatAccess)? })
        } else if flags & FLAG_LOCAL_NAT != 0 {
            Some(NatRequest::Local { port: r.port(Field::NatAccess)? })
        } else {
            None
        };
        let username = if flags & FLAG_USERNAME != 0 {
            let len = usize::from(r.u8(Field::Username)?);
            if len > MAX_USERNAME_LEN {
                return Err(RejectReason::MalformedField(Field::Username));
            }
            let u = std::str::from_utf8(r.take(len, Field::Username)?)
                .map_err(|_| RejectReason::MalformedField(Field::Username))?;
            if !valid_username(u) {
                return Err(RejectReason::MalformedField(Field::Username));
            }
            Some(u.to_owned())
        } else {
            None
        };
        let client_timeout = if flags & FLAG_TIMEOUT != 0 {
            let t = u32::from_be_bytes(r.array::<4>(Field::ClientTimeout)?);
            if t == 0 || t > MAX_CLIENT_TIMEOUT {
                return Err(RejectReason::MalformedField(Field::ClientTimeout));
            }
            Some(t)
        } else {
            None
        };
        // Exactly the padding the encoder writes: zeros up to the next multiple of PAD_TO.
        let used = padded.len() - r.0.len();
        if padded.len() != used.next_multiple_of(PAD_TO) || r.0.iter().any(|&b| b != 0) {
            return Err(RejectReason::MalformedField(Field::Framing));
        }
        Ok(Body {
            nonce,
            request: ModernRequest { allow, ports, source_port, nat, username, client_timeout },
        })
    }
}

/// A cursor over the body; running out is a malformed `field`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: Field) -> Result<&'a [u8], RejectReason> {
        if self.0.len() < n {
            return Err(RejectReason::MalformedField(field));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: Field) -> Result<[u8; N], RejectReason> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: Field) -> Result<u8, RejectReason> {
        Ok(self.take(1, field)?[0])
    }

    fn port(&mut self, field: Field) -> Result<u16, RejectReason> {
        let p = u16::from_be_bytes(self.array::<2>(field)?);
        if p == 0 { Err(RejectReason::MalformedField(field)) } else { Ok(p) }
    }

    /// An address after its tag: neither unspecified nor IPv4-mapped (those have other
    /// encodings).
    fn ip(&mut self, tag: u8, field: Field) -> Result<IpAddr, RejectReason> {
        let ip = match tag {
            ADDR_V4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?)),
            ADDR_V6 => {
                let v6 = Ipv6Addr::from(self.array::<16>(field)?);
                if v6.to_ipv4_mapped().is_some() {
                    return Err(RejectReason::MalformedField(field));
                }
                IpAddr::V6(v6)
            }
            _ => return Err(RejectReason::MalformedField(field)),
        };
        if ip.is_unspecified() {
            return Err(RejectReason::MalformedField(field));
        }
        Ok(ip)
    }
}

impl ModernRequest {
    /// The request as the policy stage shared with the fwknop format reads it: "use the
    /// packet's source" becomes `0.0.0.0`, as fwknop's `-s` writes it.
    pub(crate) fn to_request(&self) -> Request {
        let access = AccessMessage {
            allow: self.allow.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), canonical_ip),
            ports: self.ports.clone(),
        };
        match &self.nat {
            None => Request::Access(access),
            Some(NatRequest::Forward { host, port }) => {
                Request::NatAccess(access, NatAccess { host: host.clone(), port: *port })
            }
            // The policy reads only the port of a local NAT request.
            Some(NatRequest::Local { port }) => Request::LocalNatAccess(
                access,
                NatAccess { host: NatHost::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)), port: *port },
            ),
        }
    }
}

/// The key of the cheap MAC for a server: SHA-256 of a label and its public key, so that only
/// senders who know the public key can make a packet that passes.
pub fn mac_key(server: &ServerPublicKey) -> [u8; 32] {
    Sha256::new().chain_update(MAC_KEY_LABEL).chain_update(server.as_bytes()).finalize().into()
}

/// The bytes the user signs.
fn transcript(server: &[u8; 32], header: &[u8], enc: &[u8], user: &[u8; 32], body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(SIGNATURE_CONTEXT.len() + 32 + HEADER_LEN + ENC_LEN + 32 + body.len());
    for part in [SIGNATURE_CONTEXT, server, header, enc, user, body] {
        t.extend_from_slice(part);
    }
    t
}

/// Seals `request` for the server with public key `server`, signed by `user`, stamped `now`
/// (Unix seconds). Draws 32 bytes (the ephemeral X25519 secret) and then 16 bytes (the nonce)
/// from `rng`, in that order. Returns the wire text (ASCII, no newline).
pub fn seal(
    request: &ModernRequest,
    user: &UserSigningKey,
    server: &ServerPublicKey,
    now: u64,
    rng: &mut dyn Entropy,
) -> Result<String, Error> {
    let mut eph = Zeroizing::new([0u8; 32]);
    rng.fill(&mut eph[..]);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce);
    let body = Body { nonce, request: request.clone() }.encode()?;
    seal_parts(&body, Signer::Key(user), server, now, &eph)
}

/// Who signs a packet being sealed.
enum Signer<'a> {
    /// The user's key, over the transcript.
    Key(&'a UserSigningKey),
    /// Given bytes: what anyone who knows the server's public key can send.
    Given { user: [u8; 32], signature: [u8; 64] },
}

/// Seals a padded body (any bytes: the callers below make malformed ones on purpose).
fn seal_parts(
    body: &[u8],
    signer: Signer<'_>,
    server: &ServerPublicKey,
    now: u64,
    eph: &[u8; 32],
) -> Result<String, Error> {
    let mut header = [0u8; HEADER_LEN];
    header[0] = VERSION;
    header[1..].copy_from_slice(&now.to_be_bytes());
    let sk_e = StaticSecret::from(*eph);
    let (ctx, enc) = hpke::setup_sender(&sk_e, &PublicKey::from(server.to_bytes()), HPKE_INFO)
        .ok_or(Error::WeakKey { what: "x25519 public key" })?;
    let (user_key, sig) = match signer {
        Signer::Key(user) => {
            let u = user.public_key().to_bytes();
            (u, user.sign(&transcript(server.as_bytes(), &header, &enc, &u, body)))
        }
        Signer::Given { user, signature } => (user, signature),
    };

    let mut packet = Zeroizing::new(Vec::with_capacity(OVERHEAD + USER_KEY_LEN + SIGNATURE_LEN + body.len()));
    packet.extend_from_slice(&header);
    packet.extend_from_slice(&enc);
    let pt_start = packet.len();
    packet.extend_from_slice(&user_key);
    packet.extend_from_slice(&sig);
    packet.extend_from_slice(body);
    let tag = ctx.seal(&header, &mut packet[pt_start..]);
    packet.extend_from_slice(&tag);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&mac_key(server))
        .unwrap_or_else(|_| unreachable!("hmac takes any key length"));
    mac.update(&packet);
    packet.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);

    let mut text = String::with_capacity(TEXT_PREFIX.len() + b64::encoded_len(packet.len()));
    text.push_str(TEXT_PREFIX);
    b64::encode_into(&packet[..], &mut text);
    if text.len() > MAX_TEXT_LEN {
        return Err(Error::PacketTooLong { len: text.len(), max: MAX_TEXT_LEN });
    }
    Ok(text)
}

/// Seals `body` exactly as given (no checks, no padding), correctly signed by `user`: for
/// tests that need an authentic packet with a malformed body. Draws only the ephemeral
/// secret. Not for clients.
#[doc(hidden)]
pub fn seal_raw_body(
    body: &[u8],
    user: &UserSigningKey,
    server: &ServerPublicKey,
    now: u64,
    rng: &mut dyn Entropy,
) -> Result<String, Error> {
    let mut eph = Zeroizing::new([0u8; 32]);
    rng.fill(&mut eph[..]);
    seal_parts(body, Signer::Key(user), server, now, &eph)
}

/// Seals `body` with whatever claimed key and signature bytes are given: what anyone who knows
/// the server's public key can send, for tests of the server's refusals. Not for clients.
#[doc(hidden)]
pub fn seal_forged(
    body: &[u8],
    user: [u8; 32],
    signature: [u8; 64],
    server: &ServerPublicKey,
    now: u64,
    rng: &mut dyn Entropy,
) -> Result<String, Error> {
    let mut eph = Zeroizing::new([0u8; 32]);
    rng.fill(&mut eph[..]);
    seal_parts(body, Signer::Given { user, signature }, server, now, &eph)
}

/// The HPKE values of one packet (see [`hpke_values`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct HpkeValues {
    /// The ephemeral public key.
    pub enc: [u8; 32],
    /// DHKEM's shared secret.
    pub shared_secret: [u8; 32],
    /// The ChaCha20-Poly1305 key.
    pub key: [u8; 32],
    /// The ChaCha20-Poly1305 nonce (the base nonce: one message, sequence number 0).
    pub nonce: [u8; 12],
}

/// The HPKE values of a packet sealed with the ephemeral secret `ephemeral` to `server`.
/// Printed in the test vectors so that another implementation can find where it differs.
/// Not for clients.
#[doc(hidden)]
pub fn hpke_values(ephemeral: &[u8; 32], server: &ServerPublicKey) -> Option<HpkeValues> {
    let (shared, enc) = hpke::encap(&StaticSecret::from(*ephemeral), &PublicKey::from(server.to_bytes()))?;
    let ctx = hpke::key_schedule(&shared, HPKE_INFO);
    Some(HpkeValues { enc, shared_secret: *shared, key: *ctx.key, nonce: ctx.nonce })
}

/// The bytes a user signs for a packet (see the module documentation): exposed for the test
/// vectors.
#[doc(hidden)]
pub fn signature_transcript(
    server: &ServerPublicKey,
    header: &[u8; HEADER_LEN],
    enc: &[u8; 32],
    user: &UserPublicKey,
    padded_body: &[u8],
) -> Vec<u8> {
    transcript(server.as_bytes(), header, enc, user.as_bytes(), padded_body)
}

/// The server's side, prepared once: its key and the keyed MAC state.
#[derive(Clone)]
pub(crate) struct Server {
    key: ServerSecretKey,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Server({:?})", self.key)
    }
}

/// A decrypted plaintext, still to be authenticated by its signature.
pub(crate) struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    /// The public key the sender claims.
    pub(crate) fn user(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(&self.0[..USER_KEY_LEN]);
        k
    }

    fn signature(&self) -> [u8; 64] {
        let mut s = [0u8; 64];
        s.copy_from_slice(&self.0[USER_KEY_LEN..USER_KEY_LEN + SIGNATURE_LEN]);
        s
    }

    /// The padded body.
    pub(crate) fn body(&self) -> &[u8] {
        &self.0[USER_KEY_LEN + SIGNATURE_LEN..]
    }
}

/// The decoded packet bytes, at most [`MAX_PACKET_LEN`] (the buffer has room for the
/// decoder's rounding).
pub(crate) struct Packet {
    buf: [u8; MAX_PACKET_LEN + 4],
    len: usize,
}

impl Packet {
    /// The packet's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn header(&self) -> &[u8] {
        &self.bytes()[..HEADER_LEN]
    }

    fn enc(&self) -> [u8; ENC_LEN] {
        let mut e = [0u8; ENC_LEN];
        e.copy_from_slice(&self.bytes()[HEADER_LEN..HEADER_LEN + ENC_LEN]);
        e
    }

    /// The sender's timestamp.
    pub(crate) fn timestamp(&self) -> u64 {
        let mut t = [0u8; 8];
        t.copy_from_slice(&self.bytes()[1..HEADER_LEN]);
        u64::from_be_bytes(t)
    }
}

/// The gates before any cryptography: version, length, alphabet. The text must be
/// `SPA1.` followed by canonical unpadded base64 of a packet whose version byte is 1.
pub(crate) fn decode_text(payload: &[u8]) -> Result<Packet, RejectReason> {
    if !is_modern(payload) || payload[3] != b'1' {
        return Err(RejectReason::UnsupportedVersion);
    }
    if payload.len() < MIN_TEXT_LEN {
        return Err(RejectReason::TooShort);
    }
    if payload.len() > MAX_TEXT_LEN {
        return Err(RejectReason::TooLong);
    }
    let text = &payload[TEXT_PREFIX.len()..];
    if text.contains(&b'=') {
        return Err(RejectReason::NotBase64);
    }
    let mut p = Packet { buf: [0u8; MAX_PACKET_LEN + 4], len: 0 };
    p.len = b64::decode_slice(text, &mut p.buf).ok_or(RejectReason::NotBase64)?;
    if p.len < MIN_PACKET_LEN {
        return Err(RejectReason::TooShort);
    }
    if p.buf[0] != VERSION {
        return Err(RejectReason::UnsupportedVersion);
    }
    Ok(p)
}

impl Server {
    /// Prepares `key` for opening packets.
    pub(crate) fn new(key: ServerSecretKey) -> Self {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&mac_key(&key.public_key()))
            .unwrap_or_else(|_| unreachable!("hmac takes any key length"));
        Self { key, mac }
    }

    /// The server's public key.
    pub(crate) fn public_key(&self) -> ServerPublicKey {
        self.key.public_key()
    }

    /// The cheap check: the MAC, in constant time.
    pub(crate) fn mac_ok(&self, p: &Packet) -> bool {
        let (data, tag) = p.bytes().split_at(p.len - MAC_LEN);
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.verify_truncated_left(tag).is_ok()
    }

    /// The one public-key operation before the sender is known: X25519, then the AEAD.
    pub(crate) fn decrypt(&self, p: &Packet) -> Result<Plaintext, RejectReason> {
        let ct_len = p.len - OVERHEAD;
        if ct_len < MIN_PLAINTEXT_LEN || !ct_len.is_multiple_of(PAD_TO) {
            return Err(RejectReason::MalformedField(Field::Framing));
        }
        let ctx =
            hpke::setup_receiver(self.key.secret(), self.key.public_key().as_bytes(), &p.enc(), HPKE_INFO)
                .ok_or(RejectReason::DecryptFailed)?;
        let start = HEADER_LEN + ENC_LEN;
        let mut pt = Zeroizing::new(p.bytes()[start..start + ct_len].to_vec());
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&p.bytes()[start + ct_len..start + ct_len + TAG_LEN]);
        if !ctx.open(p.header(), &mut pt, &tag) {
            return Err(RejectReason::DecryptFailed);
        }
        Ok(Plaintext(pt))
    }

    /// Whether the user with key `user` (decompressed: `verifier`) signed this packet for
    /// this server.
    pub(crate) fn signature_ok(
        &self,
        p: &Packet,
        pt: &Plaintext,
        user: &UserPublicKey,
        verifier: &UserVerifier,
    ) -> bool {
        let t =
            transcript(self.key.public_key().as_bytes(), p.header(), &p.enc(), user.as_bytes(), pt.body());
        verifier.verify(&t, &pt.signature())
    }
}

/// Authenticates and decodes one packet with the server's secret key, trusting whichever key
/// signed it (a verifier also checks that key against the stanza's `users`, the timestamp and
/// replays). For debugging and tests.
pub fn open(payload: &[u8], server: &ServerSecretKey) -> Result<Opened, RejectReason> {
    let s = Server::new(server.clone());
    let p = decode_text(payload)?;
    if !s.mac_ok(&p) {
        return Err(RejectReason::MacMismatch);
    }
    let pt = s.decrypt(&p)?;
    // A key that is not a point cannot have signed anything.
    let user = UserPublicKey::from_bytes(&pt.user()).map_err(|_| RejectReason::BadSignature)?;
    if !s.signature_ok(&p, &pt, &user, &user.verifier()) {
        return Err(RejectReason::BadSignature);
    }
    Ok(Opened { timestamp: p.timestamp(), user, body: Body::decode(pt.body())? })
}

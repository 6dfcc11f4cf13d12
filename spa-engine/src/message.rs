//! The SPA plaintext: fwknop's colon-separated fields, before encryption.
//!
//! `random:b64(user):timestamp:version:type:b64(message)[:b64(nat)][:b64(server_auth)][:timeout]`
//! followed by `:b64(digest)`, the inner digest over everything before it. Field limits follow
//! `lib/fko_limits.h`; where fwknop is lenient (it takes the first 16 characters of any longer
//! random field, it ignores bad trailing base64 bits) we are strict, and the real fwknop client's
//! packets still decode (tested against it).

use std::fmt;

use zeroize::Zeroizing;

use crate::access::{AccessMessage, CommandMessage, NatAccess};
use crate::digest::DigestType;
use crate::verdict::{Field, RejectReason};
use crate::{Error, b64};

/// The protocol version our client writes. The server never checks it (old clients send
/// `2.0`, `2.0.2`, `2.5.0`), and neither do we beyond its length.
pub const FKO_VERSION: &str = "3.0.0";
/// Length of the random field.
pub const RANDOM_LEN: usize = 16;
/// Longest username in bytes (64 base64 characters decoded).
pub const MAX_USERNAME_LEN: usize = 48;
/// Longest base64 text of the message and NAT fields on decode.
pub const MAX_MESSAGE_B64: usize = 256;
/// Longest base64 text of the username field.
pub const MAX_USERNAME_B64: usize = 64;
/// Longest timestamp field.
pub const MAX_TIMESTAMP_LEN: usize = 12;
/// Longest version field.
pub const MAX_VERSION_LEN: usize = 8;
/// Shortest and longest encoded plaintext fwknop accepts (`MIN/MAX_SPA_ENCODED_MSG_SIZE`).
pub const ENCODED_LEN: std::ops::Range<usize> = 36..1500;
/// Largest client timeout the decoder takes (fwknop's bound).
pub const MAX_CLIENT_TIMEOUT: u32 = 65536;

/// Characters fwknop forbids in a username (besides non-printables).
const USERNAME_FORBIDDEN: &[u8] = b"\"/\\[]:;|=,+*?<>";

/// What an SPA message asks for (fwknop's `fko_message_type_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// 0: run a command.
    Command,
    /// 1: open ports (the default).
    Access,
    /// 2: open a port forwarded to an internal host.
    NatAccess,
    /// 3: access with a client-chosen timeout.
    ClientTimeoutAccess,
    /// 4: NAT access with a client-chosen timeout.
    ClientTimeoutNatAccess,
    /// 5: open a port redirected to a local port.
    LocalNatAccess,
    /// 6: local NAT access with a client-chosen timeout.
    ClientTimeoutLocalNatAccess,
}

impl MessageType {
    /// fwknop's number for the type.
    pub const fn id(self) -> u8 {
        match self {
            MessageType::Command => 0,
            MessageType::Access => 1,
            MessageType::NatAccess => 2,
            MessageType::ClientTimeoutAccess => 3,
            MessageType::ClientTimeoutNatAccess => 4,
            MessageType::LocalNatAccess => 5,
            MessageType::ClientTimeoutLocalNatAccess => 6,
        }
    }

    /// The type with fwknop number `id`.
    pub const fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => MessageType::Command,
            1 => MessageType::Access,
            2 => MessageType::NatAccess,
            3 => MessageType::ClientTimeoutAccess,
            4 => MessageType::ClientTimeoutNatAccess,
            5 => MessageType::LocalNatAccess,
            6 => MessageType::ClientTimeoutLocalNatAccess,
            _ => return None,
        })
    }

    /// True for the types that carry a NAT field (2, 4, 5, 6).
    pub const fn has_nat(self) -> bool {
        matches!(
            self,
            MessageType::NatAccess
                | MessageType::ClientTimeoutNatAccess
                | MessageType::LocalNatAccess
                | MessageType::ClientTimeoutLocalNatAccess
        )
    }

    /// True for the types that carry a client timeout (3, 4, 6).
    pub const fn has_timeout(self) -> bool {
        matches!(
            self,
            MessageType::ClientTimeoutAccess
                | MessageType::ClientTimeoutNatAccess
                | MessageType::ClientTimeoutLocalNatAccess
        )
    }

    /// True for local NAT (5, 6).
    pub const fn is_local_nat(self) -> bool {
        matches!(self, MessageType::LocalNatAccess | MessageType::ClientTimeoutLocalNatAccess)
    }

    /// The type for a request, promoted to its client-timeout variant when `timeout` is set,
    /// as libfko does.
    pub const fn for_request(nat: Option<bool>, command: bool, timeout: bool) -> Self {
        match (command, nat, timeout) {
            (true, _, _) => MessageType::Command,
            (false, None, false) => MessageType::Access,
            (false, None, true) => MessageType::ClientTimeoutAccess,
            (false, Some(false), false) => MessageType::NatAccess,
            (false, Some(false), true) => MessageType::ClientTimeoutNatAccess,
            (false, Some(true), false) => MessageType::LocalNatAccess,
            (false, Some(true), true) => MessageType::ClientTimeoutLocalNatAccess,
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            MessageType::Command => "command",
            MessageType::Access => "access",
            MessageType::NatAccess => "nat_access",
            MessageType::ClientTimeoutAccess => "client_timeout_access",
            MessageType::ClientTimeoutNatAccess => "client_timeout_nat_access",
            MessageType::LocalNatAccess => "local_nat_access",
            MessageType::ClientTimeoutLocalNatAccess => "client_timeout_local_nat_access",
        };
        f.write_str(s)
    }
}

/// The fields of one SPA message, as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaMessage {
    /// 16 decimal digits; makes every packet unique.
    pub random: String,
    /// Who sent it (fwknop: `$LOGNAME` or `-U`).
    pub username: String,
    /// Unix seconds at the client.
    pub timestamp: u64,
    /// The sender's protocol version string.
    pub version: String,
    /// What is asked for.
    pub message_type: MessageType,
    /// `ip,proto/port,...` or `ip,command`.
    pub message: String,
    /// `host,port` for the NAT types.
    pub nat_access: Option<String>,
    /// Legacy field, parsed and ignored by fwknopd.
    pub server_auth: Option<String>,
    /// Seconds asked for by the client (types 3, 4, 6).
    pub client_timeout: Option<u32>,
}

/// A decoded message and the inner digest type that verified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The fields.
    pub message: SpaMessage,
    /// The inner digest type, learned from the digest's length.
    pub digest_type: DigestType,
}

/// The message's meaning, once its message string has been parsed for its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Types 1 and 3.
    Access(AccessMessage),
    /// Types 2 and 4: `access` names the externally visible port(s).
    NatAccess(AccessMessage, NatAccess),
    /// Types 5 and 6.
    LocalNatAccess(AccessMessage, NatAccess),
    /// Type 0.
    Command(CommandMessage),
}

/// fwknop's username rules: 1 to 48 bytes of printable ASCII without `"/\[]:;|=,+*?<>`.
pub(crate) fn valid_username(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= MAX_USERNAME_LEN
        && u.bytes().all(|b| (0x20..0x7f).contains(&b) && !USERNAME_FORBIDDEN.contains(&b))
}

fn printable_no_colon(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b':')
}

impl SpaMessage {
    /// Checks every field against fwknop's limits and writes the encoded plaintext without the
    /// digest.
    pub fn encode(&self) -> Result<Zeroizing<String>, Error> {
        let bad = |field: Field| Err(Error::InvalidField(field));
        if self.random.len() != RANDOM_LEN || !self.random.bytes().all(|b| b.is_ascii_digit()) {
            return bad(Field::Random);
        }
        if !valid_username(&self.username) {
            return bad(Field::Username);
        }
        if self.version.is_empty()
            || self.version.len() > MAX_VERSION_LEN
            || !printable_no_colon(&self.version)
        {
            return bad(Field::Version);
        }
        let message_ok = match self.message_type {
            MessageType::Command => CommandMessage::parse(&self.message).is_some(),
            _ => AccessMessage::parse(&self.message).is_some(),
        };
        if !message_ok || b64::encoded_len(self.message.len()) > MAX_MESSAGE_B64 {
            return bad(Field::Message);
        }
        match (&self.nat_access, self.message_type.has_nat()) {
            (Some(n), true) if NatAccess::parse(n).is_some() && b64::encoded_len(n.len()) <= 128 => {}
            (None, false) => {}
            _ => return bad(Field::NatAccess),
        }
        match (self.client_timeout, self.message_type.has_timeout()) {
            (Some(t), true) if t > 0 && t <= MAX_CLIENT_TIMEOUT => {}
            (None, false) => {}
            _ => return bad(Field::ClientTimeout),
        }
        if let Some(a) = &self.server_auth
            && (a.is_empty() || b64::encoded_len(a.len()) > 64)
        {
            return bad(Field::ServerAuth);
        }
        if self.timestamp.to_string().len() > MAX_TIMESTAMP_LEN {
            return bad(Field::Timestamp);
        }
        let mut out = Zeroizing::new(String::with_capacity(256));
        out.push_str(&self.random);
        out.push(':');
        b64::encode_into(&self.username, &mut out);
        out.push(':');
        out.push_str(&self.timestamp.to_string());
        out.push(':');
        out.push_str(&self.version);
        out.push(':');
        out.push_str(&self.message_type.id().to_string());
        out.push(':');
        b64::encode_into(&self.message, &mut out);
        if let Some(n) = &self.nat_access {
            out.push(':');
            b64::encode_into(n, &mut out);
        }
        if let Some(a) = &self.server_auth {
            out.push(':');
            b64::encode_into(a, &mut out);
        }
        if let Some(t) = self.client_timeout {
            out.push(':');
            out.push_str(&t.to_string());
        }
        Ok(out)
    }

    /// The encoded plaintext followed by `:` and the base64 inner digest: what gets encrypted.
    pub fn encode_with_digest(&self, digest: DigestType) -> Result<Zeroizing<String>, Error> {
        let mut out = self.encode()?;
        let d = digest.digest(out.as_bytes());
        out.push(':');
        b64::encode_into(d.as_bytes(), &mut out);
        if !ENCODED_LEN.contains(&out.len()) {
            return Err(Error::InvalidField(Field::Framing));
        }
        Ok(out)
    }

    /// Parses the message string for its type (and the NAT field where there is one).
    pub fn request(&self) -> Result<Request, RejectReason> {
        let access =
            || AccessMessage::parse(&self.message).ok_or(RejectReason::MalformedField(Field::Message));
        let nat = || {
            self.nat_access
                .as_deref()
                .and_then(NatAccess::parse)
                .ok_or(RejectReason::MalformedField(Field::NatAccess))
        };
        Ok(match self.message_type {
            MessageType::Command => Request::Command(
                CommandMessage::parse(&self.message).ok_or(RejectReason::MalformedField(Field::Message))?,
            ),
            MessageType::Access | MessageType::ClientTimeoutAccess => Request::Access(access()?),
            MessageType::NatAccess | MessageType::ClientTimeoutNatAccess => {
                Request::NatAccess(access()?, nat()?)
            }
            MessageType::LocalNatAccess | MessageType::ClientTimeoutLocalNatAccess => {
                Request::LocalNatAccess(access()?, nat()?)
            }
        })
    }
}

/// Decodes a base64 text field to UTF-8 text, bounded by `max` characters of base64.
fn b64_field(s: &str, max: usize, field: Field) -> Result<String, RejectReason> {
    let bad = RejectReason::MalformedField(field);
    if s.is_empty() || s.len() > max {
        return Err(bad);
    }
    let bytes = b64::decode(s).ok_or(bad)?;
    String::from_utf8(bytes).map_err(|_| bad)
}

fn digits(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
}

/// Verifies the inner digest of a decrypted plaintext and parses its fields.
pub fn decode(plain: &[u8]) -> Result<Decoded, RejectReason> {
    use Field::*;
    let m = RejectReason::MalformedField;
    if !ENCODED_LEN.contains(&plain.len()) || !plain.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(m(Framing));
    }
    // All bytes are printable ASCII, so this cannot fail.
    let text = std::str::from_utf8(plain).map_err(|_| m(Framing))?;
    let (body, digest_b64) = text.rsplit_once(':').ok_or(m(Framing))?;
    let candidates = DigestType::candidates_for_b64_len(digest_b64.len());
    if candidates.is_empty() {
        return Err(m(Digest));
    }
    let digest_raw = b64::decode(digest_b64).ok_or(m(Digest))?;
    let digest_type = candidates
        .iter()
        .copied()
        .find(|t| {
            use subtle::ConstantTimeEq;
            bool::from(t.digest(body.as_bytes()).as_bytes().ct_eq(&digest_raw))
        })
        .ok_or(RejectReason::DigestMismatch)?;

    let mut fields = body.split(':');
    let mut next = |f: Field| fields.next().ok_or(m(f));
    let random = next(Random)?;
    let username = next(Username)?;
    let timestamp = next(Timestamp)?;
    let version = next(Version)?;
    let mtype = next(Field::MessageType)?;
    let message = next(Message)?;
    let rest: Vec<&str> = fields.collect();

    if random.len() != RANDOM_LEN || !random.bytes().all(|b| b.is_ascii_digit()) {
        return Err(m(Random));
    }
    let username = b64_field(username, MAX_USERNAME_B64, Username)?;
    if !valid_username(&username) {
        return Err(m(Username));
    }
    if !digits(timestamp, MAX_TIMESTAMP_LEN) {
        return Err(m(Timestamp));
    }
    let timestamp: u64 = timestamp.parse().map_err(|_| m(Timestamp))?;
    if version.is_empty() || version.len() > MAX_VERSION_LEN {
        return Err(m(Version));
    }
    if !digits(mtype, 2) {
        return Err(m(Field::MessageType));
    }
    let message_type =
        mtype.parse::<u8>().ok().and_then(self::MessageType::from_id).ok_or(m(Field::MessageType))?;
    let message = b64_field(message, MAX_MESSAGE_B64, Message)?;

    let mut rest = rest.as_slice();
    let nat_access = if message_type.has_nat() {
        let (first, tail) = rest.split_first().ok_or(m(NatAccess))?;
        rest = tail;
        Some(b64_field(first, MAX_MESSAGE_B64, NatAccess)?)
    } else {
        None
    };
    let (server_auth, timeout) = match (message_type.has_timeout(), rest) {
        (_, []) => (None, None),
        (false, [auth]) => (Some(*auth), None),
        (true, [t]) => (None, Some(*t)),
        (true, [auth, t]) => (Some(*auth), Some(*t)),
        _ => return Err(m(Framing)),
    };
    let server_auth = server_auth.map(|a| b64_field(a, MAX_MESSAGE_B64, ServerAuth)).transpose()?;
    let client_timeout = match timeout {
        None => None,
        Some(t) if digits(t, 10) => {
            let v: u64 = t.parse().map_err(|_| m(ClientTimeout))?;
            if v > u64::from(MAX_CLIENT_TIMEOUT) {
                return Err(m(ClientTimeout));
            }
            Some(v as u32)
        }
        Some(_) => return Err(m(ClientTimeout)),
    };

    Ok(Decoded {
        message: SpaMessage {
            random: random.to_owned(),
            username,
            timestamp,
            version: version.to_owned(),
            message_type,
            message,
            nat_access,
            server_auth,
            client_timeout,
        },
        digest_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SpaMessage {
        SpaMessage {
            random: "1991854072942557".into(),
            username: "root".into(),
            timestamp: 1795796412,
            version: FKO_VERSION.into(),
            message_type: MessageType::Access,
            message: "1.2.3.4,tcp/22".into(),
            nat_access: None,
            server_auth: None,
            client_timeout: None,
        }
    }

    #[test]
    fn encodes_reference_plaintext() {
        let enc = sample().encode_with_digest(DigestType::Sha256).unwrap();
        assert_eq!(
            enc.as_str(),
            "1991854072942557:cm9vdA:1795796412:3.0.0:1:MS4yLjMuNCx0Y3AvMjI:r5PJuKhyBHinP56vBKzirLHVeXeK4nmMwjl9yHcIXPM"
        );
        let d = decode(enc.as_bytes()).unwrap();
        assert_eq!(d.message, sample());
        assert_eq!(d.digest_type, DigestType::Sha256);
    }

    #[test]
    fn sha3_is_told_apart_from_sha2_by_trying() {
        for t in DigestType::ALL {
            let enc = sample().encode_with_digest(t).unwrap();
            assert_eq!(decode(enc.as_bytes()).unwrap().digest_type, t);
        }
    }

    #[test]
    fn optional_fields_in_every_combination() {
        let mut m = sample();
        m.message_type = MessageType::ClientTimeoutNatAccess;
        m.nat_access = Some("192.168.10.2,22".into());
        m.client_timeout = Some(60);
        for auth in [None, Some("secret".to_string())] {
            m.server_auth = auth;
            let enc = m.encode_with_digest(DigestType::Sha256).unwrap();
            assert_eq!(decode(enc.as_bytes()).unwrap().message, m);
        }
    }

    #[test]
    fn inconsistent_messages_are_refused_by_the_encoder() {
        let mut m = sample();
        m.client_timeout = Some(10);
        assert!(matches!(m.encode(), Err(Error::InvalidField(Field::ClientTimeout))));
        let mut m = sample();
        m.message_type = MessageType::NatAccess;
        assert!(matches!(m.encode(), Err(Error::InvalidField(Field::NatAccess))));
        let mut m = sample();
        m.username = "bad:name".into();
        assert!(matches!(m.encode(), Err(Error::InvalidField(Field::Username))));
    }

    #[test]
    fn digest_mismatch_and_framing() {
        let enc = sample().encode_with_digest(DigestType::Sha256).unwrap();
        let tampered = enc.replace("tcp", "udp").replace("MS4yLjMuNCx0Y3AvMjI", "MS4yLjMuNCx1ZHAvMjI");
        assert_eq!(decode(tampered.as_bytes()), Err(RejectReason::DigestMismatch));
        assert_eq!(decode(b"short"), Err(RejectReason::MalformedField(Field::Framing)));
    }

    #[test]
    fn old_version_strings_are_accepted() {
        let mut m = sample();
        m.version = "2.0.2".into();
        let enc = m.encode_with_digest(DigestType::Sha256).unwrap();
        assert_eq!(decode(enc.as_bytes()).unwrap().message.version, "2.0.2");
    }
}

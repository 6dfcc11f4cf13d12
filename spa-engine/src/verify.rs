//! The server's decision for one datagram, in fwknopd's order but cheaper and stricter.
//!
//! 1. Cheap gates: length 140..=1500, no stripped prefix, base64 alphabet, a stanza whose
//!    `source`/`destination` match the packet's addresses, not a known replay. No cryptography
//!    has run yet, so junk costs a few hundred nanoseconds.
//! 2. For each matching stanza in file order: HMAC (constant time) → decrypt → inner digest →
//!    fields (a username starting with `-` is refused here: admin scripts that get it in their
//!    argv would read it as an option). The first stanza that authenticates the packet records it in the replay store
//!    (so junk never fills the store), then policy: timestamp window, allow address, username,
//!    message type, NAT permissions, ports. The first stanza that fully succeeds wins.
//! 3. If none does, the reason of the stanza that got furthest is reported.
//!
//! Modern packets (`SPA1.`, [`crate::modern`]) take their own first steps, in the order
//! `docs/modern-format.md` gives: version, length, base64, a matching modern stanza, the cheap
//! MAC, the cleartext timestamp, the replay cache (no public-key operation so far); then one
//! X25519 and the AEAD, the signer looked up in the matching stanzas' `users`, one signature
//! check, the body, the replay record. Both formats then hand an [`Authenticated`] request to
//! the same policy stage (allow address, username, timeout, ports, NAT), stanza by stanza.

use std::net::IpAddr;
use std::sync::Arc;

use crate::Error;
use crate::access::{NatHost, ProtoPort, is_source_placeholder};
use crate::b64;
use crate::message::Request;
use crate::modern::{self, Body, ServerPublicKey, ServerSecretKey, UserPublicKey};
use crate::packet::{self, GPG_PREFIX, MAX_PACKET_LEN, MIN_PACKET_LEN, RIJNDAEL_PREFIX};
use crate::replay::{Insert, ReplayStore, replay_key};
use crate::stanza::{AccessStanza, Format, Settings, Stanza, canonical};
use crate::verdict::{Access, Action, Field, GrantRequest, Nat, RejectReason, Rejection, Verdict};

/// The network-layer facts about one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    /// Where it came from.
    pub source: IpAddr,
    /// Where it was sent to.
    pub destination: IpAddr,
}

/// The compiled access policy: ordered stanzas plus global settings, and the server's key
/// for modern stanzas.
#[derive(Clone, Debug)]
pub struct Verifier {
    stanzas: Vec<Stanza>,
    settings: Settings,
    modern: Option<Arc<modern::Server>>,
}

/// What a wire format hands the shared policy stage once it has authenticated a packet.
struct Authenticated {
    request: Request,
    timestamp: u64,
    client_timeout: Option<u32>,
    username: String,
    source_port: Option<u16>,
    user_key: Option<UserPublicKey>,
    client_username: Option<String>,
    /// The name `require_username` is checked against when it is not `username`: a GPG
    /// packet's own username, while `username` names its signer.
    policy_username: Option<String>,
}

impl Verifier {
    /// Compiles `stanzas` (in file order) under `settings`. Refuses stanzas with
    /// `format = "modern"`, which need the server's key ([`Verifier::with_server_key`]).
    pub fn new(stanzas: &[AccessStanza], settings: Settings) -> Result<Self, Error> {
        Self::build(stanzas, settings, None)
    }

    /// Like [`Verifier::new`], with the server's X25519 key, which opens modern packets.
    pub fn with_server_key(
        stanzas: &[AccessStanza],
        settings: Settings,
        key: ServerSecretKey,
    ) -> Result<Self, Error> {
        Self::build(stanzas, settings, Some(key))
    }

    fn build(
        stanzas: &[AccessStanza],
        settings: Settings,
        key: Option<ServerSecretKey>,
    ) -> Result<Self, Error> {
        if stanzas.is_empty() {
            return Err(Error::NoStanzas);
        }
        let stanzas: Vec<Stanza> = stanzas
            .iter()
            .enumerate()
            .map(|(i, s)| Stanza::compile(s, i, &settings))
            .collect::<Result<_, _>>()?;
        if key.is_none()
            && let Some(s) = stanzas.iter().find(|s| s.format() == Format::Modern)
        {
            return Err(Error::Stanza {
                name: s.name().to_string(),
                source: Box::new(Error::Requires { key: "format = \"modern\"", needs: "the server's key" }),
            });
        }
        Ok(Self { stanzas, settings, modern: key.map(|k| Arc::new(modern::Server::new(k))) })
    }

    /// The server's public key, when the verifier has one: what clients of modern stanzas
    /// need.
    pub fn server_public_key(&self) -> Option<ServerPublicKey> {
        self.modern.as_ref().map(|m| m.public_key())
    }

    /// The compiled stanzas, in order.
    pub fn stanzas(&self) -> &[Stanza] {
        &self.stanzas
    }

    /// The global settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// True if some stanza applies to packets from `source` (to any destination): a cheap test
    /// a receiver can use before queueing work.
    pub fn source_is_known(&self, source: IpAddr) -> bool {
        self.stanzas.iter().any(|s| s.source.contains(source))
    }

    /// Decides about one datagram received at Unix time `now`.
    pub fn verify(
        &self,
        payload: &[u8],
        meta: PacketMeta,
        now: u64,
        replay: &mut dyn ReplayStore,
    ) -> Verdict {
        if modern::is_modern(payload) {
            return self.verify_modern(payload, meta, now, replay);
        }
        let reject = |reason| Verdict::Reject(Rejection { reason, stanza: None });
        if payload.len() < MIN_PACKET_LEN {
            return reject(RejectReason::TooShort);
        }
        if payload.len() > MAX_PACKET_LEN {
            return reject(RejectReason::TooLong);
        }
        if payload.starts_with(RIJNDAEL_PREFIX.as_bytes())
            || (payload.len() > 400 && payload.starts_with(GPG_PREFIX.as_bytes()))
        {
            return reject(RejectReason::PrefixNotStripped);
        }
        // Valid packets never contain `=`: every sender strips the padding.
        if !b64::is_wire_charset(payload) || payload.contains(&b'=') {
            return reject(RejectReason::NotBase64);
        }
        let (src, dst) = (canonical(meta.source), canonical(meta.destination));
        if !self.stanzas.iter().any(|s| (s.keys().is_some() || s.has_gpg()) && s.matches(src, dst)) {
            return reject(RejectReason::NoStanzaForSource);
        }
        let key = replay_key(payload);
        if replay.contains(&key, now) {
            return reject(RejectReason::Replay);
        }

        let mut best: Option<(RejectReason, &Arc<str>)> = None;
        let mut recorded = false;
        for (index, stanza) in self.stanzas.iter().enumerate() {
            if !stanza.matches(src, dst) {
                continue;
            }
            // fwknop decides by length: 400 characters or more is GPG, for stanzas that have it.
            let open = if payload.len() >= packet::MIN_GPG_PACKET_LEN && stanza.has_gpg() {
                Open::Gpg
            } else if let Some(keys) = stanza.keys() {
                Open::Rijndael(keys)
            } else {
                continue;
            };
            match self.try_stanza(stanza, &open, index, payload, src, dst, now, &key, &mut recorded, replay) {
                Ok(grant) => return Verdict::Accept(grant),
                Err(
                    reason @ (RejectReason::ReplayStoreFull
                    | RejectReason::Replay
                    | RejectReason::StateUnwritable
                    | RejectReason::ReplayStoreDown),
                ) => {
                    return Verdict::Reject(Rejection { reason, stanza: Some(stanza.name.clone()) });
                }
                Err(reason) => {
                    if best.is_none_or(|(b, _)| reason.stage() > b.stage()) {
                        best = Some((reason, &stanza.name));
                    }
                }
            }
        }
        let (reason, name) =
            best.map_or((RejectReason::NoStanzaForSource, None), |(r, n)| (r, Some(n.clone())));
        Verdict::Reject(Rejection { reason, stanza: name })
    }

    #[allow(clippy::too_many_arguments)]
    fn try_stanza(
        &self,
        stanza: &Stanza,
        open: &Open<'_>,
        index: usize,
        payload: &[u8],
        src: IpAddr,
        dst: IpAddr,
        now: u64,
        key: &crate::replay::ReplayKey,
        recorded: &mut bool,
        replay: &mut dyn ReplayStore,
    ) -> Result<GrantRequest, RejectReason> {
        if stanza.expires.is_some_and(|e| now >= e) {
            return Err(RejectReason::StanzaExpired);
        }
        let (decoded, signer) = match open {
            Open::Rijndael(keys) => (packet::open(payload, keys)?, None),
            Open::Gpg => open_gpg(stanza, payload)?,
        };
        // fwknop allows it and `spa decode` shows it, but a username like `-rf` or `--help`
        // would be read as an option by a command that gets `{username}` in its argv.
        if decoded.message.username.starts_with('-') {
            return Err(RejectReason::MalformedField(Field::Username));
        }
        if !*recorded {
            match replay.insert(*key, now) {
                Insert::New => *recorded = true,
                Insert::Seen => return Err(RejectReason::Replay),
                Insert::Full => return Err(RejectReason::ReplayStoreFull),
                Insert::Unwritable => return Err(RejectReason::StateUnwritable),
                Insert::Unavailable => return Err(RejectReason::ReplayStoreDown),
            }
        }
        let msg = decoded.message;
        if msg.timestamp.abs_diff(now) > self.settings.max_packet_age {
            return Err(RejectReason::StaleTimestamp);
        }
        let request = msg.request()?;
        // A signed GPG packet's grant names its signer (the identity a key proves); the
        // packet's own username stays beside it and is what `require_username` checks, as in
        // fwknop.
        let (username, client_username, policy_username) = match signer {
            Some(fpr) => (format!("gpg:{fpr}"), Some(msg.username.clone()), Some(msg.username)),
            None => (msg.username, None, None),
        };
        let auth = Authenticated {
            request,
            timestamp: msg.timestamp,
            client_timeout: msg.client_timeout,
            username,
            source_port: None,
            user_key: None,
            client_username,
            policy_username,
        };
        self.policy(stanza, index, auth, src, dst)
    }

    /// The policy stage both formats share: allow address, username, timeout, then what is
    /// asked (ports, NAT, command) against what the stanza permits.
    fn policy(
        &self,
        stanza: &Stanza,
        index: usize,
        auth: Authenticated,
        src: IpAddr,
        dst: IpAddr,
    ) -> Result<GrantRequest, RejectReason> {
        let request = auth.request;
        let allow = match &request {
            Request::Access(a) | Request::NatAccess(a, _) | Request::LocalNatAccess(a, _) => a.allow,
            Request::Command(c) => c.allow,
        };
        let allowed_source = if is_source_placeholder(allow) {
            if stanza.require_source_address {
                return Err(RejectReason::SourceAddressRequired);
            }
            src
        } else {
            canonical(allow)
        };
        let checked = auth.policy_username.as_ref().unwrap_or(&auth.username);
        if stanza.require_username.as_ref().is_some_and(|u| u != checked) {
            return Err(RejectReason::UsernameMismatch);
        }
        let timeout = match auth.client_timeout {
            Some(t) if t > 0 => t.min(stanza.max_fw_timeout),
            _ => stanza.fw_access_timeout,
        };
        let action = match request {
            Request::Command(c) => {
                if !stanza.enable_cmd_exec {
                    return Err(RejectReason::CommandNotEnabled);
                }
                Action::Command(c.command)
            }
            Request::Access(a) => {
                check_ports(stanza, &a.ports)?;
                self.plain_or_forced_nat(stanza, a.ports)
            }
            Request::NatAccess(a, nat) => {
                if !self.settings.enable_forwarding {
                    return Err(RejectReason::NatNotEnabled);
                }
                check_ports(stanza, &a.ports)?;
                let snat = stanza.snat;
                let nat = if let Some(f) = stanza.force_nat {
                    Nat::Dnat { host: NatHost::Ip(f.ip), port: Some(f.port), snat }
                } else if stanza.disable_dnat {
                    Nat::Route { snat }
                } else {
                    Nat::Dnat { host: nat.host, port: Some(nat.port), snat }
                };
                Action::Open { access: Access::Ports(a.ports.into()), nat: Some(nat) }
            }
            Request::LocalNatAccess(a, nat) => {
                if !self.settings.enable_local_nat {
                    return Err(RejectReason::NatNotEnabled);
                }
                check_ports(stanza, &a.ports)?;
                Action::Open {
                    access: Access::Ports(a.ports.into()),
                    nat: Some(Nat::Redirect { port: nat.port }),
                }
            }
        };
        Ok(GrantRequest {
            stanza_index: index,
            stanza: stanza.name.clone(),
            allowed_source,
            packet_source: src,
            packet_destination: dst,
            destination: stanza.destination.is_some().then_some(dst),
            username: auth.username,
            timestamp: auth.timestamp,
            timeout,
            action,
            source_port: auth.source_port,
            user_key: auth.user_key,
            client_username: auth.client_username,
        })
    }

    /// The modern format's steps (see the module documentation), then the shared policy for
    /// each matching stanza that lists the signer.
    fn verify_modern(
        &self,
        payload: &[u8],
        meta: PacketMeta,
        now: u64,
        replay: &mut dyn ReplayStore,
    ) -> Verdict {
        let reject = |reason| Verdict::Reject(Rejection { reason, stanza: None });
        let packet = match modern::decode_text(payload) {
            Ok(p) => p,
            Err(reason) => return reject(reason),
        };
        let (src, dst) = (canonical(meta.source), canonical(meta.destination));
        let modern_match = |s: &Stanza| s.format() == Format::Modern && s.matches(src, dst);
        let Some(server) = self.modern.as_deref().filter(|_| self.stanzas.iter().any(modern_match)) else {
            return reject(RejectReason::NoStanzaForSource);
        };
        if !server.mac_ok(&packet) {
            return reject(RejectReason::MacMismatch);
        }
        let timestamp = packet.timestamp();
        if timestamp.abs_diff(now) > self.settings.max_packet_age {
            return reject(RejectReason::StaleTimestamp);
        }
        let key = replay_key(packet.bytes());
        if replay.contains(&key, now) {
            return reject(RejectReason::Replay);
        }

        let plain = match server.decrypt(&packet) {
            Ok(p) => p,
            Err(reason) => return reject(reason),
        };
        let signer = plain.user();
        let candidates: Vec<(usize, &Stanza)> = self
            .stanzas
            .iter()
            .enumerate()
            .filter(|(_, s)| modern_match(s) && s.modern_user(&signer).is_some())
            .collect();
        let Some(&(_, first)) = candidates.first() else {
            return reject(RejectReason::UnknownUser);
        };
        let Some(user) = first.modern_user(&signer) else {
            return reject(RejectReason::UnknownUser);
        };
        let user_key = user.key;
        if !server.signature_ok(&packet, &plain, &user_key, &user.verifier) {
            return reject(RejectReason::BadSignature);
        }
        let named = |reason, stanza: &Stanza| {
            Verdict::Reject(Rejection { reason, stanza: Some(stanza.name.clone()) })
        };
        let body = match Body::decode(plain.body()) {
            Ok(b) => b,
            Err(reason) => return named(reason, first),
        };
        // As for fwknop packets: a name like `-rf` would be read as an option by a command
        // that gets `{client_username}` in its argv.
        if body.request.username.as_deref().is_some_and(|u| u.starts_with('-')) {
            return named(RejectReason::MalformedField(Field::Username), first);
        }
        match replay.insert(key, now) {
            Insert::New => {}
            Insert::Seen => return named(RejectReason::Replay, first),
            Insert::Full => return named(RejectReason::ReplayStoreFull, first),
            Insert::Unwritable => return named(RejectReason::StateUnwritable, first),
            Insert::Unavailable => return named(RejectReason::ReplayStoreDown, first),
        }

        let request = body.request.to_request();
        let mut best: Option<(RejectReason, &Arc<str>)> = None;
        for (index, stanza) in candidates {
            let result = if stanza.expires.is_some_and(|e| now >= e) {
                Err(RejectReason::StanzaExpired)
            } else {
                let identity =
                    stanza.modern_user(&signer).map_or_else(String::new, |u| u.identity.to_string());
                let auth = Authenticated {
                    request: request.clone(),
                    timestamp,
                    client_timeout: body.request.client_timeout,
                    username: identity,
                    source_port: body.request.source_port,
                    user_key: Some(user_key),
                    client_username: body.request.username.clone(),
                    policy_username: None,
                };
                self.policy(stanza, index, auth, src, dst)
            };
            match result {
                Ok(grant) => return Verdict::Accept(grant),
                Err(reason) => {
                    if best.is_none_or(|(b, _)| reason.stage() > b.stage()) {
                        best = Some((reason, &stanza.name));
                    }
                }
            }
        }
        let (reason, name) = best.map_or((RejectReason::UnknownUser, None), |(r, n)| (r, Some(n.clone())));
        Verdict::Reject(Rejection { reason, stanza: name })
    }

    /// An access request, translated when the stanza forces NAT or forwards everything.
    fn plain_or_forced_nat(&self, stanza: &Stanza, ports: Vec<ProtoPort>) -> Action {
        let snat = stanza.snat;
        match (stanza.forward_all, stanza.force_nat) {
            (true, Some(f)) => Action::Open {
                access: Access::All,
                nat: Some(Nat::Dnat { host: NatHost::Ip(f.ip), port: None, snat }),
            },
            (true, None) => Action::Open { access: Access::All, nat: Some(Nat::Route { snat }) },
            (false, Some(f)) => Action::Open {
                access: Access::Ports(ports.into()),
                nat: Some(Nat::Dnat { host: NatHost::Ip(f.ip), port: Some(f.port), snat }),
            },
            (false, None) => Action::Open { access: Access::Ports(ports.into()), nat: None },
        }
    }
}

/// How a stanza opens one packet.
enum Open<'a> {
    /// fwknop's Rijndael mode with these keys.
    Rijndael(packet::OpenKeys<'a>),
    /// fwknop's GPG mode, with the stanza's GPG settings.
    Gpg,
}

/// Opens a GPG packet with a stanza's settings: the packet and its signer's fingerprint.
#[cfg(feature = "gpg")]
fn open_gpg(
    stanza: &Stanza,
    payload: &[u8],
) -> Result<(crate::message::Decoded, Option<String>), RejectReason> {
    let Some((gpg, hmac)) = stanza.gpg() else { return Err(RejectReason::GpgNotSupported) };
    let opened = crate::gpg::open(payload, hmac, gpg)?;
    Ok((opened.decoded, opened.signer))
}

/// Without the `gpg` feature no stanza has GPG settings, so this is never reached.
#[cfg(not(feature = "gpg"))]
fn open_gpg(
    stanza: &Stanza,
    _payload: &[u8],
) -> Result<(crate::message::Decoded, Option<String>), RejectReason> {
    match stanza.gpg() {
        Some((never, _)) => match *never {},
        None => Err(RejectReason::GpgNotSupported),
    }
}

fn check_ports(stanza: &Stanza, ports: &[ProtoPort]) -> Result<(), RejectReason> {
    if ports.iter().any(|p| stanza.restrict_ports.contains(p)) {
        return Err(RejectReason::PortNotPermitted);
    }
    if let Some(open) = &stanza.open_ports
        && !ports.iter().all(|p| open.contains(p))
    {
        return Err(RejectReason::PortNotPermitted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{EncryptionKey, HmacKey};
    use crate::message::{MessageType, SpaMessage};
    use crate::packet::{OpenKeys, SealOptions};
    use crate::replay::MemoryReplayStore;
    use crate::{DigestType, EncryptionMode, Entropy};

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const HMAC_KEY: &str = "fedcba9876543210fedcba9876543210fedcba98";
    const NOW: u64 = 1_800_000_000;

    struct Counter(u8);

    impl Entropy for Counter {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 = self.0.wrapping_add(29);
                *b = self.0;
            }
        }
    }

    fn packet(username: &str) -> String {
        let msg = SpaMessage {
            random: "1234567890123456".into(),
            username: username.into(),
            timestamp: NOW,
            version: "3.0.0".into(),
            message_type: MessageType::Access,
            message: "192.0.2.10,tcp/22".into(),
            nat_access: None,
            server_auth: None,
            client_timeout: None,
        };
        let key = EncryptionKey::new(KEY.as_bytes().to_vec()).unwrap();
        let hkey = HmacKey::new(HMAC_KEY.as_bytes().to_vec()).unwrap();
        let opts = SealOptions {
            key: &key,
            mode: EncryptionMode::Cbc,
            digest: DigestType::Sha256,
            hmac: Some((&hkey, DigestType::Sha256)),
        };
        packet::seal(&msg, &opts, &mut Counter(username.len() as u8)).unwrap()
    }

    #[test]
    fn usernames_that_look_like_options_are_refused() {
        let stanza: AccessStanza = toml::from_str(&format!(
            "source = \"any\"\nkey = \"{KEY}\"\nhmac_key = \"{HMAC_KEY}\"\nopen_ports = \"tcp/22\""
        ))
        .unwrap();
        let v = Verifier::new(&[stanza], Settings::default()).unwrap();
        let meta = PacketMeta {
            source: "192.0.2.10".parse().unwrap(),
            destination: "198.51.100.1".parse().unwrap(),
        };
        for bad in ["-rf", "--help", "-"] {
            let p = packet(bad);
            let mut replay = MemoryReplayStore::new(240, 16);
            match v.verify(p.as_bytes(), meta, NOW, &mut replay) {
                Verdict::Reject(r) => {
                    assert_eq!(r.reason, RejectReason::MalformedField(Field::Username), "{bad}")
                }
                Verdict::Accept(g) => panic!("{bad:?} accepted: {g:?}"),
            }
            // The client's decoder still shows what such a packet says.
            let key = EncryptionKey::new(KEY.as_bytes().to_vec()).unwrap();
            let mac = crate::digest::HmacState::new(DigestType::Sha256, HMAC_KEY.as_bytes());
            let keys = OpenKeys { key: &key, mode: EncryptionMode::Cbc, hmac: Some(&mac) };
            assert_eq!(packet::open(p.as_bytes(), &keys).unwrap().message.username, bad);
        }
        // A dash elsewhere is an ordinary username.
        let mut replay = MemoryReplayStore::new(240, 16);
        match v.verify(packet("mary-jane").as_bytes(), meta, NOW, &mut replay) {
            Verdict::Accept(g) => assert_eq!(g.username, "mary-jane"),
            Verdict::Reject(r) => panic!("rejected: {r:?}"),
        }
    }
}

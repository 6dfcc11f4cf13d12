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

use std::net::IpAddr;
use std::sync::Arc;

use crate::Error;
use crate::access::{NatHost, ProtoPort, is_source_placeholder};
use crate::b64;
use crate::message::Request;
use crate::packet::{self, GPG_PREFIX, MAX_PACKET_LEN, MIN_PACKET_LEN, RIJNDAEL_PREFIX};
use crate::replay::{Insert, ReplayStore, replay_key};
use crate::stanza::{AccessStanza, Settings, Stanza, canonical};
use crate::verdict::{Access, Action, Field, GrantRequest, Nat, RejectReason, Rejection, Verdict};

/// The network-layer facts about one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    /// Where it came from.
    pub source: IpAddr,
    /// Where it was sent to.
    pub destination: IpAddr,
}

/// The compiled access policy: ordered stanzas plus global settings.
#[derive(Clone, Debug)]
pub struct Verifier {
    stanzas: Vec<Stanza>,
    settings: Settings,
}

impl Verifier {
    /// Compiles `stanzas` (in file order) under `settings`.
    pub fn new(stanzas: &[AccessStanza], settings: Settings) -> Result<Self, Error> {
        if stanzas.is_empty() {
            return Err(Error::NoStanzas);
        }
        let stanzas = stanzas
            .iter()
            .enumerate()
            .map(|(i, s)| Stanza::compile(s, i, &settings))
            .collect::<Result<_, _>>()?;
        Ok(Self { stanzas, settings })
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
        if !self.stanzas.iter().any(|s| s.matches(src, dst)) {
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
            match self.try_stanza(stanza, index, payload, src, dst, now, &key, &mut recorded, replay) {
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
        let decoded = packet::open(payload, &stanza.keys())?;
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
        let msg = &decoded.message;
        if msg.timestamp.abs_diff(now) > self.settings.max_packet_age {
            return Err(RejectReason::StaleTimestamp);
        }
        let request = msg.request()?;
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
        if stanza.require_username.as_ref().is_some_and(|u| *u != msg.username) {
            return Err(RejectReason::UsernameMismatch);
        }
        let timeout = match msg.client_timeout {
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
            username: decoded.message.username,
            timestamp: decoded.message.timestamp,
            timeout,
            action,
        })
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

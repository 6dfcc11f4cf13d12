//! What the verifier decides: a grant request, or a reason to drop the packet.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::access::{NatHost, ProtoPort};

/// The verifier's answer for one datagram.
///
/// `Accept` is much larger than `Reject`; it is not boxed because the value is returned once
/// per datagram (a move, not a copy of the larger variant) and a box would cost an allocation
/// per accepted packet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Verdict {
    /// The packet authenticated and a stanza allows what it asks for.
    Accept(GrantRequest),
    /// The packet is dropped, silently, for this reason.
    Reject(Rejection),
}

/// A rejection: the reason, and the stanza that got furthest with the packet, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: RejectReason,
    /// The name of the stanza whose check produced the reason (none for the cheap gates).
    pub stanza: Option<Arc<str>>,
}

/// A field of the SPA plaintext, to say which one was malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// The overall layout: length, characters, number of fields.
    Framing,
    /// The 16-digit random value.
    Random,
    /// The username.
    Username,
    /// The timestamp.
    Timestamp,
    /// The version string.
    Version,
    /// The message type number.
    MessageType,
    /// The message (access or command string).
    Message,
    /// The NAT field.
    NatAccess,
    /// The server-auth field.
    ServerAuth,
    /// The client timeout.
    ClientTimeout,
    /// The inner digest's text.
    Digest,
    /// The TCP source port of a modern packet.
    SourcePort,
}

impl Field {
    /// Snake-case name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Field::Framing => "framing",
            Field::Random => "random",
            Field::Username => "username",
            Field::Timestamp => "timestamp",
            Field::Version => "version",
            Field::MessageType => "message_type",
            Field::Message => "message",
            Field::NatAccess => "nat_access",
            Field::ServerAuth => "server_auth",
            Field::ClientTimeout => "client_timeout",
            Field::Digest => "digest",
            Field::SourcePort => "source_port",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a packet was dropped. Each variant is one counter and one `reason` in the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// Shorter than fwknopd's 140-byte minimum.
    #[error("packet too short")]
    TooShort,
    /// Longer than 1500 bytes.
    #[error("packet too long")]
    TooLong,
    /// Starts with the prefix every sender strips (`U2FsdGVkX1`, or `hQ` on long packets): a
    /// replay trick fwknopd also refuses.
    #[error("packet carries the stripped prefix")]
    PrefixNotStripped,
    /// A byte outside the base64 alphabet.
    #[error("packet is not base64")]
    NotBase64,
    /// No stanza's `source` (and `destination`) matches the packet's addresses.
    #[error("no stanza for this source")]
    NoStanzaForSource,
    /// Seen before within the replay window.
    #[error("replayed packet")]
    Replay,
    /// The replay store is full of live entries; refusing is safer than forgetting one.
    #[error("replay store full")]
    ReplayStoreFull,
    /// The only matching stanzas are past `access_expire`.
    #[error("stanza expired")]
    StanzaExpired,
    /// The HMAC does not verify with any matching stanza's key.
    #[error("hmac mismatch")]
    HmacMismatch,
    /// The packet looks like fwknop's GPG mode (its HMAC verifies with `hQ` in front) but the
    /// stanza takes no GPG packets (no `gpg_decrypt_key_file`, or a build without the `gpg`
    /// feature).
    #[error("gpg packets are not supported")]
    GpgNotSupported,
    /// Decryption failed (wrong key or mode, bad padding, bad layout).
    #[error("decryption failed")]
    DecryptFailed,
    /// The inner digest does not match the plaintext.
    #[error("digest mismatch")]
    DigestMismatch,
    /// A plaintext field breaks fwknop's format.
    #[error("malformed {0} field")]
    MalformedField(Field),
    /// The timestamp is further from now than the allowed packet age.
    #[error("stale timestamp")]
    StaleTimestamp,
    /// A requested port is in `restrict_ports` or missing from `open_ports`.
    #[error("port not permitted")]
    PortNotPermitted,
    /// The username differs from the stanza's `require_username`.
    #[error("username not permitted")]
    UsernameMismatch,
    /// The packet asks for its own source (`0.0.0.0`) but the stanza requires an explicit one.
    #[error("source address required")]
    SourceAddressRequired,
    /// A NAT request while forwarding (or local NAT) is disabled.
    #[error("nat not enabled")]
    NatNotEnabled,
    /// A command message to a stanza without `enable_cmd_exec`.
    #[error("command execution not enabled")]
    CommandNotEnabled,
    /// The packet authenticated but the daemon could not record it durably (its state
    /// directory cannot be written): accepting it would let it be replayed after a restart.
    #[error("state cannot be written")]
    StateUnwritable,
    /// The packet authenticated but the replay store shared with other gateways could not
    /// answer in time, and the daemon is configured to fail closed: accepting it would let it
    /// be replayed against another gateway.
    #[error("shared replay store unavailable")]
    ReplayStoreDown,
    /// A modern packet (`SPA<v>.`) of a version this verifier does not speak.
    #[error("unsupported packet version")]
    UnsupportedVersion,
    /// A modern packet whose cheap MAC does not verify: junk, or sealed for another server's
    /// key. Nothing else was computed.
    #[error("mac mismatch")]
    MacMismatch,
    /// A modern packet, decrypted, whose signing key no matching stanza lists (never listed,
    /// or revoked by removing its line).
    #[error("unknown user")]
    UnknownUser,
    /// A modern packet naming a listed user whose signature does not verify; or a GPG packet
    /// whose signature does not verify with the signer's key.
    #[error("bad signature")]
    BadSignature,
    /// A GPG packet without a signature, for a stanza that requires one (`gpg_require_sig`).
    #[error("signature missing")]
    SignatureMissing,
    /// A GPG packet signed by a key the stanza does not allow (`gpg_remote_id`,
    /// `gpg_fingerprint_id`), or whose key is not in `gpg_remote_keys_file`.
    #[error("signer not allowed")]
    SignerNotAllowed,
}

impl RejectReason {
    /// The snake-case name used in the audit log and metrics.
    pub const fn code(self) -> &'static str {
        match self {
            RejectReason::TooShort => "too_short",
            RejectReason::TooLong => "too_long",
            RejectReason::PrefixNotStripped => "prefix_not_stripped",
            RejectReason::NotBase64 => "not_base64",
            RejectReason::NoStanzaForSource => "no_stanza_for_source",
            RejectReason::Replay => "replay",
            RejectReason::ReplayStoreFull => "replay_store_full",
            RejectReason::StanzaExpired => "stanza_expired",
            RejectReason::HmacMismatch => "hmac_mismatch",
            RejectReason::GpgNotSupported => "gpg_not_supported",
            RejectReason::DecryptFailed => "decrypt_failed",
            RejectReason::DigestMismatch => "digest_mismatch",
            RejectReason::MalformedField(_) => "malformed_field",
            RejectReason::StaleTimestamp => "stale_timestamp",
            RejectReason::PortNotPermitted => "port_not_permitted",
            RejectReason::UsernameMismatch => "username_mismatch",
            RejectReason::SourceAddressRequired => "source_address_required",
            RejectReason::NatNotEnabled => "nat_not_enabled",
            RejectReason::CommandNotEnabled => "command_not_enabled",
            RejectReason::StateUnwritable => "state_unwritable",
            RejectReason::ReplayStoreDown => "replay_store_down",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::MacMismatch => "mac_mismatch",
            RejectReason::UnknownUser => "unknown_user",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::SignatureMissing => "signature_missing",
            RejectReason::SignerNotAllowed => "signer_not_allowed",
        }
    }

    /// Every reason code, for metrics that must exist before the first packet.
    pub const ALL_CODES: [&'static str; 27] = [
        "too_short",
        "too_long",
        "prefix_not_stripped",
        "not_base64",
        "no_stanza_for_source",
        "replay",
        "replay_store_full",
        "stanza_expired",
        "hmac_mismatch",
        "gpg_not_supported",
        "decrypt_failed",
        "digest_mismatch",
        "malformed_field",
        "stale_timestamp",
        "port_not_permitted",
        "username_mismatch",
        "source_address_required",
        "nat_not_enabled",
        "command_not_enabled",
        "state_unwritable",
        "replay_store_down",
        "unsupported_version",
        "mac_mismatch",
        "unknown_user",
        "bad_signature",
        "signature_missing",
        "signer_not_allowed",
    ];

    /// How far a packet got before this reason: with several stanzas the furthest reason is
    /// the one reported, so an admin sees "port not permitted" rather than the HMAC failure of
    /// an unrelated stanza.
    pub(crate) const fn stage(self) -> u8 {
        match self {
            RejectReason::StanzaExpired => 1,
            RejectReason::HmacMismatch
            | RejectReason::GpgNotSupported
            | RejectReason::UnsupportedVersion
            | RejectReason::MacMismatch => 2,
            RejectReason::DecryptFailed => 3,
            RejectReason::DigestMismatch
            | RejectReason::MalformedField(_)
            | RejectReason::UnknownUser
            | RejectReason::BadSignature
            | RejectReason::SignatureMissing
            | RejectReason::SignerNotAllowed => 4,
            _ => 5,
        }
    }
}

/// What an accepted packet is allowed to have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRequest {
    /// Index of the stanza that accepted, in configuration order.
    pub stanza_index: usize,
    /// Its name (`name`, or `stanza-N` counting from 1).
    pub stanza: Arc<str>,
    /// The address to let in (the message's, or the packet's source for `0.0.0.0`).
    pub allowed_source: IpAddr,
    /// The packet's network-layer source.
    pub packet_source: IpAddr,
    /// The packet's network-layer destination.
    pub packet_destination: IpAddr,
    /// The local address the access is restricted to: the packet's destination when the
    /// stanza has a `destination` list (so the firewall opens only that address), else none.
    pub destination: Option<IpAddr>,
    /// Who: the username in an fwknop packet; for a modern packet the name the stanza gives
    /// the signing key (`"ed25519:<base64> NAME"`), or the key's text when it has none.
    pub username: String,
    /// The packet's timestamp (Unix seconds).
    pub timestamp: u64,
    /// How long the grant lasts, in seconds, after caps.
    pub timeout: u32,
    /// What to do.
    pub action: Action,
    /// The TCP source port the client will connect from (modern packets that name one): the
    /// grant can be bound to exactly that connection. `None` grants the whole address.
    pub source_port: Option<u16>,
    /// The key that signed a modern packet (`None` for fwknop packets).
    pub user_key: Option<crate::modern::UserPublicKey>,
    /// The username a modern packet carries, if any: chosen by the key's holder and signed,
    /// but informational (the identity is `username`). `None` for fwknop packets, whose
    /// username is `username`.
    pub client_username: Option<String>,
}

/// The thing granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open the firewall.
    Open {
        /// Which ports (or everything, for `forward_all`).
        access: Access,
        /// Address translation, if any.
        nat: Option<Nat>,
    },
    /// Run a command (`enable_cmd_exec`).
    Command(String),
}

/// Which traffic a grant lets through. Serialized as `"all"` or `{"ports": ["tcp/22"]}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// These protocol/port pairs (the externally visible ones for NAT). Shared: a daemon keeps
    /// one copy of each distinct list, however many grants have it.
    Ports(std::sync::Arc<[ProtoPort]>),
    /// Everything from the source (fwknop `FORWARD_ALL`).
    All,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::All => f.write_str("all"),
            Access::Ports(ports) => {
                for (i, p) in ports.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// Address translation for a grant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Nat {
    /// Destination NAT of the granted port(s) to an internal host, with a forward accept for
    /// exactly the translated flow.
    Dnat {
        /// Internal host (a DNS name is resolved by the daemon).
        host: NatHost,
        /// Internal port; `None` keeps the original port (forward-all).
        port: Option<u16>,
        /// Source NAT on the way to the internal host.
        snat: Option<Snat>,
    },
    /// Forward traffic from the source without translating it (`forward_all` with
    /// `disable_dnat`, or a NAT request with `disable_dnat`): the client routes through us.
    Route {
        /// Source NAT on the way out.
        snat: Option<Snat>,
    },
    /// Redirect the granted port to a local port (local NAT).
    Redirect {
        /// The local port.
        port: u16,
    },
}

/// Source NAT for forwarded traffic. Serialized as `{"to": "ip"}` or `"masquerade"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Snat {
    /// SNAT to this address (`force_snat`).
    To(IpAddr),
    /// MASQUERADE (`force_masquerade`).
    Masquerade,
}

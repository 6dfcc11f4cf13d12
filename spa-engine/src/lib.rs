//! The sans-I/O core of the SPA system: fwknop's wire format (FKO protocol 3.0.0), its crypto,
//! the modern public-key format ([`modern`], `docs/modern-format.md`), access policy, replay
//! protection and verdicts.
//!
//! Nothing here touches a socket, a file, a thread or the clock: the caller passes the payload,
//! the addresses, the time, the randomness and the replay store. That keeps the packet path
//! testable in memory, fuzzable, and identical in the client, the daemon and the tests.
//!
//! - Client: build a [`message::SpaMessage`], then [`packet::seal`] it (fwknop format); or
//!   build a [`modern::ModernRequest`] and [`modern::seal`] it with the user's key.
//! - Server: compile [`stanza::AccessStanza`]s into a [`verify::Verifier`] (with
//!   [`verify::Verifier::with_server_key`] when a stanza has `format = "modern"`) and call
//!   [`verify::Verifier::verify`] for each datagram, whatever its format.
//! - Debugging: [`packet::open`] decodes one packet with one set of keys; [`modern::open`]
//!   one modern packet with the server's key.

pub mod access;
pub mod b64;
pub mod cipher;
pub mod digest;
#[cfg(feature = "gpg")]
pub mod gpg;
pub mod keys;
pub mod message;
pub mod modern;
pub mod packet;
pub mod replay;
pub mod stanza;
pub mod verdict;
pub mod verify;

pub use access::{NatHost, Proto, ProtoPort};
pub use cipher::EncryptionMode;
pub use digest::DigestType;
pub use keys::{EncryptionKey, HmacKey};
pub use message::{MessageType, SpaMessage};
pub use modern::{
    ModernRequest, NatRequest, ServerPublicKey, ServerSecretKey, UserPublicKey, UserSigningKey,
};
pub use replay::{MemoryReplayStore, ReplayStore};
pub use stanza::{AccessStanza, Format, Settings, UserEntry};
pub use verdict::{Access, Action, GrantRequest, Nat, RejectReason, Snat, Verdict};
pub use verify::{PacketMeta, Verifier};

/// A source of cryptographic randomness, passed in so the engine stays free of I/O (and tests
/// can be deterministic).
pub trait Entropy {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// Draws fwknop's 16-digit random field uniformly from `0..10^16`.
///
/// fwknop seeds libc `rand()` with 32 bits; we draw 64 bits per try and reject the biased top.
pub fn random_value(rng: &mut dyn Entropy) -> String {
    const N: u64 = 10_000_000_000_000_000;
    const LIMIT: u64 = u64::MAX - u64::MAX % N;
    loop {
        let mut b = [0u8; 8];
        rng.fill(&mut b);
        let v = u64::from_le_bytes(b);
        if v < LIMIT {
            return format!("{:016}", v % N);
        }
    }
}

/// Everything that can go wrong outside the packet path: building packets and loading keys
/// and stanzas. (Packet-path failures are [`RejectReason`]s.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An encryption key over fwknop's 32-byte limit.
    #[error("encryption key is {len} bytes; at most {max} are allowed")]
    KeyTooLong {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An empty HMAC key.
    #[error("hmac key is empty")]
    HmacKeyEmpty,
    /// An HMAC key over the limit.
    #[error("hmac key is {len} bytes; at most {max} are allowed")]
    HmacKeyTooLong {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A `*_base64` key that does not decode.
    #[error("key is not valid base64")]
    KeyNotBase64,
    /// A message field that breaks fwknop's format.
    #[error("invalid {0} field")]
    InvalidField(verdict::Field),
    /// The packet would be too long for a Rijndael fwknop server.
    #[error("packet would be {len} characters; fwknop servers read at most {max} as Rijndael")]
    PacketTooLong {
        /// Length the packet would have.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A stanza key whose value is not a usable key.
    #[error("invalid {key}")]
    InvalidKey {
        /// The stanza key (`key`, `key_base64`, `hmac_key`, `hmac_key_base64`).
        key: &'static str,
        /// What is wrong with the value.
        #[source]
        source: Box<Error>,
    },
    /// A stanza with neither `key` nor `key_base64`.
    #[error("neither key nor key_base64 is set")]
    MissingKey,
    /// Two keys that exclude each other are both set.
    #[error("both {a} and {b} are set")]
    ConflictingKeys {
        /// First key.
        a: &'static str,
        /// Second key.
        b: &'static str,
    },
    /// The encryption key equals the HMAC key, which fwknopd also refuses.
    #[error("encryption key equals hmac key")]
    KeysEqual,
    /// A key that only makes sense with another setting.
    #[error("{key} requires {needs}")]
    Requires {
        /// The key set.
        key: &'static str,
        /// What it needs.
        needs: &'static str,
    },
    /// No access stanza at all.
    #[error("no access stanzas")]
    NoStanzas,
    /// A key whose text lacks its type prefix (a server key where a user key belongs, say).
    #[error("expected a key starting with {prefix}")]
    KeyPrefix {
        /// The prefix expected (`ed25519:`, `x25519-secret:`, ...).
        prefix: &'static str,
    },
    /// A key whose text is not 32 bytes of base64.
    #[error("{what} is not 32 bytes of base64")]
    KeyEncoding {
        /// Which kind of key.
        what: &'static str,
    },
    /// A public key that is not a usable curve point (not a point, or of small order).
    #[error("{what} is not a usable curve point")]
    WeakKey {
        /// Which kind of key.
        what: &'static str,
    },
    /// A key file that does not hold exactly one key.
    #[error("invalid key file: {0}")]
    KeyFile(&'static str),
    /// A stanza key that the stanza's wire format does not use.
    #[error("{key} does not apply to format = \"{format}\"")]
    NotForFormat {
        /// The stanza key.
        key: &'static str,
        /// The stanza's format.
        format: &'static str,
    },
    /// The same user key twice in one stanza's `users`.
    #[error("user key {key} is listed twice")]
    DuplicateUser {
        /// The key, as written (public).
        key: String,
    },
    /// An OpenPGP key (file) that cannot be used (`gpg` feature).
    #[error("{what}: {detail}")]
    GpgKey {
        /// Which key (`decryption key`, `signer keys`, ...).
        what: &'static str,
        /// What is wrong, as the OpenPGP library says it (never secret material).
        detail: String,
    },
    /// A protected OpenPGP secret key without its passphrase, or with a wrong one.
    #[error("the secret key is protected and the passphrase does not unlock it")]
    GpgPassphrase,
    /// Making a GPG packet failed.
    #[error("cannot make the gpg packet: {detail}")]
    GpgSeal {
        /// What the OpenPGP library said.
        detail: String,
    },
    /// A `gpg_*` stanza key in a build without the `gpg` feature.
    #[error("{key} needs GPG support, which this build lacks (cargo feature gpg)")]
    GpgNotBuilt {
        /// The stanza key.
        key: &'static str,
    },
    /// An fwknop setting this project does not implement, and why.
    #[error("{key} is not supported: {reason}")]
    Unsupported {
        /// The stanza key.
        key: &'static str,
        /// Why, and what to do instead.
        reason: &'static str,
    },
    /// A key id or fingerprint that is not hex of a usable length.
    #[error("{key}: {value:?} is not a key id or fingerprint (8, 16 or 40 hex digits)")]
    BadKeyId {
        /// The stanza key.
        key: &'static str,
        /// The value as written (public).
        value: String,
    },
    /// An error in one stanza.
    #[error("access stanza {name}")]
    Stanza {
        /// The stanza's name.
        name: String,
        /// What is wrong with it.
        #[source]
        source: Box<Error>,
    },
}

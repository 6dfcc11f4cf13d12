//! The bodies of the cargo-fuzz targets in `/fuzz`, shared with the stable test
//! `fuzz_bodies.rs` so CI runs them on thousands of inputs without a nightly toolchain.
//!
//! Included with `#[path]` from both places; it may use only `spa_engine` and `toml`.

use std::net::IpAddr;
use std::sync::LazyLock;

use spa_engine::digest::HmacState;
use spa_engine::modern::{self, Body};
use spa_engine::{
    AccessStanza, DigestType, MemoryReplayStore, PacketMeta, ServerSecretKey, Settings, UserSigningKey,
    Verdict, Verifier, b64,
};

/// Unix time every fuzz input is verified at.
pub(crate) const NOW: u64 = 1_800_000_000;

/// The fixed policy the verifier is fuzzed with: an HMAC stanza, a legacy stanza without HMAC
/// (so unauthenticated input reaches the decryption and the decoder), and a NAT stanza for an
/// IPv6 network, all with every feature switched on.
pub(crate) const STANZAS: &str = r#"
[[access]]
name = "hmac"
source = "192.0.2.0/24"
key = "fuzz encryption key"
hmac_key = "fuzz hmac key"
hmac_digest_type = "sha256"
open_ports = "tcp/22, udp/53"
enable_cmd_exec = true

[[access]]
name = "legacy"
source = "192.0.2.0/24, 2001:db8::/32"
key = "legacy key"
encryption_mode = "legacy"
require_username = "alice"

[[access]]
name = "nat"
source = "2001:db8::/32"
key_base64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
hmac_key_base64 = "c2VjcmV0IGhtYWMga2V5IGZvciBmdXp6aW5n"
hmac_digest_type = "sha3_512"
encryption_mode = "ctr"
force_nat = "10.0.0.2 22"
"#;

#[derive(serde::Deserialize)]
struct File {
    access: Vec<AccessStanza>,
}

/// The verifier built from [`STANZAS`], once.
pub(crate) static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let file: File = toml::from_str(STANZAS).expect("fuzz stanzas parse");
    let settings = Settings { max_packet_age: 120, enable_forwarding: true, enable_local_nat: true };
    Verifier::new(&file.access, settings).expect("fuzz stanzas compile")
});

/// Source addresses the first input byte picks from: IPv4 in the stanzas, IPv4-mapped IPv6,
/// IPv6 in the stanzas, and one no stanza matches.
const SOURCES: [&str; 4] = ["192.0.2.7", "::ffff:192.0.2.8", "2001:db8::5", "203.0.113.9"];

/// Fuzz target `verify`: the first byte picks the source address, the rest is the datagram.
/// Nothing an attacker sends without the keys may panic, be accepted, or enter the replay store.
pub(crate) fn verify(data: &[u8]) {
    let (pick, payload) = match data.split_first() {
        Some((p, rest)) => (*p, rest),
        None => (0, data),
    };
    let source: IpAddr = SOURCES[usize::from(pick) % SOURCES.len()].parse().expect("valid address");
    let meta = PacketMeta { source, destination: "198.51.100.1".parse().expect("valid address") };
    let mut replay = MemoryReplayStore::new(240, 16);
    match VERIFIER.verify(payload, meta, NOW, &mut replay) {
        Verdict::Reject(_) => {}
        Verdict::Accept(g) => panic!("forged packet accepted by {}", g.stanza),
    }
    assert!(replay.is_empty(), "an unauthenticated packet entered the replay store");
}

/// Fuzz target `message_decode`: any plaintext either fails to decode or decodes to a message
/// that, encoded again, decodes to the same thing.
pub(crate) fn message_decode(data: &[u8]) {
    if let Ok(d) = spa_engine::message::decode(data)
        && let Ok(again) = d.message.encode_with_digest(d.digest_type)
    {
        let d2 = spa_engine::message::decode(again.as_bytes()).expect("re-encoded message decodes");
        assert_eq!(d2, d);
    }
}

/// The modern-format policy: a modern stanza for one user with every feature on (NAT,
/// forwarding), a second modern stanza for an IPv6 network, and an fwknop stanza beside them.
pub(crate) fn modern_stanzas() -> String {
    format!(
        r#"
[[access]]
name = "modern"
format = "modern"
source = "192.0.2.0/24"
open_ports = "tcp/22, udp/53"
users = ["{user} alice", "{other}"]

[[access]]
name = "modern-v6"
format = "modern"
source = "2001:db8::/32"
require_source_address = true
force_nat = "10.0.0.2 22"
users = ["{user}"]

[[access]]
name = "fwknop"
source = "any"
key = "fuzz encryption key"
hmac_key = "fuzz hmac key"
"#,
        user = modern_user().public_key(),
        other = UserSigningKey::from_seed(&[0x22; 32]).public_key(),
    )
}

/// The server key of the modern fuzz policy.
pub(crate) fn modern_server() -> ServerSecretKey {
    ServerSecretKey::from_bytes(&[0x5e; 32])
}

/// The user the modern fuzz policy lets in (a fuzzer never has this key: it stays here).
pub(crate) fn modern_user() -> UserSigningKey {
    UserSigningKey::from_seed(&[0x11; 32])
}

/// The verifier built from [`modern_stanzas`], once.
pub(crate) static MODERN_VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let file: File = toml::from_str(&modern_stanzas()).expect("modern fuzz stanzas parse");
    let settings = Settings { max_packet_age: 120, enable_forwarding: true, enable_local_nat: true };
    Verifier::with_server_key(&file.access, settings, modern_server()).expect("modern fuzz stanzas compile")
});

/// The MAC of the modern fuzz policy's server, keyed once.
static MODERN_MAC: LazyLock<HmacState> =
    LazyLock::new(|| HmacState::new(DigestType::Sha256, &modern::mac_key(&modern_server().public_key())));

/// Fuzz target `modern_verify`: the first byte picks the source address (bits 0-1) and the
/// mode (bit 2). Text mode sends `SPA1.` and the rest as it is; packet mode treats the rest as
/// a binary packet, appends the MAC a sender who knows the server's public key can compute,
/// and sends it base64-encoded, so the input reaches the X25519 and the AEAD. Nothing may
/// panic, be accepted, or enter the replay store.
pub(crate) fn modern_verify(data: &[u8]) {
    let (pick, rest) = match data.split_first() {
        Some((p, rest)) => (*p, rest),
        None => (0, data),
    };
    let mut payload = modern::TEXT_PREFIX.as_bytes().to_vec();
    if pick & 4 == 0 {
        payload.extend_from_slice(rest);
    } else {
        let mut packet = rest.to_vec();
        packet.extend_from_slice(&MODERN_MAC.compute(&[rest]).as_bytes()[..modern::MAC_LEN]);
        payload.extend_from_slice(b64::encode(&packet).as_bytes());
    }
    let source: IpAddr = SOURCES[usize::from(pick) % SOURCES.len()].parse().expect("valid address");
    let meta = PacketMeta { source, destination: "198.51.100.1".parse().expect("valid address") };
    let mut replay = MemoryReplayStore::new(240, 16);
    match MODERN_VERIFIER.verify(&payload, meta, NOW, &mut replay) {
        Verdict::Reject(_) => {}
        Verdict::Accept(g) => panic!("forged modern packet accepted by {}", g.stanza),
    }
    assert!(replay.is_empty(), "an unauthenticated modern packet entered the replay store");
}

/// Fuzz target `modern_body`: the decoder of the (decrypted, signed) body, which no wire input
/// reaches without keys. Any bytes either fail to decode or decode to a body whose encoding
/// is exactly those bytes (one request, one encoding), and whose request the policy can read.
pub(crate) fn modern_body(data: &[u8]) {
    if let Ok(body) = Body::decode(data) {
        let again = body.encode().expect("a decoded body encodes");
        assert_eq!(&again[..], data, "a body decoded from bytes it does not encode to");
    }
}

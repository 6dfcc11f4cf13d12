//! The cargo-fuzz targets' bodies (`/fuzz`, nightly only) run on stable over thousands of
//! generated inputs, so CI exercises them on every build.

#[path = "support/fuzz_bodies.rs"]
mod bodies;

use proptest::prelude::*;
use spa_engine::access::NatHost;
use spa_engine::modern::{self, Body, ModernRequest, NatRequest};
use spa_engine::packet::{self, SealOptions};
use spa_engine::{
    DigestType, EncryptionKey, EncryptionMode, Entropy, HmacKey, MessageType, Proto, ProtoPort,
    ServerSecretKey, SpaMessage, UserSigningKey, b64,
};

struct Seeded(u64);

impl Entropy for Seeded {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (self.0 >> 33) as u8;
        }
    }
}

/// Realistic packets sealed with keys the fuzz policy does not hold (or with its encryption
/// key but the wrong HMAC key), so they pass the cheap gates and reach the cryptography.
fn near_miss(seed: u64, right_enc_key: bool) -> Vec<u8> {
    let key = EncryptionKey::new(if right_enc_key { b"fuzz encryption key".to_vec() } else { b"k".to_vec() })
        .unwrap();
    let hkey = HmacKey::new(b"not the fuzz hmac key".to_vec()).unwrap();
    let msg = SpaMessage {
        random: format!("{:016}", seed % 10_000_000_000_000_000),
        username: "alice".into(),
        timestamp: bodies::NOW,
        version: "3.0.0".into(),
        message_type: MessageType::Access,
        message: "0.0.0.0,tcp/22".into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let opts = SealOptions {
        key: &key,
        mode: EncryptionMode::Cbc,
        digest: DigestType::Sha256,
        hmac: Some((&hkey, DigestType::Sha256)),
    };
    let mut out = vec![(seed % 4) as u8];
    out.extend_from_slice(packet::seal(&msg, &opts, &mut Seeded(seed)).unwrap().as_bytes());
    out
}

#[test]
fn the_fuzz_policy_accepts_a_real_packet() {
    // Guards against a fuzz target that rejects everything because its policy is broken.
    let key = EncryptionKey::new(b"fuzz encryption key".to_vec()).unwrap();
    let hkey = HmacKey::new(b"fuzz hmac key".to_vec()).unwrap();
    let msg = SpaMessage {
        random: "1111111111111111".into(),
        username: "alice".into(),
        timestamp: bodies::NOW,
        version: "3.0.0".into(),
        message_type: MessageType::Access,
        message: "0.0.0.0,tcp/22".into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let opts = SealOptions {
        key: &key,
        mode: EncryptionMode::Cbc,
        digest: DigestType::Sha256,
        hmac: Some((&hkey, DigestType::Sha256)),
    };
    let wire = packet::seal(&msg, &opts, &mut Seeded(1)).unwrap();
    let meta = spa_engine::PacketMeta {
        source: "192.0.2.7".parse().unwrap(),
        destination: "198.51.100.1".parse().unwrap(),
    };
    let mut replay = spa_engine::MemoryReplayStore::new(240, 4);
    let v = bodies::VERIFIER.verify(wire.as_bytes(), meta, bodies::NOW, &mut replay);
    assert!(matches!(v, spa_engine::Verdict::Accept(_)), "{v:?}");
}

#[test]
fn message_decode_body_on_real_plaintexts() {
    // The fwknop vectors' plaintexts decode, so the round-trip half of the body runs too.
    let text = include_str!("../testdata/fwknop-vectors.txt");
    let mut encoded = None;
    let mut n = 0;
    for line in text.lines() {
        if let Some(e) = line.strip_prefix("encoded=") {
            encoded = Some(e);
        } else if let Some(d) = line.strip_prefix("digest=") {
            let plain = format!("{}:{d}", encoded.take().unwrap());
            assert!(spa_engine::message::decode(plain.as_bytes()).is_ok());
            bodies::message_decode(plain.as_bytes());
            n += 1;
        }
    }
    assert_eq!(n, 96);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn verify_body_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..1600)) {
        bodies::verify(&data);
    }

    #[test]
    fn verify_body_on_base64(pick in any::<u8>(), text in "[A-Za-z0-9+/]{130,520}") {
        let mut data = vec![pick];
        data.extend_from_slice(text.as_bytes());
        bodies::verify(&data);
    }

    #[test]
    fn verify_body_on_near_misses(seed in any::<u64>(), right_enc_key in any::<bool>(), cut in any::<prop::sample::Index>()) {
        let data = near_miss(seed, right_enc_key);
        bodies::verify(&data);
        bodies::verify(&data[..cut.index(data.len())]);
    }

    #[test]
    fn message_decode_body_on_random_text(data in prop::collection::vec(32u8..127, 0..600)) {
        bodies::message_decode(&data);
    }

    /// Colon-separated fields with a correct inner digest, so the field parser is reached.
    #[test]
    fn message_decode_body_on_field_shaped_text(
        random in "[0-9]{16}",
        fields in prop::collection::vec("[A-Za-z0-9+/]{0,30}|[0-9]{1,12}|[0-6]", 5..10),
        digest in prop::sample::select(DigestType::ALL.to_vec()),
    ) {
        let body = format!("{random}:{}", fields.join(":"));
        let plain = format!("{body}:{}", digest.digest(body.as_bytes()).to_b64());
        bodies::message_decode(plain.as_bytes());
    }
}

fn modern_request(seed: u64) -> ModernRequest {
    ModernRequest {
        allow: (seed & 1 == 0).then(|| "192.0.2.7".parse().unwrap()),
        ports: vec![ProtoPort::new(Proto::Tcp, 22)],
        source_port: (seed & 2 == 0).then_some(40000),
        nat: (seed & 4 == 0)
            .then(|| NatRequest::Forward { host: NatHost::Name("db.internal".into()), port: 5432 }),
        username: (seed & 8 == 0).then(|| "alice".into()),
        client_timeout: (seed & 16 == 0).then_some(60),
    }
}

/// Realistic modern packets the fuzz policy must refuse: sealed by a user it does not list,
/// or for another server, or by its own user but long expired. As text (mode bit clear).
fn modern_near_miss(seed: u64) -> Vec<u8> {
    let server = bodies::modern_server().public_key();
    let (user, server, now) = match seed % 3 {
        0 => (UserSigningKey::from_seed(&[0x33; 32]), server, bodies::NOW),
        1 => (bodies::modern_user(), ServerSecretKey::from_bytes(&[0x44; 32]).public_key(), bodies::NOW),
        _ => (bodies::modern_user(), server, bodies::NOW - 1000),
    };
    let wire = modern::seal(&modern_request(seed), &user, &server, now, &mut Seeded(seed)).unwrap();
    let mut out = vec![(seed % 4) as u8];
    out.extend_from_slice(&wire.as_bytes()[modern::TEXT_PREFIX.len()..]);
    out
}

/// The same, as a binary packet without its MAC (mode bit set): the body recomputes the MAC,
/// so these reach the X25519 and the AEAD (which fails for the other server's packets) or the
/// signer lookup (which fails for the unknown user's).
fn modern_near_miss_packet(seed: u64) -> Vec<u8> {
    let text = modern_near_miss(seed);
    let packet = b64::decode(&text[1..]).unwrap();
    let mut out = vec![4 | (seed % 4) as u8];
    out.extend_from_slice(&packet[..packet.len() - modern::MAC_LEN]);
    out
}

#[test]
fn the_modern_fuzz_policy_accepts_a_real_packet() {
    // Guards against a fuzz target that rejects everything because its policy is broken.
    let wire = modern::seal(
        &modern_request(1),
        &bodies::modern_user(),
        &bodies::modern_server().public_key(),
        bodies::NOW,
        &mut Seeded(1),
    )
    .unwrap();
    let meta = spa_engine::PacketMeta {
        source: "192.0.2.7".parse().unwrap(),
        destination: "198.51.100.1".parse().unwrap(),
    };
    let mut replay = spa_engine::MemoryReplayStore::new(240, 4);
    let v = bodies::MODERN_VERIFIER.verify(wire.as_bytes(), meta, bodies::NOW, &mut replay);
    assert!(matches!(v, spa_engine::Verdict::Accept(_)), "{v:?}");
}

#[test]
fn modern_near_misses_reach_the_steps_they_are_meant_for() {
    // Packet mode gets past the MAC: to the AEAD (other server) and the signer lookup
    // (unknown user); text mode stops at the MAC. Checked through the verifier's reasons.
    use spa_engine::RejectReason::*;
    let reason = |data: &[u8]| {
        let (pick, rest) = data.split_first().unwrap();
        let payload = if pick & 4 == 0 {
            format!("SPA1.{}", std::str::from_utf8(rest).unwrap())
        } else {
            let mac = spa_engine::digest::HmacState::new(
                DigestType::Sha256,
                &modern::mac_key(&bodies::modern_server().public_key()),
            );
            let mut p = rest.to_vec();
            p.extend_from_slice(&mac.compute(&[rest]).as_bytes()[..16]);
            format!("SPA1.{}", b64::encode(&p))
        };
        let meta = spa_engine::PacketMeta {
            source: "192.0.2.7".parse().unwrap(),
            destination: "198.51.100.1".parse().unwrap(),
        };
        match bodies::MODERN_VERIFIER.verify(
            payload.as_bytes(),
            meta,
            bodies::NOW,
            &mut spa_engine::MemoryReplayStore::new(240, 4),
        ) {
            spa_engine::Verdict::Reject(r) => r.reason,
            spa_engine::Verdict::Accept(g) => panic!("accepted by {}", g.stanza),
        }
    };
    assert_eq!(reason(&modern_near_miss(0)), UnknownUser);
    assert_eq!(reason(&modern_near_miss(1)), MacMismatch);
    assert_eq!(reason(&modern_near_miss(2)), StaleTimestamp);
    assert_eq!(reason(&modern_near_miss_packet(3)), UnknownUser);
    assert_eq!(reason(&modern_near_miss_packet(4)), DecryptFailed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn modern_verify_body_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..1100)) {
        bodies::modern_verify(&data);
    }

    #[test]
    fn modern_verify_body_on_base64(pick in 0u8..4, text in "[A-Za-z0-9+/]{260,1030}") {
        let mut data = vec![pick];
        data.extend_from_slice(text.as_bytes());
        bodies::modern_verify(&data);
    }

    #[test]
    fn modern_body_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        bodies::modern_body(&data);
    }

    /// Real bodies, with one byte changed: mostly near the decoder's edges.
    #[test]
    fn modern_body_on_mutated_bodies(seed in any::<u64>(), at in any::<prop::sample::Index>(), to in any::<u8>()) {
        let body = Body { nonce: [7; 16], request: modern_request(seed) }.encode().unwrap();
        bodies::modern_body(&body);
        let mut m = body.to_vec();
        let i = at.index(m.len());
        m[i] = to;
        bodies::modern_body(&m);
        bodies::modern_body(&m[..i]);
    }
}

// These run the X25519 (and seal packets) for every case: fewer cases, the same ground.
proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn modern_verify_body_on_packets(pick in 0u8..4, body in prop::collection::vec(any::<u8>(), 150..800)) {
        // Random binary packets with a correct MAC and a current timestamp: the server's
        // X25519 and AEAD run on every one.
        let mut data = vec![4 | pick, 1];
        data.extend_from_slice(&bodies::NOW.to_be_bytes());
        data.extend_from_slice(&body);
        bodies::modern_verify(&data);
    }

    #[test]
    fn modern_verify_body_on_near_misses(seed in any::<u64>(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
        for data in [modern_near_miss(seed), modern_near_miss_packet(seed)] {
            bodies::modern_verify(&data);
            bodies::modern_verify(&data[..cut.index(data.len())]);
            let mut flipped = data.clone();
            let i = 1 + flip.index(flipped.len() - 1);
            flipped[i] ^= 0x20;
            bodies::modern_verify(&flipped);
        }
    }
}

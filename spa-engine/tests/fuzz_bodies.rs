//! The cargo-fuzz targets' bodies (`/fuzz`, nightly only) run on stable over thousands of
//! generated inputs, so CI exercises them on every build.

#[path = "support/fuzz_bodies.rs"]
mod bodies;

use proptest::prelude::*;
use spa_engine::packet::{self, SealOptions};
use spa_engine::{DigestType, EncryptionKey, EncryptionMode, Entropy, HmacKey, MessageType, SpaMessage};

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

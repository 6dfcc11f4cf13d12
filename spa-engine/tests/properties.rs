//! Property tests: sealing then opening (and verifying) is the identity for every message
//! type, digest, HMAC type and mode; random and mutated input never panics and is always
//! rejected without entering the replay store.

use std::net::IpAddr;

use proptest::prelude::*;
use spa_engine::digest::HmacState;
use spa_engine::message::MAX_CLIENT_TIMEOUT;
use spa_engine::packet::{self, MAX_RIJNDAEL_PACKET_LEN, OpenKeys, SealOptions};
use spa_engine::{
    AccessStanza, DigestType, EncryptionKey, EncryptionMode, Entropy, Error, HmacKey, MemoryReplayStore,
    MessageType, PacketMeta, Settings, SpaMessage, Verdict, Verifier,
};

struct Seeded(u64);

impl Entropy for Seeded {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *b = (z ^ (z >> 31)) as u8;
        }
    }
}

fn message_type() -> impl Strategy<Value = MessageType> {
    (0u8..=6).prop_map(|i| MessageType::from_id(i).unwrap())
}

fn digest() -> impl Strategy<Value = DigestType> {
    prop::sample::select(DigestType::ALL.to_vec())
}

fn mode() -> impl Strategy<Value = EncryptionMode> {
    prop::sample::select(EncryptionMode::ALL.to_vec())
}

fn allow_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        Just(IpAddr::from([0, 0, 0, 0])),
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u16; 8]>().prop_map(IpAddr::from),
    ]
}

fn ports() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::bool::ANY, 1u16..=65535), 1..=4).prop_map(|v| {
        v.iter()
            .map(|(tcp, p)| format!("{}/{p}", if *tcp { "tcp" } else { "udp" }))
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn nat_host() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| IpAddr::from(a).to_string()),
        any::<[u16; 8]>().prop_map(|a| IpAddr::from(a).to_string()),
        "[a-z0-9][a-z0-9.-]{0,30}",
    ]
}

prop_compose! {
    /// A message within fwknop's limits, of any type.
    fn spa_message()(
        t in message_type(),
        random in "[0-9]{16}",
        // The server refuses a leading `-` (an option to the admin's scripts).
        username in "[A-Za-z0-9._ @#$%&()!^~{}'`][A-Za-z0-9._ @#$%&()!^~{}'`-]{0,28}",
        timestamp in 0u64..100_000_000_000,
        version in prop::sample::select(vec!["3.0.0", "2.0", "2.0.2", "2.5.0", "x"]),
        allow in allow_ip(),
        ports in ports(),
        command in "[ -~]{1,80}",
        nat in (nat_host(), 1u16..=65535),
        server_auth in prop::option::of("[ -~]{1,40}"),
        timeout in 1u32..=MAX_CLIENT_TIMEOUT,
    ) -> SpaMessage {
        let message = if t == MessageType::Command { format!("{allow},{command}") } else { format!("{allow},{ports}") };
        SpaMessage {
            random,
            username,
            timestamp,
            version: version.to_owned(),
            message_type: t,
            message,
            nat_access: t.has_nat().then(|| format!("{},{}", nat.0, nat.1)),
            server_auth,
            client_timeout: t.has_timeout().then_some(timeout),
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    spa_engine::b64::encode(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// seal → open returns the message and the digest type it was sealed with, and a stanza
    /// with the same keys accepts it.
    #[test]
    fn seal_then_open_is_identity(
        msg in spa_message(),
        digest in digest(),
        hmac in prop::option::of(digest()),
        mode in mode(),
        key in prop::collection::vec(any::<u8>(), 0..=32),
        hkey in prop::collection::vec(any::<u8>(), 1..=128),
        seed in any::<u64>(),
    ) {
        prop_assume!(key != hkey);
        let ekey = EncryptionKey::new(key.clone()).unwrap();
        let hk = HmacKey::new(hkey.clone()).unwrap();
        let opts = SealOptions { key: &ekey, mode, digest, hmac: hmac.map(|h| (&hk, h)) };
        let wire = match packet::seal(&msg, &opts, &mut Seeded(seed)) {
            Ok(w) => w,
            Err(Error::PacketTooLong { len, max }) => {
                // Refused rather than sent: fwknopd would take it for GPG.
                prop_assert!(len > max && max == MAX_RIJNDAEL_PACKET_LEN);
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("seal failed: {e}"))),
        };
        prop_assert!(wire.len() <= MAX_RIJNDAEL_PACKET_LEN);
        let state = hmac.map(|h| HmacState::new(h, &hkey));
        let d = packet::open(wire.as_bytes(), &OpenKeys { key: &ekey, mode, hmac: state.as_ref() }).unwrap();
        prop_assert_eq!(&d.message, &msg);
        prop_assert_eq!(d.digest_type, digest);

        // The whole server path, when the packet is long enough for fwknopd to read it.
        prop_assume!(wire.len() >= packet::MIN_PACKET_LEN);
        let mut toml = format!(
            "source = \"any\"\nkey_base64 = \"{}\"\nencryption_mode = \"{mode}\"\nenable_cmd_exec = true\n",
            b64(&key)
        );
        if let Some(h) = hmac {
            toml.push_str(&format!("hmac_key_base64 = \"{}\"\nhmac_digest_type = \"{h}\"\n", b64(&hkey)));
        }
        let stanza: AccessStanza = toml::from_str(&toml).unwrap();
        let settings = Settings { max_packet_age: 120, enable_forwarding: true, enable_local_nat: true };
        let v = Verifier::new(&[stanza], settings).unwrap();
        let meta = PacketMeta { source: "192.0.2.1".parse().unwrap(), destination: "192.0.2.2".parse().unwrap() };
        let mut replay = MemoryReplayStore::new(240, 8);
        match v.verify(wire.as_bytes(), meta, msg.timestamp, &mut replay) {
            Verdict::Accept(g) => {
                prop_assert_eq!(g.username, msg.username);
                prop_assert_eq!(g.timestamp, msg.timestamp);
            }
            Verdict::Reject(r) => return Err(TestCaseError::fail(format!("rejected: {}", r.reason))),
        }
    }
}

/// A verifier with an HMAC stanza and a legacy stanza without HMAC, both matching everyone.
fn verifier() -> Verifier {
    let a: AccessStanza =
        toml::from_str("source = \"any\"\nkey = \"enc key\"\nhmac_key = \"mac key\"\nenable_cmd_exec = true")
            .unwrap();
    let b: AccessStanza =
        toml::from_str("source = \"any\"\nkey = \"enc key\"\nencryption_mode = \"legacy\"").unwrap();
    Verifier::new(&[a, b], Settings { max_packet_age: 120, enable_forwarding: true, enable_local_nat: true })
        .unwrap()
}

const NOW: u64 = 1_800_000_000;

fn meta() -> PacketMeta {
    PacketMeta { source: "192.0.2.1".parse().unwrap(), destination: "192.0.2.2".parse().unwrap() }
}

/// A valid packet for [`verifier`]: HMAC'd CBC, or legacy without HMAC.
fn valid_packet(legacy: bool, seed: u64) -> String {
    let key = EncryptionKey::new(b"enc key".to_vec()).unwrap();
    let hkey = HmacKey::new(b"mac key".to_vec()).unwrap();
    let msg = SpaMessage {
        random: format!("{:016}", seed % 10_000_000_000_000_000),
        username: "alice".into(),
        timestamp: NOW,
        version: "3.0.0".into(),
        message_type: MessageType::Access,
        message: "0.0.0.0,tcp/22".into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let opts = if legacy {
        SealOptions { key: &key, mode: EncryptionMode::Legacy, digest: DigestType::Sha256, hmac: None }
    } else {
        SealOptions {
            key: &key,
            mode: EncryptionMode::Cbc,
            digest: DigestType::Sha256,
            hmac: Some((&hkey, DigestType::Sha256)),
        }
    };
    packet::seal(&msg, &opts, &mut Seeded(seed)).unwrap()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut p: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        match *m {
            Mutation::Flip(i, x) if !p.is_empty() => {
                let n = p.len();
                p[i % n] ^= x;
            }
            Mutation::Insert(i, b) => {
                let n = p.len() + 1;
                p.insert(i % n, b);
            }
            Mutation::Delete(i) if !p.is_empty() => {
                let n = p.len();
                p.remove(i % n);
            }
            Mutation::Truncate(i) if !p.is_empty() => {
                let n = p.len();
                p.truncate(i % n);
            }
            _ => {}
        }
    }
    p
}

/// Asserts the verifier rejects `payload` and records nothing; `open` must not panic either.
fn assert_rejected(v: &Verifier, payload: &[u8]) -> Result<(), TestCaseError> {
    let mut replay = MemoryReplayStore::new(240, 8);
    for source in ["192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1"] {
        let meta = PacketMeta { source: source.parse().unwrap(), ..meta() };
        match v.verify(payload, meta, NOW, &mut replay) {
            Verdict::Reject(_) => {}
            Verdict::Accept(g) => {
                return Err(TestCaseError::fail(format!("accepted by {}: {payload:?}", g.stanza)));
            }
        }
    }
    prop_assert!(replay.is_empty(), "junk entered the replay store");
    for keys in v.stanzas().iter().filter_map(|s| s.keys()) {
        prop_assert!(packet::open(payload, &keys).is_err());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_rejected(payload in prop::collection::vec(any::<u8>(), 0..1600)) {
        assert_rejected(&verifier(), &payload)?;
    }

    /// Base64 text of a realistic length gets past the cheap gates to the HMAC and decryption.
    #[test]
    fn random_base64_is_rejected(payload in "[A-Za-z0-9+/]{140,420}") {
        assert_rejected(&verifier(), payload.as_bytes())?;
    }

    #[test]
    fn mutated_packets_are_rejected(
        legacy in any::<bool>(),
        seed in any::<u64>(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let v = verifier();
        let good = valid_packet(legacy, seed);
        // The unmutated packet is accepted, so a rejection below is due to the mutation.
        let mut replay = MemoryReplayStore::new(240, 8);
        prop_assert!(matches!(v.verify(good.as_bytes(), meta(), NOW, &mut replay), Verdict::Accept(_)));
        let bad = apply(good.clone().into_bytes(), &muts);
        prop_assume!(bad != good.as_bytes());
        assert_rejected(&v, &bad)?;
    }
}

//! Criterion benchmarks of the packet path: full verification of a valid packet, rejection of
//! junk and of a wrong-HMAC packet, and building a packet (client side); the same for the
//! modern format, plus the junk only someone who knows the server's public key can make.
//!
//! Run: `cargo bench -p spa-engine --bench verify`. Results are recorded in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use spa_engine::digest::HmacState;
use spa_engine::modern::{self, ModernRequest};
use spa_engine::packet::{self, SealOptions};
use spa_engine::replay::{Insert, ReplayKey};
use spa_engine::{
    AccessStanza, DigestType, EncryptionKey, EncryptionMode, Entropy, HmacKey, MemoryReplayStore,
    MessageType, PacketMeta, Proto, ProtoPort, RejectReason, ReplayStore, ServerSecretKey, Settings,
    SpaMessage, UserSigningKey, Verdict, Verifier, b64,
};

const NOW: u64 = 1_800_000_000;

/// A replay store that never remembers, so the same valid packet can be verified repeatedly
/// and the benchmark measures the verification, not a replay rejection.
struct Forgetful;

impl ReplayStore for Forgetful {
    fn contains(&self, _: &ReplayKey, _: u64) -> bool {
        false
    }
    fn insert(&mut self, _: ReplayKey, _: u64) -> Insert {
        Insert::New
    }
}

struct Xorshift(u64);

impl Entropy for Xorshift {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

fn verifier() -> Verifier {
    let stanza: AccessStanza = toml::from_str(
        r#"
        source = "192.0.2.0/24"
        open_ports = "tcp/22"
        key = "a typical passphrase"
        hmac_key = "a different hmac key"
        hmac_digest_type = "sha256"
        "#,
    )
    .expect("bench stanza");
    Verifier::new(&[stanza], Settings::default()).expect("bench stanza compiles")
}

fn message() -> SpaMessage {
    SpaMessage {
        random: "1234567890123456".into(),
        username: "alice".into(),
        timestamp: NOW,
        version: "3.0.0".into(),
        message_type: MessageType::Access,
        message: "192.0.2.10,tcp/22".into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    }
}

fn bench(c: &mut Criterion) {
    let v = verifier();
    let key = EncryptionKey::new(b"a typical passphrase".to_vec()).expect("key");
    let hkey = HmacKey::new(b"a different hmac key".to_vec()).expect("hmac key");
    let wrong_hkey = HmacKey::new(b"not the hmac key".to_vec()).expect("hmac key");
    let opts = SealOptions {
        key: &key,
        mode: EncryptionMode::Cbc,
        digest: DigestType::Sha256,
        hmac: Some((&hkey, DigestType::Sha256)),
    };
    let mut rng = Xorshift(0x2545_F491_4F6C_DD1D);
    let valid = packet::seal(&message(), &opts, &mut rng).expect("seal");
    let wrong_mac = packet::seal(
        &message(),
        &SealOptions { hmac: Some((&wrong_hkey, DigestType::Sha256)), ..opts },
        &mut rng,
    )
    .expect("seal");
    // Junk of a typical packet length, in the base64 alphabet, so it passes the cheap gates.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = [0u8; 204];
    rng.fill(&mut bytes);
    let mut junk: Vec<u8> = bytes.iter().map(|b| ALPHABET[usize::from(b % 64)]).collect();
    // The last 43 characters are read as the HMAC. Random text decodes as a tag only if its
    // unused trailing bits are zero; make them so, so the junk costs a full HMAC computation
    // (the worst case) instead of failing at the tag's base64.
    junk[203] = b'A';
    let meta = PacketMeta {
        source: "192.0.2.10".parse().expect("ip"),
        destination: "198.51.100.1".parse().expect("ip"),
    };

    assert!(matches!(v.verify(valid.as_bytes(), meta, NOW, &mut Forgetful), Verdict::Accept(_)));
    assert!(matches!(v.verify(&junk, meta, NOW, &mut Forgetful), Verdict::Reject(_)));
    assert!(matches!(v.verify(wrong_mac.as_bytes(), meta, NOW, &mut Forgetful), Verdict::Reject(_)));

    let mut g = c.benchmark_group("verify");
    g.bench_function("valid packet (store that never remembers)", |b| {
        b.iter(|| v.verify(black_box(valid.as_bytes()), meta, NOW, &mut Forgetful))
    });
    // A real store that has not seen this packet: made (and its table allocated by one
    // unrelated entry) outside the timing, and returned so that dropping it is not timed either.
    g.bench_function("valid packet (MemoryReplayStore)", |b| {
        b.iter_batched(
            || {
                let mut store = MemoryReplayStore::new(240, 1024);
                store.insert([0; 32], NOW);
                store
            },
            |mut store| (v.verify(black_box(valid.as_bytes()), meta, NOW, &mut store), store),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("junk base64 (204 chars)", |b| {
        b.iter(|| v.verify(black_box(&junk), meta, NOW, &mut Forgetful))
    });
    g.bench_function("wrong hmac", |b| {
        b.iter(|| v.verify(black_box(wrong_mac.as_bytes()), meta, NOW, &mut Forgetful))
    });

    // The modern format: one stanza for one user, a typical knock-and-connect request
    // (explicit IPv4, tcp/22, a source port, a username): 316 characters on the wire.
    let user = UserSigningKey::generate(&mut rng);
    let server = ServerSecretKey::generate(&mut rng);
    let mv = modern_verifier(&user, server.clone());
    let request = ModernRequest {
        allow: Some("192.0.2.10".parse().expect("ip")),
        ports: vec![ProtoPort::new(Proto::Tcp, 22)],
        source_port: Some(50022),
        nat: None,
        username: Some("alice".into()),
        client_timeout: None,
    };
    let modern_valid = modern::seal(&request, &user, &server.public_key(), NOW, &mut rng).expect("seal");
    // Junk of the same length: random bytes behind a version byte of 1, so the MAC is
    // really computed (the worst case; random text fails at the version byte first 255 times
    // in 256).
    let mut junk_packet = vec![1u8; 233];
    rng.fill(&mut junk_packet[1..]);
    let modern_junk = format!("{}{}", modern::TEXT_PREFIX, b64::encode(&junk_packet));
    // Targeted junk: a current timestamp and a valid MAC, which anyone who knows the server's
    // public key can compute; the server then does its X25519 before the AEAD fails.
    junk_packet[1..9].copy_from_slice(&NOW.to_be_bytes());
    let mac = HmacState::new(DigestType::Sha256, &modern::mac_key(&server.public_key()));
    let tag = mac.compute(&[&junk_packet[..217]]);
    junk_packet[217..].copy_from_slice(&tag.as_bytes()[..16]);
    let targeted = format!("{}{}", modern::TEXT_PREFIX, b64::encode(&junk_packet));

    assert_eq!(modern_valid.len(), 316);
    assert!(matches!(mv.verify(modern_valid.as_bytes(), meta, NOW, &mut Forgetful), Verdict::Accept(_)));
    let reason = |p: &str| match mv.verify(p.as_bytes(), meta, NOW, &mut Forgetful) {
        Verdict::Reject(r) => r.reason,
        Verdict::Accept(_) => panic!("junk accepted"),
    };
    assert_eq!(reason(&modern_junk), RejectReason::MacMismatch);
    assert_eq!(reason(&targeted), RejectReason::DecryptFailed);

    g.bench_function("modern valid packet (store that never remembers)", |b| {
        b.iter(|| mv.verify(black_box(modern_valid.as_bytes()), meta, NOW, &mut Forgetful))
    });
    g.bench_function("modern junk (316 chars)", |b| {
        b.iter(|| mv.verify(black_box(modern_junk.as_bytes()), meta, NOW, &mut Forgetful))
    });
    g.bench_function("modern targeted junk (valid mac)", |b| {
        b.iter(|| mv.verify(black_box(targeted.as_bytes()), meta, NOW, &mut Forgetful))
    });
    g.finish();

    let msg = message();
    c.bench_function("seal/access packet (sha256, hmac-sha256, cbc)", |b| {
        b.iter(|| packet::seal(black_box(&msg), &opts, &mut rng))
    });
    let s_pub = server.public_key();
    c.bench_function("seal/modern packet", |b| {
        b.iter(|| modern::seal(black_box(&request), &user, &s_pub, NOW, &mut rng))
    });
}

fn modern_verifier(user: &UserSigningKey, server: ServerSecretKey) -> Verifier {
    let stanza: AccessStanza = toml::from_str(&format!(
        r#"
        format = "modern"
        source = "192.0.2.0/24"
        open_ports = "tcp/22"
        users = ["{} alice"]
        "#,
        user.public_key()
    ))
    .expect("bench stanza");
    Verifier::with_server_key(&[stanza], Settings::default(), server).expect("bench stanza compiles")
}

criterion_group!(benches, bench);
criterion_main!(benches);

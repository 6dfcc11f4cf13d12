//! Criterion benchmarks of the packet path: full verification of a valid packet, rejection of
//! junk and of a wrong-HMAC packet, and building a packet (client side).
//!
//! Run: `cargo bench -p spa-engine --bench verify`. Results are recorded in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use spa_engine::packet::{self, SealOptions};
use spa_engine::replay::{Insert, ReplayKey};
use spa_engine::{
    AccessStanza, DigestType, EncryptionKey, EncryptionMode, Entropy, HmacKey, MemoryReplayStore,
    MessageType, PacketMeta, ReplayStore, Settings, SpaMessage, Verdict, Verifier,
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
    g.finish();

    let msg = message();
    c.bench_function("seal/access packet (sha256, hmac-sha256, cbc)", |b| {
        b.iter(|| packet::seal(black_box(&msg), &opts, &mut rng))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

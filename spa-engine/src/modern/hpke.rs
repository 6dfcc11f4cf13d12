//! HPKE (RFC 9180) base mode, single shot, for one cipher suite only:
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305 (suite ids 0x0020, 0x0001, 0x0003).
//!
//! Written out here rather than taken from a crate so that the engine holds exactly the suite
//! the format names and nothing negotiable, and so that the server can stop after the one
//! Diffie-Hellman it must do. It is checked against RFC 9180's own test vector (Appendix
//! A.2.1) in this module's tests, which is what lets another implementation (Go's
//! `crypto/hpke`, Apple CryptoKit's `HPKE`, BoringSSL, Tink) interoperate.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// `suite_id` of the KEM: `"KEM" || I2OSP(0x0020, 2)`.
const KEM_SUITE: &[u8] = b"KEM\x00\x20";
/// `suite_id` of the whole HPKE suite: `"HPKE" || kem_id || kdf_id || aead_id`.
const HPKE_SUITE: &[u8] = b"HPKE\x00\x20\x00\x01\x00\x03";
/// RFC 9180's version label.
const V1: &[u8] = b"HPKE-v1";
/// `mode_base`.
const MODE_BASE: u8 = 0;

/// The AEAD key and nonce of one single-shot context (sequence number 0).
pub(crate) struct Context {
    pub(crate) key: Zeroizing<[u8; 32]>,
    pub(crate) nonce: [u8; 12],
}

/// The length of the AEAD tag appended to every ciphertext.
pub(crate) const TAG_LEN: usize = 16;

fn labeled_extract(suite: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut ext = hkdf::HkdfExtract::<Sha256>::new(Some(salt));
    for part in [V1, suite, label, ikm] {
        ext.input_ikm(part);
    }
    let (prk, _) = ext.finalize();
    Zeroizing::new(prk.into())
}

fn labeled_expand(suite: &[u8], prk: &[u8; 32], label: &[u8], info: &[u8], out: &mut [u8]) {
    // A PRK of HashLen bytes is always accepted.
    let hk = Hkdf::<Sha256>::from_prk(prk).unwrap_or_else(|_| unreachable!("32-byte prk"));
    let len = u16::try_from(out.len()).unwrap_or_else(|_| unreachable!("short output")).to_be_bytes();
    // Expanding at most 32 bytes never exceeds HKDF's 255 × HashLen limit.
    hk.expand_multi_info(&[&len, V1, suite, label, info], out).unwrap_or_else(|_| unreachable!());
}

/// DHKEM's `ExtractAndExpand(dh, enc || pkR)`.
fn shared_secret(dh: &[u8; 32], enc: &[u8; 32], pk_r: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh);
    let mut out = Zeroizing::new([0u8; 32]);
    let mut ctx = [0u8; 64];
    ctx[..32].copy_from_slice(enc);
    ctx[32..].copy_from_slice(pk_r);
    labeled_expand(KEM_SUITE, &eae_prk, b"shared_secret", &ctx, &mut out[..]);
    out
}

/// The base-mode key schedule: key and base nonce for `info`.
pub(crate) fn key_schedule(shared: &[u8; 32], info: &[u8]) -> Context {
    let psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"");
    let info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info);
    let mut ks_context = [0u8; 65];
    ks_context[0] = MODE_BASE;
    ks_context[1..33].copy_from_slice(&psk_id_hash[..]);
    ks_context[33..].copy_from_slice(&info_hash[..]);
    let secret = labeled_extract(HPKE_SUITE, shared, b"secret", b"");
    let mut key = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 12];
    labeled_expand(HPKE_SUITE, &secret, b"key", &ks_context, &mut key[..]);
    labeled_expand(HPKE_SUITE, &secret, b"base_nonce", &ks_context, &mut nonce);
    Context { key, nonce }
}

/// DHKEM's `Encap` with the ephemeral secret `sk_e`: the shared secret and `enc` (the
/// ephemeral public key). `None` when the recipient key is of low order (the Diffie-Hellman
/// output would be all zeros, which RFC 9180 requires to be refused).
pub(crate) fn encap(sk_e: &StaticSecret, pk_r: &PublicKey) -> Option<(Zeroizing<[u8; 32]>, [u8; 32])> {
    let enc = PublicKey::from(sk_e).to_bytes();
    let dh = sk_e.diffie_hellman(pk_r);
    if !dh.was_contributory() {
        return None;
    }
    Some((shared_secret(dh.as_bytes(), &enc, pk_r.as_bytes()), enc))
}

/// The sender's side: the context for sending to `pk_r` with the ephemeral secret `sk_e`,
/// and `enc`; `None` as for [`encap`].
pub(crate) fn setup_sender(
    sk_e: &StaticSecret,
    pk_r: &PublicKey,
    info: &[u8],
) -> Option<(Context, [u8; 32])> {
    let (shared, enc) = encap(sk_e, pk_r)?;
    Some((key_schedule(&shared, info), enc))
}

/// The recipient's side: the context for `enc`, or `None` when `enc` is of low order.
pub(crate) fn setup_receiver(
    sk_r: &StaticSecret,
    pk_r: &[u8; 32],
    enc: &[u8; 32],
    info: &[u8],
) -> Option<Context> {
    let dh = sk_r.diffie_hellman(&PublicKey::from(*enc));
    if !dh.was_contributory() {
        return None;
    }
    let shared = shared_secret(dh.as_bytes(), enc, pk_r);
    Some(key_schedule(&shared, info))
}

impl Context {
    /// Encrypts `buf` in place (sequence number 0) and returns the tag.
    pub(crate) fn seal(&self, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let cipher = ChaCha20Poly1305::new(&(*self.key).into());
        // ChaCha20-Poly1305 refuses only plaintexts over 256 GiB.
        let tag = cipher
            .encrypt_inout_detached(&Nonce::from(self.nonce), aad, buf.into())
            .unwrap_or_else(|_| unreachable!("short plaintext"));
        tag.into()
    }

    /// Decrypts `buf` in place if `tag` authenticates it; `false` (and `buf` unspecified)
    /// otherwise.
    pub(crate) fn open(&self, aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        let cipher = ChaCha20Poly1305::new(&(*self.key).into());
        cipher.decrypt_inout_detached(&Nonce::from(self.nonce), aad, buf.into(), &Tag::from(*tag)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn arr(s: &str) -> [u8; 32] {
        hex(s).try_into().unwrap()
    }

    /// RFC 9180, Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305,
    /// base mode, the first encryption (sequence number 0).
    #[test]
    fn rfc9180_appendix_a_2_1() {
        let info = hex("4f6465206f6e2061204772656369616e2055726e");
        let sk_e =
            StaticSecret::from(arr("f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600"));
        let sk_r =
            StaticSecret::from(arr("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb"));
        let pk_r = arr("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a");
        assert_eq!(PublicKey::from(&sk_r).to_bytes(), pk_r);

        let (ctx, enc) = setup_sender(&sk_e, &PublicKey::from(pk_r), &info).unwrap();
        assert_eq!(enc, arr("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a"));
        assert_eq!(*ctx.key, arr("ad2744de8e17f4ebba575b3f5f5a8fa1f69c2a07f6e7500bc60ca6e3e3ec1c91"));
        assert_eq!(ctx.nonce.to_vec(), hex("5c4d98150661b848853b547f"));

        let aad = hex("436f756e742d30");
        let mut buf = hex("4265617574792069732074727574682c20747275746820626561757479");
        let tag = ctx.seal(&aad, &mut buf);
        let mut ct = buf.clone();
        ct.extend_from_slice(&tag);
        assert_eq!(
            ct,
            hex("1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28")
        );

        let rctx = setup_receiver(&sk_r, &pk_r, &enc, &info).unwrap();
        assert!(rctx.open(&aad, &mut buf, &tag));
        assert_eq!(buf, b"Beauty is truth, truth beauty");
        let mut again = ct[..ct.len() - 16].to_vec();
        assert!(!rctx.open(b"Count-1", &mut again, &tag));
    }

    #[test]
    fn low_order_points_are_refused() {
        let sk = StaticSecret::from([7u8; 32]);
        let pk = PublicKey::from(&sk).to_bytes();
        // u = 0 (order 2) and u = 1 (order 4): multiplied by a clamped scalar (a multiple of
        // 8) they give an all-zero Diffie-Hellman output.
        let mut one = [0u8; 32];
        one[0] = 1;
        for bad in [[0u8; 32], one] {
            assert!(setup_receiver(&sk, &pk, &bad, b"").is_none());
            assert!(setup_sender(&sk, &PublicKey::from(bad), b"").is_none());
        }
    }
}

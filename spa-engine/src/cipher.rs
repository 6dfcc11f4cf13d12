//! Rijndael as fwknop uses it: AES-256 with OpenSSL's salted MD5 key derivation.
//!
//! The ciphertext is `Salted__` ‖ salt(8) ‖ AES blocks, exactly what `openssl enc -aes-256-cbc
//! -md md5` writes. The key and IV come from `EVP_BytesToKey(MD5, 1 round)` over the passphrase
//! and the salt. fwknop pads with PKCS#7 in every mode, stream modes included, so every mode
//! here processes whole blocks. The mode is not on the wire: both sides must be configured
//! alike.

use std::fmt;
use std::str::FromStr;

use aes::Aes256;
use cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyInit, KeyIvInit, StreamCipher};
use md5::{Digest as _, Md5};
use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use crate::keys::EncryptionKey;

/// The 8 bytes OpenSSL writes before the salt.
pub const SALTED_MAGIC: &[u8; 8] = b"Salted__";
/// AES block size.
pub const BLOCK: usize = 16;

/// A Rijndael mode fwknop can be configured with (`-M`, `ENCRYPTION_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum EncryptionMode {
    /// Electronic codebook (fwknop 1).
    Ecb,
    /// Cipher block chaining (fwknop 2), the default.
    #[default]
    Cbc,
    /// 128-bit cipher feedback (fwknop 3).
    Cfb,
    /// Output feedback (fwknop 5).
    Ofb,
    /// Counter mode, 128-bit big-endian counter (fwknop 6).
    Ctr,
    /// CBC with the passphrase padded or cut to 16 bytes with ASCII `0`, for pre-2.5 peers
    /// (fwknop 8).
    Legacy,
}

impl EncryptionMode {
    /// Every supported mode.
    pub const ALL: [EncryptionMode; 6] = [
        EncryptionMode::Ecb,
        EncryptionMode::Cbc,
        EncryptionMode::Cfb,
        EncryptionMode::Ofb,
        EncryptionMode::Ctr,
        EncryptionMode::Legacy,
    ];

    /// fwknop's lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            EncryptionMode::Ecb => "ecb",
            EncryptionMode::Cbc => "cbc",
            EncryptionMode::Cfb => "cfb",
            EncryptionMode::Ofb => "ofb",
            EncryptionMode::Ctr => "ctr",
            EncryptionMode::Legacy => "legacy",
        }
    }

    /// fwknop's number for the mode (`fko_encryption_mode_t`).
    pub const fn fwknop_id(self) -> u8 {
        match self {
            EncryptionMode::Ecb => 1,
            EncryptionMode::Cbc => 2,
            EncryptionMode::Cfb => 3,
            EncryptionMode::Ofb => 5,
            EncryptionMode::Ctr => 6,
            EncryptionMode::Legacy => 8,
        }
    }
}

impl fmt::Display for EncryptionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name given was not one of the supported modes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown encryption mode {0:?} (expected cbc, ecb, cfb, ofb, ctr or legacy)")]
pub struct UnknownEncryptionMode(pub String);

impl FromStr for EncryptionMode {
    type Err = UnknownEncryptionMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        EncryptionMode::ALL
            .into_iter()
            .find(|m| m.name() == lower)
            .ok_or_else(|| UnknownEncryptionMode(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for EncryptionMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for EncryptionMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Why a ciphertext could not be decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Shorter than header plus one block, or not whole blocks.
    #[error("ciphertext length is not a whole number of blocks")]
    Length,
    /// The `Salted__` header is missing.
    #[error("ciphertext lacks the salt header")]
    Header,
    /// The PKCS#7 padding is inconsistent, so the key or mode is wrong.
    #[error("bad padding")]
    Padding,
}

/// Derived AES key and IV, wiped on drop.
struct KeyIv(Zeroizing<[u8; 48]>);

impl KeyIv {
    /// OpenSSL `EVP_BytesToKey` with MD5 and one round: D1 = MD5(P‖S), Di = MD5(Di-1‖P‖S).
    fn derive(key: &EncryptionKey, mode: EncryptionMode, salt: &[u8; 8]) -> Self {
        let mut legacy = Zeroizing::new([b'0'; 16]);
        let pass: &[u8] = if mode == EncryptionMode::Legacy {
            let k = key.as_bytes();
            let n = k.len().min(16);
            legacy[..n].copy_from_slice(&k[..n]);
            &legacy[..]
        } else {
            key.as_bytes()
        };
        let mut out = Zeroizing::new([0u8; 48]);
        let mut prev: Option<Zeroizing<[u8; 16]>> = None;
        for chunk in out.chunks_exact_mut(16) {
            let mut h = Md5::new();
            if let Some(p) = &prev {
                h.update(&p[..]);
            }
            h.update(pass);
            h.update(salt);
            let d: Zeroizing<[u8; 16]> = Zeroizing::new(h.finalize().into());
            chunk.copy_from_slice(&d[..]);
            prev = Some(d);
        }
        Self(out)
    }

    fn key(&self) -> &[u8; 32] {
        self.0[..32].try_into().unwrap_or_else(|_| unreachable!())
    }

    fn iv(&self) -> &[u8; 16] {
        self.0[32..].try_into().unwrap_or_else(|_| unreachable!())
    }
}

/// Runs a block mode over `buf`, which holds whole blocks.
fn blocks_mut(buf: &mut [u8]) -> &mut [cipher::Block<Aes256>] {
    let (blocks, rest) = cipher::Array::slice_as_chunks_mut(buf);
    debug_assert!(rest.is_empty());
    blocks
}

fn apply(mode: EncryptionMode, kiv: &KeyIv, buf: &mut [u8], encrypt: bool) {
    let (key, iv) = (kiv.key().into(), kiv.iv().into());
    match (mode, encrypt) {
        (EncryptionMode::Cbc | EncryptionMode::Legacy, true) => {
            cbc::Encryptor::<Aes256>::new(key, iv).encrypt_blocks(blocks_mut(buf))
        }
        (EncryptionMode::Cbc | EncryptionMode::Legacy, false) => {
            cbc::Decryptor::<Aes256>::new(key, iv).decrypt_blocks(blocks_mut(buf))
        }
        (EncryptionMode::Ecb, true) => ecb::Encryptor::<Aes256>::new(key).encrypt_blocks(blocks_mut(buf)),
        (EncryptionMode::Ecb, false) => ecb::Decryptor::<Aes256>::new(key).decrypt_blocks(blocks_mut(buf)),
        (EncryptionMode::Cfb, true) => {
            cfb_mode::Encryptor::<Aes256>::new(key, iv).encrypt_blocks(blocks_mut(buf))
        }
        (EncryptionMode::Cfb, false) => {
            cfb_mode::Decryptor::<Aes256>::new(key, iv).decrypt_blocks(blocks_mut(buf))
        }
        (EncryptionMode::Ofb, _) => ofb::Ofb::<Aes256>::new(key, iv).apply_keystream(buf),
        (EncryptionMode::Ctr, _) => ctr::Ctr128BE::<Aes256>::new(key, iv).apply_keystream(buf),
    }
}

/// Encrypts `plain` as `openssl enc` would: `Salted__` ‖ `salt` ‖ AES(PKCS#7(plain)).
pub fn encrypt(plain: &[u8], key: &EncryptionKey, mode: EncryptionMode, salt: [u8; 8]) -> Vec<u8> {
    let pad = BLOCK - plain.len() % BLOCK;
    let mut out = Vec::with_capacity(16 + plain.len() + pad);
    out.extend_from_slice(SALTED_MAGIC);
    out.extend_from_slice(&salt);
    out.extend_from_slice(plain);
    out.resize(out.len() + pad, pad as u8);
    let kiv = KeyIv::derive(key, mode, &salt);
    apply(mode, &kiv, &mut out[16..], true);
    out
}

/// Decrypts the output of [`encrypt`], checking the padding strictly.
///
/// Only call this after the HMAC (where configured) has passed: the padding check is what tells
/// a wrong key apart, and it must not be an oracle for unauthenticated input. fwknopd sends
/// nothing back, so there is no oracle anyway; the order still keeps junk cheap.
pub fn decrypt(
    data: &[u8],
    key: &EncryptionKey,
    mode: EncryptionMode,
) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    if data.len() < 16 + BLOCK || !(data.len() - 16).is_multiple_of(BLOCK) {
        return Err(DecryptError::Length);
    }
    if &data[..8] != SALTED_MAGIC {
        return Err(DecryptError::Header);
    }
    let salt: [u8; 8] = data[8..16].try_into().map_err(|_| DecryptError::Header)?;
    let kiv = KeyIv::derive(key, mode, &salt);
    let mut buf = Zeroizing::new(data[16..].to_vec());
    apply(mode, &kiv, &mut buf, false);
    let pad = *buf.last().ok_or(DecryptError::Length)? as usize;
    if pad == 0 || pad > BLOCK || buf[buf.len() - pad..].iter().any(|&b| b as usize != pad) {
        return Err(DecryptError::Padding);
    }
    let n = buf.len() - pad;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn kdf_matches_reference_vector() {
        // Reference section 1.7: salt 1ba097ad8a85c0fa, passphrase testkey123.
        let salt = [0x1b, 0xa0, 0x97, 0xad, 0x8a, 0x85, 0xc0, 0xfa];
        let key = EncryptionKey::new(b"testkey123".to_vec()).unwrap();
        let kiv = KeyIv::derive(&key, EncryptionMode::Cbc, &salt);
        assert!(hex(kiv.key()).starts_with("b95be22f"));
        assert!(hex(kiv.key()).ends_with("6aa4"));
        assert!(hex(kiv.iv()).starts_with("b9633d75"));
        assert!(hex(kiv.iv()).ends_with("b70a"));
    }

    #[test]
    fn every_mode_round_trips_every_length() {
        let key = EncryptionKey::new(b"k".to_vec()).unwrap();
        for mode in EncryptionMode::ALL {
            for len in 0..50 {
                let plain: Vec<u8> = (0..len as u8).collect();
                let ct = encrypt(&plain, &key, mode, [7; 8]);
                assert_eq!((ct.len() - 16) % 16, 0);
                assert_eq!(&decrypt(&ct, &key, mode).unwrap()[..], &plain[..], "{mode} {len}");
            }
        }
    }

    #[test]
    fn wrong_key_fails_padding_or_header() {
        let key = EncryptionKey::new(b"right".to_vec()).unwrap();
        let other = EncryptionKey::new(b"wrong".to_vec()).unwrap();
        let ct = encrypt(b"1234567890123456:hello", &key, EncryptionMode::Cbc, [1; 8]);
        // A wrong key yields garbage whose padding is almost never valid; the check is strict.
        let r = decrypt(&ct, &other, EncryptionMode::Cbc);
        assert!(r.is_err() || r.unwrap().as_slice() != b"1234567890123456:hello");
        assert_eq!(decrypt(&ct[..20], &key, EncryptionMode::Cbc), Err(DecryptError::Length));
        let mut bad = ct.clone();
        bad[0] = b'X';
        assert_eq!(decrypt(&bad, &key, EncryptionMode::Cbc), Err(DecryptError::Header));
    }

    #[test]
    fn legacy_pads_passphrase_with_zeros() {
        let short = EncryptionKey::new(b"short".to_vec()).unwrap();
        let padded = EncryptionKey::new(b"short00000000000".to_vec()).unwrap();
        let ct = encrypt(b"data", &short, EncryptionMode::Legacy, [3; 8]);
        assert_eq!(&decrypt(&ct, &padded, EncryptionMode::Cbc).unwrap()[..], b"data");
    }
}

//! The hash functions fwknop uses for the inner digest and for the HMAC.
//!
//! fwknop numbers digest and HMAC types the same way (`fko_digest_type_t`,
//! `fko_hmac_type_t`), so one enum serves both. The server learns the inner digest type only
//! from the length of its base64 text; SHA-256/SHA3-256 and SHA-512/SHA3-512 share a length
//! and SHA-2 is tried first, as fwknopd does.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, KeyInit, Mac, SimpleHmac};
use md5::Md5;
use serde::{Deserialize, Deserializer};
use sha1::Sha1;
use sha2::{Sha256, Sha384, Sha512};
use sha3::{Sha3_256, Sha3_512};
use subtle::ConstantTimeEq;

/// A hash algorithm as fwknop names and numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DigestType {
    /// MD5 (fwknop 1); kept for old clients.
    Md5,
    /// SHA-1 (fwknop 2).
    Sha1,
    /// SHA-256 (fwknop 3), the default for both digest and HMAC.
    #[default]
    Sha256,
    /// SHA-384 (fwknop 4).
    Sha384,
    /// SHA-512 (fwknop 5).
    Sha512,
    /// SHA3-256 (fwknop 6).
    Sha3_256,
    /// SHA3-512 (fwknop 7).
    Sha3_512,
}

/// A digest or HMAC value of at most 64 bytes, kept on the stack.
#[derive(Clone, Copy)]
pub struct DigestOutput {
    bytes: [u8; 64],
    len: u8,
}

impl DigestOutput {
    fn from_slice(s: &[u8]) -> Self {
        let mut bytes = [0u8; 64];
        bytes[..s.len()].copy_from_slice(s);
        Self { bytes, len: s.len() as u8 }
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The unpadded base64 text fwknop puts on the wire.
    pub fn to_b64(&self) -> String {
        crate::b64::encode(self.as_bytes())
    }
}

impl fmt::Debug for DigestOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DigestOutput({})", self.to_b64())
    }
}

impl DigestType {
    /// Every type, in fwknop's numbering order.
    pub const ALL: [DigestType; 7] = [
        DigestType::Md5,
        DigestType::Sha1,
        DigestType::Sha256,
        DigestType::Sha384,
        DigestType::Sha512,
        DigestType::Sha3_256,
        DigestType::Sha3_512,
    ];

    /// fwknop's name (`--digest-type`, `HMAC_DIGEST_TYPE`), lower case.
    pub const fn name(self) -> &'static str {
        match self {
            DigestType::Md5 => "md5",
            DigestType::Sha1 => "sha1",
            DigestType::Sha256 => "sha256",
            DigestType::Sha384 => "sha384",
            DigestType::Sha512 => "sha512",
            DigestType::Sha3_256 => "sha3_256",
            DigestType::Sha3_512 => "sha3_512",
        }
    }

    /// fwknop's number for this type (1..=7).
    pub const fn fwknop_id(self) -> u8 {
        match self {
            DigestType::Md5 => 1,
            DigestType::Sha1 => 2,
            DigestType::Sha256 => 3,
            DigestType::Sha384 => 4,
            DigestType::Sha512 => 5,
            DigestType::Sha3_256 => 6,
            DigestType::Sha3_512 => 7,
        }
    }

    /// Size of the raw output in bytes.
    pub const fn output_len(self) -> usize {
        match self {
            DigestType::Md5 => 16,
            DigestType::Sha1 => 20,
            DigestType::Sha256 | DigestType::Sha3_256 => 32,
            DigestType::Sha384 => 48,
            DigestType::Sha512 | DigestType::Sha3_512 => 64,
        }
    }

    /// Length of the unpadded base64 text of one output (22, 27, 43, 64 or 86).
    pub const fn b64_len(self) -> usize {
        crate::b64::encoded_len(self.output_len())
    }

    /// Hash block size, which is also the size of a generated HMAC key (fwknop `--key-gen`).
    pub const fn block_len(self) -> usize {
        match self {
            DigestType::Md5 | DigestType::Sha1 | DigestType::Sha256 => 64,
            DigestType::Sha384 | DigestType::Sha512 => 128,
            DigestType::Sha3_256 => 136,
            DigestType::Sha3_512 => 72,
        }
    }

    /// The candidates for an inner digest whose base64 text has `len` characters, in the
    /// order fwknopd tries them.
    pub fn candidates_for_b64_len(len: usize) -> &'static [DigestType] {
        match len {
            22 => &[DigestType::Md5],
            27 => &[DigestType::Sha1],
            43 => &[DigestType::Sha256, DigestType::Sha3_256],
            64 => &[DigestType::Sha384],
            86 => &[DigestType::Sha512, DigestType::Sha3_512],
            _ => &[],
        }
    }

    /// Hashes `data`.
    pub fn digest(self, data: &[u8]) -> DigestOutput {
        fn run<D: sha2::Digest>(data: &[u8]) -> DigestOutput {
            DigestOutput::from_slice(&D::digest(data))
        }
        match self {
            DigestType::Md5 => run::<Md5>(data),
            DigestType::Sha1 => run::<Sha1>(data),
            DigestType::Sha256 => run::<Sha256>(data),
            DigestType::Sha384 => run::<Sha384>(data),
            DigestType::Sha512 => run::<Sha512>(data),
            DigestType::Sha3_256 => run::<Sha3_256>(data),
            DigestType::Sha3_512 => run::<Sha3_512>(data),
        }
    }
}

impl fmt::Display for DigestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name given was not one of fwknop's digest names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown digest type {0:?} (expected md5, sha1, sha256, sha384, sha512, sha3_256 or sha3_512)")]
pub struct UnknownDigestType(pub String);

impl FromStr for DigestType {
    type Err = UnknownDigestType;

    /// Accepts fwknop's names in any case, with `_` or `-` in the SHA-3 names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase().replace('-', "_");
        DigestType::ALL.into_iter().find(|t| t.name() == lower).ok_or_else(|| UnknownDigestType(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for DigestType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for DigestType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// An HMAC keyed once and cloned per packet, so the key schedule (two compression rounds)
/// is not paid again for every datagram.
#[derive(Clone)]
pub struct HmacState {
    inner: HmacInner,
}

#[derive(Clone)]
enum HmacInner {
    Md5(Hmac<Md5>),
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
    Sha384(Hmac<Sha384>),
    Sha512(Hmac<Sha512>),
    Sha3_256(SimpleHmac<Sha3_256>),
    Sha3_512(SimpleHmac<Sha3_512>),
}

macro_rules! with_mac {
    ($inner:expr, $m:ident => $body:expr) => {
        match $inner {
            HmacInner::Md5(mut $m) => $body,
            HmacInner::Sha1(mut $m) => $body,
            HmacInner::Sha256(mut $m) => $body,
            HmacInner::Sha384(mut $m) => $body,
            HmacInner::Sha512(mut $m) => $body,
            HmacInner::Sha3_256(mut $m) => $body,
            HmacInner::Sha3_512(mut $m) => $body,
        }
    };
}

impl HmacState {
    /// Keys an HMAC of type `alg` with `key` (any length: long keys are hashed first).
    pub fn new(alg: DigestType, key: &[u8]) -> Self {
        fn k<M: KeyInit>(key: &[u8]) -> M {
            // HMAC accepts keys of every length, so this cannot fail.
            <M as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
        }
        let inner = match alg {
            DigestType::Md5 => HmacInner::Md5(k(key)),
            DigestType::Sha1 => HmacInner::Sha1(k(key)),
            DigestType::Sha256 => HmacInner::Sha256(k(key)),
            DigestType::Sha384 => HmacInner::Sha384(k(key)),
            DigestType::Sha512 => HmacInner::Sha512(k(key)),
            DigestType::Sha3_256 => HmacInner::Sha3_256(k(key)),
            DigestType::Sha3_512 => HmacInner::Sha3_512(k(key)),
        };
        Self { inner }
    }

    /// The algorithm this state was keyed for.
    pub fn digest_type(&self) -> DigestType {
        match self.inner {
            HmacInner::Md5(_) => DigestType::Md5,
            HmacInner::Sha1(_) => DigestType::Sha1,
            HmacInner::Sha256(_) => DigestType::Sha256,
            HmacInner::Sha384(_) => DigestType::Sha384,
            HmacInner::Sha512(_) => DigestType::Sha512,
            HmacInner::Sha3_256(_) => DigestType::Sha3_256,
            HmacInner::Sha3_512(_) => DigestType::Sha3_512,
        }
    }

    /// The HMAC of the concatenation of `parts`.
    pub fn compute(&self, parts: &[&[u8]]) -> DigestOutput {
        with_mac!(self.inner.clone(), m => {
            for p in parts {
                m.update(p);
            }
            DigestOutput::from_slice(&m.finalize().into_bytes())
        })
    }

    /// Checks `tag` against the HMAC of `parts` in constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let computed = self.compute(parts);
        computed.as_bytes().ct_eq(tag).into()
    }
}

impl fmt::Debug for HmacState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HmacState({}, <keyed>)", self.digest_type())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64_lengths_match_fwknop() {
        let lens: Vec<usize> = DigestType::ALL.iter().map(|t| t.b64_len()).collect();
        assert_eq!(lens, vec![22, 27, 43, 64, 86, 43, 86]);
    }

    #[test]
    fn names_round_trip() {
        for t in DigestType::ALL {
            assert_eq!(t.name().parse::<DigestType>().unwrap(), t);
            assert_eq!(t.name().to_uppercase().parse::<DigestType>().unwrap(), t);
        }
        assert_eq!("SHA3-256".parse::<DigestType>().unwrap(), DigestType::Sha3_256);
        assert!("sha999".parse::<DigestType>().is_err());
    }

    #[test]
    fn known_digests() {
        // Inner digest of the known-answer vector's encoded data (reference section 1.7).
        let enc = b"1991854072942557:cm9vdA:1795796412:3.0.0:1:MS4yLjMuNCx0Y3AvMjI";
        assert_eq!(DigestType::Sha256.digest(enc).to_b64(), "r5PJuKhyBHinP56vBKzirLHVeXeK4nmMwjl9yHcIXPM");
        // RFC 4231 test case 2.
        let mac = HmacState::new(DigestType::Sha256, b"Jefe");
        let out = mac.compute(&[b"what do ya want ", b"for nothing?"]);
        let hex: String = out.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(mac.verify(&[b"what do ya want for nothing?"], out.as_bytes()));
        assert!(!mac.verify(&[b"what do ya want for nothing!"], out.as_bytes()));
    }
}

//! Key material, held so that it is wiped when dropped and never shown by `Debug`.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::Error;

/// Longest Rijndael passphrase fwknop accepts (`FKO_ERROR_INVALID_KEY_LEN` beyond).
pub const MAX_ENCRYPTION_KEY_LEN: usize = 32;
/// Longest HMAC key libfko accepts (a SHA3-256 block, the largest `--key-gen` makes).
pub const MAX_HMAC_KEY_LEN: usize = 136;

/// The Rijndael passphrase: 0..=32 bytes, used as is by the key derivation.
#[derive(Clone)]
pub struct EncryptionKey(Zeroizing<Vec<u8>>);

/// The HMAC key: 1..=136 bytes.
#[derive(Clone)]
pub struct HmacKey(Zeroizing<Vec<u8>>);

impl EncryptionKey {
    /// Takes raw key bytes, refusing more than fwknop's 32.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, Error> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.len() > MAX_ENCRYPTION_KEY_LEN {
            return Err(Error::KeyTooLong { len: bytes.len(), max: MAX_ENCRYPTION_KEY_LEN });
        }
        Ok(Self(bytes))
    }

    /// Decodes a `KEY_BASE64` value (padded or not).
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        let bytes = Zeroizing::new(crate::b64::decode(text.trim()).ok_or(Error::KeyNotBase64)?);
        Self::new(bytes.to_vec())
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl HmacKey {
    /// Takes raw key bytes; empty keys and keys over 136 bytes are refused.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, Error> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.is_empty() {
            return Err(Error::HmacKeyEmpty);
        }
        if bytes.len() > MAX_HMAC_KEY_LEN {
            return Err(Error::HmacKeyTooLong { len: bytes.len(), max: MAX_HMAC_KEY_LEN });
        }
        Ok(Self(bytes))
    }

    /// Decodes an `HMAC_KEY_BASE64` value (padded or not).
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        let bytes = Zeroizing::new(crate::b64::decode(text.trim()).ok_or(Error::KeyNotBase64)?);
        Self::new(bytes.to_vec())
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Constant-time equality of an encryption key and an HMAC key, for the rule that the two must
/// differ.
pub fn keys_equal(enc: &EncryptionKey, hmac: &HmacKey) -> bool {
    enc.as_bytes().ct_eq(hmac.as_bytes()).into()
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_limits() {
        assert!(EncryptionKey::new(vec![b'a'; 32]).is_ok());
        assert!(EncryptionKey::new(Vec::new()).is_ok());
        assert!(matches!(EncryptionKey::new(vec![b'a'; 33]), Err(Error::KeyTooLong { .. })));
        assert!(matches!(HmacKey::new(Vec::new()), Err(Error::HmacKeyEmpty)));
        assert!(matches!(HmacKey::new(vec![1; 137]), Err(Error::HmacKeyTooLong { .. })));
    }

    #[test]
    fn debug_never_shows_key() {
        let k = EncryptionKey::new(b"supersecret".to_vec()).unwrap();
        assert!(!format!("{k:?}").contains("supersecret"));
        let h = HmacKey::new(b"supersecret".to_vec()).unwrap();
        assert!(!format!("{h:?}").contains("supersecret"));
    }

    #[test]
    fn base64_keys() {
        let k = EncryptionKey::from_base64("dGVzdGtleTEyMw==").unwrap();
        assert_eq!(k.as_bytes(), b"testkey123");
        assert!(matches!(EncryptionKey::from_base64("not base64!"), Err(Error::KeyNotBase64)));
    }
}

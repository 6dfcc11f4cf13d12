//! Valid SPA packets, built in-process with the engine exactly as the `spa` client builds
//! them (AES-CBC, SHA-256 inner digest, HMAC-SHA256): the same bytes open `spad` and
//! `fwknopd`, so both daemons are measured with one client.
//!
//! Each run makes fresh random keys; they go only into the daemons' configuration files
//! (mode 0600) and are never printed.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use spa_engine::packet::{SealOptions, seal};
use spa_engine::{DigestType, EncryptionKey, EncryptionMode, Entropy, HmacKey, MessageType, SpaMessage};

use crate::{Error, Result};

/// Encryption key length: 32 bytes, the most both daemons take (AES-256), as `fwknop
/// --key-gen` makes them (spad refuses keys under 16 bytes).
const KEY_LEN: usize = 32;
/// HMAC key length: 64 bytes, again as `fwknop --key-gen` makes them.
const HMAC_LEN: usize = 64;

/// Operating-system randomness for the engine.
struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        // The engine's trait cannot fail; without OS randomness nothing sensible can go on.
        if getrandom::fill(buf).is_err() {
            std::process::abort();
        }
    }
}

/// Base64 with `=` padding, the way `fwknop --key-gen` prints keys (fwknopd reads them so;
/// spad takes either form).
fn padded_base64(bytes: &[u8]) -> String {
    let mut s = spa_engine::b64::encode(bytes);
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

/// A client with its own keys.
pub struct Knocker {
    key: EncryptionKey,
    hmac: HmacKey,
    username: String,
}

impl std::fmt::Debug for Knocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Knocker").field("username", &self.username).finish_non_exhaustive()
    }
}

impl Knocker {
    /// A client with fresh random keys.
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; KEY_LEN];
        let mut h = [0u8; HMAC_LEN];
        getrandom::fill(&mut k).map_err(|_| Error::Random)?;
        getrandom::fill(&mut h).map_err(|_| Error::Random)?;
        Ok(Self {
            key: EncryptionKey::new(k.to_vec()).map_err(Error::Key)?,
            hmac: HmacKey::new(h.to_vec()).map_err(Error::Key)?,
            username: "bench".to_owned(),
        })
    }

    /// The encryption key as `KEY_BASE64` / `key_base64` wants it.
    pub fn key_base64(&self) -> String {
        padded_base64(self.key.as_bytes())
    }

    /// The HMAC key as `HMAC_KEY_BASE64` / `hmac_key_base64` wants it.
    pub fn hmac_base64(&self) -> String {
        padded_base64(self.hmac.as_bytes())
    }

    /// An access request for `allow` (the address the daemon opens, like `spa -a`) to
    /// `proto_port` (for example `tcp/22`), stamped now.
    pub fn packet(&self, allow: IpAddr, proto_port: &str) -> Result<String> {
        let mut rng = OsEntropy;
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let msg = SpaMessage {
            random: spa_engine::random_value(&mut rng),
            username: self.username.clone(),
            timestamp,
            version: spa_engine::message::FKO_VERSION.to_owned(),
            message_type: MessageType::Access,
            message: format!("{allow},{proto_port}"),
            nat_access: None,
            server_auth: None,
            client_timeout: None,
        };
        let opts = SealOptions {
            key: &self.key,
            mode: EncryptionMode::Cbc,
            digest: DigestType::Sha256,
            hmac: Some((&self.hmac, DigestType::Sha256)),
        };
        seal(&msg, &opts, &mut rng).map_err(Error::Seal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_engine::digest::HmacState;
    use spa_engine::packet::{OpenKeys, open};

    #[test]
    fn packets_open_with_the_keys_the_config_gets() {
        let k = Knocker::generate().unwrap();
        let wire = k.packet("10.210.0.7".parse().unwrap(), "tcp/22").unwrap();
        assert!((150..=250).contains(&wire.len()), "{}", wire.len());
        assert!(k.key_base64().ends_with('=') && k.key_base64().len() == 44, "padded like fwknop --key-gen");
        let key = EncryptionKey::from_base64(&k.key_base64()).unwrap();
        assert_eq!(key.as_bytes().len(), 32);
        assert_eq!(HmacKey::from_base64(&k.hmac_base64()).unwrap().as_bytes().len(), 64);
        let mac =
            HmacState::new(DigestType::Sha256, HmacKey::from_base64(&k.hmac_base64()).unwrap().as_bytes());
        let d = open(wire.as_bytes(), &OpenKeys { key: &key, mode: EncryptionMode::Cbc, hmac: Some(&mac) })
            .unwrap();
        assert_eq!(d.message.message, "10.210.0.7,tcp/22");
        assert_ne!(wire, k.packet("10.210.0.7".parse().unwrap(), "tcp/22").unwrap(), "every packet is new");
    }
}

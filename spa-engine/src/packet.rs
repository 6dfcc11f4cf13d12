//! The wire packet: encrypt-then-MAC over base64 text, with the constant prefix stripped.
//!
//! Client side ([`seal`]): plaintext with inner digest → AES → base64 (starts `U2FsdGVkX1`) →
//! HMAC over that text → append base64 HMAC → drop the first 10 characters. Server side
//! ([`open`]): HMAC first, over the text with the prefix put back, compared in constant time;
//! only then base64-decode and decrypt.

use zeroize::Zeroizing;

use crate::cipher::{self, EncryptionMode};
use crate::digest::{DigestType, HmacState};
use crate::keys::{EncryptionKey, HmacKey};
use crate::message::{self, Decoded, SpaMessage};
use crate::verdict::RejectReason;
use crate::{Entropy, Error, b64};

/// Base64 of `Salted__`: the first 10 characters of every Rijndael ciphertext text.
pub const RIJNDAEL_PREFIX: &str = "U2FsdGVkX1";
/// fwknop's (not always constant) GPG prefix.
pub const GPG_PREFIX: &str = "hQ";
/// fwknop's `MIN_GNUPG_MSG_SIZE`: packets this long or longer are GPG, shorter ones Rijndael.
pub const MIN_GPG_PACKET_LEN: usize = 400;
/// fwknopd ignores shorter datagrams.
pub const MIN_PACKET_LEN: usize = 140;
/// fwknopd ignores longer datagrams.
pub const MAX_PACKET_LEN: usize = 1500;
/// fwknopd treats 400 characters and more as GPG, so a Rijndael packet must stay below.
pub const MAX_RIJNDAEL_PACKET_LEN: usize = 399;

/// Client-side choices for one packet.
#[derive(Clone, Copy, Debug)]
pub struct SealOptions<'a> {
    /// Rijndael key.
    pub key: &'a EncryptionKey,
    /// Rijndael mode.
    pub mode: EncryptionMode,
    /// Inner digest type.
    pub digest: DigestType,
    /// HMAC key and type; `None` sends no HMAC (fwknop's default without `--use-hmac`).
    pub hmac: Option<(&'a HmacKey, DigestType)>,
}

/// Server-side keys for opening a packet.
#[derive(Clone, Copy, Debug)]
pub struct OpenKeys<'a> {
    /// Rijndael key.
    pub key: &'a EncryptionKey,
    /// Rijndael mode.
    pub mode: EncryptionMode,
    /// Keyed HMAC; when set, packets must carry a valid HMAC of this type.
    pub hmac: Option<&'a HmacState>,
}

/// Builds the wire text of one packet (ASCII, no newline).
///
/// Refuses packets that fwknopd would take for GPG (400 characters or more) rather than send
/// something no server can read.
pub fn seal(msg: &SpaMessage, opts: &SealOptions<'_>, rng: &mut dyn Entropy) -> Result<String, Error> {
    let plain = msg.encode_with_digest(opts.digest)?;
    let mut salt = [0u8; 8];
    rng.fill(&mut salt);
    let ct = Zeroizing::new(cipher::encrypt(plain.as_bytes(), opts.key, opts.mode, salt));
    let mut text = b64::encode(&ct[..]);
    if let Some((key, alg)) = opts.hmac {
        let tag = HmacState::new(alg, key.as_bytes()).compute(&[text.as_bytes()]);
        b64::encode_into(tag.as_bytes(), &mut text);
    }
    let wire = text.split_off(RIJNDAEL_PREFIX.len());
    if wire.len() > MAX_RIJNDAEL_PACKET_LEN {
        return Err(Error::PacketTooLong { len: wire.len(), max: MAX_RIJNDAEL_PACKET_LEN });
    }
    Ok(wire)
}

/// Authenticates, decrypts and decodes one packet with one set of keys.
pub fn open(payload: &[u8], keys: &OpenKeys<'_>) -> Result<Decoded, RejectReason> {
    let ct_text = match keys.hmac {
        Some(mac) => {
            let tag_len = mac.digest_type().b64_len();
            if payload.len() <= tag_len {
                return Err(RejectReason::HmacMismatch);
            }
            let (ct_text, tag_text) = payload.split_at(payload.len() - tag_len);
            let tag = b64::decode(tag_text).ok_or(RejectReason::HmacMismatch)?;
            if !mac.verify(&[RIJNDAEL_PREFIX.as_bytes(), ct_text], &tag) {
                // fwknop's GPG packets are MACed with `hQ` in front. Telling the admin that is
                // worth a second HMAC, but only for packets long enough to be GPG.
                if payload.len() >= 400 && mac.verify(&[GPG_PREFIX.as_bytes(), ct_text], &tag) {
                    return Err(RejectReason::GpgNotSupported);
                }
                return Err(RejectReason::HmacMismatch);
            }
            ct_text
        }
        None => payload,
    };
    let mut full = Vec::with_capacity(RIJNDAEL_PREFIX.len() + ct_text.len());
    full.extend_from_slice(RIJNDAEL_PREFIX.as_bytes());
    full.extend_from_slice(ct_text);
    let raw = b64::decode(&full).ok_or(RejectReason::DecryptFailed)?;
    let plain = cipher::decrypt(&raw, keys.key, keys.mode).map_err(|_| RejectReason::DecryptFailed)?;
    // fwknop's own success test: 16 digits and a colon.
    if plain.len() < 17 || !plain[..16].iter().all(u8::is_ascii_digit) || plain[16] != b':' {
        return Err(RejectReason::DecryptFailed);
    }
    message::decode(&plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{FKO_VERSION, MessageType};

    struct Fixed(u8);
    impl Entropy for Fixed {
        fn fill(&mut self, buf: &mut [u8]) {
            buf.fill(self.0);
        }
    }

    fn msg() -> SpaMessage {
        SpaMessage {
            random: "1234567890123456".into(),
            username: "alice".into(),
            timestamp: 1_800_000_000,
            version: FKO_VERSION.into(),
            message_type: MessageType::Access,
            message: "10.0.0.1,tcp/22".into(),
            nat_access: None,
            server_auth: None,
            client_timeout: None,
        }
    }

    /// The known-answer vector of reference section 1.7, made by the real fwknop 2.6.10.
    const KAT: &str = "8boJetioXA+moicEK676HWkKlDDPofPiYu1U4E94ku8C5x7z0zzfg4ROhmQdhh349CaEd7N6F3XFlpzbWQ570w6oE8ZjCF2w8V1CA35SevgXzrBnTu67rW1aTaQ234PBJiwnK/q6lXmykbfrhCMsqhZuSmYiBQ8wA13HEkF7s0hCii+6z5bZ94LFa+3mg9BswypU+v8qzXTo";

    #[test]
    fn opens_the_reference_vector() {
        let key = EncryptionKey::new(b"testkey123".to_vec()).unwrap();
        let mac = HmacState::new(DigestType::Sha256, b"hmackey456");
        let d = open(KAT.as_bytes(), &OpenKeys { key: &key, mode: EncryptionMode::Cbc, hmac: Some(&mac) })
            .unwrap();
        assert_eq!(d.message.random, "1991854072942557");
        assert_eq!(d.message.username, "root");
        assert_eq!(d.message.timestamp, 1795796412);
        assert_eq!(d.message.message, "1.2.3.4,tcp/22");
        assert_eq!(d.digest_type, DigestType::Sha256);
    }

    #[test]
    fn reference_vector_fails_with_wrong_keys() {
        let key = EncryptionKey::new(b"testkey123".to_vec()).unwrap();
        let wrong_mac = HmacState::new(DigestType::Sha256, b"hmackey457");
        let r =
            open(KAT.as_bytes(), &OpenKeys { key: &key, mode: EncryptionMode::Cbc, hmac: Some(&wrong_mac) });
        assert_eq!(r, Err(RejectReason::HmacMismatch));
        // Without HMAC checking the trailing tag makes the ciphertext undecodable.
        let r = open(KAT.as_bytes(), &OpenKeys { key: &key, mode: EncryptionMode::Cbc, hmac: None });
        assert_eq!(r, Err(RejectReason::DecryptFailed));
        let mac = HmacState::new(DigestType::Sha256, b"hmackey456");
        let wrong = EncryptionKey::new(b"testkey124".to_vec()).unwrap();
        let r = open(KAT.as_bytes(), &OpenKeys { key: &wrong, mode: EncryptionMode::Cbc, hmac: Some(&mac) });
        assert_eq!(r, Err(RejectReason::DecryptFailed));
    }

    #[test]
    fn seal_then_open() {
        let key = EncryptionKey::new(b"secret".to_vec()).unwrap();
        let hkey = HmacKey::new(b"other secret".to_vec()).unwrap();
        let opts = SealOptions {
            key: &key,
            mode: EncryptionMode::Cbc,
            digest: DigestType::Sha256,
            hmac: Some((&hkey, DigestType::Sha256)),
        };
        let wire = seal(&msg(), &opts, &mut Fixed(9)).unwrap();
        assert!(!wire.starts_with(RIJNDAEL_PREFIX));
        assert!(b64::is_wire_charset(wire.as_bytes()));
        let mac = HmacState::new(DigestType::Sha256, hkey.as_bytes());
        let d = open(wire.as_bytes(), &OpenKeys { key: &key, mode: EncryptionMode::Cbc, hmac: Some(&mac) })
            .unwrap();
        assert_eq!(d.message, msg());
    }

    #[test]
    fn oversized_packets_are_refused_not_sent() {
        let key = EncryptionKey::new(b"secret".to_vec()).unwrap();
        let hkey = HmacKey::new(b"other secret".to_vec()).unwrap();
        let mut m = msg();
        m.message_type = MessageType::Command;
        m.message = format!("10.0.0.1,{}", "x".repeat(180));
        let opts = SealOptions {
            key: &key,
            mode: EncryptionMode::Cbc,
            digest: DigestType::Sha512,
            hmac: Some((&hkey, DigestType::Sha512)),
        };
        assert!(matches!(seal(&m, &opts, &mut Fixed(1)), Err(Error::PacketTooLong { .. })));
    }
}

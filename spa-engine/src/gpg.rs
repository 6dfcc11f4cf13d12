//! fwknop's asymmetric mode (GPG): the SPA plaintext sealed as an OpenPGP message to the
//! server's key and signed by the client's key (cargo feature `gpg`).
//!
//! The wire format is fwknop's (`lib/fko_encryption.c`, `lib/gpgme_funcs.c`): the plaintext
//! `encoded:digest` (the same text a Rijndael packet carries) is encrypted and signed in one
//! OpenPGP message, binary (no armor); the message goes to base64 without `=`; the optional
//! HMAC is computed over that text and appended; then the leading `hQ` is dropped. A server
//! takes packets of 400 characters or more as GPG (fwknop's `MIN_GNUPG_MSG_SIZE`), puts `hQ`
//! back, checks the HMAC, decrypts, checks the signer against the stanza's lists.
//!
//! `hQ` is the base64 of an old-format public-key-encrypted-session-key packet header (`0x85`,
//! two length bytes) of an RSA key up to 8192 bits. Other keys or implementations make other
//! first bytes (fwknop issue #247: an ECDH key gives `0x84`, base64 `hF…`), which fwknop strips
//! nevertheless only when it is `hQ` and then cannot read back. Here the sender strips only `hQ`
//! and sends anything else whole; the receiver sees from the first decoded byte whether the text
//! was stripped (a stripped packet of at most 1500 characters never starts with a session-key
//! packet header), so packets made for non-RSA keys work between this project's client and
//! server. fwknop's own tools still need RSA keys, and `spa` says so when it sends such a packet.
//!
//! The OpenPGP implementation is rpgp (the `pgp` crate): pure Rust, maintained, no GnuPG
//! process, no keyring and no C library, so the daemon and client build with cargo alone on
//! every target. sequoia-openpgp was the alternative; its default crypto backend is nettle, a C
//! library. GnuPG's keybox cannot be read without GnuPG, so keys come from exported files
//! (`gpg --export-secret-keys --armor ID`, `gpg --export --armor ID`); the caller reads them
//! (this crate does no I/O) and hands over the text.
//!
//! Side channels: rpgp decrypts RSA with the `rsa` crate, whose PKCS#1 v1.5 decryption is not
//! constant-time (RUSTSEC-2023-0071, "Marvin"): an attacker who can send many chosen session-key
//! packets and time the answers might learn to decrypt. With an HMAC key (spad requires one
//! unless `allow_no_hmac`) no packet reaches the RSA code without the HMAC key, so give GPG
//! stanzas an HMAC key.
//!
//! Cost: a GPG packet costs an RSA private-key operation, so the server takes this path only
//! for stanzas that have GPG keys and only for packets of 400 characters or more, and checks a
//! stanza's HMAC (when it has one, as fwknop does) first. A passphrase-protected secret key is
//! unlocked once, at load, so packets never pay GnuPG's deliberately slow key derivation. rpgp
//! runs under `catch_unwind` on the packet path: an attacker's bytes may reach it (stanzas
//! without HMAC) and a bug in it must cost one packet, never the daemon.

use std::fmt;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};

use pgp::composed::{
    Deserializable, Message, MessageBuilder, SignedPublicKey, SignedPublicSubKey, SignedSecretKey,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::Signature;
use pgp::types::{Fingerprint, KeyDetails, Password};
use zeroize::Zeroizing;

use crate::digest::{DigestType, HmacState};
use crate::keys::HmacKey;
use crate::message::{self, Decoded, SpaMessage};
use crate::packet::{GPG_PREFIX, MAX_PACKET_LEN};
use crate::verdict::{Field, RejectReason};
use crate::{Entropy, Error, b64};

pub use crate::packet::MIN_GPG_PACKET_LEN;

/// The most plaintext a packet may carry: fwknop's encoded limit. More (a compressed message
/// that expands) is refused before it is read further.
const MAX_PLAINTEXT: usize = 1500;

/// An exported key file is text of a few kilobytes; anything this large is not one.
pub const MAX_KEY_FILE_LEN: usize = 1 << 20;

fn key_error(what: &'static str) -> impl FnOnce(pgp::errors::Error) -> Error {
    move |e| Error::GpgKey { what, detail: e.to_string() }
}

/// Upper-case hex of a key id or fingerprint, as GnuPG prints them.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Whether `id` (normalized hex, see [`normalize_id`]) names a key with this primary
/// fingerprint and these subkey fingerprints: a suffix of one of them, as GnuPG matches short
/// and long key ids.
fn names(id: &str, primary: Fingerprint, subkeys: impl Iterator<Item = Fingerprint>) -> bool {
    std::iter::once(primary).chain(subkeys).any(|f| hex(f.as_bytes()).ends_with(id))
}

/// A key id or fingerprint as written in a configuration: hex, spaces allowed, `0x` allowed.
/// Returns the upper-case hex, or `None` when it is not hex of a usable length (8, 16 or 40
/// digits; 64 for v6 keys).
pub fn normalize_id(text: &str) -> Option<String> {
    let t = text.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    let hex: String = t.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    (matches!(hex.len(), 8 | 16 | 40 | 64) && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

/// The server's decryption key: an exported OpenPGP secret key, unlocked once at load.
#[derive(Clone)]
pub struct DecryptKey {
    key: SignedSecretKey,
}

impl fmt::Debug for DecryptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DecryptKey({})", self.fingerprint())
    }
}

/// Removes a secret key's passphrase protection in memory (the file is untouched).
fn unlock(key: &mut SignedSecretKey, password: Option<&str>) -> Result<(), Error> {
    let pw = password.map_or_else(Password::empty, Password::from);
    let protected = |p: &pgp::types::SecretParams| matches!(p, pgp::types::SecretParams::Encrypted(_));
    let mut any = protected(key.primary_key.secret_params());
    if any {
        key.primary_key.remove_password(&pw).map_err(|_| Error::GpgPassphrase)?;
    }
    for sub in &mut key.secret_subkeys {
        if protected(sub.key.secret_params()) {
            any = true;
            sub.key.remove_password(&pw).map_err(|_| Error::GpgPassphrase)?;
        }
    }
    if any && password.is_none() {
        return Err(Error::GpgPassphrase);
    }
    Ok(())
}

/// Parses one armored (or binary) secret key and checks its self-signatures.
fn parse_secret(text: &[u8], what: &'static str) -> Result<SignedSecretKey, Error> {
    let (key, _) = SignedSecretKey::from_reader_single(text).map_err(key_error(what))?;
    key.verify_bindings().map_err(key_error(what))?;
    Ok(key)
}

impl DecryptKey {
    /// Reads `gpg --export-secret-keys [--armor] ID` output; `password` unlocks a protected key
    /// (fwknop's `GPG_DECRYPT_PW`), `None` requires an unprotected one (`GPG_ALLOW_NO_PW`).
    pub fn from_export(text: &[u8], password: Option<&str>) -> Result<Self, Error> {
        let mut key = parse_secret(text, "decryption key")?;
        unlock(&mut key, password)?;
        let usable = key.secret_subkeys.iter().any(|s| s.key.algorithm().can_encrypt())
            || key.primary_key.algorithm().can_encrypt();
        if !usable {
            return Err(Error::GpgKey { what: "decryption key", detail: "has no encryption key".into() });
        }
        Ok(Self { key })
    }

    /// The primary key's fingerprint (upper-case hex).
    pub fn fingerprint(&self) -> String {
        hex(self.key.primary_key.fingerprint().as_bytes())
    }

    /// Whether `id` (normalized hex, see [`normalize_id`]) names this key or one of its
    /// subkeys (see [`names`]).
    pub fn has_id(&self, id: &str) -> bool {
        names(
            id,
            self.key.primary_key.fingerprint(),
            self.key.secret_subkeys.iter().map(|s| s.key.fingerprint()),
        )
    }
}

/// The public keys of the signers a stanza knows: `gpg --export [--armor] ID...` output (one
/// or more keys).
#[derive(Clone)]
pub struct SignerKeys {
    keys: Vec<SignedPublicKey>,
}

impl fmt::Debug for SignerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| hex(k.primary_key.fingerprint().as_bytes()))).finish()
    }
}

impl SignerKeys {
    /// Reads one or more exported public keys (armored blocks may follow each other).
    pub fn from_export(text: &[u8]) -> Result<Self, Error> {
        let mut keys = Vec::new();
        let armored = text.trim_ascii_start().starts_with(b"-----");
        if armored {
            // Concatenated `gpg --export --armor` outputs are several armor blocks.
            let text = std::str::from_utf8(text).map_err(|_| Error::GpgKey {
                what: "signer keys",
                detail: "armored text is not UTF-8".into(),
            })?;
            for block in text.split_inclusive("-----END PGP PUBLIC KEY BLOCK-----") {
                if block.trim().is_empty() {
                    continue;
                }
                let (iter, _) =
                    SignedPublicKey::from_armor_many(block.as_bytes()).map_err(key_error("signer keys"))?;
                for k in iter {
                    keys.push(k.map_err(key_error("signer keys"))?);
                }
            }
        } else {
            for k in SignedPublicKey::from_bytes_many(text).map_err(key_error("signer keys"))? {
                keys.push(k.map_err(key_error("signer keys"))?);
            }
        }
        if keys.is_empty() {
            return Err(Error::GpgKey { what: "signer keys", detail: "no public key found".into() });
        }
        for k in &keys {
            k.verify_bindings().map_err(key_error("signer keys"))?;
        }
        Ok(Self { keys })
    }

    /// The primary fingerprints of the keys, in file order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|k| hex(k.primary_key.fingerprint().as_bytes())).collect()
    }

    /// The key (primary or subkey) a signature names as its issuer, with its primary's
    /// fingerprint.
    fn candidates<'a>(&'a self, sig: &Signature) -> Vec<(Verifying<'a>, String)> {
        let ids: Vec<Vec<u8>> = sig.issuer_key_id().iter().map(|k| k.as_ref().to_vec()).collect();
        let fprs: Vec<Vec<u8>> = sig.issuer_fingerprint().iter().map(|f| f.as_bytes().to_vec()).collect();
        let named = |fpr: &[u8], id: &[u8]| fprs.iter().any(|f| f == fpr) || ids.iter().any(|i| i == id);
        let mut out = Vec::new();
        for k in &self.keys {
            let primary = hex(k.primary_key.fingerprint().as_bytes());
            if named(k.primary_key.fingerprint().as_bytes(), k.primary_key.legacy_key_id().as_ref()) {
                out.push((Verifying::Primary(k), primary.clone()));
            }
            for s in &k.public_subkeys {
                if named(s.key.fingerprint().as_bytes(), s.key.legacy_key_id().as_ref()) {
                    out.push((Verifying::Sub(s), primary.clone()));
                }
            }
        }
        out
    }
}

/// A key a signature may be checked with.
enum Verifying<'a> {
    Primary(&'a SignedPublicKey),
    Sub(&'a SignedPublicSubKey),
}

impl Verifying<'_> {
    fn fingerprint(&self) -> String {
        match self {
            Verifying::Primary(k) => hex(k.primary_key.fingerprint().as_bytes()),
            Verifying::Sub(s) => hex(s.key.fingerprint().as_bytes()),
        }
    }
}

/// A stanza's GPG settings, compiled: fwknop's `GPG_*` access.conf variables.
#[derive(Clone, Debug)]
pub struct GpgAuth {
    /// The server's key (`gpg_decrypt_key_file`, `gpg_decrypt_pw`).
    pub(crate) decrypt: DecryptKey,
    /// Whether packets must be signed by an allowed signer (fwknop's `GPG_REQUIRE_SIG`,
    /// default on unless `GPG_DISABLE_SIG`).
    pub(crate) require_sig: bool,
    /// The signers' public keys (`gpg_remote_keys_file`); needed when signatures are checked.
    pub(crate) signers: Option<SignerKeys>,
    /// Allowed signer key ids (`gpg_remote_id`), normalized hex: suffixes of the signing key's
    /// or its primary key's fingerprint.
    pub(crate) remote_ids: Vec<String>,
    /// Allowed signer fingerprints (`gpg_fingerprint_id`), normalized hex: the signing key's or
    /// its primary key's.
    pub(crate) fingerprints: Vec<String>,
}

/// What opening a GPG packet yields.
#[derive(Debug)]
pub struct Opened {
    /// The packet's fields.
    pub decoded: Decoded,
    /// The primary fingerprint of the key that signed it, when signatures are checked.
    pub signer: Option<String>,
}

/// Whether `text` (wire base64) begins with an OpenPGP session-key packet header, i.e. was not
/// stripped of its first two characters (see the module documentation and fwknop #247).
fn is_unstripped(text: &[u8]) -> bool {
    let mut first = [0u8; 3];
    match text.get(..4).and_then(|t| b64::decode_slice(t, &mut first)) {
        // Old format tag 1 (any length type) or new format tag 1.
        Some(_) => matches!(first[0], 0x84..=0x87 | 0xC1),
        None => false,
    }
}

/// Authenticates, decrypts and decodes one GPG packet for one stanza.
pub fn open(payload: &[u8], hmac: Option<&HmacState>, auth: &GpgAuth) -> Result<Opened, RejectReason> {
    let ct_text = match hmac {
        Some(mac) => {
            let tag_len = mac.digest_type().b64_len();
            if payload.len() <= tag_len {
                return Err(RejectReason::HmacMismatch);
            }
            payload.split_at(payload.len() - tag_len).0
        }
        None => payload,
    };
    let prefix: &[u8] = if is_unstripped(ct_text) { b"" } else { GPG_PREFIX.as_bytes() };
    if let Some(mac) = hmac {
        let tag = b64::decode(&payload[ct_text.len()..]).ok_or(RejectReason::HmacMismatch)?;
        if !mac.verify(&[prefix, ct_text], &tag) {
            return Err(RejectReason::HmacMismatch);
        }
    }
    let mut full = Vec::with_capacity(prefix.len() + ct_text.len());
    full.extend_from_slice(prefix);
    full.extend_from_slice(ct_text);
    let raw = b64::decode(&full).ok_or(RejectReason::DecryptFailed)?;
    let (plain, signer) =
        catch_unwind(AssertUnwindSafe(|| decrypt(&raw, auth))).unwrap_or(Err(RejectReason::DecryptFailed))?;
    // fwknop's own success test, as for Rijndael: 16 digits and a colon.
    if plain.len() < 17 || !plain[..16].iter().all(u8::is_ascii_digit) || plain[16] != b':' {
        return Err(RejectReason::MalformedField(Field::Framing));
    }
    Ok(Opened { decoded: message::decode(&plain)?, signer })
}

/// The OpenPGP part of [`open`]: decrypt, decompress, read (bounded), check the signature.
fn decrypt(raw: &[u8], auth: &GpgAuth) -> Result<(Zeroizing<Vec<u8>>, Option<String>), RejectReason> {
    let fail = |_| RejectReason::DecryptFailed;
    let msg = Message::from_bytes(raw).map_err(fail)?;
    if !msg.is_encrypted() {
        return Err(RejectReason::DecryptFailed);
    }
    let msg = msg.decrypt(&Password::empty(), &auth.decrypt.key).map_err(fail)?;
    let mut msg = if msg.is_compressed() { msg.decompress().map_err(fail)? } else { msg };
    let mut plain = Zeroizing::new(Vec::new());
    (&mut msg)
        .take(MAX_PLAINTEXT as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|_| RejectReason::DecryptFailed)?;
    if plain.len() > MAX_PLAINTEXT {
        return Err(RejectReason::MalformedField(Field::Framing));
    }
    if !auth.require_sig {
        return Ok((plain, None));
    }
    let signature = match &msg {
        Message::Signed { reader, .. } => reader.signature(0).cloned(),
        _ => None,
    };
    let Some(signature) = signature else { return Err(RejectReason::SignatureMissing) };
    let signers = auth.signers.as_ref().ok_or(RejectReason::SignerNotAllowed)?;
    let candidates = signers.candidates(&signature);
    if candidates.is_empty() {
        return Err(RejectReason::SignerNotAllowed);
    }
    let verified = candidates.into_iter().find(|(k, _)| match k {
        Verifying::Primary(p) => msg.verify(*p).is_ok(),
        Verifying::Sub(s) => msg.verify(*s).is_ok(),
    });
    let Some((key, primary)) = verified else { return Err(RejectReason::BadSignature) };
    let signing = key.fingerprint();
    let listed_fpr = auth.fingerprints.iter().any(|f| *f == signing || *f == primary);
    let listed_id =
        auth.remote_ids.iter().any(|id| signing.ends_with(id.as_str()) || primary.ends_with(id.as_str()));
    // fwknop: with both lists set, the signer must be in both.
    let ok = (auth.fingerprints.is_empty() || listed_fpr) && (auth.remote_ids.is_empty() || listed_id);
    if !ok {
        return Err(RejectReason::SignerNotAllowed);
    }
    Ok((plain, Some(primary)))
}

/// The recipient of a client's packets: the server's exported public key.
#[derive(Clone)]
pub struct RecipientKey {
    key: SignedPublicKey,
}

impl fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecipientKey({})", self.fingerprint())
    }
}

impl RecipientKey {
    /// Reads `gpg --export [--armor] ID` output holding one key.
    pub fn from_export(text: &[u8]) -> Result<Self, Error> {
        let (key, _) = SignedPublicKey::from_reader_single(text).map_err(key_error("recipient key"))?;
        key.verify_bindings().map_err(key_error("recipient key"))?;
        let me = Self { key };
        if !me.can_encrypt() {
            return Err(Error::GpgKey { what: "recipient key", detail: "has no encryption key".into() });
        }
        Ok(me)
    }

    /// The primary key's fingerprint.
    pub fn fingerprint(&self) -> String {
        hex(self.key.primary_key.fingerprint().as_bytes())
    }

    /// Whether `id` (normalized hex, see [`normalize_id`]) names this key or a subkey.
    pub fn has_id(&self, id: &str) -> bool {
        names(
            id,
            self.key.primary_key.fingerprint(),
            self.key.public_subkeys.iter().map(|s| s.key.fingerprint()),
        )
    }

    fn can_encrypt(&self) -> bool {
        self.subkey().is_some() || self.key.primary_key.algorithm().can_encrypt()
    }

    /// The subkey GnuPG would encrypt to: one flagged for encryption.
    fn subkey(&self) -> Option<&SignedPublicSubKey> {
        self.key.public_subkeys.iter().find(|s| {
            s.key.algorithm().can_encrypt()
                && s.signatures.iter().any(|sig| {
                    let f = sig.key_flags();
                    f.encrypt_comms() || f.encrypt_storage()
                })
        })
    }
}

/// The client's signing key: an exported secret key, unlocked once.
#[derive(Clone)]
pub struct SigningKey {
    key: SignedSecretKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.fingerprint())
    }
}

impl SigningKey {
    /// Reads `gpg --export-secret-keys [--armor] ID` output; `password` unlocks a protected key.
    pub fn from_export(text: &[u8], password: Option<&str>) -> Result<Self, Error> {
        let mut key = parse_secret(text, "signing key")?;
        unlock(&mut key, password)?;
        let me = Self { key };
        if me.signer().is_none() {
            return Err(Error::GpgKey { what: "signing key", detail: "has no signing key".into() });
        }
        Ok(me)
    }

    /// The primary key's fingerprint.
    pub fn fingerprint(&self) -> String {
        hex(self.key.primary_key.fingerprint().as_bytes())
    }

    /// Whether `id` (normalized hex, see [`normalize_id`]) names this key or a subkey.
    pub fn has_id(&self, id: &str) -> bool {
        names(
            id,
            self.key.primary_key.fingerprint(),
            self.key.secret_subkeys.iter().map(|s| s.key.fingerprint()),
        )
    }

    /// The key GnuPG would sign with: the primary key when it can sign, else a signing subkey.
    fn signer(&self) -> Option<&dyn pgp::types::SigningKey> {
        if self.key.primary_key.algorithm().can_sign() {
            return Some(&self.key.primary_key);
        }
        self.key
            .secret_subkeys
            .iter()
            .find(|s| s.key.algorithm().can_sign() && s.signatures.iter().any(|sig| sig.key_flags().sign()))
            .map(|s| &s.key as &dyn pgp::types::SigningKey)
    }
}

/// Client-side choices for one GPG packet.
#[derive(Clone, Copy, Debug)]
pub struct SealOptions<'a> {
    /// The server's key.
    pub recipient: &'a RecipientKey,
    /// The client's key; `None` sends an unsigned packet (which fwknopd refuses by default).
    pub signer: Option<&'a SigningKey>,
    /// Inner digest type.
    pub digest: DigestType,
    /// HMAC key and type; `None` sends no HMAC.
    pub hmac: Option<(&'a HmacKey, DigestType)>,
}

/// What [`seal`] made.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// The wire text (ASCII, no newline).
    pub wire: String,
    /// False when the message did not start with `hQ` (a non-RSA key): fwknopd cannot read
    /// such a packet (fwknop #247); this project's server can.
    pub fwknop_readable: bool,
}

/// `Entropy` as the `rand` 0.8 generator rpgp takes.
struct Rng<'a>(&'a mut dyn Entropy);

impl rand_core_06::RngCore for Rng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

// `Entropy` is documented as a source of cryptographic randomness.
impl rand_core_06::CryptoRng for Rng<'_> {}

/// Rewrites a new-format header of the first packet (a session-key packet, tag 1) in the old
/// format GnuPG writes (`0x85` and two length bytes), so the text starts with `hQ` as fwknop
/// expects. Anything else is left alone.
fn old_format_first_header(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.first() != Some(&0xC1) {
        return bytes;
    }
    let (len, used) = match bytes.get(1..3) {
        Some(&[a, _]) if a < 192 => (usize::from(a), 1),
        Some(&[a, b]) if (192..224).contains(&a) => (((usize::from(a) - 192) << 8) + usize::from(b) + 192, 2),
        _ => return bytes,
    };
    let Ok(len16) = u16::try_from(len) else { return bytes };
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(0x85);
    out.extend_from_slice(&len16.to_be_bytes());
    out.extend_from_slice(&bytes[1 + used..]);
    bytes.clear();
    out
}

/// Builds the wire text of one GPG packet, as the fwknop client does.
pub fn seal(msg: &SpaMessage, opts: &SealOptions<'_>, rng: &mut dyn Entropy) -> Result<Sealed, Error> {
    let plain = msg.encode_with_digest(opts.digest)?;
    let mut rng = Rng(rng);
    let pgp_err = |e: pgp::errors::Error| Error::GpgSeal { detail: e.to_string() };
    let mut builder = MessageBuilder::from_bytes("", plain.as_bytes().to_vec())
        .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
    match opts.recipient.subkey() {
        Some(sub) => builder.encrypt_to_key(&mut rng, sub).map_err(pgp_err)?,
        None => builder.encrypt_to_key(&mut rng, &opts.recipient.key).map_err(pgp_err)?,
    };
    if let Some(signer) = opts.signer {
        let key = signer.signer().ok_or(Error::GpgSeal { detail: "no signing key".into() })?;
        builder.sign(key, Password::empty(), HashAlgorithm::Sha256);
    }
    let bytes = Zeroizing::new(old_format_first_header(builder.to_vec(&mut rng).map_err(pgp_err)?));
    let mut text = b64::encode(&bytes[..]);
    if let Some((key, alg)) = opts.hmac {
        let tag = HmacState::new(alg, key.as_bytes()).compute(&[text.as_bytes()]);
        b64::encode_into(tag.as_bytes(), &mut text);
    }
    let fwknop_readable = text.starts_with(GPG_PREFIX);
    let wire = if fwknop_readable { text.split_off(GPG_PREFIX.len()) } else { text };
    if wire.len() > MAX_PACKET_LEN {
        return Err(Error::PacketTooLong { len: wire.len(), max: MAX_PACKET_LEN });
    }
    if wire.len() < MIN_GPG_PACKET_LEN {
        return Err(Error::GpgSeal {
            detail: format!("packet of {} characters would be read as Rijndael", wire.len()),
        });
    }
    Ok(Sealed { wire, fwknop_readable })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_normalized() {
        assert_eq!(normalize_id("0xb83bad3e").as_deref(), Some("B83BAD3E"));
        assert_eq!(
            normalize_id("098D 87A7 67ED E139 FF36  0B87 FD17 DCB3 B83B AD3E").as_deref(),
            Some("098D87A767EDE139FF360B87FD17DCB3B83BAD3E")
        );
        assert_eq!(normalize_id("B83BAD3"), None);
        assert_eq!(normalize_id("B83BAD3G"), None);
    }

    #[test]
    fn stripped_text_is_told_from_whole_text() {
        // A GnuPG RSA-2048 packet starts `hQEM`; stripped, `EMA…`.
        assert!(is_unstripped(b"hQEMA1QT"));
        assert!(!is_unstripped(b"EMA1QTZg"));
        // An ECDH session key (fwknop #247) starts `hF4D` and is sent whole.
        assert!(is_unstripped(b"hF4DAAAA"));
        assert!(!is_unstripped(b"F4DAAAAA"));
    }

    #[test]
    fn new_format_headers_become_old_format() {
        // 268 bytes: new format C1 C0 4C (two-octet length 192 + 76), old format 85 01 0C.
        let mut v = vec![0xC1, 0xC0, 0x4C];
        v.extend(std::iter::repeat_n(7u8, 268));
        let out = old_format_first_header(v);
        assert_eq!(&out[..3], &[0x85, 0x01, 0x0C]);
        assert_eq!(out.len(), 3 + 268);
        assert!(b64::encode(&out).starts_with("hQEM"));
        // Short new-format lengths too; other packets untouched.
        assert_eq!(old_format_first_header(vec![0xC1, 2, 9, 9]), vec![0x85, 0, 2, 9, 9]);
        assert_eq!(old_format_first_header(vec![0x85, 0, 1, 9]), vec![0x85, 0, 1, 9]);
    }
}

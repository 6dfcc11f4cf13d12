//! The modern format's keys: each user's Ed25519 signing key and the server's X25519 key, with
//! their text forms.
//!
//! - Public keys are one token, `ed25519:<base64>` (a user) or `x25519:<base64>` (a server),
//!   standard alphabet, written without `=` padding (read with or without). They go into
//!   stanzas (`users = [...]`), client configurations and QR codes.
//! - Secret keys are `ed25519-secret:<base64>` and `x25519-secret:<base64>`, and live in a key
//!   file: that line, preceded by `#` comment lines (the public key among them, for the admin's
//!   convenience; it is derived again on reading, never trusted). See `docs/modern-format.md`.
//!
//! Secret keys are wiped when dropped and never shown by `Debug`. Nothing here reads a file or
//! draws randomness itself: `generate` takes the caller's [`Entropy`].

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{Entropy, Error, b64};

/// Prefix of a user's public key.
pub const USER_PUBLIC_PREFIX: &str = "ed25519:";
/// Prefix of a user's secret key.
pub const USER_SECRET_PREFIX: &str = "ed25519-secret:";
/// Prefix of the server's public key.
pub const SERVER_PUBLIC_PREFIX: &str = "x25519:";
/// Prefix of the server's secret key.
pub const SERVER_SECRET_PREFIX: &str = "x25519-secret:";
/// Key files larger than this are refused unread (a key file is about 200 bytes).
pub const MAX_KEY_FILE_LEN: usize = 4096;

/// A user's Ed25519 signing key: signs every packet the user sends.
#[derive(Clone)]
pub struct UserSigningKey(SigningKey);

/// A user's Ed25519 public key: what a stanza lists in `users` to let the user in. Holds the
/// 32 bytes, checked to be a usable point when made (so it stays small inside a grant).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserPublicKey([u8; 32]);

/// The server's X25519 secret key: opens every packet sealed to the server.
#[derive(Clone)]
pub struct ServerSecretKey {
    secret: StaticSecret,
    public: ServerPublicKey,
}

/// The server's X25519 public key: what every client needs to seal packets to the server.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerPublicKey([u8; 32]);

/// Decodes `<prefix><base64 of 32 bytes>`.
fn decode_key(text: &str, prefix: &'static str, what: &'static str) -> Result<Zeroizing<[u8; 32]>, Error> {
    let body = text.strip_prefix(prefix).ok_or(Error::KeyPrefix { prefix })?;
    // At most 44 characters (43 without padding): refuse anything longer before decoding.
    if body.len() > 44 {
        return Err(Error::KeyEncoding { what });
    }
    let bytes = Zeroizing::new(b64::decode(body).ok_or(Error::KeyEncoding { what })?);
    let mut out = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(Error::KeyEncoding { what });
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

fn encode_key(prefix: &str, bytes: &[u8; 32]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(prefix.len() + 43));
    out.push_str(prefix);
    b64::encode_into(bytes, &mut out);
    out
}

/// The key line of a key file: the one line that is neither blank nor a `#` comment.
fn key_line(file: &str) -> Result<&str, Error> {
    if file.len() > MAX_KEY_FILE_LEN {
        return Err(Error::KeyFile("file too large"));
    }
    let mut lines = file.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next().ok_or(Error::KeyFile("no key line"))?;
    if lines.next().is_some() {
        return Err(Error::KeyFile("more than one key line"));
    }
    Ok(line)
}

impl UserSigningKey {
    /// A new key from 32 bytes of the caller's randomness.
    pub fn generate(rng: &mut dyn Entropy) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill(&mut seed[..]);
        Self::from_seed(&seed)
    }

    /// The key whose RFC 8032 secret (seed) is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The public half, to list in a stanza.
    pub fn public_key(&self) -> UserPublicKey {
        UserPublicKey(self.0.verifying_key().to_bytes())
    }

    /// `ed25519-secret:<base64>`.
    pub fn to_secret_text(&self) -> Zeroizing<String> {
        encode_key(USER_SECRET_PREFIX, self.0.as_bytes())
    }

    /// Parses `ed25519-secret:<base64>`.
    pub fn from_secret_text(text: &str) -> Result<Self, Error> {
        let seed = decode_key(text.trim(), USER_SECRET_PREFIX, "ed25519 secret key")?;
        Ok(Self::from_seed(&seed))
    }

    /// The contents of a key file for this key (write it with mode 0600).
    pub fn to_file(&self) -> Zeroizing<String> {
        let secret = self.to_secret_text();
        let mut out = Zeroizing::new(String::with_capacity(256));
        out.push_str("# spa user key (modern format, Ed25519): keep this file private (mode 0600)\n");
        out.push_str("# public key: ");
        out.push_str(&self.public_key().to_string());
        out.push('\n');
        out.push_str(&secret);
        out.push('\n');
        out
    }

    /// Reads a key file written by [`UserSigningKey::to_file`] (or by hand: one
    /// `ed25519-secret:` line, any `#` comments).
    pub fn from_file(text: &str) -> Result<Self, Error> {
        Self::from_secret_text(key_line(text)?)
    }

    /// Signs `msg`.
    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }
}

impl fmt::Debug for UserSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserSigningKey(<redacted>, public {})", self.public_key())
    }
}

impl UserPublicKey {
    /// The key with these 32 bytes (RFC 8032 encoding). Refuses encodings that are not a point
    /// and the weak (small-order) points, for which a signature proves nothing.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        let what = "ed25519 public key";
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| Error::WeakKey { what })?;
        if key.is_weak() {
            return Err(Error::WeakKey { what });
        }
        Ok(Self(*bytes))
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The 32 bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The decompressed key, ready to verify signatures: a verifier computes it once per
    /// listed user, when the stanza is compiled.
    pub(crate) fn verifier(&self) -> UserVerifier {
        // Checked in `from_bytes`, the only constructor besides a signing key's own.
        UserVerifier(VerifyingKey::from_bytes(&self.0).unwrap_or_else(|_| unreachable!("checked key")))
    }
}

/// A user's public key, decompressed for verifying.
#[derive(Clone, Debug)]
pub(crate) struct UserVerifier(VerifyingKey);

impl UserVerifier {
    /// Checks `sig` over `msg` strictly (no small-order components, canonical scalar), so a
    /// signature cannot be altered into another valid one.
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.0.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
    }
}

impl fmt::Display for UserPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_key(USER_PUBLIC_PREFIX, &self.0))
    }
}

impl fmt::Debug for UserPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserPublicKey({self})")
    }
}

impl FromStr for UserPublicKey {
    type Err = Error;

    /// Parses `ed25519:<base64>`.
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::from_bytes(&*decode_key(s, USER_PUBLIC_PREFIX, "ed25519 public key")?)
    }
}

impl ServerSecretKey {
    /// A new key from 32 bytes of the caller's randomness.
    pub fn generate(rng: &mut dyn Entropy) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill(&mut bytes[..]);
        Self::from_bytes(&bytes)
    }

    /// The key with these 32 secret bytes (clamped by X25519 when used, as RFC 7748 says).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let secret = StaticSecret::from(*bytes);
        let public = ServerPublicKey(PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// The public half, which every client needs.
    pub fn public_key(&self) -> ServerPublicKey {
        self.public
    }

    /// `x25519-secret:<base64>`.
    pub fn to_secret_text(&self) -> Zeroizing<String> {
        encode_key(SERVER_SECRET_PREFIX, self.secret.as_bytes())
    }

    /// Parses `x25519-secret:<base64>`.
    pub fn from_secret_text(text: &str) -> Result<Self, Error> {
        let bytes = decode_key(text.trim(), SERVER_SECRET_PREFIX, "x25519 secret key")?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The contents of a key file for this key (write it with mode 0600).
    pub fn to_file(&self) -> Zeroizing<String> {
        let secret = self.to_secret_text();
        let mut out = Zeroizing::new(String::with_capacity(256));
        out.push_str("# spad server key (modern format, X25519): keep this file private (mode 0600)\n");
        out.push_str("# public key: ");
        out.push_str(&self.public.to_string());
        out.push('\n');
        out.push_str(&secret);
        out.push('\n');
        out
    }

    /// Reads a key file written by [`ServerSecretKey::to_file`] (or by hand: one
    /// `x25519-secret:` line, any `#` comments).
    pub fn from_file(text: &str) -> Result<Self, Error> {
        Self::from_secret_text(key_line(text)?)
    }

    /// The X25519 secret.
    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

impl fmt::Debug for ServerSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerSecretKey(<redacted>, public {})", self.public)
    }
}

impl ServerPublicKey {
    /// The key with these 32 bytes. Refuses the low-order points, with which the
    /// Diffie-Hellman result would be all zeros (no secret at all).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        // A clamped scalar is a multiple of the cofactor, so the product is zero exactly for
        // the points of small order. Any fixed scalar works; this one is arbitrary.
        let probe = StaticSecret::from([0x5a; 32]);
        if !probe.diffie_hellman(&PublicKey::from(*bytes)).was_contributory() {
            return Err(Error::WeakKey { what: "x25519 public key" });
        }
        Ok(Self(*bytes))
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The 32 bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ServerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_key(SERVER_PUBLIC_PREFIX, &self.0))
    }
}

impl fmt::Debug for ServerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerPublicKey({self})")
    }
}

impl FromStr for ServerPublicKey {
    type Err = Error;

    /// Parses `x25519:<base64>`.
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::from_bytes(&*decode_key(s, SERVER_PUBLIC_PREFIX, "x25519 public key")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u8);
    impl Entropy for Fixed {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 = self.0.wrapping_mul(31).wrapping_add(7);
                *b = self.0;
            }
        }
    }

    fn hex32(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..64).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
        v.try_into().unwrap()
    }

    #[test]
    fn rfc8032_test_1_key_and_text_forms() {
        // RFC 8032 section 7.1, TEST 1.
        let sk = UserSigningKey::from_seed(&hex32(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        ));
        let pk = sk.public_key();
        assert_eq!(pk.to_bytes(), hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"));
        let text = pk.to_string();
        assert_eq!(text, "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(text.parse::<UserPublicKey>().unwrap(), pk);
        // Padded base64 is read too.
        assert_eq!(format!("{text}=").parse::<UserPublicKey>().unwrap(), pk);
        let sig = sk.sign(b"");
        assert!(pk.verifier().verify(b"", &sig));
        assert!(!pk.verifier().verify(b"x", &sig));
    }

    #[test]
    fn text_forms_round_trip_and_refuse_the_wrong_kind() {
        let user = UserSigningKey::generate(&mut Fixed(1));
        let server = ServerSecretKey::generate(&mut Fixed(2));
        let u = user.public_key().to_string();
        let s = server.public_key().to_string();
        assert!(u.starts_with("ed25519:") && u.len() == 8 + 43, "{u}");
        assert!(s.starts_with("x25519:") && s.len() == 7 + 43, "{s}");
        assert_eq!(s.parse::<ServerPublicKey>().unwrap(), server.public_key());
        assert!(matches!(s.parse::<UserPublicKey>(), Err(Error::KeyPrefix { prefix: "ed25519:" })));
        assert!(matches!(u.parse::<ServerPublicKey>(), Err(Error::KeyPrefix { prefix: "x25519:" })));
        for bad in ["ed25519:", "ed25519:AAAA", "ed25519:not base64!", &format!("{u}AAAA")] {
            assert!(matches!(bad.parse::<UserPublicKey>(), Err(Error::KeyEncoding { .. })), "{bad}");
        }
        let user2 = UserSigningKey::from_secret_text(&user.to_secret_text()).unwrap();
        assert_eq!(user2.public_key(), user.public_key());
        let server2 = ServerSecretKey::from_secret_text(&server.to_secret_text()).unwrap();
        assert_eq!(server2.public_key(), server.public_key());
        assert!(matches!(
            ServerSecretKey::from_secret_text(&user.to_secret_text()),
            Err(Error::KeyPrefix { .. })
        ));
    }

    #[test]
    fn weak_public_keys_are_refused() {
        // The Ed25519 identity point (y = 1) and the X25519 points u = 0 and u = 1.
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(matches!(UserPublicKey::from_bytes(&one), Err(Error::WeakKey { .. })));
        assert!(matches!(ServerPublicKey::from_bytes(&[0; 32]), Err(Error::WeakKey { .. })));
        assert!(matches!(ServerPublicKey::from_bytes(&one), Err(Error::WeakKey { .. })));
    }

    #[test]
    fn key_files() {
        let user = UserSigningKey::generate(&mut Fixed(3));
        let file = user.to_file();
        assert!(file.contains(&user.public_key().to_string()));
        assert_eq!(UserSigningKey::from_file(&file).unwrap().public_key(), user.public_key());
        let server = ServerSecretKey::generate(&mut Fixed(4));
        let file = server.to_file();
        assert_eq!(ServerSecretKey::from_file(&file).unwrap().public_key(), server.public_key());
        // By hand: CRLF line ends, blank lines, indented comments.
        let hand = format!("\r\n  # mine\r\n{}\r\n\r\n", &*server.to_secret_text());
        assert_eq!(ServerSecretKey::from_file(&hand).unwrap().public_key(), server.public_key());
        assert!(matches!(ServerSecretKey::from_file("# nothing\n"), Err(Error::KeyFile(_))));
        let two = format!("{}\n{}\n", &*server.to_secret_text(), &*server.to_secret_text());
        assert!(matches!(ServerSecretKey::from_file(&two), Err(Error::KeyFile(_))));
        assert!(matches!(ServerSecretKey::from_file(&"#".repeat(5000)), Err(Error::KeyFile(_))));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let user = UserSigningKey::generate(&mut Fixed(5));
        let server = ServerSecretKey::generate(&mut Fixed(6));
        let secret_b64 = |t: &str| t.split_once(':').unwrap().1.to_owned();
        let us = secret_b64(&user.to_secret_text());
        let ss = secret_b64(&server.to_secret_text());
        let d = format!("{user:?} {server:?}");
        assert!(d.contains("<redacted>"));
        assert!(!d.contains(&us) && !d.contains(&ss), "{d}");
    }
}

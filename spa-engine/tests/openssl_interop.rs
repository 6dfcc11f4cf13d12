//! Packets from our encoder (`packet::seal`) checked by an independent implementation: the
//! `openssl` binary decrypts them (`openssl enc -d -aes-256-<mode> -md md5`, i.e. the salted
//! `EVP_BytesToKey` format fwknop uses) and recomputes their HMAC (`openssl mac`) over the
//! base64 text with the `U2FsdGVkX1` prefix put back.

use std::io::Write as _;
use std::process::{Command, Stdio};

use spa_engine::packet::{self, RIJNDAEL_PREFIX, SealOptions};
use spa_engine::{DigestType, EncryptionKey, EncryptionMode, Entropy, HmacKey, MessageType, SpaMessage};

/// Deterministic randomness (xorshift), so a failure can be reproduced.
struct TestRng(u64);

impl Entropy for TestRng {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// Runs `openssl args...` with `input` on stdin (and `env`), returning stdout; panics with
/// openssl's stderr on failure.
fn openssl(args: &[&str], env: &[(&str, &str)], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl must be installed");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn message(t: MessageType) -> SpaMessage {
    let (message, nat) = match t {
        MessageType::Command => ("10.0.0.1,systemctl restart sshd".to_owned(), None),
        MessageType::NatAccess | MessageType::ClientTimeoutNatAccess => {
            ("10.0.0.1,tcp/8022".to_owned(), Some("192.168.1.20,22".to_owned()))
        }
        MessageType::LocalNatAccess | MessageType::ClientTimeoutLocalNatAccess => {
            ("0.0.0.0,tcp/2222".to_owned(), Some("127.0.0.1,22".to_owned()))
        }
        _ => ("10.0.0.1,tcp/22,udp/53".to_owned(), None),
    };
    SpaMessage {
        random: "0123456789012345".into(),
        username: "alice".into(),
        timestamp: 1_800_000_000,
        version: "3.0.0".into(),
        message_type: t,
        message,
        nat_access: nat,
        server_auth: None,
        client_timeout: t.has_timeout().then_some(90),
    }
}

const ALL_TYPES: [MessageType; 7] = [
    MessageType::Command,
    MessageType::Access,
    MessageType::NatAccess,
    MessageType::ClientTimeoutAccess,
    MessageType::ClientTimeoutNatAccess,
    MessageType::LocalNatAccess,
    MessageType::ClientTimeoutLocalNatAccess,
];

/// The base64 ciphertext text as fwknop's HMAC and `openssl enc -a` see it: prefix re-added,
/// HMAC removed, `=` padding restored for openssl's decoder.
fn ciphertext_text(wire: &str, hmac: Option<DigestType>) -> String {
    let ct = &wire[..wire.len() - hmac.map_or(0, DigestType::b64_len)];
    let mut text = format!("{RIJNDAEL_PREFIX}{ct}");
    while !text.len().is_multiple_of(4) {
        text.push('=');
    }
    text
}

/// Decrypts with openssl. The passphrase goes through the environment, not argv.
fn openssl_decrypt(text: &str, mode: EncryptionMode, pass: &str) -> Vec<u8> {
    let cipher = match mode {
        EncryptionMode::Cbc | EncryptionMode::Legacy => "-aes-256-cbc",
        EncryptionMode::Ecb => "-aes-256-ecb",
        EncryptionMode::Cfb => "-aes-256-cfb",
        EncryptionMode::Ofb => "-aes-256-ofb",
        EncryptionMode::Ctr => "-aes-256-ctr",
    };
    openssl(
        &["enc", "-d", cipher, "-md", "md5", "-a", "-A", "-pass", "env:SPA_TEST_PASS"],
        &[("SPA_TEST_PASS", pass)],
        text.as_bytes(),
    )
}

/// What openssl should print: the plaintext; in the stream modes (where openssl itself does
/// not pad) followed by fwknop's PKCS#7 padding, which fwknop applies in every mode.
fn expected_output(plain: &[u8], mode: EncryptionMode) -> Vec<u8> {
    let mut out = plain.to_vec();
    if matches!(mode, EncryptionMode::Cfb | EncryptionMode::Ofb | EncryptionMode::Ctr) {
        let pad = 16 - plain.len() % 16;
        out.resize(plain.len() + pad, pad as u8);
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn openssl_digest_name(t: DigestType) -> &'static str {
    match t {
        DigestType::Md5 => "MD5",
        DigestType::Sha1 => "SHA1",
        DigestType::Sha256 => "SHA256",
        DigestType::Sha384 => "SHA384",
        DigestType::Sha512 => "SHA512",
        DigestType::Sha3_256 => "SHA3-256",
        DigestType::Sha3_512 => "SHA3-512",
    }
}

#[test]
fn openssl_decrypts_every_mode_and_message_type() {
    let pass = "correct horse battery";
    let key = EncryptionKey::new(pass.as_bytes().to_vec()).unwrap();
    let hkey = HmacKey::new(b"an hmac key".to_vec()).unwrap();
    let mut rng = TestRng(0x9E37_79B9_7F4A_7C15);
    for mode in EncryptionMode::ALL {
        for t in ALL_TYPES {
            let msg = message(t);
            // fwknop refuses HMAC with legacy mode; test that one without.
            let hmac = (mode != EncryptionMode::Legacy).then_some(DigestType::Sha256);
            let opts =
                SealOptions { key: &key, mode, digest: DigestType::Sha256, hmac: hmac.map(|h| (&hkey, h)) };
            let wire = packet::seal(&msg, &opts, &mut rng).unwrap();
            // Legacy: the passphrase padded with ASCII zeros to 16 bytes.
            let openssl_pass = if mode == EncryptionMode::Legacy {
                format!("{pass:0<16}")[..16].to_owned()
            } else {
                pass.into()
            };
            let out = openssl_decrypt(&ciphertext_text(&wire, hmac), mode, &openssl_pass);
            let plain = msg.encode_with_digest(DigestType::Sha256).unwrap();
            assert_eq!(out, expected_output(plain.as_bytes(), mode), "{mode} {t}");
        }
    }
}

#[test]
fn legacy_mode_pads_short_keys_like_fwknop() {
    let key = EncryptionKey::new(b"short".to_vec()).unwrap();
    let msg = message(MessageType::Access);
    let opts = SealOptions { key: &key, mode: EncryptionMode::Legacy, digest: DigestType::Md5, hmac: None };
    let wire = packet::seal(&msg, &opts, &mut TestRng(7)).unwrap();
    let out = openssl_decrypt(&ciphertext_text(&wire, None), EncryptionMode::Legacy, "short00000000000");
    assert_eq!(out, msg.encode_with_digest(DigestType::Md5).unwrap().as_bytes());
}

#[test]
fn openssl_verifies_every_hmac_type_with_every_digest() {
    let pass = "k";
    let key = EncryptionKey::new(pass.as_bytes().to_vec()).unwrap();
    // Longer than every hash block (64, 72, 128, 136), so the key-hashing path is covered too.
    let long: Vec<u8> = (0..128u8).map(|i| b'!' + i % 90).collect();
    let keys = [HmacKey::new(b"hmac".to_vec()).unwrap(), HmacKey::new(long).unwrap()];
    let mut rng = TestRng(42);
    let msg = message(MessageType::ClientTimeoutNatAccess);
    for (i, hkey) in keys.iter().enumerate() {
        for digest in DigestType::ALL {
            for hmac in DigestType::ALL {
                let mode = EncryptionMode::ALL[(i + digest.fwknop_id() as usize) % 5];
                let opts = SealOptions { key: &key, mode, digest, hmac: Some((hkey, hmac)) };
                let wire = match packet::seal(&msg, &opts, &mut rng) {
                    Ok(w) => w,
                    Err(e) => panic!("{digest}/{hmac}: {e}"),
                };
                let ct = &wire[..wire.len() - hmac.b64_len()];
                let tag_b64 = &wire[wire.len() - hmac.b64_len()..];
                let macopt = format!("hexkey:{}", hex(hkey.as_bytes()));
                let out = openssl(
                    &["mac", "-digest", openssl_digest_name(hmac), "-macopt", &macopt, "HMAC"],
                    &[],
                    format!("{RIJNDAEL_PREFIX}{ct}").as_bytes(),
                );
                let tag = spa_engine::b64::decode(tag_b64).unwrap();
                assert_eq!(String::from_utf8(out).unwrap().trim(), hex(&tag), "{digest}/{hmac}");
                // And the ciphertext still decrypts with openssl.
                let plain = openssl_decrypt(&ciphertext_text(&wire, Some(hmac)), mode, pass);
                let expected = msg.encode_with_digest(digest).unwrap();
                assert_eq!(plain, expected_output(expected.as_bytes(), mode), "{digest}/{hmac}");
            }
        }
    }
}

#[test]
fn openssl_sees_the_inner_digest_we_write() {
    let msg = message(MessageType::Access);
    for digest in DigestType::ALL {
        let enc = msg.encode_with_digest(digest).unwrap();
        let (body, d) = enc.rsplit_once(':').unwrap();
        let name = format!("-{}", openssl_digest_name(digest).to_ascii_lowercase());
        let out = openssl(&["dgst", &name, "-binary"], &[], body.as_bytes());
        assert_eq!(spa_engine::b64::encode(out), d, "{digest}");
    }
}

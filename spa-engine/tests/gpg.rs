//! fwknop's GPG mode: packets made once by the real fwknop client (`tests/data/gpg/README.md`)
//! opened by the verifier, the signer rules, and this crate's own GPG packets.
#![cfg(feature = "gpg")]

use spa_engine::gpg::{self, RecipientKey, SealOptions, SigningKey};
use spa_engine::stanza::{GpgKeyText, Secret};
use spa_engine::{
    AccessStanza, DigestType, Entropy, HmacKey, MemoryReplayStore, MessageType, PacketMeta, RejectReason,
    Settings, SpaMessage, Verdict, Verifier,
};

const SERVER_SECRET: &str = include_str!("data/gpg/server-secret.asc");
const SERVER_PUBLIC: &str = include_str!("data/gpg/server-public.asc");
const CLIENT_SECRET: &str = include_str!("data/gpg/client-secret.asc");
const CLIENT_PUBLIC: &str = include_str!("data/gpg/client-public.asc");
const SIGNED: &str = include_str!("data/gpg/fwknop-packet.txt");
const UNSIGNED: &str = include_str!("data/gpg/fwknop-unsigned-packet.txt");
const SIGNED_AT: u64 = 1_796_060_749;
const UNSIGNED_AT: u64 = 1_796_060_755;
const PASSPHRASE: &str = "server-key-passphrase-0123456789";
const HMAC_KEY: &str = "hmac-key-for-gpg-test-0123456789";
const CLIENT_FPR: &str = "098D87A767EDE139FF360B87FD17DCB3B83BAD3E";

struct Counter(u8);

impl Entropy for Counter {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_add(71);
            *b = self.0;
        }
    }
}

/// A GPG stanza as an admin writes it (the file paths are not read here), plus `extra`.
fn stanza(extra: &str) -> AccessStanza {
    let text = format!(
        "source = \"any\"\ngpg_decrypt_key_file = \"/etc/spad/server.gpg\"\n\
         gpg_remote_keys_file = \"/etc/spad/clients.gpg\"\nhmac_key = \"{HMAC_KEY}\"\n{extra}"
    );
    let mut s: AccessStanza = toml::from_str(&text).unwrap();
    s.gpg_key_text =
        GpgKeyText { decrypt_key: Some(Secret::new(SERVER_SECRET)), remote_keys: Some(CLIENT_PUBLIC.into()) };
    s
}

fn with_pw(extra: &str) -> AccessStanza {
    stanza(&format!("gpg_decrypt_pw = \"{PASSPHRASE}\"\n{extra}"))
}

fn verify(s: AccessStanza, packet: &str, now: u64) -> Verdict {
    let v = Verifier::new(&[s], Settings::default()).unwrap();
    let meta = PacketMeta { source: "10.0.0.1".parse().unwrap(), destination: "10.0.0.2".parse().unwrap() };
    v.verify(packet.trim().as_bytes(), meta, now, &mut MemoryReplayStore::new(240, 16))
}

fn reason(v: Verdict) -> RejectReason {
    match v {
        Verdict::Reject(r) => r.reason,
        Verdict::Accept(g) => panic!("accepted: {g:?}"),
    }
}

fn compile_error(s: AccessStanza) -> String {
    let e = Verifier::new(&[s], Settings::default()).unwrap_err();
    let mut text = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

#[test]
fn the_real_fwknop_clients_signed_packet_is_accepted_and_names_its_signer() {
    for ids in ["gpg_remote_id = \"B83BAD3E\"", &format!("gpg_fingerprint_id = \"{CLIENT_FPR}\"")] {
        match verify(with_pw(ids), SIGNED, SIGNED_AT) {
            Verdict::Accept(g) => {
                assert_eq!(g.username, format!("gpg:{CLIENT_FPR}"), "{ids}");
                assert_eq!(g.client_username.as_deref(), Some("root"));
                assert_eq!(g.allowed_source, "10.0.0.1".parse::<std::net::IpAddr>().unwrap());
                assert_eq!(g.timestamp, SIGNED_AT);
            }
            Verdict::Reject(r) => panic!("{ids}: rejected {r:?}"),
        }
    }
    // require_username checks the packet's username, as fwknop does.
    assert!(matches!(
        verify(with_pw("gpg_remote_id = \"B83BAD3E\"\nrequire_username = \"root\""), SIGNED, SIGNED_AT),
        Verdict::Accept(_)
    ));
    assert_eq!(
        reason(verify(
            with_pw("gpg_remote_id = \"B83BAD3E\"\nrequire_username = \"alice\""),
            SIGNED,
            SIGNED_AT
        )),
        RejectReason::UsernameMismatch
    );
}

#[test]
fn signers_outside_the_lists_are_refused() {
    assert_eq!(
        reason(verify(with_pw("gpg_remote_id = \"DEADBEEF\""), SIGNED, SIGNED_AT)),
        RejectReason::SignerNotAllowed
    );
    assert_eq!(
        reason(verify(with_pw(&format!("gpg_fingerprint_id = \"{}\"", "A".repeat(40))), SIGNED, SIGNED_AT)),
        RejectReason::SignerNotAllowed
    );
    // Listed by id, but the key is not in gpg_remote_keys_file: nothing to verify with.
    let mut s = with_pw("gpg_remote_id = \"B83BAD3E\"");
    s.gpg_key_text.remote_keys = Some(SERVER_PUBLIC.into());
    assert_eq!(reason(verify(s, SIGNED, SIGNED_AT)), RejectReason::SignerNotAllowed);
}

#[test]
fn unsigned_packets_need_signature_checking_disabled() {
    assert_eq!(
        reason(verify(with_pw("gpg_remote_id = \"B83BAD3E\""), UNSIGNED, UNSIGNED_AT)),
        RejectReason::SignatureMissing
    );
    let mut open = with_pw("gpg_disable_sig = true");
    open.gpg_remote_keys_file = None;
    match verify(open, UNSIGNED, UNSIGNED_AT) {
        Verdict::Accept(g) => {
            assert_eq!(g.username, "root");
            assert_eq!(g.client_username, None);
        }
        Verdict::Reject(r) => panic!("rejected {r:?}"),
    }
}

#[test]
fn the_hmac_is_checked_first_and_junk_is_refused() {
    let mut s = with_pw("gpg_remote_id = \"B83BAD3E\"");
    s.hmac_key = Some(Secret::new("another-hmac-key-0123456789abcdef"));
    assert_eq!(reason(verify(s, SIGNED, SIGNED_AT)), RejectReason::HmacMismatch);
    // Without an HMAC key the tag left on the packet is not OpenPGP: refused, no panic.
    let mut s = with_pw("gpg_remote_id = \"B83BAD3E\"\nallow_no_hmac = true");
    s.hmac_key = None;
    assert_eq!(reason(verify(s.clone(), SIGNED, SIGNED_AT)), RejectReason::DecryptFailed);
    for junk in ["A".repeat(400), "hF".to_string() + &"B".repeat(600), "wc".to_string() + &"0".repeat(1200)] {
        let r = reason(verify(s.clone(), &junk, SIGNED_AT));
        assert!(matches!(r, RejectReason::DecryptFailed), "{r:?}");
    }
    // Shorter than 400 characters is Rijndael, which this GPG-only stanza does not take.
    assert_eq!(reason(verify(s, &"A".repeat(300), SIGNED_AT)), RejectReason::NoStanzaForSource);
}

#[test]
fn stanza_rules_follow_fwknop_and_refuse_what_needs_gnupg() {
    let e = compile_error(stanza("gpg_remote_id = \"B83BAD3E\""));
    assert!(e.contains("gpg_decrypt_pw or gpg_allow_no_pw"), "{e}");
    let e = compile_error(stanza(
        "gpg_remote_id = \"B83BAD3E\"\ngpg_decrypt_pw = \"wrong-passphrase-0123456789abcdef\"",
    ));
    assert!(e.contains("passphrase"), "{e}");
    let e = compile_error(stanza("gpg_remote_id = \"B83BAD3E\"\ngpg_allow_no_pw = true"));
    assert!(e.contains("passphrase"), "{e}");
    let e = compile_error(with_pw(""));
    assert!(e.contains("gpg_remote_id or gpg_fingerprint_id"), "{e}");
    let e = compile_error(with_pw("gpg_remote_id = \"B83BAD3\""));
    assert!(e.contains("not a key id"), "{e}");
    let e = compile_error(with_pw("gpg_remote_id = \"B83BAD3E\"\ngpg_decrypt_id = \"DEADBEEF\""));
    assert!(e.contains("not the key in gpg_decrypt_key_file"), "{e}");
    // The id of the primary key and of the encryption subkey both name it.
    for id in ["490302EF", "5413660C536EAF51"] {
        let s = with_pw(&format!("gpg_remote_id = \"B83BAD3E\"\ngpg_decrypt_id = \"{id}\""));
        assert!(Verifier::new(&[s], Settings::default()).is_ok(), "{id}");
    }
    for (line, needle) in [
        ("gpg_home_dir = \"/root/.gnupg\"", "gpg --export-secret-keys"),
        ("gpg_exe = \"/usr/bin/gpg\"", "no gpg process"),
        ("gpg_ignore_sig_verify_error = true", "never accepted"),
        ("gpg_require_sig = true\ngpg_disable_sig = true", "both"),
    ] {
        let e = compile_error(with_pw(&format!("gpg_remote_id = \"B83BAD3E\"\n{line}")));
        assert!(e.contains(needle), "{line}: {e}");
    }
    let e = compile_error(with_pw("gpg_disable_sig = true\ngpg_remote_id = \"B83BAD3E\""));
    assert!(e.contains("gpg_remote_id requires signature checking"), "{e}");
    // The key file's contents must have been read by the caller.
    let mut s = with_pw("gpg_remote_id = \"B83BAD3E\"");
    s.gpg_key_text = GpgKeyText::default();
    assert!(compile_error(s).contains("gpg_decrypt_key_file requires its contents"));
}

fn message(now: u64) -> SpaMessage {
    SpaMessage {
        random: "1234567890123456".into(),
        username: "alice".into(),
        timestamp: now,
        version: "3.0.0".into(),
        message_type: MessageType::Access,
        message: "10.0.0.1,tcp/22".into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    }
}

#[test]
fn packets_made_here_open_here() {
    let recipient = RecipientKey::from_export(SERVER_PUBLIC.as_bytes()).unwrap();
    let signer = SigningKey::from_export(CLIENT_SECRET.as_bytes(), None).unwrap();
    let hkey = HmacKey::new(HMAC_KEY.as_bytes().to_vec()).unwrap();
    let now = 1_800_000_000;
    let opts = SealOptions {
        recipient: &recipient,
        signer: Some(&signer),
        digest: DigestType::Sha256,
        hmac: Some((&hkey, DigestType::Sha256)),
    };
    let sealed = gpg::seal(&message(now), &opts, &mut Counter(1)).unwrap();
    // RSA: the text started with `hQ`, which was dropped as fwknop drops it.
    assert!(sealed.fwknop_readable);
    assert!(sealed.wire.len() >= 400 && sealed.wire.len() <= 1500, "{}", sealed.wire.len());
    assert!(!sealed.wire.starts_with("hQ"));
    match verify(with_pw("gpg_remote_id = \"B83BAD3E\""), &sealed.wire, now) {
        Verdict::Accept(g) => {
            assert_eq!(g.username, format!("gpg:{CLIENT_FPR}"));
            assert_eq!(g.client_username.as_deref(), Some("alice"));
        }
        Verdict::Reject(r) => panic!("rejected {r:?}"),
    }
    // Unsigned: refused where signatures are required.
    let unsigned = gpg::seal(&message(now), &SealOptions { signer: None, ..opts }, &mut Counter(2)).unwrap();
    assert_eq!(
        reason(verify(with_pw("gpg_remote_id = \"B83BAD3E\""), &unsigned.wire, now)),
        RejectReason::SignatureMissing
    );
    // A recipient key without an encryption key, or a secret key where a public one belongs.
    assert!(RecipientKey::from_export(CLIENT_SECRET.as_bytes()).is_err());
    assert!(SigningKey::from_export(SERVER_SECRET.as_bytes(), None).is_err());
    assert!(SigningKey::from_export(SERVER_SECRET.as_bytes(), Some(PASSPHRASE)).is_ok());
}

//! Every `RejectReason` produced through `Verifier::verify` with stanzas written in TOML as an
//! admin would, and the policy semantics of accepted packets.

use std::collections::BTreeSet;
use std::net::IpAddr;

use spa_engine::digest::HmacState;
use spa_engine::modern::{self, ModernRequest, NatRequest};
use spa_engine::packet::{self, SealOptions};
use spa_engine::replay::{Insert, ReplayKey, ReplayStore};
use spa_engine::verdict::{Field, Rejection};
use spa_engine::{
    Access, AccessStanza, Action, DigestType, EncryptionKey, EncryptionMode, Entropy, Error, GrantRequest,
    HmacKey, MemoryReplayStore, MessageType, Nat, NatHost, PacketMeta, Proto, ProtoPort, RejectReason,
    ServerSecretKey, Settings, Snat, SpaMessage, UserSigningKey, Verdict, Verifier, b64, cipher,
};

const NOW: u64 = 1_800_000_000;
const KEY: &str = "enc key";
const HMAC_KEY: &str = "mac key";
const CLIENT: &str = "192.0.2.10";
const SERVER: &str = "198.51.100.1";

struct Counter(u8);

impl Entropy for Counter {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_add(37);
            *b = self.0;
        }
    }
}

/// A stanza with the standard keys, plus `extra` TOML lines.
fn stanza(extra: &str) -> AccessStanza {
    let text = format!("key = \"{KEY}\"\nhmac_key = \"{HMAC_KEY}\"\n{extra}");
    toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn settings(forwarding: bool, local_nat: bool) -> Settings {
    Settings { max_packet_age: 120, enable_forwarding: forwarding, enable_local_nat: local_nat }
}

fn verifier(stanzas: &[AccessStanza]) -> Verifier {
    Verifier::new(stanzas, settings(false, false)).unwrap()
}

fn nat_verifier(stanzas: &[AccessStanza]) -> Verifier {
    Verifier::new(stanzas, settings(true, true)).unwrap()
}

fn from(source: &str) -> PacketMeta {
    PacketMeta { source: source.parse().unwrap(), destination: SERVER.parse().unwrap() }
}

fn access(message: &str) -> SpaMessage {
    SpaMessage {
        random: "1234567890123456".into(),
        username: "alice".into(),
        timestamp: NOW,
        version: "3.0.0".into(),
        message_type: MessageType::Access,
        message: message.into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    }
}

fn with_type(mut m: SpaMessage, t: MessageType, nat: Option<&str>, timeout: Option<u32>) -> SpaMessage {
    m.message_type = t;
    m.nat_access = nat.map(str::to_owned);
    m.client_timeout = timeout;
    m
}

/// The wire text of `msg` under the standard keys (CBC, SHA-256, HMAC-SHA256).
fn seal(msg: &SpaMessage) -> String {
    seal_with(msg, KEY, HMAC_KEY, 1)
}

fn seal_with(msg: &SpaMessage, key: &str, hmac_key: &str, seed: u8) -> String {
    let key = EncryptionKey::new(key.as_bytes().to_vec()).unwrap();
    let hkey = HmacKey::new(hmac_key.as_bytes().to_vec()).unwrap();
    let opts = SealOptions {
        key: &key,
        mode: EncryptionMode::Cbc,
        digest: DigestType::Sha256,
        hmac: Some((&hkey, DigestType::Sha256)),
    };
    packet::seal(msg, &opts, &mut Counter(seed)).unwrap()
}

/// Encrypts and MACs an arbitrary plaintext with the standard keys, to reach the decoder with
/// content our encoder would refuse to write.
fn wrap(plain: &str) -> String {
    let key = EncryptionKey::new(KEY.as_bytes().to_vec()).unwrap();
    mac(cipher::encrypt(plain.as_bytes(), &key, EncryptionMode::Cbc, [5; 8]))
}

/// Like [`wrap`], but `plain` (whole blocks) is sent without the padding block, so its last
/// bytes are read as the padding.
fn wrap_unpadded(plain: &[u8]) -> String {
    assert!(plain.len().is_multiple_of(16));
    let key = EncryptionKey::new(KEY.as_bytes().to_vec()).unwrap();
    let mut ct = cipher::encrypt(plain, &key, EncryptionMode::Cbc, [5; 8]);
    ct.truncate(ct.len() - 16);
    mac(ct)
}

/// Base64, HMAC and prefix stripping of a ciphertext, with the standard HMAC key.
fn mac(ct: Vec<u8>) -> String {
    let mut text = b64::encode(ct);
    let tag = HmacState::new(DigestType::Sha256, HMAC_KEY.as_bytes()).compute(&[text.as_bytes()]);
    text.push_str(&tag.to_b64());
    text.split_off(packet::RIJNDAEL_PREFIX.len())
}

/// `body:digest` with a correct SHA-256 inner digest.
fn with_digest(body: &str) -> String {
    format!("{body}:{}", DigestType::Sha256.digest(body.as_bytes()).to_b64())
}

fn b(s: &str) -> String {
    b64::encode(s)
}

/// A plaintext body whose fields are given as (type, message b64, extra fields).
fn body(user_b64: &str, ts: &str, mtype: &str, msg_b64: &str, extra: &str) -> String {
    format!("1234567890123456:{user_b64}:{ts}:3.0.0:{mtype}:{msg_b64}{extra}")
}

fn good_body() -> String {
    body(&b("alice"), &NOW.to_string(), "1", &b("192.0.2.10,tcp/22"), "")
}

fn run(v: &Verifier, payload: &[u8], meta: PacketMeta, now: u64) -> Verdict {
    v.verify(payload, meta, now, &mut MemoryReplayStore::new(240, 100))
}

fn accept(v: Verdict) -> GrantRequest {
    match v {
        Verdict::Accept(g) => g,
        Verdict::Reject(r) => panic!("rejected: {} (stanza {:?})", r.reason, r.stanza),
    }
}

fn reject(v: Verdict) -> Rejection {
    match v {
        Verdict::Reject(r) => r,
        Verdict::Accept(g) => panic!("accepted by {}: {:?}", g.stanza, g.action),
    }
}

/// A replay store whose journal cannot be written (a full disk): nothing is ever recorded.
struct Unwritable;

impl ReplayStore for Unwritable {
    fn contains(&self, _: &ReplayKey, _: u64) -> bool {
        false
    }
    fn insert(&mut self, _: ReplayKey, _: u64) -> Insert {
        Insert::Unwritable
    }
}

/// A replay store shared between gateways that cannot be reached, under a fail-closed policy.
struct Unreachable;

impl ReplayStore for Unreachable {
    fn contains(&self, _: &ReplayKey, _: u64) -> bool {
        false
    }
    fn insert(&mut self, _: ReplayKey, _: u64) -> Insert {
        Insert::Unavailable
    }
}

/// One negative case: what it does and the reason it must produce.
struct Case {
    name: &'static str,
    expect: RejectReason,
    verdict: Verdict,
}

fn cases() -> Vec<Case> {
    let any = verifier(&[stanza("source = \"any\"")]);
    let good = seal(&access("192.0.2.10,tcp/22"));
    let client = from(CLIENT);
    let mut out = Vec::new();
    let mut case = |name, expect, verdict| out.push(Case { name, expect, verdict });

    case("short", RejectReason::TooShort, run(&any, &good.as_bytes()[..139], client, NOW));
    case("long", RejectReason::TooLong, run(&any, "A".repeat(1501).as_bytes(), client, NOW));
    let prefixed = format!("{}{good}", packet::RIJNDAEL_PREFIX);
    case("prefix", RejectReason::PrefixNotStripped, run(&any, prefixed.as_bytes(), client, NOW));
    let gpg_prefixed = format!("hQ{}", "A".repeat(420));
    case("gpg prefix", RejectReason::PrefixNotStripped, run(&any, gpg_prefixed.as_bytes(), client, NOW));
    // What `fwknop --save-packet` writes: the packet and a newline.
    let newline = format!("{good}\n");
    case("newline", RejectReason::NotBase64, run(&any, newline.as_bytes(), client, NOW));
    let padded = format!("{good}=");
    case("padding", RejectReason::NotBase64, run(&any, padded.as_bytes(), client, NOW));

    let only_net = verifier(&[stanza("source = \"10.0.0.0/8\"")]);
    case("source", RejectReason::NoStanzaForSource, run(&only_net, good.as_bytes(), client, NOW));

    let mut replay = MemoryReplayStore::new(240, 100);
    accept(any.verify(good.as_bytes(), client, NOW, &mut replay));
    case("replay", RejectReason::Replay, any.verify(good.as_bytes(), client, NOW + 1, &mut replay));

    let mut tiny = MemoryReplayStore::new(240, 1);
    accept(any.verify(good.as_bytes(), client, NOW, &mut tiny));
    let second = seal_with(&access("192.0.2.10,tcp/22"), KEY, HMAC_KEY, 2);
    case("store full", RejectReason::ReplayStoreFull, any.verify(second.as_bytes(), client, NOW, &mut tiny));
    case(
        "unwritable",
        RejectReason::StateUnwritable,
        any.verify(good.as_bytes(), client, NOW, &mut Unwritable),
    );
    case(
        "shared store down",
        RejectReason::ReplayStoreDown,
        any.verify(good.as_bytes(), client, NOW, &mut Unreachable),
    );

    let expired = verifier(&[stanza("source = \"any\"\naccess_expire = \"2020-01-01\"")]);
    case("expired", RejectReason::StanzaExpired, run(&expired, good.as_bytes(), client, NOW));

    let wrong_mac = seal_with(&access("192.0.2.10,tcp/22"), KEY, "other mac key", 1);
    case("hmac", RejectReason::HmacMismatch, run(&any, wrong_mac.as_bytes(), client, NOW));

    // A GPG-style packet: HMAC over `hQ` + text, 400 characters or more.
    let ct_text = "B".repeat(360);
    let tag = HmacState::new(DigestType::Sha256, HMAC_KEY.as_bytes()).compute(&[b"hQ", ct_text.as_bytes()]);
    let gpg = format!("{ct_text}{}", tag.to_b64());
    case("gpg", RejectReason::GpgNotSupported, run(&any, gpg.as_bytes(), client, NOW));

    let wrong_key = seal_with(&access("192.0.2.10,tcp/22"), "other key", HMAC_KEY, 1);
    case("decrypt", RejectReason::DecryptFailed, run(&any, wrong_key.as_bytes(), client, NOW));
    // An authentic ciphertext whose plaintext does not start with 16 digits and a colon.
    let not_spa = wrap(&format!("hello:{}", "x".repeat(80)));
    case("not spa plaintext", RejectReason::DecryptFailed, run(&any, not_spa.as_bytes(), client, NOW));

    // Authentic ciphertexts with broken PKCS#7 padding: inconsistent bytes, and a zero.
    for (name, tail) in [("bad padding", &[3u8, 3, 2][..]), ("zero padding", &[0u8][..])] {
        let mut plain = with_digest(&good_body()).into_bytes();
        while !(plain.len() + tail.len()).is_multiple_of(16) {
            plain.push(b'A');
        }
        plain.extend_from_slice(tail);
        let p = wrap_unpadded(&plain);
        case(name, RejectReason::DecryptFailed, run(&any, p.as_bytes(), client, NOW));
    }

    let other = DigestType::Sha256.digest(b"something else").to_b64();
    let mismatch = wrap(&format!("{}:{other}", good_body()));
    case("digest", RejectReason::DigestMismatch, run(&any, mismatch.as_bytes(), client, NOW));

    let ts = NOW.to_string();
    let malformed = [
        ("username", Field::Username, body(&b("a,b"), &ts, "1", &b("192.0.2.10,tcp/22"), "")),
        ("timestamp", Field::Timestamp, body(&b("alice"), "12x", "1", &b("192.0.2.10,tcp/22"), "")),
        ("type", Field::MessageType, body(&b("alice"), &ts, "9", &b("192.0.2.10,tcp/22"), "")),
        ("message", Field::Message, body(&b("alice"), &ts, "1", &b("192.0.2.10,tcp/0"), "")),
        (
            "nat",
            Field::NatAccess,
            body(&b("alice"), &ts, "2", &b("192.0.2.10,tcp/22"), &format!(":{}", b("h,0"))),
        ),
        ("timeout", Field::ClientTimeout, body(&b("alice"), &ts, "3", &b("192.0.2.10,tcp/22"), ":99999999")),
        ("framing", Field::Framing, body(&b("alice"), &ts, "1", &b("192.0.2.10,tcp/22"), ":YQ:YQ")),
    ];
    for (name, field, text) in malformed {
        let p = wrap(&with_digest(&text));
        case(name, RejectReason::MalformedField(field), run(&any, p.as_bytes(), client, NOW));
    }
    let bad_digest_len = wrap(&format!("{}:abc", good_body()));
    case(
        "digest length",
        RejectReason::MalformedField(Field::Digest),
        run(&any, bad_digest_len.as_bytes(), client, NOW),
    );

    case("future", RejectReason::StaleTimestamp, run(&any, good.as_bytes(), client, NOW - 121));
    case("past", RejectReason::StaleTimestamp, run(&any, good.as_bytes(), client, NOW + 121));

    let ports = verifier(&[stanza("source = \"any\"\nopen_ports = \"tcp/80\"")]);
    case("open_ports", RejectReason::PortNotPermitted, run(&ports, good.as_bytes(), client, NOW));
    let restricted = verifier(&[stanza("source = \"any\"\nrestrict_ports = [\"tcp/22\"]")]);
    case("restrict_ports", RejectReason::PortNotPermitted, run(&restricted, good.as_bytes(), client, NOW));

    let user = verifier(&[stanza("source = \"any\"\nrequire_username = \"bob\"")]);
    case("username", RejectReason::UsernameMismatch, run(&user, good.as_bytes(), client, NOW));

    let explicit = verifier(&[stanza("source = \"any\"\nrequire_source_address = true")]);
    let placeholder = seal(&access("0.0.0.0,tcp/22"));
    case(
        "source required",
        RejectReason::SourceAddressRequired,
        run(&explicit, placeholder.as_bytes(), client, NOW),
    );

    let nat =
        seal(&with_type(access("192.0.2.10,tcp/22"), MessageType::NatAccess, Some("10.1.1.2,22"), None));
    case("nat disabled", RejectReason::NatNotEnabled, run(&any, nat.as_bytes(), client, NOW));
    let local = seal(&with_type(
        access("192.0.2.10,tcp/2222"),
        MessageType::LocalNatAccess,
        Some("127.0.0.1,22"),
        None,
    ));
    case("local nat disabled", RejectReason::NatNotEnabled, run(&any, local.as_bytes(), client, NOW));

    let mut cmd = access("192.0.2.10,uptime");
    cmd.message_type = MessageType::Command;
    case("command", RejectReason::CommandNotEnabled, run(&any, seal(&cmd).as_bytes(), client, NOW));
    out
}

/// The modern format's keys in these tests.
fn user_key(seed: u8) -> UserSigningKey {
    UserSigningKey::from_seed(&[seed; 32])
}

fn server_key(seed: u8) -> ServerSecretKey {
    ServerSecretKey::from_bytes(&[seed; 32])
}

/// A modern stanza letting in `user_key(1)` as "alice", plus `extra` TOML lines.
fn modern_stanza(extra: &str) -> AccessStanza {
    let text = format!("format = \"modern\"\nusers = [\"{} alice\"]\n{extra}", user_key(1).public_key());
    toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn modern_verifier(stanzas: &[AccessStanza], nat: bool) -> Verifier {
    Verifier::with_server_key(stanzas, settings(nat, nat), server_key(9)).unwrap()
}

fn modern_request() -> ModernRequest {
    ModernRequest {
        allow: Some(CLIENT.parse().unwrap()),
        ports: vec![ProtoPort::new(Proto::Tcp, 22)],
        source_port: None,
        nat: None,
        username: None,
        client_timeout: None,
    }
}

/// `req` sealed by `user_key(user)` for `server_key(server)` at `now`.
fn modern_seal(req: &ModernRequest, user: u8, server: u8, now: u64) -> String {
    modern::seal(req, &user_key(user), &server_key(server).public_key(), now, &mut Counter(user ^ server))
        .unwrap()
}

/// The modern format's negative cases, and whether each names a stanza: the steps before the
/// signer is known (and the signature itself) name none, since no stanza was involved.
fn modern_cases() -> Vec<(Case, bool)> {
    let v = modern_verifier(&[modern_stanza("source = \"any\"")], false);
    let good = modern_seal(&modern_request(), 1, 9, NOW);
    let client = from(CLIENT);
    let mut out = Vec::new();
    let mut case = |name, expect, named, verdict| out.push((Case { name, expect, verdict }, named));

    let other_version = format!("SPA2.{}", &good[5..]);
    case(
        "modern: version 2",
        RejectReason::UnsupportedVersion,
        false,
        run(&v, other_version.as_bytes(), client, NOW),
    );
    let mut bytes = b64::decode(&good[5..]).unwrap();
    bytes[0] = 2;
    let header_v2 = format!("SPA1.{}", b64::encode(&bytes));
    case(
        "modern: header version 2",
        RejectReason::UnsupportedVersion,
        false,
        run(&v, header_v2.as_bytes(), client, NOW),
    );
    case("modern: short", RejectReason::TooShort, false, run(&v, &good.as_bytes()[..272], client, NOW));
    let long = format!("{good}{}", "A".repeat(1024 - good.len() + 4));
    case("modern: long", RejectReason::TooLong, false, run(&v, long.as_bytes(), client, NOW));
    let not_b64 = good.replacen('A', "-", 1);
    case("modern: alphabet", RejectReason::NotBase64, false, run(&v, not_b64.as_bytes(), client, NOW));
    let padded = format!("{}=", &good[..good.len() - 1]);
    case("modern: padding", RejectReason::NotBase64, false, run(&v, padded.as_bytes(), client, NOW));

    let only_net = modern_verifier(&[modern_stanza("source = \"10.0.0.0/8\"")], false);
    case(
        "modern: source",
        RejectReason::NoStanzaForSource,
        false,
        run(&only_net, good.as_bytes(), client, NOW),
    );
    // A modern packet where only fwknop stanzas match, and the other way round.
    let fwknop_only = verifier(&[stanza("source = \"any\"")]);
    case(
        "modern: no modern stanza",
        RejectReason::NoStanzaForSource,
        false,
        run(&fwknop_only, good.as_bytes(), client, NOW),
    );
    let fwknop_packet = seal(&access("192.0.2.10,tcp/22"));
    case(
        "fwknop: no fwknop stanza",
        RejectReason::NoStanzaForSource,
        false,
        run(&v, fwknop_packet.as_bytes(), client, NOW),
    );

    let other_server = modern_seal(&modern_request(), 1, 8, NOW);
    case(
        "modern: other server",
        RejectReason::MacMismatch,
        false,
        run(&v, other_server.as_bytes(), client, NOW),
    );
    let stale = modern_seal(&modern_request(), 1, 9, NOW - 121);
    case("modern: stale", RejectReason::StaleTimestamp, false, run(&v, stale.as_bytes(), client, NOW));
    let future = modern_seal(&modern_request(), 1, 9, NOW + 121);
    case("modern: future", RejectReason::StaleTimestamp, false, run(&v, future.as_bytes(), client, NOW));

    let mut replay = MemoryReplayStore::new(240, 100);
    accept(v.verify(good.as_bytes(), client, NOW, &mut replay));
    case(
        "modern: replay",
        RejectReason::Replay,
        false,
        v.verify(good.as_bytes(), client, NOW + 1, &mut replay),
    );

    // MAC-valid garbage: what anyone who knows the server's public key can send.
    let mut garbage = vec![1u8];
    garbage.extend_from_slice(&NOW.to_be_bytes());
    garbage.extend((0..32 + 160 + 16).map(|i| (i * 7) as u8));
    let tag = HmacState::new(DigestType::Sha256, &modern::mac_key(&server_key(9).public_key()))
        .compute(&[&garbage]);
    garbage.extend_from_slice(&tag.as_bytes()[..16]);
    let garbage = format!("SPA1.{}", b64::encode(&garbage));
    case(
        "modern: mac-valid garbage",
        RejectReason::DecryptFailed,
        false,
        run(&v, garbage.as_bytes(), client, NOW),
    );

    let s_pub = server_key(9).public_key();
    let body = modern::Body { nonce: [3; 16], request: modern_request() }.encode().unwrap();
    let mut longer = body.to_vec();
    longer.push(0);
    let odd = modern::seal_raw_body(&longer, &user_key(1), &s_pub, NOW, &mut Counter(4)).unwrap();
    case(
        "modern: plaintext length",
        RejectReason::MalformedField(Field::Framing),
        false,
        run(&v, odd.as_bytes(), client, NOW),
    );
    let stranger = modern_seal(&modern_request(), 2, 9, NOW);
    case("modern: unknown user", RejectReason::UnknownUser, false, run(&v, stranger.as_bytes(), client, NOW));
    let forged = modern::seal_forged(
        &body,
        user_key(1).public_key().to_bytes(),
        [7; 64],
        &s_pub,
        NOW,
        &mut Counter(5),
    )
    .unwrap();
    case(
        "modern: forged signature",
        RejectReason::BadSignature,
        false,
        run(&v, forged.as_bytes(), client, NOW),
    );
    // A signature by the listed user, but over another server's key: cannot be re-sealed.
    let mut other = [0u8; 64];
    let resealed = {
        let eph = [0x44u8; 32];
        let enc = modern::hpke_values(&eph, &s_pub).unwrap().enc;
        let mut header = [1u8; 9];
        header[1..].copy_from_slice(&NOW.to_be_bytes());
        let t = modern::signature_transcript(
            &server_key(8).public_key(),
            &header,
            &enc,
            &user_key(1).public_key(),
            &body,
        );
        use ed25519_dalek::Signer as _;
        other.copy_from_slice(&ed25519_dalek::SigningKey::from_bytes(&[1; 32]).sign(&t).to_bytes());
        let mut e = eph.to_vec();
        modern::seal_forged(
            &body,
            user_key(1).public_key().to_bytes(),
            other,
            &s_pub,
            NOW,
            &mut Drain(&mut e),
        )
        .unwrap()
    };
    case(
        "modern: signed for another server",
        RejectReason::BadSignature,
        false,
        run(&v, resealed.as_bytes(), client, NOW),
    );

    let mut bad_flags = body.to_vec();
    bad_flags[16] = 0x80;
    let bad_flags = modern::seal_raw_body(&bad_flags, &user_key(1), &s_pub, NOW, &mut Counter(6)).unwrap();
    case(
        "modern: flags",
        RejectReason::MalformedField(Field::Framing),
        true,
        run(&v, bad_flags.as_bytes(), client, NOW),
    );
    let mut dirty_pad = body.to_vec();
    *dirty_pad.last_mut().unwrap() = 1;
    let dirty_pad = modern::seal_raw_body(&dirty_pad, &user_key(1), &s_pub, NOW, &mut Counter(7)).unwrap();
    case(
        "modern: padding bytes",
        RejectReason::MalformedField(Field::Framing),
        true,
        run(&v, dirty_pad.as_bytes(), client, NOW),
    );
    let dash = modern_seal(&ModernRequest { username: Some("-rf".into()), ..modern_request() }, 1, 9, NOW);
    case(
        "modern: dash username",
        RejectReason::MalformedField(Field::Username),
        true,
        run(&v, dash.as_bytes(), client, NOW),
    );

    let mut tiny = MemoryReplayStore::new(240, 1);
    accept(v.verify(good.as_bytes(), client, NOW, &mut tiny));
    let second = modern_seal(&modern_request(), 1, 9, NOW + 1);
    case(
        "modern: store full",
        RejectReason::ReplayStoreFull,
        true,
        v.verify(second.as_bytes(), client, NOW, &mut tiny),
    );
    case(
        "modern: unwritable",
        RejectReason::StateUnwritable,
        true,
        v.verify(good.as_bytes(), client, NOW, &mut Unwritable),
    );
    case(
        "modern: shared store down",
        RejectReason::ReplayStoreDown,
        true,
        v.verify(good.as_bytes(), client, NOW, &mut Unreachable),
    );

    let expired =
        modern_verifier(&[modern_stanza("source = \"any\"\naccess_expire = \"2020-01-01\"")], false);
    case("modern: expired", RejectReason::StanzaExpired, true, run(&expired, good.as_bytes(), client, NOW));
    let ports = modern_verifier(&[modern_stanza("source = \"any\"\nopen_ports = \"tcp/80\"")], false);
    case(
        "modern: open_ports",
        RejectReason::PortNotPermitted,
        true,
        run(&ports, good.as_bytes(), client, NOW),
    );
    let user = modern_verifier(&[modern_stanza("source = \"any\"\nrequire_username = \"bob\"")], false);
    case(
        "modern: require_username",
        RejectReason::UsernameMismatch,
        true,
        run(&user, good.as_bytes(), client, NOW),
    );
    let explicit =
        modern_verifier(&[modern_stanza("source = \"any\"\nrequire_source_address = true")], false);
    let own_source = modern_seal(&ModernRequest { allow: None, ..modern_request() }, 1, 9, NOW);
    case(
        "modern: source required",
        RejectReason::SourceAddressRequired,
        true,
        run(&explicit, own_source.as_bytes(), client, NOW),
    );
    let nat = modern_seal(
        &ModernRequest {
            nat: Some(NatRequest::Forward { host: NatHost::Ip("10.1.1.2".parse().unwrap()), port: 22 }),
            ..modern_request()
        },
        1,
        9,
        NOW,
    );
    case("modern: nat disabled", RejectReason::NatNotEnabled, true, run(&v, nat.as_bytes(), client, NOW));
    let local = modern_seal(
        &ModernRequest { nat: Some(NatRequest::Local { port: 22 }), ..modern_request() },
        1,
        9,
        NOW,
    );
    case(
        "modern: local nat disabled",
        RejectReason::NatNotEnabled,
        true,
        run(&v, local.as_bytes(), client, NOW),
    );
    out
}

/// Hands out the given bytes, then zeros.
struct Drain<'a>(&'a mut Vec<u8>);

impl Entropy for Drain<'_> {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = if self.0.is_empty() { 0 } else { self.0.remove(0) };
        }
    }
}

#[test]
fn every_modern_reject_reason_names_the_right_stanza() {
    for (c, named) in modern_cases() {
        let r = reject(c.verdict);
        assert_eq!(r.reason, c.expect, "case {}", c.name);
        assert_eq!(r.stanza.is_some(), named, "case {}: stanza {:?}", c.name, r.stanza);
    }
}

#[test]
fn every_reject_reason_is_produced_by_verify() {
    let mut seen = BTreeSet::new();
    for (c, _) in modern_cases() {
        assert_eq!(reject(c.verdict).reason, c.expect, "case {}", c.name);
        seen.insert(c.expect.code());
    }
    for c in cases() {
        let r = reject(c.verdict);
        assert_eq!(r.reason, c.expect, "case {}", c.name);
        // The gates before any cryptography name no stanza (a known replay is one of them).
        let cheap = matches!(
            r.reason,
            RejectReason::TooShort
                | RejectReason::TooLong
                | RejectReason::PrefixNotStripped
                | RejectReason::NotBase64
                | RejectReason::NoStanzaForSource
                | RejectReason::Replay
        );
        assert_eq!(r.stanza.is_none(), cheap, "case {}: stanza {:?}", c.name, r.stanza);
        seen.insert(r.reason.code());
    }
    // The GPG signature reasons need the `gpg` feature and keys; `tests/gpg.rs` covers them.
    let gpg = ["signature_missing", "signer_not_allowed"];
    let all: BTreeSet<_> = RejectReason::ALL_CODES.into_iter().filter(|c| !gpg.contains(c)).collect();
    assert_eq!(seen, all, "every reason code must be covered");
}

#[test]
fn a_rejected_junk_packet_does_not_enter_the_replay_store() {
    let v = verifier(&[stanza("source = \"any\"")]);
    let mut replay = MemoryReplayStore::new(240, 100);
    let junk = seal_with(&access("192.0.2.10,tcp/22"), KEY, "other mac key", 1);
    for _ in 0..3 {
        assert_eq!(
            reject(v.verify(junk.as_bytes(), from(CLIENT), NOW, &mut replay)).reason,
            RejectReason::HmacMismatch
        );
    }
    assert!(replay.is_empty());
    // An authentic packet refused by policy is still recorded: it cannot be replayed later.
    let strict = verifier(&[stanza("source = \"any\"\nopen_ports = \"tcp/80\"")]);
    let good = seal(&access("192.0.2.10,tcp/22"));
    assert_eq!(
        reject(strict.verify(good.as_bytes(), from(CLIENT), NOW, &mut replay)).reason,
        RejectReason::PortNotPermitted
    );
    assert_eq!(replay.len(), 1);
    assert_eq!(
        reject(v.verify(good.as_bytes(), from(CLIENT), NOW, &mut replay)).reason,
        RejectReason::Replay
    );
}

#[test]
fn first_stanza_that_fully_succeeds_wins() {
    let stanzas = [
        stanza("name = \"web\"\nsource = \"any\"\nopen_ports = \"tcp/80\""),
        stanza("name = \"ssh\"\nsource = \"192.0.2.0/24\"\nopen_ports = \"tcp/22\""),
        stanza("name = \"all\"\nsource = \"any\""),
    ];
    let v = verifier(&stanzas);
    let g = accept(run(&v, seal(&access("192.0.2.10,tcp/22")).as_bytes(), from(CLIENT), NOW));
    assert_eq!((g.stanza_index, &*g.stanza), (1, "ssh"));
    let g = accept(run(&v, seal(&access("192.0.2.10,tcp/80")).as_bytes(), from(CLIENT), NOW));
    assert_eq!(&*g.stanza, "web");
    let g = accept(run(&v, seal(&access("192.0.2.10,udp/53")).as_bytes(), from(CLIENT), NOW));
    assert_eq!(&*g.stanza, "all");
}

#[test]
fn the_reason_of_the_stanza_that_got_furthest_is_reported() {
    let stanzas = [
        toml::from_str::<AccessStanza>(
            "name = \"other keys\"\nsource = \"any\"\nkey = \"x\"\nhmac_key = \"y\"",
        )
        .unwrap(),
        stanza("name = \"ports\"\nsource = \"any\"\nopen_ports = \"tcp/80\""),
    ];
    let r =
        reject(run(&verifier(&stanzas), seal(&access("192.0.2.10,tcp/22")).as_bytes(), from(CLIENT), NOW));
    assert_eq!(r.reason, RejectReason::PortNotPermitted);
    assert_eq!(r.stanza.as_deref(), Some("ports"));
}

#[test]
fn zero_address_means_the_packet_source() {
    let v = verifier(&[stanza("source = \"any\"")]);
    let g = accept(run(&v, seal(&access("0.0.0.0,tcp/22")).as_bytes(), from("203.0.113.5"), NOW));
    assert_eq!(g.allowed_source, "203.0.113.5".parse::<IpAddr>().unwrap());
    assert_eq!(g.packet_source, "203.0.113.5".parse::<IpAddr>().unwrap());
    // An explicit address is taken as is (the client may knock for another host).
    let g = accept(run(&v, seal(&access("192.0.2.99,tcp/22")).as_bytes(), from("203.0.113.5"), NOW));
    assert_eq!(g.allowed_source, "192.0.2.99".parse::<IpAddr>().unwrap());
    // require_source_address accepts explicit addresses.
    let strict = verifier(&[stanza("source = \"any\"\nrequire_source_address = true")]);
    let g = accept(run(&strict, seal(&access("192.0.2.99,tcp/22")).as_bytes(), from(CLIENT), NOW));
    assert_eq!(g.allowed_source, "192.0.2.99".parse::<IpAddr>().unwrap());
}

#[test]
fn open_ports_must_contain_every_requested_port() {
    let v = verifier(&[stanza("source = \"any\"\nopen_ports = \"tcp/22, udp/53\"")]);
    let g = accept(run(&v, seal(&access("192.0.2.10,tcp/22,udp/53")).as_bytes(), from(CLIENT), NOW));
    let want = vec![ProtoPort::new(Proto::Tcp, 22), ProtoPort::new(Proto::Udp, 53)];
    assert_eq!(g.action, Action::Open { access: Access::Ports(want.into()), nat: None });
    let r = reject(run(&v, seal(&access("192.0.2.10,tcp/22,tcp/53")).as_bytes(), from(CLIENT), NOW));
    assert_eq!(r.reason, RejectReason::PortNotPermitted);
    let r = reject(run(&v, seal(&access("192.0.2.10,udp/22")).as_bytes(), from(CLIENT), NOW));
    assert_eq!(r.reason, RejectReason::PortNotPermitted);
}

#[test]
fn restrict_ports_denies_any_listed_port() {
    let v = verifier(&[stanza("source = \"any\"\nrestrict_ports = \"tcp/23\"")]);
    accept(run(&v, seal(&access("192.0.2.10,tcp/22")).as_bytes(), from(CLIENT), NOW));
    let r = reject(run(&v, seal(&access("192.0.2.10,tcp/22,tcp/23")).as_bytes(), from(CLIENT), NOW));
    assert_eq!(r.reason, RejectReason::PortNotPermitted);
}

#[test]
fn client_timeout_is_capped_by_max_fw_timeout() {
    let v = verifier(&[stanza("source = \"any\"\nfw_access_timeout = 45\nmax_fw_timeout = \"5m\"")]);
    let timed =
        |t| seal(&with_type(access("192.0.2.10,tcp/22"), MessageType::ClientTimeoutAccess, None, Some(t)));
    assert_eq!(accept(run(&v, timed(60).as_bytes(), from(CLIENT), NOW)).timeout, 60);
    assert_eq!(accept(run(&v, timed(3600).as_bytes(), from(CLIENT), NOW)).timeout, 300);
    let plain = seal(&access("192.0.2.10,tcp/22"));
    assert_eq!(accept(run(&v, plain.as_bytes(), from(CLIENT), NOW)).timeout, 45);
    // Defaults: 30 s without a client timeout, cap 300 s.
    let d = verifier(&[stanza("source = \"any\"")]);
    assert_eq!(accept(run(&d, plain.as_bytes(), from(CLIENT), NOW)).timeout, 30);
    assert_eq!(accept(run(&d, timed(65536).as_bytes(), from(CLIENT), NOW)).timeout, 300);
}

#[test]
fn timestamps_within_the_window_either_way_are_accepted() {
    let v = verifier(&[stanza("source = \"any\"")]);
    let p = seal(&access("192.0.2.10,tcp/22"));
    accept(run(&v, p.as_bytes(), from(CLIENT), NOW - 120));
    accept(run(&v, p.as_bytes(), from(CLIENT), NOW + 120));
    for now in [NOW - 121, NOW + 121, 0, NOW + 86_400] {
        assert_eq!(reject(run(&v, p.as_bytes(), from(CLIENT), now)).reason, RejectReason::StaleTimestamp);
    }
}

#[test]
fn require_username() {
    let v = verifier(&[stanza("source = \"any\"\nrequire_username = \"alice\"")]);
    assert_eq!(
        accept(run(&v, seal(&access("192.0.2.10,tcp/22")).as_bytes(), from(CLIENT), NOW)).username,
        "alice"
    );
    let mut bob = access("192.0.2.10,tcp/22");
    bob.username = "bob".into();
    assert_eq!(
        reject(run(&v, seal(&bob).as_bytes(), from(CLIENT), NOW)).reason,
        RejectReason::UsernameMismatch
    );
}

#[test]
fn nat_requests_need_forwarding_and_follow_the_stanza() {
    let nat =
        seal(&with_type(access("192.0.2.10,tcp/8022"), MessageType::NatAccess, Some("10.1.1.2,22"), None));
    // Disabled globally.
    let off = verifier(&[stanza("source = \"any\"")]);
    assert_eq!(reject(run(&off, nat.as_bytes(), from(CLIENT), NOW)).reason, RejectReason::NatNotEnabled);
    // Enabled: DNAT to what the client asked for.
    let on = nat_verifier(&[stanza("source = \"any\"")]);
    let g = accept(run(&on, nat.as_bytes(), from(CLIENT), NOW));
    assert_eq!(
        g.action,
        Action::Open {
            access: Access::Ports(vec![ProtoPort::new(Proto::Tcp, 8022)].into()),
            nat: Some(Nat::Dnat {
                host: NatHost::Ip("10.1.1.2".parse().unwrap()),
                port: Some(22),
                snat: None
            }),
        }
    );
    // With a client timeout (type 4).
    let timed = seal(&with_type(
        access("192.0.2.10,tcp/8022"),
        MessageType::ClientTimeoutNatAccess,
        Some("db.lan,5432"),
        Some(90),
    ));
    let g = accept(run(&on, timed.as_bytes(), from(CLIENT), NOW));
    assert_eq!(g.timeout, 90);
    assert!(
        matches!(g.action, Action::Open { nat: Some(Nat::Dnat { host: NatHost::Name(ref n), port: Some(5432), .. }), .. } if n == "db.lan")
    );
    // disable_dnat: route without translation.
    let route = nat_verifier(&[stanza("source = \"any\"\ndisable_dnat = true")]);
    let g = accept(run(&route, nat.as_bytes(), from(CLIENT), NOW));
    assert!(matches!(g.action, Action::Open { nat: Some(Nat::Route { snat: None }), .. }));
}

#[test]
fn local_nat_needs_enable_local_nat() {
    for t in [MessageType::LocalNatAccess, MessageType::ClientTimeoutLocalNatAccess] {
        let timeout = t.has_timeout().then_some(77);
        let p = seal(&with_type(access("192.0.2.10,tcp/2222"), t, Some("127.0.0.1,22"), timeout));
        let only_fwd = Verifier::new(&[stanza("source = \"any\"")], settings(true, false)).unwrap();
        assert_eq!(
            reject(run(&only_fwd, p.as_bytes(), from(CLIENT), NOW)).reason,
            RejectReason::NatNotEnabled
        );
        let local = Verifier::new(&[stanza("source = \"any\"")], settings(false, true)).unwrap();
        let g = accept(run(&local, p.as_bytes(), from(CLIENT), NOW));
        assert_eq!(
            g.action,
            Action::Open {
                access: Access::Ports(vec![ProtoPort::new(Proto::Tcp, 2222)].into()),
                nat: Some(Nat::Redirect { port: 22 }),
            }
        );
        assert_eq!(g.timeout, timeout.unwrap_or(30));
    }
}

#[test]
fn force_nat_translates_plain_and_nat_requests() {
    let v =
        nat_verifier(&[stanza("source = \"any\"\nforce_nat = \"10.9.9.9 2222\"\nforce_snat = \"10.9.9.1\"")]);
    let forced = Some(Nat::Dnat {
        host: NatHost::Ip("10.9.9.9".parse().unwrap()),
        port: Some(2222),
        snat: Some(Snat::To("10.9.9.1".parse().unwrap())),
    });
    let g = accept(run(&v, seal(&access("192.0.2.10,tcp/22")).as_bytes(), from(CLIENT), NOW));
    assert_eq!(
        g.action,
        Action::Open {
            access: Access::Ports(vec![ProtoPort::new(Proto::Tcp, 22)].into()),
            nat: forced.clone()
        }
    );
    // The client's own NAT target is overridden.
    let nat =
        seal(&with_type(access("192.0.2.10,tcp/22"), MessageType::NatAccess, Some("10.1.1.2,22"), None));
    let g = accept(run(&v, nat.as_bytes(), from(CLIENT), NOW));
    assert_eq!(
        g.action,
        Action::Open { access: Access::Ports(vec![ProtoPort::new(Proto::Tcp, 22)].into()), nat: forced }
    );
}

#[test]
fn forward_all_opens_everything() {
    let v = nat_verifier(&[stanza(
        "source = \"any\"\nforward_all = true\ndisable_dnat = true\nforce_masquerade = true",
    )]);
    let g = accept(run(&v, seal(&access("192.0.2.10,tcp/22")).as_bytes(), from(CLIENT), NOW));
    assert_eq!(
        g.action,
        Action::Open { access: Access::All, nat: Some(Nat::Route { snat: Some(Snat::Masquerade) }) }
    );
    let v = nat_verifier(&[stanza("source = \"any\"\nforward_all = true\nforce_nat = \"10.9.9.9 22\"")]);
    let g = accept(run(&v, seal(&access("192.0.2.10,tcp/22")).as_bytes(), from(CLIENT), NOW));
    assert_eq!(
        g.action,
        Action::Open {
            access: Access::All,
            nat: Some(Nat::Dnat { host: NatHost::Ip("10.9.9.9".parse().unwrap()), port: None, snat: None }),
        }
    );
}

#[test]
fn command_messages_need_enable_cmd_exec() {
    let mut cmd = access("192.0.2.10,systemctl restart app");
    cmd.message_type = MessageType::Command;
    let v = verifier(&[stanza("source = \"any\"\nenable_cmd_exec = true")]);
    let g = accept(run(&v, seal(&cmd).as_bytes(), from(CLIENT), NOW));
    assert_eq!(g.action, Action::Command("systemctl restart app".into()));
}

#[test]
fn stanza_expiry() {
    // 2027-01-15 is after NOW (2027-01-15T08:00:00Z); the stanza stops at its midnight.
    let v = verifier(&[stanza("source = \"any\"\naccess_expire = \"2027-01-16\"")]);
    let p = seal(&access("192.0.2.10,tcp/22"));
    accept(run(&v, p.as_bytes(), from(CLIENT), NOW));
    let v = verifier(&[stanza("source = \"any\"\naccess_expire = \"01/15/2027\"")]);
    assert_eq!(reject(run(&v, p.as_bytes(), from(CLIENT), NOW)).reason, RejectReason::StanzaExpired);
    // An expired stanza is skipped; a later one still applies.
    let v = verifier(&[
        stanza("name = \"old\"\nsource = \"any\"\naccess_expire = 1"),
        stanza("name = \"new\"\nsource = \"any\""),
    ]);
    assert_eq!(&*accept(run(&v, p.as_bytes(), from(CLIENT), NOW)).stanza, "new");
}

#[test]
fn destination_must_match() {
    let v = verifier(&[stanza("source = \"any\"\ndestination = \"198.51.100.0/30\"")]);
    let p = seal(&access("192.0.2.10,tcp/22"));
    let g = accept(run(&v, p.as_bytes(), from(CLIENT), NOW));
    assert_eq!(g.packet_destination, SERVER.parse::<IpAddr>().unwrap());
    // The stanza restricts destinations, so the grant is for that address only.
    assert_eq!(g.destination, Some(SERVER.parse::<IpAddr>().unwrap()));
    let elsewhere =
        PacketMeta { source: CLIENT.parse().unwrap(), destination: "198.51.100.9".parse().unwrap() };
    assert_eq!(reject(run(&v, p.as_bytes(), elsewhere, NOW)).reason, RejectReason::NoStanzaForSource);
}

#[test]
fn ipv6_sources_and_allow_addresses() {
    let v = verifier(&[stanza("source = \"2001:db8::/32\"")]);
    let v6 = from("2001:db8::7");
    // `::` is the IPv6 "use my source" placeholder.
    let g = accept(run(&v, seal(&access("::,tcp/22")).as_bytes(), v6, NOW));
    assert_eq!(g.allowed_source, "2001:db8::7".parse::<IpAddr>().unwrap());
    let g = accept(run(&v, seal(&access("2001:db8::99,tcp/22")).as_bytes(), v6, NOW));
    assert_eq!(g.allowed_source, "2001:db8::99".parse::<IpAddr>().unwrap());
    let r = reject(run(&v, seal(&access("2001:db8::99,tcp/22")).as_bytes(), from(CLIENT), NOW));
    assert_eq!(r.reason, RejectReason::NoStanzaForSource);
}

#[test]
fn ipv4_mapped_sources_match_ipv4_stanzas() {
    let v = verifier(&[stanza("source = \"192.0.2.0/24\"")]);
    let mapped = PacketMeta {
        source: "::ffff:192.0.2.10".parse().unwrap(),
        destination: "::ffff:198.51.100.1".parse().unwrap(),
    };
    let g = accept(run(&v, seal(&access("0.0.0.0,tcp/22")).as_bytes(), mapped, NOW));
    // Reported as plain IPv4, so the firewall rule is an IPv4 rule.
    assert_eq!(g.allowed_source, CLIENT.parse::<IpAddr>().unwrap());
    assert_eq!(g.packet_source, CLIENT.parse::<IpAddr>().unwrap());
    assert_eq!(g.packet_destination, SERVER.parse::<IpAddr>().unwrap());
    assert_eq!(g.destination, None, "no destination list: the grant is for any local address");
    assert!(v.source_is_known("::ffff:192.0.2.200".parse().unwrap()));
    assert!(!v.source_is_known("::ffff:192.0.3.1".parse().unwrap()));
}

#[test]
fn equal_keys_are_refused_when_compiling() {
    let same: AccessStanza =
        toml::from_str("name = \"bad\"\nsource = \"any\"\nkey = \"same\"\nhmac_key = \"same\"").unwrap();
    match Verifier::new(&[stanza("source = \"any\""), same], Settings::default()) {
        Err(Error::Stanza { name, source }) => {
            assert_eq!(name, "bad");
            assert!(matches!(*source, Error::KeysEqual));
        }
        other => panic!("expected KeysEqual, got {other:?}"),
    }
    // The same bytes given once as text and once as base64 are equal too.
    let b64_same: AccessStanza =
        toml::from_str("source = \"any\"\nkey = \"same\"\nhmac_key_base64 = \"c2FtZQ==\"").unwrap();
    assert!(Verifier::new(&[b64_same], Settings::default()).is_err());
    assert!(matches!(Verifier::new(&[], Settings::default()), Err(Error::NoStanzas)));
}

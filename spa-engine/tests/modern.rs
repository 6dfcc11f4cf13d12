//! The modern format through `Verifier::verify`, with stanzas written in TOML as an admin would:
//! round trips of arbitrary requests, single-byte mutations, the wrong server key, unknown and
//! revoked users, replays, stanza rules, sizes.

use std::net::IpAddr;

use proptest::prelude::*;
use spa_engine::access::NatHost;
use spa_engine::modern::{self, MAX_PORTS, ModernRequest, NatRequest};
use spa_engine::verdict::{Field, Rejection};
use spa_engine::{
    AccessStanza, Action, Entropy, Error, Format, GrantRequest, MemoryReplayStore, Nat, PacketMeta, Proto,
    ProtoPort, RejectReason, ServerSecretKey, Settings, UserSigningKey, Verdict, Verifier, b64,
};

const NOW: u64 = 1_800_000_000;
const CLIENT: &str = "192.0.2.10";

struct Seeded(u64);

impl Entropy for Seeded {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *b = (z ^ (z >> 31)) as u8;
        }
    }
}

fn user(n: u8) -> UserSigningKey {
    UserSigningKey::generate(&mut Seeded(u64::from(n) << 8))
}

fn server(n: u8) -> ServerSecretKey {
    ServerSecretKey::generate(&mut Seeded(u64::from(n) << 16 | 1))
}

fn parse(text: &str) -> AccessStanza {
    toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A modern stanza listing `users` (`(key number, name)`), plus `extra` TOML lines.
fn stanza(users: &[(u8, Option<&str>)], extra: &str) -> AccessStanza {
    let list: Vec<String> = users
        .iter()
        .map(|(n, name)| {
            format!("\"{}{}\"", user(*n).public_key(), name.map(|s| format!(" {s}")).unwrap_or_default())
        })
        .collect();
    parse(&format!("format = \"modern\"\nsource = \"any\"\nusers = [{}]\n{extra}", list.join(", ")))
}

fn settings() -> Settings {
    Settings { max_packet_age: 120, enable_forwarding: true, enable_local_nat: true }
}

fn verifier(stanzas: &[AccessStanza]) -> Verifier {
    Verifier::with_server_key(stanzas, settings(), server(1)).unwrap()
}

fn from(source: &str) -> PacketMeta {
    PacketMeta { source: source.parse().unwrap(), destination: "198.51.100.1".parse().unwrap() }
}

fn request() -> ModernRequest {
    ModernRequest {
        allow: None,
        ports: vec![ProtoPort::new(Proto::Tcp, 22)],
        source_port: None,
        nat: None,
        username: None,
        client_timeout: None,
    }
}

fn seal_by(req: &ModernRequest, user_n: u8, server_n: u8, now: u64, seed: u64) -> String {
    modern::seal(req, &user(user_n), &server(server_n).public_key(), now, &mut Seeded(seed)).unwrap()
}

fn run(v: &Verifier, wire: &str, meta: PacketMeta, now: u64) -> Verdict {
    v.verify(wire.as_bytes(), meta, now, &mut MemoryReplayStore::new(240, 100))
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

fn ip_strategy() -> impl Strategy<Value = IpAddr> {
    prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u16; 8]>().prop_map(IpAddr::from),]
        .prop_filter("unspecified means the packet's source", |ip| !ip.is_unspecified())
}

fn request_strategy() -> impl Strategy<Value = ModernRequest> {
    let port = (prop::bool::ANY, 1u16..=65535)
        .prop_map(|(tcp, p)| ProtoPort::new(if tcp { Proto::Tcp } else { Proto::Udp }, p));
    let host = prop_oneof![
        ip_strategy().prop_map(NatHost::Ip),
        "[a-z0-9]([a-z0-9.-]{0,40}[a-z])?".prop_map(NatHost::Name),
    ]
    .prop_filter("a name that reads as an address is one", |h| match h {
        NatHost::Name(n) => matches!(n.parse::<NatHost>(), Ok(NatHost::Name(_))),
        NatHost::Ip(_) => true,
    });
    let nat = prop_oneof![
        Just(None),
        (host, 1u16..=65535).prop_map(|(host, port)| Some(NatRequest::Forward { host, port })),
        (1u16..=65535).prop_map(|port| Some(NatRequest::Local { port })),
    ];
    (
        prop::option::of(ip_strategy()),
        prop::collection::vec(port, 1..=MAX_PORTS),
        prop::option::of(1u16..=65535),
        nat,
        prop::option::of(
            "[a-zA-Z0-9_.@ ()!#$%&'{}~^`-]{1,48}".prop_filter("no leading dash", |u| !u.starts_with('-')),
        ),
        prop::option::of(1u32..=65536),
    )
        .prop_map(|(allow, ports, source_port, nat, username, client_timeout)| ModernRequest {
            allow,
            ports,
            source_port,
            nat,
            username,
            client_timeout,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever a client may ask for seals below 1200 bytes, opens to itself and is accepted
    /// with exactly what it asked.
    #[test]
    fn any_request_round_trips(req in request_strategy(), seed in any::<u64>(), skew in 0u64..=240) {
        let wire = seal_by(&req, 1, 1, NOW, seed);
        prop_assert!(wire.len() <= modern::MAX_TEXT_LEN && wire.len() < 1200, "{} bytes", wire.len());
        let opened = modern::open(wire.as_bytes(), &server(1)).unwrap();
        prop_assert_eq!(&opened.body.request, &req);
        prop_assert_eq!(opened.user, user(1).public_key());

        let v = verifier(&[stanza(&[(1, Some("alice"))], "max_fw_timeout = 70000")]);
        let now = NOW - 120 + skew;
        let g = accept(run(&v, &wire, from(CLIENT), now));
        prop_assert_eq!(g.allowed_source, req.allow.map_or(CLIENT.parse().unwrap(), spa_engine::stanza::canonical));
        prop_assert_eq!(g.username, "alice");
        prop_assert_eq!(g.user_key, Some(user(1).public_key()));
        prop_assert_eq!(&g.client_username, &req.username);
        prop_assert_eq!(g.source_port, req.source_port);
        prop_assert_eq!(g.timestamp, NOW);
        prop_assert_eq!(g.timeout, req.client_timeout.unwrap_or(30));
        let Action::Open { access, nat } = g.action else { panic!("not an open") };
        prop_assert_eq!(access, spa_engine::Access::Ports(req.ports.clone().into()));
        match (&req.nat, nat) {
            (None, None) => {}
            (Some(NatRequest::Forward { host, port }), Some(Nat::Dnat { host: h, port: p, snat: None })) => {
                prop_assert_eq!((host, Some(*port)), (&h, p));
            }
            (Some(NatRequest::Local { port }), Some(Nat::Redirect { port: p })) => prop_assert_eq!(*port, p),
            (want, got) => prop_assert!(false, "nat {:?} became {:?}", want, got),
        }
    }

    /// Changing any one character of the wire text, to anything else, gets the packet
    /// refused, and nothing is recorded.
    #[test]
    fn any_single_byte_mutation_is_refused(pick in any::<prop::sample::Index>(), to in any::<u8>(), seed in any::<u64>()) {
        let v = verifier(&[stanza(&[(1, None)], "")]);
        let mut wire = seal_by(&request(), 1, 1, NOW, seed).into_bytes();
        let i = pick.index(wire.len());
        prop_assume!(wire[i] != to);
        wire[i] = to;
        let mut replay = MemoryReplayStore::new(240, 100);
        match v.verify(&wire, from(CLIENT), NOW, &mut replay) {
            Verdict::Reject(_) => {}
            Verdict::Accept(g) => prop_assert!(false, "mutated packet accepted: {:?}", g),
        }
        prop_assert!(replay.is_empty());
    }

    /// Flipping any bit of the binary packet (re-encoded, so it reaches the MAC) is caught by
    /// the MAC, or by the version check for the first byte: no public-key work is done for it.
    #[test]
    fn any_bit_flip_is_caught_before_public_key_work(bit in any::<prop::sample::Index>(), seed in any::<u64>()) {
        let v = verifier(&[stanza(&[(1, None)], "")]);
        let wire = seal_by(&request(), 1, 1, NOW, seed);
        let mut packet = b64::decode(&wire[5..]).unwrap();
        let bit = bit.index(packet.len() * 8);
        packet[bit / 8] ^= 1 << (bit % 8);
        let mutated = format!("SPA1.{}", b64::encode(&packet));
        let want = if bit < 8 { RejectReason::UnsupportedVersion } else { RejectReason::MacMismatch };
        prop_assert_eq!(reject(run(&v, &mutated, from(CLIENT), NOW)).reason, want);
    }
}

#[test]
fn a_packet_for_another_server_fails_the_mac() {
    let v = verifier(&[stanza(&[(1, None)], "")]);
    let wire = seal_by(&request(), 1, 2, NOW, 1);
    assert_eq!(reject(run(&v, &wire, from(CLIENT), NOW)).reason, RejectReason::MacMismatch);
    // The server it was sealed for takes it.
    let other = Verifier::with_server_key(&[stanza(&[(1, None)], "")], settings(), server(2)).unwrap();
    accept(run(&other, &wire, from(CLIENT), NOW));
}

#[test]
fn unknown_and_revoked_users_are_refused_and_others_stay_in() {
    let both = verifier(&[stanza(&[(1, Some("alice")), (2, Some("bob"))], "")]);
    let alice = seal_by(&request(), 1, 1, NOW, 1);
    let bob = seal_by(&request(), 2, 1, NOW, 2);
    let carol = seal_by(&request(), 3, 1, NOW, 3);
    assert_eq!(accept(run(&both, &alice, from(CLIENT), NOW)).username, "alice");
    assert_eq!(accept(run(&both, &bob, from(CLIENT), NOW)).username, "bob");
    let r = reject(run(&both, &carol, from(CLIENT), NOW));
    assert_eq!((r.reason, r.stanza), (RejectReason::UnknownUser, None));

    // Revoking bob is removing his line: the same packet is now an unknown user's, and alice
    // is unaffected.
    let revoked = verifier(&[stanza(&[(1, Some("alice"))], "")]);
    assert_eq!(reject(run(&revoked, &bob, from(CLIENT), NOW)).reason, RejectReason::UnknownUser);
    assert_eq!(accept(run(&revoked, &alice, from(CLIENT), NOW)).username, "alice");
}

#[test]
fn replays_are_refused_and_junk_is_never_recorded() {
    let v = verifier(&[stanza(&[(1, None)], "open_ports = \"tcp/80\"")]);
    let mut replay = MemoryReplayStore::new(240, 100);
    // Junk of every kind that gets past the MAC: nothing recorded.
    let stranger = seal_by(&request(), 2, 1, NOW, 1);
    let stale = seal_by(&request(), 1, 1, NOW - 500, 2);
    let other_server = seal_by(&request(), 1, 2, NOW, 3);
    for (w, want) in [
        (&stranger, RejectReason::UnknownUser),
        (&stale, RejectReason::StaleTimestamp),
        (&other_server, RejectReason::MacMismatch),
    ] {
        for _ in 0..2 {
            assert_eq!(reject(v.verify(w.as_bytes(), from(CLIENT), NOW, &mut replay)).reason, want);
        }
    }
    assert!(replay.is_empty());
    // An authentic packet refused by policy is recorded, so it cannot be tried again.
    let good = seal_by(&request(), 1, 1, NOW, 4);
    assert_eq!(
        reject(v.verify(good.as_bytes(), from(CLIENT), NOW, &mut replay)).reason,
        RejectReason::PortNotPermitted
    );
    assert_eq!(replay.len(), 1);
    let r = reject(v.verify(good.as_bytes(), from(CLIENT), NOW + 1, &mut replay));
    assert_eq!((r.reason, r.stanza), (RejectReason::Replay, None));
    // From another address too: the replay key is the packet's, not the sender's.
    assert_eq!(
        reject(v.verify(good.as_bytes(), from("203.0.113.1"), NOW, &mut replay)).reason,
        RejectReason::Replay
    );
    // A replay store shared with fwknop packets holds both without confusion.
    let accepting = verifier(&[stanza(&[(1, None)], "")]);
    let fresh = seal_by(&request(), 1, 1, NOW, 5);
    accept(accepting.verify(fresh.as_bytes(), from(CLIENT), NOW, &mut replay));
    assert_eq!(replay.len(), 2);
}

#[test]
fn the_identity_is_the_key_name_or_the_key() {
    let named = verifier(&[stanza(&[(1, Some("alice@laptop"))], "")]);
    let unnamed = verifier(&[stanza(&[(1, None)], "")]);
    let req = ModernRequest { username: Some("root".into()), ..request() };
    let wire = seal_by(&req, 1, 1, NOW, 1);
    let g = accept(run(&named, &wire, from(CLIENT), NOW));
    assert_eq!((g.username.as_str(), g.client_username.as_deref()), ("alice@laptop", Some("root")));
    let g = accept(run(&unnamed, &wire, from(CLIENT), NOW));
    assert_eq!(g.username, user(1).public_key().to_string());
    // require_username compares the identity, never what the client wrote.
    let strict = verifier(&[stanza(&[(1, Some("alice"))], "require_username = \"root\"")]);
    assert_eq!(reject(run(&strict, &wire, from(CLIENT), NOW)).reason, RejectReason::UsernameMismatch);
    let strict = verifier(&[stanza(&[(1, Some("alice"))], "require_username = \"alice\"")]);
    accept(run(&strict, &wire, from(CLIENT), NOW));
}

#[test]
fn stanzas_are_tried_in_order_among_those_listing_the_signer() {
    let stanzas = [
        parse(&format!(
            "name = \"web\"\nformat = \"modern\"\nsource = \"any\"\nopen_ports = \"tcp/80\"\nusers = [\"{} alice-web\"]",
            user(1).public_key()
        )),
        parse(&format!(
            "name = \"bob-only\"\nformat = \"modern\"\nsource = \"any\"\nusers = [\"{}\"]",
            user(2).public_key()
        )),
        parse(&format!(
            "name = \"ssh\"\nformat = \"modern\"\nsource = \"192.0.2.0/24\"\nopen_ports = \"tcp/22\"\nusers = [\"{} alice-ssh\"]",
            user(1).public_key()
        )),
        parse(
            "name = \"fwknop\"\nsource = \"any\"\nkey = \"0123456789abcdef0123456789abcdef\"\nhmac_key = \"fedcba9876543210fedcba9876543210\"",
        ),
    ];
    let v = verifier(&stanzas);
    let g = accept(run(&v, &seal_by(&request(), 1, 1, NOW, 1), from(CLIENT), NOW));
    assert_eq!((g.stanza_index, &*g.stanza, g.username.as_str()), (2, "ssh", "alice-ssh"));
    let web = ModernRequest { ports: vec![ProtoPort::new(Proto::Tcp, 80)], ..request() };
    let g = accept(run(&v, &seal_by(&web, 1, 1, NOW, 2), from(CLIENT), NOW));
    assert_eq!((g.stanza_index, g.username.as_str()), (0, "alice-web"));
    // From outside 192.0.2.0/24 only "web" lists alice: its refusal is what is reported.
    let r = reject(run(&v, &seal_by(&request(), 1, 1, NOW, 3), from("203.0.113.9"), NOW));
    assert_eq!((r.reason, r.stanza.as_deref()), (RejectReason::PortNotPermitted, Some("web")));
}

#[test]
fn allow_address_source_port_timeout_and_nat_follow_the_stanza() {
    let v = verifier(&[stanza(&[(1, None)], "max_fw_timeout = 60\nfw_access_timeout = 20")]);
    // The packet's source, as an IPv4-mapped address from a dual-stack socket.
    let g = accept(run(&v, &seal_by(&request(), 1, 1, NOW, 1), from("::ffff:192.0.2.77"), NOW));
    assert_eq!(g.allowed_source, "192.0.2.77".parse::<IpAddr>().unwrap());
    assert_eq!((g.timeout, g.source_port), (20, None));
    let req = ModernRequest {
        allow: Some("2001:db8::7".parse().unwrap()),
        source_port: Some(40000),
        client_timeout: Some(3600),
        ..request()
    };
    let g = accept(run(&v, &seal_by(&req, 1, 1, NOW, 2), from(CLIENT), NOW));
    assert_eq!(g.allowed_source, "2001:db8::7".parse::<IpAddr>().unwrap());
    assert_eq!((g.timeout, g.source_port), (60, Some(40000)));

    // NAT needs the daemon's switches, and force_nat overrides the client's target.
    let nat = ModernRequest {
        nat: Some(NatRequest::Forward { host: NatHost::Name("db.internal".into()), port: 5432 }),
        ..request()
    };
    let off = Verifier::with_server_key(&[stanza(&[(1, None)], "")], Settings::default(), server(1)).unwrap();
    assert_eq!(
        reject(run(&off, &seal_by(&nat, 1, 1, NOW, 3), from(CLIENT), NOW)).reason,
        RejectReason::NatNotEnabled
    );
    let g = accept(run(&v, &seal_by(&nat, 1, 1, NOW, 4), from(CLIENT), NOW));
    assert_eq!(
        g.action,
        Action::Open {
            access: spa_engine::Access::Ports(vec![ProtoPort::new(Proto::Tcp, 22)].into()),
            nat: Some(Nat::Dnat { host: NatHost::Name("db.internal".into()), port: Some(5432), snat: None }),
        }
    );
    let forced = verifier(&[stanza(&[(1, None)], "force_nat = \"10.0.0.2 2222\"")]);
    let g = accept(run(&forced, &seal_by(&request(), 1, 1, NOW, 5), from(CLIENT), NOW));
    let Action::Open { nat: Some(Nat::Dnat { host, port, .. }), .. } = g.action else { panic!() };
    assert_eq!((host, port), (NatHost::Ip("10.0.0.2".parse().unwrap()), Some(2222)));
}

#[test]
fn stanza_rules_for_the_two_formats() {
    let s = stanza(&[(1, Some("alice"))], "");
    assert_eq!(s.format, Format::Modern);
    let v = verifier(std::slice::from_ref(&s));
    assert_eq!(v.stanzas()[0].format(), Format::Modern);
    assert_eq!(v.stanzas()[0].users(), vec![(user(1).public_key(), "alice".into())]);
    assert!(v.stanzas()[0].keys().is_none());
    assert_eq!(v.server_public_key(), Some(server(1).public_key()));

    let chain = |e: &Error| {
        let mut text = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            text.push_str(": ");
            text.push_str(&s.to_string());
            src = s.source();
        }
        text
    };
    // A modern stanza needs the server's key.
    let e = Verifier::new(&[s], Settings::default()).unwrap_err();
    assert_eq!(chain(&e), "access stanza stanza-1: format = \"modern\" requires the server's key");

    let key = user(1).public_key();
    let compile = |text: &str| Verifier::with_server_key(&[parse(text)], settings(), server(1)).map(|_| ());
    for (extra, needle) in [
        ("key = \"0123456789abcdef\"", "key does not apply to format = \"modern\""),
        ("hmac_key = \"0123456789abcdef\"", "hmac_key does not apply"),
        ("key_base64 = \"AAAA\"", "key_base64 does not apply"),
        ("hmac_key_base64 = \"AAAA\"", "hmac_key_base64 does not apply"),
        ("allow_no_hmac = true", "allow_no_hmac does not apply"),
        ("hmac_digest_type = \"sha512\"", "hmac_digest_type does not apply"),
        ("encryption_mode = \"ctr\"", "encryption_mode does not apply"),
        ("enable_cmd_exec = true", "enable_cmd_exec does not apply"),
    ] {
        let text = format!("format = \"modern\"\nsource = \"any\"\nusers = [\"{key}\"]\n{extra}");
        let e = compile(&text).unwrap_err();
        assert!(chain(&e).contains(needle), "{extra}: {}", chain(&e));
    }
    let e = compile("format = \"modern\"\nsource = \"any\"").unwrap_err();
    assert!(chain(&e).ends_with("format = \"modern\" requires users"), "{}", chain(&e));
    let e = compile("format = \"modern\"\nsource = \"any\"\nusers = []").unwrap_err();
    assert!(chain(&e).ends_with("requires users"), "{}", chain(&e));
    let e = compile(&format!("format = \"modern\"\nsource = \"any\"\nusers = [\"{key} a\", \"{key} b\"]"))
        .unwrap_err();
    assert!(chain(&e).ends_with(&format!("user key {key} is listed twice")), "{}", chain(&e));
    let e =
        compile(&format!("source = \"any\"\nkey = \"0123456789abcdef\"\nusers = [\"{key}\"]")).unwrap_err();
    assert!(chain(&e).ends_with("users does not apply to format = \"fwknop\""), "{}", chain(&e));

    // Entries are checked as the file is read, with the offending entry named.
    let server_key = server(1).public_key().to_string();
    for (entry, needle) in [
        (server_key.as_str(), "expected a key starting with ed25519:"),
        ("ed25519:AAAA", "ed25519 public key is not 32 bytes of base64"),
        ("ed25519:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not a usable curve point"),
        (&format!("{key} -rf"), "invalid name"),
        (&format!("{key} a:b"), "invalid name"),
        (&format!("{key} two words"), "expected \"ed25519:<base64> [NAME]\""),
        ("", "empty users entry"),
    ] {
        let text = format!("format = \"modern\"\nsource = \"any\"\nusers = [\"{entry}\"]");
        let e = toml::from_str::<AccessStanza>(&text).unwrap_err().to_string();
        assert!(e.contains(needle), "{entry}: {e}");
    }
    let e = toml::from_str::<AccessStanza>("format = \"sealed\"\nsource = \"any\"").unwrap_err().to_string();
    assert!(e.contains("unknown variant `sealed`"), "{e}");
}

#[test]
fn requests_outside_the_limits_are_refused_by_the_client() {
    let s = server(1).public_key();
    let bad = |req: ModernRequest| modern::seal(&req, &user(1), &s, NOW, &mut Seeded(1)).unwrap_err();
    let field = |e: Error| match e {
        Error::InvalidField(f) => f,
        other => panic!("{other}"),
    };
    assert_eq!(field(bad(ModernRequest { ports: vec![], ..request() })), Field::Message);
    let many = vec![ProtoPort::new(Proto::Udp, 53); MAX_PORTS + 1];
    assert_eq!(field(bad(ModernRequest { ports: many, ..request() })), Field::Message);
    assert_eq!(
        field(bad(ModernRequest { allow: Some("0.0.0.0".parse().unwrap()), ..request() })),
        Field::Message
    );
    assert_eq!(field(bad(ModernRequest { source_port: Some(0), ..request() })), Field::SourcePort);
    assert_eq!(field(bad(ModernRequest { username: Some("a:b".into()), ..request() })), Field::Username);
    assert_eq!(field(bad(ModernRequest { username: Some("u".repeat(49)), ..request() })), Field::Username);
    assert_eq!(field(bad(ModernRequest { client_timeout: Some(0), ..request() })), Field::ClientTimeout);
    assert_eq!(field(bad(ModernRequest { client_timeout: Some(65537), ..request() })), Field::ClientTimeout);
    let name = |n: &str| ModernRequest {
        nat: Some(NatRequest::Forward { host: NatHost::Name(n.into()), port: 22 }),
        ..request()
    };
    for n in ["", "-x", "a b", "10.0.0.1", &"a".repeat(254)] {
        assert_eq!(field(bad(name(n))), Field::NatAccess, "{n:?}");
    }
    assert_eq!(
        field(bad(ModernRequest { nat: Some(NatRequest::Local { port: 0 }), ..request() })),
        Field::NatAccess
    );
    // IPv4-mapped addresses are sent as IPv4: one request, one encoding.
    let mapped = ModernRequest { allow: Some("::ffff:192.0.2.1".parse().unwrap()), ..request() };
    let opened = modern::open(seal_by(&mapped, 1, 1, NOW, 9).as_bytes(), &server(1)).unwrap();
    assert_eq!(opened.body.request.allow, Some("192.0.2.1".parse().unwrap()));
}

#[test]
fn fwknop_and_modern_stanzas_live_side_by_side() {
    let fw = parse(
        "name = \"fw\"\nsource = \"any\"\nkey = \"0123456789abcdef0123456789abcdef\"\nhmac_key = \"fedcba9876543210fedcba9876543210\"",
    );
    let v = verifier(&[fw, stanza(&[(1, None)], "name = \"modern\"")]);
    let g = accept(run(&v, &seal_by(&request(), 1, 1, NOW, 1), from(CLIENT), NOW));
    assert_eq!(&*g.stanza, "modern");
    let key = spa_engine::EncryptionKey::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
    let hkey = spa_engine::HmacKey::new(b"fedcba9876543210fedcba9876543210".to_vec()).unwrap();
    let msg = spa_engine::SpaMessage {
        random: "1234567890123456".into(),
        username: "alice".into(),
        timestamp: NOW,
        version: "3.0.0".into(),
        message_type: spa_engine::MessageType::Access,
        message: "192.0.2.10,tcp/22".into(),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let opts = spa_engine::packet::SealOptions {
        key: &key,
        mode: spa_engine::EncryptionMode::Cbc,
        digest: spa_engine::DigestType::Sha256,
        hmac: Some((&hkey, spa_engine::DigestType::Sha256)),
    };
    let fwknop = spa_engine::packet::seal(&msg, &opts, &mut Seeded(3)).unwrap();
    let g = accept(run(&v, &fwknop, from(CLIENT), NOW));
    assert_eq!((&*g.stanza, g.user_key, g.source_port), ("fw", None, None));
}

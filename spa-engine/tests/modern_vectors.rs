//! Known-answer vectors of the modern format (`testdata/modern-vectors.txt`), both ways: the
//! inputs seal to exactly the stored wire text, and the stored text opens (and is accepted by a
//! verifier) with exactly the stored request. Every intermediate value is checked too, and the
//! specification (`docs/modern-format.md`) must show vector 1 as the file has it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use spa_engine::access::{NatHost, parse_port_list};
use spa_engine::modern::{self, HEADER_LEN, ModernRequest, NatRequest};
use spa_engine::replay::replay_key;
use spa_engine::{
    AccessStanza, Action, Entropy, MemoryReplayStore, Nat, PacketMeta, ServerSecretKey, Settings,
    UserSigningKey, Verdict, Verifier, b64,
};

const VECTORS: &str = include_str!("../testdata/modern-vectors.txt");
const SPEC: &str = include_str!("../../docs/modern-format.md");

/// Hands out the vector's bytes: the ephemeral secret, then the nonce.
struct Fixed(Vec<u8>);

impl Entropy for Fixed {
    fn fill(&mut self, buf: &mut [u8]) {
        assert!(self.0.len() >= buf.len(), "more randomness drawn than the vector holds");
        let rest = self.0.split_off(buf.len());
        buf.copy_from_slice(&self.0);
        self.0 = rest;
    }
}

struct Vector {
    name: String,
    fields: BTreeMap<String, String>,
}

impl Vector {
    fn get(&self, k: &str) -> &str {
        self.fields.get(k).unwrap_or_else(|| panic!("{}: no {k}", self.name))
    }

    fn opt(&self, k: &str) -> Option<&str> {
        Some(self.get(k)).filter(|v| *v != "-")
    }

    fn hex(&self, k: &str) -> Vec<u8> {
        let s = self.get(k);
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn request(&self) -> ModernRequest {
        let nat = self.opt("nat").map(|n| {
            let parts: Vec<&str> = n.split(' ').collect();
            match parts.as_slice() {
                ["forward", host, port] => NatRequest::Forward {
                    host: host.parse::<NatHost>().unwrap(),
                    port: port.parse().unwrap(),
                },
                ["local", port] => NatRequest::Local { port: port.parse().unwrap() },
                _ => panic!("{}: nat {n}", self.name),
            }
        });
        ModernRequest {
            allow: match self.get("allow") {
                "source" => None,
                a => Some(a.parse().unwrap()),
            },
            ports: parse_port_list(self.get("ports")).unwrap(),
            source_port: self.opt("source_port").map(|p| p.parse().unwrap()),
            nat,
            username: self.opt("username").map(str::to_owned),
            client_timeout: self.opt("client_timeout").map(|t| t.parse().unwrap()),
        }
    }
}

fn vectors() -> Vec<Vector> {
    let mut out: Vec<Vector> = Vec::new();
    for line in VECTORS.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            out.push(Vector { name: name.trim_end_matches(']').to_owned(), fields: BTreeMap::new() });
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value line");
        out.last_mut().expect("a [vector] header first").fields.insert(k.to_owned(), v.to_owned());
    }
    out
}

fn keys(v: &Vector) -> (UserSigningKey, ServerSecretKey) {
    (
        UserSigningKey::from_secret_text(v.get("user_secret")).unwrap(),
        ServerSecretKey::from_secret_text(v.get("server_secret")).unwrap(),
    )
}

#[test]
fn the_inputs_seal_to_the_stored_bytes() {
    let vs = vectors();
    assert_eq!(vs.len(), 6);
    for v in &vs {
        let (user, server) = keys(v);
        let s_pub = server.public_key();
        assert_eq!(user.public_key().to_string(), v.get("user_public"), "{}", v.name);
        assert_eq!(s_pub.to_string(), v.get("server_public"), "{}", v.name);
        let mut entropy = v.hex("ephemeral_secret");
        entropy.extend(v.hex("nonce"));
        let now: u64 = v.get("timestamp").parse().unwrap();
        let wire = modern::seal(&v.request(), &user, &s_pub, now, &mut Fixed(entropy)).unwrap();
        assert_eq!(wire, v.get("wire"), "{}", v.name);
        assert_eq!(wire.len().to_string(), v.get("wire_len"), "{}", v.name);
        assert!(wire.len() < 1200, "{}", v.name);
    }
}

#[test]
fn every_intermediate_value_is_as_stored() {
    for v in vectors() {
        let (user, server) = keys(&v);
        let s_pub = server.public_key();
        let eph: [u8; 32] = v.hex("ephemeral_secret").try_into().unwrap();
        let modern::HpkeValues { enc, shared_secret: shared, key, nonce } =
            modern::hpke_values(&eph, &s_pub).unwrap();
        assert_eq!(modern::mac_key(&s_pub).to_vec(), v.hex("mac_key"), "{}", v.name);
        assert_eq!(enc.to_vec(), v.hex("enc"), "{}", v.name);
        assert_eq!(shared.to_vec(), v.hex("shared_secret"), "{}", v.name);
        assert_eq!(key.to_vec(), v.hex("aead_key"), "{}", v.name);
        assert_eq!(nonce.to_vec(), v.hex("aead_nonce"), "{}", v.name);

        let packet = b64::decode(&v.get("wire")[modern::TEXT_PREFIX.len()..]).unwrap();
        assert_eq!(packet, v.hex("packet"), "{}", v.name);
        assert_eq!(replay_key(&packet).to_vec(), v.hex("replay_key"), "{}", v.name);
        let header: [u8; HEADER_LEN] = packet[..HEADER_LEN].try_into().unwrap();
        assert_eq!(header.to_vec(), v.hex("header"), "{}", v.name);
        assert_eq!(&packet[HEADER_LEN..HEADER_LEN + 32], &enc[..], "{}", v.name);

        // The AEAD opens with the stored key and nonce, to the stored plaintext.
        let ct = &packet[HEADER_LEN + 32..packet.len() - modern::MAC_LEN];
        let (ct, tag) = ct.split_at(ct.len() - 16);
        let tag: [u8; 16] = tag.try_into().unwrap();
        let mut pt = ct.to_vec();
        ChaCha20Poly1305::new(&key.into())
            .decrypt_inout_detached(&Nonce::from(nonce), &header, pt.as_mut_slice().into(), &Tag::from(tag))
            .unwrap();
        assert_eq!(pt, v.hex("plaintext"), "{}", v.name);
        let body = &pt[96..];
        assert_eq!(body.to_vec(), v.hex("body"), "{}", v.name);
        assert_eq!(&pt[32..96], &v.hex("signature")[..], "{}", v.name);

        // The stored signature verifies, with an Ed25519 implementation used directly, over the
        // stored transcript, which is what the specification says it is.
        let transcript = modern::signature_transcript(&s_pub, &header, &enc, &user.public_key(), body);
        assert_eq!(transcript, v.hex("transcript"), "{}", v.name);
        let vk = VerifyingKey::from_bytes(user.public_key().as_bytes()).unwrap();
        let sig = Signature::from_slice(&v.hex("signature")).unwrap();
        vk.verify(&transcript, &sig).unwrap();
    }
}

#[test]
fn the_stored_wire_text_opens_to_the_inputs() {
    for v in vectors() {
        let (user, server) = keys(&v);
        let opened = modern::open(v.get("wire").as_bytes(), &server).unwrap();
        assert_eq!(opened.user, user.public_key(), "{}", v.name);
        assert_eq!(opened.timestamp.to_string(), v.get("timestamp"), "{}", v.name);
        assert_eq!(opened.body.nonce.to_vec(), v.hex("nonce"), "{}", v.name);
        assert_eq!(opened.body.request, v.request(), "{}", v.name);
    }
}

#[test]
fn a_verifier_accepts_each_vector_with_what_it_asks() {
    for v in vectors() {
        let (user, server) = keys(&v);
        let req = v.request();
        let stanza: AccessStanza = toml::from_str(&format!(
            "name = \"vectors\"\nformat = \"modern\"\nsource = \"any\"\nusers = [\"{} vector-user\"]",
            user.public_key()
        ))
        .unwrap();
        let settings = Settings { max_packet_age: 120, enable_forwarding: true, enable_local_nat: true };
        let verifier = Verifier::with_server_key(&[stanza], settings, server).unwrap();
        let source: IpAddr = "192.0.2.200".parse().unwrap();
        let meta = PacketMeta { source, destination: "198.51.100.1".parse().unwrap() };
        let now: u64 = v.get("timestamp").parse().unwrap();
        let mut replay = MemoryReplayStore::new(240, 16);
        let g = match verifier.verify(v.get("wire").as_bytes(), meta, now + 5, &mut replay) {
            Verdict::Accept(g) => g,
            Verdict::Reject(r) => panic!("{}: {} ({:?})", v.name, r.reason, r.stanza),
        };
        assert_eq!(g.allowed_source, req.allow.unwrap_or(source), "{}", v.name);
        assert_eq!(g.username, "vector-user", "{}", v.name);
        assert_eq!(g.client_username, req.username, "{}", v.name);
        assert_eq!(g.user_key, Some(user.public_key()), "{}", v.name);
        assert_eq!(g.source_port, req.source_port, "{}", v.name);
        assert_eq!(g.timeout, req.client_timeout.map_or(30, |t| t.min(300)), "{}", v.name);
        let Action::Open { access, nat } = &g.action else { panic!("{}: {:?}", v.name, g.action) };
        assert_eq!(access.to_string(), v.get("ports"), "{}", v.name);
        match (&req.nat, nat) {
            (None, None) => {}
            (Some(NatRequest::Forward { host, port }), Some(Nat::Dnat { host: h, port: p, .. })) => {
                assert_eq!((host, Some(*port)), (h, *p), "{}", v.name)
            }
            (Some(NatRequest::Local { port }), Some(Nat::Redirect { port: p })) => {
                assert_eq!(port, p, "{}", v.name)
            }
            other => panic!("{}: {other:?}", v.name),
        }
    }
}

#[test]
fn the_specification_shows_vector_1_as_stored() {
    let v = &vectors()[0];
    for k in [
        "user_secret",
        "server_secret",
        "ephemeral_secret",
        "nonce",
        "mac_key",
        "signature",
        "packet",
        "wire",
    ] {
        let line = format!("{k}={}", v.get(k));
        assert!(SPEC.contains(&line), "docs/modern-format.md lacks {line}");
    }
}

#[test]
fn the_specification_s_stanza_example_compiles() {
    let start = SPEC.find("```toml\n[[access]]").expect("a TOML example in section 7");
    let text = &SPEC[start + "```toml\n".len()..];
    let text = &text[..text.find("```").unwrap()];
    #[derive(serde::Deserialize)]
    struct File {
        access: Vec<AccessStanza>,
    }
    let file: File = toml::from_str(text).unwrap();
    let server = ServerSecretKey::from_bytes(&[1; 32]);
    let v = Verifier::with_server_key(&file.access, Settings::default(), server).unwrap();
    let mut names: Vec<String> = v.stanzas()[0].users().into_iter().map(|(_, n)| n.to_string()).collect();
    names.sort();
    assert_eq!(names, ["alice", "bob-laptop"]);
}

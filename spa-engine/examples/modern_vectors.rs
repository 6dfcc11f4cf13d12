//! Writes the modern format's known-answer vectors (`testdata/modern-vectors.txt`):
//!
//! ```sh
//! cargo run -p spa-engine --example modern_vectors > spa-engine/testdata/modern-vectors.txt
//! ```
//!
//! Fixed keys (the user key is RFC 8032's TEST 1 key, the server key RFC 9180 A.2.1's
//! recipient key), fixed ephemeral secrets and nonces, and every intermediate value, so another
//! implementation can find the first step where it differs. `tests/modern_vectors.rs` checks
//! the file both ways; `testdata/check-modern-vectors.py` recomputes it independently.

use std::fmt::Write as _;
use std::net::IpAddr;

use ed25519_dalek::Signer as _;
use sha2::{Digest as _, Sha256};
use spa_engine::access::NatHost;
use spa_engine::modern::{self, Body, HEADER_LEN, ModernRequest, NatRequest};
use spa_engine::{Entropy, ProtoPort, ServerSecretKey, UserSigningKey, b64};

/// Hands out fixed bytes: the ephemeral secret, then the nonce.
struct Fixed(Vec<u8>);

impl Entropy for Fixed {
    fn fill(&mut self, buf: &mut [u8]) {
        assert!(self.0.len() >= buf.len(), "vector entropy exhausted");
        let rest = self.0.split_off(buf.len());
        buf.copy_from_slice(&self.0);
        self.0 = rest;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    let v: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
    v.try_into().unwrap()
}

fn ports(s: &str) -> Vec<ProtoPort> {
    spa_engine::access::parse_port_list(s).unwrap()
}

/// The requests of the vectors: one per feature, and the largest packet the encoder makes.
fn requests() -> Vec<(&'static str, ModernRequest)> {
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let base = ModernRequest {
        allow: None,
        ports: ports("tcp/22"),
        source_port: None,
        nat: None,
        username: None,
        client_timeout: None,
    };
    vec![
        ("smallest: the packet's source, tcp/22", base.clone()),
        (
            "typical knock-and-connect: explicit IPv4, source port, username",
            ModernRequest {
                allow: Some(ip("192.0.2.10")),
                source_port: Some(50022),
                username: Some("alice".into()),
                ..base.clone()
            },
        ),
        (
            "IPv6 address, two ports, client timeout",
            ModernRequest {
                allow: Some(ip("2001:db8::10")),
                ports: ports("udp/53,tcp/443"),
                client_timeout: Some(600),
                ..base.clone()
            },
        ),
        (
            "NAT to a named internal host",
            ModernRequest {
                allow: Some(ip("198.51.100.7")),
                ports: ports("tcp/2222,tcp/2223,tcp/2224,tcp/2225"),
                nat: Some(NatRequest::Forward { host: NatHost::Name("internal.example".into()), port: 22 }),
                username: Some("bob".into()),
                client_timeout: Some(120),
                ..base.clone()
            },
        ),
        (
            "local NAT (redirect to a local port)",
            ModernRequest {
                allow: Some(ip("203.0.113.5")),
                ports: ports("tcp/2222"),
                nat: Some(NatRequest::Local { port: 22 }),
                ..base.clone()
            },
        ),
        (
            "largest: 32 ports, IPv6, 253-character NAT name, 48-byte username, every option",
            ModernRequest {
                allow: Some(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:fffe")),
                ports: (0..32).map(|i| format!("udp/{}", 65535 - i).parse().unwrap()).collect(),
                source_port: Some(65535),
                nat: Some(NatRequest::Forward {
                    host: NatHost::Name(format!("{}.example", "a".repeat(245))),
                    port: 65535,
                }),
                username: Some("u".repeat(48)),
                client_timeout: Some(65536),
            },
        ),
    ]
}

fn field(out: &mut String, k: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "{k}={v}");
}

fn main() {
    let seed = unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let user = UserSigningKey::from_seed(&seed);
    let server = ServerSecretKey::from_bytes(&unhex(
        "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb",
    ));
    let s_pub = server.public_key();
    let mut out = String::new();
    out.push_str(
        "# Known-answer vectors of the modern SPA format (docs/modern-format.md, section 8).\n\
         # Made by: cargo run -p spa-engine --example modern_vectors > spa-engine/testdata/modern-vectors.txt\n\
         # Checked both ways by spa-engine/tests/modern_vectors.rs, and independently (Python,\n\
         # pyca/cryptography) by spa-engine/testdata/check-modern-vectors.py.\n\
         #\n\
         # Inputs: user_secret, server_secret, ephemeral_secret, nonce, timestamp and the request\n\
         # (allow: 'source' or an address; '-' means absent; nat: 'forward HOST PORT' or 'local\n\
         # PORT'). Everything after '# derived' follows from them; hex is lower case.\n",
    );
    for (i, (what, req)) in requests().into_iter().enumerate() {
        let n = i + 1;
        let eph = [0x10 + n as u8; 32];
        let nonce = [0xa0 + n as u8; 16];
        let now = 1_800_000_000 + n as u64;
        let mut entropy = eph.to_vec();
        entropy.extend_from_slice(&nonce);
        let wire = modern::seal(&req, &user, &s_pub, now, &mut Fixed(entropy)).expect("seal");

        let packet = b64::decode(&wire[modern::TEXT_PREFIX.len()..]).unwrap();
        let body = Body { nonce, request: req.clone() }.encode().unwrap();
        let modern::HpkeValues { enc, shared_secret: shared, key, nonce: aead_nonce } =
            modern::hpke_values(&eph, &s_pub).unwrap();
        let header: [u8; HEADER_LEN] = packet[..HEADER_LEN].try_into().unwrap();
        let transcript = modern::signature_transcript(&s_pub, &header, &enc, &user.public_key(), &body);
        let opened = modern::open(wire.as_bytes(), &server).expect("own vector opens");
        assert_eq!(opened.body.request, req);

        let _ = writeln!(out, "\n[vector {n}]");
        let _ = writeln!(out, "# {what}");
        field(&mut out, "user_secret", &*user.to_secret_text());
        field(&mut out, "server_secret", &*server.to_secret_text());
        field(&mut out, "ephemeral_secret", hex(&eph));
        field(&mut out, "nonce", hex(&nonce));
        field(&mut out, "timestamp", now);
        field(&mut out, "allow", req.allow.map_or("source".into(), |a| a.to_string()));
        let p: Vec<String> = req.ports.iter().map(ToString::to_string).collect();
        field(&mut out, "ports", p.join(","));
        field(&mut out, "source_port", req.source_port.map_or("-".into(), |p| p.to_string()));
        let nat = match &req.nat {
            None => "-".to_owned(),
            Some(NatRequest::Forward { host, port }) => format!("forward {host} {port}"),
            Some(NatRequest::Local { port }) => format!("local {port}"),
        };
        field(&mut out, "nat", nat);
        field(&mut out, "username", req.username.as_deref().unwrap_or("-"));
        field(&mut out, "client_timeout", req.client_timeout.map_or("-".into(), |t| t.to_string()));
        out.push_str("# derived\n");
        field(&mut out, "user_public", user.public_key());
        field(&mut out, "server_public", s_pub);
        field(&mut out, "mac_key", hex(&modern::mac_key(&s_pub)));
        field(&mut out, "enc", hex(&enc));
        field(&mut out, "shared_secret", hex(&shared));
        field(&mut out, "aead_key", hex(&key));
        field(&mut out, "aead_nonce", hex(&aead_nonce));
        field(&mut out, "header", hex(&header));
        field(&mut out, "body", hex(&body));
        field(&mut out, "transcript", hex(&transcript));
        // Ed25519 signatures are deterministic: the one inside the ciphertext is this one.
        let signature = ed25519_dalek::SigningKey::from_bytes(&seed).sign(&transcript).to_bytes();
        field(&mut out, "signature", hex(&signature));
        let mut plaintext = user.public_key().to_bytes().to_vec();
        plaintext.extend_from_slice(&signature);
        plaintext.extend_from_slice(&body);
        field(&mut out, "plaintext", hex(&plaintext));
        field(&mut out, "packet", hex(&packet));
        field(&mut out, "replay_key", hex(&Sha256::digest(&packet)));
        field(&mut out, "wire_len", wire.len());
        field(&mut out, "wire", &wire);
    }
    print!("{out}");
}

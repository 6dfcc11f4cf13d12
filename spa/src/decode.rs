//! `spa decode`: authenticate and decrypt one packet and print its fields as JSON. A modern
//! packet (`SPA1.`) shows its cleartext header only, unless the server's secret key is given
//! (`--server-secret-key-file`): it is sealed to the server.

use std::io::Read as _;

use anyhow::{Context as _, Result, ensure};
use clap::Args;
use spa_engine::digest::HmacState;
use spa_engine::packet::OpenKeys;
use spa_engine::{DigestType, EncryptionMode};
use zeroize::Zeroizing;

use crate::keys::{self, KeyInput};
use crate::opts::KeySpec;

/// `spa decode`'s options.
#[derive(Args)]
pub(crate) struct DecodeArgs {
    /// The Rijndael key, base64.
    #[arg(long = "key-base64", value_name = "B64", conflicts_with = "key")]
    key_base64: Option<String>,
    /// The Rijndael key as text.
    #[arg(long = "key", value_name = "KEY")]
    key: Option<String>,
    /// The HMAC key, base64; without an HMAC key the packet must carry no HMAC.
    #[arg(long = "hmac-key-base64", value_name = "B64", conflicts_with = "hmac_key")]
    hmac_key_base64: Option<String>,
    /// The HMAC key as text.
    #[arg(long = "hmac-key", value_name = "KEY")]
    hmac_key: Option<String>,
    /// HMAC type (default sha256).
    #[arg(long = "hmac-digest-type", value_name = "TYPE")]
    hmac_digest_type: Option<DigestType>,
    /// Rijndael mode (default cbc).
    #[arg(long = "encryption-mode", short = 'M', value_name = "MODE", default_value = "cbc")]
    encryption_mode: EncryptionMode,
    /// Modern format: the server's secret key file (`spad keygen`), to open the packet fully;
    /// without it only the cleartext header is shown.
    #[arg(long = "server-secret-key-file", value_name = "FILE")]
    server_secret_key_file: Option<std::path::PathBuf>,
    /// The packet; read from stdin when absent.
    packet: Option<String>,
}

/// `spa decode`.
pub(crate) fn run(a: &DecodeArgs) -> Result<()> {
    let packet = match &a.packet {
        Some(p) => p.trim().to_owned(),
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read the packet from stdin")?;
            s.trim().to_owned()
        }
    };
    ensure!(!packet.is_empty(), "no packet given");
    if spa_engine::modern::is_modern(packet.as_bytes()) {
        return decode_modern(&packet, a.server_secret_key_file.as_deref());
    }
    ensure!(
        a.server_secret_key_file.is_none(),
        "--server-secret-key-file is for modern packets (SPA1.); this one is in fwknop's format"
    );
    let text = |s: &Option<String>| s.as_ref().map(|k| Zeroizing::new(k.clone()));
    let mut input = KeyInput::Terminal;
    let key_spec = text(&a.key_base64).map(KeySpec::Base64).or(text(&a.key).map(KeySpec::Text));
    let key = keys::encryption_key(key_spec.as_ref(), None, &mut input)?;
    let hmac_spec = text(&a.hmac_key_base64).map(KeySpec::Base64).or(text(&a.hmac_key).map(KeySpec::Text));
    let hmac = match (hmac_spec, a.hmac_digest_type) {
        (None, None) => None,
        (spec, t) => {
            let k = keys::hmac_key(spec.as_ref(), None, &mut input)?;
            Some(HmacState::new(t.unwrap_or_default(), k.as_bytes()))
        }
    };
    let d = spa_engine::packet::open(
        packet.as_bytes(),
        &OpenKeys { key: &key, mode: a.encryption_mode, hmac: hmac.as_ref() },
    )
    .context("cannot decode the packet")?;
    let m = &d.message;
    let json = serde_json::json!({
        "random": m.random,
        "username": m.username,
        "timestamp": m.timestamp,
        "version": m.version,
        "message_type": m.message_type.id(),
        "message": m.message,
        "nat_access": m.nat_access,
        "server_auth": m.server_auth,
        "client_timeout": m.client_timeout,
        "digest_type": d.digest_type.name(),
    });
    println!("{json}");
    Ok(())
}

/// A modern packet: its cleartext header, and with the server's key everything.
fn decode_modern(packet: &str, key_file: Option<&std::path::Path>) -> Result<()> {
    use spa_engine::modern::{ENC_LEN, HEADER_LEN, TEXT_PREFIX};
    let body = packet.strip_prefix(TEXT_PREFIX).context("unsupported modern version (expected SPA1.)")?;
    let bytes = spa_engine::b64::decode(body).context("the packet is not base64 after SPA1.")?;
    ensure!(bytes.len() >= HEADER_LEN + ENC_LEN, "the packet is too short ({} bytes)", bytes.len());
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&bytes[1..HEADER_LEN]);
    let mut json = serde_json::json!({
        "format": "modern",
        "version": bytes[0],
        "timestamp": u64::from_be_bytes(ts),
        "length": bytes.len(),
        "ephemeral_key": spa_engine::b64::encode(&bytes[HEADER_LEN..HEADER_LEN + ENC_LEN]),
    });
    if let Some(path) = key_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        );
        let key =
            spa_engine::ServerSecretKey::from_file(&text).with_context(|| path.display().to_string())?;
        let o = spa_engine::modern::open(packet.as_bytes(), &key)
            .map_err(|r| anyhow::anyhow!("cannot open the packet: {}", r.code()))?;
        let r = &o.body.request;
        let nat = r.nat.as_ref().map(|n| match n {
            spa_engine::NatRequest::Forward { host, port } => {
                serde_json::json!({"forward": format!("{host},{port}")})
            }
            spa_engine::NatRequest::Local { port } => serde_json::json!({"local_port": port}),
        });
        json["user"] = o.user.to_string().into();
        json["nonce"] = spa_engine::b64::encode(o.body.nonce).into();
        json["allow"] = r.allow.map(|a| a.to_string()).into();
        json["ports"] = r.ports.iter().map(ToString::to_string).collect::<Vec<_>>().into();
        json["source_port"] = r.source_port.into();
        json["nat"] = nat.into();
        json["username"] = r.username.clone().into();
        json["client_timeout"] = r.client_timeout.into();
    }
    println!("{json}");
    Ok(())
}

//! `spa decode`: authenticate and decrypt one packet and print its fields as JSON.

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

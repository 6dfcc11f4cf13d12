//! The modern format on the client side (`docs/modern-format.md`): which settings belong to
//! which format, the user's key file, and the request a knock's options make.
//!
//! The knock options are fwknop's; most mean the same in both formats (`-A`, `-a`/`-s`/`-R`,
//! `-N`, `--nat-local`, `-f`, `-U`, `-D`, `-p`, `-P`). The shared keys, digests, modes and
//! command messages are fwknop's alone, and the user's and the server's public keys are the
//! modern format's alone: giving one to the other format is refused with the reason, rather
//! than silently ignored.

use std::fmt;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context as _, Result, bail, ensure};
use spa_engine::access::{NatAccess, parse_port_list};
use spa_engine::modern::keys::MAX_KEY_FILE_LEN;
use spa_engine::{ModernRequest, NatRequest, UserSigningKey};
use zeroize::Zeroizing;

use crate::opts::{self, NatOpts, Settings};

/// The wire format a knock uses (`--format`, `SPA_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum WireFormat {
    /// fwknop's (FKO 3.0.0): shared Rijndael and HMAC keys.
    #[default]
    Fwknop,
    /// The modern format: the user's Ed25519 key, sealed to the server's X25519 key.
    Modern,
}

impl FromStr for WireFormat {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fwknop" => Ok(WireFormat::Fwknop),
            "modern" => Ok(WireFormat::Modern),
            _ => bail!("unknown format {s:?} (expected fwknop or modern)"),
        }
    }
}

impl fmt::Display for WireFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireFormat::Fwknop => "fwknop",
            WireFormat::Modern => "modern",
        })
    }
}

/// Where `spa keygen --modern` writes and a modern knock looks, when no file is named.
pub(crate) fn default_user_key_file() -> Option<PathBuf> {
    opts::home_dir().map(|h| h.join(".spa").join("user.key"))
}

/// Refuses settings that belong to the other format, naming the option, its rc variable and
/// why. Returns the format.
pub(crate) fn check_format(p: &Settings) -> Result<WireFormat> {
    let format = p.format.unwrap_or_default();
    let mut wrong: Vec<&str> = Vec::new();
    match format {
        WireFormat::Modern => {
            if p.user_key.is_some() && p.user_key_file.is_some() {
                bail!("SPA_USER_KEY and SPA_USER_KEY_FILE/--user-key-file both give your key; keep one");
            }
            if p.key.is_some() {
                wrong.push(
                    "the Rijndael key (KEY, KEY_BASE64, KEY_FILE, --key-rijndael, --key-base64-rijndael, -G)",
                );
            }
            if p.hmac_key.is_some() {
                wrong.push("the HMAC key (HMAC_KEY, HMAC_KEY_BASE64, HMAC_KEY_FILE, --key-hmac, --key-base64-hmac, --get-hmac-key)");
            }
            if p.use_hmac == Some(true) {
                wrong.push("USE_HMAC/--use-hmac");
            }
            if p.hmac_type.is_some() {
                wrong.push("HMAC_DIGEST_TYPE/--hmac-digest-type");
            }
            if p.digest_type.is_some() {
                wrong.push("DIGEST_TYPE/-m");
            }
            if p.mode.is_some() {
                wrong.push("ENCRYPTION_MODE/-M");
            }
            if p.server_cmd.is_some() {
                wrong.push("-C/--server-cmd (the modern format has no command messages)");
            }
            if let Some(first) = wrong.first() {
                bail!(
                    "{first} is for the fwknop format, but the format is modern (SPA_FORMAT, --format): \
                     a modern knock is signed with your Ed25519 key (SPA_USER_KEY_FILE) and sealed to the \
                     server's public key (SPA_SERVER_KEY); remove it from the command line or the rc stanza"
                );
            }
        }
        WireFormat::Fwknop => {
            if p.user_key_file.is_some() {
                wrong.push("SPA_USER_KEY_FILE/--user-key-file");
            }
            if p.user_key.is_some() {
                wrong.push("SPA_USER_KEY");
            }
            if p.server_key.is_some() {
                wrong.push("SPA_SERVER_KEY/--server-key");
            }
            if let Some(first) = wrong.first() {
                bail!(
                    "{first} is for the modern format, but the format is fwknop (the default): add \
                     --format modern (SPA_FORMAT modern) to knock a format = \"modern\" stanza"
                );
            }
        }
    }
    Ok(format)
}

/// Reads the user's Ed25519 key file (`spa keygen --modern`). On Unix it must be private to
/// its owner, as ssh insists for its keys: a key that others can read is a key others hold.
pub(crate) fn load_user_key(path: &Path) -> Result<UserSigningKey> {
    let shown = path.display();
    let f = std::fs::File::open(path).with_context(|| {
        format!("cannot read the user key file {shown} (`spa keygen --modern --out {shown}` makes one)")
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let md = f.metadata().with_context(|| format!("cannot read the user key file {shown}"))?;
        let mode = md.mode() & 0o777;
        ensure!(
            mode & 0o077 == 0,
            "the user key file {shown} has mode {mode:03o}: group or others can read or write it; \
             run chmod 600 {shown}"
        );
    }
    let mut raw = Zeroizing::new(Vec::new());
    f.take(MAX_KEY_FILE_LEN as u64 + 1)
        .read_to_end(&mut raw)
        .with_context(|| format!("cannot read the user key file {shown}"))?;
    ensure!(raw.len() <= MAX_KEY_FILE_LEN, "{shown} is over {MAX_KEY_FILE_LEN} bytes: not a key file");
    let text = std::str::from_utf8(&raw).ok().with_context(|| format!("{shown} is not a key file"))?;
    UserSigningKey::from_file(text).with_context(|| format!("the user key file {shown}"))
}

/// The user's key: `SPA_USER_KEY` itself, else the key file (`SPA_USER_KEY_FILE`,
/// `--user-key-file`, else `~/.spa/user.key`).
pub(crate) fn user_key(p: &Settings) -> Result<UserSigningKey> {
    if let Some(crate::opts::KeySpec::Text(text)) = &p.user_key {
        return UserSigningKey::from_secret_text(text).context("SPA_USER_KEY");
    }
    let file = match &p.user_key_file {
        Some(f) => f.clone(),
        None => default_user_key_file().context(
            "no user key (SPA_USER_KEY_FILE, --user-key-file) and no home directory for ~/.spa/user.key",
        )?,
    };
    load_user_key(&file)
}

/// The request a knock's settings make: the same options as the fwknop format, through the
/// same rules ([`opts::build_request`]), then put into the modern body's fields. `allow` is
/// `None` for "the packet's source" (`-s`).
pub(crate) fn build_request(
    p: &Settings,
    allow: Option<IpAddr>,
    source_port: Option<u16>,
    rand_port: &mut dyn FnMut() -> u16,
) -> Result<ModernRequest> {
    let nat = NatOpts {
        access: p.nat_access.clone(),
        local: p.nat_local.unwrap_or(false),
        port: p.nat_port,
        rand_port: p.nat_rand_port.unwrap_or(false),
    };
    let placeholder = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let fields = opts::build_request(
        allow.unwrap_or(placeholder),
        p.access.as_deref(),
        None,
        &nat,
        p.destination.as_deref(),
        p.fw_timeout,
        rand_port,
    )?;
    let ports_text = fields.message.split_once(',').map_or("", |(_, ports)| ports);
    let ports = parse_port_list(ports_text).context("invalid -A/--access list")?;
    let nat = match &fields.nat_access {
        None => None,
        Some(text) => {
            let parsed = NatAccess::parse(text).with_context(|| format!("invalid NAT access {text:?}"))?;
            Some(if nat.local {
                NatRequest::Local { port: parsed.port }
            } else {
                NatRequest::Forward { host: parsed.host, port: parsed.port }
            })
        }
    };
    Ok(ModernRequest {
        allow: allow.filter(|ip| !ip.is_unspecified()),
        ports,
        source_port,
        nat,
        username: p.spoof_user.clone(),
        client_timeout: fields.client_timeout,
    })
}

#[cfg(test)]
mod tests {
    use spa_engine::NatHost;

    use super::*;
    use crate::opts::KeySpec;

    fn no_rand() -> u16 {
        panic!("no random port expected")
    }

    #[test]
    fn options_map_to_the_request() {
        let p = Settings {
            access: Some("tcp/22,udp/53".into()),
            fw_timeout: Some(60),
            spoof_user: Some("alice".into()),
            ..Default::default()
        };
        let r = build_request(&p, Some("192.0.2.7".parse().unwrap()), Some(40000), &mut no_rand).unwrap();
        assert_eq!(r.allow, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(r.ports.iter().map(ToString::to_string).collect::<Vec<_>>(), ["tcp/22", "udp/53"]);
        assert_eq!(r.source_port, Some(40000));
        assert_eq!(r.client_timeout, Some(60));
        assert_eq!(r.username.as_deref(), Some("alice"));
        assert_eq!(r.nat, None);
        let r = build_request(&p, None, None, &mut no_rand).unwrap();
        assert_eq!(r.allow, None, "-s: the packet's source");

        let p = Settings {
            access: Some("tcp/2222".into()),
            nat_access: Some("10.0.0.5:22".into()),
            ..Default::default()
        };
        let r = build_request(&p, None, None, &mut no_rand).unwrap();
        assert_eq!(r.ports[0].to_string(), "tcp/2222");
        assert_eq!(
            r.nat,
            Some(NatRequest::Forward { host: NatHost::Ip("10.0.0.5".parse().unwrap()), port: 22 })
        );
        let p = Settings {
            access: Some("tcp/22".into()),
            nat_local: Some(true),
            nat_port: Some(2222),
            destination: Some("gw".into()),
            ..Default::default()
        };
        let r = build_request(&p, None, None, &mut no_rand).unwrap();
        assert_eq!(r.ports[0].to_string(), "tcp/2222");
        assert_eq!(r.nat, Some(NatRequest::Local { port: 22 }));
    }

    #[test]
    fn options_of_the_other_format_are_refused_with_the_reason() {
        let modern = Settings {
            format: Some(WireFormat::Modern),
            key: Some(KeySpec::Base64(Zeroizing::new("a2V5".into()))),
            ..Default::default()
        };
        let e = check_format(&modern).unwrap_err().to_string();
        assert!(e.contains("KEY_BASE64") && e.contains("fwknop format"), "{e}");
        let cmd =
            Settings { format: Some(WireFormat::Modern), server_cmd: Some("x".into()), ..Default::default() };
        assert!(check_format(&cmd).unwrap_err().to_string().contains("no command messages"));
        let server = spa_engine::ServerSecretKey::from_bytes(&[9; 32]).public_key();
        let fwknop = Settings { server_key: Some(server), ..Default::default() };
        let e = check_format(&fwknop).unwrap_err().to_string();
        assert!(e.contains("SPA_SERVER_KEY") && e.contains("--format modern"), "{e}");
        assert_eq!(
            check_format(&Settings { format: Some(WireFormat::Modern), ..Default::default() }).unwrap(),
            WireFormat::Modern
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_user_key_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("user.key");
        let key = UserSigningKey::from_seed(&[3; 32]);
        std::fs::write(&p, key.to_file().as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_user_key(&p).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_user_key(&p).unwrap().public_key(), key.public_key());
    }
}

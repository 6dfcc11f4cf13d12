//! Access stanzas: who may knock, with which keys, for what.
//!
//! The keys mirror fwknop's `access.conf` variables in lower snake case, so an fwknop admin
//! recognises every line. Values are typed and checked while deserializing, so a TOML error
//! points at the exact key; rules that span several keys are checked by [`Stanza::compile`].

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use zeroize::Zeroizing;

use crate::Error;
use crate::access::{ProtoPort, parse_port, parse_port_list};
use crate::cipher::EncryptionMode;
use crate::digest::{DigestType, HmacState};
use crate::keys::{EncryptionKey, HmacKey, keys_equal};
use crate::message::valid_username;
use crate::modern::UserPublicKey;

/// fwknop's default `FW_ACCESS_TIMEOUT`.
pub const DEFAULT_FW_ACCESS_TIMEOUT: u32 = 30;
/// fwknop's default `MAX_FW_TIMEOUT`.
pub const DEFAULT_MAX_FW_TIMEOUT: u32 = 300;

/// The wire format a stanza accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// fwknop's format (FKO 3.0.0): a shared Rijndael key and HMAC key.
    #[default]
    Fwknop,
    /// The modern format: users' Ed25519 keys, packets sealed to the server's X25519 key
    /// (`docs/modern-format.md`).
    Modern,
}

impl Format {
    /// The name written in `format = "..."`.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Fwknop => "fwknop",
            Format::Modern => "modern",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of a modern stanza's `users`: `"ed25519:<base64>"`, optionally followed by white
/// space and a name for the audit trail (`"ed25519:<base64> alice"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    /// The user's public key.
    pub key: UserPublicKey,
    /// The name, if given: one token, a valid username, not starting with `-`.
    pub name: Option<String>,
}

impl UserEntry {
    /// The grant's username for this user: the name, or the key's text without one.
    pub fn identity(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.key.to_string())
    }
}

impl FromStr for UserEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split_whitespace();
        let key_text = parts.next().ok_or("empty users entry")?;
        let key = key_text.parse::<UserPublicKey>().map_err(|e| format!("users entry {key_text:?}: {e}"))?;
        let name = parts.next().map(str::to_owned);
        if parts.next().is_some() {
            return Err(format!("users entry {s:?}: expected \"ed25519:<base64> [NAME]\""));
        }
        if let Some(n) = &name
            && (!valid_username(n) || n.starts_with('-'))
        {
            return Err(format!(
                "users entry {key_text:?}: invalid name {n:?} (at most 48 printable characters, none of \
                 \"/\\[]:;|=,+*?<>, not starting with -)"
            ));
        }
        Ok(UserEntry { key, name })
    }
}

impl<'de> Deserialize<'de> for UserEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// One `[[access]]` table as written by the admin.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessStanza {
    /// A name for logs and the audit trail (default `stanza-N`).
    #[serde(default)]
    pub name: Option<String>,
    /// The wire format this stanza accepts: `"fwknop"` (default) or `"modern"`.
    #[serde(default)]
    pub format: Format,
    /// For `format = "modern"`: the users let in, `"ed25519:<base64> [NAME]"` each. Revoking a
    /// user is removing their line.
    #[serde(default)]
    pub users: Option<Vec<UserEntry>>,
    /// Packet sources this stanza applies to (`any`, addresses, CIDRs).
    pub source: AddrList,
    /// Packet destinations this stanza applies to (default: any).
    #[serde(default)]
    pub destination: Option<AddrList>,
    /// If set, every requested port must be listed here.
    #[serde(default)]
    pub open_ports: Option<PortList>,
    /// A request naming any of these ports is refused.
    #[serde(default)]
    pub restrict_ports: Option<PortList>,
    /// Rijndael passphrase as text (at most 32 bytes).
    #[serde(default)]
    pub key: Option<Secret>,
    /// Rijndael key in base64.
    #[serde(default)]
    pub key_base64: Option<Secret>,
    /// HMAC key as text; setting an HMAC key makes the HMAC mandatory.
    #[serde(default)]
    pub hmac_key: Option<Secret>,
    /// HMAC key in base64.
    #[serde(default)]
    pub hmac_key_base64: Option<Secret>,
    /// Accept this stanza without an HMAC key: fwknop's legacy mode, where packets are
    /// decrypted before anything authenticates them. Discouraged; only for old clients that
    /// cannot send an HMAC. Setting it together with an HMAC key is an error.
    #[serde(default)]
    pub allow_no_hmac: bool,
    /// HMAC algorithm (default sha256).
    #[serde(default)]
    pub hmac_digest_type: Option<DigestType>,
    /// Rijndael mode (default cbc).
    #[serde(default)]
    pub encryption_mode: EncryptionMode,
    /// How long a grant lasts when the client does not ask (default 30 s).
    #[serde(default)]
    pub fw_access_timeout: Option<Seconds>,
    /// Cap on client-requested timeouts (default 300 s).
    #[serde(default)]
    pub max_fw_timeout: Option<Seconds>,
    /// Only this username is accepted.
    #[serde(default)]
    pub require_username: Option<String>,
    /// Refuse `0.0.0.0` ("use my packet's source").
    #[serde(default)]
    pub require_source_address: bool,
    /// The stanza stops matching after this date (`YYYY-MM-DD`, `MM/DD/YYYY`, UTC midnight) or
    /// Unix time.
    #[serde(default)]
    pub access_expire: Option<Expiry>,
    /// Translate every accepted request to this internal `address port`.
    #[serde(default)]
    pub force_nat: Option<NatTarget>,
    /// Source-NAT forwarded traffic to this address.
    #[serde(default)]
    pub force_snat: Option<IpAddr>,
    /// Masquerade forwarded traffic.
    #[serde(default)]
    pub force_masquerade: bool,
    /// Forward without destination NAT.
    #[serde(default)]
    pub disable_dnat: bool,
    /// Forward all traffic from the client, whatever the port.
    #[serde(default)]
    pub forward_all: bool,
    /// Accept command messages (type 0).
    #[serde(default)]
    pub enable_cmd_exec: bool,
    /// Run command messages as this user (fwknop `CMD_EXEC_USER`) rather than as the daemon;
    /// its group too unless `cmd_exec_group` is set. A name the daemon resolves.
    #[serde(default)]
    pub cmd_exec_user: Option<String>,
    /// Run command messages with this group (fwknop `CMD_EXEC_GROUP`); needs `cmd_exec_user`.
    #[serde(default)]
    pub cmd_exec_group: Option<String>,
    /// Run this instead of changing the firewall when access is granted.
    #[serde(default)]
    pub cmd_cycle_open: Option<CommandLine>,
    /// Run this when the access ends.
    #[serde(default)]
    pub cmd_cycle_close: Option<CommandLine>,
    /// Seconds between open and close commands (the client timeout overrides).
    #[serde(default)]
    pub cmd_cycle_timer: Option<Seconds>,
    /// fwknop's GPG mode: the file holding the server's secret key, as `gpg
    /// --export-secret-keys --armor ID` writes it (mode 0600). The caller reads it into
    /// [`AccessStanza::gpg_key_text`]; a stanza with it takes packets of 400 characters or more
    /// as GPG. Replaces fwknop's `GPG_HOME_DIR` + `GPG_DECRYPT_ID`.
    #[serde(default)]
    pub gpg_decrypt_key_file: Option<std::path::PathBuf>,
    /// Optional check that `gpg_decrypt_key_file` holds this key (fwknop's `GPG_DECRYPT_ID`: a
    /// key id or fingerprint of the key or one of its subkeys).
    #[serde(default)]
    pub gpg_decrypt_id: Option<String>,
    /// The passphrase of the secret key (fwknop's `GPG_DECRYPT_PW`).
    #[serde(default)]
    pub gpg_decrypt_pw: Option<Secret>,
    /// The secret key has no passphrase (fwknop's `GPG_ALLOW_NO_PW`).
    #[serde(default)]
    pub gpg_allow_no_pw: bool,
    /// The file holding the allowed signers' public keys, as `gpg --export --armor ID...`
    /// writes it; needed while signatures are checked (fwknop reads them from its keyring).
    #[serde(default)]
    pub gpg_remote_keys_file: Option<std::path::PathBuf>,
    /// Allowed signers by key id (fwknop's `GPG_REMOTE_ID`; 8 or 16 hex digits).
    #[serde(default)]
    pub gpg_remote_id: Option<IdList>,
    /// Allowed signers by fingerprint (fwknop's `GPG_FINGERPRINT_ID`; 40 hex digits).
    #[serde(default)]
    pub gpg_fingerprint_id: Option<IdList>,
    /// Require a valid signature by an allowed signer (fwknop's `GPG_REQUIRE_SIG`, default on
    /// unless `gpg_disable_sig`).
    #[serde(default)]
    pub gpg_require_sig: Option<bool>,
    /// Accept packets without checking signatures (fwknop's `GPG_DISABLE_SIG`): anyone with
    /// the server's public key gets in. Discouraged.
    #[serde(default)]
    pub gpg_disable_sig: bool,
    /// fwknop's `GPG_IGNORE_SIG_VERIFY_ERROR`: refused (signatures that do not verify are
    /// never accepted here).
    #[serde(default)]
    pub gpg_ignore_sig_verify_error: bool,
    /// fwknop's `GPG_HOME_DIR`: refused (no GnuPG keyring is read; use the key files).
    #[serde(default)]
    pub gpg_home_dir: Option<String>,
    /// fwknop's `GPG_EXE`: refused (no `gpg` process runs).
    #[serde(default)]
    pub gpg_exe: Option<String>,
    /// The contents of `gpg_decrypt_key_file` and `gpg_remote_keys_file`, put here by the
    /// caller that reads files (this crate does no I/O). Never deserialized.
    #[serde(skip)]
    pub gpg_key_text: GpgKeyText,
}

/// The key files of a GPG stanza, read by the caller.
#[derive(Clone, Debug, Default)]
pub struct GpgKeyText {
    /// `gpg_decrypt_key_file`'s contents.
    pub decrypt_key: Option<Secret>,
    /// `gpg_remote_keys_file`'s contents (public keys).
    pub remote_keys: Option<String>,
}

/// Key ids or fingerprints: a comma-separated string (fwknop style) or an array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdList(pub Vec<String>);

impl FromStr for IdList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let ids: Vec<String> =
            s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect();
        if ids.is_empty() {
            return Err("empty key id list".into());
        }
        Ok(Self(ids))
    }
}

impl<'de> Deserialize<'de> for IdList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StringOrList(std::marker::PhantomData))
    }
}

/// Settings that apply to every stanza (fwknopd.conf's part of the decision).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `MAX_SPA_PACKET_AGE`: seconds a timestamp may differ from now, either way.
    pub max_packet_age: u64,
    /// `ENABLE_IPT_FORWARDING`: allow NAT access requests.
    pub enable_forwarding: bool,
    /// `ENABLE_IPT_LOCAL_NAT`: allow local NAT requests.
    pub enable_local_nat: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self { max_packet_age: 120, enable_forwarding: false, enable_local_nat: false }
    }
}

/// A secret string from the configuration, wiped on drop and never printed.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(Zeroizing::new(s.into()))
    }

    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A list of networks: `"any"`, an address, a CIDR, or IPv4 `a.b.c.d/m.m.m.m`; written as one
/// comma-separated string (fwknop style) or a TOML array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrList(pub Vec<IpNet>);

impl AddrList {
    /// Whether `ip` is inside any of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4
/// peers) to plain IPv4, so a stanza written for IPv4 matches them.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_net(s: &str) -> Result<Vec<IpNet>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("any") {
        return Ok(vec![
            IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).map_err(|e| e.to_string())?),
            IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).map_err(|e| e.to_string())?,
        ]);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(vec![IpNet::from(ip)]);
    }
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(vec![net.trunc()]);
    }
    if let Some((a, m)) = s.split_once('/')
        && let (Ok(a), Ok(m)) = (a.parse::<Ipv4Addr>(), m.parse::<Ipv4Addr>())
        && let Ok(net) = Ipv4Net::with_netmask(a, m)
    {
        return Ok(vec![IpNet::V4(net.trunc())]);
    }
    Err(format!("invalid address or network {s:?} (expected any, an address or a CIDR)"))
}

impl FromStr for AddrList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            out.extend(parse_net(part)?);
        }
        if out.is_empty() {
            return Err("empty address list".into());
        }
        Ok(Self(out))
    }
}

/// Deserializes either a comma-separated string or an array of strings into `T` via `FromStr`
/// on the joined text.
struct StringOrList<T>(std::marker::PhantomData<T>);

impl<'de, T> Visitor<'de> for StringOrList<T>
where
    T: FromStr<Err = String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of strings")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let mut joined = String::new();
        while let Some(item) = seq.next_element::<String>()? {
            if item.contains(',') {
                return Err(de::Error::custom(format!("{item:?}: use one array element per entry")));
            }
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(&item);
        }
        joined.parse().map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for AddrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StringOrList(std::marker::PhantomData))
    }
}

/// A list of `proto/port` pairs, as a string (`"tcp/22, udp/53"`) or an array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(pub Vec<ProtoPort>);

impl FromStr for PortList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let ports = parse_port_list(s).map_err(|e| e.to_string())?;
        if ports.is_empty() {
            return Err("empty port list".into());
        }
        Ok(Self(ports))
    }
}

impl<'de> Deserialize<'de> for PortList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StringOrList(std::marker::PhantomData))
    }
}

/// A duration in whole seconds: an integer, or a string with a unit (`30s`, `5m`, `2h`, `1d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub u32);

impl FromStr for Seconds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let mult = match unit.trim() {
            "" | "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return Err(format!("invalid duration unit in {s:?} (use s, m, h or d)")),
        };
        n.checked_mul(mult)
            .and_then(|v| u32::try_from(v).ok())
            .map(Seconds)
            .ok_or_else(|| format!("duration {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds or a duration like \"5m\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                u32::try_from(v).map(Seconds).map_err(|_| E::custom(format!("duration {v} out of range")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                u32::try_from(v).map(Seconds).map_err(|_| E::custom(format!("duration {v} out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// When a stanza stops matching: Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry(pub u64);

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl FromStr for Expiry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid date {s:?} (expected YYYY-MM-DD or MM/DD/YYYY)");
        let s = s.trim();
        let (y, m, d) = if let Some((y, rest)) = s.split_once('-') {
            let (m, d) = rest.split_once('-').ok_or_else(bad)?;
            (y, m, d)
        } else {
            let mut it = s.split('/');
            let (m, d, y) = (it.next(), it.next(), it.next());
            if it.next().is_some() {
                return Err(bad());
            }
            (y.ok_or_else(bad)?, m.ok_or_else(bad)?, d.ok_or_else(bad)?)
        };
        let y: i64 = y.parse().map_err(|_| bad())?;
        let m: u32 = m.parse().map_err(|_| bad())?;
        let d: u32 = d.parse().map_err(|_| bad())?;
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let dim = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 || d > dim[(m - 1) as usize] {
            return Err(bad());
        }
        Ok(Expiry((days_from_civil(y, m, d) * 86_400) as u64))
    }
}

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Expiry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a date (\"YYYY-MM-DD\") or Unix seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Expiry, E> {
                u64::try_from(v).map(Expiry).map_err(|_| E::custom("negative time"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Expiry, E> {
                Ok(Expiry(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Expiry, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// An internal address and port, written fwknop style (`"192.168.1.2 22"`) or as
/// `"192.168.1.2:22"` / `"[fd00::2]:22"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatTarget {
    /// The internal address.
    pub ip: IpAddr,
    /// The internal port.
    pub port: u16,
}

impl FromStr for NatTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid NAT target {s:?} (expected \"ADDRESS PORT\")");
        let t = s.trim();
        if let Ok(sa) = t.parse::<std::net::SocketAddr>() {
            return (sa.port() != 0).then(|| NatTarget { ip: sa.ip(), port: sa.port() }).ok_or_else(bad);
        }
        let (ip, port) = t.split_once(char::is_whitespace).ok_or_else(bad)?;
        Ok(NatTarget { ip: ip.parse().map_err(|_| bad())?, port: parse_port(port.trim()).ok_or_else(bad)? })
    }
}

impl<'de> Deserialize<'de> for NatTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A command as an argument vector. A string is split on white space (no shell: write
/// `["sh", "-c", "..."]` to get one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine(pub Vec<String>);

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Argv(Vec<String>),
        }
        let argv = match Raw::deserialize(d)? {
            Raw::One(s) => s.split_whitespace().map(str::to_owned).collect(),
            Raw::Argv(v) => v,
        };
        if argv.is_empty() || argv[0].is_empty() {
            return Err(de::Error::custom("empty command"));
        }
        Ok(CommandLine(argv))
    }
}

/// A stanza checked and ready for the packet path: keys decoded, HMAC keyed.
#[derive(Clone, Debug)]
pub struct Stanza {
    pub(crate) name: Arc<str>,
    pub(crate) source: AddrList,
    pub(crate) destination: Option<AddrList>,
    pub(crate) open_ports: Option<Vec<ProtoPort>>,
    pub(crate) restrict_ports: Vec<ProtoPort>,
    pub(crate) auth: Auth,
    pub(crate) fw_access_timeout: u32,
    pub(crate) max_fw_timeout: u32,
    pub(crate) require_username: Option<String>,
    pub(crate) require_source_address: bool,
    pub(crate) expires: Option<u64>,
    pub(crate) force_nat: Option<NatTarget>,
    pub(crate) snat: Option<crate::verdict::Snat>,
    pub(crate) disable_dnat: bool,
    pub(crate) forward_all: bool,
    pub(crate) enable_cmd_exec: bool,
    /// The cmd-cycle settings, carried for the daemon.
    pub cmd_cycle: Option<CmdCycle>,
    /// Whom command messages run as, carried for the daemon (which resolves the names).
    pub cmd_exec: Option<CmdExec>,
}

/// fwknop's `CMD_EXEC_USER`/`CMD_EXEC_GROUP`: the identity a stanza's command messages run
/// with, by name (the daemon looks the names up; this crate does no I/O).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdExec {
    /// The user (`cmd_exec_user`).
    pub user: String,
    /// The group (`cmd_exec_group`); the user's own group when `None`.
    pub group: Option<String>,
}

/// How a stanza authenticates packets: its format's keys. The fwknop variant is the larger by
/// far (its HMAC state); it stays inline because it is the hot path and stanzas are few.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Auth {
    /// fwknop: the Rijndael key and mode (none for a GPG-only stanza), the keyed HMAC, and
    /// the GPG settings (`gpg` feature).
    Fwknop {
        key: Option<EncryptionKey>,
        mode: EncryptionMode,
        hmac: Option<HmacState>,
        hmac_key_len: Option<usize>,
        gpg: Option<Arc<GpgAuth>>,
    },
    /// Modern: the users' public keys, by their bytes.
    Modern { users: HashMap<[u8; 32], ModernUser> },
}

/// A stanza's compiled GPG settings.
#[cfg(feature = "gpg")]
pub(crate) type GpgAuth = crate::gpg::GpgAuth;

/// Without the `gpg` feature no stanza has GPG settings: the type has no values.
#[cfg(not(feature = "gpg"))]
#[derive(Debug)]
pub(crate) enum GpgAuth {}

/// A listed user of a modern stanza.
#[derive(Clone, Debug)]
pub(crate) struct ModernUser {
    pub(crate) key: UserPublicKey,
    /// The key decompressed once, here, rather than for every packet.
    pub(crate) verifier: crate::modern::UserVerifier,
    pub(crate) identity: Arc<str>,
}

/// The lengths in bytes of a stanza's keys, after base64 decoding (never the keys
/// themselves). The engine takes any length fwknop takes, since clients and fwknop's own test
/// vectors use short keys; a daemon reads these to hold its configuration to a stricter rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLengths {
    /// The Rijndael key.
    pub encryption: usize,
    /// The HMAC key, if the stanza has one.
    pub hmac: Option<usize>,
}

/// fwknop's `CMD_CYCLE_*`: commands run instead of a firewall change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdCycle {
    /// Run at grant time.
    pub open: CommandLine,
    /// Run when the grant ends (none: fwknop's `CMD_CYCLE_CLOSE NONE`).
    pub close: Option<CommandLine>,
    /// Seconds between the two, unless the client asked for a timeout.
    pub timer: u32,
}

impl Stanza {
    /// Checks the rules that span several keys and prepares the stanza; `index` counts from 0.
    pub fn compile(raw: &AccessStanza, index: usize, settings: &Settings) -> Result<Stanza, Error> {
        let name: Arc<str> = raw.name.clone().unwrap_or_else(|| format!("stanza-{}", index + 1)).into();
        let wrap = |source: Error| Error::Stanza { name: name.to_string(), source: Box::new(source) };
        Self::compile_inner(raw, name.clone(), settings).map_err(wrap)
    }

    fn compile_inner(raw: &AccessStanza, name: Arc<str>, settings: &Settings) -> Result<Stanza, Error> {
        let auth = match raw.format {
            Format::Fwknop => Self::fwknop_auth(raw)?,
            Format::Modern => Self::modern_auth(raw)?,
        };
        Self::compile_policy(raw, name, settings, auth)
    }

    /// The keys of a modern stanza: its users, and none of fwknop's keys.
    fn modern_auth(raw: &AccessStanza) -> Result<Auth, Error> {
        let not = |key| Err(Error::NotForFormat { key, format: "modern" });
        for (set, key) in [
            (raw.key.is_some(), "key"),
            (raw.key_base64.is_some(), "key_base64"),
            (raw.hmac_key.is_some(), "hmac_key"),
            (raw.hmac_key_base64.is_some(), "hmac_key_base64"),
            (raw.allow_no_hmac, "allow_no_hmac"),
            (raw.hmac_digest_type.is_some(), "hmac_digest_type"),
            (raw.encryption_mode != EncryptionMode::default(), "encryption_mode"),
            (raw.enable_cmd_exec, "enable_cmd_exec"),
            (raw.gpg_decrypt_key_file.is_some(), "gpg_decrypt_key_file"),
        ] {
            if set {
                return not(key);
            }
        }
        let entries = raw.users.as_deref().unwrap_or_default();
        if entries.is_empty() {
            return Err(Error::Requires { key: "format = \"modern\"", needs: "users" });
        }
        let mut users = HashMap::with_capacity(entries.len());
        for e in entries {
            let user = ModernUser { key: e.key, verifier: e.key.verifier(), identity: e.identity().into() };
            if users.insert(e.key.to_bytes(), user).is_some() {
                return Err(Error::DuplicateUser { key: e.key.to_string() });
            }
        }
        Ok(Auth::Modern { users })
    }

    /// The keys of an fwknop stanza.
    fn fwknop_auth(raw: &AccessStanza) -> Result<Auth, Error> {
        if raw.users.is_some() {
            return Err(Error::NotForFormat { key: "users", format: "fwknop" });
        }
        let gpg = gpg_auth(raw)?;
        let invalid = |key: &'static str| move |e: Error| Error::InvalidKey { key, source: Box::new(e) };
        let key = match (&raw.key, &raw.key_base64) {
            (Some(k), None) => {
                Some(EncryptionKey::new(k.expose().as_bytes().to_vec()).map_err(invalid("key"))?)
            }
            (None, Some(k)) => Some(EncryptionKey::from_base64(k.expose()).map_err(invalid("key_base64"))?),
            (None, None) if gpg.is_some() => None,
            (None, None) => return Err(Error::MissingKey),
            (Some(_), Some(_)) => return Err(Error::ConflictingKeys { a: "key", b: "key_base64" }),
        };
        let hmac_key = match (&raw.hmac_key, &raw.hmac_key_base64) {
            (Some(k), None) => {
                Some(HmacKey::new(k.expose().as_bytes().to_vec()).map_err(invalid("hmac_key"))?)
            }
            (None, Some(k)) => Some(HmacKey::from_base64(k.expose()).map_err(invalid("hmac_key_base64"))?),
            (None, None) => None,
            (Some(_), Some(_)) => return Err(Error::ConflictingKeys { a: "hmac_key", b: "hmac_key_base64" }),
        };
        if let (Some(h), Some(key)) = (&hmac_key, &key)
            && keys_equal(key, h)
        {
            return Err(Error::KeysEqual);
        }
        if raw.allow_no_hmac && hmac_key.is_some() {
            let b = if raw.hmac_key.is_some() { "hmac_key" } else { "hmac_key_base64" };
            return Err(Error::ConflictingKeys { a: "allow_no_hmac", b });
        }
        let hmac_key_len = hmac_key.as_ref().map(|h| h.as_bytes().len());
        let hmac = hmac_key.map(|h| HmacState::new(raw.hmac_digest_type.unwrap_or_default(), h.as_bytes()));
        Ok(Auth::Fwknop { key, mode: raw.encryption_mode, hmac, hmac_key_len, gpg })
    }

    /// The rules both formats share, and the compiled stanza.
    fn compile_policy(
        raw: &AccessStanza,
        name: Arc<str>,
        settings: &Settings,
        auth: Auth,
    ) -> Result<Stanza, Error> {
        let snat = match (raw.force_snat, raw.force_masquerade) {
            (Some(ip), false) => Some(crate::verdict::Snat::To(ip)),
            (None, true) => Some(crate::verdict::Snat::Masquerade),
            (None, false) => None,
            (Some(_), true) => return Err(Error::ConflictingKeys { a: "force_snat", b: "force_masquerade" }),
        };
        if snat.is_some() && raw.force_nat.is_none() && !raw.forward_all {
            return Err(Error::Requires {
                key: "force_snat/force_masquerade",
                needs: "force_nat or forward_all",
            });
        }
        if raw.forward_all && raw.force_nat.is_none() && !raw.disable_dnat {
            return Err(Error::Requires { key: "forward_all", needs: "force_nat or disable_dnat" });
        }
        if (raw.force_nat.is_some() || raw.forward_all) && !settings.enable_forwarding {
            return Err(Error::Requires { key: "force_nat/forward_all", needs: "[nat] enable_forwarding" });
        }
        if raw.cmd_cycle_close.is_some() && raw.cmd_cycle_open.is_none() {
            return Err(Error::Requires { key: "cmd_cycle_close", needs: "cmd_cycle_open" });
        }
        if raw.cmd_exec_user.is_some() && !raw.enable_cmd_exec {
            return Err(Error::Requires { key: "cmd_exec_user", needs: "enable_cmd_exec" });
        }
        if raw.cmd_exec_group.is_some() && raw.cmd_exec_user.is_none() {
            return Err(Error::Requires { key: "cmd_exec_group", needs: "cmd_exec_user" });
        }
        let cmd_exec = match &raw.cmd_exec_user {
            Some(user) if user.is_empty() || raw.cmd_exec_group.as_ref().is_some_and(String::is_empty) => {
                return Err(Error::Requires { key: "cmd_exec_user/cmd_exec_group", needs: "a name" });
            }
            Some(user) => Some(CmdExec { user: user.clone(), group: raw.cmd_exec_group.clone() }),
            None => None,
        };
        let fw_access_timeout = raw.fw_access_timeout.map_or(DEFAULT_FW_ACCESS_TIMEOUT, |s| s.0);
        let max_fw_timeout = raw.max_fw_timeout.map_or(DEFAULT_MAX_FW_TIMEOUT, |s| s.0);
        if fw_access_timeout == 0 {
            return Err(Error::Requires { key: "fw_access_timeout", needs: "a value above 0" });
        }
        let cmd_cycle = raw.cmd_cycle_open.clone().map(|open| CmdCycle {
            open,
            close: raw.cmd_cycle_close.clone(),
            timer: raw.cmd_cycle_timer.map_or(fw_access_timeout, |s| s.0),
        });
        Ok(Stanza {
            name,
            source: raw.source.clone(),
            destination: raw.destination.clone(),
            open_ports: raw.open_ports.clone().map(|p| p.0),
            restrict_ports: raw.restrict_ports.clone().map(|p| p.0).unwrap_or_default(),
            auth,
            fw_access_timeout,
            max_fw_timeout,
            require_username: raw.require_username.clone(),
            require_source_address: raw.require_source_address,
            expires: raw.access_expire.map(|e| e.0),
            force_nat: raw.force_nat,
            snat,
            disable_dnat: raw.disable_dnat,
            forward_all: raw.forward_all,
            enable_cmd_exec: raw.enable_cmd_exec,
            cmd_cycle,
            cmd_exec,
        })
    }

    /// The stanza's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The longest grant a client may ask this stanza for, in seconds (`max_fw_timeout`): the
    /// daemon caps deadlines it reads back from its state with it, so a forged or stale record
    /// cannot keep a grant open longer than the policy allows.
    pub fn max_fw_timeout(&self) -> u32 {
        self.max_fw_timeout
    }

    /// The grant length used when the client asks for none (`fw_access_timeout`); it may exceed
    /// `max_fw_timeout`, which caps only what clients ask for.
    pub fn fw_access_timeout(&self) -> u32 {
        self.fw_access_timeout
    }

    /// The lengths of the stanza's keys, for a daemon's key-strength rules. A modern stanza
    /// has no shared keys (`encryption: 0, hmac: None`): check [`Stanza::format`] first.
    pub fn key_lengths(&self) -> KeyLengths {
        match &self.auth {
            Auth::Fwknop { key, hmac_key_len, .. } => {
                KeyLengths { encryption: key.as_ref().map_or(0, |k| k.as_bytes().len()), hmac: *hmac_key_len }
            }
            Auth::Modern { .. } => KeyLengths { encryption: 0, hmac: None },
        }
    }

    /// The wire format this stanza accepts.
    pub fn format(&self) -> Format {
        match self.auth {
            Auth::Fwknop { .. } => Format::Fwknop,
            Auth::Modern { .. } => Format::Modern,
        }
    }

    /// A modern stanza's users: each public key and the username its grants carry (in no
    /// particular order). Empty for an fwknop stanza.
    pub fn users(&self) -> Vec<(UserPublicKey, Arc<str>)> {
        match &self.auth {
            Auth::Modern { users } => users.values().map(|u| (u.key, u.identity.clone())).collect(),
            Auth::Fwknop { .. } => Vec::new(),
        }
    }

    /// The listed user with these key bytes, if this is a modern stanza that lists them.
    pub(crate) fn modern_user(&self, key: &[u8; 32]) -> Option<&ModernUser> {
        match &self.auth {
            Auth::Modern { users } => users.get(key),
            Auth::Fwknop { .. } => None,
        }
    }

    /// Whether this stanza applies to a packet between these addresses.
    pub fn matches(&self, src: IpAddr, dst: IpAddr) -> bool {
        self.source.contains(src) && self.destination.as_ref().is_none_or(|d| d.contains(dst))
    }

    /// The keys this stanza opens fwknop's Rijndael packets with; `None` for a modern stanza
    /// or a GPG-only one.
    pub fn keys(&self) -> Option<crate::packet::OpenKeys<'_>> {
        match &self.auth {
            Auth::Fwknop { key: Some(key), mode, hmac, .. } => {
                Some(crate::packet::OpenKeys { key, mode: *mode, hmac: hmac.as_ref() })
            }
            Auth::Fwknop { key: None, .. } | Auth::Modern { .. } => None,
        }
    }

    /// Whether this stanza takes fwknop's GPG packets (`gpg_decrypt_key_file`).
    pub fn has_gpg(&self) -> bool {
        matches!(&self.auth, Auth::Fwknop { gpg: Some(_), .. })
    }

    /// The GPG settings and the HMAC of a GPG stanza.
    pub(crate) fn gpg(&self) -> Option<(&GpgAuth, Option<&HmacState>)> {
        match &self.auth {
            Auth::Fwknop { gpg: Some(g), hmac, .. } => Some((g, hmac.as_ref())),
            _ => None,
        }
    }
}

/// The `gpg_*` keys that fwknop has and this project refuses, with the reason.
fn refused_gpg_keys(raw: &AccessStanza) -> Result<(), Error> {
    if raw.gpg_home_dir.is_some() {
        return Err(Error::Unsupported {
            key: "gpg_home_dir",
            reason: "no GnuPG keyring is read; export the keys to files (`gpg --export-secret-keys --armor \
                     ID` for gpg_decrypt_key_file, `gpg --export --armor ID` for gpg_remote_keys_file)",
        });
    }
    if raw.gpg_exe.is_some() {
        return Err(Error::Unsupported {
            key: "gpg_exe",
            reason: "no gpg process runs; OpenPGP is built in (set gpg_decrypt_key_file)",
        });
    }
    if raw.gpg_ignore_sig_verify_error {
        return Err(Error::Unsupported {
            key: "gpg_ignore_sig_verify_error",
            reason: "a signature that does not verify with gpg_remote_keys_file is never accepted; \
                     put the signer's current public key in that file",
        });
    }
    Ok(())
}

/// The `gpg_*` keys that need `gpg_decrypt_key_file`, for error messages.
fn gpg_keys_set(raw: &AccessStanza) -> Option<&'static str> {
    [
        (raw.gpg_decrypt_id.is_some(), "gpg_decrypt_id"),
        (raw.gpg_decrypt_pw.is_some(), "gpg_decrypt_pw"),
        (raw.gpg_allow_no_pw, "gpg_allow_no_pw"),
        (raw.gpg_remote_keys_file.is_some(), "gpg_remote_keys_file"),
        (raw.gpg_remote_id.is_some(), "gpg_remote_id"),
        (raw.gpg_fingerprint_id.is_some(), "gpg_fingerprint_id"),
        (raw.gpg_require_sig.is_some(), "gpg_require_sig"),
        (raw.gpg_disable_sig, "gpg_disable_sig"),
    ]
    .into_iter()
    .find_map(|(set, key)| set.then_some(key))
}

#[cfg(not(feature = "gpg"))]
fn gpg_auth(raw: &AccessStanza) -> Result<Option<Arc<GpgAuth>>, Error> {
    refused_gpg_keys(raw)?;
    if raw.gpg_decrypt_key_file.is_some() {
        return Err(Error::GpgNotBuilt { key: "gpg_decrypt_key_file" });
    }
    match gpg_keys_set(raw) {
        Some(key) => Err(Error::GpgNotBuilt { key }),
        None => Ok(None),
    }
}

/// fwknop's rules for a GPG stanza (`server/access.c`), compiled.
#[cfg(feature = "gpg")]
fn gpg_auth(raw: &AccessStanza) -> Result<Option<Arc<GpgAuth>>, Error> {
    use crate::gpg::{DecryptKey, SignerKeys, normalize_id};
    refused_gpg_keys(raw)?;
    if raw.gpg_decrypt_key_file.is_none() {
        return match gpg_keys_set(raw) {
            Some(key) => Err(Error::Requires { key, needs: "gpg_decrypt_key_file" }),
            None => Ok(None),
        };
    }
    let text = &raw.gpg_key_text;
    let Some(secret) = &text.decrypt_key else {
        return Err(Error::Requires {
            key: "gpg_decrypt_key_file",
            needs: "its contents (read by the caller)",
        });
    };
    let password = match (&raw.gpg_decrypt_pw, raw.gpg_allow_no_pw) {
        (Some(pw), false) => Some(pw.expose()),
        (None, true) => None,
        (None, false) => {
            return Err(Error::Requires {
                key: "gpg_decrypt_key_file",
                needs: "gpg_decrypt_pw or gpg_allow_no_pw",
            });
        }
        (Some(_), true) => return Err(Error::ConflictingKeys { a: "gpg_decrypt_pw", b: "gpg_allow_no_pw" }),
    };
    let decrypt = DecryptKey::from_export(secret.expose().as_bytes(), password)
        .map_err(|e| Error::InvalidKey { key: "gpg_decrypt_key_file", source: Box::new(e) })?;
    if let Some(id) = &raw.gpg_decrypt_id {
        let norm =
            normalize_id(id).ok_or_else(|| Error::BadKeyId { key: "gpg_decrypt_id", value: id.clone() })?;
        if !decrypt.has_id(&norm) {
            return Err(Error::GpgKey {
                what: "gpg_decrypt_id",
                detail: format!("{id} is not the key in gpg_decrypt_key_file ({})", decrypt.fingerprint()),
            });
        }
    }
    let ids = |key: &'static str, list: &Option<IdList>, lens: &[usize]| -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for id in list.iter().flat_map(|l| &l.0) {
            match normalize_id(id) {
                Some(n) if lens.contains(&n.len()) => out.push(n),
                _ => return Err(Error::BadKeyId { key, value: id.clone() }),
            }
        }
        Ok(out)
    };
    let remote_ids = ids("gpg_remote_id", &raw.gpg_remote_id, &[8, 16])?;
    let fingerprints = ids("gpg_fingerprint_id", &raw.gpg_fingerprint_id, &[40, 64])?;
    let require_sig = match (raw.gpg_require_sig, raw.gpg_disable_sig) {
        (Some(true), true) => {
            return Err(Error::ConflictingKeys { a: "gpg_require_sig", b: "gpg_disable_sig" });
        }
        (Some(r), _) => r,
        (None, disable) => !disable,
    };
    let signers = if require_sig {
        if remote_ids.is_empty() && fingerprints.is_empty() {
            // fwknopd exits here too.
            return Err(Error::Requires {
                key: "gpg_require_sig",
                needs: "gpg_remote_id or gpg_fingerprint_id",
            });
        }
        if raw.gpg_remote_keys_file.is_none() {
            return Err(Error::Requires { key: "gpg_require_sig", needs: "gpg_remote_keys_file" });
        }
        let Some(keys) = &text.remote_keys else {
            return Err(Error::Requires {
                key: "gpg_remote_keys_file",
                needs: "its contents (read by the caller)",
            });
        };
        Some(
            SignerKeys::from_export(keys.as_bytes())
                .map_err(|e| Error::InvalidKey { key: "gpg_remote_keys_file", source: Box::new(e) })?,
        )
    } else {
        for (set, key) in [
            (!remote_ids.is_empty(), "gpg_remote_id"),
            (!fingerprints.is_empty(), "gpg_fingerprint_id"),
            (raw.gpg_remote_keys_file.is_some(), "gpg_remote_keys_file"),
        ] {
            if set {
                return Err(Error::Requires { key, needs: "signature checking (gpg_require_sig)" });
            }
        }
        None
    };
    Ok(Some(Arc::new(GpgAuth { decrypt, require_sig, signers, remote_ids, fingerprints })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AccessStanza, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn fwknop_style_and_toml_style_values() {
        let a = parse(
            r#"
            source = "ANY"
            open_ports = "tcp/22, udp/53"
            key = "k"
            fw_access_timeout = "5m"
            access_expire = "12/31/2030"
            force_nat = "192.168.1.2 22"
            "#,
        )
        .unwrap();
        assert!(a.source.contains("10.1.2.3".parse().unwrap()));
        assert!(a.source.contains("2001:db8::1".parse().unwrap()));
        assert_eq!(a.open_ports.unwrap().0.len(), 2);
        assert_eq!(a.fw_access_timeout, Some(Seconds(300)));
        assert_eq!(a.access_expire, Some(Expiry(1924905600)));
        assert_eq!(a.force_nat.unwrap().port, 22);

        let b = parse(
            r#"
            source = ["10.0.0.0/8", "fd00::/8", "192.168.0.0/255.255.0.0"]
            open_ports = ["tcp/22"]
            key_base64 = "dGVzdGtleTEyMw=="
            access_expire = 1924905600
            "#,
        )
        .unwrap();
        assert!(b.source.contains("192.168.7.7".parse().unwrap()));
        assert!(b.source.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!b.source.contains("11.0.0.1".parse().unwrap()));
        assert_eq!("2030-12-31".parse::<Expiry>().unwrap(), Expiry(1924905600));
    }

    #[test]
    fn bad_values_name_the_problem() {
        for (text, needle) in [
            ("source = \"10.0.0.300\"\nkey = \"k\"", "invalid address"),
            ("source = \"any\"\nopen_ports = \"tcp/99999\"", "invalid proto/port"),
            ("source = \"any\"\nfw_access_timeout = \"5 weeks\"", "duration unit"),
            ("source = \"any\"\nhmac_digest_type = \"sha999\"", "unknown digest type"),
            ("source = \"any\"\nencryption_mode = \"pcbc\"", "unknown encryption mode"),
            ("source = \"any\"\nkye = \"k\"", "unknown field"),
            ("source = \"any\"\naccess_expire = \"02/30/2030\"", "invalid date"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    fn compile(s: &str, settings: Settings) -> Result<Stanza, Error> {
        Stanza::compile(&parse(s).unwrap(), 0, &settings)
    }

    #[test]
    fn cross_key_rules() {
        let ok = Settings::default();
        assert!(compile("source = \"any\"\nkey = \"k\"", ok).is_ok());
        let msg = |s: &str, st| {
            let e = compile(s, st).unwrap_err();
            let mut text = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                text.push_str(": ");
                text.push_str(&s.to_string());
                src = s.source();
            }
            text
        };
        assert!(msg("source = \"any\"", ok).contains("neither key nor key_base64"));
        assert!(msg("source = \"any\"\nkey = \"same\"\nhmac_key = \"same\"", ok).contains("equals"));
        assert!(msg("source = \"any\"\nkey = \"k\"\nkey_base64 = \"aw\"", ok).contains("both"));
        assert!(msg("source = \"any\"\nkey = \"0123456789012345678901234567890123\"", ok).contains("32"));
        assert!(
            msg("source = \"any\"\nkey = \"k\"\nforce_nat = \"10.0.0.2 22\"", ok)
                .contains("enable_forwarding")
        );
        assert!(
            msg("name = \"x\"\nsource = \"any\"\nkey = \"k\"\nforward_all = true", ok)
                .starts_with("access stanza x")
        );
        assert_eq!(
            msg("source = \"any\"\nkey = \"k\"\nhmac_key_base64 = \"REPLACE_ME\"", ok),
            "access stanza stanza-1: invalid hmac_key_base64: key is not valid base64"
        );
        assert_eq!(
            msg("source = \"any\"\nkey = \"k\"\nhmac_key = \"h\"\nallow_no_hmac = true", ok),
            "access stanza stanza-1: both allow_no_hmac and hmac_key are set"
        );
        assert_eq!(
            msg("source = \"any\"\nkey = \"k\"\ncmd_exec_user = \"nobody\"", ok),
            "access stanza stanza-1: cmd_exec_user requires enable_cmd_exec"
        );
        assert_eq!(
            msg("source = \"any\"\nkey = \"k\"\nenable_cmd_exec = true\ncmd_exec_group = \"nogroup\"", ok),
            "access stanza stanza-1: cmd_exec_group requires cmd_exec_user"
        );
        let s = compile(
            "source = \"any\"\nkey = \"k\"\nenable_cmd_exec = true\ncmd_exec_user = \"nobody\"\n\
             cmd_exec_group = \"nogroup\"",
            ok,
        )
        .unwrap();
        assert_eq!(s.cmd_exec, Some(CmdExec { user: "nobody".into(), group: Some("nogroup".into()) }));
        assert_eq!(
            compile("source = \"any\"\nkey = \"k\"\nenable_cmd_exec = true", ok).unwrap().cmd_exec,
            None
        );
    }

    #[test]
    fn key_lengths_are_counted_after_decoding() {
        let ok = Settings::default();
        let s = compile("source = \"any\"\nkey = \"testkey123\"\nallow_no_hmac = true", ok).unwrap();
        assert_eq!(s.key_lengths(), KeyLengths { encryption: 10, hmac: None });
        // 24 base64 characters are 18 bytes; the HMAC key is 64 bytes of text.
        let s = compile(
            &format!(
                "source = \"any\"\nkey_base64 = \"{}\"\nhmac_key = \"{}\"",
                "QUJD".repeat(6),
                "h".repeat(64)
            ),
            ok,
        )
        .unwrap();
        assert_eq!(s.key_lengths(), KeyLengths { encryption: 18, hmac: Some(64) });
    }
}

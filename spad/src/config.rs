//! `spad.toml` and `access.d/*.toml`: loading, checking, and errors that name file, line and key.
//!
//! Everything is parsed into typed values first (unknown keys are errors), then the access
//! stanzas are compiled by the engine. A failure anywhere leaves the caller's running
//! configuration untouched, which is what makes SIGHUP safe.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use spa_engine::{AccessStanza, Settings, Verifier};

/// The SPA port fwknop uses.
pub const DEFAULT_PORT: u16 = 62201;

/// How packets are received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Bound UDP sockets (portable; the port is open to the host's stack).
    #[default]
    Socket,
    /// Passive AF_PACKET capture with a kernel BPF filter: works while the firewall drops the
    /// SPA port, and nothing listens on it.
    Capture,
}

/// `[listen]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Socket or capture.
    #[serde(default)]
    pub mode: Mode,
    /// Socket mode: addresses to bind.
    #[serde(default = "default_addresses")]
    pub addresses: Vec<SocketAddr>,
    /// Capture mode: interfaces to capture on.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Capture mode: the UDP destination port to capture.
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_addresses() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
        SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 0], DEFAULT_PORT)),
    ]
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            mode: Mode::Socket,
            addresses: default_addresses(),
            interfaces: Vec::new(),
            port: DEFAULT_PORT,
        }
    }
}

/// `[firewall]`: the backend's name, its own table, and exit behaviour.
#[derive(Clone, Debug, PartialEq)]
pub struct Firewall {
    /// The registered backend name.
    pub backend: String,
    /// Keep grants in the firewall when spad stops (they still end at their deadline where the
    /// backend expires natively; otherwise at the next start).
    pub keep_grants_on_exit: bool,
    /// `[firewall.<backend>]`.
    pub table: toml::Table,
}

/// `[replay]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// fwknop's `MAX_SPA_PACKET_AGE`, seconds.
    #[serde(default = "default_age")]
    pub max_packet_age: u64,
    /// Where grants and the replay cache are kept across restarts.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Most packets remembered at once.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
}

fn default_age() -> u64 {
    120
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/spad")
}
fn default_capacity() -> usize {
    1_000_000
}

impl Default for Replay {
    fn default() -> Self {
        Self { max_packet_age: default_age(), state_dir: default_state_dir(), capacity: default_capacity() }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// Audit trail: a JSON-lines file, or `-` for stdout.
    #[serde(default = "default_audit")]
    pub audit: String,
    /// Most reject events written per second; the rest are counted in summaries, so a flood
    /// cannot flood the log.
    #[serde(default = "default_reject_rate")]
    pub max_rejects_per_second: u32,
}

fn default_audit() -> String {
    "/var/log/spad/audit.jsonl".into()
}
fn default_reject_rate() -> u32 {
    50
}

impl Default for Log {
    fn default() -> Self {
        Self { audit: default_audit(), max_rejects_per_second: default_reject_rate() }
    }
}

/// `[nat]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NatSettings {
    /// fwknop `ENABLE_IPT_FORWARDING`.
    #[serde(default)]
    pub enable_forwarding: bool,
    /// fwknop `ENABLE_IPT_LOCAL_NAT`.
    #[serde(default)]
    pub enable_local_nat: bool,
}

/// `[limits]`: how many authenticated requests from one packet source (IPv6: its /64) the
/// backend worker acts on. Nothing is limited before the HMAC check: junk costs under a
/// microsecond to refuse, and a limit there would let anyone who can spoof a client's
/// address starve that client's knocks.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Authenticated requests per second one source may have acted on (sustained); the rest
    /// are refused as `rate_limited`.
    #[serde(default = "default_rate")]
    pub per_source_rate: f64,
    /// Burst allowance per source.
    #[serde(default = "default_burst")]
    pub per_source_burst: f64,
}

fn default_rate() -> f64 {
    50.0
}
fn default_burst() -> f64 {
    100.0
}

impl Default for Limits {
    fn default() -> Self {
        Self { per_source_rate: default_rate(), per_source_burst: default_burst() }
    }
}

/// The whole configuration, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// `[listen]`.
    pub listen: Listen,
    /// `[firewall]`.
    pub firewall: Firewall,
    /// `[replay]`.
    pub replay: Replay,
    /// `[log]`.
    pub log: Log,
    /// `[nat]`.
    pub nat: NatSettings,
    /// `[limits]`.
    pub limits: Limits,
    /// The compiled access policy.
    pub verifier: Verifier,
    /// Warnings to log (for example, secrets readable by others).
    pub warnings: Vec<String>,
}

/// A configuration error, located.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// What is wrong (mentions the key).
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

fn located(file: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    // Without its input, toml's error renders the dotted key path ("in `access.0.open_ports`").
    let mut bare = err.clone();
    bare.set_input(None);
    let rendered = bare.to_string();
    let key = rendered.lines().find_map(|l| l.strip_prefix("in `").and_then(|k| k.strip_suffix('`')));
    let message = match key {
        Some(k) if !err.message().contains(k.rsplit('.').next().unwrap_or(k)) => {
            format!("{k}: {}", err.message().trim())
        }
        _ => err.message().trim().to_owned(),
    };
    ConfigError { file: file.to_owned(), line: err.span().map(|s| line_of(text, s.start)), message }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMain {
    #[serde(default)]
    listen: Listen,
    firewall: Option<toml::Spanned<toml::Table>>,
    #[serde(default)]
    replay: Replay,
    #[serde(default)]
    log: Log,
    #[serde(default)]
    nat: NatSettings,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    access: Vec<toml::Spanned<AccessStanza>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessFile {
    #[serde(default)]
    access: Vec<toml::Spanned<AccessStanza>>,
}

/// Where a stanza was written, for errors found after parsing.
struct StanzaOrigin {
    file: PathBuf,
    line: usize,
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: None,
        message: e.to_string(),
    })
}

/// A warning when a file holding keys is readable by group or others.
fn permission_warning(path: &Path, text: &str) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    let has_secret = text.lines().any(|l| {
        let k = l.trim_start();
        k.starts_with("key") || k.starts_with("hmac_key")
    });
    (has_secret && mode & 0o077 != 0).then(|| {
        format!(
            "{} holds keys but is readable by others (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        )
    })
}

fn parse_firewall(
    path: &Path,
    text: &str,
    raw: Option<toml::Spanned<toml::Table>>,
) -> Result<Firewall, ConfigError> {
    let err = |line: Option<usize>, message: String| ConfigError { file: path.to_owned(), line, message };
    let Some(raw) = raw else {
        return Ok(Firewall {
            backend: "none".into(),
            keep_grants_on_exit: false,
            table: toml::Table::new(),
        });
    };
    let line = Some(line_of(text, raw.span().start));
    let mut t = raw.into_inner();
    let backend = match t.remove("backend") {
        Some(toml::Value::String(s)) => s,
        Some(_) => return Err(err(line, "firewall.backend must be a string".into())),
        None => return Err(err(line, "firewall.backend is missing".into())),
    };
    let keep_grants_on_exit = match t.remove("keep_grants_on_exit") {
        Some(toml::Value::Boolean(b)) => b,
        Some(_) => return Err(err(line, "firewall.keep_grants_on_exit must be true or false".into())),
        None => false,
    };
    let mut table = toml::Table::new();
    for (k, v) in t {
        match v {
            toml::Value::Table(inner) if k == backend => table = inner,
            toml::Value::Table(_) => {
                return Err(err(
                    line,
                    format!("[firewall.{k}] does not match firewall.backend = {backend:?}"),
                ));
            }
            _ => return Err(err(line, format!("unknown key firewall.{k}"))),
        }
    }
    Ok(Firewall { backend, keep_grants_on_exit, table })
}

impl Config {
    /// Loads `path` and every `*.toml` in the `access.d` folder beside it (in name order).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        let raw: RawMain = toml::from_str(&text).map_err(|e| located(path, &text, &e))?;
        let mut warnings: Vec<String> = permission_warning(path, &text).into_iter().collect();
        let firewall = parse_firewall(path, &text, raw.firewall)?;
        if raw.listen.mode == Mode::Socket && raw.listen.addresses.is_empty() {
            return Err(ConfigError {
                file: path.to_owned(),
                line: None,
                message: "listen.addresses is empty".into(),
            });
        }
        if raw.listen.mode == Mode::Capture && raw.listen.interfaces.is_empty() {
            return Err(ConfigError {
                file: path.to_owned(),
                line: None,
                message: "listen.interfaces is empty (capture mode needs at least one)".into(),
            });
        }

        let mut stanzas: Vec<AccessStanza> = Vec::new();
        let mut origins: Vec<StanzaOrigin> = Vec::new();
        for s in raw.access {
            origins.push(StanzaOrigin { file: path.to_owned(), line: line_of(&text, s.span().start) });
            stanzas.push(s.into_inner());
        }
        let dir = path.parent().unwrap_or(Path::new(".")).join("access.d");
        if dir.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| ConfigError { file: dir.clone(), line: None, message: e.to_string() })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for f in files {
                let t = read(&f)?;
                let raw: RawAccessFile = toml::from_str(&t).map_err(|e| located(&f, &t, &e))?;
                warnings.extend(permission_warning(&f, &t));
                for s in raw.access {
                    origins.push(StanzaOrigin { file: f.clone(), line: line_of(&t, s.span().start) });
                    stanzas.push(s.into_inner());
                }
            }
        }
        if stanzas.is_empty() {
            return Err(ConfigError {
                file: path.to_owned(),
                line: None,
                message: "no [[access]] stanzas (in the file or in access.d/)".into(),
            });
        }
        let mut names = BTreeMap::new();
        for (i, s) in stanzas.iter().enumerate() {
            if let Some(n) = &s.name
                && let Some(prev) = names.insert(n.clone(), i)
            {
                let o = &origins[i];
                return Err(ConfigError {
                    file: o.file.clone(),
                    line: Some(o.line),
                    message: format!("stanza name {n:?} is used twice (first at {})", origins[prev].line),
                });
            }
        }
        let settings = Settings {
            max_packet_age: raw.replay.max_packet_age,
            enable_forwarding: raw.nat.enable_forwarding,
            enable_local_nat: raw.nat.enable_local_nat,
        };
        // Compile stanza by stanza so an error can point at the stanza's file and line.
        for (i, s) in stanzas.iter().enumerate() {
            if let Err(e) = spa_engine::stanza::Stanza::compile(s, i, &settings) {
                let o = &origins[i];
                return Err(ConfigError {
                    file: o.file.clone(),
                    line: Some(o.line),
                    message: error_chain(&e),
                });
            }
            if s.cmd_cycle_open.is_some() {
                let o = &origins[i];
                return Err(ConfigError {
                    file: o.file.clone(),
                    line: Some(o.line),
                    message: "cmd_cycle_open: spad runs custom commands through the script backend \
                              ([firewall] backend = \"script\"), not per stanza"
                        .into(),
                });
            }
        }
        let verifier = Verifier::new(&stanzas, settings).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            message: error_chain(&e),
        })?;
        Ok(Config {
            path: path.to_owned(),
            listen: raw.listen,
            firewall,
            replay: raw.replay,
            log: raw.log,
            nat: raw.nat,
            limits: raw.limits,
            verifier,
            warnings,
        })
    }
}

/// `error: cause: cause` on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    const GOOD: &str = r#"
[listen]
mode = "socket"
addresses = ["127.0.0.1:62201"]

[firewall]
backend = "none"

[replay]
state_dir = "/tmp/x"

[[access]]
name = "admins"
source = "any"
key = "secret"
hmac_key = "other"
open_ports = ["tcp/22"]
"#;

    #[test]
    fn loads_main_file_and_access_d() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "spad.toml", GOOD);
        std::fs::create_dir(dir.path().join("access.d")).unwrap();
        write(
            &dir.path().join("access.d"),
            "b.toml",
            "[[access]]\nname = \"b\"\nsource = \"10.0.0.0/8\"\nkey = \"k\"\n",
        );
        write(
            &dir.path().join("access.d"),
            "a.toml",
            "[[access]]\nname = \"a\"\nsource = \"any\"\nkey = \"k\"\n",
        );
        write(&dir.path().join("access.d"), "ignored.txt", "not toml");
        let c = Config::load(&p).unwrap();
        let names: Vec<&str> = c.verifier.stanzas().iter().map(|s| &**s.name()).collect();
        assert_eq!(names, vec!["admins", "a", "b"]);
        assert_eq!(c.firewall.backend, "none");
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let bad = GOOD.replace("open_ports = [\"tcp/22\"]", "open_ports = [\"tcp/22\"]\nopne_ports = 1");
        let p = write(dir.path(), "spad.toml", &bad);
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:18: ", p.display())), "{e}");
        assert!(e.contains("opne_ports"), "{e}");

        let bad = GOOD.replace("hmac_key = \"other\"", "hmac_key = \"secret\"");
        let p = write(dir.path(), "spad.toml", &bad);
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains(":12: access stanza admins: encryption key equals hmac key"), "{e}");

        let bad = GOOD.replace("open_ports = [\"tcp/22\"]", "open_ports = [\"tcp/70000\"]");
        let p = write(dir.path(), "spad.toml", &bad);
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains(":17: access.open_ports: ") && e.contains("tcp/70000"), "{e}");

        std::fs::create_dir(dir.path().join("access.d")).unwrap();
        let p2 = write(&dir.path().join("access.d"), "x.toml", "[[access]]\nsource = \"any\"\n");
        let p = write(dir.path(), "spad.toml", GOOD);
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:1: ", p2.display())) && e.contains("neither key"), "{e}");
    }

    #[test]
    fn firewall_table_must_match_backend() {
        let dir = tempfile::tempdir().unwrap();
        let bad = GOOD.replace("backend = \"none\"", "backend = \"none\"\n[firewall.nft]\ntable = \"x\"");
        let p = write(dir.path(), "spad.toml", &bad);
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("[firewall.nft] does not match"), "{e}");
    }

    #[test]
    fn readable_secrets_warn() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "spad.toml", GOOD);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Config::load(&p).unwrap();
        assert!(c.warnings[0].contains("readable by others"), "{:?}", c.warnings);
    }
}

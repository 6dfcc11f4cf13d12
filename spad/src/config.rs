//! `spad.toml` and `access.d/*.toml`: loading, checking, and errors that name file, line and key.
//!
//! Everything is parsed into typed values first (unknown keys are errors), then the access
//! stanzas are compiled by the engine. A failure anywhere leaves the caller's running
//! configuration untouched, which is what makes SIGHUP safe.
//!
//! The daemon is stricter than the engine (which must read fwknop's short test keys): files
//! that define stanzas must not be open to group or others, keys are at least
//! [`MIN_KEY_LEN`] bytes, every stanza has an HMAC key unless it says `allow_no_hmac`, and
//! values that would switch replay protection or rate limits off are refused.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use spa_backends::{Driver, Registry, RegistryError};
use spa_engine::stanza::Format;
use spa_engine::stanza::Stanza;
use spa_engine::{AccessStanza, ServerSecretKey, Settings, Verifier};

/// The SPA port fwknop uses.
pub const DEFAULT_PORT: u16 = 62201;
/// Shortest key, in bytes after base64 decoding, a stanza may have (encryption and HMAC). The
/// engine takes shorter ones (fwknop does, and its test vectors use them); a daemon should not.
pub const MIN_KEY_LEN: usize = 16;
/// Keys shorter than this draw a warning: `spa keygen` and `fwknop --key-gen` make 32-byte
/// encryption keys and longer HMAC keys.
pub const RECOMMENDED_KEY_LEN: usize = 32;
/// Largest `[replay] max_packet_age` (a day): the replay cache keeps packets for twice that,
/// and a timestamp window wider than a day protects nothing.
pub const MAX_PACKET_AGE: u64 = 86_400;

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
    /// `[listen.tcp]`: knocks over TCP and HTTP, in either mode.
    #[serde(default)]
    pub tcp: TcpListen,
}

/// `[listen.tcp]`: fwknop's `ENABLE_TCP_SERVER` (`TCPSERV_PORT`) and `ENABLE_SPA_OVER_HTTP`,
/// for clients whose UDP is blocked (`fwknop -P tcp`, `fwknop -P http`). Off by default: unlike
/// a UDP knock (or capture), it is a listening port that answers handshakes. The bounds keep a
/// flood of connections from holding memory or keeping knocks out (see `receive::tcp`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpListen {
    /// Listen at all (fwknop `ENABLE_TCP_SERVER`).
    #[serde(default)]
    pub enable: bool,
    /// Addresses and ports to listen on (fwknop `TCPSERV_PORT`, default 62201).
    #[serde(default = "default_addresses")]
    pub addresses: Vec<SocketAddr>,
    /// Also read `GET /<packet>` requests (fwknop `ENABLE_SPA_OVER_HTTP`).
    #[serde(default)]
    pub http: bool,
    /// Connections open at once, over all TCP addresses.
    #[serde(default = "default_tcp_connections")]
    pub max_connections: usize,
    /// Connections open at once from one source (an IPv6 /64).
    #[serde(default = "default_tcp_per_source")]
    pub max_connections_per_source: usize,
    /// How long a connection may take to deliver its packet, in milliseconds.
    #[serde(default = "default_tcp_timeout")]
    pub read_timeout_ms: u64,
}

fn default_tcp_connections() -> usize {
    64
}
fn default_tcp_per_source() -> usize {
    4
}
fn default_tcp_timeout() -> u64 {
    2000
}

/// Largest `[listen.tcp] max_connections` (each holds a socket and up to 4 KiB).
pub const MAX_TCP_CONNECTIONS: usize = 512;

impl Default for TcpListen {
    fn default() -> Self {
        Self {
            enable: false,
            addresses: default_addresses(),
            http: false,
            max_connections: default_tcp_connections(),
            max_connections_per_source: default_tcp_per_source(),
            read_timeout_ms: default_tcp_timeout(),
        }
    }
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
            tcp: TcpListen::default(),
        }
    }
}

/// `[firewall]`: the backend's name, its own table, and exit behaviour. Two are equal when
/// their settings are (where they are written in the file does not count).
#[derive(Clone, Debug)]
pub struct Firewall {
    /// The registered backend name.
    pub backend: String,
    /// Keep grants in the firewall when spad stops (they still end at their deadline where the
    /// backend expires natively; otherwise at the next start).
    pub keep_grants_on_exit: bool,
    /// `[firewall.<backend>]`.
    pub table: toml::Table,
    /// Where the backend's options are written: the table's line, and each key's.
    pub lines: BackendLines,
}

impl PartialEq for Firewall {
    fn eq(&self, other: &Self) -> bool {
        self.backend == other.backend
            && self.keep_grants_on_exit == other.keep_grants_on_exit
            && self.table == other.table
    }
}

/// Lines of the backend's table in the main file, so a backend option error names its line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendLines {
    /// The `[firewall.<backend>]` header (or `[firewall]` when there is none).
    pub table: Option<usize>,
    /// The `backend = ...` line.
    pub backend: Option<usize>,
    /// Each key written in `[firewall.<backend>]`.
    pub keys: BTreeMap<String, usize>,
}

impl BackendLines {
    /// Finds the lines by scanning the text (the backend's table is handed over as a value,
    /// without spans).
    fn scan(text: &str, firewall_line: Option<usize>, backend: &str) -> Self {
        let header = format!("[firewall.{backend}]");
        let mut out = Self { table: firewall_line, ..Self::default() };
        let mut section = String::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.starts_with('[') {
                section = l.split('#').next().unwrap_or_default().trim().to_owned();
                if section == header {
                    out.table = Some(i + 1);
                }
                continue;
            }
            let Some((key, _)) = l.split_once('=') else { continue };
            let key = key.trim().trim_matches('"').to_owned();
            if section == "[firewall]" && key == "backend" {
                out.backend = Some(i + 1);
            } else if section == header {
                out.keys.entry(key).or_insert(i + 1);
            }
        }
        out
    }

    /// The line an error message is about: a key it names (`unknown field `tabel``, or a key's
    /// name in the text), else the table's.
    fn for_message(&self, message: &str) -> Option<usize> {
        if let Some(quoted) = message.split('`').nth(1)
            && let Some(l) = self.keys.get(quoted)
        {
            return Some(*l);
        }
        let mut keys: Vec<(&String, &usize)> = self.keys.iter().collect();
        keys.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        keys.into_iter().find(|(k, _)| message.contains(k.as_str())).map(|(_, l)| *l).or(self.table)
    }
}

/// Something the configuration needs from the backend, and where it asks for it.
#[derive(Clone, Debug)]
pub struct Need {
    /// NAT (forwarding, local NAT, forced NAT) rather than IPv6.
    pub nat: bool,
    /// The error to give when the backend lacks it.
    pub error: ConfigError,
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
    /// Whether replays are remembered by this spad alone or shared with other gateways.
    #[serde(default)]
    pub store: StoreKind,
    /// `[replay.redis]`, for `store = "redis"`.
    #[serde(default)]
    pub redis: Option<RedisSettings>,
}

/// `[replay] store`: where authenticated packets are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// This spad's memory and journal only: a packet seen here is refused here.
    #[default]
    Local,
    /// Also Redis, shared by every gateway that uses the same keys: a packet seen at one is
    /// refused at all of them. The local cache stays in front of it.
    Redis,
}

/// `[replay.redis] on_store_down`: what an authenticated packet gets while Redis cannot
/// answer in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreDown {
    /// Refused (`replay_store_down`): fail closed, nothing can be replayed across gateways.
    #[default]
    Reject,
    /// Checked against this spad's own cache only, accepted if new there, and audited as
    /// `replay_store_degraded`: available, but a packet captured on its way to another gateway
    /// could be replayed here meanwhile.
    Local,
}

/// `[replay.redis]`: the shared store, and what this gateway publishes there. The URL may hold
/// a password, so it is never printed (see [`RedisSettings::redacted_url`]).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host[:port][/db]`, `rediss://...` (TLS), or
    /// `redis+unix:///path/to/socket[?db=N&user=U&pass=P]`.
    pub url: String,
    /// Prefix of every key and channel spad uses, so one Redis can serve several sites.
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
    /// This gateway's name in keys, channels and `spad list --all-gateways` (default: the host
    /// name). Unique per gateway.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Longest wait for one answer from Redis on the packet path, in milliseconds.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
    /// Longest wait for a new connection (resolve, connect, TLS, AUTH), in milliseconds. It is
    /// never spent on the packet path: connections are made by a thread of their own.
    #[serde(default = "default_redis_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// What an authenticated packet gets while Redis cannot answer in time.
    #[serde(default)]
    pub on_store_down: OnStoreDown,
    /// `rediss://`: a PEM file with the certificate authorities to trust instead of the
    /// system's.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// `rediss://`: this client's certificate (PEM), for servers that check clients
    /// (`tls-auth-clients`, Redis's default).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// `rediss://`: the key of `tls_cert_file` (PEM; mode 0600).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

fn default_redis_prefix() -> String {
    "spa".into()
}
fn default_redis_timeout() -> u64 {
    100
}
fn default_redis_connect_timeout() -> u64 {
    1000
}

impl RedisSettings {
    /// The URL with its password (if any) replaced by `***`, for messages.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The gateway name: set, or the host name (checked at load).
    pub fn gateway(&self) -> &str {
        self.gateway.as_deref().unwrap_or_default()
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("gateway", &self.gateway)
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("on_store_down", &self.on_store_down)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

/// The parts of a Redis URL that hold secrets: where its password starts and ends, if any
/// (the `password` of `user:password@`, or the value of a `pass=` query parameter).
fn password_spans(url: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let Some(start) = url.find("://").map(|i| i + 3) else { return spans };
    let rest = &url[start..];
    let query_at = rest.find('?').map_or(url.len(), |i| start + i);
    let authority_end = rest.find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    if let Some(at) = url[start..authority_end].rfind('@').map(|i| start + i)
        && let Some(colon) = url[start..at].find(':').map(|i| start + i)
    {
        spans.push((colon + 1, at));
    }
    if query_at < url.len() {
        let mut pos = query_at + 1;
        for pair in url[query_at + 1..].split(['&', '#']) {
            if let Some(value) = pair.strip_prefix("pass=").or_else(|| pair.strip_prefix("password=")) {
                let end = pos + pair.len();
                spans.push((end - value.len(), end));
            }
            pos += pair.len() + 1;
        }
    }
    spans
}

/// `url` with its password (if any) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = String::new();
    let mut last = 0;
    for (from, to) in password_spans(url) {
        out.push_str(&url[last..from]);
        out.push_str("***");
        last = to;
    }
    out.push_str(&url[last..]);
    out
}

/// Whether a Redis URL holds a password (then the file it is written in must be private).
pub fn url_has_password(url: &str) -> bool {
    password_spans(url).iter().any(|(from, to)| to > from)
}

/// A name used inside Redis keys and channels (a gateway, or with `colon` a prefix): 1 to 64
/// ASCII letters, digits, `.`, `_`, `-` (and `:`), so it never needs quoting and never holds
/// a glob character.
pub fn is_key_name(s: &str, colon: bool) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || (colon && b == b':'))
}

/// This host's name (the default gateway name), if it has one that is text.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, which is what we pass.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok().filter(|h| !h.is_empty())
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
        Self {
            max_packet_age: default_age(),
            state_dir: default_state_dir(),
            capacity: default_capacity(),
            store: StoreKind::Local,
            redis: None,
        }
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

/// `[server]`: the daemon's own key.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// The file holding the server's X25519 secret key (`spad keygen` writes it; mode 0600,
    /// owned by root or spad's user). Modern-format stanzas (`format = "modern"`) need it: the
    /// clients seal their packets to its public half.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
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
    /// `[server]`: re-read on reload, like the stanzas (the key file too).
    pub server: Server,
    /// `[control]`: the control socket of `spad status`, `revoke` and `reload`.
    pub control: crate::control::Control,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: crate::metrics::Metrics,
    /// The compiled access policy.
    pub verifier: Verifier,
    /// Warnings to log (short keys, stanzas without an HMAC), each naming file and line.
    pub warnings: Vec<String>,
    /// What the configuration needs from the backend (NAT, IPv6), checked against its
    /// capabilities by [`Config::backend`].
    pub needs: Vec<Need>,
}

/// A configuration error, located.
#[derive(Clone, Debug)]
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
    server: Server,
    #[serde(default)]
    control: crate::control::Control,
    #[serde(default)]
    metrics: crate::metrics::Metrics,
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
    /// The line of each key written in the stanza.
    keys: BTreeMap<String, usize>,
}

impl StanzaOrigin {
    /// An error (or warning) at `key`'s line, or at the stanza's when the key is not written.
    fn at(&self, key: Option<&str>, message: String) -> ConfigError {
        let line = key.and_then(|k| self.keys.get(k)).copied().unwrap_or(self.line);
        ConfigError { file: self.file.clone(), line: Some(line), message }
    }
}

/// Where values were written: a second, lenient parse of a text that the typed parse has
/// accepted, because the typed values keep no positions and the checks made on them must
/// still name the line.
#[derive(Deserialize, Default)]
struct Spans {
    #[serde(default)]
    replay: BTreeMap<String, toml::Spanned<toml::Value>>,
    #[serde(default)]
    limits: BTreeMap<String, toml::Spanned<toml::Value>>,
    #[serde(default)]
    control: BTreeMap<String, toml::Spanned<toml::Value>>,
    #[serde(default)]
    server: BTreeMap<String, toml::Spanned<toml::Value>>,
    #[serde(default)]
    access: Vec<BTreeMap<String, toml::Spanned<toml::Value>>>,
}

impl Spans {
    fn of(text: &str) -> Self {
        toml::from_str(text).unwrap_or_default()
    }
}

fn key_lines(text: &str, table: &BTreeMap<String, toml::Spanned<toml::Value>>) -> BTreeMap<String, usize> {
    table.iter().map(|(k, v)| (k.clone(), line_of(text, v.span().start))).collect()
}

/// A configuration file's text and its permission bits, both from one open file.
struct Source {
    text: String,
    mode: u32,
}

fn read(path: &Path) -> Result<Source, ConfigError> {
    let fail = |e: std::io::Error| ConfigError { file: path.to_owned(), line: None, message: e.to_string() };
    let mut f = std::fs::File::open(path).map_err(fail)?;
    let mode = f.metadata().map_err(fail)?.permissions().mode();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text).map_err(fail)?;
    Ok(Source { text, mode })
}

/// Refuses a file that defines access stanzas (and so holds keys) when group or others may
/// read or write it: anyone who reads the keys can open the firewall, and anyone who writes
/// them can choose the keys.
fn check_private(path: &Path, source: &Source, stanzas: usize) -> Result<(), ConfigError> {
    if stanzas == 0 || source.mode & 0o077 == 0 {
        return Ok(());
    }
    Err(ConfigError {
        file: path.to_owned(),
        line: None,
        message: format!(
            "holds keys but its mode {:03o} lets group or others read or write it; run chmod 600 {}",
            source.mode & 0o777,
            path.display()
        ),
    })
}

/// `[replay]` and `[limits]` values that would switch a protection off or break arithmetic.
fn check_ranges(path: &Path, text: &str, raw: &RawMain, spans: &Spans) -> Result<(), ConfigError> {
    let err =
        |table: &BTreeMap<String, toml::Spanned<toml::Value>>, key: &str, message: String| ConfigError {
            file: path.to_owned(),
            line: table.get(key).map(|v| line_of(text, v.span().start)),
            message,
        };
    let age = raw.replay.max_packet_age;
    if !(1..=MAX_PACKET_AGE).contains(&age) {
        return Err(err(
            &spans.replay,
            "max_packet_age",
            format!("replay.max_packet_age: {age} is out of range; use 1 to {MAX_PACKET_AGE} seconds"),
        ));
    }
    if raw.replay.capacity == 0 {
        return Err(err(
            &spans.replay,
            "capacity",
            "replay.capacity: 0 is out of range; use at least 1".into(),
        ));
    }
    let rate = raw.limits.per_source_rate;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(err(
            &spans.limits,
            "per_source_rate",
            format!("limits.per_source_rate: {rate} is out of range; use a finite number above 0"),
        ));
    }
    let burst = raw.limits.per_source_burst;
    if !(burst.is_finite() && burst >= 1.0) {
        return Err(err(
            &spans.limits,
            "per_source_burst",
            format!("limits.per_source_burst: {burst} is out of range; use a finite number of at least 1"),
        ));
    }
    Ok(())
}

/// Where `[listen.tcp]` keys were written.
#[derive(Deserialize, Default)]
struct TcpSpans {
    #[serde(default)]
    listen: TcpSpansListen,
}

#[derive(Deserialize, Default)]
struct TcpSpansListen {
    #[serde(default)]
    tcp: BTreeMap<String, toml::Spanned<toml::Value>>,
}

/// `[listen.tcp]` values that would lift its bounds or make it useless.
fn check_tcp(path: &Path, text: &str, tcp: &TcpListen) -> Result<(), ConfigError> {
    let spans: TcpSpans = toml::from_str(text).unwrap_or_default();
    let err = |key: &str, message: String| ConfigError {
        file: path.to_owned(),
        line: spans.listen.tcp.get(key).map(|v| line_of(text, v.span().start)),
        message: format!("listen.tcp.{key}: {message}"),
    };
    if !(1..=MAX_TCP_CONNECTIONS).contains(&tcp.max_connections) {
        return Err(err(
            "max_connections",
            format!("{} is out of range; use 1 to {MAX_TCP_CONNECTIONS}", tcp.max_connections),
        ));
    }
    if !(1..=tcp.max_connections).contains(&tcp.max_connections_per_source) {
        return Err(err(
            "max_connections_per_source",
            format!("{} is out of range; use 1 to max_connections", tcp.max_connections_per_source),
        ));
    }
    if !(100..=60_000).contains(&tcp.read_timeout_ms) {
        return Err(err(
            "read_timeout_ms",
            format!("{} is out of range; use 100 to 60000 milliseconds", tcp.read_timeout_ms),
        ));
    }
    if tcp.http && !tcp.enable {
        return Err(err("http", "needs enable = true (HTTP knocks come in on the TCP addresses)".into()));
    }
    if tcp.enable && tcp.addresses.is_empty() {
        return Err(err("addresses", "is empty; list at least one address, or set enable = false".into()));
    }
    Ok(())
}

/// Where `[replay.redis]` keys were written.
#[derive(Deserialize, Default)]
struct RedisSpans {
    #[serde(default)]
    replay: RedisSpansReplay,
}

#[derive(Deserialize, Default)]
struct RedisSpansReplay {
    #[serde(default)]
    redis: BTreeMap<String, toml::Spanned<toml::Value>>,
}

/// `[replay] store` and `[replay.redis]`: the shared store is either configured whole or not
/// at all, its names fit in keys, its timeouts are usable, and its TLS files exist (a private
/// key must be private). Fills in the gateway name from the host name.
fn check_replay_store(
    path: &Path,
    text: &str,
    replay: &mut Replay,
    spans: &Spans,
) -> Result<(), ConfigError> {
    let header =
        text.lines().position(|l| l.split('#').next().unwrap_or_default().trim() == "[replay.redis]");
    let redis_spans: RedisSpans = toml::from_str(text).unwrap_or_default();
    let key_line = |key: &str| {
        redis_spans.replay.redis.get(key).map(|v| line_of(text, v.span().start)).or(header.map(|l| l + 1))
    };
    let err = |line: Option<usize>, message: String| ConfigError { file: path.to_owned(), line, message };
    let store_line = spans.replay.get("store").map(|v| line_of(text, v.span().start));
    let settings = match (replay.store, replay.redis.as_mut()) {
        (StoreKind::Local, None) => return Ok(()),
        (StoreKind::Local, Some(_)) => {
            return Err(err(
                header.map(|l| l + 1),
                "[replay.redis] is set but replay.store is \"local\"; add store = \"redis\" to [replay] or \
                 remove the table"
                    .into(),
            ));
        }
        (StoreKind::Redis, None) => {
            return Err(err(
                store_line,
                "replay.store = \"redis\" needs a [replay.redis] table with the server's url".into(),
            ));
        }
        (StoreKind::Redis, Some(r)) => r,
    };
    if !crate::shared_state::AVAILABLE {
        return Err(err(
            store_line,
            "replay.store = \"redis\": this spad was built without the replay-redis feature".into(),
        ));
    }
    crate::shared_state::check_url(&settings.url)
        .map_err(|why| err(key_line("url"), format!("replay.redis.url: {why}")))?;
    if !is_key_name(&settings.prefix, true) {
        return Err(err(
            key_line("prefix"),
            format!(
                "replay.redis.prefix: {:?} is not usable; use 1 to 64 letters, digits, '.', '_', '-' or ':'",
                settings.prefix
            ),
        ));
    }
    match &settings.gateway {
        Some(g) if !is_key_name(g, false) => {
            return Err(err(
                key_line("gateway"),
                format!(
                    "replay.redis.gateway: {g:?} is not usable; use 1 to 64 letters, digits, '.', '_' or '-'"
                ),
            ));
        }
        Some(_) => {}
        None => match hostname() {
            Some(h) if is_key_name(&h, false) => settings.gateway = Some(h),
            h => {
                return Err(err(
                    header.map(|l| l + 1),
                    format!(
                        "replay.redis.gateway is not set and the host name {:?} cannot be one; set it \
                         (1 to 64 letters, digits, '.', '_' or '-')",
                        h.unwrap_or_default()
                    ),
                ));
            }
        },
    }
    for (key, value, max) in [
        ("timeout_ms", settings.timeout_ms, 10_000),
        ("connect_timeout_ms", settings.connect_timeout_ms, 60_000),
    ] {
        if !(1..=max).contains(&value) {
            return Err(err(
                key_line(key),
                format!("replay.redis.{key}: {value} is out of range; use 1 to {max} milliseconds"),
            ));
        }
    }
    let tls = settings.url.starts_with("rediss://");
    for (key, file) in [
        ("tls_ca_file", &settings.tls_ca_file),
        ("tls_cert_file", &settings.tls_cert_file),
        ("tls_key_file", &settings.tls_key_file),
    ] {
        let Some(file) = file else { continue };
        if !tls {
            return Err(err(key_line(key), format!("replay.redis.{key} is only used with a rediss:// url")));
        }
        let m = std::fs::metadata(file)
            .map_err(|e| err(key_line(key), format!("replay.redis.{key}: {}: {e}", file.display())))?;
        if key == "tls_key_file" && m.permissions().mode() & 0o077 != 0 {
            return Err(err(
                key_line(key),
                format!(
                    "replay.redis.tls_key_file: {} holds a private key but its mode {:03o} lets group or \
                     others read or write it; run chmod 600 {}",
                    file.display(),
                    m.permissions().mode() & 0o777,
                    file.display()
                ),
            ));
        }
    }
    if settings.tls_cert_file.is_some() != settings.tls_key_file.is_some() {
        let key = if settings.tls_cert_file.is_some() { "tls_cert_file" } else { "tls_key_file" };
        return Err(err(key_line(key), "replay.redis.tls_cert_file and tls_key_file go together".into()));
    }
    Ok(())
}

/// The effective user id: the owner a key file may have besides root.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Reads a file that holds keys: a regular file, mode 0600 or stricter, owned by root or by the
/// user spad runs as, at most `limit` bytes (read into memory that is wiped on drop). `what`
/// names the contents in the errors, which do not name the file (the caller does).
fn read_key_file(file: &Path, what: &str, limit: usize) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use std::os::unix::fs::MetadataExt as _;
    let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let m = f.metadata().map_err(|e| e.to_string())?;
    if !m.is_file() {
        return Err("is not a regular file".into());
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "holds {what} but its mode {:03o} lets group or others read or write it; run chmod 600 {}",
            m.mode() & 0o777,
            file.display()
        ));
    }
    if m.uid() != 0 && m.uid() != euid() {
        return Err(format!(
            "holds {what} but is owned by uid {}, not by root or spad (uid {}); run chown root {}",
            m.uid(),
            euid(),
            file.display()
        ));
    }
    let mut raw = zeroize::Zeroizing::new(Vec::new());
    std::io::Read::read_to_end(&mut std::io::Read::take(f, limit as u64 + 1), &mut raw)
        .map_err(|e| e.to_string())?;
    if raw.len() > limit {
        return Err(format!("is over {limit} bytes; it is not a key file"));
    }
    Ok(raw)
}

/// Reads a GPG stanza's key files (`gpg_decrypt_key_file`, `gpg_remote_keys_file`) into the
/// stanza, for the engine to parse. Errors name the stanza's file and the key's line.
fn load_gpg_files(raw: &mut AccessStanza, index: usize, origin: &StanzaOrigin) -> Result<(), ConfigError> {
    let name = raw.name.clone().unwrap_or_else(|| format!("stanza-{}", index + 1));
    #[cfg(feature = "gpg")]
    let limit = spa_engine::gpg::MAX_KEY_FILE_LEN;
    #[cfg(not(feature = "gpg"))]
    let limit = 0;
    let read = |key: &'static str, file: &Path, what: &str| {
        if cfg!(not(feature = "gpg")) {
            return Err(origin.at(
                Some(key),
                format!(
                    "access stanza {name}: {key} needs GPG support, which this spad lacks (cargo feature gpg)"
                ),
            ));
        }
        let bytes = read_key_file(file, what, limit).map_err(|m| {
            origin.at(Some(key), format!("access stanza {name}: {key}: {}: {m}", file.display()))
        })?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            origin.at(
                Some(key),
                format!(
                    "access stanza {name}: {key}: {}: is not text; export the key with --armor",
                    file.display()
                ),
            )
        })
    };
    if let Some(file) = raw.gpg_decrypt_key_file.clone() {
        let text = zeroize::Zeroizing::new(read("gpg_decrypt_key_file", &file, "a secret key")?);
        raw.gpg_key_text.decrypt_key = Some(spa_engine::stanza::Secret::new(text.as_str()));
    }
    if let Some(file) = raw.gpg_remote_keys_file.clone() {
        raw.gpg_key_text.remote_keys = Some(read("gpg_remote_keys_file", &file, "the signers' keys")?);
    }
    Ok(())
}

/// Reads `[server] key_file`: a private file (mode 0600 or stricter, owned by root or by the
/// user spad runs as) holding one `x25519-secret:` key. Errors name the file and the line of
/// `key_file`.
fn load_server_key(
    path: &Path,
    text: &str,
    server: &Server,
    spans: &Spans,
) -> Result<Option<ServerSecretKey>, ConfigError> {
    let Some(file) = &server.key_file else { return Ok(None) };
    let err = |message: String| ConfigError {
        file: path.to_owned(),
        line: spans.server.get("key_file").map(|v| line_of(text, v.span().start)),
        message: format!("server.key_file: {}: {message}", file.display()),
    };
    let raw = read_key_file(file, "the server's secret key", spa_engine::modern::keys::MAX_KEY_FILE_LEN)
        .map_err(err)?;
    let text =
        std::str::from_utf8(&raw).map_err(|_| err("is not UTF-8 text; it is not a key file".into()))?;
    ServerSecretKey::from_file(text).map(Some).map_err(|e| err(error_chain(&e)))
}

/// Key values the shipped examples hold until an admin puts real keys there: spad's own
/// (`conf/spad.toml`, the packaged `/etc/spad/spad.toml`) and fwknop's `access.conf`.
const PLACEHOLDERS: [&str; 2] = ["REPLACE_WITH_", "__CHANGEME__"];

/// Refuses a stanza whose key is still an example's placeholder, naming it as such (the value
/// would otherwise fail as "not valid base64", or pass as a passphrase, for the wrong reason).
fn check_placeholders(raw: &AccessStanza, index: usize, origin: &StanzaOrigin) -> Result<(), ConfigError> {
    let keys = [
        ("key", &raw.key),
        ("key_base64", &raw.key_base64),
        ("hmac_key", &raw.hmac_key),
        ("hmac_key_base64", &raw.hmac_key_base64),
    ];
    for (key, value) in keys {
        if let Some(v) = value
            && PLACEHOLDERS.iter().any(|p| v.expose().starts_with(p))
        {
            let name = raw.name.clone().unwrap_or_else(|| format!("stanza-{}", index + 1));
            return Err(origin.at(
                Some(key),
                format!(
                    "access stanza {name}: {key} is still the example's placeholder; put a key from \
                     `spa keygen` there (and give it to the clients)"
                ),
            ));
        }
    }
    Ok(())
}

/// The daemon's rules for a compiled stanza's keys, stricter than the engine's: an HMAC key
/// unless `allow_no_hmac`, and keys of at least [`MIN_KEY_LEN`] bytes. Returns the warnings.
fn check_keys(
    raw: &AccessStanza,
    stanza: &Stanza,
    origin: &StanzaOrigin,
) -> Result<Vec<String>, ConfigError> {
    if stanza.format() == spa_engine::stanza::Format::Modern {
        // Signed by the user, sealed to the server's key: no shared keys to check.
        return Ok(Vec::new());
    }
    let name = stanza.name();
    let lengths = stanza.key_lengths();
    let mut warnings = Vec::new();
    if lengths.hmac.is_none() {
        if !raw.allow_no_hmac {
            return Err(origin.at(
                None,
                format!(
                    "access stanza {name}: neither hmac_key nor hmac_key_base64 is set; add one \
                     (`spa keygen` makes a pair), or allow_no_hmac = true for legacy clients"
                ),
            ));
        }
        warnings.push(
            origin
                .at(
                    Some("allow_no_hmac"),
                    format!(
                        "access stanza {name}: allow_no_hmac: packets are decrypted before anything \
                         authenticates them (fwknop's legacy mode); prefer an HMAC key"
                    ),
                )
                .to_string(),
        );
    }
    let enc = if raw.key.is_some() { "key" } else { "key_base64" };
    let hmac = if raw.hmac_key.is_some() { "hmac_key" } else { "hmac_key_base64" };
    // A GPG-only stanza has no Rijndael key to measure.
    let rijndael = raw.key.is_some() || raw.key_base64.is_some();
    for (key, len) in [(enc, rijndael.then_some(lengths.encryption)), (hmac, lengths.hmac)] {
        let Some(len) = len else { continue };
        let what = if key.ends_with("_base64") { "decodes to" } else { "is" };
        if len < MIN_KEY_LEN {
            return Err(origin.at(
                Some(key),
                format!(
                    "access stanza {name}: {key} {what} {len} bytes; at least {MIN_KEY_LEN} are \
                     required (`spa keygen` makes {RECOMMENDED_KEY_LEN} or more)"
                ),
            ));
        }
        if len < RECOMMENDED_KEY_LEN {
            warnings.push(
                origin
                    .at(
                        Some(key),
                        format!(
                            "access stanza {name}: {key} {what} {len} bytes; \
                             {RECOMMENDED_KEY_LEN} or more are recommended (`spa keygen`)"
                        ),
                    )
                    .to_string(),
            );
        }
    }
    Ok(warnings)
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
            lines: BackendLines::default(),
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
    let lines = BackendLines::scan(text, line, &backend);
    Ok(Firewall { backend, keep_grants_on_exit, table, lines })
}

impl Config {
    /// Loads `path` and every `*.toml` in the `access.d` folder beside it (in name order).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = read(path)?;
        let text = &source.text;
        let mut raw: RawMain = toml::from_str(text).map_err(|e| located(path, text, &e))?;
        // A Redis password is a secret like the keys.
        let password = raw.replay.redis.as_ref().is_some_and(|r| url_has_password(&r.url));
        check_private(path, &source, raw.access.len() + usize::from(password))?;
        let spans = Spans::of(text);
        check_ranges(path, text, &raw, &spans)?;
        check_tcp(path, text, &raw.listen.tcp)?;
        check_replay_store(path, text, &mut raw.replay, &spans)?;
        let mut warnings: Vec<String> = Vec::new();
        let firewall = parse_firewall(path, text, raw.firewall)?;
        if let Some(problem) = raw.control.problem() {
            let line = spans.control.get("socket").map(|v| line_of(text, v.span().start));
            return Err(ConfigError { file: path.to_owned(), line, message: problem });
        }
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
        for (i, s) in raw.access.into_iter().enumerate() {
            let keys = spans.access.get(i).map(|t| key_lines(text, t)).unwrap_or_default();
            origins.push(StanzaOrigin { file: path.to_owned(), line: line_of(text, s.span().start), keys });
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
                let source = read(&f)?;
                let t = &source.text;
                let raw: RawAccessFile = toml::from_str(t).map_err(|e| located(&f, t, &e))?;
                check_private(&f, &source, raw.access.len())?;
                let spans = Spans::of(t);
                for (i, s) in raw.access.into_iter().enumerate() {
                    let keys = spans.access.get(i).map(|a| key_lines(t, a)).unwrap_or_default();
                    origins.push(StanzaOrigin { file: f.clone(), line: line_of(t, s.span().start), keys });
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
        let mut needs = Vec::new();
        for (on, key) in
            [(raw.nat.enable_forwarding, "enable_forwarding"), (raw.nat.enable_local_nat, "enable_local_nat")]
        {
            if on {
                let line = text.lines().position(|l| l.trim_start().starts_with(key)).map(|i| i + 1);
                needs.push(Need {
                    nat: true,
                    error: ConfigError {
                        file: path.to_owned(),
                        line,
                        message: format!("nat.{key} needs a backend with NAT"),
                    },
                });
            }
        }
        let settings = Settings {
            max_packet_age: raw.replay.max_packet_age,
            enable_forwarding: raw.nat.enable_forwarding,
            enable_local_nat: raw.nat.enable_local_nat,
        };
        // Compile stanza by stanza so an error can point at the stanza's file and line.
        for (i, s) in stanzas.iter_mut().enumerate() {
            load_gpg_files(s, i, &origins[i])?;
        }
        for (i, s) in stanzas.iter().enumerate() {
            let o = &origins[i];
            check_placeholders(s, i, o)?;
            let compiled =
                Stanza::compile(s, i, &settings).map_err(|e| o.at(invalid_key(&e), error_chain(&e)))?;
            if s.cmd_cycle_open.is_some() {
                return Err(o.at(
                    Some("cmd_cycle_open"),
                    "cmd_cycle_open: spad runs custom commands through the script backend \
                     ([firewall] backend = \"script\"), not per stanza"
                        .into(),
                ));
            }
            if compiled.format() == Format::Fwknop {
                warnings.extend(check_keys(s, &compiled, o)?);
            }
            if let Some(exec) = &compiled.cmd_exec {
                crate::command::resolve(exec).map_err(|e| {
                    let key = match e {
                        crate::command::CommandError::UnknownGroup(_) => "cmd_exec_group",
                        _ => "cmd_exec_user",
                    };
                    o.at(Some(key), format!("access stanza {}: {key}: {}", compiled.name(), error_chain(&e)))
                })?;
            }
            if s.force_nat.is_some() || s.forward_all {
                let key = if s.force_nat.is_some() { "force_nat" } else { "forward_all" };
                needs.push(Need {
                    nat: true,
                    error: o.at(Some(key), format!("{key} needs a backend with NAT")),
                });
            }
            let v6 = s.source.0.iter().any(|n| n.addr().is_ipv6() && n.prefix_len() > 0);
            if v6 {
                needs.push(Need {
                    nat: false,
                    error: o.at(Some("source"), "IPv6 sources need a backend with IPv6".into()),
                });
            }
        }
        let server_key = load_server_key(path, text, &raw.server, &spans)?;
        let modern = stanzas.iter().position(|s| s.format == Format::Modern);
        if let (Some(i), None) = (modern, &server_key) {
            let name = stanzas[i].name.clone().unwrap_or_else(|| format!("stanza-{}", i + 1));
            return Err(origins[i].at(
                Some("format"),
                format!(
                    "access stanza {name}: format = \"modern\" needs the server's key; set [server] \
                     key_file (`spad keygen --out /etc/spad/server.key` writes one)"
                ),
            ));
        }
        let built = match server_key {
            Some(key) => Verifier::with_server_key(&stanzas, settings, key),
            None => Verifier::new(&stanzas, settings),
        };
        let verifier =
            built.map_err(|e| ConfigError { file: path.to_owned(), line: None, message: error_chain(&e) })?;
        Ok(Config {
            path: path.to_owned(),
            listen: raw.listen,
            firewall,
            replay: raw.replay,
            log: raw.log,
            nat: raw.nat,
            limits: raw.limits,
            server: raw.server,
            control: raw.control,
            metrics: raw.metrics,
            verifier,
            warnings,
            needs,
        })
    }

    /// Builds the configured backend (nothing in the firewall is touched) and checks that it
    /// can do what the configuration asks: its option errors and missing capabilities are
    /// configuration errors naming the file and line.
    pub fn backend(&self, registry: &Registry) -> Result<Box<dyn Driver>, ConfigError> {
        let fw = &self.firewall;
        let at =
            |line: Option<usize>, message: String| ConfigError { file: self.path.clone(), line, message };
        let driver = registry.create(&fw.backend, &fw.table).map_err(|e| match &e {
            RegistryError::Unknown { .. } => at(fw.lines.backend.or(fw.lines.table), error_chain(&e)),
            RegistryError::Create { source, .. } => {
                let text = error_chain(source);
                at(fw.lines.for_message(&text), format!("firewall.{}: {text}", fw.backend))
            }
            RegistryError::Duplicate(_) => at(None, error_chain(&e)),
        })?;
        let caps = driver.capabilities();
        for need in &self.needs {
            let (has, what) = if need.nat { (caps.nat, "NAT") } else { (caps.ipv6, "IPv6") };
            if !has {
                let mut e = need.error.clone();
                e.message = format!("{}; the {} backend does not do {what}", e.message, fw.backend);
                return Err(e);
            }
        }
        Ok(driver)
    }
}

/// The stanza key an engine error is about, when it is one key's value.
fn invalid_key(e: &spa_engine::Error) -> Option<&'static str> {
    match e {
        spa_engine::Error::Stanza { source, .. } => invalid_key(source),
        spa_engine::Error::InvalidKey { key, .. } => Some(key),
        _ => None,
    }
}

pub use spa_backends::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` and sets `mode` explicitly, whatever the umask.
    fn write_mode(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        write_mode(dir, name, text, 0o600)
    }

    const KEY: &str = "spad-config-test-encryption-key!";
    const HMAC_KEY: &str = "spad-config-test-hmac-key-0123456789abcdef";

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
key = "spad-config-test-encryption-key!"
hmac_key = "spad-config-test-hmac-key-0123456789abcdef"
open_ports = ["tcp/22"]
"#;

    /// An access.d file with one stanza and good keys.
    fn access_file(name: &str, source: &str) -> String {
        format!(
            "[[access]]\nname = \"{name}\"\nsource = \"{source}\"\nkey = \"{KEY}\"\nhmac_key = \"{HMAC_KEY}\"\n"
        )
    }

    fn load_err(p: &Path) -> String {
        Config::load(p).unwrap_err().to_string()
    }

    #[test]
    fn loads_main_file_and_access_d() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "spad.toml", GOOD);
        let d = dir.path().join("access.d");
        std::fs::create_dir(&d).unwrap();
        write(&d, "b.toml", &access_file("b", "10.0.0.0/8"));
        write(&d, "a.toml", &access_file("a", "any"));
        write(&d, "ignored.txt", "not toml");
        let c = Config::load(&p).unwrap();
        let names: Vec<&str> = c.verifier.stanzas().iter().map(|s| &**s.name()).collect();
        assert_eq!(names, vec!["admins", "a", "b"]);
        assert_eq!(c.firewall.backend, "none");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let bad = GOOD.replace("open_ports = [\"tcp/22\"]", "open_ports = [\"tcp/22\"]\nopne_ports = 1");
        let p = write(dir.path(), "spad.toml", &bad);
        let e = load_err(&p);
        assert!(e.starts_with(&format!("{}:18: ", p.display())), "{e}");
        assert!(e.contains("opne_ports"), "{e}");

        let bad = GOOD.replace(&format!("hmac_key = \"{HMAC_KEY}\""), &format!("hmac_key = \"{KEY}\""));
        let p = write(dir.path(), "spad.toml", &bad);
        let e = load_err(&p);
        assert!(e.contains(":12: access stanza admins: encryption key equals hmac key"), "{e}");

        let bad = GOOD.replace("open_ports = [\"tcp/22\"]", "open_ports = [\"tcp/70000\"]");
        let p = write(dir.path(), "spad.toml", &bad);
        let e = load_err(&p);
        assert!(e.contains(":17: access.open_ports: ") && e.contains("tcp/70000"), "{e}");

        std::fs::create_dir(dir.path().join("access.d")).unwrap();
        let p2 = write(&dir.path().join("access.d"), "x.toml", "[[access]]\nsource = \"any\"\n");
        let p = write(dir.path(), "spad.toml", GOOD);
        let e = load_err(&p);
        assert!(e.starts_with(&format!("{}:1: ", p2.display())) && e.contains("neither key"), "{e}");
    }

    #[test]
    fn firewall_table_must_match_backend() {
        let dir = tempfile::tempdir().unwrap();
        let bad = GOOD.replace("backend = \"none\"", "backend = \"none\"\n[firewall.nft]\ntable = \"x\"");
        let p = write(dir.path(), "spad.toml", &bad);
        let e = load_err(&p);
        assert!(e.contains("[firewall.nft] does not match"), "{e}");
    }

    /// A backend that does neither NAT nor IPv6 (the none backend, with fewer capabilities).
    struct Plain(spa_backends::NoneBackend);

    impl spa_backends::Backend for Plain {
        type Entry = <spa_backends::NoneBackend as spa_backends::Backend>::Entry;
        fn from_table(t: &toml::Table) -> Result<Self, spa_backends::BackendError> {
            spa_backends::NoneBackend::from_table(t).map(Plain)
        }
        fn name(&self) -> &'static str {
            "plain"
        }
        fn capabilities(&self) -> spa_backends::Capabilities {
            spa_backends::Capabilities { nat: false, ipv6: false, ..self.0.capabilities() }
        }
        fn entries(&self, g: &spa_backends::Grant) -> Result<Vec<Self::Entry>, spa_backends::BackendError> {
            self.0.entries(g)
        }
        fn prepare(
            &mut self,
            l: &[spa_backends::Held<'_, Self::Entry>],
            n: u64,
        ) -> Result<(), spa_backends::BackendError> {
            self.0.prepare(l, n)
        }
        fn apply(
            &mut self,
            c: &[spa_backends::Change<'_, Self::Entry>],
            n: u64,
        ) -> Result<(), spa_backends::BackendError> {
            self.0.apply(c, n)
        }
        fn check(&mut self, n: u64) -> Result<spa_backends::Health, spa_backends::BackendError> {
            self.0.check(n)
        }
        fn observe(&mut self, n: u64) -> Result<Vec<spa_backends::Observed>, spa_backends::BackendError> {
            self.0.observe(n)
        }
        fn teardown(&mut self) -> Result<(), spa_backends::BackendError> {
            self.0.teardown()
        }
    }

    static PLAIN: spa_backends::BackendDescriptor = spa_backends::BackendDescriptor {
        name: "plain",
        description: "",
        create: spa_backends::create::<Plain>,
        preflight: None,
    };
    static NONE: spa_backends::BackendDescriptor = spa_backends::BackendDescriptor {
        name: "none",
        description: "",
        create: spa_backends::create::<spa_backends::NoneBackend>,
        preflight: None,
    };

    #[test]
    fn what_the_backend_cannot_do_is_a_configuration_error_with_its_line() {
        let reg = Registry::from_descriptors([&PLAIN, &NONE]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let plain = GOOD.replace("backend = \"none\"", "backend = \"plain\"");
        // Forwarding enabled: named at its line.
        let text = format!("{plain}\n[nat]\nenable_forwarding = true\n");
        let p = write(dir.path(), "spad.toml", &text);
        let c = Config::load(&p).unwrap();
        let e = c.backend(&reg).err().unwrap().to_string();
        let line = text.lines().position(|l| l.starts_with("enable_forwarding")).unwrap() + 1;
        assert!(
            e.starts_with(&format!("{}:{line}: nat.enable_forwarding needs a backend with NAT", p.display())),
            "{e}"
        );
        assert!(e.ends_with("the plain backend does not do NAT"), "{e}");
        // An IPv6 source list: named at the stanza's source line.
        let text = plain.replace("source = \"any\"", "source = \"2001:db8::/32\"");
        let p = write(dir.path(), "spad.toml", &text);
        let e = Config::load(&p).unwrap().backend(&reg).err().unwrap().to_string();
        let line = text.lines().position(|l| l.starts_with("source")).unwrap() + 1;
        assert!(e.starts_with(&format!("{}:{line}: IPv6 sources", p.display())), "{e}");
        // "any" needs nothing in particular, and the none backend does everything.
        let p = write(dir.path(), "spad.toml", &plain);
        assert!(Config::load(&p).unwrap().backend(&reg).is_ok());
        let p = write(dir.path(), "spad.toml", &format!("{GOOD}\n[nat]\nenable_forwarding = true\n"));
        assert!(Config::load(&p).unwrap().backend(&reg).is_ok());
    }

    #[test]
    fn a_backend_option_error_names_its_line() {
        let reg = Registry::from_descriptors([&NONE]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text =
            GOOD.replace("backend = \"none\"", "backend = \"none\"\n[firewall.none]\ncolour = \"blue\"");
        let p = write(dir.path(), "spad.toml", &text);
        let e = Config::load(&p).unwrap().backend(&reg).err().unwrap().to_string();
        let line = text.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
        assert!(e.starts_with(&format!("{}:{line}: firewall.none: ", p.display())), "{e}");
        assert!(e.contains("colour"), "{e}");
        let text = GOOD.replace("backend = \"none\"", "backend = \"nope\"");
        let p = write(dir.path(), "spad.toml", &text);
        let e = Config::load(&p).unwrap().backend(&reg).err().unwrap().to_string();
        let line = text.lines().position(|l| l.starts_with("backend")).unwrap() + 1;
        assert!(e.starts_with(&format!("{}:{line}: unknown backend \"nope\"", p.display())), "{e}");
    }

    #[test]
    fn files_with_keys_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o602, 0o620] {
            let p = write_mode(dir.path(), "spad.toml", GOOD, mode);
            let e = load_err(&p);
            assert_eq!(
                e,
                format!(
                    "{p}: holds keys but its mode {mode:03o} lets group or others read or write it; \
                     run chmod 600 {p}",
                    p = p.display()
                )
            );
        }
        let p = write_mode(dir.path(), "spad.toml", GOOD, 0o400);
        assert!(Config::load(&p).is_ok());

        // A main file without stanzas holds no keys; the access.d file that does is checked.
        let (head, _) = GOOD.split_once("[[access]]").unwrap();
        let p = write_mode(dir.path(), "spad.toml", head, 0o644);
        let d = dir.path().join("access.d");
        std::fs::create_dir(&d).unwrap();
        let a = write_mode(&d, "a.toml", &access_file("a", "any"), 0o640);
        write_mode(&d, "b.toml", "# nothing here yet\n", 0o644);
        let e = load_err(&p);
        assert!(e.starts_with(&format!("{}: holds keys but its mode 640", a.display())), "{e}");
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.verifier.stanzas().len(), 1);
    }

    #[test]
    fn values_that_disable_a_protection_are_refused_at_their_line() {
        let dir = tempfile::tempdir().unwrap();
        for (extra, line, needle) in [
            ("[replay]\nmax_packet_age = 0\n", 3, "replay.max_packet_age: 0 is out of range"),
            ("[replay]\nmax_packet_age = 86401\n", 3, "replay.max_packet_age: 86401 is out of range"),
            (
                "[replay]\nmax_packet_age = 9223372036854775807\n",
                3,
                "replay.max_packet_age: 9223372036854775807",
            ),
            ("[replay]\ncapacity = 0\n", 3, "replay.capacity: 0 is out of range"),
            ("[limits]\nper_source_rate = 0\n", 3, "limits.per_source_rate: 0 is out of range"),
            ("[limits]\nper_source_rate = -1.5\n", 3, "limits.per_source_rate: -1.5 is out"),
            ("[limits]\nper_source_rate = nan\n", 3, "limits.per_source_rate: NaN is out"),
            ("[limits]\nper_source_rate = inf\n", 3, "limits.per_source_rate: inf is out"),
            ("[limits]\nper_source_burst = 0.5\n", 3, "limits.per_source_burst: 0.5 is out"),
            ("[limits]\nper_source_burst = -inf\n", 3, "limits.per_source_burst: -inf is out"),
        ] {
            let text = GOOD.replace("[replay]\nstate_dir = \"/tmp/x\"\n", "").replacen(
                '\n',
                &format!("\n{extra}"),
                1,
            );
            let p = write(dir.path(), "spad.toml", &text);
            let e = load_err(&p);
            assert!(
                e.starts_with(&format!("{}:{line}: ", p.display())) && e.contains(needle),
                "{extra}: {e}"
            );
        }
        // The limits themselves are fine.
        let text = GOOD.replacen('\n', "\n[limits]\nper_source_rate = 0.1\nper_source_burst = 1\n", 1);
        let text = text.replace(
            "state_dir = \"/tmp/x\"",
            "state_dir = \"/tmp/x\"\nmax_packet_age = 86400\ncapacity = 1",
        );
        let p = write(dir.path(), "spad.toml", &text);
        let c = Config::load(&p).unwrap();
        assert_eq!((c.replay.max_packet_age, c.replay.capacity), (86400, 1));
    }

    /// GOOD with `extra` added to its `[replay]` table.
    fn with_replay(extra: &str) -> String {
        GOOD.replace("state_dir = \"/tmp/x\"\n", &format!("state_dir = \"/tmp/x\"\n{extra}"))
    }

    #[test]
    fn a_shared_store_is_configured_whole() {
        let dir = tempfile::tempdir().unwrap();
        if !crate::shared_state::AVAILABLE {
            let text = with_replay("store = \"redis\"\n[replay.redis]\nurl = \"redis://h\"\n");
            let e = load_err(&write(dir.path(), "spad.toml", &text));
            assert!(
                e.contains(":11: replay.store = \"redis\": this spad was built without the replay-redis"),
                "{e}"
            );
            return;
        }
        let text = with_replay(
            "store = \"redis\"\n[replay.redis]\nurl = \"redis+unix:///run/redis/redis.sock?db=2\"\ngateway = \"gw-1\"\n",
        );
        let c = Config::load(&write(dir.path(), "spad.toml", &text)).unwrap();
        let r = c.replay.redis.as_ref().unwrap();
        assert_eq!(c.replay.store, StoreKind::Redis);
        assert_eq!((r.gateway(), r.prefix.as_str(), r.timeout_ms), ("gw-1", "spa", 100));
        assert_eq!(r.on_store_down, OnStoreDown::Reject);
        // Without a gateway name, the host name.
        let text = with_replay("store = \"redis\"\n[replay.redis]\nurl = \"redis://127.0.0.1\"\n");
        let c = Config::load(&write(dir.path(), "spad.toml", &text)).unwrap();
        assert_eq!(c.replay.redis.unwrap().gateway, hostname());

        let line = |text: &str, starts: &str| text.lines().position(|l| l.starts_with(starts)).unwrap() + 1;
        for (extra, at, needle) in [
            ("store = \"redis\"\n", "store", "replay.store = \"redis\" needs a [replay.redis] table"),
            (
                "[replay.redis]\nurl = \"redis://h\"\n",
                "[replay.redis]",
                "[replay.redis] is set but replay.store is",
            ),
            (
                "store = \"redis\"\n[replay.redis]\nurl = \"http://h\"\n",
                "url",
                "replay.redis.url: the http:// scheme is not supported",
            ),
            (
                "store = \"redis\"\n[replay.redis]\nurl = \"h:6379\"\n",
                "url",
                "replay.redis.url: not a redis url",
            ),
            (
                "store = \"redis\"\n[replay.redis]\nurl = \"rediss://h#insecure\"\n",
                "url",
                "certificate checks cannot be turned off",
            ),
            ("store = \"redis\"\n[replay.redis]\nurl = \"redis://h/x\"\n", "url", "replay.redis.url: "),
            (
                "store = \"redis\"\n[replay.redis]\nurl = \"redis://h\"\nprefix = \"a*\"\n",
                "prefix",
                "replay.redis.prefix: \"a*\" is not usable",
            ),
            (
                "store = \"redis\"\n[replay.redis]\nurl = \"redis://h\"\ngateway = \"a:b\"\n",
                "gateway",
                "replay.redis.gateway: \"a:b\" is not usable",
            ),
            (
                "store = \"redis\"\n[replay.redis]\nurl = \"redis://h\"\ntimeout_ms = 0\n",
                "timeout_ms",
                "replay.redis.timeout_ms: 0 is out of range",
            ),
            (
                "store = \"redis\"\n[replay.redis]\nurl = \"redis://h\"\ntls_ca_file = \"/etc/hostname\"\n",
                "tls_ca_file",
                "replay.redis.tls_ca_file is only used with a rediss:// url",
            ),
            (
                "store = \"redis\"\n[replay.redis]\nurl = \"rediss://h\"\ntls_cert_file = \"/etc/hostname\"\n",
                "tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            ),
            (
                "store = \"redis\"\n[replay.redis]\nurl = \"rediss://h\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
                "tls_ca_file",
                "replay.redis.tls_ca_file: /nonexistent/ca.pem: ",
            ),
            (
                "store = \"redis\"\n[replay.redis]\nurl = \"redis://h\"\nurl_typo = 1\n",
                "url_typo",
                "url_typo",
            ),
        ] {
            let text = with_replay(extra);
            let p = write(dir.path(), "spad.toml", &text);
            let e = load_err(&p);
            let at = line(&text, at);
            assert!(e.starts_with(&format!("{}:{at}: ", p.display())) && e.contains(needle), "{extra}: {e}");
        }
        // A private key readable by others is refused.
        let key = write_mode(dir.path(), "client.key", "x", 0o644);
        let text = with_replay(&format!(
            "store = \"redis\"\n[replay.redis]\nurl = \"rediss://h\"\ntls_cert_file = \"/etc/hostname\"\n\
             tls_key_file = \"{}\"\n",
            key.display()
        ));
        let p = write(dir.path(), "spad.toml", &text);
        let e = load_err(&p);
        let at = text.lines().position(|l| l.starts_with("tls_key_file")).unwrap() + 1;
        assert!(e.contains(&format!(":{at}: replay.redis.tls_key_file: ")) && e.contains("mode 644"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&p).is_ok());
    }

    #[test]
    fn a_redis_password_is_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (head, _) = GOOD.split_once("[[access]]").unwrap();
        let head = head.replace(
            "state_dir = \"/tmp/x\"\n",
            "state_dir = \"/tmp/x\"\nstore = \"redis\"\n[replay.redis]\nurl = \"redis://spad:s3cret@h/0\"\n",
        );
        let p = write_mode(dir.path(), "spad.toml", &head, 0o644);
        std::fs::create_dir(dir.path().join("access.d")).unwrap();
        write(&dir.path().join("access.d"), "a.toml", &access_file("a", "any"));
        let e = load_err(&p);
        assert!(e.contains("holds keys but its mode 644"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        if !crate::shared_state::AVAILABLE {
            return;
        }
        let c = Config::load(&p).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret") && debug.contains("redis://spad:***@h/0"), "{debug}");
    }

    #[test]
    fn urls_are_shown_without_passwords() {
        for (url, shown) in [
            ("redis://h:6379/0", "redis://h:6379/0"),
            ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
            ("redis://:pw@h", "redis://:***@h"),
            ("rediss://u:p@ss@h/1", "rediss://u:***@h/1"),
            ("redis+unix:///run/r.sock?db=1&pass=pw&user=u", "redis+unix:///run/r.sock?db=1&pass=***&user=u"),
            ("redis://h/0?password=x", "redis://h/0?password=***"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert!(url_has_password("redis://:pw@h") && url_has_password("redis+unix:///s?pass=p"));
        assert!(!url_has_password("redis://user@h") && !url_has_password("redis+unix:///s?db=1"));
    }

    #[test]
    fn placeholder_keys_are_named_as_such_at_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let key = format!("key = \"{KEY}\"");
        let hmac = format!("hmac_key = \"{HMAC_KEY}\"");
        for (from, to, name, line) in [
            (&key, "key_base64 = \"REPLACE_WITH_KEY_BASE64\"", "key_base64", 15),
            (&hmac, "hmac_key_base64 = \"__CHANGEME__\"", "hmac_key_base64", 16),
            // As text it would pass as a 36-byte passphrase.
            (&key, "key = \"REPLACE_WITH_A_PASSPHRASE_OF_32_BYTES\"", "key", 15),
        ] {
            let p = write(dir.path(), "spad.toml", &GOOD.replace(from.as_str(), to));
            assert_eq!(
                load_err(&p),
                format!(
                    "{}:{line}: access stanza admins: {name} is still the example's placeholder; put a key \
                     from `spa keygen` there (and give it to the clients)",
                    p.display()
                )
            );
        }
    }

    #[test]
    fn keys_must_be_long_and_hmac_present() {
        let dir = tempfile::tempdir().unwrap();
        let with = |from: &str, to: &str| {
            assert!(GOOD.contains(from), "{from}");
            let p = write(dir.path(), "spad.toml", &GOOD.replace(from, to));
            (Config::load(&p), p)
        };
        let key = format!("key = \"{KEY}\"");
        let hmac = format!("hmac_key = \"{HMAC_KEY}\"");

        // Too short: an error at the key's line, counted in bytes after decoding.
        let (r, p) = with(&key, "key = \"fifteen-bytes!!\"");
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:15: access stanza admins: key is 15 bytes; at least 16", p.display())),
            "{e}"
        );
        let (r, _) = with(&key, "key_base64 = \"c2hvcnRrZXk=\"");
        let e = r.unwrap_err().to_string();
        assert!(e.contains(":15: access stanza admins: key_base64 decodes to 8 bytes; at least 16"), "{e}");
        let (r, _) = with(&hmac, "hmac_key = \"hmac\"");
        let e = r.unwrap_err().to_string();
        assert!(e.contains(":16: access stanza admins: hmac_key is 4 bytes; at least 16"), "{e}");

        // 16 to 31 bytes: accepted with a warning that names file and line.
        let (r, p) = with(&key, "key = \"twenty-byte-key-1234\"");
        let c = r.unwrap();
        assert_eq!(
            c.warnings,
            vec![format!(
                "{}:15: access stanza admins: key is 20 bytes; 32 or more are recommended (`spa keygen`)",
                p.display()
            )]
        );
        let (r, _) = with(&hmac, &format!("hmac_key_base64 = \"{}\"", "QUJD".repeat(6)));
        let c = r.unwrap();
        assert!(
            c.warnings[0].contains(":16: access stanza admins: hmac_key_base64 decodes to 18 bytes"),
            "{:?}",
            c.warnings
        );

        // No HMAC key: refused, unless allow_no_hmac says so (then a warning).
        let (r, _) = with(&format!("{hmac}\n"), "");
        let e = r.unwrap_err().to_string();
        assert!(e.contains(":12: access stanza admins: neither hmac_key nor hmac_key_base64 is set"), "{e}");
        let (r, _) = with(&format!("{hmac}\n"), "allow_no_hmac = true\n");
        let c = r.unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains(":16: access stanza admins: allow_no_hmac: "), "{:?}", c.warnings);
        let (r, _) = with(&hmac, &format!("{hmac}\nallow_no_hmac = true"));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("both allow_no_hmac and hmac_key are set"), "{e}");
    }

    /// A modern stanza (one user) after GOOD's fwknop stanza, with `[server]` as given.
    fn modern_config(server: &str) -> String {
        let user = spa_engine::UserSigningKey::from_seed(&[7; 32]).public_key();
        format!(
            "{GOOD}{server}\n[[access]]\nname = \"pk\"\nsource = \"any\"\nformat = \"modern\"\n\
             users = [\"{user} alice\"]\nopen_ports = [\"tcp/22\"]\n"
        )
    }

    /// A GPG stanza's key files: read at load, held to the key-file rules, errors at the key's
    /// line; without the `gpg` feature the stanza is refused with the reason.
    #[test]
    fn gpg_key_files_are_private_and_need_the_feature() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spa-engine/tests/data/gpg");
        let server = write(
            dir.path(),
            "server.asc",
            &std::fs::read_to_string(data.join("server-secret.asc")).unwrap(),
        );
        let users =
            write(dir.path(), "users.asc", &std::fs::read_to_string(data.join("client-public.asc")).unwrap());
        let text = format!(
            "{GOOD}\n[[access]]\nname = \"g\"\nsource = \"any\"\nopen_ports = [\"tcp/22\"]\n\
             hmac_key = \"gpg-stanza-hmac-key-0123456789abcdef\"\n\
             gpg_decrypt_key_file = \"{}\"\ngpg_decrypt_pw = \"server-key-passphrase-0123456789\"\n\
             gpg_remote_keys_file = \"{}\"\ngpg_remote_id = \"B83BAD3E\"\n",
            server.display(),
            users.display()
        );
        let key_line = text.lines().position(|l| l.starts_with("gpg_decrypt_key_file")).unwrap() + 1;
        let p = write(dir.path(), "spad.toml", &text);
        if cfg!(not(feature = "gpg")) {
            let e = load_err(&p);
            assert!(e.contains(&format!(":{key_line}: ")) && e.contains("cargo feature gpg"), "{e}");
            return;
        }
        let c = Config::load(&p).unwrap();
        assert!(c.verifier.stanzas().iter().any(|s| &**s.name() == "g" && s.has_gpg()));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_err(&p);
        assert!(
            e.starts_with(&format!("{}:{key_line}: access stanza g: gpg_decrypt_key_file: ", p.display()))
                && e.contains("mode 644"),
            "{e}"
        );
        std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o600)).unwrap();
        let users_line = text.lines().position(|l| l.starts_with("gpg_remote_keys_file")).unwrap() + 1;
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = load_err(&p);
        assert!(e.contains(&format!(":{users_line}: access stanza g: gpg_remote_keys_file: ")), "{e}");
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A wrong passphrase is an error, and never shown.
        let wrong = text.replace("server-key-passphrase-0123456789", "not-the-passphrase-0123456789abc");
        let p = write(dir.path(), "spad.toml", &wrong);
        let e = load_err(&p);
        assert!(e.contains("passphrase does not unlock") && !e.contains("not-the-passphrase"), "{e}");
    }

    #[test]
    fn modern_stanzas_need_the_server_key_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "spad.toml", &modern_config(""));
        let e = load_err(&p);
        let format_line = modern_config("").lines().position(|l| l.starts_with("format")).unwrap() + 1;
        assert!(
            e.starts_with(&format!(
                "{}:{format_line}: access stanza pk: format = \"modern\" needs",
                p.display()
            )) && e.contains("[server] key_file"),
            "{e}"
        );

        let key_path = dir.path().join("server.key");
        let public = crate::keygen::write_key(&key_path, false, &mut crate::keygen::OsRng).unwrap();
        let text = modern_config(&format!("\n[server]\nkey_file = \"{}\"\n", key_path.display()));
        let key_line = text.lines().position(|l| l.starts_with("key_file")).unwrap() + 1;
        let p = write(dir.path(), "spad.toml", &text);
        let c = Config::load(&p).unwrap();
        assert_eq!(c.verifier.server_public_key().unwrap().to_string(), public);
        assert!(c.warnings.is_empty(), "no HMAC warning for a modern stanza: {:?}", c.warnings);

        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_err(&p);
        assert!(
            e.starts_with(&format!("{}:{key_line}: server.key_file: {}: ", p.display(), key_path.display()))
                && e.contains("mode 640"),
            "{e}"
        );
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if euid() == 0 {
            std::os::unix::fs::chown(&key_path, Some(65534), None).unwrap();
            let e = load_err(&p);
            assert!(e.contains(&format!(":{key_line}: server.key_file: ")) && e.contains("uid 65534"), "{e}");
            std::os::unix::fs::chown(&key_path, Some(0), None).unwrap();
        }
        std::fs::write(&key_path, "x25519-secret:short\n").unwrap();
        let e = load_err(&p);
        assert!(e.contains(&format!(":{key_line}: server.key_file: ")), "{e}");
        std::fs::remove_file(&key_path).unwrap();
        let e = load_err(&p);
        assert!(e.contains(&format!(":{key_line}: server.key_file: ")) && e.contains("No such file"), "{e}");
    }
}

#[cfg(test)]
mod tcp_and_command_tests {
    use super::*;

    const BASE: &str = r#"
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
key = "spad-config-test-encryption-key!"
hmac_key = "spad-config-test-hmac-key-0123456789abcdef"
open_ports = ["tcp/22"]
"#;

    fn load(text: &str) -> (Result<Config, ConfigError>, PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("spad.toml");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        (Config::load(&p), p, dir)
    }

    fn line(text: &str, starts: &str) -> usize {
        text.lines().position(|l| l.starts_with(starts)).unwrap() + 1
    }

    #[test]
    fn tcp_knocks_are_off_unless_enabled_and_bounded() {
        let (c, ..) = load(BASE);
        let tcp = c.unwrap().listen.tcp;
        assert_eq!(tcp, TcpListen::default());
        assert!(!tcp.enable && !tcp.http);
        assert_eq!(tcp.addresses, default_addresses());

        let text = BASE.replacen(
            "\n[firewall]",
            "\n[listen.tcp]\nenable = true\naddresses = [\"127.0.0.1:8080\"]\nhttp = true\n\
             max_connections = 8\nmax_connections_per_source = 2\nread_timeout_ms = 500\n\n[firewall]",
            1,
        );
        let (c, ..) = load(&text);
        let tcp = c.unwrap().listen.tcp;
        assert!(tcp.enable && tcp.http);
        assert_eq!(
            (
                tcp.addresses[0].port(),
                tcp.max_connections,
                tcp.max_connections_per_source,
                tcp.read_timeout_ms
            ),
            (8080, 8, 2, 500)
        );

        for (extra, key, needle) in [
            (
                "enable = true\nmax_connections = 0",
                "max_connections",
                "listen.tcp.max_connections: 0 is out of range",
            ),
            ("enable = true\nmax_connections = 513", "max_connections", "513 is out of range; use 1 to 512"),
            (
                "enable = true\nmax_connections = 4\nmax_connections_per_source = 5",
                "max_connections_per_source",
                "listen.tcp.max_connections_per_source: 5 is out of range",
            ),
            (
                "enable = true\nread_timeout_ms = 10",
                "read_timeout_ms",
                "listen.tcp.read_timeout_ms: 10 is out",
            ),
            ("http = true", "http", "listen.tcp.http: needs enable = true"),
            ("enable = true\naddresses = []", "addresses = []", "listen.tcp.addresses: is empty"),
            ("enable = true\nport = 80", "port", "unknown field `port`"),
        ] {
            let text = BASE.replacen("\n[firewall]", &format!("\n[listen.tcp]\n{extra}\n\n[firewall]"), 1);
            let (r, p, _dir) = load(&text);
            let e = r.unwrap_err().to_string();
            let at = line(&text, key);
            assert!(e.starts_with(&format!("{}:{at}: ", p.display())) && e.contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn command_users_and_groups_must_exist() {
        let with = |extra: &str| {
            BASE.replace("open_ports = [\"tcp/22\"]\n", &format!("enable_cmd_exec = true\n{extra}"))
        };
        let (c, ..) = load(&with("cmd_exec_user = \"nobody\"\ncmd_exec_group = \"root\"\n"));
        let c = c.unwrap();
        let exec = c.verifier.stanzas()[0].cmd_exec.clone().unwrap();
        assert_eq!((exec.user.as_str(), exec.group.as_deref()), ("nobody", Some("root")));

        let text = with("cmd_exec_user = \"no-such-user-spad\"\n");
        let (r, p, _dir) = load(&text);
        let e = r.unwrap_err().to_string();
        let at = line(&text, "cmd_exec_user");
        assert_eq!(
            e,
            format!(
                "{}:{at}: access stanza admins: cmd_exec_user: no user \"no-such-user-spad\"",
                p.display()
            )
        );
        let text = with("cmd_exec_user = \"nobody\"\ncmd_exec_group = \"no-such-group-spad\"\n");
        let (r, _, _dir) = load(&text);
        let e = r.unwrap_err().to_string();
        let at = line(&text, "cmd_exec_group");
        assert!(e.contains(&format!(":{at}: access stanza admins: cmd_exec_group: no group")), "{e}");
        // Without enable_cmd_exec there is nothing to run as anyone.
        let text = BASE.replace("open_ports", "cmd_exec_user = \"nobody\"\nopen_ports");
        let (r, _, _dir) = load(&text);
        assert!(r.unwrap_err().to_string().contains("cmd_exec_user requires enable_cmd_exec"));
    }
}

//! `spad check`: the configuration, and what the running daemon would hit with it.
//!
//! Loading the configuration finds what is wrong in the files (each error names file, line and
//! key). This goes on to what only the system can tell: the capture interfaces exist, no
//! listen address is given twice or shadowed by a wildcard, each address is one of this
//! host's, capture mode has `CAP_NET_RAW` (a port below 1024 `CAP_NET_BIND_SERVICE`), and the
//! backend's own preflight (its programs,
//! kernel interfaces, privileges, and other firewall tables whose drop would swallow its
//! grants; see [`spa_backends::preflight`]). Every finding is one `error:` or `warning:` line
//! with the file and line of the key it is about; the exit status is [`OK`], [`ERRORS`] or
//! [`WARNINGS`].
//!
//! The backend's findings are also logged once when the daemon starts ([`log_at_start`]): a
//! host default-drop table added after `spad check` ran silently swallows grants otherwise.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;

use serde::Deserialize;
use spa_backends::Registry;
use spa_backends::preflight::{Capability, Context, Finding, Level, has_capability, interface_exists};

use crate::config::{Config, ConfigError, Mode};

/// Exit status: nothing to report.
pub const OK: i32 = 0;
/// Exit status: at least one error (the daemon would refuse to start, or would not work).
pub const ERRORS: i32 = 1;
/// Exit status: warnings only (it would run, probably not as meant).
pub const WARNINGS: i32 = 2;

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Error or warning.
    pub level: Level,
    /// `file:line: message`, or `file: message` when no line applies.
    pub text: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        write!(f, "{level}: {}", self.text)
    }
}

/// What `spad check` found, and the configuration when it loaded.
#[derive(Debug, Default)]
pub struct Report {
    /// Every finding, in the order found.
    pub lines: Vec<Line>,
    /// The configuration, when it loaded.
    pub config: Option<Config>,
}

impl Report {
    fn push(&mut self, level: Level, e: &ConfigError) {
        // Some messages (toml's) end with a newline; a finding is one line.
        self.lines.push(Line { level, text: e.to_string().trim_end().to_owned() });
    }

    /// The exit status: [`ERRORS`] if any error, else [`WARNINGS`] if any warning, else [`OK`].
    pub fn status(&self) -> i32 {
        if self.lines.iter().any(|l| l.level == Level::Error) {
            ERRORS
        } else if self.lines.is_empty() {
            OK
        } else {
            WARNINGS
        }
    }
}

/// Checks the configuration at `path` and the system it would run on.
pub fn check(path: &Path, registry: &Registry) -> Report {
    let mut report = Report::default();
    let c = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            report.push(Level::Error, &e);
            return report;
        }
    };
    for w in &c.warnings {
        report.lines.push(Line { level: Level::Warning, text: w.clone() });
    }
    let backend_ok = match c.backend(registry) {
        Ok(_) => true,
        Err(e) => {
            report.push(Level::Error, &e);
            false
        }
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for (level, e) in listen(&c, &text) {
        report.push(level, &e);
    }
    if backend_ok {
        for (level, e) in backend(&c, registry) {
            report.push(level, &e);
        }
    }
    report.config = Some(c);
    report
}

/// `spad check` as the command line runs it: prints the report (findings on stderr, the
/// summary on stdout) and returns the exit status. With `warnings_ok`, warnings alone exit
/// with [`OK`] (for systemd's `ExecStartPre=`, which stops on any other status).
pub fn run(path: &Path, warnings_ok: bool) -> anyhow::Result<i32> {
    let registry = Registry::collect()?;
    let report = check(path, &registry);
    for l in &report.lines {
        eprintln!("{l}");
    }
    let status = report.status();
    if let (Some(c), false) = (&report.config, status == ERRORS) {
        let warnings = report.lines.len();
        println!(
            "{}: ok ({} access stanzas, backend {}, {} mode){}",
            path.display(),
            c.verifier.stanzas().len(),
            c.firewall.backend,
            match c.listen.mode {
                Mode::Socket => "socket",
                Mode::Capture => "capture",
            },
            match warnings {
                0 => String::new(),
                1 => ", 1 warning".to_owned(),
                n => format!(", {n} warnings"),
            }
        );
        if let Some(key) = c.verifier.server_public_key() {
            // What the clients of modern stanzas need (SPA_SERVER_KEY).
            println!("server public key: {key}");
        }
    }
    Ok(if warnings_ok && status == WARNINGS { OK } else { status })
}

/// The backend's preflight findings, logged when the daemon starts (the configuration has
/// loaded and the backend has been built by then).
pub fn log_at_start(c: &Config, registry: &Registry) {
    for (level, e) in backend(c, registry) {
        match level {
            Level::Error => tracing::error!("{e}"),
            Level::Warning => tracing::warn!("{e}"),
        }
    }
}

/// Whether grants may be forwarded to other hosts (anything that needs NAT from the backend).
fn forwards(c: &Config) -> bool {
    c.needs.iter().any(|n| n.nat)
}

/// The backend's preflight, each finding at the line of the key it is about (else of the
/// backend's table).
fn backend(c: &Config, registry: &Registry) -> Vec<(Level, ConfigError)> {
    let fw = &c.firewall;
    let ctx = Context { table: &fw.table, forwards: forwards(c) };
    registry
        .preflight(&fw.backend, &ctx)
        .into_iter()
        .map(|Finding { level, key, message }| {
            let line = key.and_then(|k| fw.lines.keys.get(k).copied()).or(fw.lines.table);
            let at = match key {
                Some(k) => format!("firewall.{}.{k}", fw.backend),
                None => format!("firewall.{}", fw.backend),
            };
            (level, ConfigError { file: c.path.clone(), line, message: format!("{at}: {message}") })
        })
        .collect()
}

/// Where the `[listen]` values were written: a lenient second parse for the lines.
#[derive(Deserialize, Default)]
struct Spans {
    #[serde(default)]
    listen: ListenSpans,
}

#[derive(Deserialize, Default)]
struct ListenSpans {
    #[serde(default)]
    mode: Option<toml::Spanned<toml::Value>>,
    #[serde(default)]
    addresses: Vec<toml::Spanned<toml::Value>>,
    #[serde(default)]
    interfaces: Vec<toml::Spanned<toml::Value>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// `[listen]`: what binding or capturing would fail on.
fn listen(c: &Config, text: &str) -> Vec<(Level, ConfigError)> {
    let spans: Spans = toml::from_str(text).unwrap_or_default();
    let at = |line: Option<usize>, message: String| ConfigError { file: c.path.clone(), line, message };
    let element_line =
        |list: &[toml::Spanned<toml::Value>], i: usize| list.get(i).map(|v| line_of(text, v.span().start));
    let mut out = Vec::new();
    match c.listen.mode {
        Mode::Socket => {
            let addrs = &c.listen.addresses;
            let line = |i| element_line(&spans.listen.addresses, i);
            for (j, b) in addrs.iter().enumerate() {
                for (i, a) in addrs[..j].iter().enumerate() {
                    let message = if a == b {
                        format!(
                            "listen.addresses: {b} is listed twice (first at line {})",
                            line_of_or(line(i))
                        )
                    } else if shadows(*a, *b) || shadows(*b, *a) {
                        format!(
                            "listen.addresses: {a} and {b} cannot both be bound: the wildcard address \
                             takes the port on every address of its family; keep one"
                        )
                    } else {
                        continue;
                    };
                    out.push((Level::Error, at(line(j), message)));
                    break;
                }
                if b.port() != 0
                    && b.port() < unprivileged_port_start()
                    && has_capability(Capability::NetBindService) == Ok(false)
                {
                    out.push((
                        Level::Error,
                        at(
                            line(j),
                            format!(
                                "listen.addresses: {b}: binding a port below {} needs \
                                 CAP_NET_BIND_SERVICE (or root elsewhere than Linux), which this process lacks",
                                unprivileged_port_start()
                            ),
                        ),
                    ));
                }
                if !b.ip().is_unspecified()
                    && let Err(e) = UdpSocket::bind(SocketAddr::new(b.ip(), 0))
                    && e.kind() == std::io::ErrorKind::AddrNotAvailable
                {
                    out.push((
                        Level::Error,
                        at(
                            line(j),
                            format!(
                                "listen.addresses: {} is not an address of this host, so {b} cannot be \
                                 bound",
                                b.ip()
                            ),
                        ),
                    ));
                }
            }
        }
        Mode::Capture => {
            let names = &c.listen.interfaces;
            let line = |i| element_line(&spans.listen.interfaces, i);
            let mut first: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, name) in names.iter().enumerate() {
                if let Some(prev) = first.insert(name, i) {
                    out.push((
                        Level::Error,
                        at(
                            line(i),
                            format!(
                                "listen.interfaces: {name:?} is listed twice (first at line {}): every \
                                 knock would be seen twice",
                                line_of_or(line(prev))
                            ),
                        ),
                    ));
                    first.insert(name, prev);
                } else if !interface_exists(name) {
                    out.push((
                        Level::Error,
                        at(line(i), format!("listen.interfaces: interface {name:?} does not exist")),
                    ));
                }
            }
            if let Ok(false) = has_capability(Capability::NetRaw) {
                let mode_line = spans.listen.mode.as_ref().map(|v| line_of(text, v.span().start));
                let message = if cfg!(target_os = "linux") {
                    "listen.mode = \"capture\": this process lacks CAP_NET_RAW, which packet sockets need; \
                     run spad as root, or give it the capability"
                } else {
                    "listen.mode = \"capture\": capturing needs root; run spad as root"
                };
                out.push((Level::Error, at(mode_line, message.into())));
            }
        }
    }
    out
}

/// The lowest port anyone may bind (Linux's `net.ipv4.ip_unprivileged_port_start`, which
/// covers IPv6 too; 1024 elsewhere).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

fn line_of_or(line: Option<usize>) -> String {
    line.map_or_else(|| "?".to_owned(), |l| l.to_string())
}

/// Whether binding `wild` makes binding `other` fail: a wildcard of the same family and port
/// (spad's IPv6 sockets are v6-only, so `0.0.0.0` and `[::]` go together).
fn shadows(wild: SocketAddr, other: SocketAddr) -> bool {
    wild.ip().is_unspecified() && wild.port() == other.port() && wild.is_ipv4() == other.is_ipv4()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_shadows_its_family_on_its_port_only() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(shadows(a("0.0.0.0:62201"), a("10.0.0.1:62201")));
        assert!(shadows(a("[::]:62201"), a("[fd00::1]:62201")));
        assert!(!shadows(a("0.0.0.0:62201"), a("[::]:62201")));
        assert!(!shadows(a("0.0.0.0:62201"), a("10.0.0.1:62202")));
        assert!(!shadows(a("10.0.0.1:62201"), a("0.0.0.0:62201")));
    }

    #[test]
    fn the_status_is_the_worst_finding() {
        let mut r = Report::default();
        assert_eq!(r.status(), OK);
        r.lines.push(Line { level: Level::Warning, text: "w".into() });
        assert_eq!(r.status(), WARNINGS);
        r.lines.push(Line { level: Level::Error, text: "e".into() });
        assert_eq!(r.status(), ERRORS);
        assert_eq!(r.lines[1].to_string(), "error: e");
        assert_eq!(r.lines[0].to_string(), "warning: w");
    }
}

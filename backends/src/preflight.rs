//! Preflight: what `spad check` asks a backend before the daemon would start it.
//!
//! Building a backend only parses its table; nothing is started and nothing in the firewall is
//! touched. What the running daemon would then hit (a missing `nft` or `ipset`, a kernel
//! interface it cannot open, missing privileges, firewalld not on the bus, a script that is
//! not executable, another table whose `drop` swallows our grants) is only found when it
//! starts, or worse, when a grant silently does nothing. A backend crate answers those
//! questions in its preflight hook ([`crate::BackendDescriptor::preflight`]), which only
//! looks and reads: it changes nothing. The daemon knows no backend's tools; it prints the
//! findings, each with the file and line of the key it is about.
//!
//! This module holds what several backends share: the finding type, program lookup, the
//! privilege test and the reading of `nft -j list ruleset` ([`ruleset`]).

use std::path::{Path, PathBuf};

pub mod ruleset;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The daemon would not work: it would fail to start, or grants would fail.
    Error,
    /// It would start and work, but probably not as meant (a drop elsewhere that swallows
    /// grants, a short key).
    Warning,
}

/// One thing a preflight found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub level: Level,
    /// The key of the backend's table the finding is about, when there is one, so the daemon
    /// can name its line (otherwise it names the table's).
    pub key: Option<&'static str>,
    /// What is wrong and what to do, in one or two sentences.
    pub message: String,
}

impl Finding {
    /// An error about `key` (or the whole table).
    pub fn error(key: Option<&'static str>, message: impl Into<String>) -> Self {
        Self { level: Level::Error, key, message: message.into() }
    }

    /// A warning about `key` (or the whole table).
    pub fn warning(key: Option<&'static str>, message: impl Into<String>) -> Self {
        Self { level: Level::Warning, key, message: message.into() }
    }
}

/// What a backend's preflight is given: its own table, and what the rest of the
/// configuration asks of it (which hooks its grants pass).
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// `[firewall.<backend>]`, as for the constructor.
    pub table: &'a toml::Table,
    /// Grants may be forwarded to other hosts (NAT access, forced NAT, forward-all): the
    /// forward hook (and prerouting, for the DNAT) matters, not only input.
    pub forwards: bool,
}

/// A backend's preflight: looks at the system and reports what the daemon would hit. It must
/// not change anything, and it runs without the daemon (`spad check`) and once at start.
pub type Preflight = fn(&Context<'_>) -> Vec<Finding>;

/// Where `program` is: itself when it names a path (it must be an executable file), else the
/// first executable file of that name in the directories of `path` (`PATH`'s syntax; the
/// process's `PATH` when `None`, [`crate::process::DEFAULT_PATH`] when that is unset too).
/// The error says what was looked for and where.
pub fn find_program(program: &str, path: Option<&str>) -> Result<PathBuf, String> {
    if program.is_empty() {
        return Err("the program name is empty".into());
    }
    if program.contains('/') {
        let p = Path::new(program);
        return match executable(p) {
            Ok(()) => Ok(p.to_owned()),
            Err(why) => Err(format!("{program}: {why}")),
        };
    }
    let env_path = std::env::var("PATH").ok();
    let dirs = path.or(env_path.as_deref()).unwrap_or(crate::process::DEFAULT_PATH);
    for dir in dirs.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(program);
        if executable(&p).is_ok() {
            return Ok(p);
        }
    }
    Err(format!("{program} is not in {dirs}"))
}

/// Whether `p` is a file someone may execute (the permission bits; the daemon runs as root,
/// for whom any `x` bit will do).
fn executable(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let m = std::fs::metadata(p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        _ => e.to_string(),
    })?;
    if !m.is_file() {
        return Err("is not a file".into());
    }
    if m.permissions().mode() & 0o111 == 0 {
        return Err(format!("is not executable (mode {:03o})", m.permissions().mode() & 0o777));
    }
    Ok(())
}

/// A Linux capability the daemon may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// `CAP_NET_ADMIN`: changing the firewall (netlink, nft, iptables, ipset).
    NetAdmin,
    /// `CAP_NET_RAW`: opening a packet socket (capture mode).
    NetRaw,
    /// `CAP_NET_BIND_SERVICE`: binding a port below 1024 (socket mode).
    NetBindService,
}

impl Capability {
    /// Its bit in the capability sets.
    #[cfg(any(target_os = "linux", test))]
    const fn bit(self) -> u32 {
        match self {
            Capability::NetBindService => 10,
            Capability::NetAdmin => 12,
            Capability::NetRaw => 13,
        }
    }

    /// Its name as `capsh` and systemd write it.
    pub const fn name(self) -> &'static str {
        match self {
            Capability::NetAdmin => "CAP_NET_ADMIN",
            Capability::NetRaw => "CAP_NET_RAW",
            Capability::NetBindService => "CAP_NET_BIND_SERVICE",
        }
    }
}

/// Whether this process has `cap` in effect: on Linux, its bit in `CapEff` of
/// `/proc/self/status` (what the kernel checks, whatever the user id); elsewhere, whether it
/// runs as root. `Err` says why it could not be told.
pub fn has_capability(cap: Capability) -> Result<bool, String> {
    #[cfg(target_os = "linux")]
    {
        let status =
            std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
        Ok((cap_eff(&status).ok_or("/proc/self/status has no CapEff line")? >> cap.bit()) & 1 == 1)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cap;
        // SAFETY: geteuid has no preconditions and cannot fail.
        Ok(unsafe { libc::geteuid() } == 0)
    }
}

/// The `CapEff:` set of a `/proc/<pid>/status` text.
#[cfg(any(target_os = "linux", test))]
fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// An error finding when this process lacks `cap`, which `what` needs; nothing when it has
/// it (or when that cannot be told: the start will say).
pub fn require_capability(cap: Capability, what: &str) -> Option<Finding> {
    match has_capability(cap) {
        Ok(true) | Err(_) => None,
        Ok(false) if cfg!(target_os = "linux") => Some(Finding::error(
            None,
            format!(
                "this process lacks {} ({what}); run spad as root, or give it the capability \
                 (systemd: AmbientCapabilities={} with CapabilityBoundingSet= keeping it)",
                cap.name(),
                cap.name()
            ),
        )),
        Ok(false) => Some(Finding::error(None, format!("{what} needs root; run spad as root"))),
    }
}

/// Whether the network interface `name` exists now (in this process's network namespace).
pub fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else { return false };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn programs_are_found_by_path_and_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o644)).unwrap();
        let d = dir.path().to_str().unwrap();
        let t = tool.to_str().unwrap();
        assert_eq!(find_program(t, None).unwrap_err(), format!("{t}: is not executable (mode 644)"));
        assert_eq!(find_program("tool", Some(d)).unwrap_err(), format!("tool is not in {d}"));
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_program(t, None).unwrap(), tool);
        assert_eq!(find_program("tool", Some(&format!("/nonexistent:{d}"))).unwrap(), tool);
        assert_eq!(find_program(d, None).unwrap_err(), format!("{d}: is not a file"));
        let gone = format!("{d}/gone");
        assert_eq!(find_program(&gone, None).unwrap_err(), format!("{gone}: does not exist"));
        assert!(find_program("sh", None).is_ok());
    }

    #[test]
    fn the_effective_set_is_read_from_status() {
        let status = "Name:\tspad\nCapInh:\t0000000000000000\nCapEff:\t0000000000003000\n";
        let eff = cap_eff(status).unwrap();
        assert_eq!((eff >> Capability::NetAdmin.bit()) & 1, 1);
        assert_eq!((eff >> Capability::NetRaw.bit()) & 1, 1);
        assert_eq!((cap_eff("CapEff:\t0000000000001000\n").unwrap() >> Capability::NetRaw.bit()) & 1, 0);
        assert_eq!(
            (cap_eff("CapEff:\t0000000000000400\n").unwrap() >> Capability::NetBindService.bit()) & 1,
            1
        );
        assert_eq!(cap_eff("Name: x\n"), None);
    }

    #[test]
    fn loopback_exists_and_nonsense_does_not() {
        assert!(interface_exists("lo"));
        assert!(!interface_exists("spa-no-such0"));
        assert!(!interface_exists("a\0b"));
    }
}

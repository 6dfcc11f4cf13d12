//! The knock settings and their value types, and the message they make.
//!
//! [`crate::table`] fills one [`Settings`] from `[default]`, the named rc stanza and the
//! command line, in that order. [`build_request`] then turns the access/NAT settings into the
//! message and NAT fields exactly as fwknop's client writes them (reference section 1.4).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context as _, Result, bail, ensure};
use spa_engine::access::parse_port_list;
use spa_engine::{DigestType, EncryptionMode, MessageType, ProtoPort};
use zeroize::Zeroizing;

/// How the SPA packet travels to the server (`-P`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Transport {
    /// One UDP datagram (fwknop's default).
    #[default]
    Udp,
    /// Connect, then send the payload on the stream.
    Tcp,
    /// An HTTP GET request whose path is the payload.
    Http,
}

impl FromStr for Transport {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "http" => Ok(Transport::Http),
            "udpraw" | "tcpraw" | "icmp" => bail!("server protocol {s:?} (raw sockets) is not supported"),
            _ => bail!("unknown server protocol {s:?} (expected udp, tcp or http)"),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Http => "http",
        })
    }
}

/// Which address goes into the message (`-a`, `-s`, `-R`, `ALLOW_IP`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Allow {
    /// A literal address.
    Ip(IpAddr),
    /// `0.0.0.0`: the server uses the packet's source.
    Source,
    /// Ask a web service for our external address.
    Resolve,
}

impl FromStr for Allow {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "source" => Ok(Allow::Source),
            "resolve" => Ok(Allow::Resolve),
            other => other.parse().map(Allow::Ip).with_context(|| format!("invalid allow address {s:?}")),
        }
    }
}

/// Where a key comes from. The text is wiped when dropped and never shown by `Debug`.
#[derive(Clone)]
pub(crate) enum KeySpec {
    /// The key itself (`--key-rijndael`, `KEY`).
    Text(Zeroizing<String>),
    /// Its base64 (`--key-base64-rijndael`, `KEY_BASE64`).
    Base64(Zeroizing<String>),
    /// A fwknop key file (`-G`, `KEY_FILE`).
    File(PathBuf),
}

impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::Text(_) => f.write_str("Text(<redacted>)"),
            KeySpec::Base64(_) => f.write_str("Base64(<redacted>)"),
            KeySpec::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// The knock settings after the rc file's `[default]`, the named stanza and the command line
/// were applied, in that order ([`crate::table`] applies them); `None` means "never said".
/// Each field is written by the options of [`crate::table::OPTIONS`] that name it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Settings {
    pub(crate) destination: Option<String>,
    pub(crate) allow: Option<Allow>,
    pub(crate) access: Option<String>,
    pub(crate) server_port: Option<u16>,
    pub(crate) server_proto: Option<Transport>,
    pub(crate) source_port: Option<u16>,
    pub(crate) rand_port: Option<bool>,
    pub(crate) server_resolve_ipv4: Option<bool>,
    pub(crate) key: Option<KeySpec>,
    pub(crate) hmac_key: Option<KeySpec>,
    pub(crate) use_hmac: Option<bool>,
    pub(crate) hmac_type: Option<DigestType>,
    pub(crate) digest_type: Option<DigestType>,
    pub(crate) mode: Option<EncryptionMode>,
    pub(crate) fw_timeout: Option<u32>,
    pub(crate) resolve_url: Option<String>,
    pub(crate) resolve_http_only: Option<bool>,
    pub(crate) user_agent: Option<String>,
    pub(crate) time_offset: Option<i64>,
    pub(crate) spoof_user: Option<String>,
    pub(crate) nat_access: Option<String>,
    pub(crate) nat_local: Option<bool>,
    pub(crate) nat_port: Option<u16>,
    pub(crate) nat_rand_port: Option<bool>,
    pub(crate) server_cmd: Option<String>,
    pub(crate) verbose: Option<u8>,
    pub(crate) no_save_args: Option<bool>,
    pub(crate) format: Option<crate::modern::WireFormat>,
    pub(crate) user_key_file: Option<PathBuf>,
    pub(crate) user_key: Option<KeySpec>,
    pub(crate) server_key: Option<spa_engine::ServerPublicKey>,
    pub(crate) connect_delay_ms: Option<u64>,
    /// fwknop's GPG mode (`-g`, `USE_GPG`).
    pub(crate) gpg: Option<bool>,
    /// Key ids to check the GPG key files against (`--gpg-recipient-key`, `--gpg-signer-key`).
    #[cfg_attr(not(feature = "gpg"), allow(dead_code))]
    pub(crate) gpg_recipient: Option<String>,
    #[cfg_attr(not(feature = "gpg"), allow(dead_code))]
    pub(crate) gpg_signer: Option<String>,
    /// The server's exported public key.
    pub(crate) gpg_recipient_key_file: Option<PathBuf>,
    /// The client's exported secret key.
    #[cfg_attr(not(feature = "gpg"), allow(dead_code))]
    pub(crate) gpg_signer_key_file: Option<PathBuf>,
    /// Its passphrase (`GPG_SIGNING_PW`, `GPG_SIGNING_PW_BASE64`).
    #[cfg_attr(not(feature = "gpg"), allow(dead_code))]
    pub(crate) gpg_signing_pw: Option<KeySpec>,
    /// The signing key has no passphrase (`--gpg-no-signing-pw`).
    #[cfg_attr(not(feature = "gpg"), allow(dead_code))]
    pub(crate) gpg_no_signing_pw: Option<bool>,
}

impl Settings {
    /// Whether an HMAC is sent: as said, else whenever an HMAC key or type is given (as fwknop
    /// turns `--use-hmac` on for `--key-hmac` and `HMAC_KEY`).
    pub(crate) fn wants_hmac(&self) -> bool {
        self.use_hmac.unwrap_or(self.hmac_key.is_some() || self.hmac_type.is_some())
    }

    /// Whether packets use fwknop's GPG mode: `-g`, or a recipient key given.
    pub(crate) fn wants_gpg(&self) -> bool {
        self.gpg.unwrap_or(self.gpg_recipient_key_file.is_some() || self.gpg_recipient.is_some())
    }

    /// The verbosity level (`-v` counts, `VERBOSE Y` is 1).
    pub(crate) fn verbose(&self) -> u8 {
        self.verbose.unwrap_or(0)
    }
}

/// fwknop's yes/no values (`Y`, `N`, and the usual spellings).
pub(crate) fn parse_bool(s: &str) -> Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" | "1" | "on" | "true" => Ok(true),
        "n" | "no" | "0" | "off" | "false" => Ok(false),
        _ => bail!("expected Y or N"),
    }
}

/// The home directory, where fwknop looks for `.fwknoprc`: `$HOME` on Unix; on Windows the
/// profile directory (`%USERPROFILE%`, which fwknop's Windows client reads), from std.
pub(crate) fn home_dir() -> Option<PathBuf> {
    #[cfg(unix)]
    {
        std::env::var_os("HOME").map(PathBuf::from)
    }
    #[cfg(windows)]
    {
        std::env::home_dir()
    }
}

/// `~/x` as fwknop's rc file allows for key files.
pub(crate) fn expand_home(v: &str) -> PathBuf {
    match (v.strip_prefix("~/"), home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(v),
    }
}

/// A port number other than 0.
pub(crate) fn parse_nonzero_port(v: &str) -> Result<u16> {
    let p: u16 = v.trim().parse().context("expected a port number")?;
    ensure!(p != 0, "port 0 is not allowed");
    Ok(p)
}

/// Parses fwknop's time offsets: a number of seconds with an optional unit, such as `90`,
/// `60sec`, `2min`, `1hour`, `3days`, `10m`.
pub(crate) fn parse_time_offset(s: &str) -> Result<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    ensure!(
        !num.is_empty() && num.len() <= 6,
        "invalid time offset {s:?} (expected e.g. 60sec, 2min, 1hour, 1day)"
    );
    let n: i64 = num.parse().with_context(|| format!("invalid time offset {s:?}"))?;
    // fwknop's bound on the number before the unit.
    ensure!(n <= 65536, "time offset {s:?} is too large");
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86400,
        _ => bail!("invalid time offset unit in {s:?} (expected sec, min, hour or day)"),
    };
    Ok(n * mult)
}

/// The username to send: `-U`/`SPOOF_USER`, else `$SPOOF_USER`, `$LOGNAME`, the account name of
/// the effective user (fwknop asks `cuserid`), `$USER`, else `NO_USER`, as fwknop picks it.
/// `env` looks up an environment variable; `account` is the account name.
pub(crate) fn username(
    spoof: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    account: &dyn Fn() -> Option<String>,
) -> String {
    spoof
        .map(str::to_owned)
        .or_else(|| env("SPOOF_USER"))
        .or_else(|| env("LOGNAME"))
        .or_else(account)
        .or_else(|| env("USER"))
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "NO_USER".to_owned())
}

/// The NAT-related options, as merged.
#[derive(Clone, Debug, Default)]
pub(crate) struct NatOpts {
    /// `-N host[:,]port` or `-N host`.
    pub(crate) access: Option<String>,
    /// `--nat-local`.
    pub(crate) local: bool,
    /// `--nat-port`.
    pub(crate) port: Option<u16>,
    /// `--nat-rand-port`.
    pub(crate) rand_port: bool,
}

/// The message fields of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestFields {
    /// The message type, promoted for a client timeout as libfko does.
    pub(crate) message_type: MessageType,
    /// `ip,proto/port,...` or `ip,command`.
    pub(crate) message: String,
    /// `host,port` for the NAT types.
    pub(crate) nat_access: Option<String>,
    /// The client timeout, for the timeout types.
    pub(crate) client_timeout: Option<u32>,
}

/// Builds the message, NAT field and type the way fwknop's client does (reference 1.4):
/// the message carries the externally visible port (`--nat-port`, or a random one for
/// `--nat-rand-port`), the NAT field the internal target (`-N`'s port, else the `-A` port);
/// `--nat-local` uses the `-D` string as the NAT host. `rand_port` draws 10000..=65534.
pub(crate) fn build_request(
    allow: IpAddr,
    access: Option<&str>,
    command: Option<&str>,
    nat: &NatOpts,
    destination: Option<&str>,
    fw_timeout: Option<u32>,
    rand_port: &mut dyn FnMut() -> u16,
) -> Result<RequestFields> {
    let timeout = fw_timeout.filter(|&t| t > 0);
    if let Some(t) = timeout {
        ensure!(t <= spa_engine::message::MAX_CLIENT_TIMEOUT, "firewall timeout {t} is over 65536 seconds");
    }
    if let Some(cmd) = command {
        ensure!(nat.access.is_none() && !nat.local, "a server command cannot be combined with NAT access");
        ensure!(!cmd.is_empty(), "the server command is empty");
        return Ok(RequestFields {
            message_type: MessageType::Command,
            message: format!("{allow},{cmd}"),
            nat_access: None,
            client_timeout: None,
        });
    }
    let access = access.context("no access requested (give -A proto/port, e.g. -A tcp/22)")?;
    let ports: Vec<ProtoPort> = parse_port_list(access).context("invalid -A/--access list")?;
    ensure!(!ports.is_empty(), "no access requested (give -A proto/port, e.g. -A tcp/22)");
    let is_nat = nat.access.is_some() || nat.local;
    if !is_nat {
        ensure!(
            nat.port.is_none() && !nat.rand_port,
            "--nat-port and --nat-rand-port need -N/--nat-access or --nat-local"
        );
        let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
        return Ok(RequestFields {
            message_type: MessageType::for_request(None, false, timeout.is_some()),
            message: format!("{allow},{}", list.join(",")),
            nat_access: None,
            client_timeout: timeout,
        });
    }
    ensure!(ports.len() == 1, "NAT access takes exactly one proto/port in -A");
    let requested = ports[0];
    let nat_field = match &nat.access {
        Some(spec) => {
            // fwknop turns the first ':' into ','; the host may not be IPv6 in its syntax, but a
            // bracketed or plain IPv6 address with a trailing ",port" still works here.
            let spec = spec.trim();
            let (host, port) = match spec.rsplit_once(',') {
                Some((h, p)) => (h, Some(p)),
                None => match spec.split_once(':') {
                    Some((h, p)) if !p.contains(':') => (h, Some(p)),
                    _ => (spec, None),
                },
            };
            ensure!(!host.is_empty(), "invalid -N/--nat-access {spec:?} (expected host[:,]port)");
            let port = match port {
                Some(p) => p.trim().parse::<u16>().ok().filter(|&p| p != 0).with_context(|| {
                    format!("invalid port in -N/--nat-access {spec:?} (expected host[:,]port)")
                })?,
                None => requested.port,
            };
            format!("{host},{port}")
        }
        None => {
            let dest = destination.context("--nat-local needs -D/--destination (it is the NAT host)")?;
            format!("{dest},{}", requested.port)
        }
    };
    ensure!(
        spa_engine::access::NatAccess::parse(&nat_field).is_some(),
        "invalid NAT access {nat_field:?} (expected host,port)"
    );
    let external = if nat.rand_port { rand_port() } else { nat.port.unwrap_or(requested.port) };
    Ok(RequestFields {
        message_type: MessageType::for_request(Some(nat.local), false, timeout.is_some()),
        message: format!("{allow},{}/{external}", requested.proto),
        nat_access: Some(nat_field),
        client_timeout: timeout,
    })
}

/// The account name of the effective user, from the password database.
#[cfg(unix)]
pub(crate) fn account_name() -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: all-zero is a valid `passwd`; it is only read after getpwuid_r filled it.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: geteuid cannot fail; getpwuid_r writes at most `buf.len()` bytes into `buf` and
    // sets `result` to `&mut pw` on success or null otherwise.
    let rc = unsafe {
        libc::getpwuid_r(libc::geteuid(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut result)
    };
    if rc != 0 || result.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    name.to_str().ok().map(str::to_owned)
}

/// The account name of the user, as Windows knows it (`GetUserNameW`; fwknop's Windows
/// client asks the same).
#[cfg(windows)]
pub(crate) fn account_name() -> Option<String> {
    // UNLEN (256) characters and the NUL.
    let mut buf = [0u16; 257];
    let mut len = buf.len() as u32;
    // SAFETY: `buf` holds `len` UTF-16 units; GetUserNameW writes at most that many (the NUL
    // included) and sets `len` to the count written.
    if unsafe { windows_sys::Win32::System::WindowsProgramming::GetUserNameW(buf.as_mut_ptr(), &mut len) }
        == 0
    {
        return None;
    }
    let n = (len as usize).saturating_sub(1).min(buf.len());
    String::from_utf16(&buf[..n]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn no_rand() -> u16 {
        panic!("no random port expected")
    }

    #[test]
    fn time_offsets_in_fwknop_units() {
        assert_eq!(parse_time_offset("90").unwrap(), 90);
        assert_eq!(parse_time_offset("60sec").unwrap(), 60);
        assert_eq!(parse_time_offset("2min").unwrap(), 120);
        assert_eq!(parse_time_offset("2m").unwrap(), 120);
        assert_eq!(parse_time_offset("1hour").unwrap(), 3600);
        assert_eq!(parse_time_offset("3days").unwrap(), 3 * 86400);
        assert_eq!(parse_time_offset("1DAY").unwrap(), 86400);
        for bad in ["", "min", "-5", "5 weeks", "10years", "9999999"] {
            assert!(parse_time_offset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_access_and_timeout_promotion() {
        let r = build_request(
            ip("1.2.3.4"),
            Some("tcp/22,udp/53"),
            None,
            &NatOpts::default(),
            None,
            None,
            &mut no_rand,
        )
        .unwrap();
        assert_eq!(r.message_type, MessageType::Access);
        assert_eq!(r.message, "1.2.3.4,tcp/22,udp/53");
        assert_eq!(r.nat_access, None);
        let r = build_request(
            ip("0.0.0.0"),
            Some("tcp/22"),
            None,
            &NatOpts::default(),
            None,
            Some(60),
            &mut no_rand,
        )
        .unwrap();
        assert_eq!(r.message_type, MessageType::ClientTimeoutAccess);
        assert_eq!(r.client_timeout, Some(60));
        // -f 0 is no timeout, as libfko demotes.
        let r = build_request(
            ip("1.2.3.4"),
            Some("tcp/22"),
            None,
            &NatOpts::default(),
            None,
            Some(0),
            &mut no_rand,
        )
        .unwrap();
        assert_eq!(r.message_type, MessageType::Access);
    }

    #[test]
    fn malformed_access_is_an_error() {
        for bad in ["tcp", "tcp/0", "icmp/x", "tcp/22,bogus", "tcp/70000"] {
            assert!(
                build_request(ip("1.2.3.4"), Some(bad), None, &NatOpts::default(), None, None, &mut no_rand)
                    .is_err(),
                "{bad}"
            );
        }
        let e = build_request(ip("1.2.3.4"), None, None, &NatOpts::default(), None, None, &mut no_rand)
            .unwrap_err();
        assert!(e.to_string().contains("-A"));
    }

    #[test]
    fn nat_access_as_fwknop_writes_it() {
        // -N 192.168.10.2,22 -A tcp/22
        let nat = NatOpts { access: Some("192.168.10.2,22".into()), ..Default::default() };
        let r = build_request(ip("1.2.3.4"), Some("tcp/22"), None, &nat, None, None, &mut no_rand).unwrap();
        assert_eq!(r.message_type, MessageType::NatAccess);
        assert_eq!(r.message, "1.2.3.4,tcp/22");
        assert_eq!(r.nat_access.as_deref(), Some("192.168.10.2,22"));
        // -N host:port with -f 60 → type 4.
        let nat = NatOpts { access: Some("192.168.10.2:2222".into()), ..Default::default() };
        let r =
            build_request(ip("1.2.3.4"), Some("tcp/22"), None, &nat, None, Some(60), &mut no_rand).unwrap();
        assert_eq!(r.message_type, MessageType::ClientTimeoutNatAccess);
        assert_eq!(r.nat_access.as_deref(), Some("192.168.10.2,2222"));
        assert_eq!(r.client_timeout, Some(60));
        // --nat-port: the message carries the external port, NAT the internal one.
        let nat = NatOpts { access: Some("192.168.10.2,22".into()), port: Some(2222), ..Default::default() };
        let r = build_request(ip("1.2.3.4"), Some("tcp/22"), None, &nat, None, None, &mut no_rand).unwrap();
        assert_eq!(r.message, "1.2.3.4,tcp/2222");
        assert_eq!(r.nat_access.as_deref(), Some("192.168.10.2,22"));
    }

    #[test]
    fn local_nat_uses_the_destination_string() {
        // --nat-local --nat-port 2222 -A tcp/22 -D 127.0.0.1
        let nat = NatOpts { local: true, port: Some(2222), ..Default::default() };
        let r =
            build_request(ip("1.2.3.4"), Some("tcp/22"), None, &nat, Some("127.0.0.1"), None, &mut no_rand)
                .unwrap();
        assert_eq!(r.message_type, MessageType::LocalNatAccess);
        assert_eq!(r.message, "1.2.3.4,tcp/2222");
        assert_eq!(r.nat_access.as_deref(), Some("127.0.0.1,22"));
        let r = build_request(
            ip("1.2.3.4"),
            Some("tcp/22"),
            None,
            &nat,
            Some("gw.example"),
            Some(30),
            &mut no_rand,
        )
        .unwrap();
        assert_eq!(r.message_type, MessageType::ClientTimeoutLocalNatAccess);
        assert_eq!(r.nat_access.as_deref(), Some("gw.example,22"));
        assert!(build_request(ip("1.2.3.4"), Some("tcp/22"), None, &nat, None, None, &mut no_rand).is_err());
    }

    #[test]
    fn nat_rand_port_draws_the_external_port() {
        // --nat-rand-port -N 10.0.0.5 -A tcp/22
        let nat = NatOpts { access: Some("10.0.0.5".into()), rand_port: true, ..Default::default() };
        let r = build_request(ip("1.2.3.4"), Some("tcp/22"), None, &nat, None, None, &mut || 31337).unwrap();
        assert_eq!(r.message, "1.2.3.4,tcp/31337");
        assert_eq!(r.nat_access.as_deref(), Some("10.0.0.5,22"));
    }

    #[test]
    fn nat_refusals() {
        let nat = NatOpts { access: Some("10.0.0.5,22".into()), ..Default::default() };
        assert!(
            build_request(ip("1.2.3.4"), Some("tcp/22,tcp/80"), None, &nat, None, None, &mut no_rand)
                .is_err()
        );
        let nat = NatOpts { access: Some("10.0.0.5,0".into()), ..Default::default() };
        assert!(build_request(ip("1.2.3.4"), Some("tcp/22"), None, &nat, None, None, &mut no_rand).is_err());
        let nat = NatOpts { port: Some(2222), ..Default::default() };
        assert!(build_request(ip("1.2.3.4"), Some("tcp/22"), None, &nat, None, None, &mut no_rand).is_err());
    }

    #[test]
    fn command_message() {
        let r = build_request(
            ip("1.2.3.4"),
            None,
            Some("echo hi"),
            &NatOpts::default(),
            None,
            Some(60),
            &mut no_rand,
        )
        .unwrap();
        assert_eq!(r.message_type, MessageType::Command);
        assert_eq!(r.message, "1.2.3.4,echo hi");
        assert_eq!(r.client_timeout, None);
    }

    #[test]
    fn username_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let all = env(&[("SPOOF_USER", "spoof"), ("LOGNAME", "log"), ("USER", "user")]);
        let none = || None;
        let acct = || Some("acct".to_string());
        assert_eq!(username(Some("cli"), &all, &acct), "cli");
        assert_eq!(username(None, &all, &acct), "spoof");
        assert_eq!(username(None, &env(&[("LOGNAME", "log"), ("USER", "user")]), &acct), "log");
        assert_eq!(username(None, &env(&[("USER", "user")]), &acct), "acct");
        assert_eq!(username(None, &env(&[("USER", "user")]), &none), "user");
        assert_eq!(username(None, &env(&[]), &none), "NO_USER");
    }

    #[test]
    fn key_spec_debug_is_redacted() {
        let k = KeySpec::Text(Zeroizing::new("hunter2".into()));
        assert!(!format!("{k:?}").contains("hunter2"));
    }
}

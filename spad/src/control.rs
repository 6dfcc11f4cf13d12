//! The control socket: how `spad status`, `spad revoke` and `spad reload` talk to the running
//! daemon.
//!
//! A unix stream socket (`[control] socket`, default `/run/spad/control.sock`; systemd's
//! `RuntimeDirectory=spad` makes its directory), mode 0600 in a directory only spad's user may
//! write (made 0700 when missing). One small JSON request per connection, one JSON reply:
//!
//! ```text
//! {"command": "status"}
//! {"command": "revoke", "target": "0123456789abcdef" | "192.0.2.7"}
//! {"command": "reload"}
//! ```
//!
//! Requests are at most [`MAX_REQUEST`] bytes and must arrive within [`REQUEST_TIME`]; the
//! client ends its request by shutting down its side for writing. The kernel says who is on
//! the other end (`SO_PEERCRED` on Linux and OpenBSD, `getpeereid` with `LOCAL_PEERPID` or
//! `LOCAL_PEERCRED` on macOS and FreeBSD): only root and spad's own user are served (the
//! file's mode already keeps others out; this holds even if someone loosens it), and the
//! asker's uid, user name and pid go into the audit line of what it asked for.
//!
//! A socket file left by a spad that crashed is replaced: a path that holds a socket nobody
//! answers on is removed before binding, anything else (a file, a link, a socket someone
//! serves) is left alone and reported. The state directory's lock already guarantees that no
//! other spad of this configuration runs. Problems with the control socket are logged and the
//! daemon runs on without it: it is how admins look, not what protects anything.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::Deserialize;
use serde_json::{Value, json};
use spa_backends::Grant;

use crate::audit::{Requester, access_json, rfc3339};
use crate::shared_state::{ReplayShare, parse_id};
use crate::stats::Stats;
use crate::worker::{Msg, RevokeTarget, Revoked};

/// Longest request the daemon reads.
pub const MAX_REQUEST: usize = 4096;
/// Longest reply the client reads.
pub const MAX_REPLY: usize = 1 << 20;
/// Longest time a client has to send its request, in all.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// Longest wait for one read or write on the daemon's side.
const SERVER_IO: Duration = Duration::from_secs(2);
/// Longest the daemon waits for its worker (a revoke) or its main loop (a reload).
const INNER_WAIT: Duration = Duration::from_secs(60);
/// Longest the client waits for a reply.
const CLIENT_WAIT: Duration = Duration::from_secs(90);

/// Where the control socket is by default: the runtime directory.
#[cfg(target_os = "linux")]
pub const DEFAULT_SOCKET: &str = "/run/spad/control.sock";
/// Where the control socket is by default: the runtime directory.
#[cfg(not(target_os = "linux"))]
pub const DEFAULT_SOCKET: &str = "/var/run/spad/control.sock";

/// `[control]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Serve the control socket (`spad status`, `revoke`, `reload`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Its path.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

fn yes() -> bool {
    true
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

impl Default for Control {
    fn default() -> Self {
        Self { enabled: true, socket: default_socket() }
    }
}

impl Control {
    /// What is wrong with the settings, if anything (the path must be absolute and short
    /// enough for a socket address).
    pub fn problem(&self) -> Option<String> {
        let len = self.socket.as_os_str().len();
        if !self.socket.is_absolute() {
            Some(format!("control.socket: {} is not an absolute path", self.socket.display()))
        } else if len > 100 || self.socket.file_name().is_none() {
            Some(format!(
                "control.socket: {} is not usable as a socket path (at most 100 bytes)",
                self.socket.display()
            ))
        } else {
            None
        }
    }
}

/// What went wrong with the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Its directory cannot be made or read.
    #[error("cannot use {0} for the control socket")]
    Dir(PathBuf, #[source] std::io::Error),
    /// Its directory could let someone else replace the socket.
    #[error("{0}: {1}; refusing to put the control socket there")]
    Unsafe(PathBuf, String),
    /// Something other than a socket is in the way.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotSocket(PathBuf),
    /// A live process serves the path.
    #[error("{0} is served by another process (another spad with the same [control] socket?)")]
    InUse(PathBuf),
    /// Binding or setting the mode failed.
    #[error("cannot bind {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    /// The client could not connect.
    #[error("cannot connect to {0}{1}")]
    Connect(PathBuf, &'static str, #[source] std::io::Error),
    /// The exchange failed half-way.
    #[error("talking to spad over {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The reply is not what the daemon sends.
    #[error("spad's reply over {0} is not understood")]
    BadReply(PathBuf),
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
}

/// A request, as the daemon reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// How the daemon is doing.
    Status,
    /// End grants now: one id, or every grant of an address.
    Revoke {
        /// A grant id (16 hexadecimal digits) or an address.
        target: String,
    },
    /// Load the configuration again, as SIGHUP does, and say how it went.
    Reload,
}

impl Request {
    /// Reads a request: `{"command": ...}` with a `target` for `revoke` only, and nothing
    /// else.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            command: String,
            #[serde(default)]
            target: Option<String>,
        }
        let raw: Raw = serde_json::from_slice(bytes).ok()?;
        match (raw.command.as_str(), raw.target) {
            ("status", None) => Some(Self::Status),
            ("reload", None) => Some(Self::Reload),
            ("revoke", Some(target)) => Some(Self::Revoke { target }),
            _ => None,
        }
    }
}

/// What the main loop does for the control socket (it owns the running configuration).
#[derive(Debug)]
pub enum MainCall {
    /// Reload the configuration; the reply is the JSON reply for the client.
    Reload {
        /// Who asked.
        by: Requester,
        /// Where the result goes.
        reply: Sender<Value>,
    },
}

/// What the server needs from the daemon.
pub struct Context {
    /// The counters.
    pub stats: Arc<Stats>,
    /// The backend worker.
    pub worker: Sender<Msg>,
    /// The main loop.
    pub main: Sender<MainCall>,
    /// The running backend's name.
    pub backend: &'static str,
    /// `socket` or `capture`.
    pub mode: &'static str,
    /// The shared replay store, if any.
    pub share: Option<Arc<ReplayShare>>,
    /// Where metrics are served, if they are.
    pub metrics: Option<SocketAddr>,
}

/// A bound control socket; removes its file when dropped (if it is still the one it made).
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    listener: Option<UnixListener>,
    id: (u64, u64),
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes the socket's directory (0700) if it is missing; refuses one that another user owns
/// or that group or others may write (they could swap the socket for their own).
fn prepare_dir(dir: &Path) -> Result<(), ControlError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| ControlError::Dir(dir.to_owned(), e)),
        Err(e) => Err(ControlError::Dir(dir.to_owned(), e)),
        Ok(m) if !m.is_dir() => Err(ControlError::Unsafe(dir.to_owned(), "not a directory".into())),
        Ok(m) if m.uid() != euid() && m.uid() != 0 => Err(ControlError::Unsafe(
            dir.to_owned(),
            format!("owned by uid {}, not by spad's (uid {})", m.uid(), euid()),
        )),
        Ok(m) if m.mode() & 0o022 != 0 => Err(ControlError::Unsafe(
            dir.to_owned(),
            format!(
                "mode {:04o} lets group or others write it; use a directory of spad's own",
                m.mode() & 0o7777
            ),
        )),
        Ok(_) => Ok(()),
    }
}

impl Server {
    /// Binds the socket at `path` (mode 0600), replacing a stale one; serve it with
    /// [`Server::serve`].
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        prepare_dir(dir)?;
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ControlError::Bind(path.to_owned(), e)),
            Ok(m) if !m.file_type().is_socket() => return Err(ControlError::NotSocket(path.to_owned())),
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => return Err(ControlError::InUse(path.to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!("removing the stale control socket {}", path.display());
                    std::fs::remove_file(path).map_err(|e| ControlError::Bind(path.to_owned(), e))?;
                }
                Err(e) => return Err(ControlError::Bind(path.to_owned(), e)),
            },
        }
        let listener = UnixListener::bind(path).map_err(|e| ControlError::Bind(path.to_owned(), e))?;
        let cleanup = |e| {
            let _ = std::fs::remove_file(path);
            ControlError::Bind(path.to_owned(), e)
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(cleanup)?;
        let m = std::fs::symlink_metadata(path).map_err(cleanup)?;
        Ok(Self { path: path.to_owned(), listener: Some(listener), id: (m.dev(), m.ino()) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests in a thread of its own, one connection at a time.
    pub fn serve(&mut self, ctx: Context) -> Result<(), ControlError> {
        let Some(listener) = self.listener.take() else { return Ok(()) };
        thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                if let Err(e) = crate::privs::drop_thread_capabilities() {
                    tracing::warn!("control socket: cannot drop capabilities: {e}");
                }
                let mut failures = crate::shared_state::Throttle::new(Duration::from_secs(60));
                for conn in listener.incoming() {
                    match conn {
                        Ok(stream) => handle(stream, &ctx),
                        Err(e) => {
                            if let Some(n) = failures.allow() {
                                tracing::error!(
                                    "control socket: accept: {e}{}",
                                    crate::shared_state::more(n)
                                );
                            }
                            thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map(drop)
            .map_err(ControlError::Thread)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only our own socket: a later spad may have replaced it meanwhile.
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

// ----- who is asking -------------------------------------------------------------------------

/// What the kernel says about the process on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its effective user id.
    pub uid: u32,
    /// Its process id, where the system tells it.
    pub pid: Option<u32>,
}

/// Reads a socket option into a plain C value.
#[cfg(any(target_os = "linux", target_os = "openbsd", target_os = "macos", target_os = "freebsd"))]
fn get_option<T: Copy>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    mut value: T,
) -> std::io::Result<T> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a plain C value of `len` bytes, which is all the kernel writes.
    let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
    if r == 0 { Ok(value) } else { Err(std::io::Error::last_os_error()) }
}

/// The peer of a connected unix socket.
pub fn peer(stream: &UnixStream) -> std::io::Result<Peer> {
    use std::os::fd::AsRawFd as _;
    let fd = stream.as_raw_fd();
    #[cfg(target_os = "linux")]
    {
        let c = get_option(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, libc::ucred { pid: 0, uid: 0, gid: 0 })?;
        Ok(Peer { uid: c.uid, pid: u32::try_from(c.pid).ok().filter(|p| *p > 0) })
    }
    #[cfg(target_os = "openbsd")]
    {
        let c = get_option(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            libc::sockpeercred { uid: 0, gid: 0, pid: 0 },
        )?;
        Ok(Peer { uid: c.uid, pid: u32::try_from(c.pid).ok().filter(|p| *p > 0) })
    }
    #[cfg(any(target_os = "macos", target_os = "freebsd"))]
    {
        let (mut uid, mut gid) = (0, 0);
        // SAFETY: getpeereid writes one uid_t and one gid_t, both valid for writes.
        if unsafe { libc::getpeereid(fd, &raw mut uid, &raw mut gid) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        #[cfg(target_os = "macos")]
        let pid = get_option(fd, libc::SOL_LOCAL, libc::LOCAL_PEERPID, 0 as libc::pid_t).ok();
        #[cfg(target_os = "freebsd")]
        let pid = {
            // SAFETY: xucred is a plain C struct; all-zero is valid.
            let zero: libc::xucred = unsafe { std::mem::zeroed() };
            get_option(fd, libc::SOL_LOCAL, libc::LOCAL_PEERCRED, zero)
                .ok()
                // SAFETY: FreeBSD 13 and later fill in cr_pid; older ones leave the union
                // zero (a null pointer), read as pid 0, which is dropped below.
                .map(|c| unsafe { c.cr_pid__c_anonymous_union.cr_pid })
        };
        Ok(Peer { uid, pid: pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0) })
    }
}

/// The name of user `uid`, if the system has one (printable ASCII only).
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: all-zero is a valid passwd; getpwuid_r fills it with pointers into `buf`.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` holds `buf.len()` bytes.
        let r =
            unsafe { libc::getpwuid_r(uid, &raw mut pw, buf.as_mut_ptr().cast(), buf.len(), &raw mut found) };
        if r == libc::ERANGE && buf.len() < 1 << 16 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if r != 0 || found.is_null() || pw.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_str().ok()?;
        let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_graphic());
        return ok.then(|| name.to_owned());
    }
}

impl Peer {
    /// The requester the audit trail names.
    pub fn requester(&self) -> Requester {
        let user = user_name(self.uid);
        let pid = self.pid.map_or_else(String::new, |p| format!(", pid {p}"));
        let by = format!("{} (uid {}{pid})", user.as_deref().unwrap_or("?"), self.uid);
        Requester { by, uid: Some(self.uid), user, pid: self.pid }
    }
}

// ----- the daemon's side ---------------------------------------------------------------------

/// Reads until the peer shuts its side down: at most `max` bytes within `time`. `None` when
/// the request did not come whole (too long, too slow, an error).
fn read_bounded(stream: &mut impl Read, max: usize, time: Duration) -> Option<Vec<u8>> {
    let started = Instant::now();
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        if started.elapsed() >= time {
            return None;
        }
        let room = (max + 1 - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Some(buf),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > max {
                    return None;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn failure(message: impl Into<String>) -> Value {
    json!({"ok": false, "error": message.into()})
}

fn handle(mut stream: UnixStream, ctx: &Context) {
    // The request is read whatever the answer: a reply to a request left unread would reach
    // the client as a reset connection instead.
    let _ = stream.set_read_timeout(Some(SERVER_IO));
    let request = read_bounded(&mut stream, MAX_REQUEST, REQUEST_TIME);
    let reply = match peer(&stream) {
        Err(e) => failure(format!("cannot tell who is asking: {e}")),
        Ok(p) if p.uid != 0 && p.uid != euid() => {
            tracing::warn!(
                "control socket: refused uid {} (pid {}): only root and spad's user are served",
                p.uid,
                p.pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
            );
            failure("permission denied: the control socket serves root only")
        }
        Ok(p) => match request {
            None => failure(format!("the request must be JSON of at most {MAX_REQUEST} bytes, sent at once")),
            Some(bytes) => match Request::parse(&bytes) {
                None => failure("not a request: {\"command\": \"status\" | \"revoke\" | \"reload\"}"),
                Some(req) => answer(req, &p, ctx),
            },
        },
    };
    let _ = stream.set_write_timeout(Some(SERVER_IO));
    let mut text = reply.to_string();
    text.push('\n');
    let _ = stream.write_all(text.as_bytes());
}

fn answer(req: Request, peer: &Peer, ctx: &Context) -> Value {
    match req {
        Request::Status => json!({"ok": true, "status": status(ctx)}),
        Request::Revoke { target } => revoke(&target, peer, ctx),
        Request::Reload => {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let call = MainCall::Reload { by: peer.requester(), reply: tx };
            if ctx.main.send_timeout(call, INNER_WAIT).is_err() {
                return failure("spad is stopping");
            }
            rx.recv_timeout(INNER_WAIT).unwrap_or_else(|_| failure("no answer from spad's main loop"))
        }
    }
}

/// What a revoke target names.
pub fn parse_target(target: &str) -> Option<RevokeTarget> {
    if let Some(id) = parse_id(target) {
        return Some(RevokeTarget::Id(id));
    }
    target.parse::<IpAddr>().ok().map(RevokeTarget::Address)
}

fn grant_json(g: &Grant) -> Value {
    let mut v = json!({
        "id": g.id.to_string(),
        "allowed_source": g.source.to_string(),
        "packet_source": g.packet_source.to_string(),
        "access": access_json(&g.access),
        "stanza": g.stanza,
        "username": g.username,
        "expires": rfc3339(g.deadline, 0),
    });
    if let Some(p) = g.source_port {
        v["source_port"] = json!(p);
    }
    v
}

fn revoke(target: &str, peer: &Peer, ctx: &Context) -> Value {
    let Some(parsed) = parse_target(target) else {
        return failure(
            "the target must be a grant id (16 hexadecimal digits, as spad list shows) or an address",
        );
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    let msg = Msg::RevokeNow { target: parsed, by: peer.requester(), reply: tx };
    if ctx.worker.send_timeout(msg, INNER_WAIT).is_err() {
        return failure("the backend worker does not take requests (spad is stopping, or stuck)");
    }
    let Ok(done) = rx.recv_timeout(INNER_WAIT) else {
        return failure("no answer from the backend worker; see spad's log");
    };
    let revoked: Vec<Value> = done
        .iter()
        .map(|Revoked { grant, error }| {
            let mut v = grant_json(grant);
            v["closed"] = json!(error.is_none());
            if let Some(e) = error {
                v["error"] = json!(e);
            }
            v
        })
        .collect();
    json!({"ok": true, "target": target, "revoked": revoked})
}

/// `spad status --json`'s object.
pub fn status(ctx: &Context) -> Value {
    let mut v = ctx.stats.json();
    v["version"] = json!(concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SPA_GIT_COMMIT"), ")"));
    v["pid"] = json!(std::process::id());
    v["backend"] = json!(ctx.backend);
    v["mode"] = json!(ctx.mode);
    v["metrics"] = json!(ctx.metrics.map(|a| a.to_string()));
    v["shared_store"] = ctx.share.as_ref().map_or(Value::Null, |s| s.status());
    v
}

// ----- the client's side ---------------------------------------------------------------------

/// The control socket a configuration names: `[control] socket` of the main file (only that
/// table is read, so that a broken access stanza does not stop `spad status`).
pub fn socket_of(config: &Path) -> anyhow::Result<PathBuf> {
    #[derive(Deserialize)]
    struct Main {
        #[serde(default)]
        control: Control,
    }
    let text = std::fs::read_to_string(config).map_err(|e| {
        anyhow::Error::new(e)
            .context(format!("cannot read {} (or give the socket with --socket)", config.display()))
    })?;
    let main: Main =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", config.display(), e.message().trim()))?;
    if !main.control.enabled {
        anyhow::bail!("{}: [control] enabled = false: spad serves no control socket", config.display());
    }
    Ok(main.control.socket)
}

/// Sends one request and returns the reply.
pub fn request(path: &Path, req: &Value) -> Result<Value, ControlError> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => " (is spad running, with [control] enabled?)",
            std::io::ErrorKind::ConnectionRefused => " (spad is not running: the socket is stale)",
            std::io::ErrorKind::PermissionDenied => " (the control socket is for root)",
            _ => "",
        };
        ControlError::Connect(path.to_owned(), hint, e)
    })?;
    let io = |e| ControlError::Io(path.to_owned(), e);
    stream.set_read_timeout(Some(CLIENT_WAIT)).map_err(io)?;
    stream.set_write_timeout(Some(CLIENT_WAIT)).map_err(io)?;
    stream.write_all(req.to_string().as_bytes()).map_err(io)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let bytes = read_bounded(&mut stream, MAX_REPLY, CLIENT_WAIT)
        .ok_or_else(|| ControlError::BadReply(path.to_owned()))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| ControlError::BadReply(path.to_owned()))?;
    if v.get("ok").and_then(Value::as_bool).is_none() {
        return Err(ControlError::BadReply(path.to_owned()));
    }
    Ok(v)
}

/// The reply's error, if it says it failed.
fn refused(v: &Value) -> Option<String> {
    (v["ok"] == false).then(|| v["error"].as_str().unwrap_or("failed").to_owned())
}

/// `1h 2m 3s`.
pub fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// `spad status`.
pub fn print_status(path: &Path, as_json: bool) -> anyhow::Result<()> {
    let v = request(path, &json!({"command": "status"}))?;
    if let Some(e) = refused(&v) {
        anyhow::bail!("{e}");
    }
    let s = &v["status"];
    if as_json {
        println!("{s}");
        return Ok(());
    }
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let text = |k: &str| s[k].as_str().unwrap_or("?").to_owned();
    println!(
        "spad {}, pid {}, up {} (since {})",
        text("version"),
        n("pid"),
        duration_text(n("uptime_seconds")),
        text("started")
    );
    println!("backend:        {} ({} mode)", text("backend"), text("mode"));
    println!("live grants:    {}", n("live_grants"));
    println!(
        "grant events:   {} granted, {} extended, {} re-knocked, {} revoked, {} expired",
        n("grants"),
        n("extends"),
        n("reknocks"),
        n("revokes"),
        n("expires")
    );
    let mut reasons: Vec<(String, u64)> = s["rejects"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let by_reason: Vec<String> = reasons.iter().map(|(r, c)| format!("{r} {c}")).collect();
    println!(
        "rejects:        {}{}{}",
        n("rejects_total"),
        if by_reason.is_empty() { String::new() } else { format!(" ({})", by_reason.join(", ")) },
        match n("audit_rejects_suppressed") {
            0 => String::new(),
            x => format!("; {x} left out of the audit file (summarised)"),
        }
    );
    let tamper = &s["last_tamper"];
    if tamper.is_null() {
        println!("tamper:         none");
    } else {
        let outcome = match tamper["repaired"].as_bool() {
            Some(true) => "repaired",
            Some(false) => "repair FAILED",
            None => "repairing",
        };
        println!(
            "tamper:         {} found, {} repaired; last at {}: {} ({outcome})",
            n("tampers"),
            n("tamper_repairs"),
            tamper["time"].as_str().unwrap_or("?"),
            tamper["message"].as_str().unwrap_or("?")
        );
    }
    let err = &s["last_backend_error"];
    if err.is_null() {
        println!("backend errors: none");
    } else {
        println!(
            "backend errors: {}; last at {}: {}",
            n("backend_errors"),
            err["time"].as_str().unwrap_or("?"),
            err["message"].as_str().unwrap_or("?")
        );
    }
    let drops: Vec<String> = s["receive_drops"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let d = r["drops"].as_u64().map_or_else(|| "unknown".to_owned(), |d| d.to_string());
                    format!("{} {d}", r["receiver"].as_str().unwrap_or("?"))
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "receive drops:  {}",
        if drops.is_empty() { "no receivers".to_owned() } else { drops.join(", ") }
    );
    println!("replay store:   {} errors", n("replay_store_errors"));
    let shared = &s["shared_store"];
    if !shared.is_null() {
        println!(
            "shared store:   {} as gateway {}: {} ({} of {} connections ready; on_store_down = {})",
            shared["url"].as_str().unwrap_or("?"),
            shared["gateway"].as_str().unwrap_or("?"),
            if shared["connected"] == true { "connected" } else { "NOT connected" },
            shared["connections"].as_u64().unwrap_or(0),
            shared["wanted"].as_u64().unwrap_or(0),
            shared["on_store_down"].as_str().unwrap_or("?")
        );
    }
    if let Some(m) = s["metrics"].as_str() {
        println!("metrics:        http://{m}/metrics");
    }
    Ok(())
}

/// `spad revoke ID|ADDRESS` on this gateway: an error (exit 1) when nothing matched or a
/// close failed.
pub fn revoke_here(path: &Path, target: &str) -> anyhow::Result<()> {
    if parse_target(target).is_none() {
        anyhow::bail!(
            "{target:?} is neither a grant id (16 hexadecimal digits, as spad list shows) nor an address"
        );
    }
    let v = request(path, &json!({"command": "revoke", "target": target}))?;
    if let Some(e) = refused(&v) {
        anyhow::bail!("{e}");
    }
    let list = v["revoked"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        anyhow::bail!("nothing revoked: no live grant matches {target}");
    }
    let mut failed = 0;
    for g in &list {
        let sport = g["source_port"].as_u64().map(|p| format!(" source port {p}")).unwrap_or_default();
        let what = format!(
            "{} for {}{sport} ({}; stanza {}, user {})",
            g["id"].as_str().unwrap_or("?"),
            g["allowed_source"].as_str().unwrap_or("?"),
            access_text(&g["access"]),
            g["stanza"].as_str().unwrap_or("?"),
            g["username"].as_str().unwrap_or("?")
        );
        if g["closed"] == true {
            println!("revoked {what}");
        } else {
            failed += 1;
            println!("closing {what} FAILED, retried by spad: {}", g["error"].as_str().unwrap_or("?"));
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} grants could not be closed yet", list.len());
    }
    Ok(())
}

fn access_text(v: &Value) -> String {
    match v {
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
        Value::String(s) => s.clone(),
        _ => "?".into(),
    }
}

/// `spad reload`: the configuration's error (exit 1), or what the reload changed.
pub fn reload(path: &Path) -> anyhow::Result<()> {
    let v = request(path, &json!({"command": "reload"}))?;
    if let Some(e) = refused(&v) {
        anyhow::bail!("reload failed, the running configuration stays: {e}");
    }
    println!("configuration reloaded: {} access stanzas", v["stanzas"].as_u64().unwrap_or(0));
    for w in v["warnings"].as_array().into_iter().flatten() {
        println!("warning: {}", w.as_str().unwrap_or("?"));
    }
    let later: Vec<&str> =
        v["restart_needed"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !later.is_empty() {
        println!("changes to [{}] take effect at the next restart", later.join("], ["));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_strict() {
        assert_eq!(Request::parse(br#"{"command":"status"}"#), Some(Request::Status));
        assert_eq!(
            Request::parse(br#"{"command":"revoke","target":"10.0.0.1"}"#),
            Some(Request::Revoke { target: "10.0.0.1".into() })
        );
        for bad in [
            &br#"{"command":"shutdown"}"#[..],
            br#"{"command":"status","x":1}"#,
            br#"{"command":"status","target":"10.0.0.1"}"#,
            br#"{"command":"revoke"}"#,
            br#"{"command":"revoke","target":7}"#,
            b"[]",
            b"",
            b"\xff",
        ] {
            assert_eq!(Request::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn targets_are_ids_or_addresses() {
        assert_eq!(parse_target("00000000000000ff"), Some(RevokeTarget::Id(spa_backends::GrantId(255))));
        assert_eq!(parse_target("fd00::1"), Some(RevokeTarget::Address("fd00::1".parse().unwrap())));
        assert_eq!(parse_target("192.0.2.1"), Some(RevokeTarget::Address("192.0.2.1".parse().unwrap())));
        for bad in ["ff", "example.org", "192.0.2.0/24", "", "00000000000000fg"] {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_are_bounded() {
        assert_eq!(read_bounded(&mut &b"abc"[..], 3, REQUEST_TIME).as_deref(), Some(&b"abc"[..]));
        assert_eq!(read_bounded(&mut &b"abcd"[..], 3, REQUEST_TIME), None);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_text(5), "5s");
        assert_eq!(duration_text(65), "1m 5s");
        assert_eq!(duration_text(3_725), "1h 2m 5s");
        assert_eq!(duration_text(90_061), "1d 1h 1m");
    }

    #[test]
    fn a_stale_socket_is_replaced_and_anything_else_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        // A socket left behind by a process that is gone.
        drop(UnixListener::bind(&path).unwrap());
        let server = Server::bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A live one is not taken over.
        assert!(matches!(Server::bind(&path), Err(ControlError::InUse(_))));
        drop(server);
        assert!(!path.exists(), "removed on drop");
        // A file is not a socket: left alone.
        std::fs::write(&path, "data").unwrap();
        assert!(matches!(Server::bind(&path), Err(ControlError::NotSocket(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
        // Nor is a symbolic link to a socket.
        std::fs::remove_file(&path).unwrap();
        let other = dir.path().join("other.sock");
        let _live = UnixListener::bind(&other).unwrap();
        std::os::unix::fs::symlink(&other, &path).unwrap();
        assert!(matches!(Server::bind(&path), Err(ControlError::NotSocket(_))));
        // A directory others may write is refused; a missing one is made 0700.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(Server::bind(&open.join("c.sock")), Err(ControlError::Unsafe(..))));
        let made = dir.path().join("made");
        let s = Server::bind(&made.join("c.sock")).unwrap();
        assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o777, 0o700);
        drop(s);
    }

    #[test]
    fn the_peer_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = peer(&a).unwrap();
        assert_eq!(p.uid, euid());
        assert_eq!(p.pid, Some(std::process::id()));
        let r = p.requester();
        assert_eq!(r.uid, Some(euid()));
        assert!(r.by.contains(&format!("uid {}", euid())), "{}", r.by);
        if euid() == 0 {
            assert_eq!(r.user.as_deref(), Some("root"));
        }
    }
}

//! Command messages (`enable_cmd_exec`): an authenticated client asks the daemon to run a
//! shell command, as fwknopd does.
//!
//! They run here, on a small pool of their own ([`THREADS`] threads behind a queue of
//! [`QUEUE`] jobs), never on the backend worker: a command may take up to [`LIMIT`], and the
//! worker must not make grants wait for it. When the queue is full the command is refused and
//! audited (`command_busy`), never queued without bound. Each command runs as `/bin/sh -c CMD`
//! in `/`, with only `PATH` in its environment, stdin and stdout on `/dev/null`, in a process
//! group of its own that is killed at the limit; with `cmd_exec_user` (and `cmd_exec_group`) as
//! that user and group, without supplementary groups (fwknop's `CMD_EXEC_USER`, which keeps
//! root's). The audit event `command` says how it ended.
//!
//! Who may send commands is the access stanza's business: only a stanza with
//! `enable_cmd_exec = true` accepts them (the engine refuses the rest as `command_not_enabled`).

use std::ffi::CString;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use spa_backends::CommandFailure;
use spa_backends::process::{self, DEFAULT_PATH, Environment, Invocation};
use spa_engine::stanza::CmdExec;

use crate::audit::Audit;
use crate::config::error_chain;

/// Threads that run commands: two, so one slow command does not hold up the next.
pub const THREADS: usize = 2;
/// Commands waiting for a thread, at most; more are refused as `command_busy`.
pub const QUEUE: usize = 16;
/// fwknopd's limit for a command: at it, the command's whole process group is killed.
pub const LIMIT: Duration = Duration::from_secs(5);

/// Why a `cmd_exec_user` or `cmd_exec_group` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No such user in the system's user database.
    #[error("no user {0:?}")]
    UnknownUser(String),
    /// No such group.
    #[error("no group {0:?}")]
    UnknownGroup(String),
    /// A name that cannot be passed to the system (a NUL byte).
    #[error("{0:?} is not a usable name")]
    BadName(String),
    /// The user or group database could not be read.
    #[error("cannot look up {name:?}")]
    Lookup {
        /// The name asked for.
        name: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// The user and group ids a stanza's commands run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Looks up `cmd_exec_user` (its uid and primary group) and `cmd_exec_group` (which replaces
/// that group) in the system's databases. Used at configuration load, so a name that does not
/// exist stops the daemon with the line, and again before each command, so the ids are those
/// of the system at that time.
pub fn resolve(exec: &CmdExec) -> Result<Ids, CommandError> {
    let (uid, user_gid) = user_ids(&exec.user)?;
    let gid = match &exec.group {
        Some(g) => group_id(g)?,
        None => user_gid,
    };
    Ok(Ids { uid, gid })
}

fn c_name(name: &str) -> Result<CString, CommandError> {
    CString::new(name).map_err(|_| CommandError::BadName(name.to_owned()))
}

/// Calls a `get*nam_r` function with a buffer that grows while it reports `ERANGE`.
fn lookup_r<T>(
    name: &str,
    mut call: impl FnMut(&mut [libc::c_char], &mut *mut T) -> libc::c_int,
) -> Result<Option<()>, CommandError> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(&mut buf, &mut result);
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            let source = std::io::Error::from_raw_os_error(rc);
            return Err(CommandError::Lookup { name: name.to_owned(), source });
        }
        return Ok((!result.is_null()).then_some(()));
    }
}

/// The uid and primary gid of user `name`.
fn user_ids(name: &str) -> Result<(u32, u32), CommandError> {
    let c = c_name(name)?;
    // SAFETY: all-zero is a valid `struct passwd` (integers and null pointers).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let found = lookup_r::<libc::passwd>(name, |buf, result| {
        // SAFETY: `c` is NUL-terminated; `pwd`, `buf` (with its true length) and `result`
        // are valid for writes for the whole call; the strings it points into live in `buf`.
        unsafe { libc::getpwnam_r(c.as_ptr(), &raw mut pwd, buf.as_mut_ptr(), buf.len(), result) }
    })?;
    match found {
        Some(()) => Ok((pwd.pw_uid, pwd.pw_gid)),
        None => Err(CommandError::UnknownUser(name.to_owned())),
    }
}

/// The gid of group `name`.
fn group_id(name: &str) -> Result<u32, CommandError> {
    let c = c_name(name)?;
    // SAFETY: all-zero is a valid `struct group` (an integer and null pointers).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let found = lookup_r::<libc::group>(name, |buf, result| {
        // SAFETY: as for getpwnam_r above.
        unsafe { libc::getgrnam_r(c.as_ptr(), &raw mut grp, buf.as_mut_ptr(), buf.len(), result) }
    })?;
    match found {
        Some(()) => Ok(grp.gr_gid),
        None => Err(CommandError::UnknownGroup(name.to_owned())),
    }
}

/// One accepted command message.
#[derive(Debug)]
pub struct Job {
    /// Where the packet came from.
    pub packet_source: IpAddr,
    /// The address the message named.
    pub allowed_source: IpAddr,
    /// The stanza that accepted it.
    pub stanza: Arc<str>,
    /// The username in the packet (client-chosen text).
    pub username: String,
    /// The command line for `/bin/sh -c`.
    pub command: String,
    /// Whom to run it as (the stanza's `cmd_exec_user`/`cmd_exec_group`); the daemon's own
    /// identity when `None`.
    pub run_as: Option<CmdExec>,
}

/// The pool that runs command messages.
pub struct Commands {
    tx: Sender<Job>,
}

impl Commands {
    /// Starts [`THREADS`] threads that run jobs and write their `command` events to `audit`.
    pub fn start(audit: Arc<Mutex<Audit>>) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        for i in 0..THREADS {
            let (rx, audit): (Receiver<Job>, _) = (rx.clone(), audit.clone());
            thread::Builder::new().name(format!("command {i}")).spawn(move || {
                for job in rx {
                    run(&job, &audit);
                }
            })?;
        }
        Ok(Self { tx })
    }

    /// Queues a job; gives it back when the queue is full (or the pool is gone).
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => Box::new(j),
        })
    }
}

/// Runs one job to its end (or its limit) and audits how it ended: its exit code, `signal`,
/// `timeout`, or why it could not start.
fn run(job: &Job, audit: &Mutex<Audit>) {
    let mut inv = Invocation::new("/bin/sh", LIMIT)
        .args(["-c", job.command.as_str()])
        .env(Environment::Clear(vec![("PATH".into(), DEFAULT_PATH.into())]))
        .label("command");
    let ids = job.run_as.as_ref().map(resolve).transpose();
    let status = match ids {
        Err(e) => format!("not run: {}", error_chain(&e)),
        Ok(ids) => {
            if let Some(ids) = ids {
                inv = inv.run_as(ids.uid, ids.gid);
            }
            match process::run(inv) {
                Ok(outcome) => outcome.status.code().map_or_else(|| "signal".to_owned(), |c| c.to_string()),
                Err(spa_backends::BackendError::Command {
                    failure: CommandFailure::Timeout { .. }, ..
                }) => "timeout".to_owned(),
                Err(e) => error_chain(&e),
            }
        }
    };
    tracing::info!("command from {} ({}) ended: {status}", job.packet_source, job.stanza);
    let mut detail = serde_json::json!({
        "packet_source": job.packet_source.to_string(),
        "allowed_source": job.allowed_source.to_string(),
        "stanza": &*job.stanza,
        "username": job.username,
        "exit": status,
    });
    if let Some(r) = &job.run_as {
        detail["user"] = serde_json::json!(r.user);
        detail["group"] = serde_json::json!(r.group);
    }
    audit.lock().unwrap_or_else(PoisonError::into_inner).daemon("command", detail);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_looked_up_in_the_system_databases() {
        let root = CmdExec { user: "root".into(), group: None };
        assert_eq!(resolve(&root).unwrap(), Ids { uid: 0, gid: 0 });
        // Debian's nobody is 65534 in group nogroup (65534); the group replaces the user's.
        let nobody = CmdExec { user: "nobody".into(), group: Some("root".into()) };
        assert_eq!(resolve(&nobody).unwrap(), Ids { uid: 65534, gid: 0 });
        let e = resolve(&CmdExec { user: "no-such-user-here".into(), group: None }).unwrap_err();
        assert_eq!(e.to_string(), "no user \"no-such-user-here\"");
        let e = resolve(&CmdExec { user: "root".into(), group: Some("no-such-group".into()) }).unwrap_err();
        assert_eq!(e.to_string(), "no group \"no-such-group\"");
        let e = resolve(&CmdExec { user: "a\0b".into(), group: None }).unwrap_err();
        assert!(matches!(e, CommandError::BadName(_)), "{e}");
    }
}

//! Running one command: its own process group, a hard time limit, stdin fed, stderr kept.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use spa_backends::BackendError;

/// How much of a command's stderr is kept (the rest is read and dropped, so a chatty command
/// never blocks on a full pipe).
const STDERR_KEEP: usize = 4096;
/// At most this many stderr lines go into an error...
const SUMMARY_LINES: usize = 3;
/// ...and at most this many characters.
const SUMMARY_CHARS: usize = 400;
/// The longest pause between two looks at a running child.
const MAX_POLL: Duration = Duration::from_millis(20);

/// One command to run.
#[derive(Debug)]
pub(crate) struct Invocation {
    /// Names the command in errors ("open command /usr/local/sbin/x for tcp/22").
    pub(crate) label: String,
    /// argv[0].
    pub(crate) program: String,
    /// argv[1..].
    pub(crate) args: Vec<String>,
    /// The complete environment (nothing is inherited).
    pub(crate) env: Vec<(String, String)>,
    /// Written to the command's stdin, which is then closed.
    pub(crate) stdin: Vec<u8>,
    /// Killed (with its whole process group) when it runs longer.
    pub(crate) limit: Duration,
}

/// How a command ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Its exit status.
    pub(crate) status: ExitStatus,
    /// The first line(s) of its stderr, read only when it failed.
    pub(crate) stderr: String,
}

impl Outcome {
    /// The error for a command that should have succeeded and did not.
    pub(crate) fn failed(self, label: String) -> BackendError {
        BackendError::Failed { program: label, status: self.status, stderr: self.stderr }
    }
}

/// Runs `inv` to completion or kills it at its limit.
///
/// The child leads a new process group, so a kill at the limit also reaches whatever it
/// started (`sh -c "a | b"`, a `sleep` in a script). A command that escapes the group on
/// purpose (`setsid`) escapes the kill too.
pub(crate) fn run(inv: Invocation) -> Result<Outcome, BackendError> {
    let Invocation { label, program, args, env, stdin, limit } = inv;
    let mut child = Command::new(&program)
        .args(&args)
        .env_clear()
        .envs(env)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| BackendError::Spawn { program: label.clone(), source })?;
    let deadline = Instant::now() + limit;

    // Feed stdin from a thread: a command that never reads it must not block us. A command
    // may ignore its input, so a write error (broken pipe) is not a failure.
    if let Some(mut pipe) = child.stdin.take() {
        let spawned = thread::Builder::new().name("script-stdin".into()).spawn(move || {
            let _ignored = pipe.write_all(&stdin);
        });
        if let Err(source) = spawned {
            kill_group(&mut child);
            return Err(BackendError::Io { program: label, source });
        }
    }

    let kept = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    if let Some(mut pipe) = child.stderr.take() {
        let kept = Arc::clone(&kept);
        let spawned = thread::Builder::new().name("script-stderr".into()).spawn(move || {
            let mut chunk = [0u8; 1024];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                if let Ok(mut buf) = kept.lock() {
                    let room = STDERR_KEEP.saturating_sub(buf.len());
                    buf.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
            let _receiver_may_be_gone = done_tx.send(());
        });
        if let Err(source) = spawned {
            kill_group(&mut child);
            return Err(BackendError::Io { program: label, source });
        }
    }

    // Poll rather than wait in another thread: while we have not reaped the child its pid
    // cannot be reused, so the kill at the limit can only ever hit our own process group.
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                kill_group(&mut child);
                return Err(BackendError::Io { program: label, source });
            }
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(&mut child);
            let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
            return Err(BackendError::Timeout { program: label, limit_ms });
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL);
    };

    let stderr = if status.success() {
        String::new()
    } else {
        // Normally stderr is at EOF once the command is gone; a leftover background child
        // holding it open costs at most the rest of the time limit.
        let _eof_or_limit = done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        let bytes = kept.lock().map(|b| b.clone()).unwrap_or_default();
        summarize(&bytes)
    };
    Ok(Outcome { status, stderr })
}

/// SIGKILLs the child's process group (and the child itself, should it have left the group),
/// then reaps the child.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions. The child is not reaped yet, so
        // `pid` is still its id and the id of the process group it leads (process_group(0)).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _already_dead = child.kill();
    let _reaped = child.wait();
}

/// The first non-empty lines of `bytes`, printable and bounded, for an error message.
pub(crate) fn summarize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>())
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .take(SUMMARY_LINES)
        .collect();
    if lines.is_empty() {
        return "no output on stderr".to_owned();
    }
    let joined = lines.join(" / ");
    if joined.chars().count() > SUMMARY_CHARS {
        let mut cut: String = joined.chars().take(SUMMARY_CHARS).collect();
        cut.push_str("...");
        cut
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_bounded_and_printable() {
        assert_eq!(summarize(b""), "no output on stderr");
        assert_eq!(summarize(b"\n  \nboom\n"), "boom");
        assert_eq!(summarize(b"a\nb\nc\nd\n"), "a / b / c");
        assert_eq!(summarize(b"bad\x1b[31m red"), "bad [31m red");
        let long = "x".repeat(1000);
        let s = summarize(long.as_bytes());
        assert_eq!(s.chars().count(), SUMMARY_CHARS + 3);
        assert_eq!(summarize(b"caf\xc3\xa9 \xff"), "caf\u{e9} \u{fffd}");
    }
}

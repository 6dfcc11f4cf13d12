//! Running a helper program: the one way every backend and the daemon start a process.
//!
//! A firewall change that forks (`iptables-restore`, `ipset`, `nft -f`, an admin's script, a
//! command message) must never hang the single thread that changes the firewall, never leave
//! processes behind and never let a chatty program grow our memory. [`run`] gives every caller
//! the same guarantees:
//!
//! - **argv only**: the program is executed directly, never through a shell (a caller that
//!   wants one, such as fwknop's command messages, names `/bin/sh` itself);
//! - **explicit environment**: the caller chooses between the daemon's environment plus some
//!   variables and exactly the variables it lists ([`Environment`]);
//! - working directory `/`, stdin fed from a thread (so a program that never reads it cannot
//!   block us), stdout discarded or captured up to a bound ([`STDOUT_MAX`] by default),
//!   stderr kept up to [`STDERR_KEEP`] bytes and summarised for errors ([`summarize`]);
//! - **own process group and a hard time limit**: the program leads a new process group; at
//!   the limit the whole group gets SIGKILL, so `sh -c 'a | b'` and whatever it put in the
//!   background die too. Something that leaves the group on purpose (`setsid`) escapes.
//!
//! The child is watched by polling `try_wait` with a short backoff (1 ms doubling to 20 ms),
//! never by a `wait` in another thread: until we reap the child, its pid (which is also the
//! process group id) cannot be reused, so the kill at the limit can only hit our own group.
//! Polling wakes early when an output pipe closes, which is when a program normally exits.

use std::ffi::OsStr;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::{BackendError, CommandFailure};

/// How much of a program's stderr is kept for its error message; the rest is read and dropped,
/// so a chatty program never blocks on a full pipe and never grows our memory.
pub const STDERR_KEEP: usize = 4096;

/// The default bound on captured stdout (256 MiB): far above what `iptables-save`, `ipset save`
/// or `nft -j list` print for the largest rule sets a daemon holds, and still a bound. A
/// program that prints more is killed and the run fails with [`BackendError::Parse`]: its
/// output would be cut, and a cut rule listing must never be read as the whole.
pub const STDOUT_MAX: usize = 256 << 20;

/// `PATH` for programs run with a cleared environment, unless the caller sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// At most this many stderr lines go into an error...
const SUMMARY_LINES: usize = 3;
/// ...and at most this many characters.
const SUMMARY_CHARS: usize = 400;
/// The first pause between two looks at a running child; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(1);
/// The longest pause between two looks at a running child.
const MAX_POLL: Duration = Duration::from_millis(20);

/// Where a program's environment comes from. The caller always decides: a backend that runs
/// admin-written scripts must not hand them the daemon's environment, while the firewall
/// tools only need a fixed locale on top of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Environment {
    /// The daemon's environment, with these variables set (or replaced) on top.
    Inherit(Vec<(String, String)>),
    /// Exactly these variables; nothing is inherited (add `PATH`, e.g. [`DEFAULT_PATH`], if the
    /// program looks anything up).
    Clear(Vec<(String, String)>),
}

/// One program to run: what, how, with what input and for how long. Built with
/// [`Invocation::new`] and the chained setters, then handed to [`run`].
#[derive(Clone, Debug)]
pub struct Invocation {
    label: String,
    prefix: Vec<String>,
    program: String,
    args: Vec<String>,
    env: Environment,
    stdin: Vec<u8>,
    stdout: Option<usize>,
    limit: Duration,
    identity: Option<(u32, u32)>,
}

impl Invocation {
    /// `program` (a path, or a name looked up in `PATH`) with no arguments, no input, stdout
    /// discarded, the daemon's environment and a time limit. Errors name it by `program`.
    pub fn new(program: impl Into<String>, limit: Duration) -> Self {
        let program = program.into();
        Self {
            label: program.clone(),
            prefix: Vec::new(),
            program,
            args: Vec::new(),
            env: Environment::Inherit(Vec::new()),
            stdin: Vec::new(),
            stdout: None,
            limit,
            identity: None,
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the program behind a fixed prefix: `prefix... program args...` (tests run the
    /// firewall tools as `ip netns exec NS program`). The prefix must exec the program in the
    /// same process, as `ip netns exec` and `env` do, or the limit only reaches the prefix's
    /// group.
    pub fn prefix(mut self, prefix: &[String]) -> Self {
        self.prefix = prefix.to_vec();
        self
    }

    /// The environment (default: the daemon's, unchanged).
    pub fn env(mut self, env: Environment) -> Self {
        self.env = env;
        self
    }

    /// Written to the program's stdin, which is then closed. Empty (the default) means stdin
    /// is `/dev/null`.
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = input.into();
        self
    }

    /// Keeps stdout, up to [`STDOUT_MAX`] bytes (by default it goes to `/dev/null`).
    pub fn capture_stdout(self) -> Self {
        self.capture_stdout_max(STDOUT_MAX)
    }

    /// Keeps stdout, up to `max` bytes; more fails the run (see [`STDOUT_MAX`]).
    pub fn capture_stdout_max(mut self, max: usize) -> Self {
        self.stdout = Some(max);
        self
    }

    /// Runs the program as user `uid` with group `gid` and no supplementary groups (the child
    /// calls `setgid`, `setgroups` and `setuid` before it executes the program; the daemon
    /// needs `CAP_SETUID` and `CAP_SETGID` for that, and `CAP_KILL` to kill it at the limit).
    /// By default it runs as the daemon.
    pub fn run_as(mut self, uid: u32, gid: u32) -> Self {
        self.identity = Some((uid, gid));
        self
    }

    /// What errors call the program (default: the program as given), e.g. "open command
    /// /usr/local/sbin/x for tcp/22".
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }
}

/// How a program that ran to its end ended.
#[derive(Debug)]
pub struct Outcome {
    /// Its exit status (success or not: [`Outcome::success`] turns a failure into an error).
    pub status: ExitStatus,
    /// Its stdout, when captured (empty otherwise).
    pub stdout: Vec<u8>,
    /// The first line(s) of its stderr ([`summarize`]), read only when it failed.
    pub stderr: String,
    label: String,
}

impl Outcome {
    /// The name errors use for the program.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The error for a program that should have succeeded and did not.
    pub fn failed(self) -> BackendError {
        BackendError::command(self.label, CommandFailure::Exit { status: self.status, stderr: self.stderr })
    }

    /// `self` if the program exited with 0, [`BackendError::Failed`] with its stderr otherwise.
    pub fn success(self) -> Result<Self, BackendError> {
        if self.status.success() { Ok(self) } else { Err(self.failed()) }
    }

    /// The captured stdout as text; output that is not UTF-8 is [`BackendError::Parse`].
    pub fn stdout_text(self) -> Result<String, BackendError> {
        let label = self.label;
        String::from_utf8(self.stdout)
            .map_err(|_| BackendError::command(label, CommandFailure::Output("output is not UTF-8".into())))
    }
}

/// A `Command` for `argv` (program first) that leads its own process group, runs in `/` and
/// gets the environment `env`; stdio is left to the caller. For long-lived helpers that talk
/// over pipes (nft's `-i` session), which [`run`] does not cover; everything else uses [`run`].
///
/// # Panics
///
/// If `argv` is empty.
pub fn command<S: AsRef<OsStr>>(argv: &[S], env: &Environment) -> Command {
    let (program, args) = argv.split_first().expect("a program to run");
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir("/").process_group(0);
    match env {
        Environment::Inherit(vars) => {
            cmd.envs(vars.iter().map(|(k, v)| (k, v)));
        }
        Environment::Clear(vars) => {
            cmd.env_clear().envs(vars.iter().map(|(k, v)| (k, v)));
        }
    }
    cmd
}

/// What the output threads report to [`run`].
enum Event {
    /// stdout reached EOF: everything it printed, or the read error.
    Stdout(std::io::Result<Vec<u8>>),
    /// stdout went past its bound; the reader stopped.
    StdoutOverflow,
    /// stderr reached EOF (what it printed is in the shared buffer).
    StderrDone,
}

/// Runs `inv` to its end, or kills it (with its whole process group) at its limit.
///
/// Returns the [`Outcome`] whatever the exit status (some callers give meaning to exit codes;
/// [`Outcome::success`] requires 0). Errors: [`BackendError::Spawn`] when the program cannot
/// be started, [`BackendError::Timeout`] at the limit, [`BackendError::Parse`] when stdout
/// exceeds its bound, [`BackendError::Io`] when a pipe or thread fails. Once the program has
/// exited successfully, `run` returns without waiting for stderr: a background child that
/// keeps it open does not hold us up. With stdout captured, `run` waits (within the limit) for
/// stdout to close, since the output is not complete before.
pub fn run(inv: Invocation) -> Result<Outcome, BackendError> {
    let Invocation { label, prefix, program, args, env, stdin, stdout: capture, limit, identity } = inv;
    let argv: Vec<&str> = prefix
        .iter()
        .map(String::as_str)
        .chain([program.as_str()])
        .chain(args.iter().map(String::as_str))
        .collect();
    let mut cmd = command(&argv, &env);
    if let Some((uid, gid)) = identity {
        // std sets the group, clears the supplementary groups (when it sets a user and no
        // explicit groups), then sets the user, in the child before exec.
        cmd.gid(gid).uid(uid);
    }
    let mut child = cmd
        .stdin(if stdin.is_empty() { Stdio::null() } else { Stdio::piped() })
        .stdout(if capture.is_some() { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BackendError::command(label.clone(), CommandFailure::Spawn(source)))?;
    let deadline = Instant::now() + limit;
    let io_error = |child: &mut Child, label: String, source| {
        kill_group(child);
        BackendError::command(label, CommandFailure::Io(source))
    };

    // Feed stdin from a thread: a program that never reads it must not block us. A program may
    // ignore its input, so a write error (broken pipe) is not a failure: its exit status is.
    if let Some(mut pipe) = child.stdin.take() {
        let spawned = thread::Builder::new().name("run-stdin".into()).spawn(move || {
            let _ignored = pipe.write_all(&stdin);
        });
        if let Err(source) = spawned {
            return Err(io_error(&mut child, label, source));
        }
    }

    let (events, rx) = mpsc::channel::<Event>();
    let kept = Arc::new(Mutex::new(Vec::new()));
    if let Some(pipe) = child.stderr.take() {
        let (kept, events) = (Arc::clone(&kept), events.clone());
        let spawned = thread::Builder::new().name("run-stderr".into()).spawn(move || {
            drain_stderr(pipe, &kept);
            let _receiver_may_be_gone = events.send(Event::StderrDone);
        });
        if let Err(source) = spawned {
            return Err(io_error(&mut child, label, source));
        }
    }
    let mut stdout = match (capture, child.stdout.take()) {
        (Some(max), Some(pipe)) => {
            let events = events.clone();
            let spawned = thread::Builder::new().name("run-stdout".into()).spawn(move || {
                let _receiver_may_be_gone = events.send(read_bounded(pipe, max));
            });
            if let Err(source) = spawned {
                return Err(io_error(&mut child, label, source));
            }
            None
        }
        _ => Some(Vec::new()),
    };
    drop(events);

    let mut stderr_done = false;
    let mut pause = FIRST_POLL;
    let status = loop {
        // With stdout captured the child is not reaped before its stdout closed: a background
        // child still writing there must be killable at the limit through the group id, which
        // only stays ours while the child is unreaped.
        if stdout.is_some() {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(source) => return Err(io_error(&mut child, label, source)),
            }
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(&mut child);
            let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
            return Err(BackendError::command(label, CommandFailure::Timeout { limit_ms }));
        }
        let wait = pause.min(deadline - now);
        pause = (pause * 2).min(MAX_POLL);
        match rx.recv_timeout(wait) {
            Ok(Event::Stdout(Ok(bytes))) => {
                stdout = Some(bytes);
                pause = FIRST_POLL;
            }
            Ok(Event::Stdout(Err(source))) => return Err(io_error(&mut child, label, source)),
            Ok(Event::StdoutOverflow) => {
                kill_group(&mut child);
                let max = capture.unwrap_or_default();
                return Err(BackendError::command(
                    label,
                    CommandFailure::Output(format!("more than {max} bytes on stdout")),
                ));
            }
            Ok(Event::StderrDone) => {
                stderr_done = true;
                pause = FIRST_POLL;
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Every reader is done: nothing can wake us early any more.
            Err(RecvTimeoutError::Disconnected) => thread::sleep(wait),
        }
    };

    let stderr = if status.success() {
        String::new()
    } else {
        // Normally stderr is at EOF once the program is gone; a leftover background child
        // holding it open costs at most the rest of the time limit.
        while !stderr_done {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Event::StderrDone) => stderr_done = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let bytes = kept.lock().map(|b| b.clone()).unwrap_or_default();
        summarize(&bytes)
    };
    Ok(Outcome { status, stdout: stdout.unwrap_or_default(), stderr, label })
}

/// Reads `pipe` to its end, keeping the first [`STDERR_KEEP`] bytes in `kept`.
fn drain_stderr(mut pipe: impl Read, kept: &Mutex<Vec<u8>>) {
    let mut chunk = [0u8; 1024];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if let Ok(mut buf) = kept.lock() {
                    let room = STDERR_KEEP.saturating_sub(buf.len());
                    buf.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Reads `pipe` to its end, or stops once it gave more than `max` bytes.
fn read_bounded(pipe: impl Read, max: usize) -> Event {
    let mut buf = Vec::new();
    let bound = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    match pipe.take(bound).read_to_end(&mut buf) {
        Ok(_) if buf.len() > max => Event::StdoutOverflow,
        Ok(_) => Event::Stdout(Ok(buf)),
        Err(e) => Event::Stdout(Err(e)),
    }
}

/// SIGKILLs the child's process group (and the child itself, should it have left the group),
/// then reaps the child. Only for a child not reaped yet.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions. The child is not reaped yet (every
        // caller holds a child `try_wait` has not returned), so `pid` is still its id and the id
        // of the process group it leads (`process_group(0)` in `command`).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _already_dead = child.kill();
    let _reaped = child.wait();
}

/// The first non-empty lines of `bytes`, printable and bounded, for an error message: at most
/// three lines joined by " / ", at most 400 characters, control characters (escape sequences,
/// carriage returns) replaced by spaces so that nothing a program prints can forge a log line.
pub fn summarize(bytes: &[u8]) -> String {
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

    const LIMIT: Duration = Duration::from_secs(20);

    fn sh(script: &str) -> Invocation {
        sh_for(script, LIMIT)
    }

    fn sh_for(script: &str, limit: Duration) -> Invocation {
        Invocation::new("sh", limit).args(["-c", script])
    }

    fn text(inv: Invocation) -> String {
        run(inv.capture_stdout()).unwrap().success().unwrap().stdout_text().unwrap()
    }

    /// Whether `pid` is a live process (a zombie waiting for its reaper counts as gone).
    fn alive(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => false,
            Ok(stat) => {
                let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
                !matches!(state, Some('Z' | 'X'))
            }
        }
    }

    fn gone_within(pid: u32, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if !alive(pid) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn output_comes_back_and_stdin_goes_in() {
        assert_eq!(text(Invocation::new("cat", LIMIT).stdin("*filter\nCOMMIT\n")), "*filter\nCOMMIT\n");
        // Without capture, stdout goes nowhere; without input, stdin is at its end at once.
        let out = run(Invocation::new("cat", LIMIT)).unwrap().success().unwrap();
        assert!(out.stdout.is_empty());
        // The prefix runs first and execs the program.
        let prefixed = Invocation::new("printenv", LIMIT).args(["X"]).prefix(&["env".into(), "X=1".into()]);
        assert_eq!(text(prefixed), "1\n");
        assert_eq!(text(Invocation::new("pwd", LIMIT)), "/\n");
    }

    #[test]
    fn the_environment_is_what_the_caller_chose() {
        let clear = Environment::Clear(vec![("A".into(), "b".into())]);
        assert_eq!(text(Invocation::new("/usr/bin/env", LIMIT).env(clear)), "A=b\n");
        // Inherited: PATH is set wherever tests run.
        let inherit = Environment::Inherit(vec![("LC_ALL".into(), "C".into())]);
        let all = text(Invocation::new("/usr/bin/env", LIMIT).env(inherit));
        assert!(all.lines().any(|l| l == "LC_ALL=C"), "{all}");
        assert!(all.lines().any(|l| l.starts_with("PATH=")), "{all}");
    }

    /// Root runs a program as another user: its ids are those asked for, it has no
    /// supplementary groups left, and at the limit it dies with its group like any other.
    /// Without the privilege the run fails to start instead of running as the daemon.
    #[test]
    fn a_program_runs_as_the_user_and_group_asked_for() {
        let ids = sh("id -u; id -g; id -G").run_as(65534, 65533);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(matches!(run(ids), Err(BackendError::Command { failure: CommandFailure::Spawn(_), .. })));
            return;
        }
        assert_eq!(text(ids), "65534\n65533\n65533\n");
        let dir = tempfile_dir();
        let pid_file = format!("{dir}/pid");
        let slow = sh_for(&format!("sleep 60 & echo $! > {pid_file}; wait"), Duration::from_millis(500))
            .run_as(65534, 65534);
        let err = run(slow).unwrap_err();
        assert!(
            matches!(err, BackendError::Command { failure: CommandFailure::Timeout { .. }, .. }),
            "{err}"
        );
        let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        assert!(gone_within(pid, LIMIT), "the background child of another user survived");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A directory every user may write to (the child runs as nobody), removed by the caller.
    fn tempfile_dir() -> String {
        let dir = std::env::temp_dir().join(format!("spa-process-run-as-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        dir.to_string_lossy().into_owned()
    }

    #[test]
    fn failure_carries_a_short_stderr() {
        let out =
            run(sh("echo first >&2; echo second >&2; echo third >&2; echo fourth >&2; exit 3")).unwrap();
        assert_eq!(out.status.code(), Some(3));
        let err = out.success().unwrap_err();
        assert_eq!(crate::error_chain(&err), "sh failed: exit status: 3: first / second / third");
        // A flood on stderr is read to its end (no blocked child) and kept short.
        let out = run(sh("head -c 1000000 /dev/zero | tr '\\0' x >&2; exit 1")).unwrap();
        assert_eq!(out.stderr.chars().count(), SUMMARY_CHARS + 3);
        // Success does not read stderr at all.
        assert_eq!(run(sh("echo noise >&2")).unwrap().stderr, "");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = run(Invocation::new("/nonexistent/iptables", LIMIT)).unwrap_err();
        assert!(
            matches!(&err, BackendError::Command { program, failure: CommandFailure::Spawn(_) } if program == "/nonexistent/iptables"),
            "{err}"
        );
    }

    #[test]
    fn a_hanging_program_and_its_children_are_killed_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; sleep 30", pid_file.display());
        let err = run(sh_for(&script, Duration::from_millis(500)).label("hang")).unwrap_err();
        assert!(
            matches!(err, BackendError::Command { failure: CommandFailure::Timeout { limit_ms: 500 }, .. }),
            "{err}"
        );
        assert_eq!(crate::error_chain(&err), "hang failed: ran longer than 500 ms and was killed");
        let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        assert!(gone_within(pid, Duration::from_secs(10)), "the background child {pid} survived");
    }

    #[test]
    fn a_child_holding_captured_stdout_is_killed_at_the_limit() {
        // The program exits at once, but its background child keeps stdout open: the output
        // is not complete, so this is a timeout, and the child dies with its group.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}", pid_file.display());
        let inv = sh_for(&script, Duration::from_millis(500)).capture_stdout();
        assert!(matches!(
            run(inv),
            Err(BackendError::Command { failure: CommandFailure::Timeout { .. }, .. })
        ));
        let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        assert!(gone_within(pid, Duration::from_secs(10)), "the background child {pid} survived");
    }

    #[test]
    fn huge_output_is_bounded_without_deadlock() {
        // 8 MiB in and out at once: the writer and the reader run side by side.
        let input = vec![b'x'; 8 << 20];
        let out = run(Invocation::new("cat", LIMIT).stdin(input.clone()).capture_stdout()).unwrap();
        assert_eq!(out.stdout, input);
        // More than the bound: the program is stopped and the run fails; nothing is cut silently.
        let inv =
            Invocation::new("head", LIMIT).args(["-c", "10000000", "/dev/zero"]).capture_stdout_max(1 << 20);
        let err = run(inv).unwrap_err();
        assert_eq!(
            crate::error_chain(&err),
            "head failed: unexpected output: more than 1048576 bytes on stdout"
        );
        // An endless writer too, long before the time limit.
        let err = run(Invocation::new("yes", LIMIT).capture_stdout_max(1 << 20)).unwrap_err();
        assert!(matches!(err, BackendError::Command { failure: CommandFailure::Output(_), .. }), "{err}");
    }

    #[test]
    fn output_that_is_not_text_is_a_parse_error() {
        let err = text_err(sh("printf '\\377'"));
        assert_eq!(crate::error_chain(&err), "sh failed: unexpected output: output is not UTF-8");
    }

    fn text_err(inv: Invocation) -> BackendError {
        run(inv.capture_stdout()).unwrap().stdout_text().unwrap_err()
    }

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

/// One firewall tool that a backend runs again and again (`pfctl`, `ipfw`): its program,
/// an optional fixed prefix (a recording fake in tests), its time limit, and a count of the
/// processes started, so each such backend does not write its own wrapper around [`run`].
#[derive(Debug)]
pub struct Tool {
    program: String,
    prefix: Vec<String>,
    label: &'static str,
    limit: Duration,
    execs: u64,
}

impl Tool {
    /// A tool that starts `prefix... program args...`, named `label` in errors, killed with
    /// its process group after `limit`.
    pub fn new(program: String, prefix: Vec<String>, label: &'static str, limit: Duration) -> Self {
        Self { program, prefix, label, limit, execs: 0 }
    }

    /// Processes started so far.
    pub fn execs(&self) -> u64 {
        self.execs
    }

    /// Runs the tool with `args` and `stdin`; returns stdout, or an error with the start of
    /// stderr. Messages and listings come in one fixed language (`LC_ALL=C`): callers parse
    /// the listings.
    pub fn run(&mut self, args: &[String], stdin: &str) -> Result<String, BackendError> {
        self.execs += 1;
        let inv = Invocation::new(self.program.clone(), self.limit)
            .label(self.label)
            .prefix(&self.prefix)
            .args(args.iter().cloned())
            .env(Environment::Inherit(vec![("LC_ALL".into(), "C".into())]))
            .stdin(stdin)
            .capture_stdout();
        run(inv)?.success()?.stdout_text()
    }
}

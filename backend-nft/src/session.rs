//! Talking to nft: a long-lived `nft -i` for the grant path, one-shot `nft -f -` / `nft -j list`
//! for the rare whole-table operations.
//!
//! `nft -i` (checked on nft 1.0.6) reads commands from a pipe, runs each line as one
//! transaction, prints nothing on success and prints errors (`Error: ...`, the line, a caret
//! line) on stderr, unbuffered. To know when a line is done and whether it failed, we send a
//! sentinel line after it that is always a syntax error (`nf_sync_<n>`): nft parses it without
//! touching the kernel and echoes it in its error. Everything read before the sentinel's error
//! belongs to the command; any `Error:` there means it failed. stdout and stderr share one
//! pipe, so the order is the order nft wrote in. A reader thread blocks on that pipe, so an idle
//! session costs no CPU.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant};

use spa_backends::process::{self, Environment, Invocation};
use spa_backends::{BackendError, CommandFailure};

/// How long a one-shot `nft -f -` or `nft -j list` may run before it is killed. These load or
/// list the whole table (prepare, reconcile, teardown), which with many thousands of set
/// elements takes far longer than one grant line (`command_timeout_ms`), yet must not hang
/// the worker forever.
pub const ONE_SHOT_LIMIT: Duration = Duration::from_secs(60);

/// How to start nft: the program and any prefix (tests: `ip netns exec NS nft`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    argv: Vec<String>,
    /// The limit of one-shot runs ([`ONE_SHOT_LIMIT`]; shorter in tests).
    limit: Duration,
}

impl Program {
    /// `argv[0]` is run with the rest, then nft's own arguments.
    pub fn new(argv: Vec<String>) -> Self {
        Self { argv, limit: ONE_SHOT_LIMIT }
    }

    /// `argv` then `args`, in its own process group, in `/`, with the daemon's environment.
    fn command(&self, args: &[&str]) -> Command {
        let argv: Vec<&str> = self.argv.iter().map(String::as_str).chain(args.iter().copied()).collect();
        process::command(&argv, &Environment::Inherit(Vec::new()))
    }

    /// The name used in errors.
    pub fn name(&self) -> String {
        self.argv.last().cloned().unwrap_or_default()
    }

    /// Runs `nft <args>` once with `stdin` as input, killed (with its process group) after
    /// [`ONE_SHOT_LIMIT`]; returns stdout (at most [`process::STDOUT_MAX`] bytes), or the
    /// failure with the start of stderr.
    pub fn run_once(&self, args: &[&str], stdin: &str) -> Result<String, BackendError> {
        let Some((program, rest)) = self.argv.split_first() else {
            return Err(BackendError::Invalid("empty nft program argv".into()));
        };
        let inv = Invocation::new(program.as_str(), self.limit)
            .label(self.name())
            .args(rest.iter().map(String::as_str).chain(args.iter().copied()))
            .stdin(stdin)
            .capture_stdout();
        process::run(inv)?.success()?.stdout_text()
    }
}

/// The first few lines of an error text (nft repeats the whole command line in its errors).
fn first_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(6).collect();
    let joined = lines.join(" | ");
    if joined.len() > 600 {
        let mut end = 600;
        while !joined.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &joined[..end])
    } else {
        joined
    }
}

/// A running `nft -i`.
#[derive(Debug)]
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seq: u64,
    program: String,
}

impl Session {
    /// Starts `nft -i` with stdout and stderr on one pipe read by a thread.
    pub fn start(program: &Program) -> Result<Self, BackendError> {
        let name = program.name();
        let io_err = |source| BackendError::command(name.clone(), CommandFailure::Io(source));
        let (reader, writer) = std::io::pipe().map_err(io_err)?;
        let writer2 = writer.try_clone().map_err(io_err)?;
        let mut cmd = program.command(&["-i"]);
        cmd.stdin(Stdio::piped()).stdout(writer).stderr(writer2);
        let mut child = cmd
            .spawn()
            .map_err(|source| BackendError::command(name.clone(), CommandFailure::Spawn(source)))?;
        // Drop our copies of the write end, so the reader sees EOF when nft exits.
        drop(cmd);
        let Some(stdin) = child.stdin.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io_err(std::io::Error::other("no stdin pipe")));
        };
        let (tx, rx) = channel();
        thread::Builder::new()
            .name("nft-reader".into())
            .spawn(move || {
                let mut r = BufReader::new(reader);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.by_ref().read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf).trim_end_matches('\n').to_owned();
                            if tx.send(line).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(io_err)?;
        Ok(Self { child, stdin, lines: rx, seq: 0, program: name })
    }

    /// How many lines this process has run.
    pub fn commands(&self) -> u64 {
        self.seq
    }

    /// Runs one line (one transaction) and waits for its verdict.
    pub fn run(&mut self, line: &str, limit: Duration) -> Result<(), BackendError> {
        debug_assert!(!line.contains('\n'));
        self.seq += 1;
        let sentinel = format!("nf_sync_{}", self.seq);
        let msg = format!("{line}\n{sentinel}\n");
        self.stdin
            .write_all(msg.as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|source| BackendError::command(self.program.clone(), CommandFailure::Io(source)))?;
        let deadline = Instant::now() + limit;
        let mut got: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(BackendError::command(
                        self.program.clone(),
                        CommandFailure::Timeout {
                            limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
                        },
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map_err(|source| {
                        BackendError::command(self.program.clone(), CommandFailure::Io(source))
                    })?;
                    let detail = format!("nft exited ({status}): {}", first_lines(&got.join("\n")));
                    return Err(BackendError::command(
                        self.program.clone(),
                        CommandFailure::Io(std::io::Error::new(std::io::ErrorKind::BrokenPipe, detail)),
                    ));
                }
            };
            if l == sentinel {
                break;
            }
            // The previous sentinel's caret line (`   ^`) arrives after its echo; skip it here
            // rather than wait for it, so a version that prints none cannot stall us.
            if got.is_empty() && is_marker(&l) {
                continue;
            }
            got.push(l);
        }
        // The sentinel's own "Error: syntax error ..." line is the last one collected.
        if got.last().is_some_and(|l| l.starts_with("Error: syntax error")) {
            got.pop();
        }
        if got.iter().any(|l| l.starts_with("Error:")) {
            return Err(BackendError::command(
                self.program.clone(),
                CommandFailure::Rejected(first_lines(&got.join("\n"))),
            ));
        }
        Ok(())
    }
}

/// A line nft prints under a command to point at the error (`   ^^^~~~`).
fn is_marker(line: &str) -> bool {
    line.contains(['^', '~']) && line.chars().all(|c| matches!(c, ' ' | '\t' | '^' | '~'))
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Program {
        Program::new(["sh", "-c", script, "nft"].map(String::from).to_vec())
    }

    #[test]
    fn one_shot_runs_feed_stdin_and_return_stdout_or_the_error() {
        // The fake's `$@` is nft's own arguments.
        let echo = sh("echo \"$@\"; cat");
        assert_eq!(echo.run_once(&["-f", "-"], "table inet spa\n").unwrap(), "-f -\ntable inet spa\n");
        let fail = sh("echo 'Error: No such file or directory' >&2; echo 'list table inet spa' >&2; exit 1");
        let err = fail.run_once(&["-j", "list"], "").unwrap_err();
        assert_eq!(
            spa_backends::error_chain(&err),
            "nft failed: exit status: 1: Error: No such file or directory / list table inet spa"
        );
        let missing = Program::new(vec!["/nonexistent/nft".into()]);
        assert!(matches!(
            missing.run_once(&[], ""),
            Err(BackendError::Command { failure: CommandFailure::Spawn(_), .. })
        ));
        assert!(matches!(Program::new(Vec::new()).run_once(&[], ""), Err(BackendError::Invalid(_))));
    }

    #[test]
    fn a_hung_one_shot_run_is_killed_at_its_limit() {
        let mut hung = sh("sleep 30");
        hung.limit = Duration::from_millis(300);
        let err = hung.run_once(&["-f", "-"], "flush ruleset\n").unwrap_err();
        assert!(
            matches!(err, BackendError::Command { failure: CommandFailure::Timeout { limit_ms: 300 }, .. }),
            "{err}"
        );
    }
}

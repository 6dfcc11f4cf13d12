//! Running the iptables and ipset binaries: argv only (never a shell), input on stdin, a time
//! limit, and a count of every process started (the cost fwknop pays five times per rule).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use spa_backends::BackendError;

/// How long one iptables or ipset run may take before it is killed. `-w` waits for the
/// xtables lock for at most [`LOCK_WAIT_SECS`] inside that.
const LIMIT: Duration = Duration::from_secs(20);

/// Seconds `iptables-restore -w` waits for another iptables user's lock.
pub(crate) const LOCK_WAIT_SECS: &str = "10";

/// Starts programs, optionally behind a fixed prefix (tests run everything through
/// `ip netns exec <ns>`), and counts them.
#[derive(Debug)]
pub(crate) struct Runner {
    prefix: Vec<String>,
    execs: u64,
    limit: Duration,
}

impl Runner {
    /// A runner that starts `prefix... program args...`.
    pub(crate) fn new(prefix: Vec<String>) -> Self {
        Self { prefix, execs: 0, limit: LIMIT }
    }

    /// Processes started so far (each counts once, the prefix not separately).
    pub(crate) fn execs(&self) -> u64 {
        self.execs
    }

    /// Runs `program args` with `stdin` as input; returns stdout, or an error with stderr.
    pub(crate) fn run(&mut self, program: &str, args: &[&str], stdin: &str) -> Result<String, BackendError> {
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // iptables prints localised messages otherwise; we parse some of its output.
        cmd.env("LC_ALL", "C");
        self.execs += 1;
        let mut child =
            cmd.spawn().map_err(|source| BackendError::Spawn { program: program.to_owned(), source })?;
        let io = |source| BackendError::Io { program: program.to_owned(), source };
        let (Some(mut child_in), Some(out), Some(err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io(std::io::Error::other("missing pipe")));
        };
        // Writer and readers on their own threads, so neither a large output nor a child that
        // stops reading can block us past the limit. The readers report when the child closes
        // its output, which is when it exits; then `wait` returns at once, with no polling.
        let input = stdin.as_bytes().to_vec();
        let writer = thread::spawn(move || child_in.write_all(&input));
        let (tx, rx) = mpsc::channel();
        for (is_err, mut pipe) in [(false, Box::new(out) as Box<dyn Read + Send>), (true, Box::new(err))] {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut buf = Vec::new();
                let r = pipe.read_to_end(&mut buf).map(|_| buf);
                let _ = tx.send((is_err, r));
            });
        }
        drop(tx);
        let deadline = Instant::now() + self.limit;
        let (mut stdout, mut stderr) = (None, None);
        while stdout.is_none() || stderr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((false, r)) => stdout = Some(r.map_err(io)?),
                Ok((true, r)) => stderr = Some(r.map_err(io)?),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BackendError::Timeout {
                        program: program.to_owned(),
                        limit_ms: u64::try_from(self.limit.as_millis()).unwrap_or(u64::MAX),
                    });
                }
            }
        }
        let status = child.wait().map_err(io)?;
        let written = writer.join().unwrap_or_else(|_| Err(std::io::Error::other("writer thread panicked")));
        let (stdout, stderr) = (stdout.unwrap_or_default(), stderr.unwrap_or_default());
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            let short: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).take(3).collect();
            return Err(BackendError::Failed {
                program: program.to_owned(),
                status,
                stderr: short.join(" / "),
            });
        }
        // A broken pipe on stdin only matters if the program then failed (handled above).
        if let Err(e) = written
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            return Err(io(e));
        }
        String::from_utf8(stdout).map_err(|_| BackendError::Parse {
            program: program.to_owned(),
            detail: "output is not UTF-8".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_goes_in_output_comes_back_and_each_run_counts() {
        let mut r = Runner::new(Vec::new());
        assert_eq!(r.run("cat", &[], "*filter\nCOMMIT\n").unwrap(), "*filter\nCOMMIT\n");
        let mut prefixed = Runner::new(vec!["env".into(), "X=1".into()]);
        assert_eq!(prefixed.run("printenv", &["X"], "").unwrap(), "1\n");
        assert_eq!((r.execs(), prefixed.execs()), (1, 1));
    }

    #[test]
    fn failure_carries_stderr_and_a_missing_program_is_a_spawn_error() {
        let mut r = Runner::new(Vec::new());
        let err = r.run("sh", &["-c", "echo first >&2; echo second >&2; exit 3"], "").unwrap_err();
        assert_eq!(err.to_string(), "sh failed (exit status: 3): first / second");
        assert!(matches!(r.run("/nonexistent/iptables", &[], ""), Err(BackendError::Spawn { .. })));
    }

    #[test]
    fn a_hanging_program_is_killed_at_the_limit() {
        let mut r = Runner::new(Vec::new());
        r.limit = Duration::from_millis(200);
        let err = r.run("sleep", &["30"], "").unwrap_err();
        assert!(matches!(err, BackendError::Timeout { limit_ms: 200, .. }), "{err}");
    }
}

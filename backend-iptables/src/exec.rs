//! Running the iptables and ipset binaries through [`spa_backends::process`] (argv only, own
//! process group, a hard time limit), with a fixed prefix for tests and a count of every
//! process started (the cost fwknop pays five times per rule).

use std::time::Duration;

use spa_backends::BackendError;
use spa_backends::process::{self, Environment, Invocation};

/// How long one iptables or ipset run may take before it is killed (with its process group).
/// `-w` waits for the xtables lock for at most [`LOCK_WAIT_SECS`] inside that.
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

    /// Runs `program args` with `stdin` as input; returns stdout (at most
    /// [`process::STDOUT_MAX`] bytes, enough for `iptables-save` of huge rule sets), or an
    /// error with the start of stderr.
    pub(crate) fn run(&mut self, program: &str, args: &[&str], stdin: &str) -> Result<String, BackendError> {
        self.execs += 1;
        let inv = Invocation::new(program, self.limit)
            .prefix(&self.prefix)
            .args(args.iter().copied())
            // iptables prints localised messages otherwise; we parse some of its output.
            .env(Environment::Inherit(vec![("LC_ALL".into(), "C".into())]))
            .stdin(stdin)
            .capture_stdout();
        process::run(inv)?.success()?.stdout_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::CommandFailure;

    #[test]
    fn input_goes_in_output_comes_back_and_each_run_counts() {
        let mut r = Runner::new(Vec::new());
        assert_eq!(r.run("cat", &[], "*filter\nCOMMIT\n").unwrap(), "*filter\nCOMMIT\n");
        let mut prefixed = Runner::new(vec!["env".into(), "X=1".into()]);
        assert_eq!(prefixed.run("printenv", &["X"], "").unwrap(), "1\n");
        assert_eq!(prefixed.run("printenv", &["LC_ALL"], "").unwrap(), "C\n");
        assert_eq!((r.execs(), prefixed.execs()), (1, 2));
    }

    #[test]
    fn failure_carries_stderr_and_a_missing_program_is_a_spawn_error() {
        let mut r = Runner::new(Vec::new());
        let err = r.run("sh", &["-c", "echo first >&2; echo second >&2; exit 3"], "").unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert_eq!(chain, "sh failed: exit status: 3: first / second");
        assert!(matches!(
            r.run("/nonexistent/iptables", &[], ""),
            Err(BackendError::Command { failure: CommandFailure::Spawn(_), .. })
        ));
        assert_eq!(r.execs(), 2, "a failed start counts too");
    }

    #[test]
    fn a_hanging_program_is_killed_at_the_limit() {
        let mut r = Runner::new(Vec::new());
        r.limit = Duration::from_millis(200);
        let err = r.run("sleep", &["30"], "").unwrap_err();
        assert!(
            matches!(err, BackendError::Command { failure: CommandFailure::Timeout { limit_ms: 200 }, .. }),
            "{err}"
        );
    }
}

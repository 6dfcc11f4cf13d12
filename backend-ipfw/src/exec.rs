//! Running ipfw through [`spa_backends::process`] (argv only, own process group, a hard time
//! limit), with a fixed prefix for tests (the recording fake) and a count of every process
//! started.

use std::time::Duration;

use spa_backends::BackendError;
use spa_backends::process::{self, Environment, Invocation};

/// How long one ipfw run may take before it is killed (with its process group). A batch with
/// many thousand table keys takes well under a second.
const LIMIT: Duration = Duration::from_secs(20);

/// Starts ipfw, optionally behind a fixed prefix, and counts the runs.
#[derive(Debug)]
pub(crate) struct Runner {
    program: String,
    prefix: Vec<String>,
    execs: u64,
}

impl Runner {
    /// A runner that starts `prefix... program args...`.
    pub(crate) fn new(program: String, prefix: Vec<String>) -> Self {
        Self { program, prefix, execs: 0 }
    }

    /// Processes started so far.
    pub(crate) fn execs(&self) -> u64 {
        self.execs
    }

    /// Runs ipfw with `args` and `stdin`; returns stdout, or an error with the start of
    /// stderr.
    pub(crate) fn run(&mut self, args: &[String], stdin: &str) -> Result<String, BackendError> {
        self.execs += 1;
        let inv = Invocation::new(self.program.clone(), LIMIT)
            .label("ipfw")
            .prefix(&self.prefix)
            .args(args.iter().cloned())
            // ipfw's messages and listings in one fixed language: we parse the listings.
            .env(Environment::Inherit(vec![("LC_ALL".into(), "C".into())]))
            .stdin(stdin)
            .capture_stdout();
        process::run(inv)?.success()?.stdout_text()
    }
}

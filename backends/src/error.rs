//! Backend errors, by the way a backend reaches the firewall: a helper program, the kernel
//! (netlink), D-Bus (firewalld), or something else. Each names the step that failed; the
//! cause is its `source`, so the daemon prints the chain once.

use std::process::ExitStatus;

/// Why a backend operation failed. The daemon logs it with the grant and keeps running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend's TOML table is wrong.
    #[error("invalid backend configuration")]
    Config(#[source] toml::de::Error),
    /// A configuration value that parses but cannot work.
    #[error("invalid backend configuration: {0}")]
    Invalid(String),
    /// A helper program (nft, iptables-restore, ipset, pfctl, an admin's script) failed.
    #[error("{program} failed")]
    Command {
        /// The program (or the command's label, for scripts).
        program: String,
        /// How.
        #[source]
        failure: CommandFailure,
    },
    /// The kernel refused a request or its interface failed (nfnetlink).
    #[error("kernel refused {op}")]
    Kernel {
        /// What was asked (`add element allow4 { ... }`, `read the ruleset generation`).
        op: String,
        /// The errno, or what was wrong with the answer.
        #[source]
        source: std::io::Error,
    },
    /// A D-Bus call failed (firewalld).
    #[error("d-bus call {method} failed: {name}: {message}")]
    DBus {
        /// The method called.
        method: String,
        /// The D-Bus error name (`org.fedoraproject.FirewallD1.Exception`, ...).
        name: String,
        /// Its message.
        message: String,
    },
    /// The grant needs something this backend does not do (NAT, IPv6, ...).
    #[error("{0} is not supported by this backend")]
    Unsupported(&'static str),
    /// Anything else (an internal inconsistency, a test's injected failure).
    #[error("{0}")]
    Other(String),
}

/// How a helper program failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandFailure {
    /// It could not be started.
    #[error("could not start")]
    Spawn(#[source] std::io::Error),
    /// Talking to it (its stdin, stdout or stderr) failed.
    #[error("i/o with it failed")]
    Io(#[source] std::io::Error),
    /// It exited unsuccessfully.
    #[error("{status}: {stderr}")]
    Exit {
        /// Its exit status.
        status: ExitStatus,
        /// The first line(s) of what it printed on stderr.
        stderr: String,
    },
    /// A long-lived helper refused one command and kept running (nft's `-i` mode).
    #[error("refused the command: {0}")]
    Rejected(String),
    /// It ran past its time limit and was killed with its process group.
    #[error("ran longer than {limit_ms} ms and was killed")]
    Timeout {
        /// The limit.
        limit_ms: u64,
    },
    /// Its output could not be understood (or was too large to trust).
    #[error("unexpected output: {0}")]
    Output(String),
}

impl BackendError {
    /// A helper program's failure.
    pub fn command(program: impl Into<String>, failure: CommandFailure) -> Self {
        BackendError::Command { program: program.into(), failure }
    }

    /// A kernel request's failure.
    pub fn kernel(op: impl Into<String>, source: std::io::Error) -> Self {
        BackendError::Kernel { op: op.into(), source }
    }

    /// The command failure inside, if this is one (for callers that react to one kind).
    pub fn command_failure(&self) -> Option<&CommandFailure> {
        match self {
            BackendError::Command { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

/// An error and its causes on one line (`a: b: c`): how the daemon and the tools print a
/// backend error once, whole.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

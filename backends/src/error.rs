//! Backend errors: one variant per way a firewall change fails.

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
    /// A helper program could not be started.
    #[error("could not run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Talking to a helper program failed (its stdin or stdout).
    #[error("i/o with {program} failed")]
    Io {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A helper program exited unsuccessfully.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// The first line(s) of what it printed on stderr.
        stderr: String,
    },
    /// A long-lived helper program refused one command and kept running (nft's `-i` mode).
    #[error("{program} rejected the command: {message}")]
    Rejected {
        /// The program.
        program: String,
        /// What it said.
        message: String,
    },
    /// A helper program ran past its time limit and was killed.
    #[error("{program} ran longer than {limit_ms} ms and was killed")]
    Timeout {
        /// The program.
        program: String,
        /// The limit.
        limit_ms: u64,
    },
    /// The firewall's answer could not be understood.
    #[error("unexpected output from {program}: {detail}")]
    Parse {
        /// The program.
        program: String,
        /// What was wrong.
        detail: String,
    },
    /// The grant needs something this backend does not do (NAT, IPv6, ...).
    #[error("{0} is not supported by this backend")]
    Unsupported(&'static str),
    /// Anything else (an internal inconsistency, a test's injected failure).
    #[error("{0}")]
    Other(String),
}

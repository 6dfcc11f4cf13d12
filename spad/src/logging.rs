//! The daemon's log (not the audit trail): where it goes and how it looks.
//!
//! - Under systemd with stderr connected to the journal (`JOURNAL_STREAM` names stderr), the
//!   journal's native protocol: each line with its priority, and the journal's own timestamps.
//! - Otherwise plain lines on stderr, each starting with an RFC 3339 UTC time (the audit
//!   trail's format), with ANSI colours only when stderr is a terminal, so files and pipes
//!   never see escape codes.
//!
//! `SPAD_LOG` chooses what is logged (a `tracing` filter: `info` by default, `debug`,
//! `warn,spad=debug`, ...).

use std::io::IsTerminal as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The variable that holds the log filter.
pub const FILTER_VAR: &str = "SPAD_LOG";

/// RFC 3339 UTC with milliseconds, as in the audit trail.
struct Rfc3339;

impl FormatTime for Rfc3339 {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        w.write_str(&crate::audit::now_rfc3339())
    }
}

/// Whether stderr is the journal stream systemd connected (its device and inode are in
/// `JOURNAL_STREAM`), rather than a terminal, a file or a pipe someone redirected it to.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// The filter from `SPAD_LOG`, `info` when it is unset; a value that does not parse is
/// reported and `info` used.
fn filter() -> EnvFilter {
    match std::env::var(FILTER_VAR) {
        Err(_) => EnvFilter::new("info"),
        Ok(text) => EnvFilter::try_new(&text).unwrap_or_else(|e| {
            eprintln!("spad: {FILTER_VAR}={text:?} is not a log filter ({e}); logging at info");
            EnvFilter::new("info")
        }),
    }
}

/// Installs the daemon's logger (once, at start).
pub fn init() {
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal.with_syslog_identifier("spad".to_owned());
                tracing_subscriber::registry().with(filter()).with(journal).init();
                return;
            }
            Err(e) => eprintln!("spad: cannot reach the journal ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_timer(Rfc3339)
        .with_env_filter(filter())
        .init();
}

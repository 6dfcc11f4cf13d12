//! Whole-system benchmarks of `spad` next to `fwknopd`: the pieces both binaries share.
//!
//! - [`junk`]: SPA-shaped junk (base64 text of typical SPA length), cheap to vary per packet.
//! - [`flood`]: batched UDP sending with `sendmmsg`, at full speed or a set rate.
//! - [`knock`]: valid SPA packets built in-process with `spa_engine::packet::seal`; the same
//!   bytes open `spad` and `fwknopd`.
//! - [`probe`]: open latency, measured by starting a new non-blocking TCP connect every
//!   ~100 µs until one completes, so no SYN retransmit timer hides the real figure.
//! - [`sources`]: one UDP socket that sends each datagram from its own source address
//!   (`IP_PKTINFO`), so fills look like many clients.
//! - [`procstat`]: CPU time (a process and its children) and resident memory from `/proc`.
//! - [`stats`]: medians and percentiles.
//! - [`netns`]: entering a named network namespace from a thread.

pub mod flood;
pub mod junk;
pub mod knock;
pub mod netns;
pub mod probe;
pub mod procstat;
pub mod sources;
pub mod stats;

use std::io;

/// Everything that can fail in the shared pieces; one variant per failing step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The namespace file under `/var/run/netns` cannot be opened.
    #[error("cannot open network namespace {name}")]
    NetnsOpen {
        /// The namespace name.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `setns` refused.
    #[error("cannot enter network namespace {name}")]
    NetnsEnter {
        /// The namespace name.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A socket could not be made or configured.
    #[error("cannot set up a socket")]
    Socket(#[source] io::Error),
    /// Sending failed for a reason other than a full buffer.
    #[error("send failed")]
    Send(#[source] io::Error),
    /// Polling the probe sockets failed.
    #[error("poll failed")]
    Poll(#[source] io::Error),
    /// A `/proc` file cannot be read.
    #[error("cannot read /proc/{pid}/{file}")]
    Proc {
        /// The process.
        pid: u32,
        /// The file under `/proc/<pid>`.
        file: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A process's CPU clock cannot be read.
    #[error("cannot read the cpu clock of process {pid}")]
    CpuClock {
        /// The process.
        pid: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A `/proc` file does not have the expected shape.
    #[error("unexpected format of /proc/{pid}/{file}")]
    ProcFormat {
        /// The process.
        pid: u32,
        /// The file under `/proc/<pid>`.
        file: &'static str,
    },
    /// Junk lengths that make no sense.
    #[error("junk length range {min}..={max} is empty or longer than a datagram")]
    JunkRange {
        /// Shortest.
        min: usize,
        /// Longest.
        max: usize,
    },
    /// The operating system has no randomness to give.
    #[error("no randomness from the operating system")]
    Random,
    /// A packet could not be built.
    #[error("cannot build an SPA packet")]
    Seal(#[source] spa_engine::Error),
    /// A key could not be made.
    #[error("cannot make a key")]
    Key(#[source] spa_engine::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

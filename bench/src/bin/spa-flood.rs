//! `spa-flood`: floods a UDP port with SPA-shaped junk (base64 text, 150–250 characters by
//! default) using batched `sendmmsg`, as fast as this machine allows or at a set rate, for a
//! duration and/or a count, from inside a network namespace or the current one.
//!
//! Prints one JSON line when done (also after SIGINT/SIGTERM): datagrams sent, seconds, rate.
//! Only send to hosts you run yourself (a lab namespace or loopback).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use spa_bench::flood::{self, Spec};
use spa_bench::junk::{Junk, XorShift};

#[derive(Parser)]
#[command(name = "spa-flood", version, about = "Flood a UDP port with SPA-shaped junk (sendmmsg)")]
struct Cli {
    /// Destination address and port, e.g. 10.201.3.1:62201.
    #[arg(long)]
    target: SocketAddr,
    /// Enter this network namespace (a name from `ip netns list`) before sending.
    #[arg(long)]
    netns: Option<String>,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many datagrams.
    #[arg(long)]
    count: Option<u64>,
    /// Datagrams per second; 0 or absent = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Datagrams per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Shortest datagram.
    #[arg(long, default_value_t = 150)]
    min_len: usize,
    /// Longest datagram.
    #[arg(long, default_value_t = 250)]
    max_len: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.duration.is_none() && cli.count.is_none() {
        bail!("give --duration and/or --count (a flood must end by itself)");
    }
    let duration = match cli.duration {
        Some(d) if d.is_finite() && d > 0.0 => Some(Duration::from_secs_f64(d)),
        Some(_) => bail!("--duration must be a positive number of seconds"),
        None => None,
    };
    if let Some(ns) = &cli.netns {
        spa_bench::netns::enter(ns).with_context(|| format!("entering {ns}"))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let mut rng = XorShift::from_os()?;
    let mut junk = Junk::new(1024, cli.min_len, cli.max_len, &mut rng)?;
    let sock = flood::socket(cli.target)?;
    let spec = Spec {
        target: cli.target,
        rate: (cli.rate > 0).then_some(cli.rate),
        count: cli.count,
        duration,
        batch: cli.batch,
    };
    let r = flood::run(&sock, &spec, &stop, |b| junk.fill(b))?;
    println!(
        "{}",
        serde_json::json!({
            "sent": r.sent,
            "seconds": r.elapsed.as_secs_f64(),
            "rate": r.rate().round(),
            "retries": r.retries,
        })
    );
    Ok(())
}

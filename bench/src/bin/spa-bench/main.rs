//! `spa-bench`: measures `spad` (nft backend; socket and capture mode) and Debian's `fwknopd`
//! side by side in a network-namespace lab, with the same keys and the same client, and
//! prints one Markdown table (optionally written to a file).
//!
//! It builds nothing: it runs the release `spad` and `spa-flood` next to its own executable
//! (or the paths given) and the system `fwknopd`. Needs root. Every phase runs in a fresh lab
//! with a fresh daemon; namespaces and processes are removed at the end of each phase, also
//! on errors and on Ctrl-C.

mod daemon;
mod lab;
mod phases;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use spa_bench::knock::Knocker;

use crate::daemon::{Daemon, Kind, Programs};
use crate::lab::BenchLab;

/// The measurements, in run order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub(crate) enum Phase {
    /// Open latency of single knocks.
    Latency,
    /// Knocks while the SPA port is flooded (from the attacker).
    Flood,
    /// Knocks while junk with the client's own address floods the SPA port.
    #[value(name = "selfflood")]
    SelfFlood,
    /// CPU per junk packet and per valid knock; idle CPU.
    Cpu,
    /// Grant apply time with 1k/10k/100k active grants; idle CPU and memory there.
    Scale,
    /// One packet replayed many times.
    Replay,
}

impl Phase {
    const ALL: [Phase; 6] =
        [Phase::Latency, Phase::Flood, Phase::SelfFlood, Phase::Cpu, Phase::Scale, Phase::Replay];
}

/// A flood rate: datagrams per second, or as fast as this machine allows (`max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FloodRate(pub(crate) Option<u64>);

impl FloodRate {
    /// Reads `100`, `1000`, `max`.
    fn parse(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Self(None));
        }
        match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Self(Some(n))),
            _ => Err(format!("{s:?} is neither a positive number of packets per second nor `max`")),
        }
    }

    /// Sorts full speed after every fixed rate.
    pub(crate) fn order(self) -> u64 {
        self.0.unwrap_or(u64::MAX)
    }

    /// For file names: `100`, `max`.
    fn slug(self) -> String {
        self.0.map_or_else(|| "max".to_owned(), |n| n.to_string())
    }
}

/// Command-line names of the daemons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DaemonArg {
    SpadSocket,
    SpadCapture,
    Fwknopd,
}

impl From<DaemonArg> for Kind {
    fn from(d: DaemonArg) -> Kind {
        match d {
            DaemonArg::SpadSocket => Kind::SpadSocket,
            DaemonArg::SpadCapture => Kind::SpadCapture,
            DaemonArg::Fwknopd => Kind::Fwknopd,
        }
    }
}

/// Options (all have defaults that make one complete run).
#[derive(Parser, Clone, Debug)]
#[command(name = "spa-bench", version, about = "spad vs fwknopd, side by side, in a network-namespace lab")]
pub(crate) struct Opts {
    /// Run only these phases (comma-separated).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Phase>,
    /// Measure only these daemons (comma-separated).
    #[arg(long, value_delimiter = ',', value_enum)]
    daemons: Vec<DaemonArg>,
    /// Knocks for the open-latency phase.
    #[arg(long, default_value_t = 50)]
    pub(crate) knocks: usize,
    /// Knocks during the flood.
    #[arg(long, default_value_t = 20)]
    pub(crate) flood_knocks: usize,
    /// Pause between knocks during the flood, milliseconds.
    #[arg(long, default_value_t = 250)]
    pub(crate) flood_spacing_ms: u64,
    /// Knocks while the client's own address floods the SPA port, at each rate.
    #[arg(long, default_value_t = 20)]
    pub(crate) selfflood_knocks: usize,
    /// Junk rates (packets/s, or `max` for full speed) from the client's own address, spad.
    #[arg(long, value_delimiter = ',', value_parser = FloodRate::parse, default_value = "100,1000,max")]
    pub(crate) selfflood_rates: Vec<FloodRate>,
    /// Junk rates from the client's own address, fwknopd (at full speed its 1,000 packets/s
    /// capture loop loses knocks to any flood, which the `flood` phase shows already).
    #[arg(long, value_delimiter = ',', value_parser = FloodRate::parse, default_value = "100,1000")]
    pub(crate) fwknopd_selfflood_rates: Vec<FloodRate>,
    /// Seconds of junk-only flood for the CPU-per-junk figure.
    #[arg(long, default_value_t = 3)]
    pub(crate) junk_secs: u64,
    /// Valid knocks (new addresses) for the CPU-per-valid figure, spad.
    #[arg(long, default_value_t = 2000)]
    pub(crate) valid: usize,
    /// Valid knocks for the CPU-per-valid figure, fwknopd.
    #[arg(long, default_value_t = 200)]
    pub(crate) fwknopd_valid: usize,
    /// Knocks sent ahead of the grants when filling, spad.
    #[arg(long, default_value_t = 256)]
    pub(crate) window: usize,
    /// Knocks sent ahead of the grants when filling, fwknopd (its pcap loop takes 100 per
    /// 100 ms; more would be dropped in its capture buffer).
    #[arg(long, default_value_t = 20)]
    pub(crate) fwknopd_window: usize,
    /// Scale levels (active grants), spad.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub(crate) scale: Vec<usize>,
    /// Time budget for spad's scale fill, seconds; it stops at the level it reached.
    #[arg(long, default_value_t = 240)]
    pub(crate) scale_budget: u64,
    /// Scale levels, fwknopd.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub(crate) fwknopd_scale: Vec<usize>,
    /// Time budget for fwknopd's scale fill, seconds; it stops at the level it reached.
    #[arg(long, default_value_t = 150)]
    pub(crate) fwknopd_scale_budget: u64,
    /// Measured knocks at each scale level.
    #[arg(long, default_value_t = 20)]
    pub(crate) scale_probes: usize,
    /// Also run the scale phase for spad in capture mode (same backend path; off by default).
    #[arg(long)]
    pub(crate) scale_capture: bool,
    /// Idle seconds measured at the top scale level.
    #[arg(long, default_value_t = 10)]
    pub(crate) idle_secs: u64,
    /// Copies of the replayed packet.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) replays: u64,
    /// Replays per second, spad.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) replay_rate: u64,
    /// Replays per second, fwknopd (below its 1,000 packets/s pcap loop, so none are lost).
    #[arg(long, default_value_t = 800)]
    pub(crate) fwknopd_replay_rate: u64,
    /// The spad binary (default: next to this program).
    #[arg(long)]
    spad: Option<PathBuf>,
    /// The spa-flood binary (default: next to this program).
    #[arg(long)]
    flood: Option<PathBuf>,
    /// The fwknopd binary.
    #[arg(long, default_value = "fwknopd")]
    fwknopd: String,
    /// spad's firewall backend: `nft` for real figures (`none` only checks the plumbing).
    #[arg(long, default_value = "nft")]
    spad_backend: String,
    /// Print every measured latency to stderr as it happens.
    #[arg(long, short)]
    pub(crate) verbose: bool,
    /// Keep each daemon's log (stderr) in this directory, named <phase>-<daemon>.log.
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Also write the Markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Opts {
    fn phases(&self) -> Vec<Phase> {
        if self.only.is_empty() { Phase::ALL.to_vec() } else { self.only.clone() }
    }

    fn kinds(&self) -> Vec<Kind> {
        if self.daemons.is_empty() {
            Kind::ALL.to_vec()
        } else {
            self.daemons.iter().map(|&d| d.into()).collect()
        }
    }
}

/// Results of one daemon.
#[derive(Debug, Default)]
pub(crate) struct Results {
    /// Open latency.
    pub(crate) latency: Option<phases::Latency>,
    /// Knocks under flood.
    pub(crate) flood: Option<phases::Flood>,
    /// Knocks while the client's own address is flooded, one entry per rate.
    pub(crate) selfflood: Vec<(FloodRate, phases::Flood)>,
    /// CPU per packet.
    pub(crate) cpu: Option<phases::Cpu>,
    /// Scale.
    pub(crate) scale: Option<phases::Scale>,
    /// Replays.
    pub(crate) replay: Option<phases::Replay>,
    /// Phases that failed, with the error.
    pub(crate) errors: Vec<(Phase, String)>,
}

fn interrupted_flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Fails once SIGINT or SIGTERM has arrived, so every phase unwinds through its guards.
pub(crate) fn check_interrupt() -> Result<()> {
    if interrupted_flag().load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Whether `--verbose` was given.
pub(crate) fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

static VERBOSE: AtomicBool = AtomicBool::new(false);

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("finding this program")?;
    Ok(me.parent().map(|p| p.join(name)).unwrap_or_else(|| PathBuf::from(name)))
}

/// The self-flood phase: a fresh lab and daemon for every rate, so no rate inherits another's
/// per-source budgets; a failed rate is noted and the next one runs.
fn run_selfflood(kind: Kind, opts: &Opts, progs: &Programs, knocker: &Knocker) -> Result<Results> {
    let rates = if kind == Kind::Fwknopd { &opts.fwknopd_selfflood_rates } else { &opts.selfflood_rates };
    let spacing = Duration::from_millis(opts.flood_spacing_ms);
    let mut r = Results::default();
    for &rate in rates {
        check_interrupt()?;
        let label = format!("selfflood-{}", rate.slug());
        let round = || -> Result<phases::Flood> {
            let lab = BenchLab::new(opts.selfflood_knocks + 1)?;
            let mut d = Daemon::start(kind, &label, &lab, progs, knocker)?;
            let from = phases::FloodFrom::client(&lab, rate.0);
            phases::flood(&lab, &mut d, knocker, progs, &from, opts.selfflood_knocks, spacing)
        };
        match round() {
            Ok(f) => r.selfflood.push((rate, f)),
            Err(e) => {
                check_interrupt()?;
                r.errors.push((Phase::SelfFlood, format!("at {}: {e:#}", report::rate_label(rate))));
            }
        }
    }
    Ok(r)
}

fn run_one(phase: Phase, kind: Kind, opts: &Opts, progs: &Programs, knocker: &Knocker) -> Result<Results> {
    let fw = kind == Kind::Fwknopd;
    let probes = match phase {
        // A lab and a daemon for every rate.
        Phase::SelfFlood => return run_selfflood(kind, opts, progs, knocker),
        Phase::Latency => opts.knocks,
        Phase::Flood => opts.flood_knocks,
        Phase::Scale => opts.scale_probes * opts.scale.len().max(opts.fwknopd_scale.len()),
        Phase::Cpu | Phase::Replay => 1,
    } + 1;
    let lab = BenchLab::new(probes)?;
    let label = format!("{phase:?}").to_lowercase();
    let mut d = Daemon::start(kind, &label, &lab, progs, knocker)?;
    let mut r = Results::default();
    match phase {
        Phase::Latency => r.latency = Some(phases::latency(&lab, &mut d, knocker, opts.knocks)?),
        Phase::Flood => {
            let spacing = Duration::from_millis(opts.flood_spacing_ms);
            let from = phases::FloodFrom::attacker(&lab, None);
            r.flood = Some(phases::flood(&lab, &mut d, knocker, progs, &from, opts.flood_knocks, spacing)?);
        }
        // Returned above.
        Phase::SelfFlood => {}
        Phase::Cpu => {
            let (valid, window) =
                if fw { (opts.fwknopd_valid, opts.fwknopd_window) } else { (opts.valid, opts.window) };
            r.cpu = Some(phases::cpu(&lab, &mut d, knocker, progs, opts.junk_secs, valid, window)?);
        }
        Phase::Scale => {
            let (levels, window, budget) = if fw {
                (
                    &opts.fwknopd_scale,
                    opts.fwknopd_window,
                    Some(Duration::from_secs(opts.fwknopd_scale_budget)),
                )
            } else {
                (&opts.scale, opts.window, Some(Duration::from_secs(opts.scale_budget)))
            };
            let spec = phases::ScaleSpec {
                levels,
                probes: opts.scale_probes,
                window,
                budget,
                idle_secs: Duration::from_secs(opts.idle_secs),
            };
            r.scale = Some(phases::scale(&lab, &mut d, knocker, &spec)?);
        }
        Phase::Replay => {
            let rate = if fw { opts.fwknopd_replay_rate } else { opts.replay_rate };
            r.replay = Some(phases::replay(&lab, &mut d, knocker, opts.replays, rate)?);
        }
    }
    Ok(r)
}

fn merge(into: &mut Results, from: Results) {
    into.latency = from.latency.or(into.latency.take());
    into.flood = from.flood.or(into.flood.take());
    into.selfflood.extend(from.selfflood);
    into.cpu = from.cpu.or(into.cpu.take());
    into.scale = from.scale.or(into.scale.take());
    into.replay = from.replay.or(into.replay.take());
    into.errors.extend(from.errors);
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

fn main() -> Result<()> {
    let opts = Opts::parse();
    VERBOSE.store(opts.verbose, Ordering::Relaxed);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("spa-bench needs root (network namespaces, firewalls)");
    }
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted_flag().clone()).context("signal handlers")?;
    }
    // Thousands of connects in flight need descriptors.
    let lim = libc::rlimit { rlim_cur: 65536, rlim_max: 65536 };
    // SAFETY: setrlimit with a valid struct; failure only leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) };

    let progs = Programs {
        spad: match &opts.spad {
            Some(p) => p.clone(),
            None => sibling("spad")?,
        },
        flood: match &opts.flood {
            Some(p) => p.clone(),
            None => sibling("spa-flood")?,
        },
        fwknopd: opts.fwknopd.clone(),
        spad_backend: opts.spad_backend.clone(),
        logs: opts.logs.clone(),
    };
    if let Some(dir) = &opts.logs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let kinds = opts.kinds();
    if kinds.iter().any(|k| k.is_spad()) {
        let out = std::process::Command::new(&progs.spad)
            .arg("backends")
            .output()
            .with_context(|| format!("running {} backends", progs.spad.display()))?;
        let list = String::from_utf8_lossy(&out.stdout);
        if !list.lines().any(|l| l.split_whitespace().next() == Some(progs.spad_backend.as_str())) {
            bail!(
                "{} has no {:?} backend (it lists: {}); build it with that backend enabled",
                progs.spad.display(),
                progs.spad_backend,
                list.lines().filter_map(|l| l.split_whitespace().next()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let knocker = Knocker::generate()?;
    let mut results: BTreeMap<Kind, Results> = BTreeMap::new();
    'all: for phase in opts.phases() {
        for &kind in &kinds {
            if phase == Phase::Scale && kind == Kind::SpadCapture && !opts.scale_capture {
                continue;
            }
            if check_interrupt().is_err() {
                break 'all;
            }
            eprintln!("spa-bench: {phase:?} / {}", kind.name());
            let started = std::time::Instant::now();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_one(phase, kind, &opts, &progs, &knocker)
            }));
            let r = match outcome {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Results { errors: vec![(phase, format!("{e:#}"))], ..Results::default() },
                Err(p) => Results { errors: vec![(phase, panic_text(p.as_ref()))], ..Results::default() },
            };
            for (_, e) in &r.errors {
                eprintln!("spa-bench: {phase:?} / {} failed: {e}", kind.name());
            }
            eprintln!("spa-bench: {phase:?} / {} took {:.1} s", kind.name(), started.elapsed().as_secs_f64());
            merge(results.entry(kind).or_default(), r);
        }
    }
    let md = report::render(&opts, &progs, &kinds, &results);
    println!("{md}");
    if let Some(path) = &opts.out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("spa-bench: wrote {}", path.display());
    }
    check_interrupt()?;
    if results.values().any(|r| !r.errors.is_empty()) {
        bail!("some measurements failed (see the table's notes)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_rates_read_as_the_help_says() {
        assert_eq!(FloodRate::parse("100"), Ok(FloodRate(Some(100))));
        assert_eq!(FloodRate::parse("max"), Ok(FloodRate(None)));
        assert!(FloodRate::parse("0").is_err());
        assert!(FloodRate::parse("fast").is_err());
        let o = Opts::parse_from(["spa-bench", "--only", "selfflood", "--selfflood-rates", "1000,max"]);
        assert_eq!(o.phases(), vec![Phase::SelfFlood]);
        assert_eq!(o.selfflood_rates, vec![FloodRate(Some(1000)), FloodRate(None)]);
        let d = Opts::parse_from(["spa-bench"]);
        assert_eq!(d.selfflood_rates, vec![FloodRate(Some(100)), FloodRate(Some(1000)), FloodRate(None)]);
        assert_eq!(d.fwknopd_selfflood_rates, vec![FloodRate(Some(100)), FloodRate(Some(1000))]);
        assert_eq!(d.selfflood_knocks, 20);
        assert!(d.phases().contains(&Phase::SelfFlood), "a full run includes it");
    }
}

//! The measurements. Each runs against a fresh lab and a fresh daemon (made by the caller), so
//! no phase sees another's grants, replay cache or firewall state.

use std::io::BufRead as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use spa_bench::knock::Knocker;
use spa_bench::probe::Prober;
use spa_bench::procstat;
use spa_bench::sources::SourceSocket;
use spa_bench::stats::Summary;

use crate::daemon::{Counts, Daemon, Kind, Programs};
use crate::lab::{self, BenchLab, PROTECTED_PORT, SPA_PORT, fill_addr, probe_addr, protected, sleep};

/// How long a measured knock may take before it counts as not granted.
fn knock_limit(kind: Kind) -> Duration {
    if kind.is_spad() { Duration::from_secs(3) } else { Duration::from_secs(10) }
}

/// How long a knock under flood may take.
pub(crate) const FLOOD_KNOCK_LIMIT: Duration = Duration::from_secs(2);

/// Where knocks go.
fn spa_target4() -> SocketAddrV4 {
    SocketAddrV4::new(lab::gw4(), SPA_PORT)
}

/// Where knocks go, for `std::net`.
fn spa_target() -> SocketAddr {
    SocketAddr::V4(spa_target4())
}

fn access() -> String {
    format!("tcp/{PROTECTED_PORT}")
}

/// A UDP socket in the client for knocks.
fn knock_socket() -> Result<UdpSocket> {
    UdpSocket::bind("0.0.0.0:0").context("client udp socket")
}

/// One measured knock: checks the port is closed for `addr`, knocks for it, and returns the
/// open latency (`None` when it did not open within the limit).
fn measured_knock(
    sock: &UdpSocket,
    knocker: &Knocker,
    prober: &Prober,
    addr: Ipv4Addr,
    limit: Duration,
) -> Result<Option<Duration>> {
    if prober.open_latency(addr, protected(), Instant::now(), Duration::from_millis(20))?.is_some() {
        bail!("the protected port is open for {addr} before its knock: the firewall does not protect it");
    }
    let pkt = knocker.packet(addr.into(), &access())?;
    let t0 = Instant::now();
    sock.send_to(pkt.as_bytes(), spa_target()).context("sending a knock")?;
    let t = prober.open_latency(addr, protected(), t0, limit)?;
    if crate::verbose() {
        eprintln!(
            "  knock for {addr}: {}",
            t.map_or_else(|| "not opened".to_owned(), |t| format!("{:.3} ms", t.as_secs_f64() * 1e3))
        );
    }
    Ok(t)
}

/// CPU time of the daemon and what it runs, now.
fn cpu_time(d: &Daemon) -> Result<Duration> {
    Ok(procstat::tree_cpu(d.pid())?)
}

/// Waits until the daemon's CPU time stops growing faster than its idle rate (its backlog is
/// drained), at most `max`; returns the CPU time then.
fn settle(d: &Daemon, idle: f64, max: Duration) -> Result<Duration> {
    let step = Duration::from_millis(300);
    let slack = Duration::from_millis(10) + step.mul_f64(2.0 * idle);
    let start = Instant::now();
    let mut last = cpu_time(d)?;
    loop {
        sleep(step)?;
        let now = cpu_time(d)?;
        if now.saturating_sub(last) <= slack || start.elapsed() > max {
            return Ok(now);
        }
        last = now;
    }
}

/// Waits until the daemon's log stops growing (no grant, replay or reject for 1.5 s), at most
/// `max`. fwknopd's capture buffer still holds junk for seconds after a full-speed flood while
/// its CPU use stays low (it sleeps between reads), so [`settle`] alone does not see it; knocks
/// sent before it is worked off would wait behind it and count as lost.
fn drain(d: &mut Daemon, max: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last = d.counts();
    let mut quiet_since = Instant::now();
    while start.elapsed() < max {
        sleep(Duration::from_millis(250))?;
        let now = d.counts();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(1500) {
            break;
        }
    }
    Ok(())
}

/// spad writes suppressed-reject counts once a second, at the next event: one junk packet
/// after a second's pause makes it write them. The daemon leaves such markers out of its counts.
fn flush_counts(d: &mut Daemon, sock: &UdpSocket) -> Result<Counts> {
    if d.kind.is_spad() {
        sleep(Duration::from_millis(1100))?;
        sock.send_to(&[b'A'; 180], spa_target()).context("sending the flush marker")?;
        d.note_marker();
        sleep(Duration::from_millis(200))?;
    } else {
        sleep(Duration::from_millis(300))?;
    }
    Ok(d.counts())
}

/// Idle CPU over `secs`, as a fraction of one core.
fn idle_fraction(d: &Daemon, secs: Duration) -> Result<f64> {
    let c0 = cpu_time(d)?;
    let t0 = Instant::now();
    sleep(secs)?;
    let c1 = cpu_time(d)?;
    Ok((c1 - c0).as_secs_f64() / t0.elapsed().as_secs_f64())
}

/// Open latency over many knocks.
#[derive(Clone, Debug, Default)]
pub(crate) struct Latency {
    /// Latencies of the knocks that opened.
    pub(crate) summary: Summary,
    /// The same without the first knock after the daemon started.
    pub(crate) after_first: Summary,
    /// Knocks sent.
    pub(crate) knocks: usize,
}

/// The summary of the knocks that opened.
fn summary(samples: &[Option<Duration>]) -> Summary {
    Summary::of(&samples.iter().flatten().copied().collect::<Vec<_>>())
}

/// Knocks one by one, each for its own client address.
pub(crate) fn latency(lab: &BenchLab, d: &mut Daemon, knocker: &Knocker, knocks: usize) -> Result<Latency> {
    let limit = knock_limit(d.kind);
    let samples = lab.in_client(|| {
        let sock = knock_socket()?;
        let prober = Prober::default();
        let mut samples = Vec::new();
        for i in 0..knocks {
            crate::check_interrupt()?;
            samples.push(measured_knock(&sock, knocker, &prober, probe_addr(i), limit)?);
            sleep(Duration::from_millis(20))?;
        }
        Ok(samples)
    })?;
    d.check_alive()?;
    Ok(Latency { summary: summary(&samples), after_first: summary(samples.get(1..).unwrap_or(&[])), knocks })
}

/// Where a junk flood comes from, where it goes, and how fast.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FloodFrom<'a> {
    /// The namespace `spa-flood` sends from (its address is the junk's source).
    pub(crate) netns: &'a str,
    /// The gateway's SPA port as seen from there.
    pub(crate) target: SocketAddrV4,
    /// Datagrams per second; `None` is as fast as this machine allows.
    pub(crate) rate: Option<u64>,
}

impl<'a> FloodFrom<'a> {
    /// From the attacker, a host without keys, to the gateway's attacker-side address.
    pub(crate) fn attacker(lab: &'a BenchLab, rate: Option<u64>) -> Self {
        Self {
            netns: lab.lab.attacker.name(),
            target: SocketAddrV4::new(lab::gw_attacker4(), SPA_PORT),
            rate,
        }
    }

    /// From the knocking client itself (its own address), to the address it knocks on.
    pub(crate) fn client(lab: &'a BenchLab, rate: Option<u64>) -> Self {
        Self { netns: lab.lab.client.name(), target: SocketAddrV4::new(lab::gw4(), SPA_PORT), rate }
    }
}

/// A running `spa-flood`, stopped (SIGINT) and reaped on drop.
struct FloodProc(Option<std::process::Child>);

impl FloodProc {
    /// Floods as `from` says for at most `secs` seconds.
    fn start(from: &FloodFrom<'_>, progs: &Programs, secs: u64) -> Result<Self> {
        let child = std::process::Command::new(&progs.flood)
            .arg("--netns")
            .arg(from.netns)
            .arg("--target")
            .arg(from.target.to_string())
            .args(["--duration", &secs.to_string()])
            .args(["--rate", &from.rate.unwrap_or(0).to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", progs.flood.display()))?;
        Ok(Self(Some(child)))
    }

    fn interrupt(&self) {
        if let Some(c) = &self.0 {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        }
    }

    /// Waits for the flood to end (after stopping it when `stop`); returns its report.
    fn finish(mut self, stop: bool) -> Result<FloodReport> {
        if stop {
            self.interrupt();
        }
        let Some(mut child) = self.0.take() else { bail!("flood already reaped") };
        let status = child.wait().context("waiting for spa-flood")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut line).context("reading spa-flood's report")?;
        }
        if !status.success() {
            bail!("spa-flood failed ({status})");
        }
        let v: serde_json::Value = serde_json::from_str(line.trim()).context("spa-flood's report")?;
        Ok(FloodReport {
            sent: v["sent"].as_u64().unwrap_or(0),
            secs: v["seconds"].as_f64().unwrap_or(0.0),
            rate: v["rate"].as_f64().unwrap_or(0.0),
        })
    }
}

impl Drop for FloodProc {
    fn drop(&mut self) {
        self.interrupt();
        if let Some(mut c) = self.0.take() {
            let _ = c.wait();
        }
    }
}

/// What `spa-flood` reported.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FloodReport {
    /// Datagrams sent.
    pub(crate) sent: u64,
    /// Seconds.
    pub(crate) secs: f64,
    /// Datagrams per second.
    pub(crate) rate: f64,
}

/// Knocks under a flood.
#[derive(Clone, Debug, Default)]
pub(crate) struct Flood {
    /// Knocks sent during the flood.
    pub(crate) knocks: usize,
    /// Latencies of those that opened within the limit.
    pub(crate) summary: Summary,
    /// The same without the first knock after the daemon started.
    pub(crate) after_first: Summary,
    /// Grants the daemon made in all (also late ones).
    pub(crate) daemon_grants: u64,
    /// The generator's report.
    pub(crate) report: FloodReport,
    /// Junk datagrams the daemon handled (from its log).
    pub(crate) handled: u64,
    /// Packets the daemon refused as over a per-source budget (`rate_limited`; spad only).
    pub(crate) limited: u64,
    /// Daemon CPU while flooded, as a fraction of one core.
    pub(crate) cpu_fraction: f64,
}

/// Floods the SPA port as `from` says while the client knocks `knocks` times, `spacing`
/// apart, each knock from the client's own address and for a new grant.
pub(crate) fn flood(
    lab: &BenchLab,
    d: &mut Daemon,
    knocker: &Knocker,
    progs: &Programs,
    from: &FloodFrom<'_>,
    knocks: usize,
    spacing: Duration,
) -> Result<Flood> {
    // Under flood a knock that has not opened after 2 s counts as lost (a person would knock
    // again by then).
    let limit = FLOOD_KNOCK_LIMIT;
    sleep(Duration::from_millis(500))?;
    let before = d.counts();
    let c0 = cpu_time(d)?;
    let t0 = Instant::now();
    let proc = FloodProc::start(from, progs, 600)?;
    sleep(Duration::from_secs(1))?;
    let samples = lab.in_client(|| {
        let sock = knock_socket()?;
        let prober = Prober::default();
        let mut samples = Vec::new();
        for i in 0..knocks {
            crate::check_interrupt()?;
            samples.push(measured_knock(&sock, knocker, &prober, probe_addr(i), limit)?);
            sleep(spacing)?;
        }
        Ok(samples)
    })?;
    let report = proc.finish(true)?;
    let c1 = cpu_time(d)?;
    let busy_secs = t0.elapsed().as_secs_f64();
    settle(d, 0.0, Duration::from_secs(10))?;
    d.check_alive()?;
    let sock = lab.in_client(knock_socket)?;
    let counts = flush_counts(d, &sock)?;
    Ok(Flood {
        knocks,
        summary: summary(&samples),
        after_first: summary(samples.get(1..).unwrap_or(&[])),
        daemon_grants: counts.grants - before.grants,
        report,
        handled: counts.junk - before.junk,
        limited: counts.limited - before.limited,
        cpu_fraction: (c1 - c0).as_secs_f64() / busy_secs,
    })
}

/// What a fill did.
#[derive(Clone, Copy, Debug, Default)]
struct Filled {
    /// Grants made.
    granted: usize,
    /// Knocks the daemon never acted on (none for 5 s while they were outstanding).
    lost: usize,
}

/// Sends knocks for fill addresses from `first` on, each from the address it asks for, at most
/// `window` outstanding, until `count` are granted or `deadline` passes; then waits for the
/// knocks already sent to be handled, so nothing queued delays later measurements. A daemon
/// that drops knocks (fwknopd does now and then) gets new ones instead; five silent rounds in a
/// row is an error. Runs in the client namespace.
fn fill(
    sock: &SourceSocket,
    d: &mut Daemon,
    knocker: &Knocker,
    first: usize,
    count: usize,
    window: usize,
    deadline: Option<Instant>,
) -> Result<Filled> {
    let base = d.grants();
    let mut sent = 0usize;
    let mut out = Filled::default();
    let mut last_progress = Instant::now();
    let mut silent_rounds = 0;
    loop {
        crate::check_interrupt()?;
        let open = deadline.is_none_or(|dl| Instant::now() <= dl);
        let mut outstanding = sent.saturating_sub(out.granted + out.lost);
        if outstanding == 0 && (out.granted >= count || !open) {
            return Ok(out);
        }
        while open && out.granted + outstanding < count && outstanding < window {
            let from = fill_addr(first + sent);
            let pkt = knocker.packet(from.into(), &access())?;
            sock.send(pkt.as_bytes(), from, spa_target4()).context("sending a fill knock")?;
            sent += 1;
            outstanding += 1;
        }
        let g = (d.grants() - base) as usize;
        if g > out.granted {
            out.granted = g;
            last_progress = Instant::now();
            silent_rounds = 0;
        } else if last_progress.elapsed() > Duration::from_secs(5) {
            d.check_alive()?;
            silent_rounds += 1;
            if silent_rounds >= 5 {
                bail!("no grant for 25 s at {} of {count} (sent {sent}):\n{}", out.granted, d.log_tail());
            }
            out.lost += outstanding;
            last_progress = Instant::now();
        } else {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// CPU per packet.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cpu {
    /// Idle CPU with no grants, fraction of one core.
    pub(crate) idle_fraction: f64,
    /// The junk flood's report.
    pub(crate) junk_report: FloodReport,
    /// Junk datagrams the daemon handled.
    pub(crate) junk_handled: u64,
    /// Daemon CPU per handled junk datagram.
    pub(crate) cpu_per_junk: Option<Duration>,
    /// Valid knocks granted (each for a new address).
    pub(crate) valid: usize,
    /// Daemon CPU per valid knock, firewall change included.
    pub(crate) cpu_per_valid: Option<Duration>,
    /// The part of it spent in the daemon process itself (the rest is in its helpers: nft,
    /// iptables).
    pub(crate) own_per_valid: Option<Duration>,
    /// Grants per second while doing it.
    pub(crate) rate: f64,
    /// Valid knocks the daemon never acted on.
    pub(crate) lost: usize,
}

/// Idle CPU; then a junk-only flood of `junk_secs` at full rate; then `valid` knocks for new
/// addresses (at most `window` ahead of the grants). Idle CPU is subtracted from both.
pub(crate) fn cpu(
    lab: &BenchLab,
    d: &mut Daemon,
    knocker: &Knocker,
    progs: &Programs,
    junk_secs: u64,
    valid: usize,
    window: usize,
) -> Result<Cpu> {
    sleep(Duration::from_secs(1))?;
    let idle = idle_fraction(d, Duration::from_secs(5))?;
    let mut out = Cpu { idle_fraction: idle, ..Cpu::default() };

    let sock = lab.in_client(knock_socket)?;
    let before = flush_counts(d, &sock)?;
    let c0 = cpu_time(d)?;
    let t0 = Instant::now();
    out.junk_report = FloodProc::start(&FloodFrom::attacker(lab, None), progs, junk_secs)?.finish(false)?;
    drain(d, Duration::from_secs(60))?;
    let c1 = settle(d, idle, Duration::from_secs(20))?;
    let dt = t0.elapsed().as_secs_f64();
    let counts = flush_counts(d, &sock)?;
    out.junk_handled = counts.junk - before.junk;
    let busy = (c1 - c0).as_secs_f64() - idle * dt;
    out.cpu_per_junk =
        (out.junk_handled > 0).then(|| Duration::from_secs_f64(busy.max(0.0) / out.junk_handled as f64));

    let c0 = cpu_time(d)?;
    let own0 = procstat::own_cpu(d.pid())?;
    let t0 = Instant::now();
    let filled = lab.in_client(|| {
        let sock = SourceSocket::new()?;
        fill(&sock, d, knocker, 0, valid, window, None)
    })?;
    let granted = filled.granted;
    out.lost = filled.lost;
    let secs = t0.elapsed().as_secs_f64();
    let c1 = settle(d, idle, Duration::from_secs(10))?;
    let own1 = procstat::own_cpu(d.pid())?;
    let dt = t0.elapsed().as_secs_f64();
    let busy = (c1 - c0).as_secs_f64() - idle * dt;
    out.valid = granted;
    let per = |total: f64| (granted > 0).then(|| Duration::from_secs_f64(total.max(0.0) / granted as f64));
    out.cpu_per_valid = per(busy);
    out.own_per_valid = per((own1 - own0).as_secs_f64() - idle * dt);
    out.rate = granted as f64 / secs;
    d.check_alive()?;
    Ok(out)
}

/// One scale level.
#[derive(Clone, Debug, Default)]
pub(crate) struct Level {
    /// The level asked for.
    pub(crate) target: usize,
    /// Grants active when measured.
    pub(crate) active: usize,
    /// Seconds the fill to this level took (from the previous level).
    pub(crate) fill_secs: f64,
    /// Grants per second during that fill.
    pub(crate) fill_rate: f64,
    /// Open latency of the probe knocks at this level.
    pub(crate) probe: Summary,
    /// Probe knocks sent.
    pub(crate) probes: usize,
    /// Fill knocks the daemon never acted on.
    pub(crate) lost: usize,
}

/// The scale run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scale {
    /// Levels reached.
    pub(crate) levels: Vec<Level>,
    /// Idle CPU over `idle_secs` at the last level, fraction of one core.
    pub(crate) idle_fraction: Option<f64>,
    /// Resident memory of the daemon process at the last level, KiB.
    pub(crate) rss_kib: Option<u64>,
    /// Resident memory of the daemon and its helper processes, KiB.
    pub(crate) tree_rss_kib: Option<u64>,
    /// A level not reached within the time budget, if any.
    pub(crate) budget_hit: Option<usize>,
}

/// What the scale run does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScaleSpec<'a> {
    /// Active grants to reach, in order.
    pub(crate) levels: &'a [usize],
    /// Measured knocks at each level.
    pub(crate) probes: usize,
    /// Knocks sent ahead of the grants while filling.
    pub(crate) window: usize,
    /// Stop filling after this long.
    pub(crate) budget: Option<Duration>,
    /// Idle time measured at the end.
    pub(crate) idle_secs: Duration,
}

/// Fills the firewall to each level and measures the open latency of further knocks there.
pub(crate) fn scale(
    lab: &BenchLab,
    d: &mut Daemon,
    knocker: &Knocker,
    spec: &ScaleSpec<'_>,
) -> Result<Scale> {
    let ScaleSpec { levels, probes, window, budget, idle_secs } = *spec;
    let limit = knock_limit(d.kind);
    let deadline = budget.map(|b| Instant::now() + b);
    let mut out = Scale::default();
    let mut next_addr = 0usize;
    let mut probe_next = 0usize;
    for &target in levels {
        let active = d.grants() as usize;
        let need = target.saturating_sub(active);
        let t0 = Instant::now();
        let f = lab.in_client(|| {
            let sock = SourceSocket::new()?;
            fill(&sock, d, knocker, next_addr, need, window, deadline)
        })?;
        let got = f.granted;
        next_addr += f.granted + f.lost;
        let secs = t0.elapsed().as_secs_f64();
        let reached = d.grants() as usize;
        if got < need {
            out.budget_hit = Some(target);
        }
        // Let the last fill grants settle before measuring.
        sleep(Duration::from_millis(500))?;
        let samples = lab.in_client(|| {
            let sock = knock_socket()?;
            let prober = Prober::default();
            let mut s = Vec::new();
            for i in 0..probes {
                crate::check_interrupt()?;
                if let Some(t) = measured_knock(&sock, knocker, &prober, probe_addr(probe_next + i), limit)? {
                    s.push(t);
                }
                sleep(Duration::from_millis(20))?;
            }
            Ok(s)
        })?;
        probe_next += probes;
        out.levels.push(Level {
            target,
            active: reached,
            fill_secs: secs,
            fill_rate: if secs > 0.0 { got as f64 / secs } else { 0.0 },
            probe: Summary::of(&samples),
            probes,
            lost: f.lost,
        });
        if out.budget_hit.is_some() {
            break;
        }
    }
    d.check_alive()?;
    settle(d, 0.05, Duration::from_secs(30))?;
    out.idle_fraction = Some(idle_fraction(d, idle_secs)?);
    out.rss_kib = procstat::vm_rss_kib(d.pid()).ok();
    out.tree_rss_kib = procstat::tree_rss_kib(d.pid()).ok();
    Ok(out)
}

/// The replay run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Replay {
    /// Replays sent.
    pub(crate) sent: u64,
    /// Replays the daemon handled (refused as replays).
    pub(crate) handled: u64,
    /// Daemon CPU per handled replay.
    pub(crate) cpu_per_replay: Option<Duration>,
    /// Grants the daemon made from the packet and all its replays.
    pub(crate) grants: u64,
    /// Extensions (spad) caused by replays (must be 0).
    pub(crate) extends: u64,
}

/// Sends one valid knock, then the same bytes `count` more times at `rate` per second.
pub(crate) fn replay(
    lab: &BenchLab,
    d: &mut Daemon,
    knocker: &Knocker,
    count: u64,
    rate: u64,
) -> Result<Replay> {
    let addr = probe_addr(0);
    let pkt = knocker.packet(addr.into(), &access())?;
    let first = lab.in_client(|| {
        let sock = knock_socket()?;
        let t0 = Instant::now();
        sock.send_to(pkt.as_bytes(), spa_target()).context("sending the knock")?;
        Ok(Prober::default().open_latency(addr, protected(), t0, knock_limit(d.kind))?)
    })?;
    if first.is_none() {
        bail!("the knock to be replayed did not open the port:\n{}", d.log_tail());
    }
    sleep(Duration::from_millis(500))?;
    let idle = idle_fraction(d, Duration::from_secs(3))?;
    let before = d.counts();
    let c0 = cpu_time(d)?;
    let t0 = Instant::now();
    let sent = lab.in_client(|| {
        let spec = spa_bench::flood::Spec {
            target: spa_target(),
            rate: Some(rate),
            count: Some(count),
            duration: None,
            batch: 64,
        };
        let sock = spa_bench::flood::socket(spa_target())?;
        let r = spa_bench::flood::run(&sock, &spec, &AtomicBool::new(false), |b| {
            b.clear();
            b.extend_from_slice(pkt.as_bytes());
        })?;
        Ok(r.sent)
    })?;
    let c1 = settle(d, idle, Duration::from_secs(20))?;
    let dt = t0.elapsed().as_secs_f64();
    let flush = lab.in_client(knock_socket)?;
    let counts = flush_counts(d, &flush)?;
    let handled = counts.replays - before.replays;
    let busy = (c1 - c0).as_secs_f64() - idle * dt;
    d.check_alive()?;
    Ok(Replay {
        sent,
        handled,
        cpu_per_replay: (handled > 0).then(|| Duration::from_secs_f64(busy.max(0.0) / handled as f64)),
        grants: counts.grants,
        extends: counts.extends,
    })
}

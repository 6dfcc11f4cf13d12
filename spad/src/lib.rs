//! `spad`, the SPA daemon: receives fwknop-compatible SPA packets (UDP sockets or passive
//! capture), verifies them with `spa-engine`, and opens the firewall through a backend for a
//! limited time. It never answers anything, keeps working under flood, keeps its grants across
//! restarts, and writes one audit line per decision.
//!
//! The library holds the daemon; `main.rs` is only the command line.

pub mod audit;
pub mod check;
pub mod command;
pub mod config;
pub mod control;
pub mod import_fwknop;
pub mod keygen;
pub mod linked_backends;
pub mod logging;
pub mod metrics;
pub mod privs;
pub mod ratelimit;
pub mod receive;
pub mod shared_state;
pub mod state;
pub mod stats;
pub mod worker;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::{Sender, TrySendError};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use spa_backends::{Driver, NoneBackend, Registry, State};
use spa_engine::stanza::canonical;
use spa_engine::{Action, PacketMeta, RejectReason, Verdict, Verifier};

use crate::audit::Audit;
use crate::command::{Commands, Job};
use crate::config::{Config, Mode, error_chain};
use crate::ratelimit::RateLimiter;
use crate::receive::tcp::{self, TcpReceiver};
use crate::receive::{Batch, CaptureReceiver, Meta, UdpReceiver};
use crate::shared_state::{ReplayShare, Replays};
use crate::state::{GrantStore, PersistentReplay, StanzaLimits, StateError, StateLock};
use crate::worker::{Msg, Worker, unix_now};

/// Authenticated requests waiting for the backend worker, at most.
const WORKER_QUEUE: usize = 4096;

fn load(path: &Path) -> Result<Config> {
    // The error keeps its type: `spad reload` reports its file and line apart.
    Config::load(path).map_err(anyhow::Error::new)
}

fn registry() -> Result<Registry> {
    Registry::collect().context("backend registry")
}

/// `spad backends`: the backends this build contains.
pub fn backends() -> Result<()> {
    for d in registry()?.descriptors() {
        println!("{:<10} {}", d.name, d.description);
    }
    Ok(())
}

/// `spad list`: the recorded grants (live, and closing ones whose end failed and is retried),
/// from the state journal; with `firewall`, also what the backend says the firewall holds,
/// beside what the ledger expects, with the differences marked; with `all_gateways`, instead,
/// the live grants every gateway publishes in the shared store.
pub fn list(path: &Path, json: bool, firewall: bool, all_gateways: bool) -> Result<()> {
    let c = load(path)?;
    if all_gateways {
        return Ok(shared_state::list_all(&c, json)?);
    }
    let now = unix_now();
    let records: Vec<_> = state::read_grants(&c.replay.state_dir)?
        .into_iter()
        .filter(|r| r.grant.deadline > now || matches!(r.state, State::Closing(_)))
        .collect();
    for r in &records {
        let g = &r.grant;
        let state = match &r.state {
            State::Closing(cl) => {
                format!("closing ({} failed, next try {})", cl.attempts, audit::rfc3339(cl.retry_at, 0))
            }
            _ => "live".to_owned(),
        };
        if json {
            let mut v = serde_json::to_value(g)?;
            v["id"] = serde_json::json!(g.id.to_string());
            v["state"] = serde_json::json!(if state == "live" { "live" } else { "closing" });
            println!("{v}");
        } else {
            // A grant bound to the client's source port shows it beside the address.
            let source = match g.source_port {
                Some(p) => format!("{} sport {p}", g.source),
                None => g.source.to_string(),
            };
            println!(
                "{}  {:<39} {:<24} expires {} ({} left)  stanza {}  user {}  {state}",
                g.id,
                source,
                g.access.to_string(),
                audit::rfc3339(g.deadline, 0),
                control::duration_text(g.remaining(now)),
                g.stanza,
                g.username
            );
        }
    }
    if !json && records.is_empty() {
        println!("no active grants");
    }
    if firewall {
        list_firewall(&c, records, now, json)?;
    }
    Ok(())
}

/// The firewall's side of `spad list --firewall`.
fn list_firewall(c: &Config, records: Vec<spa_backends::Record>, now: u64, json: bool) -> Result<()> {
    let mut d = registry()?.create(&c.firewall.backend, &c.firewall.table)?;
    d.adopt(records);
    let expected = d.expected(now);
    let observed = d.observe(now).with_context(|| format!("reading what the {} backend holds", d.name()))?;
    let seen: std::collections::BTreeMap<&str, &spa_backends::Observed> =
        observed.iter().map(|o| (o.entry.as_str(), o)).collect();
    let wanted: std::collections::BTreeSet<&str> = expected.iter().map(|(e, ..)| e.as_str()).collect();
    let mut lines = Vec::new();
    for (entry, holder, until, closing) in &expected {
        let (mark, note) = match (seen.get(entry.as_str()), closing) {
            (Some(_), true) => ("!", "closing: should be gone"),
            (None, true) => (" ", "closing: gone"),
            (Some(o), false) if o.holder.is_some_and(|h| h != *holder) => ("~", "held for another grant"),
            (Some(_), false) => (" ", "ok"),
            (None, false) => ("-", "missing"),
        };
        lines.push((mark, entry.clone(), Some(*holder), Some(*until), note));
    }
    for o in observed.iter().filter(|o| !wanted.contains(o.entry.as_str())) {
        lines.push(("+", o.entry.clone(), o.holder, o.until, "not in the ledger"));
    }
    for (mark, entry, holder, until, note) in lines {
        if json {
            println!(
                "{}",
                serde_json::json!({"firewall": entry, "grant": holder.map(|h| h.to_string()), "until": until, "status": note})
            );
        } else {
            let holder = holder.map_or_else(|| "-".to_owned(), |h| h.to_string());
            let until = until.map_or_else(|| "-".to_owned(), |u| audit::rfc3339(u, 0));
            println!("{mark} {entry:<48} grant {holder}  until {until}  {note}");
        }
    }
    Ok(())
}

/// `spad teardown`: removes everything the backend owns. Refused while a daemon holds the
/// state directory (it would put its grants back, or lose track of them); otherwise the lock
/// is held while the firewall and the journal are cleared.
pub fn teardown(path: &Path) -> Result<()> {
    let c = load(path)?;
    let lock = StateLock::acquire(&c.replay.state_dir).map_err(|e| match e {
        StateError::Locked(..) => {
            anyhow::Error::new(e).context("cannot tear down while spad runs; stop it first")
        }
        e => anyhow::Error::new(e),
    })?;
    let mut b = registry()?.create(&c.firewall.backend, &c.firewall.table)?;
    // End every recorded grant through the ledger first: a backend that cannot reset what it
    // made (the script backend) closes each one; then the namespace goes.
    let now = unix_now();
    let (mut store, loaded) =
        GrantStore::open(&lock, &StanzaLimits::of(&c.verifier), now, &mut state::Interner::default())?;
    b.adopt(loaded.records);
    for e in b.stop(false, now, &mut store) {
        if let spa_backends::Event::CloseFailed { grant, error, .. } = e {
            eprintln!("warning: closing grant {} failed: {}", grant.id, error_chain(&error));
        }
    }
    b.teardown().context("teardown")?;
    // Nothing is granted any more.
    store.rewrite(std::iter::empty())?;
    println!("removed everything the {} backend owned", c.firewall.backend);
    Ok(())
}

/// `spad revoke --gateway NAME ID`: revokes a grant of any gateway through the shared store's
/// revoke channel. `spad revoke ID|ADDRESS`: revokes this gateway's grant (or every grant of
/// an address) at once, over the control socket (`socket`, else the configuration's).
pub fn revoke(path: &Path, gateway: Option<&str>, target: &str, socket: Option<&Path>) -> Result<()> {
    if gateway.is_some() {
        let c = load(path)?;
        return Ok(shared_state::send_revoke(&c, gateway, target)?);
    }
    control::revoke_here(&control_socket(path, socket)?, target)
}

/// The control socket a command talks to: `--socket`, else the configuration's.
fn control_socket(path: &Path, socket: Option<&Path>) -> Result<std::path::PathBuf> {
    match socket {
        Some(s) => Ok(s.to_owned()),
        None => control::socket_of(path),
    }
}

/// `spad status`: how the running daemon is doing, over the control socket.
pub fn status(path: &Path, socket: Option<&Path>, json: bool) -> Result<()> {
    control::print_status(&control_socket(path, socket)?, json)
}

/// `spad reload`: SIGHUP's reload, over the control socket, reporting how it went.
pub fn reload_running(path: &Path, socket: Option<&Path>) -> Result<()> {
    control::reload(&control_socket(path, socket)?)
}

/// What the receiver threads share.
struct Shared {
    verifier: RwLock<Arc<Verifier>>,
    replay: Arc<Mutex<PersistentReplay>>,
    /// The replay store shared with other gateways, if configured.
    share: Option<Arc<ReplayShare>>,
    limiter: Mutex<RateLimiter>,
    audit: Arc<Mutex<Audit>>,
    worker: Sender<Msg>,
    /// Runs command messages, off the worker.
    commands: Commands,
    stats: Arc<stats::Stats>,
}

impl Shared {
    /// Verifies every datagram of a batch with its own bytes and source.
    fn handle_batch(&self, batch: &Batch) {
        self.handle(batch.datagrams());
    }

    /// Verifies packets (datagrams, or what a TCP connection delivered) with their own bytes
    /// and source: every receiver comes through here. Nothing is shed before the HMAC:
    /// verifying junk costs under a microsecond, so a limit there would only let an attacker
    /// who spoofs a client's address starve that client's knocks. Budgets apply where work is
    /// expensive: per-source for authenticated requests (the backend worker, the command
    /// pool), per-source and global for reject lines (the audit trail), and bounded queues in
    /// front of the worker and the command pool.
    fn handle<'a>(&self, packets: impl Iterator<Item = (&'a Meta, &'a [u8])>) {
        let verifier = self.verifier.read().unwrap_or_else(PoisonError::into_inner).clone();
        let now = unix_now();
        for (meta, payload) in packets {
            let src = canonical(meta.src);
            let reject = |reason: &'static str, detail: Option<&str>, stanza: Option<&str>| {
                self.audit.lock().unwrap_or_else(PoisonError::into_inner).reject(src, reason, detail, stanza);
            };
            if meta.truncated {
                reject(RejectReason::TooLong.code(), None, None);
                continue;
            }
            let pm = PacketMeta { source: src, destination: canonical(meta.dst) };
            let mut replays = Replays::new(&self.replay, self.share.as_deref());
            let verdict = verifier.verify(payload, pm, now, &mut replays);
            if replays.errors() > 0 {
                self.stats.replay_store_errors.fetch_add(replays.errors(), Ordering::Relaxed);
            }
            match verdict {
                Verdict::Accept(g) => {
                    if replays.degraded() {
                        self.audit.lock().unwrap_or_else(PoisonError::into_inner).degraded(src, &g.stanza);
                    }
                    if !self.limiter.lock().unwrap_or_else(PoisonError::into_inner).allow(src) {
                        reject("rate_limited", None, Some(&g.stanza));
                        continue;
                    }
                    let stanza = g.stanza.clone();
                    if let Action::Command(command) = &g.action {
                        let job = Job {
                            packet_source: g.packet_source,
                            allowed_source: g.allowed_source,
                            run_as: verifier.stanzas().get(g.stanza_index).and_then(|s| s.cmd_exec.clone()),
                            command: command.clone(),
                            username: g.username.clone(),
                            stanza: g.stanza.clone(),
                        };
                        if self.commands.submit(job).is_err() {
                            reject("command_busy", None, Some(&stanza));
                        }
                        continue;
                    }
                    let request = Msg::Request(Box::new(g), std::time::Instant::now(), meta.ifindex);
                    match self.worker.try_send(request) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => reject("backend_busy", None, Some(&stanza)),
                        Err(TrySendError::Disconnected(_)) => reject("shutting_down", None, Some(&stanza)),
                    }
                }
                Verdict::Reject(r) => {
                    let detail = match r.reason {
                        RejectReason::MalformedField(f) => Some(f.name()),
                        _ => None,
                    };
                    reject(r.reason.code(), detail, r.stanza.as_deref());
                }
            }
        }
    }
}

fn open_audit(c: &Config) -> Result<Audit> {
    Audit::open(&c.log.audit, c.log.max_rejects_per_second)
        .with_context(|| format!("cannot open {}", c.log.audit))
}

/// SIGHUP, SIGUSR1: the audit file is opened again by its name (logrotate moved it).
fn reopen_audit(audit: &Mutex<Audit>) {
    match audit.lock().unwrap_or_else(PoisonError::into_inner).reopen() {
        Ok(Some(path)) => tracing::info!("audit file {} reopened", path.display()),
        Ok(None) => {}
        Err(e) => tracing::error!("cannot reopen the audit file, writing on to the old one: {e}"),
    }
}

/// Hands memory freed after start (the journal as read, the firewall script of every live
/// grant: tens of megabytes with 100,000 grants) back to the system; glibc keeps it otherwise.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; no pointer of ours is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// systemd's readiness protocol is Linux's; elsewhere the same calls do nothing (rc.d scripts
/// and launchd do not ask for it).
#[cfg(not(target_os = "linux"))]
mod sd_notify {
    pub(crate) enum NotifyState<'a> {
        Ready,
        Reloading,
        Stopping,
        Watchdog,
        #[allow(dead_code)]
        Status(&'a str),
    }

    pub(crate) fn notify(_: &[NotifyState<'_>]) -> std::io::Result<()> {
        Ok(())
    }

    pub(crate) fn watchdog_enabled() -> Option<std::time::Duration> {
        None
    }
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(state);
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub fn run(path: &Path, test: bool) -> Result<()> {
    logging::init();
    let config = load(path)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // One spad per state directory: the lock comes before anything there is read or written,
    // and before the firewall is touched, so a second spad changes nothing.
    let state_dir = if test {
        state::prepare_dir(&config.replay.state_dir)?;
        config.replay.state_dir.join("test")
    } else {
        config.replay.state_dir.clone()
    };
    let lock = StateLock::acquire(&state_dir)?;
    let registry = registry()?;
    let mut driver: Box<dyn Driver> = if test {
        tracing::info!("test mode: decisions are logged, the firewall is not changed");
        spa_backends::create::<NoneBackend>(&toml::Table::new())?
    } else {
        let driver = config.backend(&registry).map_err(|e| anyhow::anyhow!("{e}"))?;
        // What `spad check` would say about the backend (a host table whose drop swallows
        // grants appears after installation, typically), once.
        check::log_at_start(&config, &registry);
        driver
    };
    let now = unix_now();

    // Reconcile: the firewall holds exactly the recorded live grants of configured stanzas;
    // what ended meanwhile, or whose close failed, is closed by the first ticks.
    let mut interner = state::Interner::default();
    let (mut store, loaded) =
        GrantStore::open(&lock, &StanzaLimits::of(&config.verifier), now, &mut interner)?;
    let audit = Arc::new(Mutex::new(open_audit(&config)?));
    // The metrics endpoint and the control socket are bound once the configuration, the
    // backend and the state have passed their checks, before the firewall is touched (a busy
    // port stops spad cleanly), and served once everything runs. Test mode has
    // neither: they belong to the real spad beside it.
    let metrics_listener = match (test, config.metrics.listen) {
        (false, Some(addr)) => {
            Some(metrics::bind(addr).with_context(|| format!("cannot serve metrics on {addr}"))?)
        }
        _ => None,
    };
    let mut control_server = if test || !config.control.enabled {
        None
    } else {
        match control::Server::bind(&config.control.socket) {
            Ok(s) => Some(s),
            Err(e) => {
                // How admins look, not what protects anything: spad runs on without it.
                tracing::error!("{}; spad status, revoke and reload cannot reach this spad", error_chain(&e));
                None
            }
        }
    };
    let stats = audit.lock().unwrap_or_else(PoisonError::into_inner).stats();
    let backend_name = driver.name();
    let events = driver
        .start(loaded.records, now, &mut store)
        .with_context(|| format!("preparing the {} backend", driver.name()))?;
    worker::report(&audit, events);
    let live = driver.ledger().live().filter(|g| g.deadline > now).count();
    release_freed_memory();
    if store.needs_rewrite()
        && let Err(e) = store.rewrite(driver.ledger().records())
    {
        // Retried before each new grant, which is refused until it works.
        tracing::error!("{}", error_chain(&e));
    }
    let replay = Arc::new(Mutex::new(PersistentReplay::open(
        &lock,
        2 * config.replay.max_packet_age,
        config.replay.capacity,
        now,
    )?));
    audit
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .daemon("start", serde_json::json!({"backend": driver.name(), "live_grants": live, "test": test}));
    tracing::info!("backend {} ready with {live} live grants", driver.name());

    // Bounded: a flood of authenticated requests (only key holders can make them) waits here
    // at most this deep; beyond it they are refused as `backend_busy`, never queued forever.
    let (wtx, wrx) = crossbeam_channel::bounded(WORKER_QUEUE);
    let watchdog = sd_notify::watchdog_enabled();
    let heartbeat = Arc::new(AtomicU64::new(unix_now()));
    // Test mode shares nothing: a packet it sees must stay usable at the real gateways.
    let started = if test {
        if config.replay.store == config::StoreKind::Redis {
            tracing::info!("test mode: replays and grants are not shared through Redis");
        }
        None
    } else {
        let receivers = match config.listen.mode {
            Mode::Socket => config.listen.addresses.len(),
            Mode::Capture => config.listen.interfaces.len(),
        } + usize::from(config.listen.tcp.enable);
        shared_state::start(&config, receivers, audit.clone(), wtx.clone()).context("shared replay store")?
    };
    let mut worker = Worker::new(driver, store, interner, replay.clone(), audit.clone(), heartbeat.clone());
    let share = match started {
        Some(s) => {
            worker = worker.with_publisher(s.publisher);
            Some(s.replay)
        }
        None => None,
    };
    let worker_thread = thread::Builder::new()
        .name("backend".into())
        .spawn(move || worker.run(wrx, watchdog.map(|w| w / 2)))
        .context("starting the backend worker")?;

    let shared = Arc::new(Shared {
        verifier: RwLock::new(Arc::new(config.verifier.clone())),
        replay,
        share,
        limiter: Mutex::new(RateLimiter::new(
            4096,
            config.limits.per_source_rate,
            config.limits.per_source_burst,
        )),
        audit: audit.clone(),
        worker: wtx.clone(),
        commands: Commands::start(audit.clone()).context("starting the command threads")?,
        stats: stats.clone(),
    });
    start_receivers(&config, &shared)?;

    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let facts = metrics::Facts { backend: backend_name, share: shared.share.clone() };
            metrics::serve(listener, stats.clone(), facts).context("starting the metrics endpoint")?;
            tracing::info!("metrics on http://{addr}/metrics");
            Some(addr)
        }
        None => None,
    };
    // Kept for the whole run: the main loop waits on its other end.
    let (ctl_tx, ctl_rx) = crossbeam_channel::bounded::<control::MainCall>(4);
    if let Some(server) = control_server.as_mut() {
        let ctx = control::Context {
            stats: stats.clone(),
            worker: wtx.clone(),
            main: ctl_tx.clone(),
            backend: backend_name,
            mode: match config.listen.mode {
                Mode::Socket => "socket",
                Mode::Capture => "capture",
            },
            share: shared.share.clone(),
            metrics: metrics_addr,
        };
        server.serve(ctx)?;
        tracing::info!("control socket {}", server.path().display());
    }

    let (stx, srx) = crossbeam_channel::unbounded();
    let mut signals =
        signal_hook::iterator::Signals::new([SIGHUP, SIGUSR1, SIGTERM, SIGINT]).context("signals")?;
    thread::Builder::new().name("signals".into()).spawn(move || {
        for s in signals.forever() {
            if stx.send(s).is_err() {
                break;
            }
        }
    })?;
    notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!("spad ready");

    let mut current = config;
    // Wake at least once a second: the reject summary of a flood that has stopped is written
    // then, not at the next packet; the watchdog is pinged at half its interval.
    let tick = watchdog.map_or(Duration::from_secs(1), |w| (w / 2).min(Duration::from_secs(1)));
    loop {
        let mut call = None;
        let signal = crossbeam_channel::select! {
            recv(srx) -> s => Some(s.unwrap_or(SIGTERM)),
            recv(ctl_rx) -> c => {
                call = c.ok();
                None
            }
            default(tick) => None,
        };
        match signal {
            Some(SIGHUP) => {
                reopen_audit(&audit);
                current = reload(current, path, &shared, None).0;
            }
            Some(SIGUSR1) => reopen_audit(&audit),
            Some(_) => break,
            None => {}
        }
        // `spad reload`: what SIGHUP does, with the result sent back.
        if let Some(control::MainCall::Reload { by, reply }) = call {
            reopen_audit(&audit);
            let (next, answer) = reload(current, path, &shared, Some(&by));
            current = next;
            let _ = reply.send(answer);
        }
        audit.lock().unwrap_or_else(PoisonError::into_inner).tick();
        // Ping the watchdog only while the worker is alive and not stuck.
        if let Some(w) = watchdog {
            let age = unix_now().saturating_sub(heartbeat.load(Ordering::Relaxed));
            if age <= w.as_secs().max(1) {
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping");
    let (dtx, drx) = crossbeam_channel::bounded(1);
    let keep = current.firewall.keep_grants_on_exit;
    if wtx.send(Msg::Shutdown { keep, done: dtx }).is_ok() {
        let _ = drx.recv_timeout(Duration::from_secs(60));
    }
    let _ = worker_thread.join();
    audit
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .daemon("stop", serde_json::json!({"kept_grants": keep}));
    drop(control_server);
    drop(ctl_tx);
    drop(lock);
    Ok(())
}

/// SIGHUP and `spad reload` (`by` says who asked): a new configuration replaces the access
/// policy; live grants stay. A broken one is reported and the old one keeps running. Returns
/// the configuration now in force and the control socket's reply.
fn reload(
    current: Config,
    path: &Path,
    shared: &Shared,
    by: Option<&audit::Requester>,
) -> (Config, serde_json::Value) {
    notify(&[sd_notify::NotifyState::Reloading]);
    // The running backend stays: the new stanzas must not need what it cannot do.
    let result = load(path).and_then(|new| {
        let probe = Config { firewall: current.firewall.clone(), ..new.clone() };
        probe.backend(&registry()?).map_err(anyhow::Error::new)?;
        Ok(new)
    });
    let mut audit = shared.audit.lock().unwrap_or_else(PoisonError::into_inner);
    let (next, answer) = match result {
        Ok(new) => {
            let mut restart_needed = Vec::new();
            if new.listen != current.listen {
                restart_needed.push("listen");
            }
            if new.firewall != current.firewall {
                restart_needed.push("firewall");
            }
            if new.replay != current.replay {
                restart_needed.push("replay");
            }
            if new.control != current.control {
                restart_needed.push("control");
            }
            if new.metrics != current.metrics {
                restart_needed.push("metrics");
            }
            if !restart_needed.is_empty() {
                tracing::warn!(
                    "reload: changes to [{}] take effect at the next restart",
                    restart_needed.join("], [")
                );
            }
            for w in &new.warnings {
                tracing::warn!("{w}");
            }
            *shared.verifier.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new.verifier.clone());
            if new.limits != current.limits {
                *shared.limiter.lock().unwrap_or_else(PoisonError::into_inner) =
                    RateLimiter::new(4096, new.limits.per_source_rate, new.limits.per_source_burst);
            }
            audit.set_max_rejects(new.log.max_rejects_per_second);
            let stanzas = new.verifier.stanzas().len();
            tracing::info!("configuration reloaded ({stanzas} access stanzas)");
            let detail = serde_json::json!({"stanzas": stanzas, "restart_needed": restart_needed});
            match by {
                Some(by) => audit.daemon_by("reload", detail, by),
                None => audit.daemon("reload", detail),
            }
            let answer = serde_json::json!({
                "ok": true,
                "stanzas": stanzas,
                "restart_needed": restart_needed,
                "warnings": new.warnings,
            });
            // Keep the running listen/firewall/replay/control/metrics settings; take the rest.
            let next = Config {
                listen: current.listen,
                firewall: current.firewall,
                replay: current.replay,
                control: current.control,
                metrics: current.metrics,
                ..new
            };
            (next, answer)
        }
        Err(e) => {
            let msg = error_chain(e.as_ref());
            tracing::error!("reload failed, keeping the running configuration: {msg}");
            let detail = serde_json::json!({"error": msg});
            match by {
                Some(by) => audit.daemon_by("reload_failed", detail, by),
                None => audit.daemon("reload_failed", detail),
            }
            let mut answer = serde_json::json!({"ok": false, "error": msg});
            if let Some(c) = e.downcast_ref::<config::ConfigError>() {
                answer["file"] = serde_json::json!(c.file.display().to_string());
                answer["line"] = serde_json::json!(c.line);
                answer["message"] = serde_json::json!(c.message);
            }
            (current, answer)
        }
    };
    drop(audit);
    notify(&[sd_notify::NotifyState::Ready]);
    (next, answer)
}

fn start_receivers(config: &Config, shared: &Arc<Shared>) -> Result<()> {
    match config.listen.mode {
        Mode::Socket => {
            for addr in &config.listen.addresses {
                let r = Arc::new(UdpReceiver::bind(*addr).with_context(|| format!("cannot bind {addr}"))?);
                shared.stats.add_receiver(format!("udp {addr}"), r.clone());
                tracing::info!("listening on udp {}", r.local());
                let shared = shared.clone();
                thread::Builder::new().name(format!("udp {addr}")).spawn(move || {
                    if let Err(e) = privs::drop_thread_capabilities() {
                        tracing::warn!("receiver on {}: cannot drop capabilities: {e}", r.local());
                    }
                    let mut batch = Batch::new();
                    loop {
                        if let Err(e) = r.recv(&mut batch) {
                            tracing::error!("receive on {}: {e}", r.local());
                            continue;
                        }
                        shared.handle_batch(&batch);
                    }
                })?;
            }
        }
        Mode::Capture => {
            for ifname in &config.listen.interfaces {
                let r = Arc::new(
                    CaptureReceiver::open(ifname, config.listen.port)
                        .with_context(|| format!("cannot capture on {ifname}"))?,
                );
                shared.stats.add_receiver(format!("capture {ifname}"), r.clone());
                tracing::info!("capturing udp port {} on {}", config.listen.port, r.interface());
                let shared = shared.clone();
                thread::Builder::new().name(format!("capture {ifname}")).spawn(move || {
                    if let Err(e) = privs::drop_thread_capabilities() {
                        tracing::warn!("capture on {}: cannot drop capabilities: {e}", r.interface());
                    }
                    let mut batch = Batch::new();
                    loop {
                        if let Err(e) = r.recv(&mut batch) {
                            // A packet socket reports an error (ENETDOWN when the interface
                            // goes away) once, then blocks again: no busy loop.
                            tracing::error!("capture on {}: {e}", r.interface());
                            continue;
                        }
                        shared.handle_batch(&batch);
                    }
                })?;
            }
        }
    }
    let t = &config.listen.tcp;
    if t.enable {
        let limits = tcp::Limits {
            max_connections: t.max_connections,
            max_per_source: t.max_connections_per_source,
            read_timeout: Duration::from_millis(t.read_timeout_ms),
            http: t.http,
        };
        let r = TcpReceiver::bind(&t.addresses, limits)
            .with_context(|| format!("cannot listen on tcp {:?}", t.addresses))?;
        for a in r.locals() {
            tracing::info!("listening on tcp {a}{}", if t.http { " (also HTTP)" } else { "" });
        }
        let shared = shared.clone();
        thread::Builder::new().name("tcp".into()).spawn(move || {
            if let Err(e) = privs::drop_thread_capabilities() {
                tracing::warn!("tcp receiver: cannot drop capabilities: {e}");
            }
            r.run(|meta, packet| shared.handle(std::iter::once((meta, packet))));
        })?;
    }
    Ok(())
}

//! The bench's lab: `spa_e2e::GatewayLab` plus many client addresses and a TCP server on the
//! protected port of the gateway.
//!
//! Between knocks the grant of the previous knock must not help the next one. Every measured
//! knock therefore asks for a different address (`-a` style: the allow address inside the
//! message, which both daemons open), and the client connects from exactly that address. The
//! client owns `10.210.0.0/16` addresses on its interface for that; the gateway routes the
//! range back via the client. These measured knocks are sent from the client's own address
//! (`10.201.1.2`), at most about 25 per second, within spad's per-source budget.
//!
//! Knocks that only fill the firewall (the scale levels, CPU per valid knock) come from many
//! packet sources instead, one per grant, as 100,000 grants do in real life, and so each
//! source stays within spad's per-source budget for authenticated requests: the client owns
//! all of `10.64.0.0/10` through one local route on its loopback ("AnyIP"; no interface
//! addresses), and each fill knock leaves from its own address there and asks for that
//! address. The gateway has no route back to them and needs none (nothing answers a UDP
//! knock); reverse-path filtering is off in the gateway so that it does not drop them.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use socket2::{Domain, Socket, Type};
use spa_e2e::{GatewayLab, Netns};

/// The UDP port the daemons receive SPA packets on.
pub(crate) const SPA_PORT: u16 = 62201;
/// The TCP port the daemons protect and knocks ask for.
pub(crate) const PROTECTED_PORT: u16 = 22;

/// The gateway address the client knocks and connects to.
pub(crate) fn gw4() -> Ipv4Addr {
    GatewayLab::GW4.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// The gateway's attacker-side address (flood target).
pub(crate) fn gw_attacker4() -> Ipv4Addr {
    GatewayLab::GW_ATTACKER4.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// The protected service.
pub(crate) fn protected() -> SocketAddrV4 {
    SocketAddrV4::new(gw4(), PROTECTED_PORT)
}

/// Client address number `i` (owned by the client, used for measured knocks).
pub(crate) fn probe_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 210, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// The prefix the client owns as a whole (a local route) for fill knocks.
pub(crate) const FILL_PREFIX: &str = "10.64.0.0/10";

/// Fill address number `i`, inside [`FILL_PREFIX`]: the source of a fill knock and the address
/// it asks for. Never a destination.
pub(crate) fn fill_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + 1 + i as u32)
}

/// A TCP server in the gateway that accepts and closes, with a deep backlog.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(ns: &str, port: u16) -> Result<Self> {
        let ns = ns.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("tcp-server".into()).spawn(move || {
            let setup = || -> Result<Socket> {
                spa_bench::netns::enter(&ns)?;
                let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
                s.listen(4096)?;
                s.set_nonblocking(true)?;
                Ok(s)
            };
            let sock = match setup() {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                let mut p = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&raw mut p, 1, 100) };
                while let Ok((c, _)) = sock.accept() {
                    drop(c);
                }
            }
        })?;
        rx.recv().context("tcp server thread")??;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The lab for one measurement.
pub(crate) struct BenchLab {
    _listener: Listener,
    /// Hosts and links (dropped last: fields drop in declaration order).
    pub(crate) lab: GatewayLab,
}

impl BenchLab {
    /// Builds the lab with `probes` client addresses and the TCP server.
    pub(crate) fn new(probes: usize) -> Result<Self> {
        let lab = GatewayLab::new("bn");
        let mut batch = String::new();
        for i in 0..probes {
            batch.push_str(&format!("address add {}/16 dev eth0\n", probe_addr(i)));
        }
        // Fill knocks leave from any address of the prefix: local to the client, on no link.
        batch.push_str(&format!("route add local {FILL_PREFIX} dev lo\n"));
        ip_batch(&lab.client, &batch)?;
        lab.gw.ip(&["route", "add", "10.210.0.0/16", "via", GatewayLab::CLIENT4]);
        // New namespaces take IPv4 `all`/`default` settings from the host's, which may have
        // reverse-path filtering on (strict or loose); either would drop the fill knocks, whose
        // sources the gateway has no route to. The effective value is the larger of `all` and
        // the interface's, so all of them are set.
        for conf in ["all", "default", "c0", "a0", "i0"] {
            lab.gw.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0");
        }
        let listener = Listener::start(lab.gw.name(), PROTECTED_PORT)?;
        Ok(Self { _listener: listener, lab })
    }

    /// Runs `f` on a thread inside the client namespace.
    pub(crate) fn in_client<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        in_ns(self.lab.client.name(), f)
    }
}

/// Runs `f` on a scoped thread that has entered namespace `ns`.
pub(crate) fn in_ns<R: Send>(ns: &str, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    std::thread::scope(|s| {
        s.spawn(|| {
            spa_bench::netns::enter(ns)?;
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// `ip -n <ns> -batch -` with `commands` on stdin.
fn ip_batch(ns: &Netns, commands: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes()).context("writing to ip -batch")?;
    }
    let out = child.wait_with_output().context("ip -batch")?;
    if !out.status.success() {
        bail!("ip -batch failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Sleeps in small steps, failing early when the run is interrupted.
pub(crate) fn sleep(d: Duration) -> Result<()> {
    let end = std::time::Instant::now() + d;
    loop {
        crate::check_interrupt()?;
        let now = std::time::Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

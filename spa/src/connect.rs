//! `spa connect [-n STANZA] HOST PORT`: knock, then open the TCP connection and relay stdin
//! and stdout over it, for `ssh -o ProxyCommand='spa connect -n gw %h %p'`.
//!
//! With the modern format the knock names the TCP source port the connection will come from,
//! so the server can grant exactly that connection: the socket is made and bound to an
//! ephemeral port (in the target's address family) before the knock, the knock carries that
//! port, and the connection is made from that same socket. With the fwknop format it is a
//! plain knock, then a connection. Either way the first attempt waits `--connect-delay`
//! (`SPA_CONNECT_DELAY_MS`, default 500 ms: the server must have opened the firewall) and
//! failed attempts are retried until [`CONNECT_WINDOW`] has passed.
//!
//! stdout is the relayed stream: everything else, errors included, goes to stderr.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::knock::{self, KnockArgs};
use crate::modern::{self, WireFormat};
use crate::net;
use crate::opts::Allow;

/// Default wait between the knock and the first connection attempt.
pub(crate) const DEFAULT_DELAY: Duration = Duration::from_millis(500);
/// How long after the first attempt connection attempts go on.
pub(crate) const CONNECT_WINDOW: Duration = Duration::from_secs(10);
/// Longest single attempt (a dropped SYN is retransmitted after 1 s, then 3 s).
const ATTEMPT: Duration = Duration::from_secs(3);
/// Pause between failed attempts (a refused connection fails at once).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// `spa connect`'s arguments: the knock options, then where to connect.
#[derive(Args)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    pub(crate) knock: KnockArgs,
    /// The host to connect to (ssh's %h); also the SPA server unless -D/SPA_SERVER names one.
    #[arg(value_name = "HOST")]
    host: String,
    /// The TCP port to connect to (ssh's %p); also what is asked for unless -A/ACCESS says.
    #[arg(value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
}

/// `spa connect`.
pub(crate) fn run(c: &ConnectArgs) -> Result<()> {
    let mut p = knock::connect_settings(&c.knock)?;
    if p.destination.is_none() {
        p.destination = Some(c.host.clone());
    }
    if p.access.is_none() {
        p.access = Some(format!("tcp/{}", c.port));
    }
    if p.allow.is_none() && p.resolve_url.is_none() {
        // The connection comes from where the knock comes from.
        p.allow = Some(Allow::Source);
    }
    let format = modern::check_format(&p)?;
    let target = net::resolve(&c.host, c.port, p.server_resolve_ipv4.unwrap_or(false))?;
    let delay = p.connect_delay_ms.map_or(DEFAULT_DELAY, Duration::from_millis);
    let verbose = p.verbose() > 0;
    let stream = match format {
        WireFormat::Modern => {
            let socket = bound_socket(target, 0)?;
            let port = local_port(&socket)?;
            if verbose {
                eprintln!("Connecting from local port {port}, named in the knock");
            }
            let built = knock::build(&c.knock, &p, Some(port))?;
            knock::deliver(&c.knock, &p, &built)?;
            connect(Some(socket), target, port, delay)?
        }
        WireFormat::Fwknop => {
            let built = knock::build(&c.knock, &p, None)?;
            knock::deliver(&c.knock, &p, &built)?;
            connect(None, target, 0, delay)?
        }
    };
    if verbose {
        eprintln!("Connected to {target}");
    }
    relay(stream)
}

/// A TCP socket in `target`'s address family, bound to `port` of the wildcard address (0: an
/// ephemeral port the system picks).
fn bound_socket(target: SocketAddr, port: u16) -> Result<Socket> {
    let s = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))
        .context("cannot create a TCP socket")?;
    // On Unix this lets a retry bind the port again at once; Windows' SO_REUSEADDR would let
    // another program share the port, so it is left off there.
    #[cfg(unix)]
    s.set_reuse_address(true).context("cannot set SO_REUSEADDR")?;
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, port).into(),
    };
    s.bind(&SockAddr::from(local))
        .with_context(|| format!("cannot bind a TCP socket to local port {port}"))?;
    Ok(s)
}

/// The local port a bound socket got.
fn local_port(s: &Socket) -> Result<u16> {
    s.local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .context("cannot read the socket's local port")
}

/// Connects to `target` after `delay`, from `first` (then from new sockets bound to `port`,
/// when a port was named), retrying until [`CONNECT_WINDOW`] has passed.
fn connect(mut first: Option<Socket>, target: SocketAddr, port: u16, delay: Duration) -> Result<TcpStream> {
    std::thread::sleep(delay);
    let deadline = Instant::now() + CONNECT_WINDOW;
    loop {
        // A socket whose connection failed is not reused: its state is unspecified.
        let socket = match first.take() {
            Some(s) => s,
            None => bound_socket(target, port)?,
        };
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        match socket.connect_timeout(&SockAddr::from(target), left.min(ATTEMPT)) {
            Ok(()) => return Ok(socket.into()),
            Err(e) if Instant::now() >= deadline => {
                bail!(
                    "cannot connect to {target} within {} s of the knock: {e}",
                    (delay + CONNECT_WINDOW).as_secs()
                )
            }
            Err(_) => {
                drop(socket);
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

/// Copies stdin to the connection (then half-closes it) and the connection to stdout, until
/// the server closes its side.
fn relay(stream: TcpStream) -> Result<()> {
    let mut up = stream.try_clone().context("cannot share the connection between two threads")?;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if up.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        // The server sees our end of the stream; the other direction goes on.
        let _ = up.shutdown(Shutdown::Write);
    });
    let mut down = &stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match down.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("the connection failed"),
        };
        // stdout is line-buffered: flush every chunk, the stream is not made of lines.
        if stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()).is_err() {
            // Whoever reads our stdout is gone (ssh exited): nothing more to do.
            break;
        }
    }
    let _ = stdout.flush();
    Ok(())
}

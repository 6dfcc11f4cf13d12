//! Knocks over TCP, as fwknop's `ENABLE_TCP_SERVER` takes them (`fwknop -P tcp`: connect,
//! write the packet, close) and as an HTTP request (`ENABLE_SPA_OVER_HTTP`, `fwknop -P http`:
//! `GET /<packet> HTTP/1.1` with `+` sent as `-` and `/` as `_`).
//!
//! Unlike a UDP knock, TCP needs a listening port that completes handshakes with anyone, so
//! everything here assumes the peer is hostile:
//!
//! - one thread serves every TCP listener with `poll(2)` and non-blocking sockets: no thread
//!   per connection, and memory bounded by [`Limits::max_connections`] buffers of
//!   [`MAX_REQUEST`] bytes;
//! - at most [`Limits::max_per_source`] connections per source (an IPv6 source by its /64, as
//!   the rate limiter counts it): more from the same source are closed at once;
//! - when the table is full, the oldest connection is closed to make room, so idle
//!   connections (slowloris) cannot keep a client's knock out; a knock arrives with the
//!   handshake and is read at once;
//! - every connection has a short read deadline ([`Limits::read_timeout`]): what arrived by
//!   then is taken as the packet, an idle connection is closed;
//! - nothing is ever written back, not even an HTTP status (fwknopd's server answers nothing
//!   either, and its client reads nothing): a peer learns only that the port accepts
//!   connections;
//! - what is read goes through the same verification, replay store, per-source budgets and
//!   audit as a UDP datagram (the caller's `deliver`): a packet longer than fwknop's largest
//!   is delivered cut and marked truncated, and refused as `too_long`.
//!
//! A packet is complete at the end of the stream (fwknop's client closes after writing), or
//! for HTTP at the end of the request line; the HTTP headers are not read (the User-Agent
//! authenticates nothing, and `X-Forwarded-For` is not trusted: the knock's source is the TCP
//! peer). Everything here is std networking plus `poll`, so it runs on Linux and the BSDs; the
//! arrival interface of a connection is known on Linux (`IP_PKTOPTIONS`) only.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::Meta;

/// Most bytes read from one connection: room for fwknop's largest HTTP request (its client
/// builds at most 2000 bytes). A raw packet has at most 1500 (more is refused as `too_long`).
pub const MAX_REQUEST: usize = 4096;
/// Connections accepted from one listener per wake-up, so a connect flood cannot starve the
/// reading of connections already open.
const ACCEPT_BURST: usize = 256;
/// How long listeners rest after an accept error that would repeat at once (out of file
/// descriptors), instead of spinning on a listener that stays readable.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The longest `poll` wait: the counters below are reported at most this late.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How often the counts of closed connections are logged (when not zero).
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The bounds on connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, over all listeners.
    pub max_connections: usize,
    /// Connections open at once from one source (an IPv6 /64).
    pub max_per_source: usize,
    /// How long a connection may take to deliver its packet.
    pub read_timeout: Duration,
    /// Whether `GET /<packet>` requests are read as HTTP knocks.
    pub http: bool,
}

/// One open connection.
struct Conn {
    stream: TcpStream,
    peer: IpAddr,
    local: IpAddr,
    ifindex: u32,
    buf: Vec<u8>,
    accepted: Instant,
    deadline: Instant,
}

/// What reading a connection led to.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// More may come.
    Pending,
    /// The packet is complete (or the connection over with bytes in hand).
    Complete,
    /// Closed or failed before sending anything.
    Empty,
}

/// Connections closed without a packet since the last report.
#[derive(Default)]
struct Counts {
    over_source_limit: u64,
    evicted: u64,
    timed_out: u64,
}

/// The TCP listeners and their connections.
pub struct TcpReceiver {
    listeners: Vec<TcpListener>,
    locals: Vec<SocketAddr>,
    limits: Limits,
    conns: Vec<Conn>,
    per_source: HashMap<u128, usize>,
    rest_until: Option<Instant>,
    counts: Counts,
    reported: Instant,
}

/// The key a source is counted under: an IPv4 address, or an IPv6 /64 (one host owns a /64).
fn source_key(ip: IpAddr) -> u128 {
    match spa_engine::stanza::canonical(ip) {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) >> 64 << 64 | 1,
    }
}

/// Whether `buf` holds a whole HTTP request line (`GET /...` up to its line end).
fn http_line_complete(buf: &[u8]) -> bool {
    is_http(buf) && buf.contains(&b'\n')
}

/// Whether `buf` starts like fwknop's HTTP knock (`GET /`, any case, as fwknopd compares).
fn is_http(buf: &[u8]) -> bool {
    buf.get(..5).is_some_and(|p| p.eq_ignore_ascii_case(b"GET /"))
}

/// The SPA packet in an HTTP knock: the request path without its `/`, up to the first white
/// space, with the client's substitutions undone (`-` to `+`, `_` to `/`), as fwknopd does.
/// `None` when `buf` is not a `GET /` request.
pub fn http_packet(buf: &[u8]) -> Option<Vec<u8>> {
    if !is_http(buf) {
        return None;
    }
    let path = &buf[5..];
    let end = path.iter().position(u8::is_ascii_whitespace).unwrap_or(path.len());
    Some(
        path[..end]
            .iter()
            .map(|&b| match b {
                b'-' => b'+',
                b'_' => b'/',
                b => b,
            })
            .collect(),
    )
}

impl TcpReceiver {
    /// Binds every address (IPv6 ones v6-only, so `0.0.0.0` and `[::]` can both be bound),
    /// non-blocking.
    pub fn bind(addresses: &[SocketAddr], limits: Limits) -> io::Result<Self> {
        let mut listeners = Vec::with_capacity(addresses.len());
        let mut locals = Vec::with_capacity(addresses.len());
        for addr in addresses {
            let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.set_reuse_address(true)?;
            #[cfg(target_os = "linux")]
            super::linux::want_tcp_ifindex(&socket, addr.is_ipv6())?;
            socket.bind(&(*addr).into())?;
            socket.listen(128)?;
            socket.set_nonblocking(true)?;
            let listener: TcpListener = socket.into();
            locals.push(listener.local_addr()?);
            listeners.push(listener);
        }
        let limits = Limits {
            max_connections: limits.max_connections.max(1),
            max_per_source: limits.max_per_source.max(1),
            ..limits
        };
        Ok(Self {
            listeners,
            locals,
            limits,
            conns: Vec::new(),
            per_source: HashMap::new(),
            rest_until: None,
            counts: Counts::default(),
            reported: Instant::now(),
        })
    }

    /// The addresses bound (with the ports the system chose for port 0).
    pub fn locals(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// Serves the listeners for ever, handing each packet to `deliver`.
    pub fn run(mut self, mut deliver: impl FnMut(&Meta, &[u8])) {
        loop {
            if let Err(e) = self.step(&mut deliver) {
                tracing::error!("tcp receiver: {e}");
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }

    /// Waits (at most a second) for something to happen, then reads what arrived, closes what
    /// is complete or past its deadline (delivering the packets), and accepts new connections.
    pub fn step(&mut self, deliver: &mut dyn FnMut(&Meta, &[u8])) -> io::Result<()> {
        let now = Instant::now();
        let resting = self.rest_until.is_some_and(|t| now < t);
        let mut wait = MAX_WAIT;
        for c in &self.conns {
            wait = wait.min(c.deadline.saturating_duration_since(now));
        }
        if let Some(t) = self.rest_until.filter(|_| resting) {
            wait = wait.min(t.saturating_duration_since(now));
        }
        let listening = if resting { 0 } else { self.listeners.len() };
        let mut fds: Vec<libc::pollfd> = self.listeners[..listening]
            .iter()
            .map(|l| l.as_raw_fd())
            .chain(self.conns.iter().map(|c| c.stream.as_raw_fd()))
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // Round up, so a deadline a fraction of a millisecond away is not polled for 0 ms
        // again and again.
        let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        let now = Instant::now();
        // Read what arrived; finish what is complete or out of time.
        let mut done = Vec::new();
        for (i, c) in self.conns.iter_mut().enumerate() {
            let ready = fds.get(listening + i).is_some_and(|f| f.revents != 0);
            let state = if ready { read_some(c, self.limits.http) } else { Progress::Pending };
            match state {
                Progress::Pending if now >= c.deadline => {
                    if c.buf.is_empty() {
                        self.counts.timed_out += 1;
                        done.push((i, Progress::Empty));
                    } else {
                        done.push((i, Progress::Complete));
                    }
                }
                Progress::Pending => {}
                other => done.push((i, other)),
            }
        }
        for (i, state) in done.into_iter().rev() {
            let c = self.remove(i);
            if state == Progress::Complete {
                finish(c, self.limits.http, deliver);
            }
        }
        // Accept.
        if !resting {
            self.rest_until = None;
            let ready: Vec<usize> = fds
                .iter()
                .take(listening)
                .enumerate()
                .filter(|(_, f)| f.revents != 0)
                .map(|(l, _)| l)
                .collect();
            for l in ready {
                self.accept_from(l, now, deliver);
            }
        }
        self.report(now);
        Ok(())
    }

    /// Accepts what is waiting on listener `l` (a burst at most).
    fn accept_from(&mut self, l: usize, now: Instant, deliver: &mut dyn FnMut(&Meta, &[u8])) {
        for _ in 0..ACCEPT_BURST {
            let (stream, peer) = match self.listeners[l].accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {
                    continue;
                }
                Err(e) => {
                    // Out of file descriptors (or memory): the connection waits in the
                    // backlog; rest rather than spin on a listener that stays readable.
                    tracing::warn!("tcp {}: accept: {e}", self.locals[l]);
                    self.rest_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            };
            let key = source_key(peer.ip());
            if self.per_source.get(&key).copied().unwrap_or(0) >= self.limits.max_per_source {
                self.counts.over_source_limit += 1;
                continue;
            }
            if self.conns.len() >= self.limits.max_connections {
                // Make room: the oldest goes (what it sent so far, if anything, is read first
                // and taken as its packet).
                if let Some(oldest) =
                    self.conns.iter().enumerate().min_by_key(|(_, c)| c.accepted).map(|(i, _)| i)
                {
                    let mut c = self.remove(oldest);
                    if read_some(&mut c, self.limits.http) != Progress::Empty && !c.buf.is_empty() {
                        finish(c, self.limits.http, deliver);
                    } else {
                        self.counts.evicted += 1;
                    }
                }
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let local = stream.local_addr().map_or(self.locals[l].ip(), |a| a.ip());
            #[cfg(target_os = "linux")]
            let ifindex = super::linux::tcp_ifindex(&stream, local.is_ipv6());
            #[cfg(not(target_os = "linux"))]
            let ifindex = 0;
            let mut c = Conn {
                stream,
                peer: peer.ip(),
                local,
                ifindex,
                buf: Vec::new(),
                accepted: now,
                deadline: now + self.limits.read_timeout,
            };
            // The packet usually arrives with the handshake: read it now.
            match read_some(&mut c, self.limits.http) {
                Progress::Pending => {
                    *self.per_source.entry(key).or_default() += 1;
                    self.conns.push(c);
                }
                Progress::Complete => finish(c, self.limits.http, deliver),
                Progress::Empty => {}
            }
        }
    }

    /// Takes connection `i` out of the table.
    fn remove(&mut self, i: usize) -> Conn {
        let c = self.conns.swap_remove(i);
        let key = source_key(c.peer);
        if let Some(n) = self.per_source.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&key);
            }
        }
        c
    }

    /// Logs, at most once a minute, how many connections were closed without a packet.
    fn report(&mut self, now: Instant) {
        if now.duration_since(self.reported) < REPORT_EVERY {
            return;
        }
        self.reported = now;
        let c = std::mem::take(&mut self.counts);
        if c.over_source_limit + c.evicted + c.timed_out > 0 {
            tracing::warn!(
                "tcp receiver, last minute: {} connections refused (over the per-source limit), {} closed \
                 to make room, {} idle past the read timeout",
                c.over_source_limit,
                c.evicted,
                c.timed_out
            );
        }
    }

    /// Connections open now (for tests and status).
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }
}

/// Reads what the connection has (without blocking) and says whether the packet is complete.
fn read_some(c: &mut Conn, http: bool) -> Progress {
    let mut chunk = [0u8; 2048];
    loop {
        let room = (MAX_REQUEST + 1).saturating_sub(c.buf.len());
        if room == 0 {
            return Progress::Complete;
        }
        let want = room.min(chunk.len());
        match c.stream.read(&mut chunk[..want]) {
            Ok(0) => return if c.buf.is_empty() { Progress::Empty } else { Progress::Complete },
            Ok(n) => {
                c.buf.extend_from_slice(&chunk[..n]);
                if http && http_line_complete(&c.buf) {
                    return Progress::Complete;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Progress::Pending,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Reset by the peer: what it sent still counts.
            Err(_) => return if c.buf.is_empty() { Progress::Empty } else { Progress::Complete },
        }
    }
}

/// Closes the connection without a word and hands its packet on (with `http`, the packet in
/// an HTTP knock; otherwise, or when it is not one, the bytes as they came).
fn finish(c: Conn, http: bool, deliver: &mut dyn FnMut(&Meta, &[u8])) {
    let Conn { stream, peer, local, ifindex, buf, .. } = c;
    drop(stream);
    let truncated = buf.len() > MAX_REQUEST;
    let bytes = &buf[..buf.len().min(MAX_REQUEST)];
    let (packet, truncated) = match http_packet(bytes).filter(|_| http) {
        // The request line was cut: what its path held is not the whole packet.
        Some(p) if truncated => (p, true),
        Some(p) => (p, false),
        None => (bytes.to_vec(), truncated),
    };
    let meta = Meta { src: peer, dst: local, buf: 0, range: (0, packet.len()), truncated, ifindex };
    deliver(&meta, &packet);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, mpsc};

    #[test]
    fn http_knocks_are_unwrapped_as_fwknopd_does() {
        let req = b"GET /ab-cd_ef+gh HTTP/1.1\r\nUser-Agent: Fwknop/2.6.10\r\nHost: x\r\n\r\n";
        assert_eq!(http_packet(req).unwrap(), b"ab+cd/ef+gh");
        assert_eq!(http_packet(b"get /xyz").unwrap(), b"xyz", "any case, cut by the deadline");
        assert_eq!(http_packet(b"GET / HTTP/1.1\r\n").unwrap(), b"");
        assert!(http_packet(b"POST /x HTTP/1.1\r\n").is_none());
        assert!(http_packet(b"GET http://gw/x HTTP/1.1\r\n").is_none());
        assert!(http_packet(b"GET").is_none());
        assert!(http_line_complete(b"GET /x HTTP/1.1\n"));
        assert!(!http_line_complete(b"GET /x HTTP/1.1"));
        assert!(!http_line_complete(b"hello\n"));
    }

    /// A receiver on loopback run by a thread until the test ends; packets come out of the
    /// channel with their source.
    struct Running {
        addr: SocketAddr,
        rx: mpsc::Receiver<(Meta, Vec<u8>)>,
        stop: Arc<AtomicBool>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn start(limits: Limits) -> Running {
        let mut r = TcpReceiver::bind(&["127.0.0.1:0".parse().unwrap()], limits).unwrap();
        let addr = r.locals()[0];
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut deliver = |m: &Meta, p: &[u8]| {
                let _ = tx.send((*m, p.to_vec()));
            };
            while !stopped.load(Ordering::Relaxed) {
                r.step(&mut deliver).unwrap();
            }
        });
        Running { addr, rx, stop }
    }

    const LIMITS: Limits =
        Limits { max_connections: 4, max_per_source: 2, read_timeout: Duration::from_secs(30), http: true };
    const PATIENCE: Duration = Duration::from_secs(20);

    /// A client socket from loopback address `from`.
    fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
        s.connect(&to.into()).unwrap();
        s.into()
    }

    /// Whether the server closed `s` without sending anything (within the patience).
    fn closed_silently(s: &mut TcpStream) -> bool {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        }
    }

    /// Whether `s` is still open (nothing to read yet, not closed).
    fn still_open(s: &mut TcpStream) -> bool {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut b = [0u8; 16];
        matches!(s.read(&mut b), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
    }

    #[test]
    fn a_packet_is_read_to_the_end_of_the_stream_and_nothing_is_answered() {
        let r = start(LIMITS);
        let mut s = connect_from([127, 0, 0, 1], r.addr);
        s.write_all(b"raw-packet").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (m, p) = r.rx.recv_timeout(PATIENCE).unwrap();
        assert_eq!(p, b"raw-packet");
        assert_eq!((m.src, m.dst, m.truncated), (IpAddr::from([127, 0, 0, 1]), r.addr.ip(), false));
        #[cfg(target_os = "linux")]
        assert_eq!(super::super::interface_name(m.ifindex).as_deref(), Some("lo"), "{}", m.ifindex);
        assert!(closed_silently(&mut s));

        // HTTP: complete at the end of the request line, without waiting for the close.
        let mut s = connect_from([127, 0, 0, 1], r.addr);
        s.write_all(b"GET /a-b_c HTTP/1.1\r\nUser-Agent: Fwknop/2.6.10\r\n").unwrap();
        let (_, p) = r.rx.recv_timeout(PATIENCE).unwrap();
        assert_eq!(p, b"a+b/c");
        assert!(closed_silently(&mut s));

        // Too long: cut and marked, so the caller refuses it as too long.
        let mut s = connect_from([127, 0, 0, 1], r.addr);
        let _ = s.write_all(&vec![b'A'; MAX_REQUEST * 3]);
        let (m, p) = r.rx.recv_timeout(PATIENCE).unwrap();
        assert!(m.truncated && p.len() == MAX_REQUEST, "{} {}", m.truncated, p.len());
    }

    #[test]
    fn without_http_a_request_is_taken_as_it_came() {
        let r = start(Limits { http: false, ..LIMITS });
        let mut s = connect_from([127, 0, 0, 1], r.addr);
        s.write_all(b"GET /a-b HTTP/1.1\r\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (_, p) = r.rx.recv_timeout(PATIENCE).unwrap();
        assert_eq!(p, b"GET /a-b HTTP/1.1\r\n");
    }

    #[test]
    fn one_source_holds_few_connections() {
        // The deadline is further away than the test waits.
        let r = start(LIMITS);
        let mut idle: Vec<TcpStream> = (0..2).map(|_| connect_from([127, 0, 0, 2], r.addr)).collect();
        // A third from the same source is closed at once; the first two stay.
        let mut third = connect_from([127, 0, 0, 2], r.addr);
        assert!(closed_silently(&mut third));
        for s in &mut idle {
            assert!(still_open(s));
        }
        // Another source is not affected.
        let mut other = connect_from([127, 0, 0, 3], r.addr);
        assert!(still_open(&mut other));
    }

    #[test]
    fn idle_connections_end_at_the_deadline() {
        let r = start(Limits { read_timeout: Duration::from_millis(300), ..LIMITS });
        let mut idle: Vec<TcpStream> = (0..2).map(|_| connect_from([127, 0, 0, 2], r.addr)).collect();
        // The idle ones are closed at their deadline, without a packet.
        for s in &mut idle {
            assert!(closed_silently(s));
        }
        assert!(r.rx.try_recv().is_err(), "an idle connection delivered something");
        // A partial packet at the deadline is taken as the packet.
        let mut s = connect_from([127, 0, 0, 2], r.addr);
        s.write_all(b"partial").unwrap();
        let (_, p) = r.rx.recv_timeout(PATIENCE).unwrap();
        assert_eq!(p, b"partial");
    }

    #[test]
    fn a_full_table_makes_room_for_the_next_knock() {
        let r = start(LIMITS);
        // Four sources fill the table with idle connections (the deadline is far away); the
        // kernel hands them over in the order they connected.
        let mut idle: Vec<TcpStream> = (10..14).map(|i| connect_from([127, 0, 0, i], r.addr)).collect();
        // A knock still gets in: the oldest idle connection is closed for it.
        let mut s = connect_from([127, 0, 0, 20], r.addr);
        s.write_all(b"knock").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (m, p) = r.rx.recv_timeout(PATIENCE).unwrap();
        assert_eq!((m.src, p.as_slice()), (IpAddr::from([127, 0, 0, 20]), &b"knock"[..]));
        assert!(closed_silently(&mut idle[0]), "the oldest was not the one closed");
        for s in &mut idle[1..] {
            assert!(still_open(s));
        }
    }
}

//! The Redis side of the shared state: connections, the replay check of the packet path, the
//! grant publisher, the revoke listener, and the command-line readers.
//!
//! Four kinds of connection, none shared between threads:
//! - a pool for the receiver threads (one per receiver, and one more so that a health check
//!   never leaves a receiver without one), kept full and checked once a second by the
//!   `redis replay` thread; a receiver takes one, sends one `SET NX PX`, and puts it back, or
//!   drops it after an error or a timeout (its late answer must never be read as the next);
//! - one for the `redis grants` thread, which publishes what the worker hands it;
//! - one for the `redis revoke` thread, subscribed to this gateway's channel;
//! - one per command (`spad list --all-gateways`, `spad revoke`).
//!
//! Each thread reconnects with a backoff (0.1 s doubling to 2 s), logs the first failure of a
//! run and then one line a minute, and logs the recovery.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use redis::{Connection, RedisError, RedisResult};
use serde_json::json;
use spa_backends::{Event, Grant, GrantId};
use spa_engine::replay::ReplayKey;

use super::{
    Claim, Keys, RevokeRequest, SharedError, Throttle, grant_value, more, parse_grant_value, parse_id,
    printable, who_asks,
};
use crate::audit::{self, Audit};
use crate::config::{Config, OnStoreDown, RedisSettings, StoreKind, is_key_name};
use crate::worker::{Msg, unix_now};

/// First wait before reconnecting; doubled after each failure.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often idle connections are checked, at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// One log line a minute, at most, while a failure lasts.
const REMIND: Duration = Duration::from_secs(60);
/// At most one line per this for failures on the packet path.
const PACKET_PATH_LOG: Duration = Duration::from_secs(10);
/// How often the gateway marker is refreshed.
const BEAT: Duration = Duration::from_secs(5);
/// How long a gateway marker outlives its last refresh.
const MARKER_TTL: Duration = Duration::from_secs(15);
/// How long the revoke listener waits for a message before checking its connection.
const LISTEN_CHECK: Duration = Duration::from_secs(30);
/// Read timeout of the command-line readers.
const CLI_READ: Duration = Duration::from_secs(5);
/// How long `spad revoke` waits for the grant to disappear.
const CONFIRM_WAIT: Duration = Duration::from_secs(5);
/// Grant operations queued for the publisher, at most; beyond that a full resync follows.
const PUBLISH_QUEUE: usize = 4096;
/// Commands per pipeline when publishing or deleting many grants.
const CHUNK: usize = 500;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Checks a `[replay.redis] url` without connecting: a scheme spad supports, a URL the client
/// can use, and no `#insecure` (certificate checks stay on).
pub fn check_url(url: &str) -> Result<(), String> {
    const USE: &str = "use redis://, rediss:// (TLS) or redis+unix:///path";
    match url.split_once("://") {
        Some(("redis" | "rediss" | "redis+unix" | "unix", _)) => {}
        Some((other, _)) => return Err(format!("the {other}:// scheme is not supported; {USE}")),
        None => return Err(format!("not a redis url; {USE}")),
    }
    let parsed = redis::parse_redis_url(url).ok_or_else(|| format!("not a redis url; {USE}"))?;
    if parsed.fragment().is_some() {
        return Err("a #fragment is not supported (certificate checks cannot be turned off)".into());
    }
    redis::Client::open(url).map(drop).map_err(|e| e.to_string())
}

/// A way to connect: the client, with the settings' timeouts.
struct Connector {
    client: redis::Client,
    /// The URL without its password, for messages.
    url: String,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Connector {
    fn new(s: &RedisSettings) -> Result<Self, SharedError> {
        // Only the ring provider is linked; make it the process default explicitly, so rustls
        // never has to guess.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = s.redacted_url();
        let read = |p: &Option<std::path::PathBuf>| {
            p.as_ref().map(|p| std::fs::read(p).map_err(|e| SharedError::ReadFile(p.clone(), e))).transpose()
        };
        let client = if s.tls_ca_file.is_some() || s.tls_cert_file.is_some() {
            let root_cert = read(&s.tls_ca_file)?;
            let client_tls = match (read(&s.tls_cert_file)?, read(&s.tls_key_file)?) {
                (Some(client_cert), Some(client_key)) => {
                    Some(redis::ClientTlsConfig { client_cert, client_key })
                }
                _ => None,
            };
            redis::Client::build_with_tls(s.url.as_str(), redis::TlsCertificates { client_tls, root_cert })
        } else {
            redis::Client::open(s.url.as_str())
        }
        .map_err(|e| SharedError::Redis(url.clone(), Box::new(e)))?;
        Ok(Self {
            client,
            url,
            timeout: Duration::from_millis(s.timeout_ms),
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
        })
    }

    /// A new connection whose reads wait at most `read` and writes at most the timeout.
    fn connect(&self, read: Duration) -> RedisResult<Connection> {
        let c = self.client.get_connection_with_timeout(self.connect_timeout)?;
        c.set_read_timeout(Some(read))?;
        c.set_write_timeout(Some(self.timeout))?;
        Ok(c)
    }

    fn error(&self, e: RedisError) -> SharedError {
        SharedError::Redis(self.url.clone(), Box::new(e))
    }
}

/// What the packet path is told while Redis cannot answer, in words.
fn consequence(policy: OnStoreDown) -> &'static str {
    match policy {
        OnStoreDown::Reject => "refused (on_store_down = \"reject\")",
        OnStoreDown::Local => "checked against this gateway's cache only (on_store_down = \"local\")",
    }
}

fn policy_name(policy: OnStoreDown) -> &'static str {
    match policy {
        OnStoreDown::Reject => "reject",
        OnStoreDown::Local => "local",
    }
}

/// The shared replay check of the packet path: a pool of ready connections, kept by the
/// `redis replay` thread.
pub struct ReplayShare {
    connector: Arc<Connector>,
    keys: Keys,
    ttl_ms: u64,
    policy: OnStoreDown,
    pool: Mutex<Vec<Connection>>,
    wanted: usize,
    wake: Sender<()>,
    failures: Mutex<Throttle>,
}

/// The `redis replay` thread's view of the connection's health.
struct Health {
    down_since: Option<Instant>,
    backoff: Duration,
    reminders: Throttle,
    last_check: Instant,
}

impl ReplayShare {
    fn start(
        connector: Arc<Connector>,
        keys: Keys,
        ttl_ms: u64,
        policy: OnStoreDown,
        wanted: usize,
        audit: Arc<Mutex<Audit>>,
    ) -> Result<Arc<Self>, SharedError> {
        let (wake, woken) = crossbeam_channel::bounded(1);
        let share = Arc::new(Self {
            connector,
            keys,
            ttl_ms,
            policy,
            pool: Mutex::new(Vec::with_capacity(wanted)),
            wanted,
            wake,
            failures: Mutex::new(Throttle::new(PACKET_PATH_LOG)),
        });
        // The first connections now, so that the first packets after "spad ready" find one;
        // a failure is left to the thread, which reports it.
        for _ in 0..wanted {
            match share.connector.connect(share.connector.timeout) {
                Ok(c) => lock(&share.pool).push(c),
                Err(_) => break,
            }
        }
        let weak = Arc::downgrade(&share);
        thread::Builder::new()
            .name("redis replay".into())
            .spawn(move || maintain(&weak, &woken, &audit))
            .map_err(SharedError::Thread)?;
        Ok(share)
    }

    /// What an authenticated packet gets while Redis cannot answer.
    pub fn policy(&self) -> OnStoreDown {
        self.policy
    }

    /// Whether a ready connection is pooled (what the next packet would find).
    pub fn connected(&self) -> bool {
        self.pooled() > 0
    }

    /// The store as `spad status` shows it: where (the URL without its password), as which
    /// gateway, and how many of the wanted connections are ready.
    pub fn status(&self) -> serde_json::Value {
        json!({
            "url": self.connector.url,
            "gateway": self.keys.gateway(),
            "connected": self.connected(),
            "connections": self.pooled(),
            "wanted": self.wanted,
            "on_store_down": policy_name(self.policy),
        })
    }

    /// Records `key` for every gateway unless one has it: `SET NX PX` on a pooled connection.
    /// Never connects, and waits for one answer at most the timeout; a connection that failed
    /// is dropped. When it failed at once because it was dead (as every pooled connection is
    /// after a Redis restart, until the next check), the next pooled one is tried, within the
    /// same timeout.
    pub fn claim(&self, key: &ReplayKey) -> Claim {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.replay(key)).arg(self.keys.gateway()).arg("NX").arg("PX").arg(self.ttl_ms);
        let started = Instant::now();
        loop {
            let Some(mut con) = lock(&self.pool).pop() else {
                self.report(None);
                return Claim::Down;
            };
            match cmd.query::<Option<String>>(&mut con) {
                Ok(answer) => {
                    lock(&self.pool).push(con);
                    return if answer.is_some() { Claim::New } else { Claim::Seen };
                }
                Err(e) => {
                    drop(con);
                    let _ = self.wake.try_send(());
                    if e.is_connection_dropped()
                        && !e.is_timeout()
                        && started.elapsed() < self.connector.timeout
                    {
                        continue;
                    }
                    self.report(Some(&e));
                    return Claim::Down;
                }
            }
        }
    }

    /// Logs a failure of the packet path (one line per period).
    fn report(&self, e: Option<&RedisError>) {
        if let Some(n) = lock(&self.failures).allow() {
            let what = e.map_or_else(|| "no connection".to_owned(), |e| e.to_string());
            tracing::error!(
                "shared replay check at {}: {what}; authenticated packets are {}{}",
                self.connector.url,
                consequence(self.policy),
                more(n)
            );
        }
    }

    fn pooled(&self) -> usize {
        lock(&self.pool).len()
    }

    /// One step of the `redis replay` thread; returns how long to wait before the next.
    fn step(&self, h: &mut Health, audit: &Mutex<Audit>) -> Duration {
        if self.pooled() < self.wanted {
            match self.connector.connect(self.connector.timeout) {
                Ok(c) => {
                    lock(&self.pool).push(c);
                    h.backoff = MIN_BACKOFF;
                    if let Some(since) = h.down_since.take() {
                        let secs = since.elapsed().as_secs();
                        tracing::info!(
                            "Redis at {} answers again after {secs} s; replays are shared again",
                            self.connector.url
                        );
                        lock(audit).daemon(
                            "replay_store_reachable",
                            json!({"url": self.connector.url, "after_seconds": secs}),
                        );
                        lock(&self.failures).reset();
                    }
                    return Duration::ZERO;
                }
                Err(e) => {
                    match h.down_since {
                        None => {
                            h.down_since = Some(Instant::now());
                            h.reminders.reset();
                            h.reminders.allow();
                            tracing::error!(
                                "Redis at {} cannot be reached: {e}; authenticated packets are {} until it answers",
                                self.connector.url,
                                consequence(self.policy)
                            );
                            lock(audit).daemon(
                                "replay_store_unreachable",
                                json!({
                                    "url": self.connector.url,
                                    "error": e.to_string(),
                                    "on_store_down": policy_name(self.policy),
                                }),
                            );
                        }
                        Some(since) => {
                            if let Some(n) = h.reminders.allow() {
                                tracing::error!(
                                    "Redis at {} still cannot be reached after {} s: {e}{}",
                                    self.connector.url,
                                    since.elapsed().as_secs(),
                                    more(n)
                                );
                            }
                        }
                    }
                    let wait = h.backoff;
                    h.backoff = (h.backoff * 2).min(MAX_BACKOFF);
                    return wait;
                }
            }
        }
        if h.last_check.elapsed() >= CHECK_EVERY {
            h.last_check = Instant::now();
            // Each idle connection once, the least recently used first, one at a time: the
            // pool holds one more than the receivers, so none of them finds it empty.
            for _ in 0..self.pooled() {
                let Some(mut c) = ({
                    let mut pool = lock(&self.pool);
                    (!pool.is_empty()).then(|| pool.remove(0))
                }) else {
                    break;
                };
                match redis::cmd("PING").query::<String>(&mut c) {
                    Ok(_) => lock(&self.pool).push(c),
                    Err(e) => tracing::debug!("a connection to Redis failed its check: {e}"),
                }
            }
            if self.pooled() < self.wanted {
                return Duration::ZERO;
            }
        }
        CHECK_EVERY.saturating_sub(h.last_check.elapsed())
    }
}

/// The `redis replay` thread: keeps the pool full and checked, until the store is dropped.
fn maintain(weak: &Weak<ReplayShare>, woken: &Receiver<()>, audit: &Mutex<Audit>) {
    let mut h = Health {
        down_since: None,
        backoff: MIN_BACKOFF,
        reminders: Throttle::new(REMIND),
        last_check: Instant::now(),
    };
    loop {
        let Some(share) = weak.upgrade() else { return };
        let wait = share.step(&mut h, audit);
        drop(share);
        if !wait.is_zero() {
            let _ = woken.recv_timeout(wait);
        }
    }
}

/// Work for the `redis grants` thread.
enum PubOp {
    /// A grant was made or extended.
    Put(Box<Grant>),
    /// A grant ended.
    Del(GrantId),
    /// Every live grant, after a reconnection or a lost operation.
    Snapshot(Vec<Grant>),
    /// Stop: remove the gateway marker, then confirm.
    Stop(Sender<()>),
}

/// The worker's handle on the `redis grants` thread. Nothing here waits for Redis: operations
/// are queued, and when one cannot be (the queue is full) or the connection was lost, the
/// thread asks for a snapshot of every live grant instead.
pub struct Publisher {
    tx: Sender<PubOp>,
    resync: Arc<AtomicBool>,
}

impl Publisher {
    fn start(connector: Arc<Connector>, keys: Keys) -> Result<Self, SharedError> {
        let (tx, rx) = crossbeam_channel::bounded(PUBLISH_QUEUE);
        let resync = Arc::new(AtomicBool::new(false));
        let flag = resync.clone();
        thread::Builder::new()
            .name("redis grants".into())
            .spawn(move || publish(&connector, &keys, &rx, &flag))
            .map_err(SharedError::Thread)?;
        Ok(Self { tx, resync })
    }

    fn send(&self, op: PubOp) {
        if self.tx.try_send(op).is_err() {
            self.resync.store(true, Ordering::Release);
        }
    }

    /// Publishes what the driver reports: grants made or extended, grants ended.
    pub fn events(&self, events: &[Event]) {
        for e in events {
            match e {
                Event::Granted(g) | Event::Extended(g) => self.send(PubOp::Put(Box::new(g.clone()))),
                Event::Ended { grant, .. } => self.send(PubOp::Del(grant.id)),
                _ => {}
            }
        }
    }

    /// Whether the thread needs every live grant (it then gets them from [`Self::snapshot`]).
    pub fn wants_snapshot(&self) -> bool {
        self.resync.swap(false, Ordering::AcqRel)
    }

    /// Hands over every live grant: what Redis holds for this gateway becomes exactly that.
    pub fn snapshot<'a>(&self, live: impl Iterator<Item = &'a Grant>) {
        self.send(PubOp::Snapshot(live.cloned().collect()));
    }

    /// Waits (at most `wait`) until what was queued is published and the gateway marker is
    /// removed.
    pub fn stop(&self, wait: Duration) {
        let (done, confirmed) = crossbeam_channel::bounded(1);
        if self.tx.send_timeout(PubOp::Stop(done), wait).is_ok() {
            let _ = confirmed.recv_timeout(wait);
        }
    }
}

fn scan(c: &mut Connection, pattern: &str) -> RedisResult<Vec<String>> {
    let mut cursor = 0u64;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query(c)?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Adds "publish `g`" to a pipeline: `SET` with the time it has left, or `DEL` once it has
/// none.
fn put(p: &mut redis::Pipeline, keys: &Keys, g: &Grant, now_ms: u64) {
    let key = keys.grant(keys.gateway(), g.id);
    let left = g.deadline.saturating_mul(1000).saturating_sub(now_ms);
    if left == 0 {
        p.cmd("DEL").arg(key).ignore();
    } else {
        p.cmd("SET").arg(key).arg(grant_value(keys.gateway(), g)).arg("PX").arg(left).ignore();
    }
}

fn apply(c: &mut Connection, keys: &Keys, op: PubOp, marker: &str) -> RedisResult<()> {
    match op {
        PubOp::Put(g) => {
            let mut p = redis::pipe();
            put(&mut p, keys, &g, unix_ms());
            p.exec(c)
        }
        PubOp::Del(id) => redis::cmd("DEL").arg(keys.grant(keys.gateway(), id)).exec(c),
        PubOp::Snapshot(live) => {
            let mine = scan(c, &keys.grants_of(Some(keys.gateway())))?;
            let wanted: HashSet<String> = live.iter().map(|g| keys.grant(keys.gateway(), g.id)).collect();
            let stale: Vec<&String> = mine.iter().filter(|k| !wanted.contains(*k)).collect();
            for chunk in stale.chunks(CHUNK) {
                redis::cmd("DEL").arg(chunk).exec(c)?;
            }
            let now = unix_ms();
            for chunk in live.chunks(CHUNK) {
                let mut p = redis::pipe();
                for g in chunk {
                    put(&mut p, keys, g, now);
                }
                p.exec(c)?;
            }
            redis::cmd("SET")
                .arg(keys.marker(keys.gateway()))
                .arg(marker)
                .arg("PX")
                .arg(MARKER_TTL.as_millis() as u64)
                .exec(c)?;
            tracing::debug!("published {} live grants ({} stale ones removed)", live.len(), stale.len());
            Ok(())
        }
        PubOp::Stop(_) => Ok(()),
    }
}

/// The `redis grants` thread.
fn publish(connector: &Connector, keys: &Keys, rx: &Receiver<PubOp>, resync: &AtomicBool) {
    let marker =
        json!({"pid": std::process::id(), "started": unix_now(), "version": env!("CARGO_PKG_VERSION")})
            .to_string();
    let mut con: Option<Connection> = None;
    let mut backoff = MIN_BACKOFF;
    let mut next_try = Instant::now();
    let mut failures = Throttle::new(REMIND);
    let mut down = false;
    let mut last_beat = Instant::now();
    let mut fail = |e: &RedisError, down: &mut bool| {
        if !*down {
            failures.reset();
        }
        *down = true;
        if let Some(n) = failures.allow() {
            tracing::error!(
                "publishing grants to Redis at {}: {e}; they are published again once it answers{}",
                connector.url,
                more(n)
            );
        }
    };
    loop {
        if con.is_none() && Instant::now() >= next_try {
            match connector.connect(connector.timeout) {
                Ok(c) => {
                    con = Some(c);
                    backoff = MIN_BACKOFF;
                    // Whatever happened meanwhile, Redis gets every live grant again.
                    resync.store(true, Ordering::Release);
                    last_beat = Instant::now();
                    if down {
                        tracing::info!("grants are published to Redis at {} again", connector.url);
                        down = false;
                    }
                }
                Err(e) => {
                    fail(&e, &mut down);
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if let Some(c) = con.as_mut()
            && last_beat.elapsed() >= BEAT
        {
            last_beat = Instant::now();
            // The marker is refreshed only while it exists: gone (Redis restarted empty, or
            // was flushed), every live grant is published again with it.
            let beat = redis::cmd("SET")
                .arg(keys.marker(keys.gateway()))
                .arg(&marker)
                .arg("XX")
                .arg("PX")
                .arg(MARKER_TTL.as_millis() as u64)
                .query::<Option<String>>(c);
            match beat {
                Ok(Some(_)) => {}
                Ok(None) => resync.store(true, Ordering::Release),
                Err(e) => {
                    con = None;
                    fail(&e, &mut down);
                }
            }
        }
        let mut wait = BEAT.saturating_sub(last_beat.elapsed());
        if con.is_none() {
            wait = wait.min(next_try.saturating_duration_since(Instant::now()));
        }
        match rx.recv_timeout(wait.max(Duration::from_millis(10))) {
            Ok(PubOp::Stop(done)) => {
                if let Some(c) = con.as_mut() {
                    let _ = redis::cmd("DEL").arg(keys.marker(keys.gateway())).exec(c);
                }
                let _ = done.send(());
                return;
            }
            // While there is no connection an operation is dropped: the snapshot that follows
            // the reconnection covers it.
            Ok(op) => {
                if let Some(c) = con.as_mut()
                    && let Err(e) = apply(c, keys, op, &marker)
                {
                    con = None;
                    next_try = Instant::now() + backoff;
                    fail(&e, &mut down);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The `redis revoke` thread: subscribed to this gateway's channel, it hands each well-formed
/// request to the worker. Reconnects (and resubscribes) with a backoff; a quiet connection is
/// checked with a PING every [`LISTEN_CHECK`].
fn listen(connector: &Connector, channel: &str, worker: &Sender<Msg>) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = Throttle::new(REMIND);
    let mut malformed = Throttle::new(PACKET_PATH_LOG);
    let mut down = false;
    let mut fail = |e: &RedisError, down: &mut bool| {
        if !*down {
            failures.reset();
        }
        *down = true;
        if let Some(n) = failures.allow() {
            tracing::error!(
                "listening for revokes on {channel} at {}: {e}; retrying{}",
                connector.url,
                more(n)
            );
        }
    };
    loop {
        match connector.connect(LISTEN_CHECK) {
            Err(e) => fail(&e, &mut down),
            Ok(mut con) => {
                let mut ps = con.as_pubsub();
                match ps.subscribe(channel) {
                    Err(e) => fail(&e, &mut down),
                    Ok(()) => {
                        backoff = MIN_BACKOFF;
                        if down {
                            tracing::info!("listening for revokes on {channel} again");
                            down = false;
                        } else {
                            tracing::info!("listening for revokes on {channel}");
                        }
                        loop {
                            match ps.get_message() {
                                Ok(m) => {
                                    if !hand_over(m.get_payload_bytes(), channel, worker, &mut malformed) {
                                        return;
                                    }
                                }
                                Err(e) if e.is_timeout() => {
                                    if let Err(e) = ps.ping::<redis::Value>() {
                                        fail(&e, &mut down);
                                        break;
                                    }
                                }
                                Err(e) => {
                                    fail(&e, &mut down);
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Passes one channel message to the worker; false once the worker is gone (spad stops).
fn hand_over(payload: &[u8], channel: &str, worker: &Sender<Msg>, malformed: &mut Throttle) -> bool {
    let Some(r) = RevokeRequest::decode(payload) else {
        if let Some(n) = malformed.allow() {
            tracing::warn!("ignored a message on {channel} that is not a revoke request{}", more(n));
        }
        return true;
    };
    tracing::info!("revoke of {} asked on {channel} by {:?}", r.id, r.by);
    match worker.try_send(Msg::Revoke { id: r.id, by: r.by }) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            tracing::error!("revoke of {} dropped: the worker's queue is full", r.id);
            true
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

/// What a started shared store hands the daemon.
pub struct Started {
    /// For the receiver threads.
    pub replay: Arc<ReplayShare>,
    /// For the worker.
    pub publisher: Publisher,
}

/// `[replay.redis]` when the configuration shares state.
fn settings(c: &Config) -> Option<&RedisSettings> {
    c.replay.redis.as_ref().filter(|_| c.replay.store == StoreKind::Redis)
}

/// Starts the shared store's threads for a daemon with `receivers` receiver threads, whose
/// worker takes messages on `worker`. `None` when the configuration does not share state. An
/// unreachable Redis is not an error here: it is reported, retried, and `on_store_down`
/// applies meanwhile.
pub fn start(
    c: &Config,
    receivers: usize,
    audit: Arc<Mutex<Audit>>,
    worker: Sender<Msg>,
) -> Result<Option<Started>, SharedError> {
    let Some(s) = settings(c) else { return Ok(None) };
    let connector = Arc::new(Connector::new(s)?);
    let keys = Keys::new(s);
    tracing::info!(
        "replays and grants are shared through Redis at {} as gateway {} (on_store_down = {:?})",
        connector.url,
        keys.gateway(),
        policy_name(s.on_store_down)
    );
    let ttl_ms = 2 * c.replay.max_packet_age * 1000;
    let replay = ReplayShare::start(
        connector.clone(),
        keys.clone(),
        ttl_ms,
        s.on_store_down,
        receivers.max(1) + 1,
        audit,
    )?;
    let publisher = Publisher::start(connector.clone(), keys.clone())?;
    let channel = keys.revoke_channel(keys.gateway());
    thread::Builder::new()
        .name("redis revoke".into())
        .spawn(move || listen(&connector, &channel, &worker))
        .map_err(SharedError::Thread)?;
    Ok(Some(Started { replay, publisher }))
}

/// A connection for a command, with its names.
fn command_connection(c: &Config, what: &'static str) -> Result<(Connector, Connection, Keys), SharedError> {
    let s = settings(c).ok_or(SharedError::NotShared(what))?;
    let connector = Connector::new(s)?;
    let con = connector.connect(CLI_READ).map_err(|e| connector.error(e))?;
    Ok((connector, con, Keys::new(s)))
}

/// `spad list --all-gateways`: the live grants every gateway publishes, and which gateways
/// are up. Values that are not grants (anyone who can write to Redis chose them) are skipped
/// and counted.
pub fn list_all(c: &Config, json: bool) -> Result<(), SharedError> {
    let (connector, mut con, keys) = command_connection(c, "spad list --all-gateways")?;
    let err = |e| connector.error(e);
    let names = scan(&mut con, &keys.grants_of(None)).map_err(err)?;
    let mut rows: Vec<(String, Grant)> = Vec::new();
    let mut skipped = 0usize;
    for chunk in names.chunks(CHUNK) {
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(chunk).query(&mut con).map_err(err)?;
        for (name, value) in chunk.iter().zip(values) {
            // Gone since the scan: it ended meanwhile.
            let Some(value) = value else { continue };
            match parse_grant_value(&value) {
                Some((gw, g)) if *name == keys.grant(&gw, g.id) => rows.push((gw, g)),
                _ => skipped += 1,
            }
        }
    }
    let now = unix_now();
    rows.retain(|(_, g)| g.deadline > now);
    rows.sort_by(|(a, g), (b, h)| (a, g.deadline, g.id).cmp(&(b, h.deadline, h.id)));
    let mut up: Vec<String> = scan(&mut con, &keys.markers())
        .map_err(err)?
        .into_iter()
        .filter_map(|k| k.rsplit(':').next().filter(|g| is_key_name(g, false)).map(str::to_owned))
        .collect();
    up.sort();
    for (gw, g) in &rows {
        if json {
            let mut v = serde_json::to_value(g).unwrap_or_default();
            v["id"] = json!(g.id.to_string());
            v["gateway"] = json!(gw);
            v["state"] = json!("live");
            println!("{v}");
        } else {
            println!(
                "{gw:<16} {}  {:<39} {:<24} expires {} ({}s left)  stanza {}  user {}",
                g.id,
                g.source,
                g.access.to_string(),
                audit::rfc3339(g.deadline, 0),
                g.remaining(now),
                printable(&g.stanza),
                printable(&g.username)
            );
        }
    }
    if !json {
        if rows.is_empty() {
            println!("no active grants on any gateway");
        }
        if up.is_empty() {
            println!("no gateway is connected");
        } else {
            println!("gateways connected: {}", up.join(", "));
        }
    }
    if skipped > 0 {
        eprintln!("warning: skipped {skipped} value(s) under {} that are not grants", keys.grants_of(None));
    }
    Ok(())
}

/// `spad revoke [--gateway NAME] ID`: asks the gateway's spad, through its channel, to revoke
/// one of its grants, and waits (a few seconds) until the grant is no longer published.
pub fn send_revoke(c: &Config, gateway: Option<&str>, id: &str) -> Result<(), SharedError> {
    let (connector, mut con, keys) = command_connection(c, "spad revoke")?;
    let err = |e| connector.error(e);
    let id = parse_id(id).ok_or_else(|| SharedError::BadId(id.to_owned()))?;
    let gateway = gateway.unwrap_or(keys.gateway()).to_owned();
    if !is_key_name(&gateway, false) {
        return Err(SharedError::BadGateway(gateway));
    }
    let key = keys.grant(&gateway, id);
    let published = |con: &mut Connection| redis::cmd("EXISTS").arg(&key).query::<bool>(con);
    if !published(&mut con).map_err(err)? {
        return Err(SharedError::NoSuchGrant(gateway, id));
    }
    let channel = keys.revoke_channel(&gateway);
    let message = RevokeRequest { id, by: who_asks() }.encode();
    let listeners: u64 = redis::cmd("PUBLISH").arg(&channel).arg(message).query(&mut con).map_err(err)?;
    if listeners == 0 {
        return Err(SharedError::NoListener(gateway, channel));
    }
    let start = Instant::now();
    while start.elapsed() < CONFIRM_WAIT {
        thread::sleep(Duration::from_millis(50));
        if !published(&mut con).map_err(err)? {
            println!("revoked grant {id} on gateway {gateway}");
            return Ok(());
        }
    }
    Err(SharedError::NotConfirmed(gateway, id))
}

//! Replays and grants shared between gateways (`[replay] store = "redis"`).
//!
//! Sites that run several gateways with the same SPA keys share one Redis, so that:
//! - a packet accepted at one gateway is a replay at all of them. Once the engine has
//!   authenticated a packet and this spad's own cache has not seen it, the packet is accepted
//!   only if `SET <prefix>:replay:<digest> <gateway> NX PX <2 × max_packet_age>` succeeds: one
//!   round trip per authenticated packet, none for junk (refused before any cryptography, or by
//!   the HMAC) and none for a replay this spad has seen (its cache answers first);
//! - the grants of every gateway are visible in one place: each spad publishes its live grants
//!   as `<prefix>:grant:<gateway>:<id>` (the grant's public facts as JSON, expiring with the
//!   grant) and deletes them when they end; `<prefix>:gateway:<gateway>` says which gateways
//!   are up; `spad list --all-gateways` reads them;
//! - a grant can be revoked from anywhere: each spad listens on the channel
//!   `<prefix>:revoke:<gateway>` and revokes what it is told there through its worker
//!   (`spad revoke --gateway NAME ID` publishes there). Who may publish is Redis's ACL.
//!
//! Redis holds digests and public grant facts only: no key, no plaintext. The digest is the
//! first 128 bits of SHA-256 of the packet's wire text, as in the local cache and journal.
//!
//! The local cache and its journal stay in front: a restart still refuses what this spad has
//! seen, whatever Redis has forgotten. The packet path never connects and never waits longer
//! than `timeout_ms`: connections are made and checked by a thread of their own, and while
//! there is none the packet gets `on_store_down` at once (`reject`: refused as
//! `replay_store_down`; `local`: checked against the local cache only and audited as
//! `replay_store_degraded`).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use spa_backends::{Grant, GrantId};
use spa_engine::replay::{Insert, ReplayKey, ReplayStore, stored_key};

use crate::config::{OnStoreDown, RedisSettings, is_key_name};
use crate::state::PersistentReplay;

#[cfg(feature = "replay-redis")]
mod client;
#[cfg(feature = "replay-redis")]
pub use self::client::{Publisher, ReplayShare, Started, check_url, list_all, send_revoke, start};

/// Whether this build can share state through Redis (the `replay-redis` feature).
pub const AVAILABLE: bool = cfg!(feature = "replay-redis");

/// Longest grant value read back from Redis; a longer one is skipped (anyone who can write
/// there chose it).
const MAX_VALUE: usize = 16 * 1024;
/// Longest revoke message read from the channel.
const MAX_MESSAGE: usize = 1024;
/// Longest `by` text of a revoke message.
const MAX_BY: usize = 128;

/// Why the shared store could not be used from the command line or at start.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The configuration does not use the shared store.
    #[error("{0} needs [replay] store = \"redis\"")]
    NotShared(&'static str),
    /// This build lacks the `replay-redis` feature.
    #[error("this spad was built without the replay-redis feature")]
    NotBuilt,
    /// A TLS file could not be read.
    #[error("cannot read {0}")]
    ReadFile(std::path::PathBuf, #[source] std::io::Error),
    /// Redis refused or failed a request (the URL is shown without its password).
    #[error("redis at {0}")]
    Redis(String, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// A grant id is not 16 hexadecimal digits.
    #[error("{0:?} is not a grant id (16 hexadecimal digits, as spad list shows)")]
    BadId(String),
    /// A gateway name that cannot be in a key.
    #[error("{0:?} is not a gateway name (1 to 64 letters, digits, '.', '_' or '-')")]
    BadGateway(String),
    /// The gateway publishes no such grant.
    #[error("gateway {0} publishes no grant {1} (spad list --all-gateways shows what it has)")]
    NoSuchGrant(String, GrantId),
    /// Nobody listens on the gateway's channel: it is not running, or not connected.
    #[error("no spad of gateway {0} is listening on {1}; is it running and connected to redis?")]
    NoListener(String, String),
    /// A thread of the shared store could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// The revoke was delivered but the grant was still published after the wait.
    #[error("gateway {0} got the revoke of {1}, but the grant is still published; see its log")]
    NotConfirmed(String, GrantId),
}

/// Key and channel names of one gateway under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    gateway: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Keys {
    /// The names for the configured prefix and gateway.
    pub fn new(s: &RedisSettings) -> Self {
        Self { prefix: s.prefix.clone(), gateway: s.gateway().to_owned() }
    }

    /// This gateway's name.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// `<prefix>:replay:<digest>`: the record that a packet was accepted somewhere.
    pub fn replay(&self, key: &ReplayKey) -> String {
        format!("{}:replay:{}", self.prefix, hex(&stored_key(key)))
    }

    /// `<prefix>:grant:<gateway>:<id>`.
    pub fn grant(&self, gateway: &str, id: GrantId) -> String {
        format!("{}:grant:{gateway}:{id}", self.prefix)
    }

    /// The pattern of one gateway's grant keys (`None`: every gateway's).
    pub fn grants_of(&self, gateway: Option<&str>) -> String {
        format!("{}:grant:{}:*", self.prefix, gateway.unwrap_or("*"))
    }

    /// `<prefix>:gateway:<gateway>`: present while the gateway's spad runs and is connected.
    pub fn marker(&self, gateway: &str) -> String {
        format!("{}:gateway:{gateway}", self.prefix)
    }

    /// The pattern of every gateway marker.
    pub fn markers(&self) -> String {
        format!("{}:gateway:*", self.prefix)
    }

    /// `<prefix>:revoke:<gateway>`: the channel a gateway's spad takes revokes from.
    pub fn revoke_channel(&self, gateway: &str) -> String {
        format!("{}:revoke:{gateway}", self.prefix)
    }
}

/// A grant as published: the facts `spad list --json` shows (the id as text), and the
/// gateway's name.
pub fn grant_value(gateway: &str, g: &Grant) -> String {
    let mut v = serde_json::to_value(g).unwrap_or_default();
    v["id"] = json!(g.id.to_string());
    v["gateway"] = json!(gateway);
    v.to_string()
}

/// Reads a published grant back: the gateway's name and the grant, or `None` for a value
/// that is too long, not JSON, or not a grant (it came from Redis, not from us).
pub fn parse_grant_value(bytes: &[u8]) -> Option<(String, Grant)> {
    if bytes.len() > MAX_VALUE {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let gateway = v.get("gateway")?.as_str()?.to_owned();
    let id = parse_id(v.get("id")?.as_str()?)?;
    if !is_key_name(&gateway, false) {
        return None;
    }
    v["id"] = json!(id.0);
    let g: Grant = serde_json::from_value(v).ok()?;
    Some((gateway, g))
}

/// A grant id as `spad list` shows it: 16 hexadecimal digits.
pub fn parse_id(s: &str) -> Option<GrantId> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok().map(GrantId))
        .flatten()
}

/// A request, taken from a gateway's revoke channel, to end one of its grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokeRequest {
    /// The grant.
    pub id: GrantId,
    /// Who asked (free text from the sender, checked to be short printable ASCII).
    pub by: String,
}

impl RevokeRequest {
    /// The message as published: `{"id": "<16 hex digits>", "by": "..."}`.
    pub fn encode(&self) -> String {
        json!({"id": self.id.to_string(), "by": self.by}).to_string()
    }

    /// Reads a message from the channel, or `None` if it is not one (too long, not JSON,
    /// a bad id, a `by` that is empty, long, or not printable ASCII).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_MESSAGE {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let id = parse_id(v.get("id")?.as_str()?)?;
        let by = v.get("by")?.as_str()?;
        let printable = by.bytes().all(|b| (b' '..=b'~').contains(&b));
        ((1..=MAX_BY).contains(&by.len()) && printable).then(|| Self { id, by: by.to_owned() })
    }
}

/// Who runs this command, for the `by` of a revoke: `user@host`, printable ASCII only.
pub fn who_asks() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
    let host = crate::config::hostname().unwrap_or_else(|| "?".into());
    let text: String = format!("{user}@{host} (spad revoke)")
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(MAX_BY)
        .collect();
    text
}

/// What the shared store said about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// No gateway has accepted it: now recorded for all of them.
    New,
    /// A gateway accepted it already: a replay.
    Seen,
    /// No answer in time (no connection, an error, a timeout).
    Down,
}

/// The replay store a receiver thread hands the engine: this spad's cache (and journal)
/// first, then the shared store for packets that are new here. One lock per call on the local
/// side, none held during the round trip.
pub struct Replays<'a> {
    local: &'a Mutex<PersistentReplay>,
    shared: Option<&'a ReplayShare>,
    degraded: bool,
    errors: u64,
}

impl<'a> Replays<'a> {
    /// The local cache, and the shared store if one is configured.
    pub fn new(local: &'a Mutex<PersistentReplay>, shared: Option<&'a ReplayShare>) -> Self {
        Self { local, shared, degraded: false, errors: 0 }
    }

    /// How many times a store failed (the journal could not be written, the shared store did
    /// not answer) since this was made.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Whether a packet was let through on the local cache alone because the shared store
    /// could not answer (`on_store_down = "local"`).
    pub fn degraded(&self) -> bool {
        self.degraded
    }
}

impl ReplayStore for Replays<'_> {
    fn contains(&self, key: &ReplayKey, now: u64) -> bool {
        self.local.lock().unwrap_or_else(PoisonError::into_inner).contains(key, now)
    }

    /// The local cache first (so two copies of one packet on two sockets never both reach
    /// Redis); a packet new there is new only if Redis says so too. A packet refused because
    /// Redis is down stays remembered locally, like one whose journal line failed.
    fn insert(&mut self, key: ReplayKey, now: u64) -> Insert {
        let here = self.local.lock().unwrap_or_else(PoisonError::into_inner).insert(key, now);
        if here == Insert::Unwritable {
            self.errors += 1;
        }
        let (Insert::New, Some(shared)) = (here, self.shared) else { return here };
        match shared.claim(&key) {
            Claim::New => Insert::New,
            Claim::Seen => Insert::Seen,
            Claim::Down => match shared.policy() {
                OnStoreDown::Reject => {
                    self.errors += 1;
                    Insert::Unavailable
                }
                OnStoreDown::Local => {
                    self.errors += 1;
                    self.degraded = true;
                    Insert::New
                }
            },
        }
    }
}

/// At most one log line per period for a repeated failure, with the count of those left out.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// One line per `every`.
    pub fn new(every: Duration) -> Self {
        Self { every, last: None, suppressed: 0 }
    }

    /// `Some(n)` when a line may be written now (`n` were left out since the last one).
    pub fn allow(&mut self) -> Option<u64> {
        if self.last.is_some_and(|l| l.elapsed() < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Forgets the last line: the next failure is reported at once (after a recovery).
    pub fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

/// ` (N more like it since)` for a throttled line, or nothing.
pub fn more(n: u64) -> String {
    if n == 0 { String::new() } else { format!(" ({n} more like it since the last report)") }
}

/// Text from Redis made safe to print on a terminal: control characters escaped.
pub fn printable(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] }).collect()
}

#[cfg(not(feature = "replay-redis"))]
mod absent {
    //! The shared store's interface in a build without it: nothing can be made, and the
    //! configuration refuses `store = "redis"`.

    use std::sync::{Arc, Mutex};

    use crossbeam_channel::Sender;
    use spa_backends::{Event, Grant};
    use spa_engine::replay::ReplayKey;

    use super::{Claim, SharedError};
    use crate::audit::Audit;
    use crate::config::{Config, OnStoreDown};
    use crate::worker::Msg;

    /// The shared replay store (never made in this build).
    pub enum ReplayShare {}

    impl ReplayShare {
        /// See the Redis build.
        pub fn claim(&self, _: &ReplayKey) -> Claim {
            match *self {}
        }
        /// See the Redis build.
        pub fn policy(&self) -> OnStoreDown {
            match *self {}
        }
        /// See the Redis build.
        pub fn connected(&self) -> bool {
            match *self {}
        }
        /// See the Redis build.
        pub fn status(&self) -> serde_json::Value {
            match *self {}
        }
    }

    /// The grant publisher (never made in this build).
    pub enum Publisher {}

    impl Publisher {
        /// See the Redis build.
        pub fn events(&self, _: &[Event]) {
            match *self {}
        }
        /// See the Redis build.
        pub fn wants_snapshot(&self) -> bool {
            match *self {}
        }
        /// See the Redis build.
        pub fn snapshot<'a>(&self, _: impl Iterator<Item = &'a Grant>) {
            match *self {}
        }
        /// See the Redis build.
        pub fn stop(&self, _: std::time::Duration) {
            match *self {}
        }
    }

    /// What a started shared store hands the daemon.
    pub struct Started {
        /// For the receiver threads.
        pub replay: Arc<ReplayShare>,
        /// For the worker.
        pub publisher: Publisher,
    }

    /// Nothing to start: the configuration refused `store = "redis"` already.
    pub fn start(
        _: &Config,
        _: usize,
        _: Arc<Mutex<Audit>>,
        _: Sender<Msg>,
    ) -> Result<Option<Started>, SharedError> {
        Ok(None)
    }

    /// Any URL: the configuration refuses `store = "redis"` in this build before asking.
    pub fn check_url(_: &str) -> Result<(), String> {
        Ok(())
    }

    /// `spad list --all-gateways`.
    pub fn list_all(_: &Config, _: bool) -> Result<(), SharedError> {
        Err(SharedError::NotBuilt)
    }

    /// `spad revoke`.
    pub fn send_revoke(_: &Config, _: Option<&str>, _: &str) -> Result<(), SharedError> {
        Err(SharedError::NotBuilt)
    }
}
#[cfg(not(feature = "replay-redis"))]
pub use absent::{Publisher, ReplayShare, Started, check_url, list_all, send_revoke, start};

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::Access;

    fn grant() -> Grant {
        Grant {
            id: GrantId(0x0123_4567_89ab_cdef),
            source: "192.0.2.1".parse().unwrap(),
            source_port: None,
            packet_source: "192.0.2.1".parse().unwrap(),
            destination: None,
            access: Access::Ports(vec!["tcp/22".parse().unwrap()].into()),
            nat: None,
            created: 1,
            deadline: 100,
            stanza: "s".into(),
            username: "u".into(),
            ingress: None,
        }
    }

    #[test]
    fn a_published_grant_reads_back_and_junk_does_not() {
        let v = grant_value("gw-a", &grant());
        assert!(v.contains("\"id\":\"0123456789abcdef\""), "{v}");
        assert_eq!(parse_grant_value(v.as_bytes()), Some(("gw-a".to_owned(), grant())));
        for bad in [
            b"not json".to_vec(),
            v.replace("gw-a", "gw a").into_bytes(),
            v.replace("0123456789abcdef", "0123").into_bytes(),
            v.replace("192.0.2.1", "nowhere").into_bytes(),
            vec![b' '; MAX_VALUE + 1],
        ] {
            assert_eq!(parse_grant_value(&bad), None, "{}", String::from_utf8_lossy(&bad));
        }
    }

    #[test]
    fn revoke_messages_are_checked() {
        let r = RevokeRequest { id: GrantId(42), by: "alice@admin (spad revoke)".into() };
        assert_eq!(RevokeRequest::decode(r.encode().as_bytes()), Some(r));
        for bad in [
            r#"{"id":"000000000000002a","by":""}"#.to_owned(),
            r#"{"id":"000000000000002a","by":"a\nforged log line"}"#.to_owned(),
            r#"{"id":"000000000000002a","by":"caf\u00e9"}"#.to_owned(),
            format!(r#"{{"id":"000000000000002a","by":"{}"}}"#, "x".repeat(MAX_BY + 1)),
            r#"{"id":"2a","by":"me"}"#.to_owned(),
            r#"{"id":"zz0000000000002a","by":"me"}"#.to_owned(),
            r#"{"by":"me"}"#.to_owned(),
            "[]".to_owned(),
        ] {
            assert_eq!(RevokeRequest::decode(bad.as_bytes()), None, "{bad}");
        }
        assert!(who_asks().bytes().all(|b| (b' '..=b'~').contains(&b)));
    }

    #[test]
    fn keys_and_channels() {
        let s: RedisSettings =
            toml::from_str("url = \"redis://h\"\nprefix = \"site:x\"\ngateway = \"gw-a\"").unwrap();
        let k = Keys::new(&s);
        assert_eq!(k.replay(&[0xab; 32]), format!("site:x:replay:{}", "ab".repeat(16)));
        assert_eq!(k.grant("gw-b", GrantId(1)), "site:x:grant:gw-b:0000000000000001");
        assert_eq!(k.grants_of(None), "site:x:grant:*:*");
        assert_eq!(k.grants_of(Some("gw-a")), "site:x:grant:gw-a:*");
        assert_eq!(k.revoke_channel("gw-a"), "site:x:revoke:gw-a");
        assert_eq!(k.marker("gw-a"), "site:x:gateway:gw-a");
    }

    #[test]
    fn throttle_reports_the_first_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        t.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(t.allow(), Some(2));
        t.reset();
        assert_eq!(t.allow(), Some(0));
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
    }
}

//! The firewalld backend (`backend = "firewalld"`, options in `[firewall.firewalld]`).
//!
//! It speaks firewalld's D-Bus API directly (no `firewall-cmd` per grant) and changes only
//! firewalld's **runtime** configuration, never the permanent one.
//!
//! # What it creates
//!
//! Rich rules in one zone (`zone`, or the zone of `interface`, or the default zone), one per
//! granted port, each added with a timeout so that **firewalld removes it at the deadline by
//! itself**, even when spad is stopped or has crashed:
//!
//! ```text
//! rule priority="29140" family="ipv4" source address="198.51.100.7" port port="22" protocol="tcp" accept
//! rule priority="29140" family="ipv4" source address="198.51.100.7" forward-port port="2222" protocol="tcp" to-port="22" to-addr="192.168.77.10"
//! ```
//!
//! A rule is ours when its priority is in the reserved range `priority_min..=32767`
//! (default 16384) and its text is exactly of our shape (see [`model::parse`]); every other
//! rule in the zone is the admin's and is never touched. Positive priorities put our rules in
//! the zone's `_post` chain, after the admin's own deny rules. The priority is
//! `priority_min + deadline mod span`, so it also tells when the rule ends.
//!
//! # Inspecting and removing it by hand
//!
//! ```text
//! firewall-cmd --zone=public --list-rich-rules     # ours have priority >= 16384
//! firewall-cmd --zone=public --remove-rich-rule='rule priority="29140" family="ipv4" ...'
//! firewall-cmd --reload                            # drops every runtime rule, ours included
//! spad teardown                                    # removes ours in every zone
//! ```
//!
//! # Protection
//!
//! firewalld's zone is the protection: its target rejects what no entry allows. spad cannot
//! put that in place, so it checks it: for each port in `protect`, if the zone opens it to
//! everyone (a service, a port, a protocol, target `ACCEPT`; at runtime or in the permanent
//! configuration) the backend refuses to be built, so `spad check` and the start fail with
//! the zone and the entry named, and every later prepare (after a reload) fails the same way.
//! The check happens when the backend is built because `spad check` builds it and calls
//! nothing else; so building it needs firewalld on the bus.
//!
//! # Reloads and restarts
//!
//! `firewall-cmd --reload` and a restart of firewalld drop every runtime rule. A listener
//! thread (see [`listener`]) raises a flag on firewalld's `Reloaded` signal and on a change
//! of owner of its bus name; the next `check` (within a second) reports it as damage, and
//! the gate prepares again with every live grant (audited as `tamper` and `repaired`).
//!
//! firewalld 1.3 never cancels its rule timers on a reload: an orphaned timer later removes
//! whatever rule has its text. Re-adding a rule with the same deadline after a reload is
//! harmless (both timers fire at the deadline), and an extension changes the text (the
//! priority follows the deadline), so an orphaned timer cannot close an extended grant early
//! (tested in `tests/firewalld.rs`). The exception is a deadline exactly a multiple of the
//! span later than one orphaned by a reload; that closes the grant early (never late).
//!
//! # Source ports
//!
//! A grant bound to the client's source port (knock-and-connect with the modern format) is
//! refused with a clear error: a rich rule holds one element, so `port` and `source-port`
//! cannot be combined in one rule, and widening such a grant to the address would let in every
//! host behind the client's NAT.
//!
//! # Tampering
//!
//! Besides the signals, `check` lists the zone's rich rules every `verify_interval` seconds
//! (and after any failed change) and reports a live rule of ours that vanished.

use std::collections::BTreeMap;
use std::time::Duration;

use spa_backends::{
    Backend, BackendDescriptor, BackendError, Capabilities, Change, Grant, Health, Held, Observed,
};

pub mod bus;
pub mod config;
pub mod listener;
pub mod model;
pub mod preflight;
pub mod protect;
#[cfg(feature = "testlab")]
pub mod testlab;

pub use bus::BusAddress;
pub use config::FirewalldConfig;

use bus::Firewalld;
use listener::Listener;
use model::{Priorities, Rule};
use protect::Layer;

inventory::submit! {
    BackendDescriptor {
        name: "firewalld",
        description: "firewalld over D-Bus: runtime rich rules with firewalld's own timeouts, NAT, IPv6",
        create: spa_backends::create::<FirewalldBackend>,
        preflight: Some(preflight::preflight),
    }
}

/// The oldest firewalld this backend works with: rich-rule priorities came in 0.9.0.
pub const MIN_VERSION: (u32, u32, u32) = (0, 9, 0);

/// The firewalld backend.
#[derive(Debug)]
pub struct FirewalldBackend {
    config: FirewalldConfig,
    priorities: Priorities,
    address: BusAddress,
    timeout: Duration,
    fw: Firewalld,
    listener: Option<Listener>,
    /// The zone grants go into (resolved at build and at every prepare).
    zone: String,
    /// firewalld's version, as it reported it.
    version: String,
    prepared: bool,
    /// The rule texts we put in `zone` and their deadlines, for the verifying sample.
    expect: BTreeMap<String, u64>,
    /// When `check` next lists the zone's rules (0: at the next check).
    next_verify: u64,
}

/// `"1.3.3"` as numbers (missing parts are 0; anything else is unknown).
fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().unwrap_or(Ok(0)).ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    Some((major, minor, patch))
}

impl FirewalldBackend {
    /// Connects to firewalld on `address`, subscribes to its signals, checks its version,
    /// resolves the zone and checks the protection (see the module documentation). Changes
    /// nothing in the firewall.
    pub fn connect(config: FirewalldConfig, address: BusAddress) -> Result<Self, BackendError> {
        config.validate()?;
        let priorities = config.priorities()?;
        let timeout = Duration::from_millis(config.call_timeout_ms);
        let fw = Firewalld::new(bus::connect(&address, timeout)?);
        // Subscribed first: a reload from here on is seen.
        let listener = Listener::start(&address, timeout)?;
        let version = Self::running(&fw)?;
        let mut b = Self {
            config,
            priorities,
            address,
            timeout,
            fw,
            listener: Some(listener),
            zone: String::new(),
            version,
            prepared: false,
            expect: BTreeMap::new(),
            next_verify: 0,
        };
        b.zone = b.resolve_zone()?;
        b.check_protection()?;
        Ok(b)
    }

    /// The zone grants go into.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// firewalld's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The configuration in use.
    pub fn config(&self) -> &FirewalldConfig {
        &self.config
    }

    /// firewalld is on the bus, running, and new enough; returns its version.
    fn running(fw: &Firewalld) -> Result<String, BackendError> {
        if !fw.on_bus()? {
            return Err(BackendError::Invalid(format!(
                "firewalld is not running (no owner of {} on the system bus)",
                bus::NAME
            )));
        }
        let version = fw.property("version")?;
        match parse_version(&version) {
            Some(v) if v >= MIN_VERSION => {}
            _ => {
                return Err(BackendError::Invalid(format!(
                    "firewalld {version} is too old: the backend needs {}.{}.{} or later (rich-rule priorities)",
                    MIN_VERSION.0, MIN_VERSION.1, MIN_VERSION.2
                )));
            }
        }
        let state = fw.property("state")?;
        if state != "RUNNING" {
            return Err(BackendError::Invalid(format!("firewalld is not ready (state {state})")));
        }
        Ok(version)
    }

    fn resolve_zone(&self) -> Result<String, BackendError> {
        let zone = match (&self.config.zone, &self.config.interface) {
            (Some(z), _) => z.clone(),
            (None, Some(i)) => match self.fw.zone_of_interface(i)? {
                z if z.is_empty() => self.fw.default_zone()?,
                z => z,
            },
            (None, None) => self.fw.default_zone()?,
        };
        if !self.fw.zones()?.contains(&zone) {
            return Err(BackendError::Invalid(format!("firewalld has no zone {zone:?}")));
        }
        Ok(zone)
    }

    /// Refuses when the zone opens a protected port to everyone, now or after a reload.
    fn check_protection(&self) -> Result<(), BackendError> {
        let protect = &self.config.protect;
        if protect.is_empty() {
            return Ok(());
        }
        let fw = &self.fw;
        let zone = &self.zone;
        let mut found =
            protect::violations(zone, Layer::Runtime, &fw.runtime_zone(zone)?, protect, &mut |s| {
                fw.runtime_service(s).ok()
            });
        found.extend(protect::violations(
            zone,
            Layer::Permanent,
            &fw.permanent_zone(zone)?,
            protect,
            &mut |s| fw.permanent_service(s).ok(),
        ));
        if found.is_empty() {
            Ok(())
        } else {
            Err(BackendError::Invalid(format!("a grant would mean nothing: {}", found.join("; "))))
        }
    }

    /// A fresh bus connection and listener where the old ones are gone.
    fn reconnect(&mut self) -> Result<(), BackendError> {
        if self.fw.is_closed() {
            self.fw = Firewalld::new(bus::connect(&self.address, self.timeout)?);
        }
        if self.listener.as_ref().is_none_or(|l| l.flags() & listener::DEAF != 0) {
            self.listener = None;
            self.listener = Some(Listener::start(&self.address, self.timeout)?);
        }
        Ok(())
    }

    /// What the listener saw, waiting up to 200 ms for a signal that may be on its way (it
    /// travels on the listener's own connection); `None` when nothing was signalled.
    fn signalled(&self) -> Option<String> {
        for _ in 0..20 {
            let flags = self.listener.as_ref().map_or(listener::DEAF, Listener::flags);
            if flags != 0 {
                return Some(listener::describe(flags));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.fw.on_bus().is_ok_and(|on| !on) {
            return Some("firewalld left the bus".into());
        }
        None
    }

    fn text(&self, rule: &Rule, until: u64) -> String {
        model::render(rule, self.priorities.of(until))
    }

    fn timeout(until: u64, now: u64) -> i32 {
        // firewalld needs at least a second; the ledger never puts an entry that has ended.
        i32::try_from(until.saturating_sub(now).max(1)).unwrap_or(i32::MAX)
    }

    /// Our rules in every zone: `(zone, text, rule, priority)`.
    fn ours(&self) -> Result<Vec<(String, String, Rule, i16)>, BackendError> {
        let mut out = Vec::new();
        for zone in self.fw.zones()? {
            for text in self.fw.rich_rules(&zone)? {
                if let Some((rule, p)) = model::parse(&text, self.priorities) {
                    out.push((zone.clone(), text, rule, p));
                }
            }
        }
        Ok(out)
    }

    /// Removes `rule` as it was put (`until`); if that text is not there, any rule of ours for
    /// the same entry in the zone (put with another deadline).
    fn remove(&mut self, rule: &Rule, until: u64) -> Result<(), BackendError> {
        let text = self.text(rule, until);
        self.expect.remove(&text);
        if self.fw.remove_rich_rule(&self.zone, &text)? {
            return Ok(());
        }
        for other in self.fw.rich_rules(&self.zone)? {
            if let Some((r, _)) = model::parse(&other, self.priorities)
                && r == *rule
            {
                self.fw.remove_rich_rule(&self.zone, &other)?;
                self.expect.remove(&other);
            }
        }
        Ok(())
    }

    fn add(&mut self, rule: &Rule, until: u64, now: u64) -> Result<(), BackendError> {
        let text = self.text(rule, until);
        self.fw.add_rich_rule(&self.zone, &text, Self::timeout(until, now))?;
        self.expect.insert(text, until);
        Ok(())
    }

    fn apply_one(&mut self, change: &Change<'_, Rule>, now: u64) -> Result<(), BackendError> {
        match change {
            Change::Put { new, prior: None } => self.add(new.entry, new.until, now),
            Change::Put { new, prior: Some(prior) } => {
                if self.text(prior.entry, prior.until) == self.text(new.entry, new.until) {
                    // The same text: an add would find it there and arm no new timer.
                    self.remove(prior.entry, prior.until)?;
                    self.add(new.entry, new.until, now)
                } else {
                    // The new rule first, so the client is never without one.
                    self.add(new.entry, new.until, now)?;
                    let old = self.text(prior.entry, prior.until);
                    self.expect.remove(&old);
                    self.fw.remove_rich_rule(&self.zone, &old).map(drop)
                }
            }
            Change::Remove { old } => self.remove(old.entry, old.until),
        }
    }
}

impl Backend for FirewalldBackend {
    type Entry = Rule;

    fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
        Self::connect(FirewalldConfig::from_table(table)?, BusAddress::System)
    }

    fn name(&self) -> &'static str {
        "firewalld"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // DNAT to a host and local redirects (forward-port); no source NAT, no routing.
            nat: true,
            ipv6: true,
            native_expiry: true,
            exact_prepare: true,
            // One D-Bus call per rule, no transaction.
            atomic_apply: false,
            // A rich rule cannot match both a port and a source port.
            source_port: false,
        }
    }

    fn entries(&self, grant: &Grant) -> Result<Vec<Rule>, BackendError> {
        model::expand(grant)
    }

    fn prepare(&mut self, live: &[Held<'_, Rule>], now: u64) -> Result<(), BackendError> {
        self.prepared = false;
        self.reconnect()?;
        // Lowered before looking: a reload from here on is seen by the next check.
        if let Some(l) = &self.listener {
            l.clear();
        }
        self.version = Self::running(&self.fw)?;
        self.zone = self.resolve_zone()?;
        self.check_protection()?;
        let mut want: BTreeMap<String, (u64, Rule)> = live
            .iter()
            .filter(|h| h.until > now)
            .map(|h| (self.text(h.entry, h.until), (h.until, *h.entry)))
            .collect();
        self.expect.clear();
        for (zone, text, _, _) in self.ours()? {
            if zone == self.zone
                && let Some((until, _)) = want.remove(&text)
            {
                // There with the right deadline, and its timer (put with it) still armed.
                self.expect.insert(text, until);
            } else {
                self.fw.remove_rich_rule(&zone, &text)?;
            }
        }
        for (until, rule) in want.into_values() {
            self.add(&rule, until, now)?;
        }
        self.prepared = true;
        self.next_verify = now.saturating_add(self.config.verify_interval);
        Ok(())
    }

    fn apply(&mut self, changes: &[Change<'_, Rule>], now: u64) -> Result<(), BackendError> {
        for c in changes {
            if let Err(e) = self.apply_one(c, now) {
                // The next check looks at the zone rather than trusting the flags alone.
                self.next_verify = 0;
                return Err(e);
            }
        }
        Ok(())
    }

    fn check(&mut self, now: u64) -> Result<Health, BackendError> {
        let flags = self.listener.as_ref().map_or(listener::DEAF, Listener::flags);
        if flags != 0 {
            return Ok(Health::Damaged(listener::describe(flags)));
        }
        if !self.prepared {
            return Ok(Health::Damaged(format!("zone {} was never set up", self.zone)));
        }
        if self.fw.is_closed() {
            return Ok(Health::Damaged("the d-bus connection to firewalld was lost".into()));
        }
        let due = self.next_verify == 0 || (self.config.verify_interval > 0 && now >= self.next_verify);
        if !due {
            return Ok(Health::Intact);
        }
        self.next_verify = now.saturating_add(self.config.verify_interval.max(1));
        // Rules that may have ended by themselves by now are not missed.
        self.expect.retain(|_, until| *until > now.saturating_add(2));
        if self.expect.is_empty() {
            return Ok(Health::Intact);
        }
        let present = match self.fw.rich_rules(&self.zone) {
            Ok(present) => present,
            // firewalld stopping fails the call before its NameOwnerChanged signal reaches the
            // listener: name the cause rather than the failed call.
            Err(e) => return self.signalled().map_or(Err(e), |why| Ok(Health::Damaged(why))),
        };
        let Some(gone) = self.expect.keys().find(|t| !present.contains(t)) else {
            return Ok(Health::Intact);
        };
        // A reload in progress empties the zone before its signal arrives (on the listener's
        // own connection): give the signal a moment, so the audit names the cause.
        if let Some(why) = self.signalled() {
            return Ok(Health::Damaged(why));
        }
        Ok(Health::Damaged(format!("a rule of ours vanished from zone {}: {gone}", self.zone)))
    }

    fn observe(&mut self, now: u64) -> Result<Vec<Observed>, BackendError> {
        Ok(self
            .ours()?
            .into_iter()
            .map(|(zone, _, rule, p)| Observed {
                entry: if zone == self.zone { rule.to_string() } else { format!("zone {zone}: {rule}") },
                holder: None,
                until: self.priorities.until(p, now),
            })
            .collect())
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.reconnect()?;
        for (zone, text, _, _) in self.ours()? {
            self.fw.remove_rich_rule(&zone, &text)?;
        }
        self.expect.clear();
        self.prepared = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.3.3"), Some((1, 3, 3)));
        assert_eq!(parse_version("0.9"), Some((0, 9, 0)));
        assert_eq!(parse_version("2"), Some((2, 0, 0)));
        assert_eq!(parse_version("1.x"), None);
        assert!(parse_version("0.8.6").unwrap() < MIN_VERSION);
        assert!(parse_version("0.9.0").unwrap() >= MIN_VERSION);
    }

    #[test]
    fn no_bus_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix:path={}", dir.path().join("none").display());
        let err =
            FirewalldBackend::connect(FirewalldConfig::default(), BusAddress::Address(addr)).unwrap_err();
        assert!(matches!(err, BackendError::DBus { .. }), "{err}");
    }
}

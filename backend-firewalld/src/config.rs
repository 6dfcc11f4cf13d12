//! The `[firewall.firewalld]` table: typed, unknown keys rejected, names checked once here.

use serde::Deserialize;
use spa_backends::{BackendError, ProtoPort};

use crate::model::Priorities;

/// The options of the firewalld backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewalldConfig {
    /// The zone grants go into. Without it: the zone of `interface`, or firewalld's default
    /// zone (where packets of every interface not bound to another zone land).
    pub zone: Option<String>,
    /// The interface knocks and granted connections arrive on, when `zone` is not set: its
    /// zone (`getZoneOfInterface`), or the default zone if it is bound to none. Resolved at
    /// start and again after every firewalld reload or restart.
    pub interface: Option<String>,
    /// Ports that must stay closed except for granted sources, e.g. `["tcp/22"]`: spad
    /// refuses to start (and `spad check` fails) while the zone opens one of them to everyone
    /// through a service, a port, a protocol or an `ACCEPT` target, at runtime or in the
    /// permanent configuration.
    pub protect: Vec<ProtoPort>,
    /// The lowest of the rule priorities reserved for spad (`priority_min..=32767`): a rule
    /// of our shape with a priority in this range is ours (prepare removes it unless it is a
    /// live grant's). A rule's priority is `priority_min + deadline mod span`; grants longer
    /// than the span (16384 s by default) may, after a firewalld reload, be closed early by
    /// an orphaned firewalld timer (see the crate documentation).
    pub priority_min: i16,
    /// How long one D-Bus call may take.
    pub call_timeout_ms: u64,
    /// How often (seconds) `check` lists the zone's rich rules to see whether one of ours was
    /// removed by hand; 0 never does (reloads and restarts are seen from signals anyway).
    pub verify_interval: u64,
}

impl Default for FirewalldConfig {
    fn default() -> Self {
        Self {
            zone: None,
            interface: None,
            protect: Vec::new(),
            priority_min: 16384,
            call_timeout_ms: 10_000,
            verify_interval: 10,
        }
    }
}

impl FirewalldConfig {
    /// Parses and validates `[firewall.firewalld]`.
    pub fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
        let config: Self = table.clone().try_into().map_err(BackendError::Config)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: sane names, a usable priority range, a positive timeout.
    pub fn validate(&self) -> Result<(), BackendError> {
        if let Some(z) = &self.zone
            && !valid_name(z, 64)
        {
            return Err(BackendError::Invalid(format!(
                "firewalld zone {z:?} must be 1-64 letters, digits, '_', '-', '.' or '+'"
            )));
        }
        if let Some(i) = &self.interface
            && !valid_name(i, 15)
        {
            return Err(BackendError::Invalid(format!(
                "firewalld interface {i:?} must be 1-15 letters, digits, '_', '-', '.' or '+'"
            )));
        }
        if self.zone.is_some() && self.interface.is_some() {
            return Err(BackendError::Invalid("set firewalld zone or interface, not both".into()));
        }
        Priorities::new(self.priority_min)?;
        if self.call_timeout_ms == 0 {
            return Err(BackendError::Invalid("firewalld call_timeout_ms must be positive".into()));
        }
        Ok(())
    }

    /// The reserved priority range.
    pub fn priorities(&self) -> Result<Priorities, BackendError> {
        Priorities::new(self.priority_min)
    }
}

/// A zone or interface name: plain characters only (they travel as D-Bus strings, never
/// through a shell, but they also appear in messages and logs).
fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<FirewalldConfig, BackendError> {
        FirewalldConfig::from_table(&s.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(parse("").unwrap(), FirewalldConfig::default());
        let c = parse("zone = \"spa\"\nprotect = [\"tcp/22\", \"udp/53\"]\npriority_min = 30000").unwrap();
        assert_eq!(c.zone.as_deref(), Some("spa"));
        assert_eq!(c.protect.iter().map(ToString::to_string).collect::<Vec<_>>(), ["tcp/22", "udp/53"]);
        assert_eq!(c.priorities().unwrap().min(), 30000);
        assert_eq!(parse("interface = \"eth0\"").unwrap().interface.as_deref(), Some("eth0"));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "zone = \"public; rm\"",
            "zone = \"\"",
            "interface = \"a-very-long-interface\"",
            "zone = \"public\"\ninterface = \"eth0\"",
            "priority_min = 0",
            "priority_min = -100",
            "priority_min = 32767",
            "call_timeout_ms = 0",
            "protect = [\"tcp/0\"]",
            "zome = \"public\"",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        let err = parse("zome = \"x\"").unwrap_err();
        assert!(std::error::Error::source(&err).unwrap().to_string().contains("zome"));
    }
}

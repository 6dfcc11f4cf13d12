//! `[firewall.iptables]`: the options, checked once when the backend is built.

use serde::Deserialize;
use spa_backends::{BackendError, ProtoPort};

/// Which family of iptables binaries to drive. The two write to different kernel subsystems
/// (nf_tables vs x_tables); rules made by one are invisible to the other's `-save`, and a jump
/// from one to a chain of the other fails with "Couldn't load target" (fwknop #290). So one
/// variant is chosen once and used for everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Detect at start: whichever of the two already holds rules; if neither or both, what the
    /// system's `iptables -V` reports.
    #[default]
    Auto,
    /// `iptables-nft`, `ip6tables-nft` (nf_tables kernel API).
    Nft,
    /// `iptables-legacy`, `ip6tables-legacy` (x_tables kernel API).
    Legacy,
}

impl Variant {
    /// The suffix of the binaries (`iptables-<suffix>-restore`); `None` for `Auto`.
    pub(crate) const fn suffix(self) -> Option<&'static str> {
        match self {
            Variant::Auto => None,
            Variant::Nft => Some("nft"),
            Variant::Legacy => Some("legacy"),
        }
    }
}

/// The options under `[firewall.iptables]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Ports kept closed to everyone except granted sources (`["tcp/22"]`), on IPv4 and IPv6.
    #[serde(default)]
    pub protect: Vec<ProtoPort>,
    /// Which iptables binaries to use.
    #[serde(default)]
    pub variant: Variant,
    /// Prefix of our chains (`SPA` gives `SPA_INPUT`, ...) and, lower-cased, of our ipsets
    /// (`spa4`, `spa6`, ...).
    #[serde(default = "default_prefix")]
    pub chain_prefix: String,
    /// Least time between two full looks of the tamper check (listing both families' tables
    /// and the sets), in milliseconds; rounded up to whole seconds, since the daemon's clock
    /// is in seconds. With iptables-nft a look is skipped anyway while nothing but spad has
    /// committed a change (see the crate documentation); with iptables-legacy every look
    /// lists. 0 looks at every check (about once a second).
    #[serde(default = "default_check_interval")]
    pub check_interval_ms: u64,
}

fn default_prefix() -> String {
    "SPA".to_owned()
}

fn default_check_interval() -> u64 {
    2000
}

impl Default for Config {
    fn default() -> Self {
        Self {
            protect: Vec::new(),
            variant: Variant::Auto,
            chain_prefix: default_prefix(),
            check_interval_ms: default_check_interval(),
        }
    }
}

/// Longest prefix: the longest chain name we make is `<prefix>_POSTROUTING`, and iptables
/// chain names are at most 28 characters.
const MAX_PREFIX: usize = 16;

impl Config {
    /// Parses and checks the table.
    pub fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
        let config: Config = table.clone().try_into().map_err(BackendError::Config)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: the prefix becomes part of chain and set names, which are
    /// written into iptables-restore and ipset input, so only a safe alphabet is allowed.
    pub fn validate(&self) -> Result<(), BackendError> {
        let p = &self.chain_prefix;
        let ok_chars = p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if p.is_empty()
            || p.len() > MAX_PREFIX
            || !ok_chars
            || !p.starts_with(|c: char| c.is_ascii_alphabetic())
        {
            return Err(BackendError::Invalid(format!(
                "chain_prefix {p:?} must be 1 to {MAX_PREFIX} letters, digits or '_', starting with a letter"
            )));
        }
        Ok(())
    }
}

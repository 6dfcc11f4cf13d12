//! The `[firewall.nft]` table: typed, unknown keys rejected, names validated once here so the
//! renderer can interpolate them without quoting.

use serde::Deserialize;
use spa_backends::{BackendError, ProtoPort};

/// The options of the nft backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NftConfig {
    /// Name of the `inet` table we own (letters, digits, `_`; starts with a letter).
    pub table: String,
    /// The ports kept closed except for granted sources, e.g. `["tcp/22", "tcp/443"]`.
    pub protect: Vec<ProtoPort>,
    /// A packet mark OR-ed into every granted packet (`meta mark set meta mark | MARK`), so a
    /// separate admin table with a default-drop policy can accept it (`meta mark & MARK ==
    /// MARK accept`). `None` sets no mark.
    pub mark: Option<u32>,
    /// Priority of our `input` and `forward` filter chains. It must be lower (earlier) than the
    /// admin's filter chains for `mark` to be visible there; the default is `filter - 10`.
    pub filter_priority: i32,
    /// Priority of our `prerouting` nat chain (DNAT, redirect); default `dstnat` (-100).
    pub dnat_priority: i32,
    /// Priority of our `postrouting` nat chain (SNAT, masquerade); default `srcnat` (100).
    pub snat_priority: i32,
    /// The nft program (a path or a name looked up in `PATH`).
    pub nft: String,
    /// How long one nft command may take before the long-lived nft process is killed.
    pub command_timeout_ms: u64,
    /// How grants reach the kernel: `netlink` (default: set-element messages sent directly,
    /// no process) or `nft` (a long-lived `nft -i`).
    pub grant_path: GrantPath,
}

/// How grants reach the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GrantPath {
    /// nfnetlink messages from spad itself.
    #[default]
    Netlink,
    /// Lines written to a long-lived `nft -i`.
    Nft,
}

impl Default for NftConfig {
    fn default() -> Self {
        Self {
            table: "spa".to_owned(),
            protect: Vec::new(),
            mark: None,
            filter_priority: -10,
            dnat_priority: -100,
            snat_priority: 100,
            nft: "nft".to_owned(),
            command_timeout_ms: 5000,
            grant_path: GrantPath::Netlink,
        }
    }
}

impl NftConfig {
    /// Parses and validates `[firewall.nft]`.
    pub fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
        let config: Self = table.clone().try_into().map_err(BackendError::Config)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: the table name is a plain nft identifier, the mark is not 0.
    pub fn validate(&self) -> Result<(), BackendError> {
        if !valid_name(&self.table) {
            return Err(BackendError::Invalid(format!(
                "nft table name {:?} must be 1-32 letters, digits or '_', starting with a letter",
                self.table
            )));
        }
        if self.mark == Some(0) {
            return Err(BackendError::Invalid("nft mark must not be 0 (leave it out to set no mark)".into()));
        }
        if self.nft.is_empty() {
            return Err(BackendError::Invalid("nft program must not be empty".into()));
        }
        if self.command_timeout_ms == 0 {
            return Err(BackendError::Invalid("nft command_timeout_ms must be positive".into()));
        }
        Ok(())
    }
}

/// A name nft's parser takes as a plain identifier, so it can be written without quotes.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NftConfig, BackendError> {
        NftConfig::from_table(&s.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(parse("").unwrap(), NftConfig::default());
        let c = parse("table = \"gate\"\nprotect = [\"tcp/22\", \"udp/53\"]\nmark = 0x100").unwrap();
        assert_eq!(c.table, "gate");
        assert_eq!(c.protect.iter().map(ToString::to_string).collect::<Vec<_>>(), ["tcp/22", "udp/53"]);
        assert_eq!(c.mark, Some(0x100));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "table = \"spa; flush ruleset\"",
            "table = \"1spa\"",
            "table = \"\"",
            "mark = 0",
            "protect = [\"tcp/0\"]",
            "protect = [\"icmp/1\"]",
            "tabel = \"x\"",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        let err = parse("tabel = \"x\"").unwrap_err();
        assert!(std::error::Error::source(&err).unwrap().to_string().contains("tabel"));
    }
}

//! `[firewall.ipfw]`: the options, checked once when the backend is built. Every name and
//! number that ends up in an ipfw command (tables, interfaces, rule and set numbers, NAT
//! instances) is checked here, so the renderer only ever interpolates checked values.

use std::net::Ipv4Addr;

use serde::Deserialize;
use spa_backends::{BackendError, ProtoPort};

/// One destination NAT mapping a grant may use: connections from a granted source to `port`
/// on `interface` are redirected by an `ipfw nat` instance to `to`:`to_port`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// The external port (the port in the grant, as the client asks for it: `NAT_ACCESS`).
    pub port: ProtoPort,
    /// The internal host (IPv4: ipfw's in-kernel NAT is libalias, which is IPv4 only).
    pub to: Ipv4Addr,
    /// The internal port; the external one when absent.
    #[serde(default)]
    pub to_port: Option<u16>,
    /// The interface the connections arrive on; the NAT instance aliases its address.
    pub interface: String,
}

impl Forward {
    /// The internal port.
    pub fn internal_port(&self) -> u16 {
        self.to_port.unwrap_or(self.port.port)
    }
}

/// The options under `[firewall.ipfw]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The first of the 1000 rule numbers spad owns (`rule_base` to `rule_base + 999`).
    #[serde(default = "default_rule_base")]
    pub rule_base: u16,
    /// The rule set spad's rules belong to (0 to 30; 31 is the default rule's).
    #[serde(default = "default_set")]
    pub set: u8,
    /// Prefix of spad's lookup tables (`spa` gives `spa_in`, `spa_all`, `spa_fwd`).
    #[serde(default = "default_tables")]
    pub tables: String,
    /// The first of the NAT instance numbers used for forwards (one per forward).
    #[serde(default = "default_nat_base")]
    pub nat_base: u16,
    /// Ports closed to everyone but granted sources (a `deny` rule each, for IPv4 and IPv6,
    /// after the grant rules).
    #[serde(default)]
    pub protect: Vec<ProtoPort>,
    /// Destination NAT mappings grants may use.
    #[serde(default)]
    pub forward: Vec<Forward>,
    /// Least time between two tamper looks (each lists the ruleset and asks for the tables:
    /// two short ipfw runs), in milliseconds; rounded up to whole seconds. 0 looks at every
    /// check (about once a second).
    #[serde(default = "default_check_interval")]
    pub check_interval_ms: u64,
    /// The ipfw program.
    #[serde(default = "default_ipfw")]
    pub ipfw: String,
}

fn default_rule_base() -> u16 {
    10000
}

fn default_set() -> u8 {
    10
}

fn default_tables() -> String {
    "spa".to_owned()
}

fn default_nat_base() -> u16 {
    100
}

fn default_check_interval() -> u64 {
    5000
}

fn default_ipfw() -> String {
    "/sbin/ipfw".to_owned()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rule_base: default_rule_base(),
            set: default_set(),
            tables: default_tables(),
            nat_base: default_nat_base(),
            protect: Vec::new(),
            forward: Vec::new(),
            check_interval_ms: default_check_interval(),
            ipfw: default_ipfw(),
        }
    }
}

/// Rule numbers spad owns from `rule_base`.
pub const RANGE: u16 = 1000;
/// Longest interface name (`IFNAMSIZ` is 16 with the NUL).
const MAX_IFNAME: usize = 15;
/// Longest table prefix: the longest table name is `<prefix>_fwd_n`.
const MAX_TABLES: usize = 16;

fn invalid(message: String) -> BackendError {
    BackendError::Invalid(message)
}

/// Checks an interface name: a letter, then letters, digits, `_` or `.`, at most 15 in all.
pub fn check_interface(name: &str) -> Result<(), BackendError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "interface {name:?} must be a letter then letters, digits, '_' or '.', at most {MAX_IFNAME} in all"
        )))
    }
}

impl Config {
    /// Parses and checks the table.
    pub fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
        let config: Config = table.clone().try_into().map_err(BackendError::Config)?;
        config.validate()?;
        Ok(config)
    }

    /// The last rule number spad owns.
    pub fn rule_last(&self) -> u16 {
        self.rule_base + (RANGE - 1)
    }

    /// The protected ports, sorted, each once.
    pub fn protected(&self) -> Vec<ProtoPort> {
        let mut v = self.protect.clone();
        v.sort();
        v.dedup();
        v
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), BackendError> {
        if self.rule_base == 0 || u32::from(self.rule_base) + u32::from(RANGE) > 65535 {
            return Err(invalid(format!(
                "rule_base {} must be 1 to {}: spad owns {RANGE} rule numbers from it, below the default rule 65535",
                self.rule_base,
                65535 - RANGE
            )));
        }
        if self.set > 30 {
            return Err(invalid(format!("set {} must be 0 to 30 (31 holds the default rule)", self.set)));
        }
        let t = &self.tables;
        if t.is_empty()
            || t.len() > MAX_TABLES
            || !t.starts_with(|c: char| c.is_ascii_alphabetic())
            || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(invalid(format!(
                "tables {t:?} must be 1 to {MAX_TABLES} letters, digits or '_', starting with a letter"
            )));
        }
        if !self.ipfw.starts_with('/') {
            return Err(invalid(format!("ipfw {:?} must be an absolute path", self.ipfw)));
        }
        // One rule pair per forward and one pair per protected port must fit the range's
        // sections (see `render::rules`).
        if self.forward.len() > 200 || self.protected().len() > 50 {
            return Err(invalid("at most 200 forwards and 50 protected ports".into()));
        }
        let last_instance = u32::from(self.nat_base) + self.forward.len() as u32;
        if self.nat_base == 0 || last_instance > 65535 {
            return Err(invalid(format!(
                "nat_base {} leaves no room for {} NAT instances",
                self.nat_base,
                self.forward.len()
            )));
        }
        let mut seen = Vec::new();
        for f in &self.forward {
            check_interface(&f.interface)?;
            if seen.contains(&f.port) {
                return Err(invalid(format!("forward port {} is listed twice", f.port)));
            }
            if f.to_port == Some(0) {
                return Err(invalid(format!("forward {}: to_port must be 1 to 65535", f.port)));
            }
            if f.to.is_unspecified() || f.to.is_multicast() || f.to.is_broadcast() {
                return Err(invalid(format!("forward {}: {} is not a host address", f.port, f.to)));
            }
            seen.push(f.port);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn options_are_parsed_and_checked() {
        let c = Config::from_table(&table(
            "rule_base = 20000\nset = 7\ntables = \"knock\"\nprotect = [\"tcp/22\", \"tcp/22\"]\n\
             [[forward]]\nport = \"tcp/2222\"\nto = \"192.168.77.10\"\nto_port = 22\ninterface = \"em0\"\n",
        ))
        .unwrap();
        assert_eq!((c.rule_base, c.rule_last(), c.set), (20000, 20999, 7));
        assert_eq!(c.protected(), vec!["tcp/22".parse().unwrap()]);
        assert_eq!(c.forward[0].internal_port(), 22);
        let d = Config::from_table(&table("")).unwrap();
        assert_eq!(d, Config::default());
        assert_eq!(
            (d.rule_base, d.set, d.tables.as_str(), d.ipfw.as_str()),
            (10000, 10, "spa", "/sbin/ipfw")
        );
        assert_eq!(
            Config::from_table(&table("sets = 1")).unwrap_err().to_string(),
            "invalid backend configuration"
        );
    }

    #[test]
    fn numbers_and_names_that_reach_ipfw_are_checked() {
        for bad in [
            "rule_base = 0",
            "rule_base = 64536",
            "set = 31",
            "tables = \"\"",
            "tables = \"1spa\"",
            "tables = \"spa spa\"",
            "tables = \"spa(x)\"",
            "ipfw = \"ipfw\"",
            "nat_base = 0",
            "protect = [\"tcp/0\"]",
            "[[forward]]\nport = \"tcp/22\"\nto = \"fd00::1\"\ninterface = \"em0\"",
            "[[forward]]\nport = \"tcp/22\"\nto = \"10.0.0.2\"\ninterface = \"em0 via\"",
            "[[forward]]\nport = \"tcp/22\"\nto = \"10.0.0.2\"\ninterface = \"em0\"\nto_port = 0",
            "[[forward]]\nport = \"tcp/22\"\nto = \"255.255.255.255\"\ninterface = \"em0\"",
            "[[forward]]\nport = \"tcp/22\"\nto = \"10.0.0.2\"\ninterface = \"em0\"\n\
             [[forward]]\nport = \"tcp/22\"\nto = \"10.0.0.3\"\ninterface = \"em0\"",
        ] {
            assert!(Config::from_table(&table(bad)).is_err(), "{bad} accepted");
        }
    }
}

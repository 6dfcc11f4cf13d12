//! `[firewall.pf]`: the options, checked once when the backend is built. Every name that ends up
//! in the anchor's text (the anchor, interfaces) is checked here against a safe alphabet, so the
//! renderer only ever interpolates checked names, numbers and addresses.

use std::net::IpAddr;

use serde::Deserialize;
use spa_backends::{BackendError, ProtoPort};

/// Which translation syntax the anchor is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Syntax {
    /// `nat` and `rdr` rules, hooked with `nat-anchor` and `rdr-anchor` (FreeBSD, macOS: their
    /// pf.conf(5) grammar has `nat-rule` and `rdr-rule`).
    Legacy,
    /// `rdr-to` and `nat-to` options on `pass` rules, one `anchor` hook (OpenBSD 4.7 and later,
    /// where `nat`/`rdr` rules no longer exist).
    OpenBsd,
}

impl Default for Syntax {
    /// The syntax of the system the daemon was built for.
    fn default() -> Self {
        if cfg!(target_os = "openbsd") { Syntax::OpenBsd } else { Syntax::Legacy }
    }
}

/// One destination NAT mapping a grant may use: connections from a granted source to `port`
/// on `interface` are redirected to `to`:`to_port`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// The external port (the port in the grant, as the client asks for it: `NAT_ACCESS`).
    pub port: ProtoPort,
    /// The internal host.
    pub to: IpAddr,
    /// The internal port; the external one when absent.
    #[serde(default)]
    pub to_port: Option<u16>,
    /// The interface the connections arrive on (`rdr on <interface> ... to (<interface>)`).
    pub interface: String,
    /// The interface towards the internal host, for grants whose stanza asks for source NAT
    /// (`force_masquerade`): their connections leave it with its address. Without it, such
    /// grants are refused.
    #[serde(default)]
    pub snat_interface: Option<String>,
}

impl Forward {
    /// The internal port.
    pub fn internal_port(&self) -> u16 {
        self.to_port.unwrap_or(self.port.port)
    }
}

/// The options under `[firewall.pf]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The anchor spad owns (`pfctl -a <anchor>`); pf.conf must evaluate it (`anchor "spa"`).
    #[serde(default = "default_anchor")]
    pub anchor: String,
    /// Ports grants may open on this host (`["tcp/22"]`): each gets a table and a `pass` rule,
    /// loaded at start. A grant for any other port is refused.
    #[serde(default)]
    pub ports: Vec<ProtoPort>,
    /// Ports closed to everyone but granted sources (a `block` rule each, after the passes);
    /// they are grantable too, whether or not `ports` lists them.
    #[serde(default)]
    pub protect: Vec<ProtoPort>,
    /// Destination NAT mappings grants may use.
    #[serde(default)]
    pub forward: Vec<Forward>,
    /// The translation syntax; by default the one of the system spad was built for.
    #[serde(default)]
    pub syntax: Syntax,
    /// Kill the states of a source whose grant is revoked before its deadline (`pfctl -k
    /// <source>`: every state from that address, not only those of the revoked port; PF cannot
    /// kill by source and port). By default established connections survive, as at expiry.
    #[serde(default)]
    pub kill_states_on_revoke: bool,
    /// Refuse to start (and report tampering) when the main ruleset does not evaluate the
    /// anchor: without the hook nothing spad loads has any effect.
    #[serde(default = "default_true")]
    pub require_hook: bool,
    /// Least time between two tamper looks (each lists the main ruleset's hooks and the
    /// anchor's rules: two or three short pfctl runs), in milliseconds; rounded up to whole
    /// seconds. 0 looks at every check (about once a second).
    #[serde(default = "default_check_interval")]
    pub check_interval_ms: u64,
    /// The pfctl program.
    #[serde(default = "default_pfctl")]
    pub pfctl: String,
}

fn default_anchor() -> String {
    "spa".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_check_interval() -> u64 {
    5000
}

fn default_pfctl() -> String {
    "/sbin/pfctl".to_owned()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            anchor: default_anchor(),
            ports: Vec::new(),
            protect: Vec::new(),
            forward: Vec::new(),
            syntax: Syntax::default(),
            kill_states_on_revoke: false,
            require_hook: true,
            check_interval_ms: default_check_interval(),
            pfctl: default_pfctl(),
        }
    }
}

/// Longest anchor path we accept (PF's `PF_ANCHOR_NAME_SIZE` is 64 per name; we keep the whole
/// path within it).
const MAX_ANCHOR: usize = 63;
/// Longest interface name (`IFNAMSIZ` is 16 with the NUL).
const MAX_IFNAME: usize = 15;

fn invalid(message: String) -> BackendError {
    BackendError::Invalid(message)
}

/// Checks an anchor path: `/`-separated names of letters, digits, `_`, `-` and `.`, none
/// empty, `.` or `..`, the first not starting with `_` (PF reserves those).
pub fn check_anchor(anchor: &str) -> Result<(), BackendError> {
    let ok_name = |n: &str| {
        !n.is_empty()
            && n != "."
            && n != ".."
            && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if anchor.len() > MAX_ANCHOR || !anchor.split('/').all(ok_name) || anchor.starts_with('_') {
        return Err(invalid(format!(
            "anchor {anchor:?} must be 1 to {MAX_ANCHOR} characters: names of letters, digits, '_', '-' \
             or '.' separated by '/', not starting with '_'"
        )));
    }
    Ok(())
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

    /// The ports grants may open: `ports` and `protect`, sorted, each once.
    pub fn grantable(&self) -> Vec<ProtoPort> {
        let mut v: Vec<ProtoPort> = self.ports.iter().chain(&self.protect).copied().collect();
        v.sort();
        v.dedup();
        v
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
        check_anchor(&self.anchor)?;
        if !self.pfctl.starts_with('/') {
            return Err(invalid(format!("pfctl {:?} must be an absolute path", self.pfctl)));
        }
        let grantable = self.grantable();
        let mut seen = Vec::new();
        for f in &self.forward {
            check_interface(&f.interface)?;
            if let Some(i) = &f.snat_interface {
                check_interface(i)?;
            }
            if seen.contains(&f.port) {
                return Err(invalid(format!("forward port {} is listed twice", f.port)));
            }
            if grantable.contains(&f.port) {
                return Err(invalid(format!(
                    "forward port {} is also a local port (ports/protect); a port is either forwarded or local",
                    f.port
                )));
            }
            if f.to_port == Some(0) {
                return Err(invalid(format!("forward {}: to_port must be 1 to 65535", f.port)));
            }
            if f.to.is_unspecified() || f.to.is_multicast() {
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
            "anchor = \"com.apple/spa\"\nports = [\"udp/53\"]\nprotect = [\"tcp/22\", \"tcp/22\"]\n\
             syntax = \"openbsd\"\nkill_states_on_revoke = true\n\
             [[forward]]\nport = \"tcp/2222\"\nto = \"192.168.77.10\"\nto_port = 22\ninterface = \"em0\"\n\
             snat_interface = \"em1\"\n",
        ))
        .unwrap();
        assert_eq!(c.anchor, "com.apple/spa");
        assert_eq!(c.syntax, Syntax::OpenBsd);
        assert!(c.kill_states_on_revoke && c.require_hook);
        assert_eq!(c.grantable(), vec!["tcp/22".parse().unwrap(), "udp/53".parse().unwrap()]);
        assert_eq!(c.protected(), vec!["tcp/22".parse().unwrap()]);
        assert_eq!(c.forward[0].internal_port(), 22);
        let d = Config::from_table(&table("")).unwrap();
        assert_eq!(d, Config::default());
        assert_eq!((d.anchor.as_str(), d.pfctl.as_str(), d.check_interval_ms), ("spa", "/sbin/pfctl", 5000));
        assert_eq!(
            Config::from_table(&table("ancor = \"x\"")).unwrap_err().to_string(),
            "invalid backend configuration"
        );
    }

    #[test]
    fn names_that_reach_the_anchor_text_are_checked() {
        for bad in [
            "anchor = \"\"",
            "anchor = \"_spa\"",
            "anchor = \"a//b\"",
            "anchor = \"a/../b\"",
            "anchor = \"spa\\\" all\"",
            "anchor = \"spa spa\"",
            "pfctl = \"pfctl\"",
            "protect = [\"tcp/0\"]",
            "[[forward]]\nport = \"tcp/22\"\nto = \"10.0.0.2\"\ninterface = \"em0 on\"",
            "[[forward]]\nport = \"tcp/22\"\nto = \"10.0.0.2\"\ninterface = \"0em\"",
            "[[forward]]\nport = \"tcp/22\"\nto = \"10.0.0.2\"\ninterface = \"em0\"\nsnat_interface = \"(em1)\"",
            "[[forward]]\nport = \"tcp/22\"\nto = \"10.0.0.2\"\ninterface = \"em0\"\nto_port = 0",
            "[[forward]]\nport = \"tcp/22\"\nto = \"0.0.0.0\"\ninterface = \"em0\"",
            "protect = [\"tcp/22\"]\n[[forward]]\nport = \"tcp/22\"\nto = \"10.0.0.2\"\ninterface = \"em0\"",
            "[[forward]]\nport = \"tcp/22\"\nto = \"10.0.0.2\"\ninterface = \"em0\"\n\
             [[forward]]\nport = \"tcp/22\"\nto = \"10.0.0.3\"\ninterface = \"em0\"",
            "syntax = \"ipf\"",
        ] {
            assert!(Config::from_table(&table(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_default_syntax_is_the_build_targets() {
        let want = if cfg!(target_os = "openbsd") { Syntax::OpenBsd } else { Syntax::Legacy };
        assert_eq!(Syntax::default(), want);
    }
}

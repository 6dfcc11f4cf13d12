//! The access request inside an SPA message: which address to let in, and to which ports.
//!
//! fwknop writes `<allow-ip>,<proto>/<port>[,<proto>/<port>...]` (access and NAT access),
//! `<allow-ip>,<command>` (command) and `<host>,<port>` (the NAT field). `0.0.0.0` as the
//! allow address means "the address this packet came from" (client `-s`). An IPv6 allow address
//! (`::` for the packet's source) is this project's extension: fwknopd refuses it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A transport protocol a grant can open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Proto {
    /// The lower-case name used in messages and rules.
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The IP protocol number (fwknop's `$PROTO` substitution).
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `proto/port` pair such as `tcp/22`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtoPort {
    /// The protocol.
    pub proto: Proto,
    /// The port, 1..=65535.
    pub port: u16,
}

impl ProtoPort {
    /// A `proto/port` pair.
    pub const fn new(proto: Proto, port: u16) -> Self {
        Self { proto, port }
    }
}

impl fmt::Display for ProtoPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto, self.port)
    }
}

/// A string that is not a valid `proto/port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid proto/port {0:?} (expected tcp/N or udp/N with N in 1..65535)")]
pub struct InvalidProtoPort(pub String);

impl FromStr for ProtoPort {
    type Err = InvalidProtoPort;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidProtoPort(s.to_owned());
        let (proto, port) = s.trim().split_once('/').ok_or_else(bad)?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad()),
        };
        let port = parse_port(port).ok_or_else(bad)?;
        Ok(Self { proto, port })
    }
}

impl<'de> Deserialize<'de> for ProtoPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for ProtoPort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses a decimal port in 1..=65535 (digits only, at most 5 of them).
pub(crate) fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// Parses a comma-separated `proto/port` list as fwknop's `-A` and `OPEN_PORTS` take it.
pub fn parse_port_list(s: &str) -> Result<Vec<ProtoPort>, InvalidProtoPort> {
    s.split(',').filter(|p| !p.trim().is_empty()).map(str::parse).collect()
}

/// The allow address of a message: a literal address, or "the packet's source".
pub fn is_source_placeholder(ip: IpAddr) -> bool {
    ip.is_unspecified()
}

/// An access request: `<allow-ip>,<proto>/<port>,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessMessage {
    /// The address to let in; unspecified (`0.0.0.0` or `::`) means the packet's source.
    pub allow: IpAddr,
    /// The requested ports, at least one.
    pub ports: Vec<ProtoPort>,
}

/// A command request: `<allow-ip>,<command>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandMessage {
    /// The address the command is on behalf of.
    pub allow: IpAddr,
    /// The free-form command text (non-empty).
    pub command: String,
}

/// The NAT field: where the server should forward to (`<host>,<port>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatAccess {
    /// The internal host: an address, or a DNS name the server may resolve.
    pub host: NatHost,
    /// The internal port.
    pub port: u16,
}

/// The host part of a NAT field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NatHost {
    /// A literal address.
    Ip(IpAddr),
    /// A DNS name (letters, digits, `-`, `.`; at most 253 characters).
    Name(String),
}

impl fmt::Display for NatHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatHost::Ip(ip) => write!(f, "{ip}"),
            NatHost::Name(n) => f.write_str(n),
        }
    }
}

impl FromStr for NatHost {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(NatHost::Ip(ip));
        }
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !s.starts_with(['-', '.']);
        if ok { Ok(NatHost::Name(s.to_owned())) } else { Err(()) }
    }
}

/// Parses the allow address at the start of a message.
fn parse_allow(s: &str) -> Option<IpAddr> {
    // fwknop requires a dotted quad; std's parser is stricter than inet_aton, as we want.
    s.parse::<IpAddr>().ok()
}

impl AccessMessage {
    /// Parses `<allow-ip>,<proto>/<port>[,...]`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, rest) = s.split_once(',')?;
        let allow = parse_allow(ip)?;
        let mut ports = Vec::new();
        for spec in rest.split(',') {
            ports.push(spec.parse::<ProtoPort>().ok()?);
        }
        Some(Self { allow, ports })
    }
}

impl fmt::Display for AccessMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.allow)?;
        for p in &self.ports {
            write!(f, ",{p}")?;
        }
        Ok(())
    }
}

impl CommandMessage {
    /// Parses `<allow-ip>,<command>`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, command) = s.split_once(',')?;
        let allow = parse_allow(ip)?;
        (!command.is_empty()).then(|| Self { allow, command: command.to_owned() })
    }
}

impl fmt::Display for CommandMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.allow, self.command)
    }
}

impl NatAccess {
    /// Parses `<host>,<port>` (the last comma separates, so an IPv6 host works).
    pub fn parse(s: &str) -> Option<Self> {
        let (host, port) = s.rsplit_once(',')?;
        Some(Self { host: host.parse().ok()?, port: parse_port(port)? })
    }
}

impl fmt::Display for NatAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_port() {
        assert_eq!("tcp/22".parse::<ProtoPort>().unwrap(), ProtoPort::new(Proto::Tcp, 22));
        assert_eq!("UDP/53".parse::<ProtoPort>().unwrap(), ProtoPort::new(Proto::Udp, 53));
        for bad in ["tcp/0", "tcp/65536", "tcp/", "/22", "icmp/1", "tcp/+22", "tcp/ 22", "tcp22"] {
            assert!(bad.parse::<ProtoPort>().is_err(), "{bad}");
        }
        assert_eq!(ProtoPort::new(Proto::Udp, 53).to_string(), "udp/53");
    }

    #[test]
    fn access_message() {
        let m = AccessMessage::parse("1.2.3.4,tcp/22,udp/53").unwrap();
        assert_eq!(m.allow, "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(m.ports.len(), 2);
        assert_eq!(m.to_string(), "1.2.3.4,tcp/22,udp/53");
        let v6 = AccessMessage::parse("2001:db8::1,tcp/22").unwrap();
        assert!(v6.allow.is_ipv6());
        for bad in ["1.2.3.4", "1.2.3.4,", "1.2.3,tcp/22", "1.2.3.4,tcp/22,", "x,tcp/22", "1.2.3.4,none/0"] {
            assert!(AccessMessage::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn nat_access() {
        let n = NatAccess::parse("192.168.10.2,22").unwrap();
        assert_eq!(n.host, NatHost::Ip("192.168.10.2".parse().unwrap()));
        assert_eq!(n.port, 22);
        let n = NatAccess::parse("fd00::2,2222").unwrap();
        assert_eq!(n.to_string(), "fd00::2,2222");
        assert_eq!(NatAccess::parse("internal.lan,22").unwrap().host, NatHost::Name("internal.lan".into()));
        for bad in ["host", "host,0", "ho st,22", ",22", "host,22x", "-x,22"] {
            assert!(NatAccess::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn command_message() {
        let c = CommandMessage::parse("1.2.3.4,echo hi").unwrap();
        assert_eq!(c.command, "echo hi");
        assert!(CommandMessage::parse("1.2.3.4,").is_none());
    }
}

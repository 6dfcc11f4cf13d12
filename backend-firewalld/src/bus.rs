//! firewalld's D-Bus API, the calls this backend makes, each by its exact (camelCase) name.
//!
//! One blocking `zbus` connection to the system bus (or the address a test gives), with a
//! time limit per call. Errors become [`BackendError::DBus`] with the method, the D-Bus
//! error name and firewalld's message (`NOT_ENABLED: ...`), made printable and short.

use std::collections::HashMap;
use std::time::Duration;

use spa_backends::BackendError;
use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

/// firewalld's bus name.
pub const NAME: &str = "org.fedoraproject.FirewallD1";
/// The runtime object.
pub const PATH: &str = "/org/fedoraproject/FirewallD1";
/// The main interface (`reload`, `getDefaultZone`, signal `Reloaded`).
pub const IFACE: &str = "org.fedoraproject.FirewallD1";
/// The runtime zone interface (rich rules, zone settings).
pub const ZONE: &str = "org.fedoraproject.FirewallD1.zone";
/// The permanent configuration object.
const CONFIG_PATH: &str = "/org/fedoraproject/FirewallD1/config";
const CONFIG: &str = "org.fedoraproject.FirewallD1.config";
const CONFIG_ZONE: &str = "org.fedoraproject.FirewallD1.config.zone";
const CONFIG_SERVICE: &str = "org.fedoraproject.FirewallD1.config.service";

/// Where the bus is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusAddress {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS`, or the standard socket).
    System,
    /// An explicit address (`unix:path=...`), for tests with a private bus.
    Address(String),
}

/// Opens a connection to the bus.
pub fn connect(address: &BusAddress, timeout: Duration) -> Result<Connection, BackendError> {
    let builder = match address {
        BusAddress::System => zbus::blocking::connection::Builder::system(),
        BusAddress::Address(a) => zbus::blocking::connection::Builder::address(a.as_str()),
    };
    builder
        .and_then(|b| b.method_timeout(timeout).build())
        .map_err(|e| error("connect to the system bus", &e))
}

/// A D-Bus failure as a backend error: the method, the error's name and message (printable,
/// at most 300 characters: firewalld's messages echo rule text, never anything a packet
/// sender chose, but nothing printed should forge a log line).
pub fn error(method: &str, e: &zbus::Error) -> BackendError {
    let (name, message) = match e {
        zbus::Error::MethodError(name, message, _) => {
            (name.as_str().to_owned(), message.clone().unwrap_or_default())
        }
        zbus::Error::InputOutput(io) => ("(i/o)".to_owned(), io.to_string()),
        other => ("(zbus)".to_owned(), other.to_string()),
    };
    BackendError::DBus { method: method.to_owned(), name: clean(&name), message: clean(&message) }
}

fn clean(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(300).collect();
    if s.chars().count() > 300 {
        out.push_str("...");
    }
    out
}

/// firewalld's error code: the text before the first `:` of an
/// `org.fedoraproject.FirewallD1.Exception` message (`NOT_ENABLED`, `INVALID_ZONE`, ...).
pub fn code(e: &BackendError) -> Option<&str> {
    match e {
        BackendError::DBus { name, message, .. } if name.starts_with(IFACE) => {
            Some(message.split(':').next().unwrap_or("").trim())
        }
        _ => None,
    }
}

/// What a zone allows to everyone (the parts of its settings that matter for protection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneOpenings {
    /// `target` (`default`, `ACCEPT`, `DROP`, `%%REJECT%%`).
    pub target: String,
    /// Service names.
    pub services: Vec<String>,
    /// `(port or range, protocol)`.
    pub ports: Vec<(String, String)>,
    /// Whole protocols (`tcp` opens every TCP port).
    pub protocols: Vec<String>,
}

/// What a service opens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePorts {
    /// `(port or range, protocol)`.
    pub ports: Vec<(String, String)>,
    /// Whole protocols.
    pub protocols: Vec<String>,
}

/// A firewalld client on one connection.
#[derive(Debug)]
pub struct Firewalld {
    conn: Connection,
}

impl Firewalld {
    /// Wraps a connection.
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// Whether the connection was closed (the bus went away).
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    fn call<B>(&self, path: &str, iface: &str, method: &str, body: &B) -> Result<zbus::Message, BackendError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.conn.call_method(Some(NAME), path, Some(iface), method, body).map_err(|e| error(method, &e))
    }

    fn decode<T>(method: &str, reply: &zbus::Message) -> Result<T, BackendError>
    where
        T: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
    {
        reply.body().deserialize::<T>().map_err(|e| error(method, &e))
    }

    /// Whether firewalld's name has an owner (`NameHasOwner`, which never starts it through
    /// bus activation, unlike a call to the name would).
    pub fn on_bus(&self) -> Result<bool, BackendError> {
        let reply = self
            .conn
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "NameHasOwner",
                &(NAME,),
            )
            .map_err(|e| error("NameHasOwner", &e))?;
        Self::decode("NameHasOwner", &reply)
    }

    /// A string property of the main interface (`version`, `state`).
    pub fn property(&self, name: &str) -> Result<String, BackendError> {
        let reply = self
            .conn
            .call_method(Some(NAME), PATH, Some("org.freedesktop.DBus.Properties"), "Get", &(IFACE, name))
            .map_err(|e| error("Get", &e))?;
        let v: OwnedValue = Self::decode("Get", &reply)?;
        match &*v {
            Value::Str(s) => Ok(s.as_str().to_owned()),
            other => Err(BackendError::DBus {
                method: "Get".into(),
                name: "(unexpected reply)".into(),
                message: format!("property {name} is {}", other.value_signature()),
            }),
        }
    }

    /// `getDefaultZone`.
    pub fn default_zone(&self) -> Result<String, BackendError> {
        Self::decode("getDefaultZone", &self.call(PATH, IFACE, "getDefaultZone", &())?)
    }

    /// `getZoneOfInterface` (`""` when the interface is bound to no zone).
    pub fn zone_of_interface(&self, interface: &str) -> Result<String, BackendError> {
        Self::decode("getZoneOfInterface", &self.call(PATH, ZONE, "getZoneOfInterface", &(interface,))?)
    }

    /// `getZones`: the runtime zones.
    pub fn zones(&self) -> Result<Vec<String>, BackendError> {
        Self::decode("getZones", &self.call(PATH, ZONE, "getZones", &())?)
    }

    /// `getRichRules`: a zone's runtime rich rules, normalised.
    pub fn rich_rules(&self, zone: &str) -> Result<Vec<String>, BackendError> {
        Self::decode("getRichRules", &self.call(PATH, ZONE, "getRichRules", &(zone,))?)
    }

    /// `addRichRule` with a timeout (seconds, > 0: firewalld removes it then). An identical
    /// rule already there (`ALREADY_ENABLED`) is success.
    pub fn add_rich_rule(&self, zone: &str, rule: &str, timeout: i32) -> Result<(), BackendError> {
        match self.call(PATH, ZONE, "addRichRule", &(zone, rule, timeout)) {
            Err(e) if code(&e) == Some("ALREADY_ENABLED") => Ok(()),
            other => other.map(drop),
        }
    }

    /// `removeRichRule`; `Ok(false)` when it was not there (`NOT_ENABLED`).
    pub fn remove_rich_rule(&self, zone: &str, rule: &str) -> Result<bool, BackendError> {
        match self.call(PATH, ZONE, "removeRichRule", &(zone, rule)) {
            Err(e) if code(&e) == Some("NOT_ENABLED") => Ok(false),
            other => other.map(|_| true),
        }
    }

    /// `getZoneSettings2`: the zone as it is now (runtime).
    pub fn runtime_zone(&self, zone: &str) -> Result<ZoneOpenings, BackendError> {
        let map: HashMap<String, OwnedValue> =
            Self::decode("getZoneSettings2", &self.call(PATH, ZONE, "getZoneSettings2", &(zone,))?)?;
        Ok(openings(&map))
    }

    /// The zone in the permanent configuration (`config.getZoneByName`, then its
    /// `getSettings2`): what it will be after the next reload.
    pub fn permanent_zone(&self, zone: &str) -> Result<ZoneOpenings, BackendError> {
        let path: OwnedObjectPath =
            Self::decode("getZoneByName", &self.call(CONFIG_PATH, CONFIG, "getZoneByName", &(zone,))?)?;
        let map: HashMap<String, OwnedValue> =
            Self::decode("getSettings2", &self.call(path.as_str(), CONFIG_ZONE, "getSettings2", &())?)?;
        Ok(openings(&map))
    }

    /// `getServiceSettings2`: a service's runtime definition.
    pub fn runtime_service(&self, service: &str) -> Result<ServicePorts, BackendError> {
        let map: HashMap<String, OwnedValue> = Self::decode(
            "getServiceSettings2",
            &self.call(PATH, IFACE, "getServiceSettings2", &(service,))?,
        )?;
        Ok(service_ports(&map))
    }

    /// A service's permanent definition (`config.getServiceByName`, then `getSettings2`).
    pub fn permanent_service(&self, service: &str) -> Result<ServicePorts, BackendError> {
        let path: OwnedObjectPath = Self::decode(
            "getServiceByName",
            &self.call(CONFIG_PATH, CONFIG, "getServiceByName", &(service,))?,
        )?;
        let map: HashMap<String, OwnedValue> =
            Self::decode("getSettings2", &self.call(path.as_str(), CONFIG_SERVICE, "getSettings2", &())?)?;
        Ok(service_ports(&map))
    }
}

fn strings(v: Option<&OwnedValue>) -> Vec<String> {
    match v.map(|v| &**v) {
        Some(Value::Array(a)) => a
            .inner()
            .iter()
            .filter_map(|e| match e {
                Value::Str(s) => Some(s.as_str().to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn pairs(v: Option<&OwnedValue>) -> Vec<(String, String)> {
    match v.map(|v| &**v) {
        Some(Value::Array(a)) => a
            .inner()
            .iter()
            .filter_map(|e| match e {
                Value::Structure(s) => match s.fields() {
                    [Value::Str(a), Value::Str(b), ..] => {
                        Some((a.as_str().to_owned(), b.as_str().to_owned()))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn openings(map: &HashMap<String, OwnedValue>) -> ZoneOpenings {
    let target = match map.get("target").map(|v| &**v) {
        Some(Value::Str(s)) => s.as_str().to_owned(),
        _ => "default".to_owned(),
    };
    ZoneOpenings {
        target,
        services: strings(map.get("services")),
        ports: pairs(map.get("ports")),
        protocols: strings(map.get("protocols")),
    }
}

fn service_ports(map: &HashMap<String, OwnedValue>) -> ServicePorts {
    ServicePorts { ports: pairs(map.get("ports")), protocols: strings(map.get("protocols")) }
}

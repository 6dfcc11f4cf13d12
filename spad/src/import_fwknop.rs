//! `spad import-fwknop`: an fwknop server's `fwknopd.conf` and `access.conf` (with its
//! `%include`, `%include_folder` and `%include_keys`) turned into an equivalent `spad.toml`
//! (and `access.d/*.toml`), so the clients that knock fwknopd today knock spad tomorrow with
//! the same keys and options.
//!
//! Nothing is dropped quietly: every fwknop variable that has no spad equivalent, or whose
//! value spad would refuse, is listed with where it was written and why, on stderr and as a
//! comment in the file written. A stanza spad cannot run at all (GnuPG only, no usable
//! `SOURCE`) is written commented out, with the reason. Keys are never printed; the files
//! written hold them and are created with mode 0600, and an existing file is replaced only
//! with `--force`.
//!
//! The files are read the way fwknopd reads them: `VAR value` per line (a `:` after the name
//! and a `;` ending the value are allowed), `#` comments, a stanza starting at each `SOURCE`,
//! variables before the first `SOURCE` of a file ignored, includes at most three levels deep.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use spa_engine::stanza::{AddrList, NatTarget, PortList};

/// fwknopd's default access file.
pub const DEFAULT_ACCESS: &str = "/etc/fwknop/access.conf";
/// fwknopd's default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/fwknop/fwknopd.conf";
/// Where the files go unless `--out` says otherwise.
pub const DEFAULT_OUT: &str = "/etc/spad";
/// fwknopd's include depth limit.
const MAX_DEPTH: usize = 3;
/// Largest file read (fwknop's own files are a few tens of kilobytes).
const MAX_FILE: u64 = 4 << 20;
/// The placeholders spad's example uses (and `spad check` names as such).
const KEY_PLACEHOLDER: &str = "REPLACE_WITH_KEY_BASE64";
const HMAC_PLACEHOLDER: &str = "REPLACE_WITH_HMAC_KEY_BASE64";

/// One `VAR value` line, and where it was written.
#[derive(Clone, Debug)]
struct Var {
    name: String,
    value: String,
    at: String,
}

/// A variable that was not carried over, where it was written, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmapped {
    /// The fwknop variable.
    pub var: String,
    /// `file:line`.
    pub at: String,
    /// Why it has no equivalent here (never its value: it may be a key).
    pub why: String,
}

impl std::fmt::Display for Unmapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.var, self.at, self.why)
    }
}

/// One access stanza as fwknop read it.
#[derive(Debug)]
struct RawStanza {
    /// The file it started in, and the `SOURCE` line.
    file: PathBuf,
    at: String,
    vars: Vec<Var>,
}

/// What was read from the fwknop files.
#[derive(Debug, Default)]
struct Read {
    stanzas: Vec<RawStanza>,
    unmapped: Vec<Unmapped>,
    /// Whether any stanza came from an included file.
    included: bool,
}

/// The converted configuration: file names (relative to the output directory) and texts.
#[derive(Debug)]
pub struct Import {
    /// `spad.toml`, then `access.d/*.toml` in load order.
    pub files: Vec<(PathBuf, String)>,
    /// Everything not carried over.
    pub unmapped: Vec<Unmapped>,
    /// How many stanzas are written live (not commented out).
    pub stanzas: usize,
}

fn read_text(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_FILE), &mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text)
}

/// The `VAR value` lines of a text, as fwknopd splits them; lines with a name and no value
/// are listed as unmapped.
fn lines(path: &Path, text: &str, unmapped: &mut Vec<Unmapped>) -> Vec<Var> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let l = line.trim_start();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        let (name, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
        let name = match name.rfind(':') {
            Some(i) => &name[..i],
            None => name,
        };
        let value = rest.trim_start().split([';', '\r']).next().unwrap_or_default().trim_end();
        if value.is_empty() {
            unmapped.push(Unmapped { var: name.to_owned(), at, why: "has no value".into() });
            continue;
        }
        out.push(Var { name: name.to_owned(), value: value.to_owned(), at });
    }
    out
}

/// fwknop's booleans: anything starting with `Y` or `y` is true.
fn yes(v: &str) -> bool {
    v.starts_with(['Y', 'y'])
}

/// A path an include names: as written when absolute, else beside the including file.
fn beside(file: &Path, named: &str) -> PathBuf {
    let p = Path::new(named);
    if p.is_absolute() { p.to_owned() } else { file.parent().unwrap_or(Path::new(".")).join(p) }
}

/// The key variables `%include_keys` takes from its file.
const KEY_VARS: [&str; 5] = ["KEY", "KEY_BASE64", "HMAC_KEY", "HMAC_KEY_BASE64", "HMAC_DIGEST_TYPE"];

/// Reads an access file and what it includes into `read`, the way fwknopd does.
fn read_access(path: &Path, depth: usize, read: &mut Read, seen: &mut Vec<PathBuf>) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!("{}: includes nest deeper than {MAX_DEPTH} levels (fwknopd refuses that too)", path.display());
    }
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    if seen.contains(&canonical) {
        bail!("{}: includes itself", path.display());
    }
    seen.push(canonical);
    let text = read_text(path)?;
    // Each file has its own current stanza: after an include, the including file's stanza
    // goes on (as in fwknopd).
    let mut current: Option<usize> = None;
    for v in lines(path, &text, &mut read.unmapped) {
        match v.name.as_str() {
            "%include" => {
                let before = read.stanzas.len();
                read_access(&beside(path, &v.value), depth + 1, read, seen)?;
                read.included |= read.stanzas.len() > before;
            }
            "%include_folder" => {
                let dir = beside(path, &v.value);
                let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .with_context(|| format!("{}: %include_folder {}", v.at, dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
                    .collect();
                // fwknopd takes them in directory order; here in name order, so the result
                // does not depend on the file system.
                files.sort();
                for f in files {
                    let before = read.stanzas.len();
                    read_access(&f, depth + 1, read, seen)?;
                    read.included |= read.stanzas.len() > before;
                }
            }
            "SOURCE" => {
                read.stanzas.push(RawStanza { file: path.to_owned(), at: v.at.clone(), vars: vec![v] });
                current = Some(read.stanzas.len() - 1);
            }
            _ => match current {
                None => read.unmapped.push(Unmapped {
                    var: v.name,
                    at: v.at,
                    why: "comes before the first SOURCE of its file; fwknopd ignores it too".into(),
                }),
                Some(i) if v.name == "%include_keys" => {
                    let file = beside(path, &v.value);
                    let text = read_text(&file).with_context(|| format!("{}: %include_keys", v.at))?;
                    for k in lines(&file, &text, &mut read.unmapped) {
                        if KEY_VARS.contains(&k.name.as_str()) || k.name.starts_with("GPG_") {
                            read.stanzas[i].vars.push(k);
                        } else {
                            read.unmapped.push(Unmapped {
                                var: k.name,
                                at: k.at,
                                why: "%include_keys takes only key variables from its file; fwknopd \
                                      ignores the rest too"
                                    .into(),
                            });
                        }
                    }
                }
                Some(i) => read.stanzas[i].vars.push(v),
            },
        }
    }
    seen.pop();
    Ok(())
}

/// `fwknopd.conf`, mapped to the daemon settings.
#[derive(Debug)]
struct Daemon {
    capture: bool,
    interface: String,
    port: u16,
    max_packet_age: u64,
    forwarding: bool,
    local_nat: bool,
    /// Global SNAT for NAT grants (`ENABLE_IPT_SNAT`): `Some(None)` masquerade, `Some(Some(ip))`.
    snat: Option<Option<IpAddr>>,
    backend: String,
    keep_grants_on_exit: bool,
    pf_anchor: Option<String>,
    /// `ENABLE_TCP_SERVER`: knocks over TCP too.
    tcp: bool,
    /// `ENABLE_SPA_OVER_HTTP`: knocks as HTTP requests too (over the TCP listener).
    http: bool,
    /// `TCPSERV_PORT`.
    tcp_port: u16,
    access_file: Option<PathBuf>,
    access_folder: Option<PathBuf>,
    /// `(variable, line)` of what was mapped, for the comments.
    from: BTreeMap<&'static str, String>,
}

impl Default for Daemon {
    fn default() -> Self {
        Self {
            capture: true,
            interface: "eth0".into(),
            port: crate::config::DEFAULT_PORT,
            max_packet_age: 120,
            forwarding: false,
            local_nat: false,
            snat: None,
            // Debian's (and most distributions') fwknopd is built for iptables.
            backend: "iptables".into(),
            keep_grants_on_exit: false,
            pf_anchor: None,
            tcp: false,
            http: false,
            tcp_port: crate::config::DEFAULT_PORT,
            access_file: None,
            access_folder: None,
            from: BTreeMap::new(),
        }
    }
}

/// Reasons for fwknopd.conf variables that have no equivalent, by name (or prefix with `*`).
const NO_EQUIVALENT: &[(&str, &str)] = &[
    ("ENABLE_PCAP_PROMISC", "spad captures what is addressed to this host (no promiscuous mode)"),
    ("PCAP_DISPATCH_COUNT", "spad's receive loop needs no tuning (it reads in batches, never sleeps)"),
    ("PCAP_LOOP_SLEEP", "spad's receive loop needs no tuning (it reads in batches, never sleeps)"),
    ("MAX_SNIFF_BYTES", "spad reads whole datagrams (up to 1500 bytes, longer ones are refused)"),
    ("ENABLE_PCAP_ANY_DIRECTION", "spad captures incoming packets only"),
    ("EXIT_AT_INTF_DOWN", "spad keeps running when an interface goes down and reads again when it is back"),
    ("UDPSERV_SELECT_TIMEOUT", "spad's receive loop needs no tuning"),
    ("PCAP_FILE", "spad reads live traffic only"),
    ("ENABLE_NFQ_CAPTURE", "spad captures with a packet socket (listen.mode = \"capture\"), not NFQUEUE"),
    ("NFQ_*", "spad captures with a packet socket (listen.mode = \"capture\"), not NFQUEUE"),
    (
        "DIGEST_FILE",
        "spad keeps its replay cache in [replay] state_dir; fwknop's is not needed (older packets are refused by age)",
    ),
    (
        "DIGEST_DB_FILE",
        "spad keeps its replay cache in [replay] state_dir; fwknop's is not needed (older packets are refused by age)",
    ),
    ("FWKNOP_RUN_DIR", "spad keeps its state in [replay] state_dir"),
    ("FWKNOP_CONF_DIR", "spad reads spad.toml and access.d/ beside it"),
    ("FWKNOP_PID_FILE", "spad runs in the foreground under its service manager; no pid file"),
    ("SYSLOG_IDENTITY", "spad logs to stderr or the journal ($SPAD_LOG), decisions to [log] audit"),
    ("SYSLOG_FACILITY", "spad logs to stderr or the journal ($SPAD_LOG), decisions to [log] audit"),
    ("VERBOSE", "spad's log level is $SPAD_LOG"),
    ("LOCALE", "spad does not localise"),
    (
        "GPG_HOME_DIR",
        "spad reads no GnuPG keyring: GPG stanzas take exported key files (gpg_decrypt_key_file, gpg_remote_keys_file)",
    ),
    ("GPG_EXE", "spad runs no gpg process (OpenPGP is built in)"),
    ("SUDO_EXE", "spad does not run commands through sudo"),
    ("CMD_EXEC_TIMEOUT", "spad kills a command after 5 seconds"),
    (
        "RULES_CHECK_THRESHOLD",
        "spad's grants end by kernel timeouts or its own clock, and its tamper check runs every second",
    ),
    ("ENABLE_RULE_PREPEND", "spad always puts its jump first"),
    ("ENABLE_IPT_COMMENT_CHECK", "spad needs no probe"),
    ("ENABLE_FIREWD_COMMENT_CHECK", "spad needs no probe"),
    ("ENABLE_IPT_OUTPUT", "spad adds no OUTPUT rules (replies pass by connection tracking)"),
    ("ENABLE_FIREWD_OUTPUT", "spad adds no OUTPUT rules (replies pass by connection tracking)"),
    (
        "FLUSH_IPT_AT_INIT",
        "spad reconciles at start: recorded live grants stay, nothing else of its own does",
    ),
    (
        "FLUSH_FIREWD_AT_INIT",
        "spad reconciles at start: recorded live grants stay, nothing else of its own does",
    ),
    (
        "IPT_*",
        "spad's own chains are named by chain_prefix and placed first; fwknop's chain layout does not apply",
    ),
    ("FIREWD_*", "spad's firewalld backend uses rich rules over D-Bus, not direct rules"),
    ("IPFW_*", "spad's ipfw backend has its own rule range ([firewall.ipfw] rule_base, set)"),
    ("FLUSH_IPFW_AT_*", "spad's ipfw backend reconciles at start and keeps its rules in its own set"),
    ("PF_EXPIRE_INTERVAL", "spad's pf backend ends grants by its own clock"),
    (
        "ALLOW_ANY_USER_AGENT",
        "spad takes an HTTP knock whatever its User-Agent (the packet authenticates it, not the header)",
    ),
    (
        "ENABLE_X_FORWARDED_FOR",
        "spad takes a knock's source from the TCP connection only (a header is the sender's to choose)",
    ),
];

fn no_equivalent(name: &str) -> Option<&'static str> {
    NO_EQUIVALENT.iter().find_map(|(n, why)| match n.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix).then_some(*why),
        None => (*n == name).then_some(*why),
    })
}

/// `udp port N` / `udp dst port N` (what spad can capture); `None` for anything else.
fn filter_port(filter: &str) -> Option<u16> {
    let words: Vec<&str> = filter.split_whitespace().collect();
    match words.as_slice() {
        ["udp", "port", p] | ["udp", "dst", "port", p] => p.parse().ok().filter(|&p| p != 0),
        _ => None,
    }
}

fn read_daemon(path: Option<&Path>, backend: Option<&str>, unmapped: &mut Vec<Unmapped>) -> Result<Daemon> {
    let mut d = Daemon::default();
    let mut vars = Vec::new();
    if let Some(p) = path {
        vars = lines(p, &read_text(p)?, unmapped);
    }
    let mut udp_server = false;
    let mut udp_port = None;
    let mut nfq = false;
    let mut snat_on = false;
    let mut snat_ip = None;
    let mut firewall_exe = None;
    let mut no =
        |v: &Var, why: String| unmapped.push(Unmapped { var: v.name.clone(), at: v.at.clone(), why });
    for v in &vars {
        let val = v.value.as_str();
        match v.name.as_str() {
            "PCAP_INTF" => {
                d.interface = val.to_owned();
                d.from.insert("PCAP_INTF", v.at.clone());
            }
            "PCAP_FILTER" => match filter_port(val) {
                Some(p) => {
                    d.port = p;
                    d.from.insert("PCAP_FILTER", v.at.clone());
                }
                None => no(
                    v,
                    format!(
                        "spad captures one UDP destination port; only \"udp port N\" is understood, so the port \
                     stays {}",
                        d.port
                    ),
                ),
            },
            "ENABLE_UDP_SERVER" => udp_server = yes(val),
            "UDPSERV_PORT" => match val.parse::<u16>() {
                Ok(p) if p != 0 => udp_port = Some((p, v.at.clone())),
                _ => no(v, "is not a port number".into()),
            },
            "ENABLE_NFQ_CAPTURE" if yes(val) => {
                nfq = true;
                no(v, "spad captures with a packet socket (listen.mode = \"capture\"), not NFQUEUE".into());
            }
            "ENABLE_TCP_SERVER" => {
                d.tcp = yes(val);
                d.from.insert("ENABLE_TCP_SERVER", v.at.clone());
            }
            "TCPSERV_PORT" | "TCP_SERVER_PORT" => match val.parse::<u16>() {
                Ok(p) if p != 0 => {
                    d.tcp_port = p;
                    d.from.insert("TCPSERV_PORT", v.at.clone());
                }
                _ => no(v, "is not a port number".into()),
            },
            "ENABLE_SPA_OVER_HTTP" => {
                d.http = yes(val);
                d.from.insert("ENABLE_SPA_OVER_HTTP", v.at.clone());
            }
            "ENABLE_SPA_PACKET_AGING" => {
                if !yes(val) {
                    no(v, "spad always refuses packets older than [replay] max_packet_age".into());
                }
            }
            "MAX_SPA_PACKET_AGE" => match val.parse::<u64>() {
                Ok(a) if (1..=crate::config::MAX_PACKET_AGE).contains(&a) => {
                    d.max_packet_age = a;
                    d.from.insert("MAX_SPA_PACKET_AGE", v.at.clone());
                }
                Ok(a) if a > crate::config::MAX_PACKET_AGE => {
                    d.max_packet_age = crate::config::MAX_PACKET_AGE;
                    no(
                        v,
                        format!(
                            "{a} is more than spad allows; max_packet_age is {}",
                            crate::config::MAX_PACKET_AGE
                        ),
                    );
                }
                _ => no(v, "is not a number of seconds spad takes (1 to 86400)".into()),
            },
            "ENABLE_DIGEST_PERSISTENCE" => {
                if !yes(val) {
                    no(v, "spad always keeps its replay cache across restarts".into());
                }
            }
            "ENABLE_IPT_FORWARDING" | "ENABLE_FIREWD_FORWARDING" => {
                d.forwarding = yes(val);
                d.from.insert("ENABLE_IPT_FORWARDING", v.at.clone());
            }
            "ENABLE_IPT_LOCAL_NAT" | "ENABLE_FIREWD_LOCAL_NAT" => {
                d.local_nat = yes(val);
                d.from.insert("ENABLE_IPT_LOCAL_NAT", v.at.clone());
            }
            "ENABLE_IPT_SNAT" | "ENABLE_FIREWD_SNAT" => snat_on = yes(val),
            "SNAT_TRANSLATE_IP" => match val.parse::<IpAddr>() {
                Ok(ip) => snat_ip = Some(ip),
                Err(_) => no(v, "is not an address".into()),
            },
            "ENABLE_NAT_DNS" => {
                if yes(val) {
                    no(v, "spad takes only addresses in NAT requests; a client that sends a host name is refused".into());
                }
            }
            "ENABLE_DESTINATION_RULE" => {
                if yes(val) {
                    no(
                        v,
                        "spad restricts grants to a local address only through a stanza's destination".into(),
                    );
                }
            }
            "FLUSH_IPT_AT_EXIT" | "FLUSH_FIREWD_AT_EXIT" | "FLUSH_IPFW_AT_EXIT" => {
                d.keep_grants_on_exit = !yes(val);
                d.from.insert("FLUSH_IPT_AT_EXIT", v.at.clone());
            }
            // FIREWALL_TYPE is not fwknopd's (it picks the firewall when it is built), but
            // some setups write it; it names the firewall the same way.
            "FIREWALL_EXE" | "FIREWALL_TYPE" => firewall_exe = Some(v.clone()),
            "PF_ANCHOR_NAME" => {
                d.pf_anchor = Some(val.to_owned());
                d.from.insert("PF_ANCHOR_NAME", v.at.clone());
            }
            "ACCESS_FILE" => d.access_file = path.map(|p| beside(p, val)),
            "ACCESS_FOLDER" => d.access_folder = path.map(|p| beside(p, val)),
            name => match no_equivalent(name) {
                Some(why) => no(v, why.into()),
                None => no(
                    v,
                    "is not an fwknopd.conf variable spad knows; fwknopd ignores unknown ones too".into(),
                ),
            },
        }
    }
    if udp_server && !nfq {
        d.capture = false;
    }
    if let Some((p, at)) = udp_port
        && udp_server
    {
        d.port = p;
        d.from.insert("UDPSERV_PORT", at);
    }
    if snat_on {
        d.snat = Some(snat_ip);
    }
    d.backend = match (backend, &firewall_exe) {
        (Some(b), _) => b.to_owned(),
        (None, Some(v)) => {
            let exe = Path::new(&v.value).file_name().and_then(|f| f.to_str()).unwrap_or_default();
            let b = if exe.starts_with("firewall") {
                "firewalld"
            } else if exe.starts_with("ipfw") {
                "ipfw"
            } else if exe.starts_with("pf") {
                "pf"
            } else if exe.starts_with("nft") {
                "nft"
            } else {
                "iptables"
            };
            d.from.insert("FIREWALL_EXE", format!("{}, {}", v.name, v.at));
            b.to_owned()
        }
        (None, None) => d.backend,
    };
    Ok(d)
}

/// A TOML string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A TOML array of strings.
fn array<S: AsRef<str>>(items: &[S]) -> String {
    format!("[{}]", items.iter().map(|s| quote(s.as_ref())).collect::<Vec<_>>().join(", "))
}

/// One stanza, converted: its lines, its notes, and whether it can run.
struct Converted {
    /// `key = value` lines.
    lines: Vec<String>,
    /// What was not carried over.
    unmapped: Vec<Unmapped>,
    /// Why the stanza cannot run at all (it is written commented out).
    disabled: Option<String>,
    /// The ports it opens (`None`: any port).
    open_ports: Option<Vec<spa_engine::ProtoPort>>,
}

fn convert_stanza(s: &RawStanza, index: usize, d: &Daemon) -> Converted {
    let mut c = Converted { lines: Vec::new(), unmapped: Vec::new(), disabled: None, open_ports: None };
    let last = |name: &str| s.vars.iter().rev().find(|v| v.name == name);
    let mut no =
        |v: &Var, why: String| c.unmapped.push(Unmapped { var: v.name.clone(), at: v.at.clone(), why });
    c.lines.push(format!("name = {}", quote(&format!("fwknop-{}", index + 1))));
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    // fwknop's last value of a variable wins; walk them in that order, once per name.
    let mut vars: Vec<&Var> = Vec::new();
    for v in s.vars.iter().rev() {
        if seen.insert(v.name.as_str()) {
            vars.push(v);
        }
    }
    vars.reverse();
    let mut enc_key = false;
    let mut hmac_key = false;
    let mut cmd_exec = None;
    // CMD_EXEC_USER / CMD_EXEC_GROUP (spad has them), and the sudo variables (it has not).
    let mut exec_as = Vec::new();
    let mut cmd_user = Vec::new();
    let mut gpg = Vec::new();
    let mut snat_own = false;
    let has_force_nat = last("FORCE_NAT").is_some();
    let forward_all = last("FORWARD_ALL").is_some_and(|v| yes(&v.value));
    for v in vars {
        let val = v.value.as_str();
        match v.name.as_str() {
            "SOURCE" | "DESTINATION" => {
                let key = v.name.to_ascii_lowercase();
                match val.parse::<AddrList>() {
                    Ok(_) if val.eq_ignore_ascii_case("any") => c.lines.push(format!("{key} = \"any\"")),
                    Ok(_) => {
                        let items: Vec<&str> = val.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
                        c.lines.push(format!("{key} = {}", array(&items)));
                    }
                    Err(e) => {
                        no(v, format!("spad cannot read it: {e}"));
                        if key == "source" {
                            c.disabled = Some(format!("its SOURCE ({}) is not usable: {e}", v.at));
                        }
                    }
                }
            }
            "OPEN_PORTS" | "RESTRICT_PORTS" => match val.parse::<PortList>() {
                Ok(p) => {
                    let items: Vec<String> = p.0.iter().map(ToString::to_string).collect();
                    c.lines.push(format!("{} = {}", v.name.to_ascii_lowercase(), array(&items)));
                    if v.name == "OPEN_PORTS" {
                        c.open_ports = Some(p.0);
                    }
                }
                Err(e) => {
                    no(v, format!("spad cannot read it: {e}"));
                    if v.name == "OPEN_PORTS" {
                        c.disabled = Some(format!(
                            "its OPEN_PORTS ({}) is not usable, and without it every port could be asked for",
                            v.at
                        ));
                    }
                }
            },
            "KEY" | "KEY_BASE64" | "HMAC_KEY" | "HMAC_KEY_BASE64" => {
                let hmac = v.name.starts_with("HMAC");
                let placeholder = val.eq_ignore_ascii_case("__CHANGEME__");
                if placeholder {
                    let p = if hmac { HMAC_PLACEHOLDER } else { KEY_PLACEHOLDER };
                    let key = if hmac { "hmac_key_base64" } else { "key_base64" };
                    c.lines.push(format!("{key} = {}", quote(p)));
                    no(v, "is fwknop's placeholder __CHANGEME__; put a key from `spa keygen` in its place (spad check refuses the placeholder)".into());
                } else {
                    let key = v.name.to_ascii_lowercase();
                    c.lines.push(format!("{key} = {}", quote(val)));
                    let len = if key.ends_with("_base64") {
                        spa_engine::b64::decode(val).map(|k| k.len())
                    } else {
                        Some(val.len())
                    };
                    if let Some(len) = len.filter(|l| *l < crate::config::MIN_KEY_LEN) {
                        no(v, format!(
                            "is {len} bytes; spad requires at least {} (spad check refuses it): make new keys \
                             with `spa keygen` and give them to the clients",
                            crate::config::MIN_KEY_LEN
                        ));
                    }
                }
                if hmac { hmac_key = true } else { enc_key = true }
            }
            "HMAC_DIGEST_TYPE" => c.lines.push(format!("hmac_digest_type = {}", quote(&val.to_ascii_lowercase()))),
            "ENCRYPTION_MODE" => {
                let mode = val.to_ascii_lowercase();
                if mode == "asymmetric" {
                    gpg.push(v);
                } else {
                    c.lines.push(format!("encryption_mode = {}", quote(&mode)));
                }
            }
            "FW_ACCESS_TIMEOUT" | "MAX_FW_TIMEOUT" => match val.parse::<u32>() {
                // fwknop takes 0 as "the default".
                Ok(0) => {}
                Ok(n) => c.lines.push(format!("{} = {n}", v.name.to_ascii_lowercase())),
                Err(_) => no(v, "is not a number of seconds".into()),
            },
            "REQUIRE_USERNAME" => c.lines.push(format!("require_username = {}", quote(val))),
            "REQUIRE_SOURCE_ADDRESS" | "REQUIRE_SOURCE" => {
                if yes(val) {
                    c.lines.push("require_source_address = true".into());
                }
            }
            "ENABLE_CMD_EXEC" => cmd_exec = Some(v),
            "CMD_EXEC_USER" | "CMD_EXEC_GROUP" => exec_as.push(v),
            "ENABLE_CMD_SUDO_EXEC" | "CMD_SUDO_EXEC_USER" | "CMD_SUDO_EXEC_GROUP" => cmd_user.push(v),
            "CMD_CYCLE_OPEN" | "CMD_CYCLE_CLOSE" | "CMD_CYCLE_TIMER" => no(
                v,
                "spad runs custom commands through the script backend ([firewall] backend = \"script\"), not per \
                 stanza"
                    .into(),
            ),
            "FORCE_NAT" => match val.parse::<NatTarget>() {
                Ok(_) if !d.forwarding => no(
                    v,
                    "spad needs [nat] enable_forwarding for it, which this fwknopd.conf does not enable".into(),
                ),
                Ok(t) => c.lines.push(format!("force_nat = {}", quote(&format!("{} {}", t.ip, t.port)))),
                Err(_) => no(v, "spad takes an address and a port here (no host names)".into()),
            },
            "FORCE_SNAT" => match val.parse::<IpAddr>() {
                Ok(_) if !has_force_nat && !forward_all => no(v, "needs FORCE_NAT or FORWARD_ALL".into()),
                Ok(ip) => {
                    c.lines.push(format!("force_snat = {}", quote(&ip.to_string())));
                    snat_own = true;
                }
                Err(_) => no(v, "is not an address".into()),
            },
            "FORCE_MASQUERADE" => {
                if yes(val) {
                    if !has_force_nat && !forward_all {
                        no(v, "needs FORCE_NAT or FORWARD_ALL".into());
                    } else if !snat_own {
                        c.lines.push("force_masquerade = true".into());
                        snat_own = true;
                    } else {
                        no(v, "FORCE_SNAT is set too; spad keeps FORCE_SNAT".into());
                    }
                }
            }
            "DISABLE_DNAT" => {
                if yes(val) {
                    c.lines.push("disable_dnat = true".into());
                }
            }
            "FORWARD_ALL" => {
                if yes(val) {
                    if !d.forwarding {
                        no(v, "spad needs [nat] enable_forwarding for it, which this fwknopd.conf does not enable".into());
                    } else {
                        c.lines.push("forward_all = true".into());
                        // fwknop forwards without translating when there is no FORCE_NAT.
                        if !has_force_nat && !last("DISABLE_DNAT").is_some_and(|v| yes(&v.value)) {
                            c.lines.push("disable_dnat = true".into());
                        }
                    }
                }
            }
            "ACCESS_EXPIRE" => c.lines.push(format!("access_expire = {}", quote(val))),
            "ACCESS_EXPIRE_EPOCH" => match val.parse::<u64>() {
                Ok(n) => c.lines.push(format!("access_expire = {n}")),
                Err(_) => no(v, "is not a Unix time".into()),
            },
            n if n.starts_with("GPG_") => gpg.push(v),
            _ => no(v, "is not an access.conf variable; fwknopd ignores unknown ones too".into()),
        }
    }
    let exec_user = exec_as.iter().rev().find(|v| v.name == "CMD_EXEC_USER");
    let exec_group = exec_as.iter().rev().find(|v| v.name == "CMD_EXEC_GROUP");
    let mut commands_on = false;
    if let Some(v) = cmd_exec.filter(|v| yes(&v.value)) {
        if cmd_user.is_empty() {
            c.lines.push("enable_cmd_exec = true".into());
            commands_on = true;
        } else {
            no(
                v,
                "left off: fwknop runs this stanza's commands through sudo, which spad does not do (it runs them \
                 as root, or as cmd_exec_user)"
                    .into(),
            );
        }
    }
    match (commands_on, exec_user) {
        (true, Some(u)) => {
            c.lines.push(format!("cmd_exec_user = {}", quote(&u.value)));
            if let Some(g) = exec_group {
                c.lines.push(format!("cmd_exec_group = {}", quote(&g.value)));
            }
        }
        // spad takes a command group only with a command user: said, and commands run as root.
        (true, None) => {
            if let Some(g) = exec_group {
                no(g, "spad takes cmd_exec_group only with cmd_exec_user; commands run as root".into());
            }
        }
        (false, _) => {
            for v in exec_as {
                no(v, "command messages are off for this stanza".into());
            }
        }
    }
    for v in cmd_user {
        no(v, "spad runs no command through sudo; command messages stay off for this stanza".into());
    }
    if !gpg.is_empty() {
        convert_gpg(&gpg, index, enc_key, hmac_key, &mut c);
    }
    if !enc_key && c.disabled.is_none() {
        c.disabled = Some(if gpg.is_empty() {
            "it has no KEY or KEY_BASE64".into()
        } else {
            "it uses GnuPG without GPG_DECRYPT_ID, which fwknopd cannot use either".into()
        });
    }
    if !hmac_key && c.disabled.is_none() {
        // fwknop's legacy mode, as the stanza had it: said loudly.
        c.lines.push("allow_no_hmac = true".into());
        c.unmapped.push(Unmapped {
            var: "HMAC_KEY".into(),
            at: s.at.clone(),
            why:
                "the stanza has no HMAC key: written with allow_no_hmac = true (packets are decrypted before \
                  anything authenticates them); add an HMAC key (`spa keygen`) and give it to the clients"
                    .into(),
        });
    }
    if let Some(snat) = d.snat.filter(|_| (has_force_nat || forward_all) && !snat_own && d.forwarding) {
        c.lines.push(match snat {
            Some(ip) => format!("force_snat = {}", quote(&ip.to_string())),
            None => "force_masquerade = true".into(),
        });
    }
    c
}

/// A stanza's `GPG_*` variables (and `ENCRYPTION_MODE asymmetric`). spad reads GnuPG keys from
/// exported files, not from a keyring, and the import does not run gpg: a GnuPG-only stanza is
/// written with its `gpg_*` keys but left out (commented), with the export commands that make
/// it loadable. A stanza that also has a Rijndael key keeps that and lists its GPG variables.
fn convert_gpg(gpg: &[&Var], index: usize, enc_key: bool, hmac_key: bool, c: &mut Converted) {
    let mut no = |v: &Var, why: &str| {
        c.unmapped.push(Unmapped { var: v.name.clone(), at: v.at.clone(), why: why.into() })
    };
    let last = |name: &str| gpg.iter().rev().find(|v| v.name == name).map(|v| v.value.as_str());
    let decrypt_id = last("GPG_DECRYPT_ID");
    if enc_key || decrypt_id.is_none() {
        let why = if enc_key {
            "this stanza also takes GnuPG packets in fwknop; spad can too (gpg_* keys, with its gpg feature) \
             once the keys are exported to files: add them by hand (README: fwknop's GPG mode)"
        } else {
            "GnuPG without GPG_DECRYPT_ID; fwknopd cannot use it either"
        };
        for v in gpg {
            no(v, why);
        }
        return;
    }
    let id = decrypt_id.unwrap_or_default();
    let n = index + 1;
    let server_file = format!("/etc/spad/gpg/fwknop-{n}-server.asc");
    let signers_file = format!("/etc/spad/gpg/fwknop-{n}-signers.asc");
    let mut lines = vec![
        format!("gpg_decrypt_key_file = {}", quote(&server_file)),
        format!("gpg_decrypt_id = {}", quote(id)),
    ];
    let mut signers: Vec<String> = Vec::new();
    for v in gpg {
        let val = v.value.as_str();
        let list = || -> Vec<String> {
            val.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
        };
        match v.name.as_str() {
            "GPG_DECRYPT_ID" | "GPG_HOME_DIR" | "ENCRYPTION_MODE" => {}
            "GPG_DECRYPT_PW" => lines.push(format!("gpg_decrypt_pw = {}", quote(val))),
            "GPG_ALLOW_NO_PW" if yes(val) => lines.push("gpg_allow_no_pw = true".into()),
            "GPG_REQUIRE_SIG" => lines.push(format!("gpg_require_sig = {}", yes(val))),
            "GPG_DISABLE_SIG" if yes(val) => lines.push("gpg_disable_sig = true".into()),
            "GPG_REMOTE_ID" | "GPG_FINGERPRINT_ID" => {
                signers.extend(list());
                lines.push(format!("{} = {}", v.name.to_ascii_lowercase(), array(&list())));
            }
            "GPG_IGNORE_SIG_VERIFY_ERROR" if yes(val) => {
                no(v, "spad never accepts a signature that does not verify with the signer's exported key");
            }
            "GPG_EXE" => no(v, "spad runs no gpg process (OpenPGP is built in)"),
            "GPG_ALLOW_NO_PW" | "GPG_DISABLE_SIG" | "GPG_IGNORE_SIG_VERIFY_ERROR" => {}
            _ => no(v, "is not an access.conf variable; fwknopd ignores unknown ones too"),
        }
    }
    if !signers.is_empty() {
        lines.push(format!("gpg_remote_keys_file = {}", quote(&signers_file)));
    }
    if !hmac_key {
        lines.push("allow_no_hmac = true".into());
    }
    c.lines.extend(lines);
    let home = last("GPG_HOME_DIR").map(|h| format!(" --homedir {h}")).unwrap_or_default();
    let mut how = format!("`gpg{home} --export-secret-keys --armor {id} > {server_file}`");
    if !signers.is_empty() {
        let _ = write!(how, " and `gpg{home} --export --armor {} > {signers_file}`", signers.join(" "));
    }
    c.disabled = Some(format!(
        "it uses GnuPG, whose keys spad reads from exported files: run {how}, chmod 600 them, and remove the \
         # before the lines below (spad needs its gpg feature)"
    ));
}

/// Reads the fwknop files and builds the spad files' texts.
pub fn convert(access: Option<&Path>, config: Option<&Path>, backend: Option<&str>) -> Result<Import> {
    let mut unmapped = Vec::new();
    let d = read_daemon(config, backend, &mut unmapped)?;
    let access: PathBuf = match (access, &d.access_file) {
        (Some(a), _) => a.to_owned(),
        (None, Some(a)) => a.clone(),
        (None, None) => PathBuf::from(DEFAULT_ACCESS),
    };
    let mut read = Read::default();
    read_access(&access, 1, &mut read, &mut Vec::new())?;
    if let Some(folder) = &d.access_folder {
        let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
            .with_context(|| format!("ACCESS_FOLDER {}", folder.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
            .collect();
        files.sort();
        for f in files {
            let before = read.stanzas.len();
            read_access(&f, 1, &mut read, &mut Vec::new())?;
            read.included |= read.stanzas.len() > before;
        }
    }
    unmapped.append(&mut read.unmapped);
    if read.stanzas.is_empty() {
        bail!("{}: no stanza (no SOURCE line); fwknopd refuses that too", access.display());
    }
    if d.snat.is_some() {
        unmapped.push(Unmapped {
            var: "ENABLE_IPT_SNAT".into(),
            at: config.map(|p| p.display().to_string()).unwrap_or_default(),
            why: "spad source-NATs per stanza: carried over to the stanzas with FORCE_NAT or FORWARD_ALL; \
                  NAT requests of other stanzas (fwknop -N) are not source-NATed"
                .into(),
        });
    }

    let converted: Vec<Converted> =
        read.stanzas.iter().enumerate().map(|(i, s)| convert_stanza(s, i, &d)).collect();
    let live = converted.iter().filter(|c| c.disabled.is_none()).count();
    let mut protect: BTreeSet<spa_engine::ProtoPort> = BTreeSet::new();
    let mut any_port = Vec::new();
    for (s, c) in read.stanzas.iter().zip(&converted) {
        if c.disabled.is_some() {
            continue;
        }
        match &c.open_ports {
            Some(p) => protect.extend(p.iter().cloned()),
            None => any_port.push(s.at.clone()),
        }
    }
    for c in &converted {
        unmapped.extend(c.unmapped.iter().cloned());
    }

    let mut main = String::new();
    let _ = writeln!(main, "# spad configuration imported from fwknop by `spad import-fwknop` from:");
    if let Some(c) = config {
        let _ = writeln!(main, "#   {}", c.display());
    }
    let _ = writeln!(main, "#   {}", access.display());
    let _ = writeln!(
        main,
        "# Check it with `spad check --config <this file>`; every key is described in spad.toml(5)."
    );
    if unmapped.is_empty() {
        let _ = writeln!(main, "# Every fwknop variable was carried over.");
    } else {
        let _ = writeln!(main, "#\n# Not carried over, or needing attention (variable, where, why):");
        for u in &unmapped {
            let _ = writeln!(main, "#   {u}");
        }
    }
    let _ = writeln!(main);
    let _ = writeln!(main, "[listen]");
    if d.capture {
        let _ = writeln!(main, "# fwknopd captured with pcap: spad captures with a packet socket");
        let _ = writeln!(main, "mode = \"capture\"");
        let _ = writeln!(main, "interfaces = {}{}", array(&[d.interface.as_str()]), from(&d, "PCAP_INTF"));
        let _ = writeln!(main, "port = {}{}", d.port, from(&d, "PCAP_FILTER"));
    } else {
        let _ = writeln!(
            main,
            "# fwknopd's UDP server (ENABLE_UDP_SERVER) listened on IPv4 only; add \"[::]:{}\" for IPv6",
            d.port
        );
        let _ = writeln!(main, "mode = \"socket\"");
        let _ = writeln!(
            main,
            "addresses = {}{}",
            array(&[format!("0.0.0.0:{}", d.port)]),
            from(&d, "UDPSERV_PORT")
        );
    }
    if d.tcp || d.http {
        let _ = writeln!(main, "\n[listen.tcp]");
        if !d.tcp {
            let _ = writeln!(
                main,
                "# fwknopd sniffed HTTP knocks with pcap; spad takes them on a TCP listener (exposed: see README)"
            );
        }
        let _ = writeln!(
            main,
            "enable = true{}",
            from(&d, if d.tcp { "ENABLE_TCP_SERVER" } else { "ENABLE_SPA_OVER_HTTP" })
        );
        let _ = writeln!(
            main,
            "addresses = {}{}",
            array(&[format!("0.0.0.0:{}", d.tcp_port), format!("[::]:{}", d.tcp_port)]),
            from(&d, "TCPSERV_PORT")
        );
        if d.http {
            let _ = writeln!(main, "http = true{}", from(&d, "ENABLE_SPA_OVER_HTTP"));
        }
    }
    let _ = writeln!(main, "\n[firewall]");
    let _ = writeln!(main, "backend = {}{}", quote(&d.backend), from(&d, "FIREWALL_EXE"));
    let _ =
        writeln!(main, "keep_grants_on_exit = {}{}", d.keep_grants_on_exit, from(&d, "FLUSH_IPT_AT_EXIT"));
    let protect: Vec<String> = protect.iter().map(ToString::to_string).collect();
    let protect_line = |main: &mut String| {
        let _ = writeln!(
            main,
            "# The ports the stanzas open, closed to everyone else (fwknopd left that to your own rules)."
        );
        if !any_port.is_empty() {
            let _ = writeln!(
                main,
                "# Stanzas without OPEN_PORTS ({}) may open any port: add the ones they are for.",
                any_port.join(", ")
            );
        }
        let _ = writeln!(main, "protect = {}", array(&protect));
    };
    match d.backend.as_str() {
        "nft" => {
            let _ = writeln!(main, "\n[firewall.nft]\ntable = \"spa\"");
            protect_line(&mut main);
        }
        "iptables" | "firewalld" | "ipfw" => {
            let _ = writeln!(main, "\n[firewall.{}]", d.backend);
            protect_line(&mut main);
        }
        "pf" => {
            let _ = writeln!(main, "\n[firewall.pf]");
            if let Some(a) = &d.pf_anchor {
                let _ = writeln!(main, "anchor = {}{}", quote(a), from(&d, "PF_ANCHOR_NAME"));
            }
            protect_line(&mut main);
        }
        _ => {}
    }
    let _ = writeln!(main, "\n[replay]");
    let _ = writeln!(main, "max_packet_age = {}{}", d.max_packet_age, from(&d, "MAX_SPA_PACKET_AGE"));
    let _ = writeln!(main, "state_dir = \"/var/lib/spad\"");
    let _ = writeln!(main, "\n[log]\naudit = \"/var/log/spad/audit.jsonl\"");
    let _ = writeln!(main, "\n[nat]");
    let _ = writeln!(main, "enable_forwarding = {}{}", d.forwarding, from(&d, "ENABLE_IPT_FORWARDING"));
    let _ = writeln!(main, "enable_local_nat = {}{}", d.local_nat, from(&d, "ENABLE_IPT_LOCAL_NAT"));

    // Stanzas: in spad.toml, or (when the access file included others) in access.d files,
    // one per run of stanzas from the same fwknop file, numbered so spad loads them in
    // fwknop's order.
    let mut files = Vec::new();
    if read.included {
        let mut runs: Vec<(PathBuf, Vec<usize>)> = Vec::new();
        for (i, s) in read.stanzas.iter().enumerate() {
            match runs.last_mut() {
                Some((f, idx)) if *f == s.file => idx.push(i),
                _ => runs.push((s.file.clone(), vec![i])),
            }
        }
        let _ = writeln!(
            main,
            "\n# The access stanzas are in access.d/ (one file per fwknop file, in fwknop's order)."
        );
        for (n, (file, idx)) in runs.iter().enumerate() {
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("access");
            let stem: String = stem
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
                .collect();
            let name = PathBuf::from("access.d").join(format!("{:02}-{stem}.toml", n + 1));
            let mut text =
                format!("# Access stanzas imported from {} by `spad import-fwknop`.\n", file.display());
            for &i in idx {
                stanza_text(&mut text, &read.stanzas[i], &converted[i]);
            }
            files.push((name, text));
        }
    } else {
        for (s, c) in read.stanzas.iter().zip(&converted) {
            stanza_text(&mut main, s, c);
        }
    }
    files.insert(0, (PathBuf::from("spad.toml"), main));
    Ok(Import { files, unmapped, stanzas: live })
}

/// `  # fwknop PCAP_INTF, file:line` when the value came from a variable.
fn from(d: &Daemon, var: &str) -> String {
    match (var, d.from.get(var)) {
        // Its entry names the variable that chose it.
        ("FIREWALL_EXE", Some(at)) => format!("   # fwknop {at}"),
        (_, Some(at)) => format!("   # fwknop {var}, {at}"),
        (_, None) => String::new(),
    }
}

fn stanza_text(out: &mut String, s: &RawStanza, c: &Converted) {
    let _ = writeln!(out, "\n# fwknop stanza from {}", s.at);
    for u in &c.unmapped {
        let _ = writeln!(out, "# not carried over: {u}");
    }
    match &c.disabled {
        None => {
            let _ = writeln!(out, "[[access]]");
            for l in &c.lines {
                let _ = writeln!(out, "{l}");
            }
        }
        Some(why) => {
            let _ = writeln!(out, "# Left out: {why}.");
            let _ = writeln!(out, "# [[access]]");
            for l in &c.lines {
                let _ = writeln!(out, "# {l}");
            }
        }
    }
}

/// Writes the files under `out` (mode 0600), refusing to replace any that exists unless
/// `force`. Returns the paths written.
pub fn write(import: &Import, out: &Path, force: bool) -> Result<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = import.files.iter().map(|(name, _)| out.join(name)).collect();
    if !force {
        let existing: Vec<String> =
            paths.iter().filter(|p| p.symlink_metadata().is_ok()).map(|p| p.display().to_string()).collect();
        if !existing.is_empty() {
            bail!(
                "{} already exist{}; nothing written (--force replaces them, --out DIR writes elsewhere)",
                existing.join(", "),
                if existing.len() == 1 { "s" } else { "" }
            );
        }
    }
    for ((_, text), path) in import.files.iter().zip(&paths) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(force)
            .create_new(!force)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // Whatever the file's mode was (--force) or the umask: it holds keys.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod 600 {}", path.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(paths)
}

/// `spad import-fwknop`: converts, writes, and reports on stdout (the files) and stderr (what
/// was not carried over).
pub fn run(
    access: Option<&Path>,
    config: Option<&Path>,
    out: &Path,
    force: bool,
    backend: Option<&str>,
) -> Result<()> {
    let import = convert(access, config, backend)?;
    let written = write(&import, out, force)?;
    for u in &import.unmapped {
        eprintln!("not carried over: {u}");
    }
    // access.d files this import did not write are loaded too.
    let ours: BTreeSet<&PathBuf> = written.iter().collect();
    if let Ok(entries) = std::fs::read_dir(out.join("access.d")) {
        for p in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if p.extension().is_some_and(|x| x == "toml") && !ours.contains(&p) {
                eprintln!("note: {} was not written by this import, and spad loads it too", p.display());
            }
        }
    }
    for p in &written {
        println!("wrote {}", p.display());
    }
    println!(
        "{} access stanzas; {} fwknop variables not carried over or needing attention{}; check with: spad check \
         --config {}",
        import.stanzas,
        import.unmapped.len(),
        if import.unmapped.is_empty() { "" } else { " (listed above and in the file)" },
        out.join("spad.toml").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_as_fwknopd_splits_them() {
        let mut unmapped = Vec::new();
        let text = "# comment\n\n  SOURCE:   ANY;  trailing\nKEY\tpass phrase with spaces ;\nFORCE_NAT 10.0.0.2 22\r\n; also a \
                    comment\nNOVALUE\n";
        let vars = lines(Path::new("a.conf"), text, &mut unmapped);
        let got: Vec<(&str, &str, &str)> =
            vars.iter().map(|v| (v.name.as_str(), v.value.as_str(), v.at.as_str())).collect();
        assert_eq!(
            got,
            [
                ("SOURCE", "ANY", "a.conf:3"),
                ("KEY", "pass phrase with spaces", "a.conf:4"),
                ("FORCE_NAT", "10.0.0.2 22", "a.conf:5"),
            ]
        );
        assert_eq!(
            unmapped,
            [Unmapped { var: "NOVALUE".into(), at: "a.conf:7".into(), why: "has no value".into() }]
        );
    }

    #[test]
    fn only_a_plain_udp_port_filter_is_understood() {
        assert_eq!(filter_port("udp port 62201"), Some(62201));
        assert_eq!(filter_port("udp dst port 40000"), Some(40000));
        assert_eq!(filter_port("udp dst portrange 10000-65535"), None);
        assert_eq!(filter_port("udp port 0"), None);
        assert_eq!(filter_port("tcp port 22"), None);
    }

    #[test]
    fn includes_that_loop_or_nest_too_deep_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.conf");
        std::fs::write(&a, "%include a.conf\n").unwrap();
        let e = convert(Some(&a), None, None).unwrap_err().to_string();
        assert_eq!(e, format!("{}: includes itself", a.display()));
        for (i, next) in ["b", "c", "d", "e"].iter().enumerate() {
            let this = dir.path().join(format!("{}.conf", ["a", "b", "c", "d"][i]));
            std::fs::write(&this, format!("%include {next}.conf\n")).unwrap();
        }
        std::fs::write(dir.path().join("e.conf"), "SOURCE ANY\n").unwrap();
        let e = convert(Some(&a), None, None).unwrap_err().to_string();
        assert!(e.ends_with("includes nest deeper than 3 levels (fwknopd refuses that too)"), "{e}");
    }

    #[test]
    fn the_backend_follows_the_firewall_fwknopd_drove() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fwknopd.conf");
        for (line, backend) in [
            ("FIREWALL_EXE /usr/bin/firewall-cmd;", "firewalld"),
            ("FIREWALL_EXE /sbin/iptables;", "iptables"),
            ("FIREWALL_EXE /sbin/ipfw;", "ipfw"),
            ("FIREWALL_EXE /sbin/pfctl;", "pf"),
            ("FIREWALL_TYPE pf;", "pf"),
            ("FIREWALL_TYPE iptables;", "iptables"),
            ("# nothing", "iptables"),
        ] {
            std::fs::write(&p, format!("{line}\n")).unwrap();
            let mut unmapped = Vec::new();
            let d = read_daemon(Some(&p), None, &mut unmapped).unwrap();
            assert_eq!(d.backend, backend, "{line}");
            assert!(unmapped.is_empty(), "{unmapped:?}");
            assert_eq!(read_daemon(Some(&p), Some("nft"), &mut unmapped).unwrap().backend, "nft");
        }
    }

    #[test]
    fn no_stanza_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("access.conf");
        std::fs::write(&a, "# nothing\nKEY x\n").unwrap();
        let e = convert(Some(&a), None, None).unwrap_err().to_string();
        assert_eq!(e, format!("{}: no stanza (no SOURCE line); fwknopd refuses that too", a.display()));
    }
}

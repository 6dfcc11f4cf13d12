//! The `script` backend: the firewall is changed by commands the administrator writes.
//!
//! This is fwknop's `CMD_CYCLE_OPEN`/`CMD_CYCLE_CLOSE` done right: every port is passed (not
//! just the first), a re-knock extends instead of opening twice, commands are argv arrays (no
//! shell unless the admin asks for one), each run has a hard time limit that kills the whole
//! process group, and the grant reaches the command three ways: `{placeholders}` in argv,
//! `SPA_*` environment variables and JSON on stdin.
//!
//! **What it creates:** nothing itself. Whatever exists in the firewall is what the `open`
//! command made; this backend only remembers (in memory) which grants it opened, so it can run
//! `close` for them at their deadline, on revoke and at teardown.
//!
//! **How to inspect:** `spad list` shows the grants this backend holds; the firewall side is
//! whatever the scripts manage (for the example `conf/script/nft-set.sh`:
//! `nft list table inet spa_script`).
//!
//! **How to remove by hand:** run the `close` command with the values of the grant, or undo
//! what the script does (for the example: `nft delete table inet spa_script`).
//!
//! The rest of this page is the contract a script author gets (also in
//! `conf/script/README.md`).
//!
#![doc = include_str!("../../conf/script/README.md")]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use spa_backends::process::{self, Environment, Invocation, Outcome};
use spa_backends::{
    Access, Backend, BackendDescriptor, BackendError, Capabilities, Grant, GrantId, Nat, Owned, ProtoPort,
    Snat,
};

mod template;

use template::{Template, TemplateError, Var};

/// The time limit of one command when `timeout_ms` is not set.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
/// The largest `timeout_ms` accepted: the backend worker waits for each command, so a longer
/// limit would stall every other grant.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// `PATH` for the commands unless `env` or `pass_env` sets it: the environment is never
/// inherited wholesale.
pub const DEFAULT_PATH: &str = process::DEFAULT_PATH;

inventory::submit! {
    BackendDescriptor {
        name: "script",
        description: "runs admin-written open/close/check commands (argv placeholders, SPA_* env, JSON on stdin)",
        create: ScriptBackend::from_table,
    }
}

/// How many times a command runs for one grant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    /// Once per (protocol, port); once with empty `{proto}`/`{port}` for forward-all.
    #[default]
    Port,
    /// Once per grant, whatever its ports (`{ports}` lists them).
    Grant,
}

impl Per {
    const fn name(self) -> &'static str {
        match self {
            Per::Port => "port",
            Per::Grant => "grant",
        }
    }
}

/// `[firewall.script]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    open: Vec<String>,
    close: Vec<String>,
    #[serde(default)]
    check: Option<Vec<String>>,
    #[serde(default)]
    per: Per,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    reopen_on_extend: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    pass_env: Vec<String>,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// What a command is asked to do (`{action}`, `SPA_ACTION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Open,
    Close,
    Check,
}

impl Action {
    const fn name(self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::Close => "close",
            Action::Check => "check",
        }
    }
}

/// A checked command: a fixed program and templated arguments.
#[derive(Debug)]
struct Cmd {
    program: String,
    args: Vec<Template>,
}

impl Cmd {
    fn parse(key: &str, argv: &[String]) -> Result<Self, BackendError> {
        let invalid = |why: String| BackendError::Invalid(format!("{key}: {why}"));
        let (program, rest) = argv.split_first().ok_or_else(|| invalid("empty command".into()))?;
        let parsed = Template::parse(program).map_err(|e| invalid(e.to_string()))?;
        if parsed.has_placeholders() || program.contains(['{', '}']) {
            return Err(invalid(format!("the program {program:?} must be fixed (no placeholders)")));
        }
        if program.is_empty() {
            return Err(invalid("empty program name".into()));
        }
        if program.contains('/') && !program.starts_with('/') {
            return Err(invalid(format!(
                "the program {program:?} must be an absolute path or a name looked up in PATH"
            )));
        }
        let args = rest
            .iter()
            .map(|a| Template::parse(a))
            .collect::<Result<Vec<_>, TemplateError>>()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self { program: program.clone(), args })
    }
}

/// The `script` backend. See the crate documentation for the contract.
#[derive(Debug)]
pub struct ScriptBackend {
    open: Cmd,
    close: Cmd,
    check: Option<Cmd>,
    per: Per,
    limit: Duration,
    reopen_on_extend: bool,
    /// The fixed part of every command's environment (PATH, `env`, `pass_env`).
    base_env: Vec<(String, String)>,
    /// The grants whose `open` succeeded and whose `close` has not.
    grants: BTreeMap<GrantId, Grant>,
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_env_name(key: &str, name: &str) -> Result<(), BackendError> {
    if !valid_env_name(name) {
        return Err(BackendError::Invalid(format!("{key}: {name:?} is not a variable name")));
    }
    if name.starts_with("SPA_") {
        return Err(BackendError::Invalid(format!("{key}: {name:?} is reserved (SPA_* carry the grant)")));
    }
    Ok(())
}

impl ScriptBackend {
    /// Builds it from `[firewall.script]`; every template is checked here, so a typo in a
    /// placeholder stops the daemon at start rather than at the first knock.
    pub fn from_table(table: &toml::Table) -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(Self::new(table)?))
    }

    /// Like [`ScriptBackend::from_table`], without the box (for tests and embedding).
    pub fn new(table: &toml::Table) -> Result<Self, BackendError> {
        let cfg: Config = toml::Value::Table(table.clone()).try_into().map_err(BackendError::Config)?;
        if cfg.timeout_ms == 0 || cfg.timeout_ms > MAX_TIMEOUT_MS {
            return Err(BackendError::Invalid(format!(
                "timeout_ms: {} is outside 1..={MAX_TIMEOUT_MS}",
                cfg.timeout_ms
            )));
        }
        let mut base: BTreeMap<String, String> = BTreeMap::new();
        base.insert("PATH".into(), DEFAULT_PATH.into());
        for name in &cfg.pass_env {
            check_env_name("pass_env", name)?;
            if let Some(value) = std::env::var_os(name) {
                let value = value.into_string().map_err(|_| {
                    BackendError::Invalid(format!("pass_env: the value of {name} is not UTF-8"))
                })?;
                base.insert(name.clone(), value);
            }
        }
        for (name, value) in &cfg.env {
            check_env_name("env", name)?;
            if value.contains('\0') {
                return Err(BackendError::Invalid(format!("env: the value of {name} contains a NUL byte")));
            }
            base.insert(name.clone(), value.clone());
        }
        Ok(Self {
            open: Cmd::parse("open", &cfg.open)?,
            close: Cmd::parse("close", &cfg.close)?,
            check: cfg.check.as_deref().map(|c| Cmd::parse("check", c)).transpose()?,
            per: cfg.per,
            limit: Duration::from_millis(cfg.timeout_ms),
            reopen_on_extend: cfg.reopen_on_extend,
            base_env: base.into_iter().collect(),
            grants: BTreeMap::new(),
        })
    }

    /// The calls one grant makes: one per port, or one for the grant.
    fn units(&self, grant: &Grant) -> Vec<Option<ProtoPort>> {
        match (self.per, &grant.access) {
            (Per::Grant, _) | (Per::Port, Access::All) => vec![None],
            (Per::Port, Access::Ports(ports)) if ports.is_empty() => vec![None],
            (Per::Port, Access::Ports(ports)) => ports.iter().copied().map(Some).collect(),
        }
    }

    fn cmd(&self, action: Action) -> Option<&Cmd> {
        match action {
            Action::Open => Some(&self.open),
            Action::Close => Some(&self.close),
            Action::Check => self.check.as_ref(),
        }
    }

    /// Runs `action` for one unit of `grant`; `None` when that action is not configured.
    fn call(
        &self,
        action: Action,
        grant: &Grant,
        port: Option<ProtoPort>,
    ) -> Result<Option<Outcome>, BackendError> {
        let Some(cmd) = self.cmd(action) else { return Ok(None) };
        let ctx = Context { action, per: self.per, grant, port, now: unix_now() };
        let mut label = format!("{} command {}", action.name(), cmd.program);
        if let Some(p) = port {
            label.push_str(&format!(" for {p}"));
        }
        let mut env = self.base_env.clone();
        env.extend(Var::ALL.iter().map(|&v| (v.env_name(), ctx.value(v))));
        let input = Input {
            action: action.name(),
            per: self.per.name(),
            id: grant.id.to_string(),
            port,
            timeout: grant.remaining(ctx.now),
            grant,
        };
        let stdin = serde_json::to_vec(&input).map_err(|e| BackendError::Parse {
            program: label.clone(),
            detail: format!("cannot encode the grant as JSON: {e}"),
        })?;
        let outcome = process::run(
            Invocation::new(cmd.program.clone(), self.limit)
                .args(cmd.args.iter().map(|t| t.render(|v| ctx.value(v))))
                .env(Environment::Clear(env))
                .stdin(stdin)
                .label(label),
        )?;
        Ok(Some(outcome))
    }

    /// Runs `open` or `close` for one unit and requires success.
    fn must(&self, action: Action, grant: &Grant, port: Option<ProtoPort>) -> Result<(), BackendError> {
        match self.call(action, grant, port)? {
            Some(outcome) if !outcome.status.success() => Err(outcome.failed()),
            _ => Ok(()),
        }
    }

    /// Asks `check` whether one unit is present: exit 0 yes, 1 no, anything else an error.
    fn present(&self, grant: &Grant, port: Option<ProtoPort>) -> Result<Option<bool>, BackendError> {
        match self.call(Action::Check, grant, port)? {
            None => Ok(None),
            Some(outcome) if outcome.status.code() == Some(0) => Ok(Some(true)),
            Some(outcome) if outcome.status.code() == Some(1) => Ok(Some(false)),
            Some(outcome) => Err(outcome.failed()),
        }
    }

    /// Opens every unit of a new grant; on a failure closes what it opened (best effort) and
    /// returns the failure. With `use_check`, units that `check` finds present are left alone.
    fn open_all(&self, grant: &Grant, use_check: bool) -> Result<(), BackendError> {
        let mut opened = Vec::new();
        for port in self.units(grant) {
            let step = if use_check {
                self.present(grant, port).and_then(|present| match present {
                    Some(true) => Ok(()),
                    _ => self.must(Action::Open, grant, port),
                })
            } else {
                self.must(Action::Open, grant, port)
            };
            if let Err(e) = step {
                for port in opened.into_iter().rev() {
                    // The open error is what the caller needs; close is idempotent by
                    // contract, and a failure here leaves what the script left.
                    let _best_effort = self.must(Action::Close, grant, port);
                }
                return Err(e);
            }
            opened.push(port);
        }
        Ok(())
    }

    /// Runs `close` for every unit, all of them even when one fails; the first error wins.
    fn close_all(&self, grant: &Grant) -> Result<(), BackendError> {
        let mut first = None;
        for port in self.units(grant) {
            if let Err(e) = self.must(Action::Close, grant, port) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Runs `open` again for every unit of an extended grant (`reopen_on_extend`).
    fn reopen(&self, grant: &Grant) -> Result<(), BackendError> {
        for port in self.units(grant) {
            self.must(Action::Open, grant, port)?;
        }
        Ok(())
    }
}

impl Backend for ScriptBackend {
    fn name(&self) -> &str {
        "script"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { nat: true, ipv6: true, native_expiry: false }
    }

    fn prepare(&mut self, live: &[Grant]) -> Result<(), BackendError> {
        let wanted: BTreeMap<GrantId, &Grant> = live.iter().map(|g| (g.id, g)).collect();
        let mut first = None;
        let stale: Vec<Grant> = self
            .grants
            .values()
            .filter(|held| wanted.get(&held.id).is_none_or(|g| !held.same_access(g)))
            .cloned()
            .collect();
        for held in stale {
            match self.close_all(&held) {
                Ok(()) => {
                    self.grants.remove(&held.id);
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        let use_check = self.check.is_some();
        for g in live {
            match self.open_all(g, use_check) {
                Ok(()) => {
                    self.grants.insert(g.id, g.clone());
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn grant(&mut self, grant: &Grant) -> Result<(), BackendError> {
        if let Some(held) = self.grants.get(&grant.id) {
            if held.same_access(grant) {
                // A re-knock: the firewall already lets it in; only the deadline moves.
                self.grants.insert(grant.id, grant.clone());
                return if self.reopen_on_extend { self.reopen(grant) } else { Ok(()) };
            }
            // Same id, different access: never leave the old opening behind.
            let held = held.clone();
            self.close_all(&held)?;
            self.grants.remove(&grant.id);
        }
        self.open_all(grant, false)?;
        self.grants.insert(grant.id, grant.clone());
        Ok(())
    }

    fn revoke(&mut self, grant: &Grant) -> Result<(), BackendError> {
        // A grant this process never opened is one the daemon recorded before a restart
        // (it ended while the daemon was down): close it as recorded. `close` must therefore
        // succeed when the opening is already gone.
        let held = self.grants.get(&grant.id).cloned().unwrap_or_else(|| grant.clone());
        // Close what was opened (the held grant), and keep it on failure so a retry or the
        // teardown can still close it.
        self.close_all(&held)?;
        self.grants.remove(&grant.id);
        Ok(())
    }

    fn list(&mut self) -> Result<Vec<Owned>, BackendError> {
        Ok(self
            .grants
            .values()
            .map(|g| Owned { id: Some(g.id), entry: describe(g), deadline: Some(g.deadline) })
            .collect())
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        let mut first = None;
        let ids: BTreeSet<GrantId> = self.grants.keys().copied().collect();
        for id in ids {
            let Some(held) = self.grants.get(&id).cloned() else { continue };
            match self.close_all(&held) {
                Ok(()) => {
                    self.grants.remove(&id);
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The JSON document on every command's stdin.
#[derive(Serialize)]
struct Input<'a> {
    action: &'static str,
    per: &'static str,
    /// The id as 16 hex digits (JSON numbers above 2^53 lose precision in many tools).
    id: String,
    port: Option<ProtoPort>,
    timeout: u64,
    grant: &'a Grant,
}

/// Everything a placeholder can be replaced with, for one call.
struct Context<'a> {
    action: Action,
    per: Per,
    grant: &'a Grant,
    port: Option<ProtoPort>,
    now: u64,
}

impl Context<'_> {
    fn value(&self, var: Var) -> String {
        let g = self.grant;
        match var {
            Var::Action => self.action.name().into(),
            Var::Per => self.per.name().into(),
            Var::Id => g.id.to_string(),
            Var::Source => g.source.to_string(),
            Var::Family => family(g.source).into(),
            Var::PacketSource => g.packet_source.to_string(),
            Var::Destination => g.destination.map(|d| d.to_string()).unwrap_or_default(),
            Var::Proto => self.port.map(|p| p.proto.name().to_owned()).unwrap_or_default(),
            Var::ProtoNum => self.port.map(|p| p.proto.number().to_string()).unwrap_or_default(),
            Var::Port => self.port.map(|p| p.port.to_string()).unwrap_or_default(),
            Var::Ports => g.access.to_string(),
            Var::Nat => match &g.nat {
                None => String::new(),
                Some(Nat::Dnat { .. }) => "dnat".into(),
                Some(Nat::Route { .. }) => "route".into(),
                Some(Nat::Redirect { .. }) => "redirect".into(),
            },
            Var::NatAddr => match &g.nat {
                Some(Nat::Dnat { to, .. }) => to.to_string(),
                _ => String::new(),
            },
            Var::NatPort => match &g.nat {
                Some(Nat::Dnat { port: Some(p), .. }) | Some(Nat::Redirect { port: p }) => p.to_string(),
                Some(Nat::Dnat { port: None, .. }) => {
                    self.port.map(|p| p.port.to_string()).unwrap_or_default()
                }
                _ => String::new(),
            },
            Var::Snat => match &g.nat {
                Some(Nat::Dnat { snat: Some(s), .. }) | Some(Nat::Route { snat: Some(s) }) => match s {
                    Snat::To(addr) => addr.to_string(),
                    Snat::Masquerade => "masquerade".into(),
                },
                _ => String::new(),
            },
            Var::Timeout => g.remaining(self.now).to_string(),
            Var::Deadline => g.deadline.to_string(),
            Var::Created => g.created.to_string(),
            Var::Stanza => g.stanza.clone(),
            Var::Username => g.username.clone(),
        }
    }
}

fn family(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One line for `spad list`.
fn describe(g: &Grant) -> String {
    let mut s = format!("{} {}", g.source, g.access);
    match &g.nat {
        None => {}
        Some(Nat::Dnat { to, port: Some(p), .. }) => s.push_str(&format!(" dnat {to} port {p}")),
        Some(Nat::Dnat { to, port: None, .. }) => s.push_str(&format!(" dnat {to}")),
        Some(Nat::Route { .. }) => s.push_str(" route"),
        Some(Nat::Redirect { port }) => s.push_str(&format!(" redirect {port}")),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    fn err(s: &str) -> String {
        ScriptBackend::new(&table(s)).unwrap_err().to_string()
    }

    #[test]
    fn config_is_checked_at_load() {
        let ok = ScriptBackend::new(&table(
            r#"open = ["/bin/true", "{source}"]
close = ["true"]"#,
        ))
        .unwrap();
        assert_eq!(ok.per, Per::Port);
        assert_eq!(ok.limit, Duration::from_millis(DEFAULT_TIMEOUT_MS));
        assert!(!ok.reopen_on_extend);

        assert_eq!(err(r#"open = ["true"]"#), "invalid backend configuration");
        assert_eq!(
            err(r#"open = ["true"]
close = ["true"]
bogus = 1"#),
            "invalid backend configuration"
        );
        assert_eq!(
            err(r#"open = []
close = ["true"]"#),
            "invalid backend configuration: open: empty command"
        );
        assert!(
            err(r#"open = ["{source}"]
close = ["true"]"#)
            .contains("must be fixed")
        );
        assert!(
            err(r#"open = ["bin/x"]
close = ["true"]"#)
            .contains("absolute path")
        );
        assert!(
            err(r#"open = ["true", "{sorce}"]
close = ["true"]"#)
            .contains("unknown placeholder {sorce}")
        );
        assert!(
            err(r#"open = ["true"]
close = ["true"]
timeout_ms = 0"#)
            .contains("timeout_ms")
        );
        assert!(
            err(r#"open = ["true"]
close = ["true"]
per = "host""#)
            .starts_with("invalid backend configuration")
        );
        assert!(
            err(r#"open = ["true"]
close = ["true"]
env = { SPA_X = "1" }"#)
            .contains("reserved")
        );
        assert!(
            err(r#"open = ["true"]
close = ["true"]
pass_env = ["A-B"]"#)
            .contains("not a variable name")
        );
    }

    #[test]
    fn readme_documents_every_placeholder() {
        let readme = include_str!("../../conf/script/README.md");
        for v in Var::ALL {
            assert!(readme.contains(&format!("`{{{}}}`", v.name())), "{{{}}} undocumented", v.name());
            assert!(readme.contains(&format!("`{}`", v.env_name())), "{} undocumented", v.env_name());
        }
    }
}

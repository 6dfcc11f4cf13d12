//! The `script` backend: the firewall is changed by commands the administrator writes.
//!
//! This is fwknop's `CMD_CYCLE_OPEN`/`CMD_CYCLE_CLOSE` done right: every port is passed (not
//! just the first), a re-knock extends instead of opening twice, commands are argv arrays (no
//! shell unless the admin asks for one), each run has a hard time limit that kills the whole
//! process group, and the grant reaches the command three ways: `{placeholders}` in argv,
//! `SPA_*` environment variables and JSON on stdin.
//!
//! The backend is a renderer plus an applier, like every backend: a grant maps to units of
//! work ([`Unit`]: one per port with `per = "port"`, one per grant with `per = "grant"`), and
//! a change runs `open` or `close` for one unit. When that happens (re-knocks, units shared by
//! several grants, expiry, closes retried with backoff, closes after a restart for grants that
//! ended while spad was down) is decided by the grant ledger in `spa-backends` and recorded
//! in spad's journal; this backend keeps no state and reads no clock.
//!
//! **What it creates:** nothing itself. Whatever exists in the firewall is what the `open`
//! command made.
//!
//! **How to inspect:** `spad list` shows the grants on record (live and closing). The firewall
//! side cannot be read back (`spad list --firewall` says so): it is whatever the scripts
//! manage; for the example `conf/script/nft-set.sh`: `nft list table inet spa_script`.
//!
//! **How to remove by hand:** run the `close` command with the values of the grant, or undo
//! what the script does (for the example: `nft delete table inet spa_script`). Stopping spad
//! ends its grants through `close` (unless it is told to keep them).
//!
//! The rest of this page is the contract a script author gets (also in
//! `conf/script/README.md`).
//!
#![doc = include_str!("../../conf/script/README.md")]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spa_backends::process::{self, Environment, Invocation, Outcome};
use spa_backends::{
    Backend, BackendDescriptor, BackendError, Capabilities, Change, Grant, Health, Held, Nat, Observed,
    ProtoPort, Snat,
};

pub mod preflight;
mod template;
mod unit;

use template::{Template, TemplateError, Var};
pub use unit::{Scope, Unit};

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
        create: spa_backends::create::<ScriptBackend>,
        preflight: Some(preflight::preflight),
    }
}

/// How many units (and so calls) one grant makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    /// One unit per (protocol, port); one with empty `{proto}`/`{port}` for forward-all.
    #[default]
    Port,
    /// One unit per grant, whatever its ports (`{ports}` lists them).
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
    /// The commands bind a grant to `{source_port}` / `SPA_SOURCE_PORT` exactly (or refuse
    /// it). Off by default: a script written before source ports existed would open the whole
    /// address, so such grants are refused unless the admin says the scripts honour them.
    #[serde(default)]
    source_port: bool,
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

/// The `script` backend. See the crate documentation for the contract. It holds only its
/// configuration: what is open is the ledger's business.
#[derive(Debug)]
pub struct ScriptBackend {
    open: Cmd,
    close: Cmd,
    check: Option<Cmd>,
    per: Per,
    limit: Duration,
    reopen_on_extend: bool,
    /// The commands honour `{source_port}` (`source_port = true`).
    source_port: bool,
    /// The fixed part of every command's environment (PATH, `env`, `pass_env`).
    base_env: Vec<(String, String)>,
    /// A command's argv names the ingress: units are then opened per ingress (see [`Unit`]).
    by_ingress: bool,
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
    fn cmd(&self, action: Action) -> Option<&Cmd> {
        match action {
            Action::Open => Some(&self.open),
            Action::Close => Some(&self.close),
            Action::Check => self.check.as_ref(),
        }
    }

    /// Runs `action` for one unit with the values of the grant it is held for; `None` when
    /// that action is not configured.
    fn call(&self, action: Action, held: &Held<'_, Unit>, now: u64) -> Result<Option<Outcome>, BackendError> {
        let Some(cmd) = self.cmd(action) else { return Ok(None) };
        let port = held.entry.scope.port();
        let ctx = Context { action, per: self.per, grant: held.holder, port, until: held.until, now };
        let mut label = format!("{} command {}", action.name(), cmd.program);
        if let Some(p) = port {
            label.push_str(&format!(" for {p}"));
        }
        let mut env = self.base_env.clone();
        env.extend(Var::ALL.iter().map(|&v| (v.env_name(), ctx.value(v))));
        let input = Input {
            action: action.name(),
            per: self.per.name(),
            id: held.holder.id.to_string(),
            port,
            timeout: ctx.timeout(),
            grant: held.holder,
        };
        let stdin = serde_json::to_vec(&input)
            .map_err(|e| BackendError::Other(format!("{label}: cannot encode the grant as JSON: {e}")))?;
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
    fn must(&self, action: Action, held: &Held<'_, Unit>, now: u64) -> Result<(), BackendError> {
        match self.call(action, held, now)? {
            Some(outcome) if !outcome.status.success() => Err(outcome.failed()),
            _ => Ok(()),
        }
    }

    /// Asks `check` whether one unit is present: exit 0 yes, 1 no, anything else an error;
    /// `None` without a `check` command.
    fn present(&self, held: &Held<'_, Unit>, now: u64) -> Result<Option<bool>, BackendError> {
        match self.call(Action::Check, held, now)? {
            None => Ok(None),
            Some(outcome) if outcome.status.code() == Some(0) => Ok(Some(true)),
            Some(outcome) if outcome.status.code() == Some(1) => Ok(Some(false)),
            Some(outcome) => Err(outcome.failed()),
        }
    }

    /// Makes sure a unit that may or may not be there is: `open` unless `check` says it is
    /// present.
    fn ensure(&self, held: &Held<'_, Unit>, now: u64) -> Result<(), BackendError> {
        match self.present(held, now)? {
            Some(true) => Ok(()),
            Some(false) | None => self.must(Action::Open, held, now),
        }
    }

    /// A unit that is there gets a new deadline (and maybe a new grant holding it).
    fn retime(&self, new: &Held<'_, Unit>, prior: &Held<'_, Unit>, now: u64) -> Result<(), BackendError> {
        if self.reopen_on_extend {
            return self.must(Action::Open, new, now);
        }
        if prior.holder.id == new.holder.id {
            // A re-knock of the same grant: the firewall already lets it in.
            return Ok(());
        }
        // The unit passes to another grant: one that shared it, whose holder ended, or a new
        // grant taking it over from one whose close failed (then part of it may be gone).
        self.ensure(new, now)
    }
}

impl Backend for ScriptBackend {
    type Entry = Unit;

    /// Builds it from `[firewall.script]`; every template is checked here, so a typo in a
    /// placeholder stops the daemon at start rather than at the first knock.
    fn from_table(table: &toml::Table) -> Result<Self, BackendError> {
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
        let open = Cmd::parse("open", &cfg.open)?;
        let close = Cmd::parse("close", &cfg.close)?;
        let check = cfg.check.as_deref().map(|c| Cmd::parse("check", c)).transpose()?;
        let by_ingress = [Some(&open), Some(&close), check.as_ref()]
            .into_iter()
            .flatten()
            .flat_map(|c| &c.args)
            .any(|t| t.uses(Var::IngressAddr) || t.uses(Var::IngressIf));
        Ok(Self {
            open,
            close,
            check,
            per: cfg.per,
            limit: Duration::from_millis(cfg.timeout_ms),
            reopen_on_extend: cfg.reopen_on_extend,
            source_port: cfg.source_port,
            base_env: base.into_iter().collect(),
            by_ingress,
        })
    }

    fn name(&self) -> &'static str {
        "script"
    }

    /// Scripts can do anything, so NAT and IPv6 are theirs to refuse. Nothing expires by
    /// itself (as far as the backend knows), `prepare` cannot remove what scripts made, and a
    /// grant of several units is several commands, not one transaction.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            nat: true,
            ipv6: true,
            native_expiry: false,
            exact_prepare: false,
            atomic_apply: false,
            // Passed on as `{source_port}` / `SPA_SOURCE_PORT` when the admin says the
            // commands bind it (`source_port = true`); refused otherwise.
            source_port: self.source_port,
        }
    }

    fn entries(&self, grant: &Grant) -> Result<Vec<Unit>, BackendError> {
        if grant.source_port.is_some() && !self.source_port {
            // Never let a script that ignores the port open the whole address.
            return Err(BackendError::Unsupported(
                "a grant bound to a source port ([firewall.script] source_port = true says the commands bind it)",
            ));
        }
        let mut units = Unit::of(grant, self.per);
        if self.by_ingress {
            for u in &mut units {
                u.ingress.clone_from(&grant.ingress);
            }
        }
        Ok(units)
    }

    /// For each live unit: left alone when `check` says it is present, opened otherwise (or
    /// always, without `check`). Never runs `close`: what ended is closed by the ledger,
    /// through [`Backend::apply`], also after a restart. Every unit is tried; the first error
    /// is returned.
    fn prepare(&mut self, live: &[Held<'_, Unit>], now: u64) -> Result<(), BackendError> {
        let mut first = None;
        for held in live {
            if let Err(e) = self.ensure(held, now) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// In order: a new unit runs `open`, a re-timed one runs nothing (or `open` again with
    /// `reopen_on_extend`; `check`-then-`open` when another grant takes it over), a removed
    /// one runs `close` with the values it was opened with. Stops at the first failure: the
    /// gate undoes a half-applied grant and retries a failed close with backoff.
    fn apply(&mut self, changes: &[Change<'_, Unit>], now: u64) -> Result<(), BackendError> {
        for change in changes {
            match change {
                Change::Put { new, prior: None } => self.must(Action::Open, new, now)?,
                Change::Put { new, prior: Some(prior) } => self.retime(new, prior, now)?,
                Change::Remove { old } => self.must(Action::Close, old, now)?,
            }
        }
        Ok(())
    }

    /// Scripts cannot be inspected cheaply (a `check` per unit, every second, would be a
    /// process storm), and there is nothing of ours to rebuild: always intact.
    fn check(&mut self, _now: u64) -> Result<Health, BackendError> {
        Ok(Health::Intact)
    }

    /// The firewall side is whatever the scripts manage; there is no command that lists it.
    fn observe(&mut self, _now: u64) -> Result<Vec<Observed>, BackendError> {
        Err(BackendError::Unsupported("reading the firewall"))
    }

    /// Owns no namespace, so there is nothing to remove: openings are closed by `close`, when
    /// their grants end (stop spad without keeping its grants to close them all).
    fn teardown(&mut self) -> Result<(), BackendError> {
        Ok(())
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
    /// The grant the unit is held for.
    grant: &'a Grant,
    port: Option<ProtoPort>,
    /// When the unit ends (the holder's deadline).
    until: u64,
    now: u64,
}

impl Context<'_> {
    fn timeout(&self) -> u64 {
        self.until.saturating_sub(self.now)
    }

    fn value(&self, var: Var) -> String {
        let g = self.grant;
        match var {
            Var::Action => self.action.name().into(),
            Var::Per => self.per.name().into(),
            Var::Id => g.id.to_string(),
            Var::Source => g.source.to_string(),
            Var::SourcePort => g.source_port.map(|p| p.to_string()).unwrap_or_default(),
            Var::Family => family(g.source).into(),
            Var::PacketSource => g.packet_source.to_string(),
            Var::Destination => g.destination.map(|d| d.to_string()).unwrap_or_default(),
            Var::IngressAddr => g.ingress.as_ref().map(|i| i.addr.to_string()).unwrap_or_default(),
            Var::IngressIf => g.ingress.as_ref().and_then(|i| i.interface.clone()).unwrap_or_default(),
            Var::Proto => self.port.map(|p| p.proto.name().to_owned()).unwrap_or_default(),
            Var::ProtoNum => self.port.map(|p| p.proto.number().to_string()).unwrap_or_default(),
            Var::Port => self.port.map(|p| p.port.to_string()).unwrap_or_default(),
            Var::Ports => g.access.to_string(),
            Var::Nat => match g.nat.as_deref() {
                None => String::new(),
                Some(Nat::Dnat { .. }) => "dnat".into(),
                Some(Nat::Route { .. }) => "route".into(),
                Some(Nat::Redirect { .. }) => "redirect".into(),
            },
            Var::NatAddr => match g.nat.as_deref() {
                Some(Nat::Dnat { to, .. }) => to.to_string(),
                _ => String::new(),
            },
            Var::NatPort => match g.nat.as_deref() {
                Some(Nat::Dnat { port: Some(p), .. }) | Some(Nat::Redirect { port: p }) => p.to_string(),
                Some(Nat::Dnat { port: None, .. }) => {
                    self.port.map(|p| p.port.to_string()).unwrap_or_default()
                }
                _ => String::new(),
            },
            Var::Snat => match g.nat.as_deref() {
                Some(Nat::Dnat { snat: Some(s), .. }) | Some(Nat::Route { snat: Some(s) }) => match s {
                    Snat::To(addr) => addr.to_string(),
                    Snat::Masquerade => "masquerade".into(),
                },
                _ => String::new(),
            },
            Var::Timeout => self.timeout().to_string(),
            Var::Deadline => self.until.to_string(),
            Var::Created => g.created.to_string(),
            Var::Stanza => g.stanza.to_string(),
            Var::Username => g.username.to_string(),
        }
    }
}

fn family(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    fn err(s: &str) -> String {
        ScriptBackend::from_table(&table(s)).unwrap_err().to_string()
    }

    #[test]
    fn config_is_checked_at_load() {
        let ok = ScriptBackend::from_table(&table(
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

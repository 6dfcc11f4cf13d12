//! The script backend against real processes, driven by the grant ledger exactly as the daemon
//! drives it (a `Gate` with a journal): shell scripts in a temporary directory record what they
//! were given (argv, environment, stdin), and the tests assert on what they saw. Time is a
//! fixed clock passed in, as in the daemon; the backend never reads one.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use spa_backend_script::ScriptBackend;
use spa_backends::testkit::MemoryJournal;
use spa_backends::{
    Access, Backend, BackendError, CommandFailure, Driver, EndKind, Event, Gate, Grant, GrantId, Nat, Record,
    RefusedBecause, Registry, Snat, State,
};

/// Records each call in `$REC_DIR/<n>/{argv,env,stdin}` (n counts from 1; calls never
/// overlap) and keeps what is open as files: `open` makes `present-<port>`, `close` removes
/// it, `check` answers from it. Knob: `fail-<action>-<port>` makes that call fail with a
/// message on stderr, always when the file is empty, else as many times as the number in it.
const RECORDER: &str = r#"#!/bin/sh
d="$REC_DIR"
n=$(cat "$d/count" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$d/count"
mkdir "$d/$n"
for a in "$@"; do printf '[%s]\n' "$a"; done > "$d/$n/argv"
env > "$d/$n/env"
cat > "$d/$n/stdin"
f="$d/fail-$SPA_ACTION-$SPA_PORT"
if [ -e "$f" ]; then
    left=$(cat "$f")
    if [ -z "$left" ] || [ "$left" -gt 0 ]; then
        [ -z "$left" ] || echo $((left - 1)) > "$f"
        echo "cannot $SPA_ACTION port $SPA_PORT" >&2
        echo "second line" >&2
        exit 4
    fi
fi
case "$SPA_ACTION" in
    open) : > "$d/present-$SPA_PORT" ;;
    close) rm -f "$d/present-$SPA_PORT" ;;
    check) [ -e "$d/present-$SPA_PORT" ] && exit 0; exit 1 ;;
esac
exit 0
"#;

/// The daemon's time in these tests.
const NOW: u64 = 1_800_000_000;

struct Call {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    stdin: serde_json::Value,
}

impl Call {
    fn env(&self, name: &str) -> &str {
        self.env.get(name).map_or_else(|| panic!("{name} not in the environment"), String::as_str)
    }
}

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        let lab = Self { dir: tempfile::tempdir().unwrap() };
        lab.script("rec.sh", RECORDER);
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn script(&self, name: &str, body: &str) -> String {
        let p = self.path(name);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p.to_str().unwrap().to_owned()
    }

    /// Makes a knob file (`fail-...` fails always, `present-...` answers check).
    fn touch(&self, name: &str) {
        fs::write(self.path(name), "").unwrap();
    }

    /// Makes `fail-<action>-<port>` fail `times` times, then succeed.
    fn fail_times(&self, name: &str, times: u32) {
        fs::write(self.path(name), times.to_string()).unwrap();
    }

    fn rec(&self) -> String {
        self.path("rec.sh").to_str().unwrap().to_owned()
    }

    /// A backend whose open/close all run the recorder with `args`; `extra` is more TOML.
    fn backend(&self, args: &[&str], extra: &str) -> ScriptBackend {
        let argv = |action: &str| {
            let mut v = vec![self.rec(), action.to_owned()];
            v.extend(args.iter().map(|s| (*s).to_owned()));
            serde_json::to_string(&v).unwrap()
        };
        let toml = format!(
            "open = {}\nclose = {}\nenv = {{ REC_DIR = {:?} }}\n{extra}\n",
            argv("open"),
            argv("close"),
            self.dir.path().to_str().unwrap()
        );
        ScriptBackend::from_table(&toml::from_str(&toml).unwrap()).unwrap()
    }

    /// The same with a `check` command.
    fn backend_with_check(&self, args: &[&str], extra: &str) -> ScriptBackend {
        let check = {
            let mut v = vec![self.rec(), "check".to_owned()];
            v.extend(args.iter().map(|s| (*s).to_owned()));
            serde_json::to_string(&v).unwrap()
        };
        self.backend(args, &format!("check = {check}\n{extra}"))
    }

    fn gate(&self, args: &[&str], extra: &str) -> Gw {
        Gw::started(self.backend(args, extra))
    }

    fn gate_with_check(&self, args: &[&str], extra: &str) -> Gw {
        Gw::started(self.backend_with_check(args, extra))
    }

    fn calls(&self) -> Vec<Call> {
        let n: usize = fs::read_to_string(self.path("count")).map_or(0, |s| s.trim().parse().unwrap());
        (1..=n)
            .map(|i| {
                let d = self.path(&i.to_string());
                let argv = fs::read_to_string(d.join("argv")).unwrap();
                let argv = argv
                    .lines()
                    .map(|l| l.strip_prefix('[').and_then(|l| l.strip_suffix(']')).unwrap().to_owned())
                    .collect();
                let env = fs::read_to_string(d.join("env"))
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let stdin = serde_json::from_slice(&fs::read(d.join("stdin")).unwrap()).unwrap();
                Call { argv, env, stdin }
            })
            .collect()
    }

    /// (SPA_ACTION, SPA_PORT) of every call so far.
    fn actions(&self) -> Vec<(String, String)> {
        self.calls().iter().map(|c| (c.env("SPA_ACTION").to_owned(), c.env("SPA_PORT").to_owned())).collect()
    }
}

/// The backend in its gate, with a journal: what the daemon's worker holds.
struct Gw {
    gate: Gate<ScriptBackend>,
    journal: MemoryJournal,
}

impl Gw {
    /// Started at [`NOW`] with nothing on record (which runs no command).
    fn started(backend: ScriptBackend) -> Self {
        let mut gw = Gw { gate: Gate::new(backend), journal: MemoryJournal::default() };
        let events = gw.gate.start(Vec::new(), NOW, &mut gw.journal).unwrap();
        assert!(events.is_empty(), "{events:?}");
        gw
    }

    /// Started with the records of another gate's journal (a daemon restart).
    fn restarted(backend: ScriptBackend, journal: MemoryJournal, now: u64) -> Result<Self, BackendError> {
        let records = records(&journal);
        let mut gw = Gw { gate: Gate::new(backend), journal };
        gw.gate.start(records, now, &mut gw.journal)?;
        Ok(gw)
    }

    fn grant(&mut self, g: &Grant) -> Result<(), BackendError> {
        self.grant_at(g, NOW)
    }

    fn grant_at(&mut self, g: &Grant, now: u64) -> Result<(), BackendError> {
        outcome(self.gate.grant(g.clone(), now, &mut self.journal))
    }

    fn revoke(&mut self, id: u64, now: u64) -> Result<(), BackendError> {
        outcome(self.gate.revoke(GrantId(id), now, &mut self.journal))
    }

    /// The live grants on record.
    fn live(&self) -> Vec<GrantId> {
        let mut v: Vec<GrantId> = self.gate.ledger().live().map(|g| g.id).collect();
        v.sort();
        v
    }
}

/// The grants a journal holds, as a restarted daemon loads them.
fn records(journal: &MemoryJournal) -> Vec<Record> {
    journal
        .grants
        .values()
        .map(|g| Record {
            grant: g.clone(),
            state: journal.closing.get(&g.id).map_or(State::Live, |c| State::Closing(*c)),
        })
        .collect()
}

/// The first backend error among the events; any other failure is a test bug.
fn outcome(events: Vec<Event>) -> Result<(), BackendError> {
    for e in events {
        match e {
            Event::Refused { cause: RefusedBecause::Backend(error), .. }
            | Event::CloseFailed { error, .. } => {
                return Err(error);
            }
            Event::Granted(_) | Event::Extended(_) | Event::Reknocked(_) | Event::Ended { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    Ok(())
}

fn grant(id: u64, ports: &str) -> Grant {
    Grant {
        id: GrantId(id),
        source: "192.0.2.7".parse().unwrap(),
        source_port: None,
        packet_source: "198.51.100.9".parse().unwrap(),
        destination: None,
        access: if ports == "all" {
            Access::All
        } else {
            Access::Ports(ports.split(',').map(|p| p.parse().unwrap()).collect())
        },
        nat: None,
        created: NOW,
        deadline: NOW + 600,
        stanza: "laptop".into(),
        username: "alice".into(),
        ingress: None,
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, p)| ((*a).to_owned(), (*p).to_owned())).collect()
}

#[test]
fn open_substitutes_argv_and_sets_env_and_stdin() {
    let lab = Lab::new();
    let mut b = lab.gate(
        &[
            "{source}",
            "saddr={source}/32",
            "{packet_source}",
            "{destination}",
            "{proto}",
            "{proto_num}",
            "{port}",
            "{ports}",
            "{id}",
            "{deadline}",
            "{created}",
            "{stanza}",
            "{username}",
            "{family}",
            "{action}",
            "{per}",
            "{nat}",
            "{timeout}",
            "{{literal}}",
        ],
        r#"pass_env = ["CARGO_PKG_NAME"]"#,
    );
    let mut g = grant(0x1234, "tcp/22");
    g.destination = Some("203.0.113.1".parse().unwrap());
    g.created = NOW - 100;
    b.grant_at(&g, NOW + 10).unwrap();

    let calls = lab.calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    let deadline = g.deadline.to_string();
    let created = g.created.to_string();
    assert_eq!(
        c.argv,
        [
            "open",
            "192.0.2.7",
            "saddr=192.0.2.7/32",
            "198.51.100.9",
            "203.0.113.1",
            "tcp",
            "6",
            "22",
            "tcp/22",
            "0000000000001234",
            &deadline,
            &created,
            "laptop",
            "alice",
            "ipv4",
            "open",
            "port",
            "",
            "590",
            "{literal}",
        ]
    );

    for (k, v) in [
        ("SPA_ACTION", "open"),
        ("SPA_PER", "port"),
        ("SPA_ID", "0000000000001234"),
        ("SPA_SOURCE", "192.0.2.7"),
        ("SPA_SOURCE_PORT", ""),
        ("SPA_FAMILY", "ipv4"),
        ("SPA_PACKET_SOURCE", "198.51.100.9"),
        ("SPA_DESTINATION", "203.0.113.1"),
        ("SPA_PROTO", "tcp"),
        ("SPA_PROTO_NUM", "6"),
        ("SPA_PORT", "22"),
        ("SPA_PORTS", "tcp/22"),
        ("SPA_NAT", ""),
        ("SPA_NAT_ADDR", ""),
        ("SPA_NAT_PORT", ""),
        ("SPA_SNAT", ""),
        // The deadline minus the `now` the daemon passed in.
        ("SPA_TIMEOUT", "590"),
        ("SPA_DEADLINE", &deadline),
        ("SPA_CREATED", &created),
        ("SPA_STANZA", "laptop"),
        ("SPA_USERNAME", "alice"),
        ("PATH", spa_backend_script::DEFAULT_PATH),
    ] {
        assert_eq!(c.env(k), v, "{k}");
    }
    // Nothing is inherited except what pass_env names (cargo sets both for the test process).
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert!(!c.env.contains_key("CARGO_MANIFEST_DIR"));
    assert_eq!(c.env("CARGO_PKG_NAME"), "spa-backend-script");

    assert_eq!(c.stdin["action"], "open");
    assert_eq!(c.stdin["per"], "port");
    assert_eq!(c.stdin["id"], "0000000000001234");
    assert_eq!(c.stdin["port"], "tcp/22");
    assert_eq!(c.stdin["timeout"], 590);
    let seen: Grant = serde_json::from_value(c.stdin["grant"].clone()).unwrap();
    assert_eq!(seen, g);
}

/// A grant bound to the client's source port hands the port to the command three ways, and is
/// a unit of its own beside the whole address's grant.
#[test]
fn the_source_port_reaches_argv_env_and_stdin() {
    let lab = Lab::new();
    let mut g = grant(0x77, "tcp/22");
    g.source_port = Some(40000);
    // Without `source_port = true` the grant is refused: the command might open the address.
    let mut refusing = lab.gate(&["{source}", "{port}"], "");
    let events = refusing.gate.grant(g.clone(), NOW, &mut refusing.journal);
    assert!(
        matches!(events.as_slice(), [Event::Refused { cause, .. }] if cause.to_string().contains("cannot express")),
        "{events:?}"
    );
    assert!(format!("{events:?}").contains("source port"), "{events:?}");
    assert!(lab.calls().is_empty(), "no command runs for a refused grant");
    let mut b = lab.gate(&["{source}", "{source_port}", "{port}"], "source_port = true");
    b.grant_at(&g, NOW).unwrap();
    let whole = grant(0x78, "tcp/22");
    b.grant_at(&whole, NOW).unwrap();
    let calls = lab.calls();
    assert_eq!(calls.len(), 2, "two units: bound to the port, and the whole address");
    assert_eq!(calls[0].argv, ["open", "192.0.2.7", "40000", "22"]);
    assert_eq!(calls[0].env("SPA_SOURCE_PORT"), "40000");
    assert_eq!(calls[0].stdin["grant"]["source_port"], 40000);
    assert_eq!(calls[1].argv, ["open", "192.0.2.7", "", "22"]);
    assert_eq!(calls[1].env("SPA_SOURCE_PORT"), "");
    assert!(calls[1].stdin["grant"].get("source_port").is_none());
    assert_eq!(b.gate.describe(&g).unwrap(), ["192.0.2.7 sport 40000 tcp/22"]);
}

#[test]
fn multi_port_knock_is_one_call_per_port_or_one_per_grant() {
    let lab = Lab::new();
    let mut b = lab.gate(&["{proto}/{port}"], "");
    let g = grant(1, "tcp/22,udp/53,tcp/443");
    b.grant(&g).unwrap();
    let calls = lab.calls();
    let seen: Vec<_> = calls.iter().map(|c| c.argv[1].clone()).collect();
    assert_eq!(seen, ["tcp/22", "udp/53", "tcp/443"]);
    assert_eq!(calls[1].env("SPA_PROTO_NUM"), "17");
    assert_eq!(calls[1].stdin["port"], "udp/53");
    assert!(calls.iter().all(|c| c.env("SPA_PORTS") == "tcp/22,udp/53,tcp/443"));
    // What `spad list --firewall` shows for it: one unit per port.
    assert_eq!(b.gate.describe(&g).unwrap(), ["192.0.2.7 tcp/22", "192.0.2.7 udp/53", "192.0.2.7 tcp/443"]);

    let lab = Lab::new();
    let mut b = lab.gate(&["{ports}", "{proto}", "{port}"], r#"per = "grant""#);
    b.grant(&g).unwrap();
    let calls = lab.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].argv, ["open", "tcp/22,udp/53,tcp/443", "", ""]);
    assert_eq!(calls[0].env("SPA_PER"), "grant");
    assert_eq!(calls[0].stdin["port"], serde_json::Value::Null);
    assert_eq!(calls[0].stdin["grant"]["access"]["ports"][2], "tcp/443");
    assert_eq!(b.gate.describe(&g).unwrap(), ["192.0.2.7 tcp/22,udp/53,tcp/443"]);

    b.revoke(1, NOW + 1).unwrap();
    assert_eq!(lab.actions(), pairs(&[("open", ""), ("close", "")]));
}

#[test]
fn forward_all_is_one_call_with_empty_port() {
    let lab = Lab::new();
    let mut b = lab.gate(&["{ports}", "{proto}", "{proto_num}", "{port}"], "");
    b.grant(&grant(2, "all")).unwrap();
    let calls = lab.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].argv, ["open", "all", "", "", ""]);
    assert_eq!(calls[0].stdin["grant"]["access"], "all");
    assert_eq!(calls[0].stdin["port"], serde_json::Value::Null);
}

#[test]
fn nat_fields_reach_the_script() {
    let lab = Lab::new();
    let mut b = lab.gate(&["{nat}", "{nat_addr}", "{nat_port}", "{snat}", "{port}"], "");

    let mut g = grant(3, "tcp/2222");
    g.nat = Some(Box::new(Nat::Dnat {
        to: "10.0.0.2".parse().unwrap(),
        port: Some(22),
        snat: Some(Snat::Masquerade),
    }));
    b.grant(&g).unwrap();
    assert_eq!(b.gate.describe(&g).unwrap(), ["192.0.2.7 tcp/2222 dnat 10.0.0.2:22 masquerade"]);

    // Forward-all DNAT keeps each port: the internal port is the call's own port.
    let mut h = grant(4, "tcp/80,udp/53");
    h.nat = Some(Box::new(Nat::Dnat {
        to: "fd00::2".parse().unwrap(),
        port: None,
        snat: Some(Snat::To("10.0.0.1".parse().unwrap())),
    }));
    b.grant(&h).unwrap();

    let mut r = grant(5, "tcp/22");
    r.nat = Some(Box::new(Nat::Redirect { port: 2022 }));
    b.grant(&r).unwrap();

    let mut rt = grant(6, "all");
    rt.nat = Some(Box::new(Nat::Route { snat: Some(Snat::To("10.9.9.9".parse().unwrap())) }));
    b.grant(&rt).unwrap();

    let argv: Vec<Vec<String>> = lab.calls().into_iter().map(|c| c.argv).collect();
    assert_eq!(
        argv,
        [
            vec!["open", "dnat", "10.0.0.2", "22", "masquerade", "2222"],
            vec!["open", "dnat", "fd00::2", "80", "10.0.0.1", "80"],
            vec!["open", "dnat", "fd00::2", "53", "10.0.0.1", "53"],
            vec!["open", "redirect", "", "2022", "", "22"],
            vec!["open", "route", "", "", "10.9.9.9", ""],
        ]
    );
    let calls = lab.calls();
    assert_eq!(calls[0].env("SPA_NAT_ADDR"), "10.0.0.2");
    assert_eq!(calls[0].stdin["grant"]["nat"]["dnat"]["port"], 22);
    let caps = b.gate.capabilities();
    assert!(caps.nat && caps.ipv6, "{caps:?}");
    assert!(!caps.native_expiry && !caps.exact_prepare && !caps.atomic_apply, "{caps:?}");
}

#[test]
fn ipv6_source() {
    let lab = Lab::new();
    let mut b = lab.gate(&["{source}", "{family}"], "");
    let mut g = grant(7, "udp/53");
    g.source = "2001:db8::7".parse().unwrap();
    b.grant(&g).unwrap();
    assert_eq!(lab.calls()[0].argv, ["open", "2001:db8::7", "ipv6"]);
}

#[test]
fn failing_script_is_an_error_with_its_stderr_and_nothing_is_held() {
    let lab = Lab::new();
    let mut b = lab.gate(&[], "");
    lab.touch("fail-open-22");
    let err = b.grant(&grant(8, "tcp/22")).unwrap_err();
    let BackendError::Command { program, failure: CommandFailure::Exit { status, stderr } } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(status.code(), Some(4));
    assert_eq!(stderr, "cannot open port 22 / second line");
    assert!(program.starts_with("open command ") && program.ends_with(" for tcp/22"), "{program}");
    assert!(spa_backends::error_chain(&err).contains("cannot open port 22"), "{err}");
    // The gate cleans up after a failed grant: close runs for its unit (whatever the failed
    // open left behind), and nothing is on record.
    assert_eq!(lab.actions(), pairs(&[("open", "22"), ("close", "22")]));
    assert!(b.gate.ledger().is_empty());
    assert!(b.journal.grants.is_empty());
}

#[test]
fn failed_multi_port_open_closes_what_it_opened() {
    let lab = Lab::new();
    let mut b = lab.gate(&[], "");
    lab.touch("fail-open-53");
    let err = b.grant(&grant(9, "tcp/22,udp/53,tcp/443")).unwrap_err();
    assert!(matches!(err, BackendError::Command { failure: CommandFailure::Exit { .. }, .. }), "{err:?}");
    // Open stops at the first failure; the gate's clean-up closes every unit of the grant
    // (close is idempotent: for 443 it finds nothing).
    assert_eq!(
        lab.actions(),
        pairs(&[("open", "22"), ("open", "53"), ("close", "22"), ("close", "53"), ("close", "443")])
    );
    assert!(!lab.path("present-22").exists(), "tcp/22 stayed open");
    assert!(b.gate.ledger().is_empty());
    assert!(b.journal.grants.is_empty());
}

#[test]
fn a_failed_clean_up_is_retried_until_it_works() {
    let lab = Lab::new();
    let mut b = lab.gate(&[], "");
    lab.touch("fail-open-53");
    lab.fail_times("fail-close-22", 1);
    let err = b.grant(&grant(9, "tcp/22,udp/53")).unwrap_err();
    assert!(spa_backends::error_chain(&err).contains("cannot open port 53"), "{err}");
    // Not granted, but tcp/22 may be open: kept on record as closing.
    assert!(b.live().is_empty());
    assert!(b.journal.closing.contains_key(&GrantId(9)));
    let ev = b.gate.tick(NOW + 1, &mut b.journal);
    assert!(matches!(ev.as_slice(), [Event::Ended { why: EndKind::Revoke, attempts: 1, .. }]), "{ev:?}");
    assert!(!lab.path("present-22").exists());
    assert!(b.gate.ledger().is_empty() && b.journal.grants.is_empty() && b.journal.closing.is_empty());
}

#[test]
fn missing_program_is_a_spawn_error() {
    let lab = Lab::new();
    let missing = lab.path("does-not-exist");
    let toml = format!("open = [{missing:?}]\nclose = [{missing:?}]");
    let mut b = Gw::started(ScriptBackend::from_table(&toml::from_str(&toml).unwrap()).unwrap());
    let err = b.grant(&grant(10, "tcp/22")).unwrap_err();
    assert!(matches!(err, BackendError::Command { failure: CommandFailure::Spawn(_), .. }), "{err:?}");
    assert!(b.live().is_empty());
}

/// True once `pid` is gone (or a zombie nobody reaped yet: it no longer runs).
fn dead(pid: &str) -> bool {
    match fs::read_to_string(Path::new("/proc").join(pid).join("stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn hanging_script_is_killed_at_the_limit_with_its_children() {
    let lab = Lab::new();
    let hang = lab.script(
        "hang.sh",
        "#!/bin/sh\nsleep 1000 &\necho $! >> \"$REC_DIR/pids\"\necho $$ >> \"$REC_DIR/pids\"\nwait\n",
    );
    let toml = format!(
        "open = [{hang:?}]\nclose = [{hang:?}]\ntimeout_ms = 300\nenv = {{ REC_DIR = {:?} }}",
        lab.dir.path().to_str().unwrap()
    );
    let mut b = Gw::started(ScriptBackend::from_table(&toml::from_str(&toml).unwrap()).unwrap());
    let err = b.grant(&grant(11, "tcp/22")).unwrap_err();
    let BackendError::Command { failure: CommandFailure::Timeout { limit_ms }, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(limit_ms, 300);
    assert!(b.live().is_empty());

    // The open and the clean-up's close both ran over; every process of both is killed.
    let pids = fs::read_to_string(lab.path("pids")).unwrap();
    let pids: Vec<&str> = pids.lines().collect();
    assert_eq!(pids.len(), 4, "{pids:?}");
    // SIGKILL is delivered asynchronously; this is a safety limit, not a timing assertion.
    let start = Instant::now();
    while !pids.iter().all(|p| dead(p)) {
        assert!(start.elapsed() < Duration::from_secs(20), "one of {pids:?} survived the kill");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sh_c_gets_values_as_arguments_not_as_code() {
    let lab = Lab::new();
    let out = lab.path("out");
    let pwned = lab.path("pwned");
    let toml = format!(
        r#"open = ["sh", "-c", "printf '%s' \"$1\" > \"$2\"", "sh", "{{username}}", {out:?}]
close = ["true"]"#
    );
    let mut b = Gw::started(ScriptBackend::from_table(&toml::from_str(&toml).unwrap()).unwrap());
    let mut g = grant(12, "tcp/22");
    g.username = format!("$(touch {}); `touch {}`", pwned.display(), pwned.display()).into();
    b.grant(&g).unwrap();
    assert_eq!(fs::read_to_string(out).unwrap(), &*g.username);
    assert!(!pwned.exists());
}

#[test]
fn reknock_extends_without_running_open_again() {
    let lab = Lab::new();
    let mut b = lab.gate(&["{deadline}"], "");
    let g = grant(13, "tcp/22,udp/53");
    b.grant(&g).unwrap();
    // The re-knock is a new grant asking for the same access, until later.
    let mut later = grant(113, "tcp/22,udp/53");
    later.deadline += 300;
    b.grant_at(&later, NOW + 5).unwrap();
    assert_eq!(lab.actions(), pairs(&[("open", "22"), ("open", "53")]));
    // The ledger (and the journal) hold grant 13 with the later deadline.
    assert_eq!(b.live(), [GrantId(13)]);
    assert_eq!(b.journal.grants[&GrantId(13)].deadline, later.deadline);
    let expected = b.gate.expected(NOW + 5);
    assert_eq!(
        expected,
        [
            ("192.0.2.7 tcp/22".to_owned(), GrantId(13), later.deadline, false),
            ("192.0.2.7 udp/53".to_owned(), GrantId(13), later.deadline, false)
        ]
    );

    // The close at the end is for the extended grant.
    b.revoke(13, NOW + 10).unwrap();
    let calls = lab.calls();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[3].env("SPA_DEADLINE"), later.deadline.to_string());
    assert_eq!(calls[3].env("SPA_ID"), GrantId(13).to_string());
    assert_eq!(calls[3].env("SPA_TIMEOUT"), (later.deadline - NOW - 10).to_string());
}

#[test]
fn reopen_on_extend_runs_open_with_the_new_deadline() {
    let lab = Lab::new();
    let mut b = lab.gate(&["{deadline}", "{timeout}"], "reopen_on_extend = true");
    let g = grant(14, "tcp/22");
    b.grant(&g).unwrap();
    let mut later = grant(114, "tcp/22");
    later.deadline += 300;
    b.grant_at(&later, NOW + 100).unwrap();
    let argv: Vec<Vec<String>> = lab.calls().into_iter().map(|c| c.argv).collect();
    assert_eq!(
        argv,
        [
            vec!["open".to_owned(), g.deadline.to_string(), "600".to_owned()],
            vec!["open".to_owned(), later.deadline.to_string(), "800".to_owned()]
        ]
    );
    // A re-knock that ends no later runs nothing.
    b.grant_at(&grant(214, "tcp/22"), NOW + 101).unwrap();
    assert_eq!(lab.calls().len(), 2);
}

#[test]
fn grants_sharing_a_port_share_its_unit() {
    let lab = Lab::new();
    let mut b = lab.gate_with_check(&[], "");
    let short = grant(1, "tcp/22");
    let mut long = grant(2, "tcp/22,tcp/443");
    long.deadline += 300;
    b.grant(&short).unwrap();
    b.grant(&long).unwrap();
    // tcp/22 passes to the longer grant: check finds it open, so open does not run twice.
    assert_eq!(lab.actions(), pairs(&[("open", "22"), ("check", "22"), ("open", "443")]));
    assert_eq!(lab.calls()[1].env("SPA_ID"), GrantId(2).to_string());

    // Revoking the longer one leaves tcp/22 to the shorter one and closes only tcp/443.
    b.revoke(2, NOW + 10).unwrap();
    assert_eq!(lab.actions()[3..], pairs(&[("check", "22"), ("close", "443")]));
    assert!(lab.path("present-22").exists());
    assert_eq!(
        b.gate.expected(NOW + 10),
        [("192.0.2.7 tcp/22".to_owned(), GrantId(1), short.deadline, false)]
    );

    // Its expiry closes tcp/22 once, with its own values.
    let ev = b.gate.tick(short.deadline, &mut b.journal);
    assert!(matches!(ev.as_slice(), [Event::Ended { why: EndKind::Expire, .. }]), "{ev:?}");
    assert_eq!(lab.actions()[5..], pairs(&[("close", "22")]));
    let last = lab.calls().pop().unwrap();
    assert_eq!(last.env("SPA_ID"), GrantId(1).to_string());
    assert_eq!(last.env("SPA_TIMEOUT"), "0");
    assert!(b.gate.ledger().is_empty());
}

/// A grant whose knock arrived at `addr` on `interface`.
fn via(mut g: Grant, addr: &str, interface: Option<&str>) -> Grant {
    g.ingress = Some(std::sync::Arc::new(spa_backends::Ingress {
        addr: addr.parse().unwrap(),
        interface: interface.map(str::to_owned),
    }));
    g
}

#[test]
fn the_ingress_reaches_the_script_three_ways() {
    let lab = Lab::new();
    let mut b = lab.gate(&["{ingress_addr}", "iif={ingress_if}"], "");
    let g = via(grant(1, "tcp/22"), "203.0.113.1", Some("eth1"));
    b.grant(&g).unwrap();
    let c = lab.calls().pop().unwrap();
    assert_eq!(c.argv, ["open", "203.0.113.1", "iif=eth1"]);
    assert_eq!((c.env("SPA_INGRESS_ADDR"), c.env("SPA_INGRESS_IF")), ("203.0.113.1", "eth1"));
    assert_eq!(c.stdin["grant"]["ingress"], serde_json::json!({"addr": "203.0.113.1", "interface": "eth1"}));
    // Unknown parts are empty, as every value that does not apply.
    let g = via(grant(2, "tcp/23"), "2001:db8::1", None);
    b.grant(&g).unwrap();
    let c = lab.calls().pop().unwrap();
    assert_eq!(c.argv, ["open", "2001:db8::1", "iif="]);
    assert_eq!(c.env("SPA_INGRESS_IF"), "");
    assert_eq!(c.stdin["grant"]["ingress"]["interface"], serde_json::Value::Null);
}

/// When the argv names the ingress, what is opened depends on it: two grants of a client that
/// came in through two interfaces are two openings, each closed with its own values. When it
/// does not, they share one (as in `grants_sharing_a_port_share_its_unit`).
#[test]
fn units_are_per_ingress_when_the_commands_name_it() {
    let first = via(grant(1, "tcp/22"), "203.0.113.1", Some("eth1"));
    let mut second = via(grant(2, "tcp/22,tcp/443"), "198.51.100.1", Some("eth2"));
    second.deadline += 300;

    let lab = Lab::new();
    let mut b = lab.gate_with_check(&["{ingress_if}"], "");
    b.grant(&first).unwrap();
    b.grant(&second).unwrap();
    // The second tcp/22 is a unit of its own: opened, not checked and taken over.
    assert_eq!(lab.actions(), pairs(&[("open", "22"), ("open", "22"), ("open", "443")]));
    b.revoke(1, NOW + 10).unwrap();
    let last = lab.calls().pop().unwrap();
    assert_eq!(
        (last.argv.as_slice(), last.env("SPA_PORT")),
        (&["close".to_owned(), "eth1".to_owned()][..], "22")
    );
    assert_eq!(
        b.gate.expected(NOW + 10).into_iter().map(|(e, ..)| e).collect::<Vec<_>>(),
        ["192.0.2.7 tcp/22 via eth2 198.51.100.1", "192.0.2.7 tcp/443 via eth2 198.51.100.1"]
    );

    // Without the placeholder in argv the same two grants share tcp/22.
    let lab = Lab::new();
    let mut b = lab.gate_with_check(&["{source}"], "");
    b.grant(&first).unwrap();
    b.grant(&second).unwrap();
    assert_eq!(lab.actions(), pairs(&[("open", "22"), ("check", "22"), ("open", "443")]));
}

#[test]
fn a_unit_taken_over_from_a_grant_whose_close_failed_is_opened_again() {
    // Without check: the grant whose close failed half-way may have closed the unit already,
    // so a new grant that takes it over runs open (idempotent by contract).
    let lab = Lab::new();
    let mut b = lab.gate(&[], "");
    b.grant(&grant(1, "tcp/22,udp/53")).unwrap();
    lab.touch("fail-close-53");
    assert!(b.revoke(1, NOW + 10).is_err());
    assert!(!lab.path("present-22").exists(), "tcp/22 was closed before udp/53 failed");
    b.grant_at(&grant(2, "tcp/22"), NOW + 11).unwrap();
    assert_eq!(lab.actions()[2..], pairs(&[("close", "22"), ("close", "53"), ("open", "22")]));
    assert!(lab.path("present-22").exists(), "the new grant is not let in");
    assert_eq!(lab.calls()[4].env("SPA_ID"), GrantId(2).to_string());
}

#[test]
fn revoke_runs_close_and_forgets() {
    let lab = Lab::new();
    let mut b = lab.gate(&["{source}"], "");
    b.grant(&grant(16, "tcp/22,udp/53")).unwrap();
    b.revoke(16, NOW + 1).unwrap();
    assert!(b.gate.ledger().is_empty());
    assert!(b.journal.grants.is_empty());
    // Revoking what is not on record (any more) runs nothing.
    b.revoke(16, NOW + 2).unwrap();
    b.revoke(999, NOW + 2).unwrap();
    assert_eq!(lab.actions(), pairs(&[("open", "22"), ("open", "53"), ("close", "22"), ("close", "53")]));
    let calls = lab.calls();
    assert_eq!(calls[2].argv, ["close", "192.0.2.7"]);
    assert_eq!(calls[2].stdin["action"], "close");
}

#[test]
fn a_failed_close_is_retried_with_backoff_until_it_works() {
    let lab = Lab::new();
    let mut b = lab.gate(&[], "");
    b.grant(&grant(17, "tcp/22,udp/53")).unwrap();
    lab.fail_times("fail-close-22", 2);

    let err = b.revoke(17, NOW + 10).unwrap_err();
    assert!(spa_backends::error_chain(&err).contains("cannot close port 22"), "{err}");
    // The first failure stops the batch; the grant is closing, in the ledger and the journal.
    assert_eq!(lab.actions()[2..], pairs(&[("close", "22")]));
    let closing = b.journal.closing[&GrantId(17)];
    assert_eq!((closing.attempts, closing.retry_at), (1, NOW + 11));
    assert!(b.journal.grants.contains_key(&GrantId(17)));
    assert!(matches!(b.gate.ledger().get(GrantId(17)).unwrap().state, State::Closing(_)));
    // spad list --firewall shows its units as closing.
    let expected = b.gate.expected(NOW + 10);
    assert_eq!(expected.len(), 2, "{expected:?}");
    assert!(expected.iter().all(|(_, id, _, closing)| *id == GrantId(17) && *closing), "{expected:?}");

    // Nothing before the retry is due.
    assert!(b.gate.tick(NOW + 10, &mut b.journal).is_empty());
    assert_eq!(lab.calls().len(), 3);
    // The first retry fails too: the wait doubles.
    let ev = b.gate.tick(NOW + 11, &mut b.journal);
    assert!(matches!(ev.as_slice(), [Event::CloseFailed { closing, .. }] if closing.attempts == 2), "{ev:?}");
    assert_eq!(b.journal.closing[&GrantId(17)].retry_at, NOW + 13);
    assert!(b.gate.tick(NOW + 12, &mut b.journal).is_empty());
    // The second retry works: both units are closed, the grant is gone everywhere.
    let ev = b.gate.tick(NOW + 13, &mut b.journal);
    assert!(matches!(ev.as_slice(), [Event::Ended { why: EndKind::Revoke, attempts: 2, .. }]), "{ev:?}");
    assert_eq!(
        lab.actions()[2..],
        pairs(&[("close", "22"), ("close", "22"), ("close", "22"), ("close", "53")])
    );
    assert!(!lab.path("present-22").exists() && !lab.path("present-53").exists());
    assert!(b.gate.ledger().is_empty());
    assert!(b.journal.grants.is_empty() && b.journal.closing.is_empty());
}

#[test]
fn after_a_restart_what_ended_is_closed_and_what_lives_is_opened() {
    let lab = Lab::new();
    let mut first = lab.gate(&["{id}"], "");
    let mut expired = grant(1, "tcp/1001");
    expired.deadline = NOW + 60;
    let closing = grant(2, "tcp/1002");
    let live = grant(3, "tcp/1003");
    for g in [&expired, &closing, &live] {
        first.grant(g).unwrap();
    }
    lab.touch("fail-close-1002");
    assert!(first.revoke(2, NOW + 10).is_err());
    // The daemon dies; its journal survives. Meanwhile grant 1's deadline passes and the
    // admin mends the failing close.
    let journal = std::mem::take(&mut first.journal);
    drop(first);
    fs::remove_file(lab.path("fail-close-1002")).unwrap();
    let before = lab.calls().len();

    let later = NOW + 100;
    let mut second = Gw::restarted(lab.backend(&["{id}"], ""), journal, later).unwrap();
    // Start opens the live grant (without check, whatever is there) and closes nothing.
    assert_eq!(lab.actions()[before..], pairs(&[("open", "1003")]));
    // The first tick closes the expired grant and the closing one.
    let ev = second.gate.tick(later, &mut second.journal);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(ev.iter().all(|e| matches!(e, Event::Ended { .. })), "{ev:?}");
    let mut after: Vec<(String, String)> = lab.actions()[before + 1..].to_vec();
    after.sort();
    assert_eq!(after, pairs(&[("close", "1001"), ("close", "1002")]));
    let ids: Vec<String> = lab.calls()[before..].iter().map(|c| c.argv[1].clone()).collect();
    assert!(ids.contains(&GrantId(1).to_string()) && ids.contains(&GrantId(2).to_string()), "{ids:?}");
    assert_eq!(second.live(), [GrantId(3)]);
    assert_eq!(second.journal.grants.keys().copied().collect::<Vec<_>>(), [GrantId(3)]);
    assert!(second.journal.closing.is_empty());
}

#[test]
fn prepare_with_check_opens_only_what_is_absent() {
    let lab = Lab::new();
    lab.touch("present-22");
    let mut journal = MemoryJournal::default();
    journal.grants.insert(GrantId(18), grant(18, "tcp/22,udp/53"));
    Gw::restarted(lab.backend_with_check(&[], ""), journal, NOW + 1).unwrap();
    assert_eq!(lab.actions(), pairs(&[("check", "22"), ("check", "53"), ("open", "53")]));
    let calls = lab.calls();
    assert_eq!(calls[0].stdin["action"], "check");
    assert_eq!(calls[0].env("SPA_TIMEOUT"), "599");
}

#[test]
fn prepare_check_that_errors_fails_the_start() {
    let lab = Lab::new();
    lab.touch("fail-check-22");
    let mut journal = MemoryJournal::default();
    journal.grants.insert(GrantId(19), grant(19, "tcp/22"));
    let err = Gw::restarted(lab.backend_with_check(&[], ""), journal, NOW).err().unwrap();
    assert!(
        matches!(&err, BackendError::Command { failure: CommandFailure::Exit { status, .. }, .. } if status.code() == Some(4)),
        "{err:?}"
    );
}

#[test]
fn prepare_without_check_opens_every_live_grant_and_closes_nothing() {
    let lab = Lab::new();
    let mut journal = MemoryJournal::default();
    for g in [grant(21, "tcp/22"), grant(22, "all")] {
        journal.grants.insert(g.id, g);
    }
    let b = Gw::restarted(lab.backend(&[], ""), journal, NOW).unwrap();
    assert_eq!(lab.actions(), pairs(&[("open", "22"), ("open", "")]));
    assert_eq!(b.live(), [GrantId(21), GrantId(22)]);
}

#[test]
fn stop_closes_every_live_grant_and_teardown_runs_nothing() {
    let lab = Lab::new();
    let mut b = lab.gate(&[], "");
    b.grant(&grant(23, "tcp/22")).unwrap();
    b.grant(&grant(24, "udp/53")).unwrap();
    // A stop that keeps the grants runs nothing.
    assert!(b.gate.stop(true, NOW + 1, &mut b.journal).is_empty());
    assert_eq!(lab.calls().len(), 2);
    let ev = b.gate.stop(false, NOW + 1, &mut b.journal);
    assert_eq!(ev.len(), 2, "{ev:?}");
    let mut closed = lab.actions()[2..].to_vec();
    closed.sort();
    assert_eq!(closed, pairs(&[("close", "22"), ("close", "53")]));
    assert!(b.journal.grants.is_empty());
    b.gate.teardown().unwrap();
    assert_eq!(lab.calls().len(), 4);
}

#[test]
fn registry_of_this_binary_contains_script() {
    let registry = Registry::collect().unwrap();
    assert!(registry.names().contains(&"script"), "{:?}", registry.names());
    let table: toml::Table = toml::from_str("open = [\"true\"]\nclose = [\"true\"]").unwrap();
    let mut driver = registry.create("script", &table).unwrap();
    assert_eq!(driver.name(), "script");
    // The firewall cannot be read back: `spad list --firewall` says so.
    let err = driver.observe(NOW).unwrap_err();
    assert_eq!(err.to_string(), "reading the firewall is not supported by this backend");
    // There is nothing cheap to look at: never reported as tampered.
    assert!(driver.check(NOW, &mut MemoryJournal::default()).is_empty());
    let err = registry.create("script", &toml::Table::new()).err().unwrap();
    assert!(
        std::error::Error::source(&err).is_some_and(|e| e.to_string() == "invalid backend configuration")
    );
}

//! The script backend against real processes: shell scripts in a temporary directory record
//! what they were given (argv, environment, stdin), and the tests assert on what they saw.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spa_backend_script::ScriptBackend;
use spa_backends::{Access, Backend, BackendError, Grant, GrantId, Nat, Registry, Snat};

/// Records each call in `$REC_DIR/<n>/{argv,env,stdin}` (n counts from 1; calls never
/// overlap). Knobs, all files in `$REC_DIR`: `present-<port>` makes check answer "present",
/// `fail-<action>-<port>` makes that call fail with a message on stderr.
const RECORDER: &str = r#"#!/bin/sh
d="$REC_DIR"
n=$(cat "$d/count" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$d/count"
mkdir "$d/$n"
for a in "$@"; do printf '[%s]\n' "$a"; done > "$d/$n/argv"
env > "$d/$n/env"
cat > "$d/$n/stdin"
if [ -e "$d/fail-$SPA_ACTION-$SPA_PORT" ]; then
    echo "cannot $SPA_ACTION port $SPA_PORT" >&2
    echo "second line" >&2
    exit 4
fi
if [ "$SPA_ACTION" = check ]; then
    [ -e "$d/present-$SPA_PORT" ] && exit 0
    exit 1
fi
exit 0
"#;

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

    fn touch(&self, name: &str) {
        fs::write(self.path(name), "").unwrap();
    }

    fn rec(&self) -> String {
        self.path("rec.sh").to_str().unwrap().to_owned()
    }

    /// A backend whose open/close/check all run the recorder with `args`; `extra` is more TOML.
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
        ScriptBackend::new(&toml::from_str(&toml).unwrap()).unwrap()
    }

    fn backend_with_check(&self, args: &[&str], extra: &str) -> ScriptBackend {
        let check = {
            let mut v = vec![self.rec(), "check".to_owned()];
            v.extend(args.iter().map(|s| (*s).to_owned()));
            serde_json::to_string(&v).unwrap()
        };
        self.backend(args, &format!("check = {check}\n{extra}"))
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

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn grant(id: u64, ports: &str) -> Grant {
    let created = now();
    Grant {
        id: GrantId(id),
        source: "192.0.2.7".parse().unwrap(),
        packet_source: "198.51.100.9".parse().unwrap(),
        destination: None,
        access: if ports == "all" {
            Access::All
        } else {
            Access::Ports(ports.split(',').map(|p| p.parse().unwrap()).collect())
        },
        nat: None,
        created,
        deadline: created + 600,
        stanza: "laptop".into(),
        username: "alice".into(),
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, p)| ((*a).to_owned(), (*p).to_owned())).collect()
}

#[test]
fn open_substitutes_argv_and_sets_env_and_stdin() {
    let lab = Lab::new();
    let mut b = lab.backend(
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
            "{{literal}}",
        ],
        r#"pass_env = ["CARGO_PKG_NAME"]"#,
    );
    let mut g = grant(0x1234, "tcp/22");
    g.destination = Some("203.0.113.1".parse().unwrap());
    b.grant(&g).unwrap();

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
            "{literal}",
        ]
    );

    for (k, v) in [
        ("SPA_ACTION", "open"),
        ("SPA_PER", "port"),
        ("SPA_ID", "0000000000001234"),
        ("SPA_SOURCE", "192.0.2.7"),
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
        ("SPA_DEADLINE", &deadline),
        ("SPA_CREATED", &created),
        ("SPA_STANZA", "laptop"),
        ("SPA_USERNAME", "alice"),
        ("PATH", spa_backend_script::DEFAULT_PATH),
    ] {
        assert_eq!(c.env(k), v, "{k}");
    }
    let timeout: u64 = c.env("SPA_TIMEOUT").parse().unwrap();
    assert!(timeout > 0 && timeout <= 600, "SPA_TIMEOUT={timeout}");
    // Nothing is inherited except what pass_env names (cargo sets both for the test process).
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert!(!c.env.contains_key("CARGO_MANIFEST_DIR"));
    assert_eq!(c.env("CARGO_PKG_NAME"), "spa-backend-script");

    assert_eq!(c.stdin["action"], "open");
    assert_eq!(c.stdin["per"], "port");
    assert_eq!(c.stdin["id"], "0000000000001234");
    assert_eq!(c.stdin["port"], "tcp/22");
    assert_eq!(c.stdin["timeout"], timeout);
    let seen: Grant = serde_json::from_value(c.stdin["grant"].clone()).unwrap();
    assert_eq!(seen, g);
}

#[test]
fn multi_port_knock_is_one_call_per_port_or_one_per_grant() {
    let lab = Lab::new();
    let mut b = lab.backend(&["{proto}/{port}"], "");
    let g = grant(1, "tcp/22,udp/53,tcp/443");
    b.grant(&g).unwrap();
    let calls = lab.calls();
    let seen: Vec<_> = calls.iter().map(|c| c.argv[1].clone()).collect();
    assert_eq!(seen, ["tcp/22", "udp/53", "tcp/443"]);
    assert_eq!(calls[1].env("SPA_PROTO_NUM"), "17");
    assert_eq!(calls[1].stdin["port"], "udp/53");
    assert!(calls.iter().all(|c| c.env("SPA_PORTS") == "tcp/22,udp/53,tcp/443"));

    let lab = Lab::new();
    let mut b = lab.backend(&["{ports}", "{proto}", "{port}"], r#"per = "grant""#);
    b.grant(&g).unwrap();
    let calls = lab.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].argv, ["open", "tcp/22,udp/53,tcp/443", "", ""]);
    assert_eq!(calls[0].env("SPA_PER"), "grant");
    assert_eq!(calls[0].stdin["port"], serde_json::Value::Null);
    assert_eq!(calls[0].stdin["grant"]["access"]["ports"][2], "tcp/443");

    b.revoke(&g).unwrap();
    assert_eq!(lab.actions(), pairs(&[("open", ""), ("close", "")]));
}

#[test]
fn forward_all_is_one_call_with_empty_port() {
    let lab = Lab::new();
    let mut b = lab.backend(&["{ports}", "{proto}", "{proto_num}", "{port}"], "");
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
    let mut b = lab.backend(&["{nat}", "{nat_addr}", "{nat_port}", "{snat}", "{port}"], "");

    let mut g = grant(3, "tcp/2222");
    g.nat = Some(Nat::Dnat { to: "10.0.0.2".parse().unwrap(), port: Some(22), snat: Some(Snat::Masquerade) });
    b.grant(&g).unwrap();

    // Forward-all DNAT keeps each port: the internal port is the call's own port.
    let mut h = grant(4, "tcp/80,udp/53");
    h.nat = Some(Nat::Dnat {
        to: "fd00::2".parse().unwrap(),
        port: None,
        snat: Some(Snat::To("10.0.0.1".parse().unwrap())),
    });
    b.grant(&h).unwrap();

    let mut r = grant(5, "tcp/22");
    r.nat = Some(Nat::Redirect { port: 2022 });
    b.grant(&r).unwrap();

    let mut rt = grant(6, "all");
    rt.nat = Some(Nat::Route { snat: Some(Snat::To("10.9.9.9".parse().unwrap())) });
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
    assert!(b.capabilities().nat && b.capabilities().ipv6 && !b.capabilities().native_expiry);
}

#[test]
fn ipv6_source() {
    let lab = Lab::new();
    let mut b = lab.backend(&["{source}", "{family}"], "");
    let mut g = grant(7, "udp/53");
    g.source = "2001:db8::7".parse().unwrap();
    b.grant(&g).unwrap();
    assert_eq!(lab.calls()[0].argv, ["open", "2001:db8::7", "ipv6"]);
}

#[test]
fn failing_script_is_an_error_with_its_stderr_and_nothing_is_held() {
    let lab = Lab::new();
    let mut b = lab.backend(&[], "");
    lab.touch("fail-open-22");
    let err = b.grant(&grant(8, "tcp/22")).unwrap_err();
    let BackendError::Failed { program, status, stderr } = &err else { panic!("{err:?}") };
    assert_eq!(status.code(), Some(4));
    assert_eq!(stderr, "cannot open port 22 / second line");
    assert!(program.starts_with("open command ") && program.ends_with(" for tcp/22"), "{program}");
    assert!(err.to_string().contains("cannot open port 22"), "{err}");
    assert!(b.list().unwrap().is_empty());
}

#[test]
fn failed_multi_port_open_closes_what_it_opened() {
    let lab = Lab::new();
    let mut b = lab.backend(&[], "");
    lab.touch("fail-open-53");
    let err = b.grant(&grant(9, "tcp/22,udp/53,tcp/443")).unwrap_err();
    assert!(matches!(err, BackendError::Failed { .. }), "{err:?}");
    assert_eq!(lab.actions(), pairs(&[("open", "22"), ("open", "53"), ("close", "22")]));
    assert!(b.list().unwrap().is_empty());
}

#[test]
fn missing_program_is_a_spawn_error() {
    let lab = Lab::new();
    let missing = lab.path("does-not-exist");
    let toml = format!("open = [{missing:?}]\nclose = [{missing:?}]");
    let mut b = ScriptBackend::new(&toml::from_str(&toml).unwrap()).unwrap();
    let err = b.grant(&grant(10, "tcp/22")).unwrap_err();
    assert!(matches!(err, BackendError::Spawn { .. }), "{err:?}");
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
        "#!/bin/sh\nsleep 1000 &\necho $! > \"$REC_DIR/child\"\necho $$ > \"$REC_DIR/parent\"\nwait\n",
    );
    let toml = format!(
        "open = [{hang:?}]\nclose = [{hang:?}]\ntimeout_ms = 300\nenv = {{ REC_DIR = {:?} }}",
        lab.dir.path().to_str().unwrap()
    );
    let mut b = ScriptBackend::new(&toml::from_str(&toml).unwrap()).unwrap();
    let err = b.grant(&grant(11, "tcp/22")).unwrap_err();
    let BackendError::Timeout { limit_ms, .. } = err else { panic!("{err:?}") };
    assert_eq!(limit_ms, 300);
    assert!(b.list().unwrap().is_empty());

    let child = fs::read_to_string(lab.path("child")).unwrap().trim().to_owned();
    let parent = fs::read_to_string(lab.path("parent")).unwrap().trim().to_owned();
    // SIGKILL is delivered asynchronously; this is a safety limit, not a timing assertion.
    let start = Instant::now();
    while !(dead(&child) && dead(&parent)) {
        assert!(start.elapsed() < Duration::from_secs(20), "pid {child} or {parent} survived the kill");
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
    let mut b = ScriptBackend::new(&toml::from_str(&toml).unwrap()).unwrap();
    let mut g = grant(12, "tcp/22");
    g.username = format!("$(touch {}); `touch {}`", pwned.display(), pwned.display());
    b.grant(&g).unwrap();
    assert_eq!(fs::read_to_string(out).unwrap(), g.username);
    assert!(!pwned.exists());
}

#[test]
fn reknock_extends_without_running_open_again() {
    let lab = Lab::new();
    let mut b = lab.backend(&["{deadline}"], "");
    let g = grant(13, "tcp/22,udp/53");
    b.grant(&g).unwrap();
    let mut later = g.clone();
    later.deadline += 300;
    b.grant(&later).unwrap();
    assert_eq!(lab.actions(), pairs(&[("open", "22"), ("open", "53")]));
    let owned = b.list().unwrap();
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].id, Some(GrantId(13)));
    assert_eq!(owned[0].deadline, Some(later.deadline));
    assert_eq!(owned[0].entry, "192.0.2.7 tcp/22,udp/53");

    // The close at the end is for the extended grant.
    b.revoke(&later).unwrap();
    let calls = lab.calls();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[3].env("SPA_DEADLINE"), later.deadline.to_string());
}

#[test]
fn reopen_on_extend_runs_open_with_the_new_deadline() {
    let lab = Lab::new();
    let mut b = lab.backend(&["{deadline}"], "reopen_on_extend = true");
    let g = grant(14, "tcp/22");
    b.grant(&g).unwrap();
    let mut later = g.clone();
    later.deadline += 300;
    b.grant(&later).unwrap();
    let argv: Vec<Vec<String>> = lab.calls().into_iter().map(|c| c.argv).collect();
    assert_eq!(
        argv,
        [
            vec!["open".to_owned(), g.deadline.to_string()],
            vec!["open".to_owned(), later.deadline.to_string()]
        ]
    );
}

#[test]
fn same_id_with_other_ports_closes_the_old_and_opens_the_new() {
    let lab = Lab::new();
    let mut b = lab.backend(&[], "");
    let g = grant(15, "tcp/22");
    b.grant(&g).unwrap();
    let other = grant(15, "tcp/443");
    b.grant(&other).unwrap();
    assert_eq!(lab.actions(), pairs(&[("open", "22"), ("close", "22"), ("open", "443")]));
    assert_eq!(b.list().unwrap()[0].entry, "192.0.2.7 tcp/443");
}

#[test]
fn revoke_runs_close_and_forgets_and_unknown_is_closed_as_recorded() {
    let lab = Lab::new();
    let mut b = lab.backend(&["{source}"], "");
    let g = grant(16, "tcp/22,udp/53");
    b.grant(&g).unwrap();
    b.revoke(&g).unwrap();
    assert!(b.list().unwrap().is_empty());
    // A grant the daemon recorded before a restart, ended while it was down: closed as
    // recorded, since the backend cannot know whether the opening is still there.
    b.revoke(&grant(999, "tcp/1")).unwrap();
    assert!(b.list().unwrap().is_empty());
    assert_eq!(
        lab.actions(),
        pairs(&[("open", "22"), ("open", "53"), ("close", "22"), ("close", "53"), ("close", "1")])
    );
    let calls = lab.calls();
    assert_eq!(calls[2].argv, ["close", "192.0.2.7"]);
    assert_eq!(calls[2].stdin["action"], "close");
}

#[test]
fn failed_close_keeps_the_grant_for_a_retry() {
    let lab = Lab::new();
    let mut b = lab.backend(&[], "");
    let g = grant(17, "tcp/22,udp/53");
    b.grant(&g).unwrap();
    lab.touch("fail-close-22");
    let err = b.revoke(&g).unwrap_err();
    assert!(err.to_string().contains("cannot close port 22"), "{err}");
    // Both ports were tried; the grant is still held.
    assert_eq!(lab.actions()[2..], pairs(&[("close", "22"), ("close", "53")]));
    assert_eq!(b.list().unwrap().len(), 1);
    fs::remove_file(lab.path("fail-close-22")).unwrap();
    b.teardown().unwrap();
    assert!(b.list().unwrap().is_empty());
    assert_eq!(lab.actions()[4..], pairs(&[("close", "22"), ("close", "53")]));
}

#[test]
fn prepare_with_check_opens_only_what_is_absent() {
    let lab = Lab::new();
    let mut b = lab.backend_with_check(&[], "");
    lab.touch("present-22");
    let g = grant(18, "tcp/22,udp/53");
    b.prepare(std::slice::from_ref(&g)).unwrap();
    assert_eq!(lab.actions(), pairs(&[("check", "22"), ("check", "53"), ("open", "53")]));
    assert_eq!(b.list().unwrap().len(), 1);
    assert_eq!(lab.calls()[0].stdin["action"], "check");
}

#[test]
fn prepare_check_that_errors_fails_the_grant() {
    let lab = Lab::new();
    let mut b = lab.backend_with_check(&[], "");
    lab.touch("fail-check-22");
    let err = b.prepare(&[grant(19, "tcp/22")]).unwrap_err();
    assert!(matches!(&err, BackendError::Failed { status, .. } if status.code() == Some(4)), "{err:?}");
    assert!(b.list().unwrap().is_empty());
}

#[test]
fn prepare_without_check_opens_every_live_grant_and_closes_stale_ones() {
    let lab = Lab::new();
    let mut b = lab.backend(&[], "");
    let stale = grant(20, "tcp/8080");
    b.grant(&stale).unwrap();
    let live = [grant(21, "tcp/22"), grant(22, "all")];
    b.prepare(&live).unwrap();
    assert_eq!(lab.actions(), pairs(&[("open", "8080"), ("close", "8080"), ("open", "22"), ("open", "")]));
    let ids: Vec<_> = b.list().unwrap().into_iter().map(|o| o.id).collect();
    assert_eq!(ids, [Some(GrantId(21)), Some(GrantId(22))]);
}

#[test]
fn teardown_closes_everything_held() {
    let lab = Lab::new();
    let mut b = lab.backend(&[], "");
    b.grant(&grant(23, "tcp/22")).unwrap();
    b.grant(&grant(24, "udp/53")).unwrap();
    b.teardown().unwrap();
    assert_eq!(lab.actions(), pairs(&[("open", "22"), ("open", "53"), ("close", "22"), ("close", "53")]));
    assert!(b.list().unwrap().is_empty());
}

#[test]
fn registry_of_this_binary_contains_script() {
    let registry = Registry::collect().unwrap();
    assert!(registry.names().contains(&"script"), "{:?}", registry.names());
    let table: toml::Table = toml::from_str("open = [\"true\"]\nclose = [\"true\"]").unwrap();
    let backend = registry.create("script", &table).unwrap();
    assert_eq!(backend.name(), "script");
    let err = registry.create("script", &toml::Table::new()).err().unwrap();
    assert!(
        std::error::Error::source(&err).is_some_and(|e| e.to_string() == "invalid backend configuration")
    );
}

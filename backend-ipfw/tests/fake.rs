//! The ipfw backend against the recording fake of ipfw (`fake/ipfw.rs`): the shared backend
//! contract, the whole grant lifecycle with the exact batches it runs, restarts that leave
//! rules alone, tampering, the boot-time rules file, and the fake's own strictness.
//!
//! ipfw cannot run here; the fake keeps rules, tables and NAT instances in a state file and
//! refuses malformed input as ipfw(8) says ipfw does (see the fake's module documentation).

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use spa_backend_ipfw::{Config, IpfwBackend};
use spa_backends::testkit::{ContractSetup, MemoryJournal, contract, grant};
use spa_backends::{Backend, Driver, Event, Gate, GrantId, Health};

const FAKE: &str = env!("CARGO_BIN_EXE_spa-fake-ipfw");

struct Fake {
    _dir: tempfile::TempDir,
    state: PathBuf,
}

impl Fake {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("ipfw.json");
        std::fs::write(&state, "{}").unwrap();
        Self { _dir: dir, state }
    }

    fn prefix(&self) -> Vec<String> {
        vec![FAKE.to_owned(), "--state".to_owned(), self.state.to_str().unwrap().to_owned()]
    }

    fn backend(&self, config: &str) -> IpfwBackend {
        IpfwBackend::with_command_prefix(Config::from_table(&config.parse().unwrap()).unwrap(), self.prefix())
    }

    fn read(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.state).unwrap()).unwrap()
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut v = self.read();
        f(&mut v);
        std::fs::write(&self.state, v.to_string()).unwrap();
    }

    /// A table's entries as `key value`.
    fn table(&self, name: &str) -> Vec<String> {
        self.read()["tables"][name]["entries"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k} {}", v.as_str().unwrap())).collect())
            .unwrap_or_default()
    }

    fn rule_numbers(&self) -> Vec<u64> {
        self.read()["rules"].as_array().unwrap().iter().map(|r| r["number"].as_u64().unwrap()).collect()
    }

    fn calls(&self) -> Vec<String> {
        self.read()["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let args: Vec<&str> =
                    c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
                let mut line = format!("ipfw {}", args.join(" "));
                let status = c["status"].as_u64().unwrap();
                if status != 0 {
                    line.push_str(&format!("   => exit {status}"));
                }
                let stdin = c["stdin"].as_str().unwrap();
                if !stdin.is_empty() {
                    line.push_str(&format!("\n  | {}", stdin.trim_end().replace('\n', "\n  | ")));
                }
                line
            })
            .collect()
    }

    fn clear_calls(&self) {
        self.edit(|v| v["calls"] = json!([]));
    }

    /// Runs the fake directly: (status, stderr).
    fn ipfw(&self, args: &[&str], stdin: &str) -> (i32, String) {
        use std::io::Write;
        let mut child = Command::new(FAKE)
            .arg("--state")
            .arg(&self.state)
            .arg("/sbin/ipfw")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

const CONFIG: &str = "protect = [\"tcp/22\"]\n\
    [[forward]]\nport = \"tcp/2222\"\nto = \"10.0.0.2\"\nto_port = 22\ninterface = \"em0\"\n";

#[test]
fn keeps_the_contract() {
    let fake = Fake::new();
    let prefix = fake.prefix();
    contract(ContractSetup {
        make: Box::new(move || {
            IpfwBackend::with_command_prefix(
                Config::from_table(&CONFIG.parse().unwrap()).unwrap(),
                prefix.clone(),
            )
        }),
        observe: None,
        source4: "192.0.2.1",
        source6: Some("2001:db8::1"),
        dnat4: Some("10.0.0.2"),
    });
    let v = fake.read();
    let refused: Vec<&Value> = v["calls"].as_array().unwrap().iter().filter(|c| c["status"] != 0).collect();
    assert!(refused.is_empty(), "ipfw refused: {refused:?}");
}

#[test]
fn the_grant_lifecycle_runs_one_batch_per_change() {
    let fake = Fake::new();
    let mut gate = Gate::new(fake.backend(CONFIG));
    let mut journal = MemoryJournal::default();
    let t0 = 1_700_000_000;
    gate.start(Vec::new(), t0, &mut journal).unwrap();
    let execs = |g: &Gate<IpfwBackend>| g.backend().exec_count();

    let before = execs(&gate);
    let g1 = grant(1).source("192.0.2.1").ports("tcp/22,udp/53").times(t0, t0 + 30);
    assert!(matches!(gate.grant(g1.into(), t0, &mut journal).as_slice(), [Event::Granted(_)]));
    assert_eq!(execs(&gate) - before, 1, "a grant of two ports is one batch");
    assert_eq!(fake.table("spa_in"), ["192.0.2.1,tcp,22 1700000030", "192.0.2.1,udp,53 1700000030"]);

    let before = execs(&gate);
    let again = grant(2).source("192.0.2.1").ports("tcp/22,udp/53").times(t0 + 5, t0 + 90);
    assert!(matches!(gate.grant(again.into(), t0 + 5, &mut journal).as_slice(), [Event::Extended(_)]));
    assert_eq!(execs(&gate) - before, 1, "a re-knock is one batch");
    assert_eq!(
        fake.table("spa_in"),
        ["192.0.2.1,tcp,22 1700000090", "192.0.2.1,udp,53 1700000090"],
        "the value is the new deadline"
    );

    let g3 = grant(3).source("2001:db8::7").all().times(t0 + 6, t0 + 40);
    assert!(matches!(gate.grant(g3.into(), t0 + 6, &mut journal).as_slice(), [Event::Granted(_)]));
    let g4 = grant(4)
        .source("198.51.100.9")
        .ports("tcp/2222")
        .dnat("10.0.0.2", Some(22), None)
        .times(t0 + 7, t0 + 100);
    assert!(matches!(gate.grant(g4.into(), t0 + 7, &mut journal).as_slice(), [Event::Granted(_)]));
    assert_eq!(fake.table("spa_all"), ["2001:db8::7 1700000040"]);
    assert_eq!(fake.table("spa_fwd"), ["198.51.100.9,tcp,2222 1700000100"]);

    gate.tick(t0 + 40, &mut journal);
    assert!(fake.table("spa_all").is_empty());
    gate.revoke(GrantId(1), t0 + 50, &mut journal);
    assert!(fake.table("spa_in").is_empty());
    gate.stop(false, t0 + 60, &mut journal);
    assert!(fake.table("spa_fwd").is_empty());
    insta::assert_snapshot!(fake.calls().join("\n"));
}

/// A restart (or a rebuild after tampering with the tables) must not delete rules that are
/// right: deleting a rule deletes the connections it let in.
#[test]
fn a_restart_refills_the_tables_and_leaves_right_rules_alone() {
    let fake = Fake::new();
    let mut journal = MemoryJournal::default();
    let mut gate = Gate::new(fake.backend(CONFIG));
    gate.start(Vec::new(), 1000, &mut journal).unwrap();
    let g: spa_backends::Grant = grant(1).ports("tcp/22").times(1000, 2000).into();
    gate.grant(g, 1000, &mut journal);
    let rules = fake.read()["rules"].clone();
    // A new daemon with the journal's grants.
    let records = gate.ledger().records().cloned().collect();
    fake.clear_calls();
    let mut gate = Gate::new(fake.backend(CONFIG));
    gate.start(records, 1500, &mut journal).unwrap();
    assert_eq!(fake.read()["rules"], rules, "the rules were not touched");
    assert!(
        fake.calls().iter().all(|c| !c.contains("delete 1") && !c.contains("| add ")),
        "{:?}",
        fake.calls()
    );
    assert_eq!(fake.table("spa_in"), ["192.0.2.1,tcp,22 2000"]);
    // A configuration change replaces exactly the rules it changes.
    let mut gate = Gate::new(fake.backend("protect = [\"tcp/22\", \"tcp/443\"]"));
    fake.clear_calls();
    gate.start(Vec::new(), 1600, &mut journal).unwrap();
    let calls = fake.calls().join("\n");
    assert!(calls.contains("set 10 delete 10100 10101\n"), "{calls}");
    assert!(calls.contains("add 10902 set 10 deny tcp from any to me 443"), "{calls}");
    assert!(!calls.contains("add 10000 "), "{calls}");
    assert_eq!(fake.rule_numbers().len(), 9);
}

#[test]
fn tampering_is_found_and_everything_is_set_up_again() {
    let fake = Fake::new();
    let mut gate = Gate::new(fake.backend(&format!("check_interval_ms = 0\n{CONFIG}")));
    let mut journal = MemoryJournal::default();
    gate.start(Vec::new(), 1000, &mut journal).unwrap();
    gate.grant(grant(1).ports("tcp/22").times(1000, 2000).into(), 1000, &mut journal);
    assert_eq!(gate.backend_mut().check(1001).unwrap(), Health::Intact);

    // `ipfw delete 10900`: the protection of tcp/22 is gone.
    assert_eq!(fake.ipfw(&["delete", "10900"], "").0, 0);
    let ev = gate.check(1002, &mut journal);
    assert!(
        matches!(ev.as_slice(), [Event::Tampered { detail }, Event::Repaired { live: 1 }] if detail == "ipfw rule 10900 (deny4-tcp-22) is gone or changed"),
        "{ev:?}"
    );
    assert!(fake.rule_numbers().contains(&10900));

    // A stranger's rule in spad's set and range; one in another set is the admin's business.
    assert_eq!(fake.ipfw(&["add", "10500", "set", "3", "count", "ip", "from", "any", "to", "any"], "").0, 0);
    assert_eq!(gate.backend_mut().check(1003).unwrap(), Health::Intact);
    assert_eq!(fake.ipfw(&["add", "10501", "set", "10", "allow", "ip", "from", "any", "to", "any"], "").0, 0);
    assert_eq!(
        gate.backend_mut().check(1004).unwrap(),
        Health::Damaged("ipfw rule 10501 in set 10 is not spad's".into())
    );
    gate.check(1005, &mut journal);
    assert!(!fake.rule_numbers().contains(&10501) && fake.rule_numbers().contains(&10500));

    // A table flushed by hand is not tamper (it closes grants: fail closed); a table destroyed
    // is (after its rules: ipfw refuses to destroy a table in use).
    let numbers: Vec<String> = fake
        .rule_numbers()
        .iter()
        .filter(|n| (10000..11000).contains(*n) && **n != 10500)
        .map(u64::to_string)
        .collect();
    let delete: Vec<&str> =
        ["set", "10", "delete"].into_iter().chain(numbers.iter().map(String::as_str)).collect();
    assert_eq!(fake.ipfw(&delete, "").0, 0);
    assert_eq!(fake.ipfw(&["table", "spa_in", "destroy"], "").0, 0);
    let ev = gate.check(1006, &mut journal);
    assert!(matches!(ev.as_slice(), [Event::Tampered { .. }, Event::Repaired { live: 1 }]), "{ev:?}");
    assert_eq!(fake.table("spa_in"), ["192.0.2.1,tcp,22 2000"]);
    assert_eq!(gate.backend_mut().check(1007).unwrap(), Health::Intact);
}

#[test]
fn teardown_removes_rules_and_tables_and_can_run_twice() {
    let fake = Fake::new();
    assert_eq!(fake.ipfw(&["add", "10500", "set", "3", "count", "ip", "from", "any", "to", "any"], "").0, 0);
    let mut gate = Gate::new(fake.backend(CONFIG));
    let mut journal = MemoryJournal::default();
    gate.start(Vec::new(), 1000, &mut journal).unwrap();
    gate.grant(grant(1).times(1000, 2000).into(), 1000, &mut journal);
    gate.teardown().unwrap();
    gate.teardown().unwrap();
    assert_eq!(fake.rule_numbers(), [10500], "only spad's set is removed");
    assert_eq!(fake.read()["tables"], json!({}));
}

/// `conf/freebsd/ipfw-spa.rules` is what `prepare` renders for `protect = ["tcp/22"]` on an
/// empty ipfw, so that spad, starting after it, finds its rules in place and leaves them.
#[test]
fn the_boot_rules_are_what_prepare_makes() {
    let boot = include_str!("../../conf/freebsd/ipfw-spa.rules");
    let fake = Fake::new();
    assert_eq!(fake.ipfw(&["-q", "/dev/stdin"], boot), (0, String::new()));
    fake.clear_calls();
    let mut b = fake.backend("protect = [\"tcp/22\"]");
    b.prepare(&[], 1000).unwrap();
    let calls = fake.calls().join("\n");
    assert!(
        !calls.contains("| add ") && !calls.contains(" delete 1"),
        "the boot rules differ from prepare's: {calls}"
    );
}

#[test]
fn the_fake_refuses_malformed_input_like_ipfw() {
    let fake = Fake::new();
    let ok = |args: &[&str]| assert_eq!(fake.ipfw(args, "").0, 0, "{args:?}");
    ok(&["table", "t", "create", "type", "flow:src-ip,proto,dst-port"]);
    ok(&["table", "a", "create", "type", "addr"]);
    let refused = |args: &[&str], why: &str| {
        let (status, err) = fake.ipfw(args, "");
        assert_eq!(status, 1, "accepted: {args:?}");
        assert!(err.contains(why), "{args:?}: {err}");
    };
    refused(&["table", "t", "create", "type", "addr"], "File exists");
    refused(&["table", "t", "create", "type", "addr", "missing"], "other options");
    refused(&["table", "x", "create", "type", "flow:src-ip,port"], "invalid flow type");
    refused(&["table", "t", "add", "192.0.2.1", "5"], "does not match table type");
    refused(&["table", "t", "add", "192.0.2.1,tcp,70000", "5"], "invalid port");
    refused(&["table", "t", "add", "192.0.2.1,tcp,22", "soon"], "invalid value");
    refused(&["table", "t", "add", "192.0.2.1,tcp,22", "1", "192.0.2.2,tcp,22"], "without a value");
    refused(&["table", "nosuch", "add", "192.0.2.1"], "not found");
    ok(&["table", "t", "add", "192.0.2.1,tcp,22", "1"]);
    refused(&["table", "t", "add", "192.0.2.1,tcp,22", "1"], "already exists");
    ok(&["-q", "table", "t", "add", "192.0.2.1,tcp,22", "1"]);
    refused(&["table", "t", "delete", "192.0.2.9,tcp,22"], "not found");
    ok(&["-q", "table", "t", "delete", "192.0.2.9,tcp,22"]);
    refused(&["add", "100", "allow", "ip", "from", "any", "to", "me", "22"], "only TCP, UDP and SCTP");
    refused(&["add", "100", "allow", "udp", "from", "any", "to", "me", "53", "setup"], "tcp only");
    refused(&["add", "100", "allow", "ip", "from", "any", "to", "any", "in", "out"], "mutually exclusive");
    refused(
        &["add", "100", "nat", "1", "tcp", "from", "any", "to", "any", "in", "xmit", "em0"],
        "only be used with out",
    );
    refused(
        &["add", "100", "nat", "1", "tcp", "from", "any", "to", "any", "xmit", "em0"],
        "only be used with out",
    );
    refused(&["add", "100", "allow", "ip", "from", "table(t)", "to", "me"], "type mismatch");
    refused(&["add", "100", "allow", "ip", "from", "any", "to", "me", "flow", "table(a)"], "type mismatch");
    refused(&["add", "100", "allow", "ip", "from", "any", "to", "me", "flow", "table(nosuch)"], "not found");
    refused(&["add", "65535", "allow", "ip", "from", "any", "to", "any"], "illegal rule number");
    refused(&["add", "100", "set", "31", "allow", "ip", "from", "any", "to", "any"], "illegal set");
    refused(&["add", "100", "allow", "ip", "any", "to", "any"], "missing ``from''");
    refused(&["delete", "4242"], "No such process");
    refused(
        &["nat", "1", "config", "if", "em0", "redirect_port", "tcp", "fd00::1:22", "2222"],
        "invalid local address",
    );
    ok(&["add", "100", "allow", "ip", "from", "any", "to", "me", "flow", "table(t)"]);
    refused(&["table", "t", "destroy"], "in use");
    // Batches: the first failing line stops it, the earlier ones stay applied.
    let (status, _) = fake.ipfw(
        &["-q", "/dev/stdin"],
        "table a add 192.0.2.7 1\ntable a add bogus 1\ntable a add 192.0.2.8 1\n",
    );
    assert_eq!(status, 1);
    assert_eq!(fake.table("a"), ["192.0.2.7 1"]);
    let long = format!("table a add {}\n", "192.0.2.1 1 ".repeat(400));
    assert!(fake.ipfw(&["-q", "/dev/stdin"], &long).1.contains("read buffer"));
}

/// `conf/freebsd/spa-ipfw-expire`, the cron safety net for when spad is down, run against the
/// fake (as `ipfw` on its PATH): it deletes exactly the keys whose deadline (the value) passed.
#[test]
fn the_cron_safety_net_deletes_the_keys_whose_deadline_passed() {
    let fake = Fake::new();
    let mut gate = Gate::new(fake.backend(CONFIG));
    let mut journal = MemoryJournal::default();
    let far = 4_000_000_000; // 2096: the script compares with the real clock
    gate.start(Vec::new(), 1000, &mut journal).unwrap();
    gate.grant(grant(1).ports("tcp/22").times(1000, 2000).into(), 1000, &mut journal);
    gate.grant(grant(2).source("2001:db8::2").ports("udp/53").times(1000, far).into(), 1000, &mut journal);
    gate.grant(grant(3).source("192.0.2.3").all().times(1000, 3000).into(), 1000, &mut journal);
    let dir = tempfile::tempdir().unwrap();
    let ipfw = dir.path().join("ipfw");
    std::fs::write(
        &ipfw,
        format!("#!/bin/sh\nexec {FAKE} --state {} /sbin/ipfw \"$@\"\n", fake.state.display()),
    )
    .unwrap();
    std::fs::set_permissions(&ipfw, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/freebsd/spa-ipfw-expire");
    let out = Command::new("sh").arg(script).env("PATH", path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fake.table("spa_in"), [format!("2001:db8::2,udp,53 {far}")]);
    assert!(fake.table("spa_all").is_empty());
}

//! The PF backend against the recording fake of pfctl (`fake/pfctl.rs`): the shared backend
//! contract, the whole grant lifecycle with the exact commands it runs, tampering, and the
//! fake's own strictness (so that a renderer mistake cannot pass unnoticed).
//!
//! PF cannot run here; the fake keeps tables and rules in a state file and refuses malformed
//! input as pfctl(8) and pf.conf(5) say pfctl does (see the fake's module documentation for
//! every behaviour it models and where it comes from).

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use spa_backend_pf::{Config, PfBackend};
use spa_backends::testkit::{ContractSetup, MemoryJournal, contract, grant};
use spa_backends::{Backend, Driver, Event, Gate, GrantId, Health, Snat};

const FAKE: &str = env!("CARGO_BIN_EXE_spa-fake-pfctl");

/// A fake PF: a state file in a temporary directory.
struct Fake {
    _dir: tempfile::TempDir,
    state: PathBuf,
}

impl Fake {
    /// A fake with `flavor` ("freebsd" or "openbsd") whose main ruleset evaluates anchor `spa`.
    fn new(flavor: &str) -> Self {
        let (rules, nat) = if flavor == "openbsd" {
            (vec!["anchor \"spa\" all"], vec![])
        } else {
            (vec!["anchor \"spa\" all"], vec!["nat-anchor \"spa\" all", "rdr-anchor \"spa\" all"])
        };
        Self::with(json!({"flavor": flavor, "main_rules": rules, "main_nat": nat}))
    }

    fn with(state: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pf.json");
        std::fs::write(&path, state.to_string()).unwrap();
        Self { _dir: dir, state: path }
    }

    fn prefix(&self) -> Vec<String> {
        vec![FAKE.to_owned(), "--state".to_owned(), self.state.to_str().unwrap().to_owned()]
    }

    fn backend(&self, config: &str) -> PfBackend {
        PfBackend::with_command_prefix(Config::from_table(&config.parse().unwrap()).unwrap(), self.prefix())
    }

    fn read(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.state).unwrap()).unwrap()
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut v = self.read();
        f(&mut v);
        std::fs::write(&self.state, v.to_string()).unwrap();
    }

    /// The addresses in a table of anchor `spa`, sorted.
    fn table(&self, name: &str) -> Vec<String> {
        let v = self.read();
        v["anchors"]["spa"]["tables"][name]["addrs"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    /// Every run so far: `pfctl <args>` and, for loads, the text.
    fn calls(&self) -> Vec<String> {
        self.read()["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let args: Vec<&str> =
                    c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
                let stdin = c["stdin"].as_str().unwrap();
                let status = c["status"].as_u64().unwrap();
                let mut line = format!("pfctl {}", args.join(" "));
                if status != 0 {
                    line.push_str(&format!("   => exit {status}"));
                }
                if !stdin.is_empty() {
                    line.push_str(&format!(
                        "\n{}",
                        stdin.trim_end().replace('\n', "\n  | ").replace("# ", "  | # ")
                    ));
                }
                line
            })
            .collect()
    }

    fn clear_calls(&self) {
        self.edit(|v| v["calls"] = json!([]));
    }

    /// Runs the fake directly with `args` and `stdin`: (status, stderr).
    fn pfctl(&self, args: &[&str], stdin: &str) -> (i32, String) {
        use std::io::Write;
        let mut child = Command::new(FAKE)
            .arg("--state")
            .arg(&self.state)
            .arg("/sbin/pfctl")
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

const CONFIG: &str = "ports = [\"udp/53\"]\nprotect = [\"tcp/22\"]\n\
    [[forward]]\nport = \"tcp/2222\"\nto = \"10.0.0.2\"\nto_port = 22\ninterface = \"em0\"\nsnat_interface = \"em1\"\n";

fn keeps_the_contract(flavor: &str) {
    let fake = Fake::new(flavor);
    let syntax = if flavor == "openbsd" { "openbsd" } else { "legacy" };
    let config = format!("syntax = \"{syntax}\"\n{CONFIG}");
    let prefix = fake.prefix();
    contract(ContractSetup {
        make: Box::new(move || {
            PfBackend::with_command_prefix(
                Config::from_table(&config.parse().unwrap()).unwrap(),
                prefix.clone(),
            )
        }),
        observe: None,
        source4: "192.0.2.1",
        source6: Some("2001:db8::1"),
        dnat4: Some("10.0.0.2"),
    });
    // Everything the suite made pfctl do was accepted.
    let v = fake.read();
    let refused: Vec<&Value> = v["calls"].as_array().unwrap().iter().filter(|c| c["status"] != 0).collect();
    assert!(refused.is_empty(), "pfctl refused: {refused:?}");
}

#[test]
fn keeps_the_contract_with_freebsd_pfctl() {
    keeps_the_contract("freebsd");
}

#[test]
fn keeps_the_contract_with_openbsd_pfctl() {
    keeps_the_contract("openbsd");
}

/// The whole lifecycle of grants, with every command it runs: a start, a plain grant (one
/// process), a re-knock (none), a two-port grant (one anchor load listing only the touched
/// tables), a forward with source NAT, expiry, a revoke, a stop.
#[test]
fn the_grant_lifecycle_runs_one_process_per_change() {
    let fake = Fake::new("freebsd");
    let mut gate = Gate::new(fake.backend(CONFIG));
    let mut journal = MemoryJournal::default();
    let t0 = 1_700_000_000;
    gate.start(Vec::new(), t0, &mut journal).unwrap();
    assert_eq!(fake.table("spa_tcp_22"), Vec::<String>::new());
    fake.clear_calls();
    let execs = |g: &Gate<PfBackend>| g.backend().exec_count();

    let before = execs(&gate);
    let ev =
        gate.grant(grant(1).source("192.0.2.1").ports("tcp/22").times(t0, t0 + 30).into(), t0, &mut journal);
    assert!(matches!(ev.as_slice(), [Event::Granted(_)]), "{ev:?}");
    assert_eq!(execs(&gate) - before, 1, "a plain grant costs one process");
    assert_eq!(fake.table("spa_tcp_22"), ["192.0.2.1"]);

    let before = execs(&gate);
    let ev = gate.grant(
        grant(2).source("192.0.2.1").ports("tcp/22").times(t0 + 5, t0 + 60).into(),
        t0 + 5,
        &mut journal,
    );
    assert!(matches!(ev.as_slice(), [Event::Extended(_)]), "{ev:?}");
    assert_eq!(execs(&gate) - before, 0, "PF keeps no deadline: a re-knock changes nothing");

    let before = execs(&gate);
    let g3 = grant(3).source("2001:db8::7").ports("tcp/22,udp/53").times(t0 + 6, t0 + 40);
    assert!(matches!(gate.grant(g3.into(), t0 + 6, &mut journal).as_slice(), [Event::Granted(_)]));
    assert_eq!(execs(&gate) - before, 1, "a grant touching two tables is one anchor load");
    assert_eq!(fake.table("spa_tcp_22"), ["192.0.2.1", "2001:db8::7"]);
    assert_eq!(fake.table("spa_udp_53"), ["2001:db8::7"]);

    let before = execs(&gate);
    let g4 =
        grant(4).source("198.51.100.9").ports("tcp/2222").dnat("10.0.0.2", Some(22), Some(Snat::Masquerade));
    assert!(matches!(
        gate.grant(g4.times(t0 + 7, t0 + 100).into(), t0 + 7, &mut journal).as_slice(),
        [Event::Granted(_)]
    ));
    assert_eq!(execs(&gate) - before, 1);
    assert_eq!(
        (fake.table("spa_fwd_tcp_2222"), fake.table("spa_snat_tcp_2222")),
        (vec!["198.51.100.9".into()], vec!["198.51.100.9".into()])
    );

    // Expiry at the deadline, by the ledger.
    gate.tick(t0 + 40, &mut journal);
    assert_eq!(fake.table("spa_tcp_22"), ["192.0.2.1"]);
    assert_eq!(fake.table("spa_udp_53"), Vec::<String>::new());
    gate.tick(t0 + 60, &mut journal);
    assert_eq!(fake.table("spa_tcp_22"), Vec::<String>::new());
    // A revoke, then the stop with nothing left.
    gate.revoke(GrantId(4), t0 + 70, &mut journal);
    assert_eq!(fake.table("spa_fwd_tcp_2222"), Vec::<String>::new());
    gate.stop(false, t0 + 71, &mut journal);
    insta::assert_snapshot!(fake.calls().join("\n"));
}

#[test]
fn a_revoke_kills_the_sources_states_only_when_configured() {
    for (kill, left) in [(false, 2), (true, 1)] {
        let fake = Fake::new("freebsd");
        fake.edit(|v| {
            v["states"] = json!([
                {"src": "192.0.2.1", "dst": "198.51.100.1"},
                {"src": "192.0.2.2", "dst": "198.51.100.1"}
            ]);
        });
        let config = format!("kill_states_on_revoke = {kill}\n{CONFIG}");
        let mut gate = Gate::new(fake.backend(&config));
        let mut journal = MemoryJournal::default();
        gate.start(Vec::new(), 1000, &mut journal).unwrap();
        gate.grant(grant(1).source("192.0.2.1").times(1000, 2000).into(), 1000, &mut journal);
        gate.grant(grant(2).source("192.0.2.2").times(1000, 1100).into(), 1000, &mut journal);
        // Expiry never kills: connections made in the window outlive it, like conntrack.
        gate.tick(1100, &mut journal);
        gate.revoke(GrantId(1), 1200, &mut journal);
        let states = fake.read()["states"].as_array().unwrap().len();
        assert_eq!(states, left, "kill_states_on_revoke = {kill}");
        let kills = fake.calls().iter().filter(|c| c.starts_with("pfctl -k")).count();
        assert_eq!(kills, usize::from(kill));
    }
}

#[test]
fn tampering_is_found_and_the_anchor_is_loaded_again_with_the_live_grants() {
    let fake = Fake::new("freebsd");
    let mut gate = Gate::new(fake.backend(&format!("check_interval_ms = 0\n{CONFIG}")));
    let mut journal = MemoryJournal::default();
    gate.start(Vec::new(), 1000, &mut journal).unwrap();
    gate.grant(grant(1).source("192.0.2.1").times(1000, 2000).into(), 1000, &mut journal);
    assert_eq!(gate.backend_mut().check(1001).unwrap(), Health::Intact);

    // An admin flushes the anchor's rules and tables.
    assert_eq!(fake.pfctl(&["-a", "spa", "-F", "rules"], "").0, 0);
    assert_eq!(fake.pfctl(&["-a", "spa", "-F", "Tables"], "").0, 0);
    let ev = gate.check(1002, &mut journal);
    assert!(
        matches!(ev.as_slice(), [Event::Tampered { detail }, Event::Repaired { live: 1 }] if detail == "anchor spa: the rule labelled spa-block-tcp-22 is gone"),
        "{ev:?}"
    );
    assert_eq!(fake.table("spa_tcp_22"), ["192.0.2.1"]);

    // A stranger's rule in our anchor is reported too (it would run with our authority).
    let text = fake.read()["anchors"]["spa"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().replace("port = ", "port "))
        .collect::<Vec<_>>();
    let mut with_extra = text.join("\n");
    with_extra.push_str("\npass in quick all\n");
    assert_eq!(fake.pfctl(&["-a", "spa", "-f", "-"], &with_extra), (0, String::new()));
    match gate.backend_mut().check(1003).unwrap() {
        Health::Damaged(d) => assert_eq!(d, "anchor spa: a rule spad did not make: pass in quick all"),
        h => panic!("{h:?}"),
    }

    // A translation rule gone, and a hook gone.
    gate.check(1004, &mut journal);
    assert_eq!(fake.pfctl(&["-a", "spa", "-F", "nat"], "").0, 0);
    assert!(
        matches!(gate.backend_mut().check(1005).unwrap(), Health::Damaged(d) if d.contains("the nat rule of <spa_snat_tcp_2222> is gone"))
    );
    gate.check(1006, &mut journal);
    fake.edit(|v| v["main_nat"] = json!(["nat-anchor \"spa\" all"]));
    assert!(
        matches!(gate.backend_mut().check(1007).unwrap(), Health::Damaged(d) if d.contains("rdr-anchor \"spa\""))
    );
}

#[test]
fn the_check_is_throttled_but_looks_after_a_failed_change() {
    let fake = Fake::new("freebsd");
    let mut b = fake.backend("check_interval_ms = 5000\nprotect = [\"tcp/22\"]");
    b.prepare(&[], 1000).unwrap();
    let before = b.exec_count();
    assert_eq!(b.check(1001).unwrap(), Health::Intact);
    assert_eq!(b.check(1004).unwrap(), Health::Intact);
    assert_eq!(b.exec_count(), before, "no look within the interval");
    assert_eq!(b.check(1005).unwrap(), Health::Intact);
    assert!(b.exec_count() > before, "a look once the interval passed");
    // A failed change makes the next check look at once.
    fake.edit(|v| v["fail_next"] = json!(1));
    let g: spa_backends::Grant = grant(1).into();
    let m = b.entries(&g).unwrap();
    let changes = [spa_backends::Change::Put {
        new: spa_backends::Held { entry: &m[0], holder: &g, until: 2000 },
        prior: None,
    }];
    assert!(b.apply(&changes, 1006).is_err());
    let before = b.exec_count();
    assert_eq!(b.check(1006).unwrap(), Health::Intact);
    assert!(b.exec_count() > before);
}

#[test]
fn without_the_hook_the_backend_refuses_to_start() {
    let fake = Fake::with(json!({"flavor": "freebsd", "main_rules": ["pass all"]}));
    let mut b = fake.backend("protect = [\"tcp/22\"]");
    let err = b.prepare(&[], 1000).unwrap_err().to_string();
    assert_eq!(err, "the main ruleset does not evaluate anchor \"spa\" (pf.conf needs: anchor \"spa\")");
    // Unless the admin says the hook is elsewhere (a wildcard we cannot see through).
    let mut b = fake.backend("protect = [\"tcp/22\"]\nrequire_hook = false");
    b.prepare(&[], 1000).unwrap();
    // A nested anchor is hooked by its parent's wildcard (macOS: com.apple/*).
    let fake = Fake::with(json!({"flavor": "freebsd", "main_rules": ["anchor \"com.apple/*\" all"]}));
    fake.backend("anchor = \"com.apple/spa\"").prepare(&[], 1000).unwrap();
    assert!(fake.calls()[0].starts_with("pfctl -a com.apple/spa -f -"));
}

#[test]
fn teardown_empties_the_anchor_and_can_run_twice() {
    for flavor in ["freebsd", "openbsd"] {
        let fake = Fake::new(flavor);
        let syntax = if flavor == "openbsd" { "syntax = \"openbsd\"\n" } else { "" };
        let mut gate = Gate::new(fake.backend(&format!("{syntax}{CONFIG}")));
        let mut journal = MemoryJournal::default();
        gate.start(Vec::new(), 1000, &mut journal).unwrap();
        gate.grant(grant(1).times(1000, 2000).into(), 1000, &mut journal);
        gate.teardown().unwrap();
        gate.teardown().unwrap();
        let v = fake.read();
        assert_eq!(v["anchors"]["spa"]["rules"], json!([]));
        assert_eq!(v["anchors"]["spa"]["tables"], json!({}));
        assert!(
            v["calls"].as_array().unwrap().iter().all(|c| c["status"] == 0),
            "{flavor}: {:?}",
            fake.calls()
        );
    }
}

/// The fake is only worth something if it refuses what pfctl refuses: each of these is a
/// mistake a renderer could make, and the fake must turn it into a failed load that changes
/// nothing.
#[test]
fn the_fake_refuses_malformed_input_like_pfctl() {
    let freebsd = Fake::new("freebsd");
    let openbsd = Fake::new("openbsd");
    let refused = |fake: &Fake, text: &str, why: &str| {
        let anchors = |v: Value| if v["anchors"].is_null() { json!({}) } else { v["anchors"].clone() };
        let before = anchors(fake.read());
        let (status, err) = fake.pfctl(&["-a", "spa", "-f", "-"], text);
        assert_eq!(status, 1, "accepted: {text}");
        assert!(err.contains(why), "{text}: {err}");
        assert_eq!(anchors(fake.read()), before, "a refused load changed something");
    };
    refused(&freebsd, "pass in quick from any to self port 22\n", "port only applies to tcp/udp");
    refused(
        &freebsd,
        "pass in quick proto udp from any to self port 53 flags S/SA\n",
        "flags only apply to tcp",
    );
    refused(
        &freebsd,
        "pass in quick proto tcp from <t> to any port 22\nrdr pass on em0 proto tcp from any to any port 1 -> 10.0.0.1 port 2\n",
        "Rules must be in order",
    );
    refused(
        &freebsd,
        "rdr pass on em0 inet proto tcp from any to (em0) port 1 -> fd00::1 port 2\n",
        "address family",
    );
    refused(&freebsd, "rdr pass on em0 inet proto tcp from any to (em0) port 1\n", "syntax error");
    refused(
        &freebsd,
        "pass in quick on em0 proto tcp from any to (em0) port 1 rdr-to 10.0.0.1\n",
        "syntax error",
    );
    refused(&freebsd, "table <spa_a_name_that_is_much_too_long_for_pf> persist\n", "too long");
    refused(&freebsd, "table <t> persist { 192.0.2.1/24 }\n", "Invalid argument");
    refused(&freebsd, "pass in quick proto tcp from any to any port 70000\n", "illegal port");
    refused(&freebsd, &format!("pass in all label \"{}\"\n", "x".repeat(64)), "label too long");
    refused(&freebsd, "pass in quick proto tcp from <spa_tcp_22 to any\n", "syntax error");
    refused(
        &openbsd,
        "rdr pass on em0 proto tcp from any to any port 1 -> 10.0.0.1 port 2\n",
        "syntax error",
    );
    refused(
        &openbsd,
        "pass out quick on em0 inet proto tcp from any to (em0) port 1 rdr-to 10.0.0.1 port 2\n",
        "inbound",
    );
    refused(
        &openbsd,
        "pass in quick on em1 inet proto tcp from any to 10.0.0.1 port 2 nat-to (em1)\n",
        "outbound",
    );
    // Options pfctl does not have, a table command without its table, an unknown modifier.
    assert_eq!(freebsd.pfctl(&["-Z"], "").0, 1);
    assert_eq!(freebsd.pfctl(&["-T", "add", "192.0.2.1"], "").0, 1);
    assert_eq!(freebsd.pfctl(&["-a", "spa", "-s", "bogus"], "").0, 1);
    assert_eq!(openbsd.pfctl(&["-a", "spa", "-s", "nat"], "").0, 1, "OpenBSD has no -s nat");
    assert_eq!(openbsd.pfctl(&["-a", "spa", "-F", "nat"], "").0, 1, "OpenBSD has no -F nat");
    assert_eq!(freebsd.pfctl(&["-a", "_spa", "-s", "rules"], "").0, 1);
    assert_eq!(freebsd.pfctl(&["-a", "spa", "-t", "t", "-T", "add", "not-an-address"], "").0, 1);
    assert_eq!(freebsd.pfctl(&["-a", "spa", "-t", "missing", "-T", "delete", "192.0.2.1"], "").0, 1);
    // And what it accepts behaves as documented: -T add creates a persistent table, a table
    // defined without a list keeps its addresses, an empty list clears it.
    assert_eq!(freebsd.pfctl(&["-a", "spa", "-t", "t", "-T", "add", "192.0.2.1"], "").0, 0);
    assert_eq!(freebsd.pfctl(&["-a", "spa", "-f", "-"], "table <t> persist\n").0, 0);
    assert_eq!(freebsd.table("t"), ["192.0.2.1"]);
    assert_eq!(freebsd.pfctl(&["-a", "spa", "-f", "-"], "table <t> persist { }\n").0, 0);
    assert_eq!(freebsd.table("t"), Vec::<String>::new());
}

/// `conf/freebsd/pf-spa.conf` and `conf/openbsd/pf-spa.conf`, loaded at boot, are what
/// `prepare` loads for `protect = ["tcp/22"]` with no grants, and pfctl (the fake) accepts them
/// on both systems.
#[test]
fn the_boot_anchors_are_what_prepare_loads() {
    let strip = |text: &str| -> Vec<String> {
        text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(str::to_owned).collect()
    };
    for (flavor, file) in [
        ("freebsd", include_str!("../../conf/freebsd/pf-spa.conf")),
        ("openbsd", include_str!("../../conf/openbsd/pf-spa.conf")),
    ] {
        let fake = Fake::new(flavor);
        assert_eq!(fake.pfctl(&["-a", "spa", "-f", "-"], file), (0, String::new()), "{flavor}");
        fake.clear_calls();
        let syntax = if flavor == "openbsd" { "syntax = \"openbsd\"\n" } else { "" };
        fake.backend(&format!("{syntax}protect = [\"tcp/22\"]")).prepare(&[], 1000).unwrap();
        let v = fake.read();
        let loaded = v["calls"][0]["stdin"].as_str().unwrap();
        assert_eq!(strip(loaded), strip(file), "{flavor}: the boot anchor differs from prepare's");
    }
}

//! Command messages end to end: a type-0 SPA message carries a shell command, which a running
//! `spad` (backend "none", in a lab's gateway namespace) runs with `/bin/sh -c` when the stanza
//! has `enable_cmd_exec`, as fwknopd does. The assertions read what an admin would: the files
//! the command made, the audit trail, and whether the processes it started are still there.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use spa_e2e::{GatewayLab, Netns};

mod support;
use support::Daemon;

/// The stanza that may run commands.
const CMD_KEY: &str = "command-stanza-encryption-key-32";
const CMD_HMAC: &str = "command-stanza-hmac-key-32-bytes";
/// The stanza that may not.
const PLAIN_KEY: &str = "plain-stanza-encryption-key-0032";
const PLAIN_HMAC: &str = "plain-stanza-hmac-key-0032-bytes";

/// How long an event may take to show up (the kill happens after 5 s).
const PATIENCE: Duration = Duration::from_secs(20);

fn config(dir: &Path) -> String {
    format!(
        r#"
[listen]
mode = "socket"
addresses = ["0.0.0.0:62201"]

[firewall]
backend = "none"

[replay]
state_dir = "{dir}/state"
max_packet_age = 120

[log]
audit = "{dir}/audit.jsonl"
max_rejects_per_second = 1000

[[access]]
name = "commands"
source = "10.201.1.0/24"
key = "{CMD_KEY}"
hmac_key = "{CMD_HMAC}"
enable_cmd_exec = true

[[access]]
name = "plain"
source = "10.201.1.0/24"
open_ports = ["tcp/22"]
key = "{PLAIN_KEY}"
hmac_key = "{PLAIN_HMAC}"
"#,
        dir = dir.display()
    )
}

fn start(gw: &Netns, dir: &Path) -> Daemon {
    Daemon::start(gw, dir, &config(dir))
}

fn wait_command(d: &Daemon, n: usize) -> Value {
    d.wait_nth_event(n, "command", |e| e["event"] == "command")
}

/// A command message from the lab's client, sealed with `key`/`hmac` by the engine.
fn command_packet(command: &str, key: &str, hmac: &str) -> Vec<u8> {
    let message = format!("{},{command}", GatewayLab::CLIENT4);
    support::seal(key, hmac, spa_engine::MessageType::Command, &message, 0)
}

fn send(lab: &GatewayLab, payload: Vec<u8>) {
    support::send_from(&lab.client, GatewayLab::addr(GatewayLab::GW4, 62201), payload);
}

/// Whether `pid` is a live process (a zombie waiting for its reaper counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X'))
        }
    }
}

fn read_pid(file: &Path) -> u32 {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.trim().parse().unwrap()
}

#[test]
fn a_command_message_runs_and_its_exit_status_is_audited() {
    let lab = GatewayLab::new("cm1");
    let dir = tempfile::tempdir().unwrap();
    let d = start(&lab.gw, dir.path());

    // It runs: the marker appears, written from `/` with only PATH in the environment.
    let marker = dir.path().join("marker");
    let cmd = format!("pwd > {m}; env | sort >> {m}", m = marker.display());
    send(&lab, command_packet(&cmd, CMD_KEY, CMD_HMAC));
    let e = wait_command(&d, 0);
    assert_eq!(e["detail"]["exit"], "0", "{e}");
    assert_eq!(e["detail"]["stanza"], "commands");
    assert_eq!(e["detail"]["allowed_source"], GatewayLab::CLIENT4);
    let written = std::fs::read_to_string(&marker).unwrap();
    let mut lines = written.lines();
    assert_eq!(lines.next(), Some("/"), "{written}");
    // sh itself adds PWD (and dash nothing else); the daemon's own variables are not there.
    let vars: Vec<&str> = lines.map(|l| l.split('=').next().unwrap_or(l)).collect();
    assert!(vars.contains(&"PATH"), "{written}");
    assert!(vars.iter().all(|v| ["PATH", "PWD", "SHLVL", "_", "OLDPWD"].contains(v)), "{written}");

    // A failing command: its exit code is recorded.
    send(&lab, command_packet("exit 7", CMD_KEY, CMD_HMAC));
    assert_eq!(wait_command(&d, 1)["detail"]["exit"], "7");

    // The same kind of message to a stanza without enable_cmd_exec is refused and runs nothing.
    let refused = dir.path().join("refused");
    send(&lab, command_packet(&format!("touch {}", refused.display()), PLAIN_KEY, PLAIN_HMAC));
    let r = d.wait_nth_event(0, "reject", |e| e["event"] == "reject");
    assert_eq!(r["reason"], "command_not_enabled", "{r}");
    assert_eq!(r["stanza"], "plain", "{r}");
    // Commands run in order on one worker: a later one finishing means the refused one never ran.
    send(&lab, command_packet("true", CMD_KEY, CMD_HMAC));
    assert_eq!(wait_command(&d, 2)["detail"]["exit"], "0");
    assert!(!refused.exists(), "a refused command ran");
    assert_eq!(d.events().iter().filter(|e| e["event"] == "command").count(), 3);
}

#[test]
fn a_command_past_the_limit_is_killed_with_its_children() {
    let lab = GatewayLab::new("cm2");
    let dir = tempfile::tempdir().unwrap();
    let d = start(&lab.gw, dir.path());

    // The shell puts a child in the background and waits itself; both run far past 5 s.
    let (child_pid, shell_pid) = (dir.path().join("child.pid"), dir.path().join("shell.pid"));
    let cmd =
        format!("echo $$ > {}; sleep 60 & echo $! > {}; sleep 60", shell_pid.display(), child_pid.display());
    send(&lab, command_packet(&cmd, CMD_KEY, CMD_HMAC));
    let e = wait_command(&d, 0);
    assert_eq!(e["detail"]["exit"], "timeout", "{e}");
    let (shell, child) = (read_pid(&shell_pid), read_pid(&child_pid));
    let start = Instant::now();
    while alive(shell) || alive(child) {
        assert!(
            start.elapsed() < PATIENCE,
            "still running after the limit: shell {shell} {}, background child {child} {}",
            alive(shell),
            alive(child)
        );
        thread::sleep(Duration::from_millis(20));
    }

    // The daemon carries on: the next command runs.
    let marker = dir.path().join("after");
    send(&lab, command_packet(&format!("touch {}", marker.display()), CMD_KEY, CMD_HMAC));
    assert_eq!(wait_command(&d, 1)["detail"]["exit"], "0");
    assert!(marker.exists());
}

//! Command messages end to end: a type-0 SPA message carries a shell command, which a running
//! `spad` (backend "none", in a lab's gateway namespace) runs with `/bin/sh -c` when the stanza
//! has `enable_cmd_exec`, as fwknopd does, as the stanza's `cmd_exec_user` if it has one, on
//! threads of its own (a slow command does not hold up grants). The assertions read what an
//! admin would: the files the command made, the audit trail, and whether the processes it
//! started are still there.

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

/// The stanza whose commands run as nobody.
const USER_KEY: &str = "nobody-stanza-encryption-key-032";
const USER_HMAC: &str = "nobody-stanza-hmac-key-0032-byte";

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

[[access]]
name = "as-nobody"
source = "10.201.1.0/24"
key = "{USER_KEY}"
hmac_key = "{USER_HMAC}"
enable_cmd_exec = true
cmd_exec_user = "nobody"
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
    // A refused message is refused before anything is queued; one sent after it has finished
    // (the audit line above was written first), so the refused one has had its chance to run.
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

/// The real fwknop client's `--server-cmd`, with the keys of a stanza.
fn fwknop_command(lab: &GatewayLab, home: &Path, command: &str, key: &str, hmac: &str) {
    let out = lab
        .client
        .cmd("fwknop")
        .env("HOME", home)
        .args(["-D", GatewayLab::GW4, "-a", GatewayLab::CLIENT4, "--server-cmd", command])
        .args(["--use-hmac", "--key-rijndael", key, "--key-hmac", hmac, "--no-save-args", "--no-rc-file"])
        .output()
        .unwrap();
    assert!(out.status.success(), "fwknop: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn fwknop_server_cmd_runs_as_the_stanzas_user_and_only_where_enabled() {
    let lab = GatewayLab::new("cm3");
    let dir = tempfile::tempdir().unwrap();
    // nobody may pass through the test directory and write into `out`.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let d = start(&lab.gw, dir.path());

    // The stanza with cmd_exec_user = "nobody": the command runs as nobody and nobody's group,
    // with no supplementary groups.
    let ids = out.join("ids");
    let cmd = format!("id -u > {f}; id -g >> {f}; id -G >> {f}", f = ids.display());
    fwknop_command(&lab, dir.path(), &cmd, USER_KEY, USER_HMAC);
    let e = wait_command(&d, 0);
    assert_eq!((&e["detail"]["exit"], &e["detail"]["user"]), (&"0".into(), &"nobody".into()), "{e}");
    assert_eq!(e["detail"]["stanza"], "as-nobody");
    let text = std::fs::read_to_string(&ids).unwrap();
    assert_eq!(text, "65534\n65534\n65534\n", "id -u, id -g, id -G");
    // The file belongs to nobody too.
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&ids).unwrap()), 65534);

    // Without cmd_exec_user: as the daemon (root).
    let root = out.join("root");
    fwknop_command(&lab, dir.path(), &format!("id -u > {}", root.display()), CMD_KEY, CMD_HMAC);
    assert_eq!(wait_command(&d, 1)["detail"]["exit"], "0");
    assert_eq!(std::fs::read_to_string(&root).unwrap(), "0\n");

    // A stanza without enable_cmd_exec refuses the same message from the same client.
    let refused = out.join("refused");
    fwknop_command(&lab, dir.path(), &format!("touch {}", refused.display()), PLAIN_KEY, PLAIN_HMAC);
    let r = d.wait_event("reject", |e| e["event"] == "reject");
    assert_eq!((&r["reason"], &r["stanza"]), (&"command_not_enabled".into(), &"plain".into()), "{r}");
    fwknop_command(&lab, dir.path(), "true", CMD_KEY, CMD_HMAC);
    wait_command(&d, 2);
    assert!(!refused.exists(), "a refused command ran");
}

/// Commands run on threads of their own behind a bounded queue: while they run (here: until
/// the test lets them go, at most their 5 s), an access knock is granted at once, and commands
/// beyond the queue are refused and audited, not queued.
#[test]
fn slow_commands_neither_delay_grants_nor_queue_without_bound() {
    let lab = GatewayLab::new("cm4");
    let dir = tempfile::tempdir().unwrap();
    let d = start(&lab.gw, dir.path());
    let release = dir.path().join("release");
    let wait = format!("while [ ! -e {} ]; do sleep 0.05; done", release.display());
    // Two threads, a queue of 16: 24 blocked commands are more than it takes.
    for _ in 0..24 {
        send(&lab, command_packet(&wait, CMD_KEY, CMD_HMAC));
    }
    let busy = d.wait_event("command_busy", |e| e["event"] == "reject" && e["reason"] == "command_busy");
    assert_eq!(busy["stanza"], "commands");
    // An access knock now is granted while every command still waits for the release.
    send(&lab, support::packet(PLAIN_KEY, PLAIN_HMAC, GatewayLab::CLIENT4, "tcp/22", 0));
    d.wait_event("grant", |e| e["event"] == "grant");
    assert_eq!(d.count(|e| e["event"] == "command"), 0, "the grant waited for a command");
    std::fs::write(&release, "").unwrap();
    // Those that were taken all run to their end; the rest were refused.
    let start = Instant::now();
    loop {
        let ran = d.count(|e| e["event"] == "command");
        let refused = d.count(|e| e["event"] == "reject" && e["reason"] == "command_busy");
        if ran + refused == 24 {
            assert!((2..=18).contains(&ran), "{ran} ran, {refused} refused");
            break;
        }
        assert!(start.elapsed() < PATIENCE, "{ran} ran, {refused} refused: {:#?}", d.events());
        thread::sleep(Duration::from_millis(50));
    }
    assert!(d.events().iter().filter(|e| e["event"] == "command").all(|e| e["detail"]["exit"] == "0"));
}

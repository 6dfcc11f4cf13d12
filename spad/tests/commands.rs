//! Command messages end to end: a type-0 SPA message carries a shell command, which a running
//! `spad` (backend "none", in a lab's gateway namespace) runs with `/bin/sh -c` when the stanza
//! has `enable_cmd_exec`, as fwknopd does. The assertions read what an admin would: the files
//! the command made, the audit trail, and whether the processes it started are still there.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use spa_e2e::{GatewayLab, Netns};

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

/// A running spad inside the lab's gateway.
struct Daemon {
    child: Child,
    audit: std::path::PathBuf,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(gw: &Netns, dir: &Path) -> Self {
        let path = dir.join("spad.toml");
        std::fs::write(&path, config(dir)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut child = gw
            .cmd(env!("CARGO_BIN_EXE_spad"))
            .args(["--config", path.to_str().unwrap()])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start spad");
        let log: Arc<Mutex<String>> = Arc::default();
        let (l, stderr) = (log.clone(), child.stderr.take().unwrap());
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let d = Self { child, audit: dir.join("audit.jsonl"), log };
        let start = Instant::now();
        while !d.log.lock().unwrap().contains("spad ready") {
            assert!(start.elapsed() < PATIENCE, "spad did not start:\n{}", d.log.lock().unwrap());
            thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).expect("audit lines are JSON")).collect()
    }

    /// Waits for the `n`-th (0-based) event matching `pred`.
    fn wait_event(&self, n: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(e) = self.events().into_iter().filter(&pred).nth(n) {
                return e;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "no {what} event; audit:\n{:#?}\nlog:\n{}",
                self.events(),
                self.log.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_command(&self, n: usize) -> Value {
        self.wait_event(n, "command", |e| e["event"] == "command")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command message from the lab's client, sealed with `key`/`hmac` by the engine.
fn command_packet(command: &str, key: &str, hmac: &str) -> Vec<u8> {
    use spa_engine::{DigestType, EncryptionKey, EncryptionMode, HmacKey, MessageType, SpaMessage, packet};
    struct Os;
    impl spa_engine::Entropy for Os {
        fn fill(&mut self, buf: &mut [u8]) {
            getrandom::fill(buf).unwrap();
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let msg = SpaMessage {
        random: spa_engine::random_value(&mut Os),
        username: "tester".into(),
        timestamp: now,
        version: "3.0.0".into(),
        message_type: MessageType::Command,
        message: format!("{},{command}", GatewayLab::CLIENT4),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let key = EncryptionKey::new(key.as_bytes().to_vec()).unwrap();
    let hkey = HmacKey::new(hmac.as_bytes().to_vec()).unwrap();
    let opts = packet::SealOptions {
        key: &key,
        mode: EncryptionMode::Cbc,
        digest: DigestType::Sha256,
        hmac: Some((&hkey, DigestType::Sha256)),
    };
    packet::seal(&msg, &opts, &mut Os).unwrap().into_bytes()
}

fn send(lab: &GatewayLab, payload: Vec<u8>) {
    let to: SocketAddr = GatewayLab::addr(GatewayLab::GW4, 62201);
    lab.client.run_in(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(&payload, to).unwrap();
    });
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
    let d = Daemon::start(&lab.gw, dir.path());

    // It runs: the marker appears, written from `/` with only PATH in the environment.
    let marker = dir.path().join("marker");
    let cmd = format!("pwd > {m}; env | sort >> {m}", m = marker.display());
    send(&lab, command_packet(&cmd, CMD_KEY, CMD_HMAC));
    let e = d.wait_command(0);
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
    assert_eq!(d.wait_command(1)["detail"]["exit"], "7");

    // The same kind of message to a stanza without enable_cmd_exec is refused and runs nothing.
    let refused = dir.path().join("refused");
    send(&lab, command_packet(&format!("touch {}", refused.display()), PLAIN_KEY, PLAIN_HMAC));
    let r = d.wait_event(0, "reject", |e| e["event"] == "reject");
    assert_eq!(r["reason"], "command_not_enabled", "{r}");
    assert_eq!(r["stanza"], "plain", "{r}");
    // Commands run in order on one worker: a later one finishing means the refused one never ran.
    send(&lab, command_packet("true", CMD_KEY, CMD_HMAC));
    assert_eq!(d.wait_command(2)["detail"]["exit"], "0");
    assert!(!refused.exists(), "a refused command ran");
    assert_eq!(d.events().iter().filter(|e| e["event"] == "command").count(), 3);
}

#[test]
fn a_command_past_the_limit_is_killed_with_its_children() {
    let lab = GatewayLab::new("cm2");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&lab.gw, dir.path());

    // The shell puts a child in the background and waits itself; both run far past 5 s.
    let (child_pid, shell_pid) = (dir.path().join("child.pid"), dir.path().join("shell.pid"));
    let cmd =
        format!("echo $$ > {}; sleep 60 & echo $! > {}; sleep 60", shell_pid.display(), child_pid.display());
    send(&lab, command_packet(&cmd, CMD_KEY, CMD_HMAC));
    let e = d.wait_command(0);
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
    assert_eq!(d.wait_command(1)["detail"]["exit"], "0");
    assert!(marker.exists());
}

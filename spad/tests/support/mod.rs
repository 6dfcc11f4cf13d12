//! What the daemon's end-to-end tests share: a running spad in a namespace with its log and
//! audit trail, configuration files written as spad requires them, packets made with the
//! engine, and datagrams sent from inside the lab.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use spa_e2e::Netns;

/// Writes a configuration file the way spad requires of files holding keys: mode 0600, set
/// explicitly whatever the umask.
pub fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// A running spad inside the lab's gateway.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Writes `config_text` to `dir/spad.toml` (mode 0600) and starts spad on it in `gw`.
    pub fn start(gw: &Netns, dir: &Path, config_text: &str) -> Self {
        write_private(&dir.join("spad.toml"), config_text);
        Self::start_written(gw, dir)
    }

    /// Starts spad in `gw` on the configuration already written in `dir/spad.toml`.
    pub fn start_written(gw: &Netns, dir: &Path) -> Self {
        let mut d =
            Self { child: None, dir: dir.to_owned(), config: dir.join("spad.toml"), log: Arc::default() };
        d.spawn(gw);
        d
    }

    /// Starts (or restarts) spad; the log then holds this run's lines only.
    pub fn spawn(&mut self, gw: &Netns) {
        own_control_socket(&self.config, &self.dir);
        self.log.lock().unwrap().clear();
        let mut child = gw
            .cmd(env!("CARGO_BIN_EXE_spad"))
            .args(["--config", self.config.to_str().unwrap()])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start spad");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        self.child = Some(child);
        self.wait_log("spad ready");
    }

    pub fn wait_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log.lock().unwrap().contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {needle:?} in spad log:\n{}",
                self.log.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.join("audit.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).expect("audit lines are JSON")).collect()
    }

    /// Waits for the `n`-th (0-based) event matching `pred`.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(e) = self.events().into_iter().find(&pred) {
                return e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {what} event; audit:\n{:#?}\nlog:\n{}",
                self.events(),
                self.log.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the `n`-th (0-based) event matching `pred`.
    pub fn wait_nth_event(&self, n: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(e) = self.events().into_iter().filter(&pred).nth(n) {
                return e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {what} event number {n}; audit:\n{:#?}\nlog:\n{}",
                self.events(),
                self.log.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What this run has logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `spad list --json`, one value per grant.
    pub fn listed(&self) -> Vec<Value> {
        let out = self.spad(&["list", "--json"]);
        assert!(out.status.success(), "spad list: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.events().iter().filter(|e| pred(e)).count()
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        spa_e2e::run(Command::new("kill").args([&format!("-{sig}"), &pid]));
    }

    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn kill9(&mut self) {
        self.signal("KILL");
        self.child.take().unwrap().wait().unwrap();
    }

    pub fn stop(&mut self) {
        self.signal("TERM");
        let st = self.child.take().unwrap().wait().unwrap();
        assert!(st.success(), "spad exited with {st}");
    }

    /// `spad <args>` on this configuration, outside any namespace.
    pub fn spad(&self, args: &[&str]) -> Output {
        spad_cmd(&self.config, args)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Gives a test's daemon a control socket in its own directory, unless its configuration names
/// one: the default (`/run/spad/control.sock`) is the host's, and tests run side by side. The
/// table is appended (the file keeps its mode).
pub fn own_control_socket(config: &Path, dir: &Path) {
    let text = std::fs::read_to_string(config).unwrap_or_default();
    if text.contains("[control]") {
        return;
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(config).unwrap();
    let table = format!("\n[control]\nsocket = \"{}\"\n", dir.join("control.sock").display());
    std::io::Write::write_all(&mut f, table.as_bytes()).unwrap();
}

/// `spad <args> --config <config>`, outside any namespace.
pub fn spad_cmd(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spad"))
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

/// Whether an audit event is of kind `event`.
pub fn is(e: &Value, event: &str) -> bool {
    e["event"] == event
}

/// Sends one datagram from inside `ns`.
pub fn send_from(ns: &Netns, to: SocketAddr, payload: Vec<u8>) {
    ns.run_in(move || {
        let bind: SocketAddr =
            if to.is_ipv6() { "[::]:0".parse().unwrap() } else { "0.0.0.0:0".parse().unwrap() };
        let s = UdpSocket::bind(bind).unwrap();
        s.send_to(&payload, to).unwrap();
    });
}

/// An access packet made with the engine, with the given keys (passphrases), allow address,
/// ports and timestamp offset.
pub fn packet(key: &str, hmac: &str, src_allow: &str, port: &str, ts_offset: i64) -> Vec<u8> {
    seal(key, hmac, spa_engine::MessageType::Access, &format!("{src_allow},{port}"), ts_offset)
}

/// A packet of any message type made with the engine (AES-CBC, SHA-256, HMAC-SHA256).
pub fn seal(
    key: &str,
    hmac: &str,
    message_type: spa_engine::MessageType,
    message: &str,
    ts_offset: i64,
) -> Vec<u8> {
    use spa_engine::{DigestType, EncryptionKey, EncryptionMode, HmacKey, SpaMessage, packet};
    struct Os;
    impl spa_engine::Entropy for Os {
        fn fill(&mut self, buf: &mut [u8]) {
            getrandom::fill(buf).unwrap();
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let msg = SpaMessage {
        random: spa_engine::random_value(&mut Os),
        username: "tester".into(),
        timestamp: (now + ts_offset) as u64,
        version: "3.0.0".into(),
        message_type,
        message: message.to_owned(),
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

/// Our own client, built by the same `cargo test --workspace` run, knocking our daemon.
pub fn spa_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_spad")).with_file_name("spa");
    assert!(p.exists(), "{} is missing: run the suite with `cargo test --workspace`", p.display());
    p
}

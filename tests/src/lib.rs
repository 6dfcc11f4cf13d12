//! A tiny network lab for end-to-end tests: network namespaces joined by veth pairs, made by
//! the test and removed when it ends (also when it panics).
//!
//! Traffic only ever goes to addresses inside namespaces a test made. Each veth end is created
//! directly inside its namespace, so interface names never clash on the host, and namespace
//! names carry the process id and a counter, so tests run in parallel.
//!
//! The standard [`GatewayLab`] has four hosts: `client` and `attacker` outside, `gw` in the
//! middle (where the daemon and the firewall run) and `internal` behind it.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics with a clear message unless running as root with `ip` available: these tests are
/// real, and a silent skip would pass without testing anything.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "end-to-end tests need root (network namespaces); run scripts/test as root");
}

/// Runs a command, panicking with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted (with everything in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>` with loopback up.
    pub fn new(prefix: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // No duplicate address detection: addresses (link-local ones too) work at once, so
        // neighbour discovery does not stall the first second of every test.
        for scope in ["all", "default"] {
            ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0");
        }
        ns
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `ip <args>` inside the namespace, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a shell snippet inside the namespace, panicking on failure; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = run(self.cmd("sh").args(["-c", script]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell snippet and returns whether it succeeded (no panic).
    pub fn sh_ok(&self, script: &str) -> bool {
        self.cmd("sh")
            .args(["-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        run(self.cmd("sysctl").args(["-qw", &format!("{key}={value}")]));
    }

    /// Whether a TCP connection to `addr` succeeds from inside this namespace within `timeout`
    /// (a single attempt; a firewall drop shows as a timeout).
    pub fn tcp_connects(&self, addr: SocketAddr, timeout: Duration) -> bool {
        let secs = timeout.as_secs().max(1).to_string();
        let host = addr.ip().to_string();
        self.cmd("nc")
            .args(["-z", "-n", "-w", &secs, &host, &addr.port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Keeps trying to connect until it works or `deadline` passes; returns the time it took.
    pub fn wait_tcp(&self, addr: SocketAddr, deadline: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if self.tcp_connects(addr, Duration::from_secs(1)) {
                return Some(start.elapsed());
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Starts a TCP server on `port` (all addresses) that answers each connection with
    /// `banner` and keeps it open until the client closes. Killed on drop.
    pub fn tcp_server(&self, port: u16, banner: &str) -> Background {
        let child = self
            .cmd("socat")
            .args([
                &format!("TCP6-LISTEN:{port},reuseaddr,fork,ipv6only=0"),
                &format!("SYSTEM:echo {banner}; cat >/dev/null"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        let bg = Background(Some(child));
        // Wait until it listens.
        let start = Instant::now();
        while !self.sh_ok(&format!("ss -Hltn 'sport = :{port}' | grep -q LISTEN")) {
            assert!(start.elapsed() < Duration::from_secs(5), "tcp server on {port} did not start");
            thread::sleep(Duration::from_millis(20));
        }
        bg
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result: for
    /// sockets opened from Rust inside the lab (flood generators, crafted packets).
    pub fn run_in<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/var/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid namespace fd affects only this (new) thread.
            let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns into {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Spawns `cmd` (built with [`Netns::cmd`]) in the background, killed on drop.
    pub fn spawn(&self, cmd: &mut Command) -> Background {
        Background(Some(cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"))))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs inside, then delete the namespace.
        let _ = Command::new("ip").args(["netns", "pids", &self.name]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Background(pub Option<Child>);

impl Background {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Takes the child out, so it is not killed on drop.
    pub fn take(&mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Joins `a` and `b` with a veth pair (`a_if` in `a`, `b_if` in `b`), assigns the addresses
/// (CIDR notation, IPv4 or IPv6) and brings both ends up.
pub fn link(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) {
    run(Command::new("ip").args([
        "link",
        "add",
        "name",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]));
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            let mut args = vec!["addr", "add", addr, "dev", ifname];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args);
        }
        ns.ip(&["link", "set", ifname, "up"]);
    }
}

/// The standard four-host lab.
///
/// ```text
/// client  10.201.1.2  fd00:201:1::2 ─┐
///                                    ├─ gw (10.201.1.1 / 10.201.3.1 / 10.201.2.1; fd00:201:{1,3,2}::1)
/// attacker 10.201.3.2 fd00:201:3::2 ─┘        │
///                                      internal 10.201.2.2 fd00:201:2::2
/// ```
/// Forwarding is on in `gw`; every host routes through it.
#[derive(Debug)]
pub struct GatewayLab {
    /// The knocking client.
    pub client: Netns,
    /// A host without keys.
    pub attacker: Netns,
    /// The gateway: daemon and firewall.
    pub gw: Netns,
    /// A host behind the gateway (NAT target).
    pub internal: Netns,
}

impl GatewayLab {
    /// Client address (IPv4).
    pub const CLIENT4: &'static str = "10.201.1.2";
    /// Client address (IPv6).
    pub const CLIENT6: &'static str = "fd00:201:1::2";
    /// Attacker address (IPv4).
    pub const ATTACKER4: &'static str = "10.201.3.2";
    /// Attacker address (IPv6).
    pub const ATTACKER6: &'static str = "fd00:201:3::2";
    /// Gateway address on the client side (IPv4).
    pub const GW4: &'static str = "10.201.1.1";
    /// Gateway address on the client side (IPv6).
    pub const GW6: &'static str = "fd00:201:1::1";
    /// Gateway address on the attacker side (IPv4).
    pub const GW_ATTACKER4: &'static str = "10.201.3.1";
    /// Gateway address on the attacker side (IPv6).
    pub const GW_ATTACKER6: &'static str = "fd00:201:3::1";
    /// Gateway address on the internal side (IPv4).
    pub const GW_INTERNAL4: &'static str = "10.201.2.1";
    /// Internal host address (IPv4).
    pub const INTERNAL4: &'static str = "10.201.2.2";
    /// Internal host address (IPv6).
    pub const INTERNAL6: &'static str = "fd00:201:2::2";

    /// Builds the lab; `prefix` names the namespaces (keep it short).
    pub fn new(prefix: &str) -> Self {
        require_root();
        let client = Netns::new(&format!("{prefix}c"));
        let attacker = Netns::new(&format!("{prefix}a"));
        let gw = Netns::new(&format!("{prefix}g"));
        let internal = Netns::new(&format!("{prefix}i"));
        link(
            &client,
            "eth0",
            &["10.201.1.2/24", "fd00:201:1::2/64"],
            &gw,
            "c0",
            &["10.201.1.1/24", "fd00:201:1::1/64"],
        );
        link(
            &attacker,
            "eth0",
            &["10.201.3.2/24", "fd00:201:3::2/64"],
            &gw,
            "a0",
            &["10.201.3.1/24", "fd00:201:3::1/64"],
        );
        link(
            &internal,
            "eth0",
            &["10.201.2.2/24", "fd00:201:2::2/64"],
            &gw,
            "i0",
            &["10.201.2.1/24", "fd00:201:2::1/64"],
        );
        for (ns, v4, v6) in [
            (&client, "10.201.1.1", "fd00:201:1::1"),
            (&attacker, "10.201.3.1", "fd00:201:3::1"),
            (&internal, "10.201.2.1", "fd00:201:2::1"),
        ] {
            ns.ip(&["route", "add", "default", "via", v4]);
            ns.ip(&["-6", "route", "add", "default", "via", v6]);
        }
        gw.sysctl("net.ipv4.ip_forward", "1");
        gw.sysctl("net.ipv6.conf.all.forwarding", "1");
        Self { client, attacker, gw, internal }
    }

    /// A socket address from one of the address constants and a port.
    pub fn addr(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse::<IpAddr>().expect("lab address"), port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_hosts_reach_each_other_and_are_removed() {
        let names;
        {
            let lab = GatewayLab::new("nl");
            let _srv = lab.internal.tcp_server(7001, "hi");
            assert!(
                lab.client
                    .tcp_connects(GatewayLab::addr(GatewayLab::INTERNAL4, 7001), Duration::from_secs(2))
            );
            assert!(
                lab.attacker
                    .tcp_connects(GatewayLab::addr(GatewayLab::INTERNAL6, 7001), Duration::from_secs(2))
            );
            assert!(
                !lab.client
                    .tcp_connects(GatewayLab::addr(GatewayLab::INTERNAL4, 7002), Duration::from_secs(1))
            );
            names = [lab.client.name().to_owned(), lab.gw.name().to_owned()];
        }
        let list = String::from_utf8(run(Command::new("ip").args(["netns", "list"])).stdout).unwrap();
        for n in names {
            assert!(!list.contains(&n), "{n} left behind");
        }
    }
}

/// A throw-away GnuPG home (a temporary directory) with RSA keys made by `gpg --batch
/// --quick-gen-key`, for the tests of fwknop's GPG mode. Its `gpg-agent` is stopped on drop.
pub struct Gnupg {
    home: std::path::PathBuf,
}

/// One key made by [`Gnupg::rsa_key`].
#[derive(Clone, Debug)]
pub struct GpgKey {
    /// The primary key's fingerprint (40 hex digits).
    pub fingerprint: String,
    /// fwknop's short id: the fingerprint's last 8 hex digits.
    pub short_id: String,
}

impl Gnupg {
    /// A new home under the system's temporary directory (short: GnuPG puts its agent's
    /// socket there, and socket paths are limited to about 100 bytes).
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let home = std::env::temp_dir().join(format!("spa-gpg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Self { home }
    }

    /// The home directory (`--gpg-home-dir`, `GPG_HOME_DIR`).
    pub fn home(&self) -> &std::path::Path {
        &self.home
    }

    /// `gpg --homedir HOME --batch --pinentry-mode loopback ARGS`, which must succeed.
    pub fn gpg(&self, args: &[&str]) -> Output {
        run(Command::new("gpg")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--pinentry-mode", "loopback"])
            .args(args)
            .stdin(Stdio::null()))
    }

    /// An RSA-2048 key for `uid`: a primary key that certifies and signs, and an encryption
    /// subkey, as GnuPG makes them by default, protected by `passphrase` (empty: none).
    pub fn rsa_key(&self, uid: &str, passphrase: &str) -> GpgKey {
        self.gpg(&["--passphrase", passphrase, "--quick-gen-key", uid, "rsa2048", "cert,sign", "never"]);
        let out = self.gpg(&["--with-colons", "--list-keys", uid]);
        let text = String::from_utf8_lossy(&out.stdout);
        let fingerprint = text
            .lines()
            .find_map(|l| l.strip_prefix("fpr:").map(|r| r.trim_matches(':').to_owned()))
            .expect("fingerprint of the new key");
        self.gpg(&["--passphrase", passphrase, "--quick-add-key", &fingerprint, "rsa2048", "encr", "never"]);
        let short_id = fingerprint[fingerprint.len() - 8..].to_owned();
        GpgKey { fingerprint, short_id }
    }

    /// `gpg --export --armor` of `keys` into `path` (mode 0600).
    pub fn export_public(&self, keys: &[&GpgKey], path: &std::path::Path) {
        let mut args = vec!["--armor", "--export"];
        args.extend(keys.iter().map(|k| k.fingerprint.as_str()));
        let out = self.gpg(&args);
        write_private(path, &out.stdout);
    }

    /// `gpg --export-secret-keys --armor` of `key` into `path` (mode 0600).
    pub fn export_secret(&self, key: &GpgKey, passphrase: &str, path: &std::path::Path) {
        let out =
            self.gpg(&["--passphrase", passphrase, "--armor", "--export-secret-keys", &key.fingerprint]);
        write_private(path, &out.stdout);
    }
}

impl Default for Gnupg {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Gnupg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "gpg-agent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Writes `bytes` with mode 0600, whatever the umask (fwknop refuses looser key files).
pub fn write_private(path: &std::path::Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// The real `fwknopd` (Debian `fwknop-server`) in a namespace, with its config, access file,
/// digest cache and log in a temporary directory of its own: the peer the client tests knock.
pub struct Fwknopd {
    _proc: Background,
    dir: tempfile::TempDir,
}

impl Fwknopd {
    /// Starts fwknopd in `ns` with `conf` (fwknopd.conf lines such as `PCAP_INTF c0;`; the
    /// run directory, pid file and digest cache are added) and `access_conf`, and waits (safety
    /// limit 20 s) until it sniffs.
    pub fn start(ns: &Netns, conf: &str, access_conf: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let conf = format!(
            "{conf}FWKNOP_RUN_DIR {d};\nFWKNOP_PID_FILE {d}/fwknopd.pid;\nDIGEST_FILE {d}/digest.cache;\n"
        );
        write_private(&dir.path().join("fwknopd.conf"), conf.as_bytes());
        write_private(&dir.path().join("access.conf"), access_conf.as_bytes());
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let mut cmd = ns.cmd("fwknopd");
        cmd.args(["-f", "-v", "-c", &format!("{d}/fwknopd.conf"), "-a", &format!("{d}/access.conf")])
            .args(["-d", &format!("{d}/digest.cache"), "-p", &format!("{d}/fwknopd.pid")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let proc = ns.spawn(&mut cmd);
        let me = Self { _proc: proc, dir };
        me.wait_log("Starting fwknopd main event loop");
        me
    }

    /// Everything fwknopd logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path().join("log")).unwrap_or_default()).into_owned()
    }

    /// Waits (safety limit 20 s) for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {needle:?} in fwknopd's log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The interesting lines of fwknopd's log (the last 30), for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("SPA") || l.contains("stanza") || l.contains("rror") || l.contains("Added")
            })
            .collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

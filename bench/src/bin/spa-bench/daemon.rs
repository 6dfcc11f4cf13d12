//! The daemons under test: configuration, start, readiness, and the counters read from their
//! own logs (spad's audit trail, fwknopd's foreground log).

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use spa_bench::knock::Knocker;
use spa_e2e::{Background, Netns};

use crate::lab::{BenchLab, PROTECTED_PORT, SPA_PORT};

/// Which daemon, and how it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// spad with bound UDP sockets.
    SpadSocket,
    /// spad with passive AF_PACKET capture.
    SpadCapture,
    /// Debian's fwknopd (pcap, iptables).
    Fwknopd,
}

impl Kind {
    /// Every kind, in table order.
    pub(crate) const ALL: [Kind; 3] = [Kind::SpadSocket, Kind::SpadCapture, Kind::Fwknopd];

    /// Command-line and table name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::SpadSocket => "spad-socket",
            Kind::SpadCapture => "spad-capture",
            Kind::Fwknopd => "fwknopd",
        }
    }

    /// Table column heading.
    pub(crate) fn heading(self) -> &'static str {
        match self {
            Kind::SpadSocket => "spad (socket)",
            Kind::SpadCapture => "spad (capture)",
            Kind::Fwknopd => "fwknopd 2.6.10",
        }
    }

    pub(crate) fn is_spad(self) -> bool {
        self != Kind::Fwknopd
    }
}

/// Paths of the programs used.
#[derive(Clone, Debug)]
pub(crate) struct Programs {
    /// The spad binary.
    pub(crate) spad: PathBuf,
    /// The spa-flood binary.
    pub(crate) flood: PathBuf,
    /// The fwknopd binary.
    pub(crate) fwknopd: String,
    /// spad's firewall backend (`nft` for real runs).
    pub(crate) spad_backend: String,
    /// Where to keep the end of each daemon's log.
    pub(crate) logs: Option<PathBuf>,
}

/// What a daemon has done so far, from its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// New grants (spad `grant`, fwknopd "Added access rule").
    pub(crate) grants: u64,
    /// Re-knocks that extended a grant (spad only).
    pub(crate) extends: u64,
    /// Packets refused as replays.
    pub(crate) replays: u64,
    /// Every other refused packet (junk).
    pub(crate) junk: u64,
    /// Of those, packets refused as over a per-source budget (spad's `rate_limited`).
    pub(crate) limited: u64,
}

impl Counts {
    /// Counts `n` rejects of spad's `reason`.
    fn add_reject(&mut self, reason: &str, n: u64) {
        if reason == "replay" {
            self.replays += n;
        } else {
            self.junk += n;
            if reason == "rate_limited" {
                self.limited += n;
            }
        }
    }
}

/// Follows a growing log file.
struct Follower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Follower {
    fn new(path: PathBuf) -> Self {
        Self { path, offset: 0, partial: Vec::new() }
    }

    /// Complete lines written since the last call.
    fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else { return Vec::new() };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else { return Vec::new() };
        let rest = self.partial.split_off(end + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        String::from_utf8_lossy(&done).lines().map(str::to_owned).collect()
    }
}

/// A daemon running in the lab's gateway, killed on drop.
pub(crate) struct Daemon {
    /// Which one.
    pub(crate) kind: Kind,
    proc: Background,
    _dir: tempfile::TempDir,
    log: PathBuf,
    follower: Follower,
    counts: Counts,
    markers: u64,
    keep_log: Option<PathBuf>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Stop it first, so the log is complete.
        if let Some(mut c) = self.proc.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(dest) = &self.keep_log {
            let _ = std::fs::copy(&self.log, dest);
        }
    }
}

/// Writes a file that holds keys: created with mode 0600 (never readable by others, not even
/// for a moment), and both daemons refuse or warn about key files others can read.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // The mode given at creation is masked by the umask, which can only take bits away; set it
    // exactly anyway, so the file is 0600 whatever the umask.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Runs a command inside `ns`, failing with its stderr.
pub(crate) fn ns_run(ns: &Netns, program: &str, args: &[&str]) -> Result<String> {
    let out = ns.cmd(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Daemon {
    /// Configures and starts `kind` in the gateway of `lab`; returns once it is ready.
    pub(crate) fn start(
        kind: Kind,
        label: &str,
        lab: &BenchLab,
        progs: &Programs,
        knocker: &Knocker,
    ) -> Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("spa-bench-").tempdir().context("tempdir")?;
        let d = dir.path().to_path_buf();
        let gw = &lab.lab.gw;
        let (mut cmd, log, follow) = if kind.is_spad() {
            // spad's shipped defaults apart from what the lab needs (listed, with the reasons,
            // in the report's method): capture needs its interfaces named; the firewall must
            // protect something; state and audit go to this run's own directory; the grants
            // outlive the longest phase. `[limits]` stays at its defaults.
            let listen = if kind == Kind::SpadCapture {
                "mode = \"capture\"\ninterfaces = [\"c0\", \"a0\"]\n".to_owned()
            } else {
                "mode = \"socket\"\n".to_owned()
            };
            // In capture mode nothing listens on the SPA port, so it is dropped like the
            // protected port (as conf/spad.toml advises); otherwise the gateway would answer
            // every flood packet with an ICMP port-unreachable.
            let protect = if kind == Kind::SpadCapture {
                format!("[\"tcp/{PROTECTED_PORT}\", \"udp/{SPA_PORT}\"]")
            } else {
                format!("[\"tcp/{PROTECTED_PORT}\"]")
            };
            let firewall = match progs.spad_backend.as_str() {
                "nft" => format!("backend = \"nft\"\n\n[firewall.nft]\nprotect = {protect}"),
                other => format!("backend = \"{other}\""),
            };
            let conf = format!(
                "[listen]\n{listen}\n[firewall]\n{firewall}\n\n\
                 [replay]\nstate_dir = \"{state}\"\n\n\
                 [log]\naudit = \"{audit}\"\n\n\
                 [[access]]\nname = \"bench\"\nsource = \"any\"\nopen_ports = [\"tcp/{PROTECTED_PORT}\"]\n\
                 key_base64 = \"{key}\"\nhmac_key_base64 = \"{hmac}\"\n\
                 fw_access_timeout = 3600\n",
                state = d.join("state").display(),
                audit = d.join("audit.jsonl").display(),
                key = knocker.key_base64(),
                hmac = knocker.hmac_base64(),
            );
            write_private(&d.join("spad.toml"), &conf)?;
            let log = d.join("spad.log");
            let mut cmd = gw.cmd(&progs.spad.display().to_string());
            cmd.arg("--config").arg(d.join("spad.toml"));
            (cmd, log, d.join("audit.jsonl"))
        } else {
            // The lab's needs only: capture on every interface (the attacker arrives on
            // another link than the client), and our own run directory.
            let conf = format!(
                "PCAP_INTF any;\nFWKNOP_RUN_DIR {dd};\nFWKNOP_PID_FILE {dd}/fwknopd.pid;\nDIGEST_FILE {dd}/digest.cache;\n",
                dd = d.display()
            );
            let mut access = String::new();
            let _ = write!(
                access,
                "SOURCE ANY\nOPEN_PORTS tcp/{PROTECTED_PORT}\nKEY_BASE64 {}\nHMAC_KEY_BASE64 {}\n\
                 FW_ACCESS_TIMEOUT 3600\nMAX_FW_TIMEOUT 3600\n",
                knocker.key_base64(),
                knocker.hmac_base64()
            );
            write_private(&d.join("fwknopd.conf"), &conf)?;
            write_private(&d.join("access.conf"), &access)?;
            // The port is really closed before a knock: DROP after fwknopd's jump rule (which
            // fwknopd inserts at position 1). The SPA port is dropped too, as for spad in
            // capture mode: pcap sees packets before netfilter.
            for (proto, port) in [("tcp", PROTECTED_PORT), ("udp", SPA_PORT)] {
                ns_run(
                    gw,
                    "iptables",
                    &["-A", "INPUT", "-p", proto, "--dport", &port.to_string(), "-j", "DROP"],
                )?;
            }
            let mut cmd = gw.cmd(&progs.fwknopd);
            cmd.args(["-f", "-c"])
                .arg(d.join("fwknopd.conf"))
                .arg("-a")
                .arg(d.join("access.conf"))
                .arg("-d")
                .arg(d.join("digest.cache"))
                .arg("-p")
                .arg(d.join("fwknopd.pid"));
            let log = d.join("fwknopd.log");
            (cmd, log.clone(), log)
        };
        let logfile = std::fs::File::create(&log).context("creating the daemon log")?;
        cmd.stdin(Stdio::null()).stdout(logfile.try_clone().context("log file")?).stderr(logfile);
        let child = cmd.spawn().with_context(|| format!("starting {}", kind.name()))?;
        let mut me = Daemon {
            kind,
            proc: Background(Some(child)),
            _dir: dir,
            log,
            follower: Follower::new(follow),
            counts: Counts::default(),
            markers: 0,
            keep_log: progs.logs.as_ref().map(|d| d.join(format!("{label}-{}.log", kind.name()))),
        };
        me.wait_ready()?;
        if kind == Kind::Fwknopd {
            let rules = ns_run(gw, "iptables", &["-S", "INPUT"])?;
            let first = rules.lines().find(|l| l.starts_with("-A INPUT")).unwrap_or("");
            if first != "-A INPUT -j FWKNOP_INPUT" {
                bail!("fwknopd's jump is not the first INPUT rule:\n{rules}");
            }
        }
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let marker = if self.kind.is_spad() { "spad ready" } else { "Starting fwknopd main event loop" };
        let start = Instant::now();
        loop {
            let log = self.log_text();
            if log.contains(marker) {
                return Ok(());
            }
            if let Some(c) = self.proc.0.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("{} exited ({status}) at start:\n{}", self.kind.name(), tail(&log, 20));
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("{} not ready after 30 s:\n{}", self.kind.name(), tail(&log, 20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's stderr/stdout so far.
    pub(crate) fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The last lines of the log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        tail(&self.log_text(), 15)
    }

    /// The daemon's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Fails if the daemon has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.proc.0.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            bail!("{} exited ({status}):\n{}", self.kind.name(), self.log_tail());
        }
        Ok(())
    }

    /// Records that the bench sent one junk packet of its own (not to be counted as junk).
    pub(crate) fn note_marker(&mut self) {
        self.markers += 1;
    }

    /// Counters, brought up to date (the bench's own markers left out).
    pub(crate) fn counts(&mut self) -> Counts {
        let mut c = self.raw_counts();
        c.junk = c.junk.saturating_sub(self.markers);
        c
    }

    fn raw_counts(&mut self) -> Counts {
        let lines = self.follower.lines();
        for line in lines {
            if self.kind.is_spad() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                match v["event"].as_str() {
                    Some("grant") => self.counts.grants += 1,
                    Some("extend") => self.counts.extends += 1,
                    Some("reject") => self.counts.add_reject(v["reason"].as_str().unwrap_or(""), 1),
                    Some("reject_summary") => {
                        if let Some(m) = v["suppressed"].as_object() {
                            for (reason, n) in m {
                                self.counts.add_reject(reason, n.as_u64().unwrap_or(0));
                            }
                        }
                    }
                    _ => {}
                }
            } else if line.contains("Added access rule") {
                self.counts.grants += 1;
            } else if line.contains("Replay detected") {
                self.counts.replays += 1;
            } else if line.contains("Error creating fko context") {
                self.counts.junk += 1;
            }
        }
        self.counts
    }

    /// Grants so far.
    pub(crate) fn grants(&mut self) -> u64 {
        self.counts().grants
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn follower_returns_whole_lines_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut f = std::fs::File::create(&path).unwrap();
        let mut fl = Follower::new(path);
        assert!(fl.lines().is_empty());
        f.write_all(b"one\ntw").unwrap();
        assert_eq!(fl.lines(), vec!["one"]);
        assert!(fl.lines().is_empty(), "a half line waits");
        f.write_all(b"o\nthree\n").unwrap();
        assert_eq!(fl.lines(), vec!["two", "three"]);
    }
}

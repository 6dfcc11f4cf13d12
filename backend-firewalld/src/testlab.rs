//! A real firewalld for tests (cargo feature `testlab`): a private system bus and firewalld
//! running inside a network namespace the test made, with a configuration directory of its
//! own, so nothing on the host is touched.
//!
//! The bus socket lives in a temporary directory; processes in any namespace reach it through
//! its address (`DBUS_SYSTEM_BUS_ADDRESS` for child processes, [`BusAddress::Address`] in
//! process). firewalld writes its nftables ruleset into the namespace it runs in. Both
//! daemons are killed when the lab is dropped, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use spa_e2e::{Background, Netns};

use crate::{BusAddress, FirewalldBackend, FirewalldConfig};

/// The `public` zone without any service or port: the zone rejects everything not granted.
pub const CLOSED_ZONE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<zone>
  <short>Public</short>
</zone>
"#;

/// The `public` zone with only the SPA port (udp/62201) open, for a daemon in socket mode.
pub const SPA_ZONE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<zone>
  <short>Public</short>
  <port port="62201" protocol="udp"/>
</zone>
"#;

/// The `public` zone as Debian ships it: ssh is open to everyone.
pub const SSH_ZONE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<zone>
  <short>Public</short>
  <service name="ssh"/>
  <service name="dhcpv6-client"/>
</zone>
"#;

const FIREWALLD_CONF: &str = "DefaultZone=public
CleanupOnExit=yes
CleanupModulesOnExit=no
Lockdown=no
IPv6_rpfilter=yes
IndividualCalls=no
LogDenied=off
FirewallBackend=nftables
FlushAllOnReload=yes
";

/// A private system bus and firewalld in one namespace.
#[derive(Debug)]
pub struct FirewalldLab {
    ns: String,
    dir: tempfile::TempDir,
    bus: Background,
    firewalld: Option<Background>,
}

impl FirewalldLab {
    /// Starts a bus and firewalld in `ns`, with `public_zone` as the `public` zone's
    /// permanent configuration; returns once firewalld answers `RUNNING`.
    pub fn start(ns: &Netns, public_zone: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(etc.join("zones")).expect("config directory");
        std::fs::write(etc.join("firewalld.conf"), FIREWALLD_CONF).expect("firewalld.conf");
        std::fs::write(etc.join("zones/public.xml"), public_zone).expect("public.xml");
        let socket = dir.path().join("bus.sock");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>
    <allow own="*"/><allow user="*"/></policy>
  <includedir>/usr/share/dbus-1/system.d</includedir>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("bus.conf");
        let bus = ns.spawn(
            ns.cmd("dbus-daemon")
                .args(["--nofork", "--nopidfile", "--config-file", conf.to_str().expect("utf-8 path")])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let start = Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "the private bus did not start");
            thread::sleep(Duration::from_millis(20));
        }
        let mut lab = Self { ns: ns.name().to_owned(), dir, bus, firewalld: None };
        lab.start_firewalld();
        lab
    }

    /// The bus address (`unix:path=...`).
    pub fn address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("bus.sock").display())
    }

    /// The bus address for [`FirewalldBackend::connect`].
    pub fn bus(&self) -> BusAddress {
        BusAddress::Address(self.address())
    }

    /// firewalld's permanent configuration directory (`--system-config`).
    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// firewalld's log file.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("firewalld.log")).unwrap_or_default()
    }

    /// The pid of the bus daemon.
    pub fn bus_pid(&self) -> u32 {
        self.bus.pid()
    }

    /// Starts firewalld (again) and waits until it is running.
    pub fn start_firewalld(&mut self) {
        let etc = self.etc();
        let log = self.dir.path().join("firewalld.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "firewalld", "--nofork", "--nopid"])
            .arg("--system-config")
            .arg(&etc)
            .arg("--log-file")
            .arg(&log)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.address())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start firewalld");
        self.firewalld = Some(Background(Some(child)));
        let start = Instant::now();
        loop {
            let out = self.firewall_cmd_output(&["--state"]);
            if String::from_utf8_lossy(&out.stdout).trim() == "running" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "firewalld did not start: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops firewalld (SIGTERM: it removes its rules, as a service stop does) and waits.
    pub fn stop_firewalld(&mut self) {
        if let Some(mut bg) = self.firewalld.take()
            && let Some(mut child) = bg.take()
        {
            // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet.
            unsafe {
                libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// `firewall-cmd ARGS` in the namespace on this bus, whatever its outcome.
    pub fn firewall_cmd_output(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "firewall-cmd"])
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.address())
            .output()
            .expect("run firewall-cmd")
    }

    /// `firewall-cmd ARGS`, which must succeed; returns its output.
    pub fn firewall_cmd(&self, args: &[&str]) -> String {
        let out = self.firewall_cmd_output(args);
        assert!(
            out.status.success(),
            "firewall-cmd {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The zone's runtime rich rules.
    pub fn rich_rules(&self, zone: &str) -> Vec<String> {
        self.firewall_cmd(&["--zone", zone, "--list-rich-rules"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// A backend on this lab's bus, from a `[firewall.firewalld]` table's text.
    pub fn backend(&self, table: &str) -> Result<FirewalldBackend, spa_backends::BackendError> {
        let config = FirewalldConfig::from_table(&table.parse::<toml::Table>().expect("toml"))?;
        FirewalldBackend::connect(config, self.bus())
    }

    /// The configuration directory path as a string (for messages).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FirewalldLab {
    fn drop(&mut self) {
        // SIGKILL through the backgrounds; the namespace's own drop kills anything left.
        self.firewalld = None;
    }
}

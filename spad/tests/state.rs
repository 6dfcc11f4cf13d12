//! The state directory as an attacker or a careless admin leaves it: a second spad on it, files
//! of someone else's or writable by others, planted symbolic links, forged and damaged journal
//! records, and a disk that fills up. Each test runs the real `spad` in its own network
//! namespace and checks what an admin would: exit status and message, the audit trail,
//! `spad list`, and the files themselves.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spa_backends::{Access, Grant, GrantId};
use spa_e2e::{GatewayLab, Netns};

mod support;
use support::Daemon;

const KEY: &str = "state-tests-encryption-key-32byt";
const HMAC_KEY: &str = "state-tests-hmac-key-of-32-bytes";
/// The stanza's longest grant (`max_fw_timeout`; `fw_access_timeout` is shorter).
const MAX_TIMEOUT: u64 = 60;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Socket mode on loopback, for the tests that run spad in a namespace of their own.
const LOOPBACK: &str = "[listen]\nmode = \"socket\"\naddresses = [\"127.0.0.1:62201\"]";
const LAB_SOCKET: &str = "[listen]\nmode = \"socket\"\naddresses = [\"0.0.0.0:62201\"]";
const LAB_CAPTURE: &str = "[listen]\nmode = \"capture\"\ninterfaces = [\"c0\"]\nport = 62201";

fn config(dir: &Path, listen: &str, source: &str) -> String {
    format!(
        r#"
{listen}

[firewall]
backend = "none"

[replay]
state_dir = "{dir}/state"
max_packet_age = 120

[log]
audit = "{dir}/audit.jsonl"
max_rejects_per_second = 1000

[[access]]
name = "clients"
source = "{source}"
open_ports = ["tcp/22", "udp/53"]
key = "{KEY}"
hmac_key = "{HMAC_KEY}"
fw_access_timeout = 30
max_fw_timeout = {MAX_TIMEOUT}
"#,
        dir = dir.display()
    )
}

/// Writes the configuration (it holds keys: mode 0600) and returns its path.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("spad.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    support::own_control_socket(&path, dir);
    path
}

/// Runs a spad that must refuse to start: returns its output once it exits, and fails the test
/// (killing it) if it is still running after a generous delay.
fn refused(mut cmd: Command) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => {
            let out = out.unwrap();
            assert!(
                !out.status.success(),
                "spad exited successfully: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("spad is still running: it should have refused to start");
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is(e: &Value, event: &str) -> bool {
    e["event"] == event
}

fn engine_packet(allow: &str, port: &str) -> Vec<u8> {
    use spa_engine::{DigestType, EncryptionKey, EncryptionMode, HmacKey, MessageType, SpaMessage, packet};
    struct Os;
    impl spa_engine::Entropy for Os {
        fn fill(&mut self, buf: &mut [u8]) {
            getrandom::fill(buf).unwrap();
        }
    }
    let msg = SpaMessage {
        random: spa_engine::random_value(&mut Os),
        username: "tester".into(),
        timestamp: now(),
        version: "3.0.0".into(),
        message_type: MessageType::Access,
        message: format!("{allow},{port}"),
        nat_access: None,
        server_auth: None,
        client_timeout: None,
    };
    let key = EncryptionKey::new(KEY.as_bytes().to_vec()).unwrap();
    let hkey = HmacKey::new(HMAC_KEY.as_bytes().to_vec()).unwrap();
    let opts = packet::SealOptions {
        key: &key,
        mode: EncryptionMode::Cbc,
        digest: DigestType::Sha256,
        hmac: Some((&hkey, DigestType::Sha256)),
    };
    packet::seal(&msg, &opts, &mut Os).unwrap().into_bytes()
}

fn send_from(ns: &Netns, to: SocketAddr, payload: Vec<u8>) {
    ns.run_in(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(&payload, to).unwrap();
    });
}

fn send_loopback(ns: &Netns, payload: &[u8]) {
    send_from(ns, "127.0.0.1:62201".parse().unwrap(), payload.to_vec());
}

fn grant_record(id: u64, stanza: &str, deadline: u64, username: &str) -> String {
    let g = Grant {
        id: GrantId(id),
        source: "127.0.0.1".parse().unwrap(),
        source_port: None,
        packet_source: "127.0.0.1".parse().unwrap(),
        destination: None,
        access: Access::Ports(vec!["tcp/22".parse().unwrap()].into()),
        nat: None,
        created: now(),
        deadline,
        stanza: stanza.into(),
        username: username.into(),
        ingress: None,
    };
    json!({"op": "put", "grant": g}).to_string()
}

fn replay_line(packet: &[u8], at: u64) -> String {
    let k = spa_engine::replay::replay_key(packet);
    format!("{} {at}", k.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A state directory made by the test (mode 0700, as spad would make it).
fn state_dir(dir: &Path) -> PathBuf {
    let s = dir.join("state");
    std::fs::create_dir(&s).unwrap();
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o700)).unwrap();
    s
}

fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The journal files, byte for byte.
fn snapshot(state: &Path) -> Vec<(String, Vec<u8>)> {
    ["grants.jsonl", "replay.log", "lock"]
        .into_iter()
        .map(|f| (f.to_owned(), std::fs::read(state.join(f)).unwrap_or_default()))
        .collect()
}

fn second_spad_changes_nothing(prefix: &str, listen: &str) {
    let lab = GatewayLab::new(prefix);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(dir.path(), listen, "10.201.1.0/24"));
    let mut d = Daemon::start_written(&lab.gw, dir.path());
    let gw = GatewayLab::addr(GatewayLab::GW4, 62201);
    let packet = engine_packet(GatewayLab::CLIENT4, "tcp/22");
    send_from(&lab.client, gw, packet.clone());
    let g = d.wait_event("grant", |e| is(e, "grant"));
    // Let the worker's once-a-second sync pass, so the files are settled.
    thread::sleep(Duration::from_millis(1500));
    let state = dir.path().join("state");
    let before = snapshot(&state);

    // A second spad on the same configuration: it fails at once and names the first.
    let mut second = lab.gw.cmd(env!("CARGO_BIN_EXE_spad"));
    second.args(["--config", d.config.to_str().unwrap()]);
    let out = refused(second);
    let msg = stderr(&out);
    assert!(
        msg.contains("is in use by another spad") && msg.contains(&format!("(pid {})", d.pid())),
        "{msg}"
    );
    assert!(msg.contains(state.to_str().unwrap()), "{msg}");
    assert_eq!(snapshot(&state), before, "the refused spad changed the state directory");
    assert_eq!(d.count(|e| is(e, "start")), 1, "the refused spad wrote a start event");

    // The first one is unharmed: its grant is listed and its packet still a replay.
    let listed = d.listed();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], g["id"]);
    send_from(&lab.client, gw, packet);
    d.wait_event("replay", |e| is(e, "reject") && e["reason"] == "replay");

    // teardown refuses while the daemon runs, and leaves everything alone.
    let out = d.spad(&["teardown"]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains("cannot tear down while spad runs") && msg.contains(&format!("(pid {})", d.pid())),
        "{msg}"
    );
    assert_eq!(snapshot(&state), before, "a refused teardown changed the state directory");
    assert_eq!(d.listed().len(), 1);

    // Once the daemon is gone (crashed: its grant is still recorded), teardown works.
    d.kill9();
    assert_eq!(d.listed().len(), 1);
    let out = d.spad(&["teardown"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.listed().is_empty());
}

#[test]
fn a_second_spad_on_the_same_state_directory_fails_and_changes_nothing() {
    second_spad_changes_nothing("st1", LAB_SOCKET);
}

#[test]
fn in_capture_mode_too_a_second_spad_fails_and_changes_nothing() {
    second_spad_changes_nothing("st2", LAB_CAPTURE);
}

#[test]
fn test_mode_has_its_own_state_and_lock() {
    let ns = Netns::new("st3");
    let other = Netns::new("st3b");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config(dir.path(), LOOPBACK, "127.0.0.1"));
    let _real = Daemon::start_written(&ns, dir.path());
    // A test-mode spad beside the real one (in another namespace, for the port): it starts.
    let mut test = other
        .cmd(env!("CARGO_BIN_EXE_spad"))
        .args(["--config", config.to_str().unwrap(), "--test"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(test.stderr.take().unwrap());
    let mut text = String::new();
    while !text.contains("spad ready") {
        assert!(err.read_line(&mut text).unwrap() > 0, "test-mode spad exited: {text}");
    }
    // A second test-mode spad is refused, naming the first test-mode one.
    let third = Netns::new("st3c");
    let mut second = third.cmd(env!("CARGO_BIN_EXE_spad"));
    second.args(["--config", config.to_str().unwrap(), "--test"]);
    let msg = stderr(&refused(second));
    assert!(msg.contains(&format!("state/test is in use by another spad (pid {})", test.id())), "{msg}");
    let _ = test.kill();
    let _ = test.wait();
}

/// A state directory a careless admin (or another user) left open: spad refuses it, says why
/// and where, and changes nothing.
#[test]
fn state_others_own_or_can_write_is_refused() {
    let ns = Netns::new("st4");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config(dir.path(), LOOPBACK, "127.0.0.1"));
    let state = state_dir(dir.path());
    let grants = state.join("grants.jsonl");
    let record = grant_record(7, "clients", now() + 30, "alice") + "\n";
    write_private(&grants, record.as_bytes());
    let start = || {
        let mut c = ns.cmd(env!("CARGO_BIN_EXE_spad"));
        c.args(["--config", config.to_str().unwrap()]);
        stderr(&refused(c))
    };

    std::fs::set_permissions(&grants, std::fs::Permissions::from_mode(0o620)).unwrap();
    let msg = start();
    assert!(
        msg.contains(&format!("{} is writable by group or others (mode 620)", grants.display())),
        "{msg}"
    );
    std::fs::set_permissions(&grants, std::fs::Permissions::from_mode(0o602)).unwrap();
    assert!(start().contains("is writable by group or others"));
    std::fs::set_permissions(&grants, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::os::unix::fs::chown(&grants, Some(65534), None).unwrap();
    let msg = start();
    assert!(msg.contains(&format!("{} is owned by uid 65534, not by uid 0", grants.display())), "{msg}");
    std::os::unix::fs::chown(&grants, Some(0), None).unwrap();

    let replay = state.join("replay.log");
    write_private(&replay, b"");
    std::os::unix::fs::chown(&replay, Some(65534), Some(65534)).unwrap();
    assert!(start().contains(&format!("{} is owned by uid 65534", replay.display())));
    std::fs::remove_file(&replay).unwrap();

    let lock = state.join("lock");
    write_private(&lock, b"");
    std::os::unix::fs::chown(&lock, Some(65534), None).unwrap();
    assert!(start().contains(&format!("{} is owned by uid 65534", lock.display())));
    std::fs::remove_file(&lock).unwrap();

    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o770)).unwrap();
    assert!(start().contains(&format!("{} is writable by group or others (mode 770)", state.display())));
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
    assert!(start().contains(&format!("{} is owned by uid 65534", state.display())));
    std::os::unix::fs::chown(&state, Some(0), None).unwrap();

    // A journal that is a symbolic link is refused, never followed (even to a file of ours).
    let elsewhere = dir.path().join("elsewhere.log");
    write_private(&elsewhere, b"precious\n");
    std::os::unix::fs::symlink(&elsewhere, &replay).unwrap();
    let msg = start();
    assert!(msg.contains(&format!("{} is a symbolic link", replay.display())), "{msg}");
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"precious\n");
    std::fs::remove_file(&replay).unwrap();

    // Nothing was rewritten by the refused starts.
    assert_eq!(std::fs::read_to_string(&grants).unwrap(), record);

    // Put right, it starts and keeps the grant.
    let d = Daemon::start_written(&ns, dir.path());
    assert_eq!(d.listed().len(), 1);
}

#[test]
fn what_spad_creates_is_private_whatever_the_umask() {
    let ns = Netns::new("st5");
    let dir = tempfile::tempdir().unwrap();
    // The control socket in a runtime directory spad has to make.
    let run = dir.path().join("run");
    let text = config(dir.path(), LOOPBACK, "127.0.0.1");
    let text = format!("{text}\n[control]\nsocket = \"{}\"\n", run.join("control.sock").display());
    let config = write_config(dir.path(), &text);
    let mut child = ns
        .cmd("sh")
        .args([
            "-c",
            "umask 000; exec \"$0\" --config \"$1\"",
            env!("CARGO_BIN_EXE_spad"),
            config.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut text = String::new();
    while !text.contains("spad ready") {
        assert!(err.read_line(&mut text).unwrap() > 0, "spad exited: {text}");
    }
    let state = dir.path().join("state");
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&state), 0o700);
    for f in ["grants.jsonl", "replay.log", "lock"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    assert_eq!(std::fs::read_to_string(state.join("lock")).unwrap().trim(), child.id().to_string());
    assert_eq!((mode(&run), mode(&run.join("control.sock"))), (0o700, 0o600));
    let _ = child.kill();
    let _ = child.wait();
}

/// The compaction's temporary files: a symbolic link planted there (to a file root would
/// otherwise truncate) is removed, never written through.
#[test]
fn a_planted_temp_file_link_never_truncates_its_target() {
    let ns = Netns::new("st6");
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(dir.path(), LOOPBACK, "127.0.0.1"));
    let state = state_dir(dir.path());
    write_private(
        &state.join("grants.jsonl"),
        (grant_record(7, "clients", now() + 30, "alice") + "\n").as_bytes(),
    );
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    for tmp in ["grants.tmp", "replay.tmp"] {
        std::os::unix::fs::symlink(&victim, state.join(tmp)).unwrap();
    }
    let d = Daemon::start_written(&ns, dir.path());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:x:0:0:root:/root:/bin/bash\n");
    for tmp in ["grants.tmp", "replay.tmp"] {
        assert!(std::fs::symlink_metadata(state.join(tmp)).is_err(), "{tmp} is still there");
    }
    // The journal was compacted all the same.
    assert_eq!(d.listed().len(), 1);
    assert!(std::fs::symlink_metadata(state.join("grants.jsonl")).unwrap().is_file());
}

/// Records a forger (or an old configuration) left: a deadline a year ahead is cut to what the
/// stanza allows; a grant of a stanza that is no longer configured is dropped and revoked.
#[test]
fn loaded_grants_are_held_to_the_configuration() {
    let ns = Netns::new("st7");
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(dir.path(), LOOPBACK, "127.0.0.1"));
    let state = state_dir(dir.path());
    let year = now() + 365 * 86_400;
    let text = format!(
        "{}\n{}\n",
        grant_record(0x1111, "clients", year, "alice"),
        grant_record(0x2222, "removed-stanza", year, "mallory")
    );
    write_private(&state.join("grants.jsonl"), text.as_bytes());
    let before = now();
    let d = Daemon::start_written(&ns, dir.path());
    let after = now();

    let listed = d.listed();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], "0000000000001111");
    let deadline = listed[0]["deadline"].as_u64().unwrap();
    assert!(
        (before + MAX_TIMEOUT..=after + MAX_TIMEOUT).contains(&deadline),
        "deadline {deadline} not cut to {MAX_TIMEOUT}s after the start ({before}..={after})"
    );
    // The grant of the removed stanza is closed at start (its record ends with a `del`).
    let journal = std::fs::read_to_string(state.join("grants.jsonl")).unwrap();
    assert!(journal.lines().last().unwrap().contains(r#""op":"del","id":8738"#), "{journal}");
    let log = d.log_text();
    assert!(
        log.contains("1 grant(s) of stanzas no longer configured are closed (the first: 0000000000002222 for 127.0.0.1)"),
        "{log}"
    );
    assert!(log.contains("1 grant(s) lasted longer than their stanza allows"), "{log}");
    let r = d.wait_event("revoke of the dropped grant", |e| is(e, "revoke"));
    assert_eq!(r["id"], "0000000000002222");
    assert_eq!(d.count(|e| is(e, "start") && e["detail"]["live_grants"] == 1), 1);
}

/// Bytes that are not UTF-8, lines that are not JSON or not records: skipped and counted in
/// one warning per journal, without their content; the good records around them still count.
#[test]
fn damaged_journal_lines_are_skipped_and_counted() {
    let ns = Netns::new("st8");
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(dir.path(), LOOPBACK, "127.0.0.1"));
    let state = state_dir(dir.path());
    let mut grants = b"\xff\xfeFORGED-LINE-ONE\x1b[31m\n".to_vec();
    grants.extend_from_slice((grant_record(0x33, "clients", now() + 30, "alice") + "\n").as_bytes());
    grants.extend_from_slice(b"{\"op\":\"put\",\"grant\":FORGED-LINE-TWO\n{\"op\":\"del\"}\n");
    write_private(&state.join("grants.jsonl"), &grants);
    // A packet spad never saw, recorded as seen: it must be refused as a replay.
    let seen = engine_packet("127.0.0.1", "tcp/22");
    let mut replay = format!("{}\n", replay_line(&seen, now())).into_bytes();
    replay.extend_from_slice(b"FORGED-LINE-\xc0\xaf THREE 12\nshort 5\n");
    write_private(&state.join("replay.log"), &replay);

    let d = Daemon::start_written(&ns, dir.path());
    let log = d.log_text();
    let g = state.join("grants.jsonl");
    let r = state.join("replay.log");
    assert!(
        log.contains(&format!("{}: skipped 3 unreadable line(s), the first at line 1", g.display())),
        "{log}"
    );
    assert!(
        log.contains(&format!("{}: skipped 2 unreadable line(s), the first at line 2", r.display())),
        "{log}"
    );
    assert!(!log.contains("FORGED"), "journal content reached the log:\n{log}");
    assert_eq!(d.listed().len(), 1);
    send_loopback(&ns, &seen);
    d.wait_event("replay", |e| is(e, "reject") && e["reason"] == "replay");
    assert_eq!(d.count(|e| is(e, "grant")), 0);
}

/// A small tmpfs mounted on the state directory for one test, unmounted on drop (also when
/// the test panics).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        spa_e2e::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
                .arg(path),
        );
        Self(path.to_owned())
    }

    /// Fills the file system: writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let block = [0u8; 4096];
        loop {
            if let Err(e) = f.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// The original bug: a packet accepted while its replay record could not be written was
/// accepted again after a restart. Now it is refused while the disk is full, and across the
/// restart it is granted at most once.
#[test]
fn a_knock_that_cannot_be_recorded_is_refused_and_never_granted_twice() {
    let ns = Netns::new("st9");
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(dir.path(), LOOPBACK, "127.0.0.1"));
    let disk = Tmpfs::mount(&dir.path().join("state"), "64k");
    let mut d = Daemon::start_written(&ns, dir.path());

    let filler = disk.fill();
    let refused_packet = engine_packet("127.0.0.1", "udp/53");
    send_loopback(&ns, &refused_packet);
    let r = d.wait_event("state_unwritable", |e| is(e, "reject") && e["reason"] == "state_unwritable");
    assert_eq!(r["stanza"], "clients");
    // Sent again: still refused (remembered in memory), never granted.
    send_loopback(&ns, &refused_packet);
    d.wait_event("replay", |e| is(e, "reject") && e["reason"] == "replay");
    assert_eq!(d.count(|e| is(e, "grant") || is(e, "extend")), 0);
    assert!(d.listed().is_empty());
    assert!(
        d.log_text().contains("refusing an authenticated packet: cannot write journal"),
        "{}",
        d.log_text()
    );

    // Space again: a new knock is granted.
    std::fs::remove_file(filler).unwrap();
    let granted_packet = engine_packet("127.0.0.1", "tcp/22");
    send_loopback(&ns, &granted_packet);
    d.wait_event("grant", |e| is(e, "grant") && e["access"] == json!(["tcp/22"]));

    // Crash and restart: the granted packet is a replay; the refused one is granted at most
    // once over the whole run.
    d.kill9();
    d.spawn(&ns);
    send_loopback(&ns, &granted_packet);
    send_loopback(&ns, &refused_packet);
    send_loopback(&ns, &refused_packet);
    let start = Instant::now();
    while d.count(|e| is(e, "reject") && e["reason"] == "replay") < 3 {
        assert!(start.elapsed() < Duration::from_secs(20), "{:#?}", d.events());
        thread::sleep(Duration::from_millis(20));
    }
    let udp53 = |e: &Value| (is(e, "grant") || is(e, "extend")) && e["access"] == json!(["udp/53"]);
    assert!(d.count(udp53) <= 1, "{:#?}", d.events());
    assert_eq!(d.count(|e| is(e, "grant") && e["access"] == json!(["tcp/22"])), 1);
}

/// The replay record fits (its file has room in its last page) but the grant's record does
/// not: the grant is not made, and the audit says why.
#[test]
fn a_grant_that_cannot_be_recorded_is_not_made() {
    let ns = Netns::new("st10");
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(dir.path(), LOOPBACK, "127.0.0.1"));
    let disk = Tmpfs::mount(&dir.path().join("state"), "64k");
    // One recent replay record: its page has room for more; the grant journal is empty and
    // needs a page for its first record.
    write_private(
        &disk.0.join("replay.log"),
        format!("{}\n", replay_line(b"an earlier packet", now())).as_bytes(),
    );
    let mut d = Daemon::start_written(&ns, dir.path());

    let filler = disk.fill();
    let packet = engine_packet("127.0.0.1", "tcp/22");
    send_loopback(&ns, &packet);
    let e = d.wait_event("error", |e| is(e, "error"));
    assert_eq!((e["action"].as_str(), e["error"].as_str()), (Some("grant"), Some("state_unwritable")), "{e}");
    assert_eq!(d.count(|e| is(e, "grant")), 0);
    assert!(d.listed().is_empty());
    assert!(d.log_text().contains("refused: state unwritable"), "{}", d.log_text());

    std::fs::remove_file(filler).unwrap();
    send_loopback(&ns, &engine_packet("127.0.0.1", "tcp/22"));
    d.wait_event("grant", |e| is(e, "grant"));
    // The refused packet was recorded as seen: after a restart it is still a replay.
    d.kill9();
    d.spawn(&ns);
    send_loopback(&ns, &packet);
    d.wait_event("replay", |e| is(e, "reject") && e["reason"] == "replay");
    assert_eq!(d.count(|e| is(e, "grant")), 1);
}

/// The end of a grant cannot be recorded: the journal is rewritten from memory as soon as
/// there is room (retried every second), and no grant is made until then.
#[test]
fn an_end_that_cannot_be_recorded_blocks_new_grants_until_the_journal_is_rewritten() {
    const PAGE: usize = 4096;
    let ns = Netns::new("st11");
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(dir.path(), LOOPBACK, "127.0.0.1"));
    let disk = Tmpfs::mount(&dir.path().join("state"), "64k");
    // Two grants whose records fill exactly two pages, so that the next record needs a new
    // page: one lasts, one ends in a few seconds.
    let lasting = grant_record(1, "clients", now() + MAX_TIMEOUT, "alice");
    let short = grant_record(2, "clients", now() + 8, "");
    let pad = 2 * PAGE - (lasting.len() + 1) - (short.len() + 1);
    let short = grant_record(2, "clients", now() + 8, &"b".repeat(pad));
    let text = format!("{lasting}\n{short}\n");
    assert_eq!(text.len(), 2 * PAGE);
    write_private(&disk.0.join("grants.jsonl"), text.as_bytes());
    write_private(
        &disk.0.join("replay.log"),
        format!("{}\n", replay_line(b"an earlier packet", now())).as_bytes(),
    );
    let mut d = Daemon::start_written(&ns, dir.path());
    // spad's own compaction wrote the same two records.
    assert_eq!(std::fs::metadata(disk.0.join("grants.jsonl")).unwrap().len(), 2 * PAGE as u64);
    let filler = disk.fill();

    let ended = d.wait_event("expire", |e| is(e, "expire"));
    assert_eq!(ended["id"], "0000000000000002");
    d.wait_log("the end of 0000000000000002 was not recorded");
    send_loopback(&ns, &engine_packet("127.0.0.1", "udp/53"));
    let e = d.wait_event("error", |e| is(e, "error"));
    assert_eq!((e["action"].as_str(), e["error"].as_str()), (Some("grant"), Some("state_unwritable")), "{e}");
    assert!(d.log_text().contains("is waiting for a rewrite after a failed write"), "{}", d.log_text());

    std::fs::remove_file(filler).unwrap();
    d.wait_log("grant journal rewritten");
    let journal = std::fs::read_to_string(disk.0.join("grants.jsonl")).unwrap();
    assert_eq!(journal.lines().count(), 1, "{journal}");
    assert!(journal.contains("\"alice\""), "{journal}");
    send_loopback(&ns, &engine_packet("127.0.0.1", "udp/53"));
    d.wait_event("grant", |e| is(e, "grant"));

    // After a crash, exactly the live grants come back.
    d.kill9();
    d.spawn(&ns);
    let mut ids: Vec<u64> =
        d.listed().iter().map(|g| u64::from_str_radix(g["id"].as_str().unwrap(), 16).unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], 1);
    assert!(!std::fs::read_to_string(disk.0.join("grants.jsonl")).unwrap().contains("bbbb"));
}

//! The `spa` binary against the real fwknop client (Debian `fwknop-client`), without root:
//! packets made by `fwknop -T` decode with `spa decode` to the fields fwknop printed, an rc
//! file written by `fwknop --save-rc-stanza` drives `spa -n`, `-R --resolve-url` reads a page
//! served on loopback, and bad input gets one-line errors.
//!
//! Nothing here sends a packet: both clients run with `-T`, and the only connection is to a
//! listener this test opens on 127.0.0.1.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

const SPA: &str = env!("CARGO_BIN_EXE_spa");

/// Runs `spa` with `HOME` pointing at `home` (so no real ~/.fwknoprc is read) and no stdin.
fn spa(home: &Path, args: &[&str]) -> Output {
    Command::new(SPA)
        .args(args)
        .env("HOME", home)
        .env_remove("SPOOF_USER")
        .stdin(Stdio::null())
        .output()
        .expect("run spa")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `spa decode` and parses its JSON.
fn decode(home: &Path, keys: &[&str], packet: &str) -> Value {
    let mut args = vec!["decode"];
    args.extend_from_slice(keys);
    args.push(packet);
    let o = spa(home, &args);
    assert!(o.status.success(), "spa decode failed: {}", stderr(&o));
    serde_json::from_str(stdout(&o).trim()).expect("decode prints JSON")
}

/// Writes a file that holds keys, mode 0600.
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Runs `fwknop -T -v` and returns the first "SPA Field Values" block as name → value.
fn fwknop_fields(home: &Path, args: &[&str]) -> HashMap<String, String> {
    let o = Command::new("fwknop")
        .args(args)
        .args(["-D", "127.0.0.1", "-T", "-v", "--no-save-args"])
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("run fwknop (Debian package fwknop-client)");
    let text = stdout(&o) + &stderr(&o);
    assert!(o.status.success(), "fwknop {args:?} failed: {text}");
    let mut fields = HashMap::new();
    for line in text.lines().skip_while(|l| !l.starts_with("SPA Field Values")).skip(2) {
        let Some((k, v)) = line.split_once(": ") else { break };
        fields.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    assert!(fields.contains_key("Final SPA Data"), "no packet in fwknop output: {text}");
    fields
}

/// fwknop's "3 (SHA256)" → 3.
fn leading_number(s: &str) -> u64 {
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// fwknop's "<NULL>" → JSON null.
fn null_or(s: &str) -> Value {
    if s == "<NULL>" { Value::Null } else { Value::String(s.to_owned()) }
}

#[test]
fn fwknop_packets_decode_to_the_fields_fwknop_printed() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // (fwknop arguments, spa decode key arguments, expected digest name)
    let cases: &[(&[&str], &[&str], &str)] = &[
        (
            &["-A", "tcp/22", "-a", "1.2.3.4", "--key-rijndael", "k1", "--key-hmac", "h1"],
            &["--key", "k1", "--hmac-key", "h1"],
            "sha256",
        ),
        (
            &[
                "-A",
                "tcp/22",
                "-a",
                "10.1.1.1",
                "-N",
                "10.0.0.5:22",
                "-f",
                "60",
                "-m",
                "sha512",
                "--hmac-digest-type",
                "sha1",
                "-M",
                "ctr",
                "--key-rijndael",
                "k2",
                "--key-hmac",
                "h2",
                "-U",
                "alice",
            ],
            &["--key", "k2", "--hmac-key", "h2", "--hmac-digest-type", "sha1", "-M", "ctr"],
            "sha512",
        ),
        (
            &[
                "-a",
                "1.2.3.4",
                "-C",
                "echo hi",
                "-m",
                "md5",
                "--hmac-digest-type",
                "md5",
                "-M",
                "ecb",
                "--key-base64-rijndael",
                "dGVzdGtleTEyMw==",
                "--key-base64-hmac",
                "aG1hY2tleTQ1Ng==",
            ],
            &[
                "--key-base64",
                "dGVzdGtleTEyMw==",
                "--hmac-key-base64",
                "aG1hY2tleTQ1Ng==",
                "--hmac-digest-type",
                "md5",
                "-M",
                "ecb",
            ],
            "md5",
        ),
        (
            &[
                "-A",
                "tcp/22",
                "-a",
                "1.2.3.4",
                "--nat-local",
                "--nat-port",
                "2222",
                "-m",
                "sha384",
                "--hmac-digest-type",
                "sha512",
                "-M",
                "cfb",
                "--key-rijndael",
                "k4",
                "--key-hmac",
                "h4",
            ],
            &["--key", "k4", "--hmac-key", "h4", "--hmac-digest-type", "sha512", "-M", "cfb"],
            "sha384",
        ),
        (
            &[
                "-A",
                "udp/53,tcp/443",
                "-s",
                "-f",
                "30",
                "-m",
                "sha3_256",
                "--hmac-digest-type",
                "sha3_512",
                "-M",
                "ofb",
                "--key-rijndael",
                "k5",
                "--key-hmac",
                "h5",
            ],
            &["--key", "k5", "--hmac-key", "h5", "--hmac-digest-type", "sha3_512", "-M", "ofb"],
            "sha3_256",
        ),
        (
            &["-A", "tcp/22", "-a", "1.2.3.4", "-m", "sha1", "-M", "legacy", "--key-rijndael", "short"],
            &["--key", "short", "-M", "legacy"],
            "sha1",
        ),
        (
            &[
                "-A",
                "tcp/22",
                "-a",
                "1.2.3.4",
                "-m",
                "sha3_512",
                "--key-rijndael",
                "k7",
                "--key-hmac",
                "h7",
                "--hmac-digest-type",
                "sha384",
            ],
            &["--key", "k7", "--hmac-key", "h7", "--hmac-digest-type", "sha384"],
            "sha3_512",
        ),
    ];
    for (fwknop_args, keys, digest) in cases {
        let f = fwknop_fields(h, fwknop_args);
        let j = decode(h, keys, &f["Final SPA Data"]);
        let ctx = format!("fwknop {fwknop_args:?}");
        assert_eq!(j["random"], f["Random Value"], "{ctx}");
        assert_eq!(j["username"], f["Username"], "{ctx}");
        assert_eq!(j["timestamp"], f["Timestamp"].parse::<u64>().unwrap(), "{ctx}");
        assert_eq!(j["version"], f["FKO Version"], "{ctx}");
        assert_eq!(j["message_type"], leading_number(&f["Message Type"]), "{ctx}");
        assert_eq!(j["message"], f["Message String"], "{ctx}");
        assert_eq!(j["nat_access"], null_or(&f["Nat Access"]), "{ctx}");
        assert_eq!(j["server_auth"], null_or(&f["Server Auth"]), "{ctx}");
        let timeout = leading_number(&f["Client Timeout"]);
        assert_eq!(j["client_timeout"], if timeout == 0 { Value::Null } else { timeout.into() }, "{ctx}");
        assert_eq!(j["digest_type"], *digest, "{ctx}");
    }
}

#[test]
fn decode_fails_with_one_line_for_wrong_keys() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let f = fwknop_fields(h, &["-A", "tcp/22", "-a", "1.2.3.4", "--key-rijndael", "k1", "--key-hmac", "h1"]);
    let packet = &f["Final SPA Data"];
    for (keys, reason) in [
        (&["--key", "k1", "--hmac-key", "wrong"][..], "hmac mismatch"),
        (&["--key", "wrong", "--hmac-key", "h1"][..], "decryption failed"),
        (&["--key", "k1", "--hmac-key", "h1", "-M", "ecb"][..], "decryption failed"),
    ] {
        let mut args = vec!["decode"];
        args.extend_from_slice(keys);
        args.push(packet);
        let o = spa(h, &args);
        assert!(!o.status.success(), "{keys:?} must fail");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("spa: ") && err.contains(reason), "{err}");
        assert!(stdout(&o).is_empty());
    }
    // The packet may also come on stdin (as `-B` writes it, with a newline).
    let mut child = Command::new(SPA)
        .args(["decode", "--key", "k1", "--hmac-key", "h1"])
        .env("HOME", h)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{packet}").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let j: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(j["message"], "1.2.3.4,tcp/22");
}

#[test]
fn rc_stanzas_saved_by_fwknop_drive_spa() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let save = |args: &[&str]| {
        let o = Command::new("fwknop")
            .args(args)
            .args(["-D", "127.0.0.1", "--save-rc-stanza", "-T", "--no-save-args"])
            .env("HOME", h)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "fwknop --save-rc-stanza: {}", stderr(&o));
    };
    save(&[
        "-n",
        "myserver",
        "-A",
        "tcp/22,udp/53",
        "-a",
        "1.2.3.4",
        "--key-base64-rijndael",
        "dGVzdGtleTEyMw==",
        "--key-base64-hmac",
        "aG1hY2tleTQ1Ng==",
        "--use-hmac",
        "-m",
        "sha512",
        "--hmac-digest-type",
        "sha384",
        "-M",
        "ctr",
        "-f",
        "45",
        "-p",
        "40000",
        "-P",
        "tcp",
        "--time-offset-plus",
        "2min",
        "-U",
        "alice",
    ]);
    save(&[
        "-n",
        "natbox",
        "-A",
        "tcp/22",
        "-a",
        "5.6.7.8",
        "--key-rijndael",
        "k1",
        "--key-hmac",
        "h1",
        "-N",
        "10.0.0.5",
        "--nat-rand-port",
    ]);
    let rc = std::fs::read_to_string(h.join(".fwknoprc")).unwrap();
    assert!(rc.contains("[myserver]") && rc.contains("HMAC_DIGEST_TYPE"), "fwknop wrote the stanza: {rc}");

    let before = now();
    let o = spa(h, &["-n", "myserver", "-T"]);
    let after = now();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "no warnings for an rc file fwknop wrote: {}", stderr(&o));
    let packet = stdout(&o);
    assert_eq!(packet.lines().count(), 1, "-T prints the payload alone: {packet}");
    let j = decode(
        h,
        &[
            "--key-base64",
            "dGVzdGtleTEyMw==",
            "--hmac-key-base64",
            "aG1hY2tleTQ1Ng==",
            "--hmac-digest-type",
            "sha384",
            "-M",
            "ctr",
        ],
        packet.trim(),
    );
    assert_eq!(j["message"], "1.2.3.4,tcp/22,udp/53");
    assert_eq!(j["username"], "alice");
    assert_eq!(j["message_type"], 3);
    assert_eq!(j["client_timeout"], 45);
    assert_eq!(j["digest_type"], "sha512");
    let ts = j["timestamp"].as_u64().unwrap();
    assert!((before + 120..=after + 120).contains(&ts), "TIME_OFFSET 120 applied: {ts} vs {before}");

    // The command line overrides the stanza.
    let o = spa(h, &["-n", "myserver", "-T", "-A", "tcp/2222", "-U", "bob", "-f", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = decode(
        h,
        &[
            "--key-base64",
            "dGVzdGtleTEyMw==",
            "--hmac-key-base64",
            "aG1hY2tleTQ1Ng==",
            "--hmac-digest-type",
            "sha384",
            "-M",
            "ctr",
        ],
        stdout(&o).trim(),
    );
    assert_eq!(j["message"], "1.2.3.4,tcp/2222");
    assert_eq!(j["username"], "bob");
    assert_eq!(j["message_type"], 1);

    let o = spa(h, &["-n", "natbox", "-T"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = decode(h, &["--key", "k1", "--hmac-key", "h1"], stdout(&o).trim());
    assert_eq!(j["message_type"], 2);
    assert_eq!(j["nat_access"], "10.0.0.5,22");
    let msg = j["message"].as_str().unwrap();
    let port: u16 = msg.strip_prefix("5.6.7.8,tcp/").unwrap().parse().unwrap();
    assert!((10000..=65534).contains(&port), "{msg}");

    let o = spa(h, &["-n", "nosuch", "-T"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no stanza [nosuch]"), "{}", stderr(&o));
    assert!(rc == std::fs::read_to_string(h.join(".fwknoprc")).unwrap(), "spa -n only reads the rc file");
}

#[test]
fn rc_file_warnings_and_precedence() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let rc = h.join("custom.rc");
    write_private(
        &rc,
        "[default]\nKEY defaultkey\nACCESS tcp/1\nALLOW_IP 9.9.9.9\nSPOOF_USER dflt\n\n[srv]\nACCESS=tcp/2\nFROBNICATE yes\n",
    );
    let path = rc.to_str().unwrap();
    let o = spa(h, &["--rc-file", path, "-n", "srv", "-T"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim(), format!("spa: warning: {path}:9: unknown variable FROBNICATE; ignored"));
    let j = decode(h, &["--key", "defaultkey"], stdout(&o).trim());
    assert_eq!(j["message"], "9.9.9.9,tcp/2");
    assert_eq!(j["username"], "dflt");
    // --no-rc-file ignores it: then the key is missing and stdin is no terminal.
    let o = spa(h, &["--rc-file", path, "--no-rc-file", "-T"]);
    assert!(!o.status.success());
    let o = spa(h, &["--no-rc-file", "-T", "-A", "tcp/22", "-a", "1.2.3.4"]);
    assert!(!o.status.success());
    assert_eq!(stderr(&o).trim(), "spa: no encryption key given and stdin is not a terminal to ask for it");
}

#[test]
fn resolve_url_reads_the_external_address_from_a_local_page() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            request.push(line.trim_end().to_owned());
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<html>Your IP is 203.0.113.77</html>\n")
            .unwrap();
        request
    });
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let url = format!("http://127.0.0.1:{port}/cgi-bin/myip");
    let o = spa(h, &["-R", "--resolve-url", &url, "-A", "tcp/22", "--key-rijndael", "k", "-T"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let request = server.join().unwrap();
    assert_eq!(request[0], "GET /cgi-bin/myip HTTP/1.1");
    assert!(request.iter().any(|l| l == "User-Agent: Fwknop/2.6.10"), "{request:?}");
    assert!(request.iter().any(|l| l == "Host: 127.0.0.1"), "{request:?}");
    let j = decode(h, &["--key", "k"], stdout(&o).trim());
    assert_eq!(j["message"], "203.0.113.77,tcp/22");

    // A plain-HTTP page is used as asked, with fwknop's warning: its answer can be forged.
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("spa: warning: the -R URL http://127.0.0.1:") && err.contains("forge"), "{err}");

    // --resolve-http-only refuses an https:// page (as fwknop); an https:// page that does not
    // answer is a one-line error. (Nothing here goes to fwknop's default page.)
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let https = format!("https://127.0.0.1:{closed_port}/");
    for (args, needle) in [
        (vec!["-R", "--resolve-http-only", "--resolve-url", https.as_str()], "--resolve-http-only"),
        (vec!["-R", "--resolve-url", https.as_str()], "cannot connect to 127.0.0.1"),
    ] {
        let mut all = args.clone();
        all.extend(["-A", "tcp/22", "--key-rijndael", "k", "-T"]);
        let o = spa(h, &all);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("spa: ") && err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn bad_options_get_one_line_errors() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let base = ["-T", "-a", "1.2.3.4"];
    let long_cmd = format!("echo {}", "x".repeat(170));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-A", "tcp/22x", "--key-rijndael", "k"], "invalid -A/--access list"),
        (vec!["-A", "icmp", "--key-rijndael", "k"], "invalid -A/--access list"),
        (vec!["-A", "tcp/22", "--key-rijndael", "0123456789abcdef0123456789abcdef0"], "at most 32"),
        (
            vec![
                "-C",
                &long_cmd,
                "--key-rijndael",
                "k",
                "--key-hmac",
                "h",
                "-m",
                "sha512",
                "--hmac-digest-type",
                "sha512",
            ],
            "at most 399",
        ),
        (vec!["-A", "tcp/22,tcp/23", "-N", "10.0.0.5,22", "--key-rijndael", "k"], "exactly one proto/port"),
        (vec!["-A", "tcp/22", "--nat-port", "2222", "--key-rijndael", "k"], "--nat-port"),
        (vec!["-A", "tcp/22", "-M", "legacy", "--key-rijndael", "k", "--key-hmac", "h"], "legacy"),
        (vec!["-A", "tcp/22", "--time-offset-plus", "3weeks", "--key-rijndael", "k"], "time offset"),
        (vec!["-A", "tcp/22", "-P", "icmp", "--key-rijndael", "k"], "not supported"),
        (vec!["-A", "tcp/22", "-m", "sha999", "--key-rijndael", "k"], "sha999"),
        (vec!["-A", "tcp/22", "--no-such-option"], "--no-such-option"),
    ];
    for (extra, needle) in cases {
        let mut args = base.to_vec();
        args.extend(&extra);
        let o = spa(h, &args);
        let err = stderr(&o);
        assert!(!o.status.success(), "{extra:?} must fail");
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err}");
        assert!(err.starts_with("spa: ") && err.contains(needle), "{extra:?}: {err}");
        assert!(stdout(&o).is_empty(), "nothing printed on failure");
        assert!(!err.contains("0123456789abcdef"), "keys are never echoed: {err}");
    }
}

#[test]
fn generated_keys_work_for_every_hmac_type() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let mut seen = Vec::new();
    for t in ["md5", "sha1", "sha256", "sha384", "sha512", "sha3_256", "sha3_512"] {
        let o = spa(h, &["keygen", "--hmac-digest-type", t]);
        assert!(o.status.success(), "{t}: {}", stderr(&o));
        let out = stdout(&o);
        let key = out.lines().find_map(|l| l.strip_prefix("KEY_BASE64: ")).unwrap().to_owned();
        let hkey = out.lines().find_map(|l| l.strip_prefix("HMAC_KEY_BASE64: ")).unwrap().to_owned();
        assert!(!seen.contains(&key), "keys differ every time");
        seen.push(key.clone());
        let o = spa(
            h,
            &[
                "-T",
                "-A",
                "tcp/22",
                "-a",
                "1.2.3.4",
                "--key-base64-rijndael",
                &key,
                "--key-base64-hmac",
                &hkey,
                "--hmac-digest-type",
                t,
            ],
        );
        assert!(o.status.success(), "{t}: {}", stderr(&o));
        let j = decode(
            h,
            &["--key-base64", &key, "--hmac-key-base64", &hkey, "--hmac-digest-type", t],
            stdout(&o).trim(),
        );
        assert_eq!(j["message"], "1.2.3.4,tcp/22");
    }
    // -k is the fwknop spelling.
    let o = spa(h, &["-k"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("KEY_BASE64: "));
}

#[test]
fn test_mode_prints_only_the_payload_and_details_with_v() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let save = h.join("packet.txt");
    let o = spa(
        h,
        &[
            "-T",
            "-v",
            "-A",
            "tcp/22",
            "-a",
            "1.2.3.4",
            "--key-rijndael",
            "secretkey",
            "--key-hmac",
            "secrethmac",
            "-B",
            save.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1);
    let payload = out.trim();
    assert!(payload.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'), "{payload}");
    let err = stderr(&o);
    assert!(err.contains("Message String: 1.2.3.4,tcp/22"), "{err}");
    assert!(!err.contains("secretkey") && !err.contains("secrethmac"), "keys are never printed");
    assert_eq!(std::fs::read_to_string(&save).unwrap(), format!("{payload}\n"));
    // Without -v, stderr stays empty.
    let o = spa(h, &["-T", "-A", "tcp/22", "-a", "1.2.3.4", "--key-rijndael", "k"]);
    assert!(o.status.success());
    assert!(stderr(&o).is_empty());
}

#[test]
fn unresolvable_destination_is_a_one_line_error() {
    let home = tempfile::tempdir().unwrap();
    // `.invalid` names are answered locally (RFC 6761), so no DNS query leaves the machine.
    let o = spa(
        home.path(),
        &["-A", "tcp/22", "-a", "1.2.3.4", "-D", "no-such-host.invalid", "--key-rijndael", "k"],
    );
    assert!(!o.status.success());
    assert_eq!(stderr(&o), "spa: cannot resolve destination \"no-such-host.invalid\"\n");
    // Sending needs a destination at all.
    let o = spa(home.path(), &["-A", "tcp/22", "-a", "1.2.3.4", "--key-rijndael", "k"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("-D/--destination"), "{}", stderr(&o));
}

/// Reads from `r` until `needle` has been seen (safety limit: the reader's end).
fn read_until(r: &mut impl std::io::Read, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "ended before {needle:?}: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn missing_keys_are_prompted_for_on_a_terminal_without_echo() {
    let home = tempfile::tempdir().unwrap();
    // `script` (util-linux) runs spa on a pseudo-terminal.
    let inner = format!("{SPA} --no-rc-file -T -A tcp/22 -a 1.2.3.4 --use-hmac");
    let mut child = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env("HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run script (util-linux)");
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    read_until(&mut output, "Enter encryption key: ");
    input.write_all(b"typed-secret\n").unwrap();
    read_until(&mut output, "Enter HMAC key: ");
    input.write_all(b"typed-hmac\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut output, &mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    assert!(!rest.contains("typed-secret") && !rest.contains("typed-hmac"), "keys echoed: {rest}");
    let packet = rest.split_whitespace().last().expect("the packet");
    let j = decode(home.path(), &["--key", "typed-secret", "--hmac-key", "typed-hmac"], packet);
    assert_eq!(j["message"], "1.2.3.4,tcp/22");
}

#[test]
fn keys_from_fwknop_key_files() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let keyfile = h.join("keys");
    std::fs::write(&keyfile, "# fwknop -G format\n10.9.9.9: otherkey\n127.0.0.1: filekey\n").unwrap();
    let hmacfile = h.join("hmac");
    std::fs::write(&hmacfile, "filehmac\n").unwrap();
    let (k, hk) = (keyfile.to_str().unwrap(), hmacfile.to_str().unwrap());
    let o =
        spa(h, &["-T", "-A", "tcp/22", "-a", "1.2.3.4", "-D", "127.0.0.1", "-G", k, "--get-hmac-key", hk]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = decode(h, &["--key", "filekey", "--hmac-key", "filehmac"], stdout(&o).trim());
    assert_eq!(j["message"], "1.2.3.4,tcp/22");
    // The same through KEY_FILE / HMAC_KEY_FILE in an rc stanza.
    let rc = h.join("rc");
    write_private(
        &rc,
        &format!(
            "[s]\nSPA_SERVER 127.0.0.1\nKEY_FILE {k}\nHMAC_KEY_FILE {hk}\nACCESS udp/53\nALLOW_IP 1.2.3.4\n"
        ),
    );
    let o = spa(h, &["--rc-file", rc.to_str().unwrap(), "-n", "s", "-T"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = decode(h, &["--key", "filekey", "--hmac-key", "filehmac"], stdout(&o).trim());
    assert_eq!(j["message"], "1.2.3.4,udp/53");
    // No line for the destination: a clear error that names neither key.
    let o = spa(h, &["-T", "-A", "tcp/22", "-a", "1.2.3.4", "-D", "10.1.1.1", "-G", k]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no key for 10.1.1.1") && !err.contains("filekey") && !err.contains("otherkey"),
        "{err}"
    );
}

#[test]
fn a_resolver_cannot_write_to_the_terminal() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        s.write_all(b"HTTP/1.1 403 \x1b[2J\x1b[31mspa: fake\rline\r\n\r\n").unwrap();
    });
    let home = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let o = spa(home.path(), &["-R", "--resolve-url", &url, "-A", "tcp/22", "--key-rijndael", "k", "-T"]);
    server.join().unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("HTTP request failed: HTTP/1.1 403"), "{err}");
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    assert_eq!(err.lines().count(), 2, "the warning for http:// and the error: {err}");
}

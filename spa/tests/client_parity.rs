//! `spa` as a drop-in for the real fwknop client (Debian `fwknop-client`), without root: rc
//! stanzas `spa --save-rc-stanza` writes are read back by `fwknop -n`, the stanza list and the
//! rc file permission warning match fwknop's, a repeated option keeps its last value as in
//! fwknop, `~/.fwknop.run` is shared both ways (`-l`, `--show-last`), and every fwknop option
//! this client lacks is refused with its reason.
//!
//! Nothing here sends a packet: both clients run with `-T`. Each test has its own `HOME`.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const SPA: &str = env!("CARGO_BIN_EXE_spa");
/// 32-byte keys (base64 of "0123456789abcdef0123456789abcdef" and a text HMAC key).
const KEY_B64: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const HMAC: &str = "hmac-key-hmac-key-hmac-key-12345";

fn run(program: &str, home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env("HOME", home)
        .env_remove("SPOOF_USER")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn spa(home: &Path, args: &[&str]) -> Output {
    run(SPA, home, args, None)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output, what: &str) -> Output {
    assert!(o.status.success(), "{what} failed: {}{}", stdout(&o), stderr(&o));
    o
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `fwknop -T -v` → the "SPA Field Values" block as name → value.
fn fwknop_fields(home: &Path, args: &[&str]) -> HashMap<String, String> {
    let mut all = args.to_vec();
    all.extend(["-T", "-v", "--no-save-args"]);
    let o = ok(run("fwknop", home, &all, None), "fwknop");
    let text = stdout(&o) + &stderr(&o);
    let mut fields = HashMap::new();
    for line in text.lines().skip_while(|l| !l.starts_with("SPA Field Values")).skip(2) {
        let Some((k, v)) = line.split_once(": ") else { break };
        fields.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    assert!(fields.contains_key("Final SPA Data"), "no packet in fwknop output: {text}");
    fields
}

/// `spa decode` of `packet` with `keys`.
fn decode(home: &Path, keys: &[&str], packet: &str) -> Value {
    let mut args = vec!["decode"];
    args.extend_from_slice(keys);
    args.push(packet.trim());
    let o = ok(spa(home, &args), "spa decode");
    serde_json::from_str(stdout(&o).trim()).unwrap()
}

#[test]
fn stanzas_saved_by_spa_are_read_by_fwknop() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // A first stanza, then a second one: fwknop reads both; the file stays 0600.
    ok(
        spa(
            h,
            &[
                "-n",
                "gw",
                "--save-rc-stanza",
                "-A",
                "tcp/22,udp/53",
                "-a",
                "1.2.3.4",
                "-D",
                "127.0.0.1",
                "--key-base64-rijndael",
                KEY_B64,
                "--key-hmac",
                HMAC,
                "-m",
                "sha3_256",
                "--hmac-digest-type",
                "sha384",
                "-M",
                "ctr",
                "-f",
                "45",
                "-U",
                "alice",
                "-p",
                "40000",
                "-P",
                "tcp",
                "--time-offset-minus",
                "2min",
                "-T",
            ],
        ),
        "spa --save-rc-stanza",
    );
    ok(
        spa(
            h,
            &[
                "--save-rc-stanza",
                "-D",
                "10.9.8.7",
                "-A",
                "tcp/22",
                "-N",
                "10.0.0.5,2222",
                "-s",
                "--key-base64-rijndael",
                KEY_B64,
                "--key-hmac",
                HMAC,
                "-T",
            ],
        ),
        "spa --save-rc-stanza named by -D",
    );
    let rc = h.join(".fwknoprc");
    assert_eq!(mode(&rc), 0o600);
    let text = std::fs::read_to_string(&rc).unwrap();
    assert!(text.contains("[gw]\n") && text.contains("[10.9.8.7]\n"), "{text}");
    assert!(text.contains("\nDIGEST_TYPE                 sha3_256\n"), "fwknop's layout: {text}");

    let f = fwknop_fields(h, &["-n", "gw"]);
    assert_eq!(f["Message String"], "1.2.3.4,tcp/22,udp/53");
    assert_eq!(f["Username"], "alice");
    assert_eq!(f["Client Timeout"], "45");
    assert_eq!(f["Digest Type"], "6 (SHA3_256)");
    assert_eq!(f["HMAC Type"], "4 (SHA384)");
    assert_eq!(f["Encryption Mode"], "6 (CTR)");
    // fwknop's packet, made from spa's stanza, opens with the saved keys.
    let j = decode(
        h,
        &["--key-base64", KEY_B64, "--hmac-key", HMAC, "--hmac-digest-type", "sha384", "-M", "ctr"],
        &f["Final SPA Data"],
    );
    assert_eq!(j["message"], "1.2.3.4,tcp/22,udp/53");
    let f = fwknop_fields(h, &["-n", "10.9.8.7"]);
    assert_eq!(f["Message String"], "0.0.0.0,tcp/22");
    assert_eq!(f["Nat Access"], "10.0.0.5,2222");

    // Saving again replaces the stanza's variables; with no terminal to ask, the old key stays
    // and the new one is not written (fwknop asks "Overwrite [N/y]?").
    let o = ok(
        spa(
            h,
            &[
                "-n",
                "gw",
                "--save-rc-stanza",
                "-A",
                "tcp/80",
                "-a",
                "5.6.7.8",
                "--key-rijndael",
                "another-key-0123456789abcdef012",
                "-T",
            ],
        ),
        "spa --save-rc-stanza again",
    );
    assert!(stderr(&o).contains("KEY_BASE64 in [gw] kept"), "{}", stderr(&o));
    let text = std::fs::read_to_string(&rc).unwrap();
    let gw = |text: &str| text.split('[').find(|s| s.starts_with("gw]")).unwrap().to_owned();
    assert!(gw(&text).contains(KEY_B64) && !text.contains("another-key"), "{text}");
    assert!(!text.contains("sha3_256"), "the old stanza's other variables went: {text}");
    let f = fwknop_fields(h, &["-n", "gw", "--use-hmac", "--key-hmac", HMAC]);
    assert_eq!(f["Message String"], "5.6.7.8,tcp/80");
    // --force-stanza replaces the keys too.
    ok(
        spa(
            h,
            &[
                "-n",
                "gw",
                "--save-rc-stanza",
                "--force-stanza",
                "-A",
                "tcp/80",
                "-a",
                "5.6.7.8",
                "--key-rijndael",
                "another-key-0123456789abcdef012",
                "--key-hmac",
                HMAC,
                "-T",
            ],
        ),
        "spa --force-stanza",
    );
    let text = std::fs::read_to_string(&rc).unwrap();
    assert!(!gw(&text).contains(KEY_B64) && gw(&text).contains("another-key"), "{text}");
    let f = fwknop_fields(h, &["-n", "gw"]);
    let j =
        decode(h, &["--key", "another-key-0123456789abcdef012", "--hmac-key", HMAC], &f["Final SPA Data"]);
    assert_eq!(j["message"], "5.6.7.8,tcp/80");

    // The stanza list is fwknop's, line for line.
    let ours = stdout(&ok(spa(h, &["--stanza-list"]), "spa --stanza-list"));
    let theirs = stdout(&ok(run("fwknop", h, &["--stanza-list"], None), "fwknop --stanza-list"));
    assert_eq!(ours, theirs);
    assert_eq!(ours.lines().count(), 3, "{ours}");

    // What fwknop's rc format cannot hold is refused, never written.
    let before = std::fs::read_to_string(&rc).unwrap();
    let o = spa(h, &["-n", "bad", "--save-rc-stanza", "-A", "tcp/22, udp/53", "-a", "1.2.3.4", "-T"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot save ACCESS: its value holds a blank"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&rc).unwrap(), before);
    let o = spa(h, &["--no-rc-file", "-n", "x", "--save-rc-stanza", "-A", "tcp/22"]);
    assert!(!o.status.success() && stderr(&o).contains("--no-rc-file"), "{}", stderr(&o));
}

#[test]
fn generated_keys_go_to_a_file_or_a_stanza() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let file = h.join("keys");
    let o = ok(spa(h, &["-K", file.to_str().unwrap(), "--hmac-digest-type", "sha512"]), "spa -K");
    assert_eq!(stdout(&o), format!("[+] Wrote Rijndael and HMAC keys to: {}\n", file.display()));
    assert_eq!(mode(&file), 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let key = text.lines().find_map(|l| l.strip_prefix("KEY_BASE64: ")).unwrap().to_owned();
    let hkey = text.lines().find_map(|l| l.strip_prefix("HMAC_KEY_BASE64: ")).unwrap().to_owned();
    assert_eq!(key.len(), 44);
    assert_eq!(hkey.len(), 172, "a SHA-512 block of key");

    // -k with --save-rc-stanza writes the new keys into the stanza, and fwknop uses them.
    let o = ok(
        spa(h, &["-k", "--save-rc-stanza", "-n", "new", "-D", "127.0.0.1", "-A", "tcp/22", "-a", "1.2.3.4"]),
        "spa -k --save-rc-stanza",
    );
    let rc = h.join(".fwknoprc");
    assert_eq!(stdout(&o), format!("[+] Wrote Rijndael and HMAC keys to rc file: {}\n", rc.display()));
    let text = std::fs::read_to_string(&rc).unwrap();
    let get = |var: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(var).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("{var}: {text}"))
    };
    let (key, hkey) = (get("KEY_BASE64 "), get("HMAC_KEY_BASE64 "));
    let f = fwknop_fields(h, &["-n", "new"]);
    let j = decode(h, &["--key-base64", &key, "--hmac-key-base64", &hkey], &f["Final SPA Data"]);
    assert_eq!(j["message"], "1.2.3.4,tcp/22");
    assert!(!h.join(".fwknop.run").exists(), "key generation does not knock, so saves no command line");
    // Keys under 16 bytes are refused.
    let o = spa(h, &["-k", "--key-len", "8"]);
    assert!(!o.status.success() && stderr(&o).contains("--key-len"), "{}", stderr(&o));
}

#[test]
fn rc_file_permissions_are_warned_about_as_fwknop_does() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let rc = h.join(".fwknoprc");
    std::fs::write(
        &rc,
        format!("[s]\nKEY_BASE64 {KEY_B64}\nHMAC_KEY {HMAC}\nACCESS tcp/22\nALLOW_IP 1.2.3.4\n"),
    )
    .unwrap();
    for m in [0o644, 0o640, 0o604, 0o660, 0o400, 0o700, 0o600] {
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(m)).unwrap();
        let ours = ok(spa(h, &["-n", "s", "-T"]), "spa");
        let theirs = ok(run("fwknop", h, &["-n", "s", "-T", "--no-save-args"], None), "fwknop");
        let warned = stderr(&ours).contains("permissions should only be user read/write (0600, -rw-------)");
        let fwknop_warned =
            (stdout(&theirs) + &stderr(&theirs)).contains("permissions should only be user read/write");
        assert_eq!(warned, fwknop_warned, "mode {m:o}: {}", stderr(&ours));
        assert_eq!(warned, m != 0o600, "mode {m:o}");
        if warned {
            assert!(stderr(&ours).contains(&format!("not {m:04o}: it holds keys")), "{}", stderr(&ours));
        }
    }
}

/// The same arguments to `fwknop -T -v` and `spa -T -v`: the same message fields.
fn same_fields(h: &Path, args: &[&str]) {
    let f = fwknop_fields(h, args);
    let mut all = args.to_vec();
    all.extend(["-T", "-v", "--no-save-args"]);
    let o = ok(spa(h, &all), "spa");
    let err = stderr(&o);
    let field = |name: &str| {
        err.lines().find_map(|l| l.trim().strip_prefix(&format!("{name}: ")).map(str::to_owned)).unwrap()
    };
    for name in ["Username", "Message String", "Nat Access", "Client Timeout"] {
        assert_eq!(field(name), f[name], "{name} for {args:?}");
    }
    // "1 (Access msg)" and "1 (access)": the numbers.
    let number = |s: &str| s.split_whitespace().next().unwrap().to_owned();
    for name in ["Message Type", "Digest Type"] {
        assert_eq!(number(&field(name)), number(&f[name]), "{name} for {args:?}");
    }
}

#[test]
fn a_repeated_option_keeps_its_last_value_as_in_fwknop() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let k = ["--key-rijndael", "k-0123456789abcdef", "-D", "127.0.0.1"];
    for args in [
        &["-A", "tcp/22", "-A", "tcp/22,udp/53", "-a", "1.2.3.4"][..],
        &["-A", "tcp/22", "-a", "1.2.3.4", "-a", "5.6.7.8"],
        &["-A", "tcp/22", "-a", "1.2.3.4", "-s"],
        &["-A", "tcp/22", "-s", "-a", "1.2.3.4"],
        &["-A", "tcp/22", "-a", "1.2.3.4", "-s", "-a", "5.6.7.8"],
        &["-A", "tcp/22", "-a", "1.2.3.4", "-R"],
        &["-A", "tcp/22", "-R", "-a", "1.2.3.4"],
        &["-A", "tcp/22", "-s", "-f", "10", "-f", "20"],
        &["-A", "tcp/22", "-s", "-m", "md5", "-m", "sha1"],
        &["-A", "tcp/22", "-s", "-U", "a", "-U", "b"],
        &["-A", "tcp/22", "-s", "-N", "10.0.0.1:22", "-N", "10.0.0.2:22"],
    ] {
        let mut all = args.to_vec();
        all.extend(k);
        same_fields(h, &all);
    }
}

#[test]
fn test_mode_refuses_what_a_send_refuses() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // No address to let in: fwknop -T fails too ("Invalid allow IP address").
    let o = spa(h, &["--no-rc-file", "-T", "-A", "tcp/22", "--key-rijndael", "k-0123456789abcdef"]);
    assert!(!o.status.success());
    assert_eq!(stderr(&o), "spa: say which address to let in: -a IP, -s (the packet's source) or -R\n");
    assert!(stdout(&o).is_empty());
    let o = run(
        "fwknop",
        h,
        &["-T", "-A", "tcp/22", "--key-rijndael", "k", "--no-save-args", "--no-rc-file"],
        None,
    );
    assert!((stdout(&o) + &stderr(&o)).contains("Invalid allow IP"), "{}", stderr(&o));
}

#[test]
fn every_missing_fwknop_option_is_refused_with_its_reason() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // With the `gpg` feature these are GPG mode's options (tests/client_gpg.rs); without it they
    // are refused too.
    let gpg_mode: &[(&[&str], &str)] = &[
        (&["-g"][..], "GnuPG"),
        (&["--gpg-encryption"], "GnuPG"),
        (&["--gpg-recipient-key", "ABCD"], "GnuPG"),
        (&["--gpg-signer-key", "ABCD"], "GnuPG"),
        (&["--gpg-no-signing-pw"], "GnuPG"),
    ];
    let gpg_mode = if cfg!(feature = "gpg") { &[][..] } else { gpg_mode };
    for &(args, reason) in gpg_mode.iter().chain(
        [
            (&["--gpg-home-dir", "/x"][..], "GnuPG"),
            (&["--gpg-exe", "/usr/bin/gpg"], "GnuPG"),
            (&["--gpg-agent"], "GnuPG"),
            (&["-Q", "1.2.3.4"], "raw sockets"),
            (&["--spoof-source", "1.2.3.4"], "raw sockets"),
            (&["--spoof-src", "1.2.3.4"], "raw sockets"),
            (&["--icmp-type", "8"], "raw sockets"),
            (&["--icmp-code", "0"], "raw sockets"),
            (&["-H", "proxy:3128"], "HTTP proxy"),
            (&["--http-proxy", "proxy:3128"], "HTTP proxy"),
            (&["-w", "/usr/bin/wget"], "wget"),
            (&["--wget-cmd", "/usr/bin/wget"], "wget"),
            (&["--use-wget-user-agent"], "wget"),
            (&["--fault-injection-tag", "x"], "fwknop's own build"),
        ]
        .iter(),
    ) {
        let mut all = args.to_vec();
        all.extend(["-A", "tcp/22", "-a", "1.2.3.4", "-T", "--key-rijndael", "k-0123456789abcdef"]);
        let o = spa(h, &all);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("spa: {}", "")) && err.contains("is not supported: "), "{err}");
        assert!(err.contains(reason), "{args:?}: {err}");
        assert!(!err.contains("unexpected argument"), "{err}");
    }
    // The same variables in an rc file are warnings, not errors.
    let rc = h.join(".fwknoprc");
    std::fs::write(&rc, "[default]\nUSE_GPG_AGENT Y\nWGET_CMD /usr/bin/wget\nSPOOF_SOURCE_IP 1.2.3.4\n")
        .unwrap();
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o =
        ok(spa(h, &["-A", "tcp/22", "-a", "1.2.3.4", "-T", "--key-rijndael", "k-0123456789abcdef"]), "spa");
    assert_eq!(stderr(&o).lines().filter(|l| l.contains("is not supported (")).count(), 3, "{}", stderr(&o));
}

#[test]
fn the_last_command_line_is_saved_and_replayed() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let run_file = h.join(".fwknop.run");
    let args = [
        "-A",
        "tcp/22",
        "-a",
        "1.2.3.4",
        "--key-rijndael",
        "k-0123456789abcdef",
        "-C",
        "echo 'hi there'",
        "-T",
    ];
    // -C and -A: -C makes a command message. The argument with blanks survives.
    ok(spa(h, &args), "spa");
    assert_eq!(mode(&run_file), 0o600);
    let saved = std::fs::read_to_string(&run_file).unwrap();
    assert!(saved.starts_with(SPA) && saved.ends_with(" \n"), "fwknop's format: {saved:?}");
    let o = ok(spa(h, &["--show-last"]), "spa --show-last");
    assert!(stdout(&o).starts_with("Last fwknop client command line: "), "{}", stdout(&o));
    let o = ok(spa(h, &["-l"]), "spa -l");
    let j = decode(h, &["--key", "k-0123456789abcdef"], &stdout(&o));
    assert_eq!(j["message"], "1.2.3.4,echo 'hi there'");
    assert_eq!(std::fs::read_to_string(&run_file).unwrap(), saved, "-l does not save again");
    let o = spa(h, &["-l", "-A", "tcp/80"]);
    assert!(!o.status.success() && stderr(&o).contains("take no other options"), "{}", stderr(&o));

    // A line fwknop saved, replayed by spa.
    ok(
        run(
            "fwknop",
            h,
            &[
                "-A",
                "udp/53",
                "-a",
                "5.6.7.8",
                "--key-rijndael",
                "k-0123456789abcdef",
                "-D",
                "127.0.0.1",
                "-T",
            ],
            None,
        ),
        "fwknop",
    );
    assert!(std::fs::read_to_string(&run_file).unwrap().starts_with("fwknop "));
    let o = ok(spa(h, &["--last-cmd"]), "spa --last-cmd");
    let j = decode(h, &["--key", "k-0123456789abcdef"], &stdout(&o));
    assert_eq!(j["message"], "5.6.7.8,udp/53");

    // --no-save-args, NO_SAVE_ARGS in the rc file, and -E.
    std::fs::remove_file(&run_file).unwrap();
    ok(
        spa(
            h,
            &[
                "--no-save-args",
                "-A",
                "tcp/22",
                "-a",
                "1.2.3.4",
                "--key-rijndael",
                "k-0123456789abcdef",
                "-T",
            ],
        ),
        "spa",
    );
    assert!(!run_file.exists());
    let rc = h.join(".fwknoprc");
    std::fs::write(&rc, "[default]\nNO_SAVE_ARGS Y\n").unwrap();
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(spa(h, &["-A", "tcp/22", "-a", "1.2.3.4", "--key-rijndael", "k-0123456789abcdef", "-T"]), "spa");
    assert!(!run_file.exists());
    std::fs::remove_file(&rc).unwrap();
    let other = h.join("args");
    ok(
        spa(
            h,
            &[
                "-E",
                other.to_str().unwrap(),
                "-A",
                "tcp/22",
                "-a",
                "1.2.3.4",
                "--key-rijndael",
                "k-0123456789abcdef",
                "-T",
            ],
        ),
        "spa -E",
    );
    assert!(!run_file.exists() && other.exists());
    let o = ok(spa(h, &["-l", "-E", other.to_str().unwrap()]), "spa -l -E");
    assert!(!stdout(&o).trim().is_empty());
}

#[test]
fn keys_from_stdin() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let o = run(
        SPA,
        h,
        &["--no-rc-file", "--stdin", "--use-hmac", "-A", "tcp/22", "-a", "1.2.3.4", "-T"],
        Some("k-0123456789abcdef\nhmac-0123456789abcdef\n"),
    );
    let o = ok(o, "spa --stdin");
    let j = decode(h, &["--key", "k-0123456789abcdef", "--hmac-key", "hmac-0123456789abcdef"], &stdout(&o));
    assert_eq!(j["message"], "1.2.3.4,tcp/22");
}

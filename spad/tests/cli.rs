//! The command line as an admin uses it: `spad check`, `spad backends`.

use std::process::Command;

fn spad(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spad")).args(args).output().unwrap()
}

const GOOD: &str = r#"
[listen]
addresses = ["127.0.0.1:62201"]
[firewall]
backend = "none"
[replay]
state_dir = "/nonexistent/spad-state"
[[access]]
name = "a"
source = "any"
key = "k1"
hmac_key = "k2"
"#;

#[test]
fn check_accepts_a_good_config_and_names_file_line_and_key_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("spad.toml");
    std::fs::write(&p, GOOD).unwrap();
    let out = spad(&["check", "--config", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok (1 access stanzas, backend none, socket mode)"), "{text}");
    // Keys readable by others are flagged.
    assert!(
        text.contains("readable by others")
            || std::fs::metadata(&p)
                .map(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o077 == 0
                })
                .unwrap()
    );

    std::fs::write(&p, GOOD.replace("source = \"any\"", "source = \"any\"\nfw_access_timeout = \"soon\""))
        .unwrap();
    let out = spad(&["check", "--config", p.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("spad: {}:11: access.fw_access_timeout", p.display())), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    std::fs::write(&p, GOOD.replace("backend = \"none\"", "backend = \"pf\"")).unwrap();
    let out = spad(&["check", "--config", p.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let available = spad::linked_backends::expected().join(", ");
    assert!(err.contains(&format!("unknown backend \"pf\"; this build contains: {available}")), "{err}");
}

#[test]
fn backends_lists_what_this_build_contains() {
    let out = spad(&["backends"]);
    assert!(out.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(names, spad::linked_backends::expected());
}

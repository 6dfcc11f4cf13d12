//! `spa -R` over HTTPS, for real: a resolver page served by `openssl s_server` in one network
//! namespace, `spa` in another, a test CA made here with `openssl` and handed to `spa` through
//! `SSL_CERT_FILE` (which replaces the system store, as with OpenSSL). Without that CA, or for
//! an address the certificate does not name, `spa` refuses the answer.
//!
//! Needs root (network namespaces); fails loudly without it. Traffic stays between the two
//! namespaces this test makes.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use spa_e2e::{Netns, link, require_root};

const SPA: &str = env!("CARGO_BIN_EXE_spa");
const SERVER: &str = "10.201.9.1";
/// A second address of the server, not named in its certificate.
const SERVER_UNNAMED: &str = "10.201.9.3";
const KEY: &str = "key-0123456789abcdef0123456789ab";

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A CA (`ca.pem`) and a server certificate for `SERVER` signed by it (`srv.pem`, `srv.key`).
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=spa-test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=resolver",
            "-addext",
            &format!("subjectAltName=IP:{SERVER}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
        ],
    );
}

fn spa(client: &Netns, home: &Path, ca: Option<&Path>, url: &str) -> Output {
    let mut cmd = client.cmd(SPA);
    cmd.args(["--no-rc-file", "--no-save-args", "-T", "-A", "tcp/22", "--key-rijndael", KEY, "-R"])
        .args(["--resolve-url", url])
        .env("HOME", home)
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::null());
    match ca {
        Some(ca) => cmd.env("SSL_CERT_FILE", ca),
        None => cmd.env_remove("SSL_CERT_FILE"),
    };
    cmd.output().unwrap()
}

#[test]
fn resolve_ip_over_https_trusts_only_the_given_ca() {
    require_root();
    let server = Netns::new("rhs");
    let client = Netns::new("rhc");
    link(
        &server,
        "rh0",
        &[&format!("{SERVER}/24"), &format!("{SERVER_UNNAMED}/24")],
        &client,
        "rh1",
        &["10.201.9.2/24"],
    );
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    // s_server -HTTP sends the file as the whole response.
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("myip"), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n203.0.113.77\n")
        .unwrap();
    let mut cmd = server.cmd("openssl");
    cmd.args(["s_server", "-accept", "8443", "-HTTP", "-quiet"])
        .args(["-cert", dir.path().join("srv.pem").to_str().unwrap()])
        .args(["-key", dir.path().join("srv.key").to_str().unwrap()])
        .current_dir(&www)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _srv = server.spawn(&mut cmd);
    let start = Instant::now();
    while !server.sh_ok("ss -Hltn 'sport = :8443' | grep -q 8443") {
        assert!(start.elapsed() < Duration::from_secs(10), "s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ca = dir.path().join("ca.pem");
    let url = format!("https://{SERVER}:8443/myip");

    let o = spa(&client, dir.path(), Some(&ca), &url);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty(), "no warning for https: {}", String::from_utf8_lossy(&o.stderr));
    let packet = String::from_utf8(o.stdout).unwrap();
    let d = Command::new(SPA).args(["decode", "--key", KEY, packet.trim()]).output().unwrap();
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    let j: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    assert_eq!(j["message"], "203.0.113.77,tcp/22", "the address the HTTPS page gave");

    // The system store does not know the test CA; the certificate does not name the second
    // address. Each is a one-line error, and nothing is printed.
    for (ca, url, needle) in [
        (None, url.clone(), "UnknownIssuer"),
        (Some(ca.as_path()), format!("https://{SERVER_UNNAMED}:8443/myip"), "certificate not valid for name"),
    ] {
        let o = spa(&client, dir.path(), ca, &url);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{url}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("spa: cannot learn the external address (-R): ") && err.contains(needle),
            "{err}"
        );
        assert!(o.stdout.is_empty());
    }
}

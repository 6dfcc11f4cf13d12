//! `spad check` beyond the files: what the running daemon would hit. Each test runs the real
//! binary (in a network namespace of its own where the firewall or the interfaces matter) and
//! asserts what an admin reads: the exit status (0 ok, 1 errors, 2 warnings only) and each
//! `error:` / `warning:` line with its file, line and key.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use spa_e2e::Netns;

mod support;
use support::{Daemon, write_private};

const KEY: &str = "spad-check-test-encryption-key-3";
const HMAC_KEY: &str = "spad-check-test-hmac-key-0123456789abcdef0123";

/// A configuration with `listen` and `firewall` as given, one good stanza, state and audit in
/// `dir`.
fn config(dir: &Path, listen: &str, firewall: &str, extra: &str) -> PathBuf {
    let text = format!(
        "[listen]\n{listen}\n[firewall]\n{firewall}\n[replay]\nstate_dir = \"{d}/state\"\n[log]\naudit = \
         \"{d}/audit.jsonl\"\n{extra}\n[[access]]\nname = \"a\"\nsource = \"any\"\nopen_ports = [\"tcp/22\"]\n\
         key = \"{KEY}\"\nhmac_key = \"{HMAC_KEY}\"\n",
        d = dir.display()
    );
    let p = dir.join("spad.toml");
    write_private(&p, &text);
    p
}

/// The 1-based line of the first line of `p` that starts with `start` (after spaces).
fn line(p: &Path, start: &str) -> usize {
    let text = std::fs::read_to_string(p).unwrap();
    text.lines().position(|l| l.trim_start().starts_with(start)).unwrap_or_else(|| panic!("{start}")) + 1
}

fn spad() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spad"))
}

/// `spad check` run by `cmd` (a prefix such as `ip netns exec NS`): (status, stderr, stdout).
fn check_with(mut cmd: Command, p: &Path) -> (Option<i32>, String, String) {
    let out: Output = cmd.args(["check", "--config", p.to_str().unwrap()]).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn check(p: &Path) -> (Option<i32>, String, String) {
    check_with(spad(), p)
}

/// `spad check` inside `ns`.
fn check_in(ns: &Netns, p: &Path) -> (Option<i32>, String, String) {
    check_with(ns.cmd(env!("CARGO_BIN_EXE_spad")), p)
}

#[test]
fn capture_interfaces_must_exist_and_be_listed_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(
        dir.path(),
        "mode = \"capture\"\ninterfaces = [\n  \"lo\",\n  \"spa-nope0\",\n  \"lo\",\n]",
        "backend = \"none\"",
        "",
    );
    let (status, err, out) = check(&p);
    let first_lo = line(&p, "\"lo\"");
    let nope = line(&p, "\"spa-nope0\"");
    let p = p.display();
    assert_eq!(status, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "error: {p}:{nope}: listen.interfaces: interface \"spa-nope0\" does not exist\n\
             error: {p}:{}: listen.interfaces: \"lo\" is listed twice (first at line {first_lo}): every knock \
             would be seen twice\n",
            nope + 1
        )
    );
    assert!(out.is_empty(), "{out}");
}

#[test]
fn listen_addresses_given_twice_shadowed_or_not_local_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(
        dir.path(),
        "addresses = [\n  \"127.0.0.1:62201\",\n  \"[::]:62201\",\n  \"127.0.0.1:62201\",\n  \"0.0.0.0:62201\",\n  \
         \"192.0.2.77:62202\",\n]",
        "backend = \"none\"",
        "",
    );
    let (status, err, _) = check(&p);
    let l = line(&p, "\"127.0.0.1:62201\"");
    let p = p.display();
    assert_eq!(status, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "error: {p}:{}: listen.addresses: 127.0.0.1:62201 is listed twice (first at line {l})\n\
             error: {p}:{}: listen.addresses: 127.0.0.1:62201 and 0.0.0.0:62201 cannot both be bound: the \
             wildcard address takes the port on every address of its family; keep one\n\
             error: {p}:{}: listen.addresses: 192.0.2.77 is not an address of this host, so 192.0.2.77:62202 \
             cannot be bound\n",
            l + 2,
            l + 3,
            l + 4
        )
    );

    // IPv4 and IPv6 wildcards on one port go together (spad's IPv6 sockets are v6-only).
    let p = config(dir.path(), "addresses = [\"0.0.0.0:62201\", \"[::]:62201\"]", "backend = \"none\"", "");
    let (status, err, out) = check(&p);
    assert_eq!(status, Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(out, format!("{}: ok (1 access stanzas, backend none, socket mode)\n", p.display()));
}

#[test]
fn capture_mode_needs_cap_net_raw() {
    spa_e2e::require_root();
    let dir = tempfile::tempdir().unwrap();
    let p = config(dir.path(), "mode = \"capture\"\ninterfaces = [\"lo\"]", "backend = \"none\"", "");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", "-net_raw", env!("CARGO_BIN_EXE_spad")]);
    let (status, err, _) = check_with(cmd, &p);
    assert_eq!(status, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "error: {}:{}: listen.mode = \"capture\": this process lacks CAP_NET_RAW, which packet sockets need; \
             run spad as root, or give it the capability\n",
            p.display(),
            line(&p, "mode")
        )
    );
    // With it: fine.
    let (status, err, out) = check(&p);
    assert_eq!(status, Some(0), "{err}");
    assert!(out.ends_with("ok (1 access stanzas, backend none, capture mode)\n"), "{out}");
}

#[test]
fn a_port_below_1024_needs_cap_net_bind_service() {
    spa_e2e::require_root();
    // A fresh namespace: net.ipv4.ip_unprivileged_port_start is 1024 there, whatever the host's.
    let ns = Netns::new("ckb");
    let dir = tempfile::tempdir().unwrap();
    let p = config(dir.path(), "addresses = [\"127.0.0.1:999\"]", "backend = \"none\"", "");
    let mut cmd = ns.cmd("setpriv");
    cmd.args(["--bounding-set", "-net_bind_service", env!("CARGO_BIN_EXE_spad")]);
    let (status, err, _) = check_with(cmd, &p);
    assert_eq!(status, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "error: {}:{}: listen.addresses: 127.0.0.1:999: binding a port below 1024 needs CAP_NET_BIND_SERVICE \
             (or root elsewhere than Linux), which this process lacks\n",
            p.display(),
            line(&p, "addresses")
        )
    );
    let (status, err, _) = check_in(&ns, &p);
    assert_eq!((status, err.as_str()), (Some(0), ""));
}

#[test]
fn the_nft_backend_needs_cap_net_admin_and_its_program() {
    spa_e2e::require_root();
    let ns = Netns::new("ckn");
    let dir = tempfile::tempdir().unwrap();
    let fw = "backend = \"nft\"\n[firewall.nft]\ntable = \"spa\"\nprotect = [\"tcp/22\"]";
    let p = config(dir.path(), "addresses = [\"127.0.0.1:62201\"]", fw, "");
    let table = line(&p, "[firewall.nft]");

    // A fresh namespace, everything there: nothing to say.
    let (status, err, out) = check_in(&ns, &p);
    assert_eq!((status, err.as_str()), (Some(0), ""), "{out}");

    let mut cmd = ns.cmd("setpriv");
    cmd.args(["--bounding-set", "-net_admin", env!("CARGO_BIN_EXE_spad")]);
    let (status, err, _) = check_with(cmd, &p);
    assert_eq!(status, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "error: {}:{table}: firewall.nft: this process lacks CAP_NET_ADMIN (the nft backend changes the \
             firewall); run spad as root, or give it the capability (systemd: AmbientCapabilities=CAP_NET_ADMIN \
             with CapabilityBoundingSet= keeping it)\n",
            p.display()
        )
    );

    let p = config(
        dir.path(),
        "addresses = [\"127.0.0.1:62201\"]",
        &format!("{fw}\nnft = \"/nonexistent/nft\""),
        "",
    );
    let (status, err, _) = check_in(&ns, &p);
    assert_eq!(status, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "error: {}:{}: firewall.nft.nft: the nft program is missing: /nonexistent/nft: does not exist; install \
             nftables, or set nft to its path\n",
            p.display(),
            line(&p, "nft = ")
        )
    );
}

#[test]
fn the_iptables_backend_needs_its_programs_and_ipset() {
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let p = config(
        dir.path(),
        "addresses = [\"127.0.0.1:62201\"]",
        "backend = \"iptables\"\n[firewall.iptables]\nvariant = \"legacy\"",
        "",
    );
    let mut cmd = spad();
    cmd.env("PATH", empty.path());
    let (status, err, _) = check_with(cmd, &p);
    let e = empty.path().display();
    assert_eq!(status, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "error: {p}:{variant}: firewall.iptables.variant: iptables programs are missing: \
             iptables-legacy-restore, iptables-legacy-save, ip6tables-legacy-restore, ip6tables-legacy-save; \
             install iptables\n\
             error: {p}:{table}: firewall.iptables: ipset is missing (ipset is not in {e}); install ipset\n",
            p = p.display(),
            variant = line(&p, "variant"),
            table = line(&p, "[firewall.iptables]"),
        )
    );
}

#[test]
fn script_commands_must_exist_and_be_executable() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("fw-open");
    std::fs::write(&open, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fw = format!(
        "backend = \"script\"\n[firewall.script]\nopen = [\"{}\", \"{{source}}\"]\nclose = [\"fw-close-nowhere\"]",
        open.display()
    );
    let p = config(dir.path(), "addresses = [\"127.0.0.1:62201\"]", &fw, "");
    let (status, err, _) = check(&p);
    assert_eq!(status, Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert_eq!(
        lines[0],
        format!(
            "error: {}:{}: firewall.script.open: the program cannot be run: {}: is not executable (mode 644)",
            p.display(),
            line(&p, "open = "),
            open.display()
        )
    );
    assert!(
        lines[1].starts_with(&format!(
            "error: {}:{}: firewall.script.close: the program cannot be run: fw-close-nowhere is not in ",
            p.display(),
            line(&p, "close = ")
        )),
        "{err}"
    );
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fw = fw.replace("fw-close-nowhere", "true");
    let p = config(dir.path(), "addresses = [\"127.0.0.1:62201\"]", &fw, "");
    let (status, err, _) = check(&p);
    assert_eq!((status, err.as_str()), (Some(0), ""));
}

#[test]
fn firewalld_must_be_on_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(
        dir.path(),
        "addresses = [\"127.0.0.1:62201\"]",
        "backend = \"firewalld\"\n[firewall.firewalld]\nzone = \"public\"",
        "",
    );
    let mut cmd = spad();
    cmd.env("DBUS_SYSTEM_BUS_ADDRESS", format!("unix:path={}/no-bus", dir.path().display()));
    let (status, err, _) = check_with(cmd, &p);
    assert_eq!(status, Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "error: {}:{}: firewall.firewalld: d-bus call connect to the system bus failed",
            p.display(),
            line(&p, "[firewall.firewalld]")
        )),
        "{err}"
    );
}

#[test]
fn a_backend_option_error_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(
        dir.path(),
        "addresses = [\"127.0.0.1:62201\"]",
        "backend = \"nft\"\n[firewall.nft]\ntable = \"spa\"\ntabel = \"x\"",
        "",
    );
    let (status, err, out) = check(&p);
    assert_eq!(status, Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "error: {}:{}: firewall.nft: invalid backend configuration",
            p.display(),
            line(&p, "tabel")
        )),
        "{err}"
    );
    assert!(err.contains("tabel"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.is_empty());
}

/// The host's own default-drop table, as `/etc/nftables.conf` often has it.
const HOST_DROP: &str = "table inet filter {
  chain input { type filter hook input priority 0; policy drop;
    ct state established,related accept
    iif lo accept
  }
  chain forward { type filter hook forward priority 0; policy drop;
    ct state established,related accept
  }
}
";

fn nft(ns: &Netns, script: &str) {
    let mut child = ns.cmd("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft -f: {script}");
}

#[test]
fn a_host_default_drop_table_is_a_warning_with_what_to_do_and_the_mark_settles_it() {
    spa_e2e::require_root();
    let ns = Netns::new("ckh");
    nft(&ns, HOST_DROP);
    let dir = tempfile::tempdir().unwrap();
    let fw = "backend = \"nft\"\n[firewall.nft]\ntable = \"spa\"\nprotect = [\"tcp/22\"]";
    let p = config(dir.path(), "addresses = [\"127.0.0.1:62201\"]", fw, "");
    let (status, err, out) = check_in(&ns, &p);
    assert_eq!(status, Some(2), "warnings only: {err}");
    assert_eq!(
        err,
        format!(
            "warning: {}:{}: firewall.nft: table inet filter, chain input (hook input, priority 0) has policy drop: \
             it drops granted connections to this host (tcp/22) although spad's chains accept them (in nftables an \
             accept ends only its own chain); set mark = 0x100 in [firewall.nft] (a bit nothing else uses) and add \
             `meta mark & 0x100 == 0x100 accept` to that chain (see /usr/share/doc/spad/nft/admin-example.nft)\n",
            p.display(),
            line(&p, "[firewall.nft]")
        )
    );
    assert!(out.ends_with("ok (1 access stanzas, backend nft, socket mode), 1 warning\n"), "{out}");
    // --warnings-ok: for ExecStartPre=.
    let out = ns
        .cmd(env!("CARGO_BIN_EXE_spad"))
        .args(["check", "--warnings-ok", "-c", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    // Forwarded grants: the forward chain counts too.
    let p = config(dir.path(), "addresses = [\"127.0.0.1:62201\"]", fw, "[nat]\nenable_forwarding = true");
    let (status, err, _) = check_in(&ns, &p);
    assert_eq!(status, Some(2), "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.lines().nth(1).unwrap().contains(
            "chain forward (hook forward, priority 0) has policy drop: it drops forwarded (NAT) grants"
        ),
        "{err}"
    );

    // The mark, accepted by the host's chain: nothing to say.
    nft(&ns, "add rule inet filter input meta mark & 0x100 == 0x100 accept\n");
    let marked = format!("{fw}\nmark = 0x100");
    let p = config(dir.path(), "addresses = [\"127.0.0.1:62201\"]", &marked, "");
    let (status, err, _) = check_in(&ns, &p);
    assert_eq!((status, err.as_str()), (Some(0), ""));

    // But our chains after the host's: the mark comes too late.
    let p = config(
        dir.path(),
        "addresses = [\"127.0.0.1:62201\"]",
        &format!("{marked}\nfilter_priority = 10"),
        "",
    );
    let (status, err, _) = check_in(&ns, &p);
    assert_eq!(status, Some(2), "{err}");
    assert_eq!(
        err,
        format!(
            "warning: {}:{}: firewall.nft.filter_priority: table inet filter, chain input (hook input, priority 0) \
             accepts mark 0x100 but runs before spad's chains (priority 0 is not above filter_priority 10), so the \
             mark is not set yet and its policy drop drops granted connections to this host (tcp/22); set \
             filter_priority below 0\n",
            p.display(),
            line(&p, "filter_priority")
        )
    );
}

#[test]
fn iptables_forward_that_drops_replies_and_another_tables_drop_are_warnings() {
    spa_e2e::require_root();
    let ns = Netns::new("cki");
    nft(&ns, HOST_DROP);
    ns.sh("iptables-nft -P FORWARD DROP");
    let dir = tempfile::tempdir().unwrap();
    let fw = "backend = \"iptables\"\n[firewall.iptables]\nvariant = \"nft\"\nprotect = [\"tcp/22\"]";
    let p = config(dir.path(), "addresses = [\"127.0.0.1:62201\"]", fw, "[nat]\nenable_forwarding = true");
    let (status, err, _) = check_in(&ns, &p);
    assert_eq!(status, Some(2), "{err}");
    let at = format!("warning: {}:{}: firewall.iptables: ", p.display(), line(&p, "[firewall.iptables]"));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{at}iptables FORWARD has policy DROP and accepts no ESTABLISHED traffic: spad's SPA_FORWARD \
                 accepts the client's side of a forwarded grant, the replies are dropped; add `iptables -I FORWARD \
                 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`"
            ),
            format!(
                "{at}table inet filter, chain input (hook input, priority 0) has policy drop: it drops granted \
                 connections to tcp/22 although spad's chain accepts them (an iptables ACCEPT does not stop another \
                 table's drop); accept them in that chain (spad's DROP keeps protected ports closed to everyone else)"
            ),
            format!(
                "{at}table inet filter, chain forward (hook forward, priority 0) has policy drop: it drops forwarded \
                 (NAT) grants although spad's chain accepts them; add `ct status dnat accept` and `ct state \
                 established,related accept` to that chain"
            ),
        ]
    );
}

#[test]
fn the_daemon_logs_the_same_finding_once_at_start() {
    spa_e2e::require_root();
    let ns = Netns::new("cks");
    nft(&ns, HOST_DROP);
    let dir = tempfile::tempdir().unwrap();
    let fw = "backend = \"nft\"\n[firewall.nft]\ntable = \"spa\"\nprotect = [\"tcp/22\"]";
    let p = config(dir.path(), "addresses = [\"127.0.0.1:62201\"]", fw, "");
    let text = std::fs::read_to_string(&p).unwrap();
    let (_, err, _) = check_in(&ns, &p);
    let finding = err.strip_prefix("warning: ").unwrap().trim_end().to_owned();
    let mut d = Daemon::start(&ns, dir.path(), &text);
    let log = d.log_text();
    assert_eq!(log.matches(&finding).count(), 1, "{finding}\nnot once in:\n{log}");
    assert!(log.lines().any(|l| l.contains("WARN") && l.contains(&finding)), "{log}");
    d.stop();
}

/// Modern stanzas need `[server] key_file`, a private file holding the server's key; `spad
/// check` names the stanza or the key's line, and prints the public key the clients need.
#[test]
fn modern_stanzas_need_a_private_server_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let user = spa_engine::UserSigningKey::from_seed(&[5; 32]).public_key();
    let stanza = format!(
        "[[access]]\nname = \"pk\"\nsource = \"any\"\nformat = \"modern\"\nusers = [\"{user} carol\"]\n\
         open_ports = [\"tcp/22\"]\n"
    );
    let p = config(d, "addresses = [\"127.0.0.1:62201\"]", "backend = \"none\"", &stanza);
    let (status, err, _) = check(&p);
    assert_eq!(status, Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "error: {}:{}: access stanza pk: format = \"modern\" needs",
            p.display(),
            line(&p, "format")
        )) && err.contains("[server] key_file"),
        "{err}"
    );

    let key = d.join("server.key");
    let out = spad().args(["keygen", "--out", key.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = String::from_utf8(out.stdout).unwrap();
    let server = format!("[server]\nkey_file = \"{}\"\n{stanza}", key.display());
    let p = config(d, "addresses = [\"127.0.0.1:62201\"]", "backend = \"none\"", &server);
    let (status, err, out) = check(&p);
    assert_eq!(status, Some(0), "{err}");
    assert!(
        out.ends_with(&format!(
            "ok (2 access stanzas, backend none, socket mode)\nserver public key: {public}"
        )),
        "{out}"
    );

    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (status, err, _) = check(&p);
    assert_eq!(status, Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "error: {}:{}: server.key_file: {}: ",
            p.display(),
            line(&p, "key_file"),
            key.display()
        )) && err.contains("mode 644"),
        "{err}"
    );
}

//! `spa`: the SPA client. It speaks fwknop's wire protocol and takes fwknop's options and
//! `~/.fwknoprc`, so an fwknop user can switch without relearning anything.
//!
//! - `spa [knock] -A tcp/22 -a 1.2.3.4 -D server ...`: build and send one packet ([`knock`]).
//! - `spa keygen` (or `-k`): print a new key pair in fwknop's rc format ([`keygen`]).
//! - `spa decode --key-base64 K PACKET`: decrypt a packet and print its fields as JSON
//!   ([`decode`]).
//!
//! Every knock setting is defined once, in [`table::OPTIONS`].

mod connect;
mod decode;
#[cfg(feature = "gpg")]
mod gpg;
mod keygen;
mod keys;
mod knock;
mod manual;
mod modern;
mod net;
mod opts;
mod rc;
mod runfile;
mod table;
mod tls;

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::error::ErrorKind;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use clap_complete::Shell;
use spa_engine::Entropy;

use crate::decode::DecodeArgs;
use crate::keygen::KeygenArgs;
use crate::knock::KnockArgs;

/// `spa --version`: the version and the commit it was built from (`build.rs`).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SPA_GIT_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "spa",
    version = VERSION,
    about = "Single Packet Authorization client, compatible with fwknop",
    args_conflicts_with_subcommands = true,
    // fwknop takes an option given twice and keeps the last value.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    knock: KnockArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Build and send one SPA packet (what bare `spa` does).
    #[command(args_override_self = true)]
    Knock(Box<KnockArgs>),
    /// Knock, then connect to HOST PORT over TCP and relay stdin and stdout (for ssh's
    /// ProxyCommand: `ssh -o ProxyCommand='spa connect -n gw %h %p' host`). With the modern
    /// format the knock names the connection's source port. Errors go to stderr.
    #[command(args_override_self = true)]
    Connect(Box<crate::connect::ConnectArgs>),
    /// Print a new random encryption key and HMAC key in fwknop's rc format; with --modern,
    /// make your Ed25519 key pair for the modern format; with --qr, also a QR code for a phone.
    Keygen(KeygenArgs),
    /// Authenticate and decrypt one packet and print its fields as JSON.
    Decode(DecodeArgs),
    /// Print the completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print the manual page spa(1) as roff (for packagers).
    #[command(hide = true)]
    Man,
}

/// Randomness from the operating system.
struct OsRng;

impl Entropy for OsRng {
    fn fill(&mut self, buf: &mut [u8]) {
        if let Err(e) = getrandom::fill(buf) {
            // Without randomness no packet or key may be made; there is nothing to fall back to.
            eprintln!("spa: cannot get random bytes from the operating system: {e}");
            std::process::exit(1);
        }
    }
}

/// Parses a command line (the program name first).
fn parse(args: &[OsString]) -> Result<Cli, clap::Error> {
    Cli::command().try_get_matches_from(args).and_then(|m| Cli::from_arg_matches(&m))
}

/// Parses a saved knock command line (for `-l`).
fn parse_knock(args: &[OsString]) -> Result<KnockArgs> {
    let cli = parse(args).map_err(|e| anyhow::anyhow!("{}", one_line(&e)))?;
    match cli.command {
        None => Ok(cli.knock),
        Some(Command::Knock(k)) => Ok(*k),
        Some(_) => bail!("it is not a knock"),
    }
}

/// clap's first line without its "error: ", like every other error.
fn one_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match parse(&argv) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            eprintln!("spa: {} (see spa --help)", one_line(&e));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Command::Knock(a)) => knock::run(&a, &argv),
        Some(Command::Connect(a)) => connect::run(&a),
        Some(Command::Keygen(a)) => keygen::run(&a),
        Some(Command::Decode(a)) => decode::run(&a),
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "spa", &mut script);
            print(&script)
        }
        Some(Command::Man) => manual::spa_1(Cli::command()).and_then(|page| print(page.as_bytes())),
        None => knock::run(&cli.knock, &argv),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spa: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes generated text to stdout; a closed pipe (`| head`) is an error, not a panic.
fn print(text: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text).and_then(|()| out.flush()).context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    use spa_engine::{DigestType, EncryptionMode};

    use super::*;
    use crate::opts::Transport;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn cli_parses_fwknop_options() {
        let c = cli(&[
            "spa",
            "-A",
            "tcp/22",
            "-a",
            "1.2.3.4",
            "-D",
            "gw",
            "-p",
            "4000",
            "-P",
            "http",
            "-f",
            "30",
            "-m",
            "sha512",
            "--hmac-digest-type",
            "sha3_256",
            "-M",
            "ctr",
            "--time-offset-plus",
            "2min",
            "-U",
            "bob",
            "-T",
            "-v",
        ])
        .unwrap();
        assert!(c.command.is_none());
        let p = c.knock.given.settings().unwrap();
        assert_eq!(p.server_proto, Some(Transport::Http));
        assert_eq!(p.time_offset, Some(120));
        assert_eq!(p.digest_type, Some(DigestType::Sha512));
        assert_eq!(p.mode, Some(EncryptionMode::Ctr));
        assert!(p.wants_hmac());
        assert!(cli(&["spa", "knock", "-A", "tcp/22"]).is_ok());
        assert!(cli(&["spa", "-P", "icmp"]).unwrap().knock.given.settings().is_err());
    }

    #[test]
    fn repeated_options_keep_the_last_value() {
        for prefix in [&["spa"][..], &["spa", "knock"][..]] {
            let mut args = prefix.to_vec();
            args.extend([
                "-A",
                "tcp/22",
                "-A",
                "tcp/22,udp/53",
                "-T",
                "-T",
                "-n",
                "a",
                "-n",
                "b",
                "-v",
                "-v",
            ]);
            let c = cli(&args).unwrap();
            let k = match c.command {
                Some(Command::Knock(k)) => *k,
                _ => c.knock,
            };
            let s = k.given.settings().unwrap();
            assert_eq!(s.access.as_deref(), Some("tcp/22,udp/53"), "{prefix:?}");
            assert_eq!(s.verbose(), 2);
        }
    }

    /// Every option of fwknop's client (client/cmd_opts.h, fwknop 2.6.10) is either taken or
    /// refused with its reason: never clap's "unexpected argument".
    #[test]
    fn every_fwknop_option_is_known() {
        const LONG: &[(&str, bool)] = &[
            ("allow-ip", true),
            ("access", true),
            ("save-packet-append", false),
            ("save-packet", true),
            ("save-rc-stanza", false),
            ("force-stanza", false),
            ("stanza-list", false),
            ("no-save-args", false),
            ("server-cmd", true),
            ("digest-type", true),
            ("destination", true),
            ("save-args-file", true),
            ("encryption-mode", true),
            ("fd", true),
            ("fw-timeout", true),
            ("fault-injection-tag", true),
            ("gpg-encryption", false),
            ("gpg-recipient-key", true),
            ("gpg-signer-key", true),
            ("gpg-home-dir", true),
            ("gpg-exe", true),
            ("gpg-agent", false),
            ("gpg-no-signing-pw", false),
            ("get-key", true),
            ("get-hmac-key", true),
            ("help", false),
            ("http-proxy", true),
            ("key-gen", false),
            ("key-gen-file", true),
            ("key-rijndael", true),
            ("key-base64-rijndael", true),
            ("key-base64-hmac", true),
            ("key-hmac", true),
            ("key-len", true),
            ("hmac-key-len", true),
            ("hmac-digest-type", true),
            ("icmp-type", true),
            ("icmp-code", true),
            ("last-cmd", false),
            ("nat-access", true),
            ("named-config", true),
            ("nat-local", false),
            ("nat-port", true),
            ("nat-rand-port", false),
            ("no-home-dir", false),
            ("no-rc-file", false),
            ("server-port", true),
            ("server-proto", true),
            ("spoof-source", true),
            ("spoof-src", true),
            ("rc-file", true),
            ("rand-port", false),
            ("resolve-ip-http", false),
            ("resolve-ip-https", false),
            ("resolve-http-only", false),
            ("resolve-url", true),
            ("server-resolve-ipv4", false),
            ("show-last", false),
            ("source-ip", false),
            ("source-port", true),
            ("stdin", false),
            ("test", false),
            ("time-offset-plus", true),
            ("time-offset-minus", true),
            ("user-agent", true),
            ("use-hmac", false),
            ("use-wget-user-agent", false),
            ("spoof-user", true),
            ("verbose", false),
            ("version", false),
            ("wget-cmd", true),
        ];
        // GETOPTS_OPTION_STRING "a:A:bB:C:D:E:f:gG:hH:kK:lm:M:n:N:p:P:Q:rRsS:Tu:U:vVw:"
        let short = "a:A:bB:C:D:E:f:gG:hH:kK:lm:M:n:N:p:P:Q:rRsS:Tu:U:vVw:";
        let value = |v: bool| if v { "16" } else { "" };
        let mut cases: Vec<Vec<String>> =
            LONG.iter().map(|(l, v)| [format!("--{l}"), value(*v).to_owned()].into()).collect();
        let chars: Vec<char> = short.chars().collect();
        for (i, c) in chars.iter().enumerate().filter(|(_, c)| **c != ':') {
            cases.push([format!("-{c}"), value(chars.get(i + 1) == Some(&':')).to_owned()].into());
        }
        for case in cases {
            let mut args = vec!["spa".to_owned()];
            args.extend(case.iter().filter(|a| !a.is_empty()).cloned());
            let os: Vec<OsString> = args.iter().map(OsString::from).collect();
            if let Err(e) = parse(&os) {
                let msg = e.to_string();
                assert!(
                    !msg.contains("unexpected argument") && !msg.contains("unrecognized"),
                    "{case:?}: {msg}"
                );
                if e.kind() == ErrorKind::ArgumentConflict {
                    assert!(msg.contains("is not supported: "), "{case:?}: {msg}");
                }
            }
        }
    }
}

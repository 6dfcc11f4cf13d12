//! `spad`, the SPA daemon's command line. See the library for the daemon itself.

mod manual;

use std::io::Write as _;
use std::path::PathBuf;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use clap_complete::Shell;
use spad::config::error_chain;

/// `spad -V`: the version and the commit it was built from (`build.rs`).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SPA_GIT_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "spad",
    about = "SPA daemon (fwknop-compatible)",
    long_about = "SPA daemon (fwknop-compatible single packet authorization).\n\nspad receives \
                  fwknop-compatible SPA packets on UDP sockets or by passive capture, verifies \
                  them (HMAC first, then decryption, timestamp, replay and the access stanzas) \
                  and opens the firewall for the client for a while through a backend (nft, \
                  iptables, script). Without a command it runs in the foreground until SIGTERM \
                  or SIGINT, logging to stderr, one JSON audit line per decision."
)]
struct Cli {
    /// The configuration file.
    #[arg(short, long, global = true, default_value = "/etc/spad/spad.toml")]
    config: PathBuf,
    /// Verify and log, but change no firewall (the `none` backend; state kept apart).
    #[arg(long)]
    test: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the configuration and what the daemon would hit with it; exit 0 (ok), 1
    /// (errors) or 2 (warnings only).
    #[command(long_about = "Validate the configuration and what the running daemon would hit with it: the \
                  files (errors name file, line and key), the capture interfaces, listen addresses \
                  given twice or not on this host, placeholder and short keys, the privileges \
                  (CAP_NET_ADMIN for the firewall, CAP_NET_RAW for capture, CAP_NET_BIND_SERVICE \
                  for ports below 1024), and the backend's own \
                  preflight: its programs and kernel interfaces (nft and nfnetlink, \
                  iptables-restore and ipset, firewalld on the bus, pfctl, ipfw, the scripts), and \
                  other firewall tables or chains whose drop would swallow its grants, with what to \
                  do. Each finding is one `error:` or `warning:` line on stderr; the summary goes \
                  to stdout.\n\nExit status: 0 nothing found; 1 at least one error (spad would \
                  refuse to start or not work); 2 warnings only (it would run, probably not as \
                  meant). A command-line error also exits with 2.")]
    Check {
        /// Exit 0, not 2, when there are only warnings (for systemd's ExecStartPre= and scripts
        /// that must stop on errors only).
        #[arg(long)]
        warnings_ok: bool,
    },
    /// List the backends this build contains.
    Backends,
    /// List the active grants.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Also show what the backend says the firewall holds, beside the ledger, with the
        /// differences marked (`-` missing, `+` not in the ledger, `~` other grant, `!` should
        /// be gone).
        #[arg(long)]
        firewall: bool,
        /// Instead, the live grants of every gateway that shares this one's Redis
        /// (`[replay] store = "redis"`), and which gateways are connected.
        #[arg(long, conflicts_with = "firewall")]
        all_gateways: bool,
    },
    /// How the running spad is doing: uptime, backend, live grants, counters of grants and of
    /// rejects by reason, the last tamper repair and backend error, packets the kernel
    /// dropped, the shared store. Asked over the control socket (root only).
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The control socket (default: `[control] socket` of the configuration).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Close a grant now: by its id, or every live grant of an address (opened for it, or
    /// knocked from it). Done at once by the running spad over the control socket, audited as
    /// `revoke` with who asked (uid, user, pid); exits 1 when nothing matched. With
    /// `--gateway`, the grant of any gateway sharing this one's Redis is revoked through the
    /// shared store's revoke channel instead (waits until the grant is unpublished).
    Revoke {
        /// The gateway whose grant it is, through Redis (`[replay] store = "redis"`).
        #[arg(long)]
        gateway: Option<String>,
        /// The control socket (default: `[control] socket` of the configuration).
        #[arg(long, value_name = "PATH", conflicts_with = "gateway")]
        socket: Option<PathBuf>,
        /// The grant's id as `spad list` and the audit log show it, or (without `--gateway`)
        /// an address.
        #[arg(value_name = "ID|ADDRESS")]
        target: String,
    },
    /// Reload the configuration of the running spad, as SIGHUP does, and report the result:
    /// what changed, or the error with its file and line (exit 1; the running configuration
    /// and the live grants stay).
    Reload {
        /// The control socket (default: `[control] socket` of the configuration).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Write a spad.toml (and access.d/*.toml) equivalent to an fwknop server's configuration;
    /// list every fwknop variable not carried over, and why.
    #[command(
        name = "import-fwknop",
        long_about = "Write a spad.toml (and access.d/*.toml when access.conf includes other files) \
                      equivalent to an fwknop server's configuration, so the clients that knock \
                      fwknopd knock spad with the same keys and options. For this command, --config \
                      names fwknopd.conf (default /etc/fwknop/fwknopd.conf, if it exists). Every \
                      fwknop variable that is not carried over, or whose value spad refuses (short \
                      keys, fwknop's __CHANGEME__ placeholders), is listed on stderr with its file, \
                      line and the reason, and as a comment in the file written; a stanza spad cannot \
                      run (GnuPG only) is written commented out. The files are created with mode \
                      0600; existing files are never replaced without --force. Check the result with \
                      `spad check`."
    )]
    ImportFwknop {
        /// fwknop's access.conf (default: fwknopd.conf's ACCESS_FILE, else /etc/fwknop/access.conf).
        #[arg(long)]
        access: Option<PathBuf>,
        /// The directory to write spad.toml and access.d/ into.
        #[arg(long, default_value = spad::import_fwknop::DEFAULT_OUT)]
        out: PathBuf,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
        /// The backend to write (default: fwknopd.conf's FIREWALL_EXE, else iptables as fwknop's).
        #[arg(long)]
        backend: Option<String>,
    },
    /// Write the server's key pair for modern-format stanzas: the secret key to a file (mode
    /// 0600) for `[server] key_file`, the public key (`x25519:...`) to stdout for the clients.
    Keygen {
        /// The secret key file to write.
        #[arg(long, value_name = "FILE", default_value = spad::keygen::DEFAULT_KEY_FILE)]
        out: PathBuf,
        /// Replace the file if it exists (every client then needs the new public key).
        #[arg(long)]
        force: bool,
    },
    /// Remove everything the configured backend owns in the firewall, protections included.
    /// Stop spad first.
    Teardown,
    /// Print the completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print a manual page as roff: spad(8) or spad.toml(5) (for packagers).
    #[command(hide = true)]
    Man {
        /// Which page.
        #[arg(default_value = "spad.8")]
        page: manual::Page,
    },
}

/// The command line with the version texts filled in: `-V` gives the version and commit,
/// `--version` adds the backends this build contains (what a packager chose).
fn command() -> clap::Command {
    let backends =
        spa_backends::Registry::collect().map(|r| r.names().join(", ")).unwrap_or_else(|e| e.to_string());
    let long: &'static str = Box::leak(format!("{VERSION}\nbackends: {backends}").into_boxed_str());
    Cli::command().version(VERSION).long_version(long)
}

/// Writes generated text to stdout; a closed pipe (`| head`) is an error, not a panic.
fn print(text: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text)?;
    out.flush()?;
    Ok(())
}

fn main() {
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let config_given = matches.value_source("config") == Some(clap::parser::ValueSource::CommandLine);
    let result = match cli.command {
        None => spad::run(&cli.config, cli.test),
        Some(Cmd::Check { warnings_ok }) => match spad::check::run(&cli.config, warnings_ok) {
            Ok(status) => std::process::exit(status),
            Err(e) => Err(e),
        },
        Some(Cmd::Backends) => spad::backends(),
        Some(Cmd::List { json, firewall, all_gateways }) => {
            spad::list(&cli.config, json, firewall, all_gateways)
        }
        Some(Cmd::Status { json, socket }) => spad::status(&cli.config, socket.as_deref(), json),
        Some(Cmd::Revoke { gateway, socket, target }) => {
            spad::revoke(&cli.config, gateway.as_deref(), &target, socket.as_deref())
        }
        Some(Cmd::Reload { socket }) => spad::reload_running(&cli.config, socket.as_deref()),
        Some(Cmd::Teardown) => spad::teardown(&cli.config),
        Some(Cmd::Keygen { out, force }) => spad::keygen::run(&out, force),
        Some(Cmd::ImportFwknop { access, out, force, backend }) => {
            // Here --config names fwknopd.conf.
            let default = std::path::Path::new(spad::import_fwknop::DEFAULT_CONFIG);
            let fwknopd =
                if config_given { Some(cli.config.as_path()) } else { default.exists().then_some(default) };
            spad::import_fwknop::run(access.as_deref(), fwknopd, &out, force, backend.as_deref())
        }
        Some(Cmd::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "spad", &mut script);
            print(&script)
        }
        Some(Cmd::Man { page }) => manual::render(page, command()).and_then(|text| print(text.as_bytes())),
    };
    if let Err(e) = result {
        eprintln!("spad: {}", error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

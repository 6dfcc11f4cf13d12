//! `spad`, the SPA daemon's command line. See the library for the daemon itself.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use spad::config::error_chain;

#[derive(Parser)]
#[command(name = "spad", version, about = "SPA daemon (fwknop-compatible)")]
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
    /// Validate the configuration and exit (non-zero with the errors).
    Check,
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
    /// Revoke a grant of this or another gateway now, through the revoke channel of the
    /// shared store (`[replay] store = "redis"`); waits until the grant is unpublished.
    Revoke {
        /// The gateway whose grant it is (default: this one's `[replay.redis] gateway`).
        #[arg(long)]
        gateway: Option<String>,
        /// The grant's id, as `spad list` shows it.
        id: String,
    },
    /// Remove everything the configured backend owns in the firewall, protections included.
    /// Stop spad first.
    Teardown,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        None => spad::run(&cli.config, cli.test),
        Some(Cmd::Check) => spad::check(&cli.config),
        Some(Cmd::Backends) => spad::backends(),
        Some(Cmd::List { json, firewall, all_gateways }) => {
            spad::list(&cli.config, json, firewall, all_gateways)
        }
        Some(Cmd::Revoke { gateway, id }) => spad::revoke(&cli.config, gateway.as_deref(), &id),
        Some(Cmd::Teardown) => spad::teardown(&cli.config),
    };
    if let Err(e) = result {
        eprintln!("spad: {}", error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

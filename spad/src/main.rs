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
        Some(Cmd::List { json, firewall }) => spad::list(&cli.config, json, firewall),
        Some(Cmd::Teardown) => spad::teardown(&cli.config),
    };
    if let Err(e) = result {
        eprintln!("spad: {}", error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

//! `spa`: the SPA client. It speaks fwknop's wire protocol and takes fwknop's options and
//! `~/.fwknoprc`, so an fwknop user can switch without relearning anything.
//!
//! - `spa [knock] -A tcp/22 -a 1.2.3.4 -D server ...`: build and send one packet.
//! - `spa keygen` (or `-k`): print a new key pair in fwknop's rc format.
//! - `spa decode --key-base64 K PACKET`: decrypt a packet and print its fields as JSON.

mod keys;
mod manual;
mod net;
mod opts;
mod rc;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use clap::error::ErrorKind;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use clap_complete::Shell;
use spa_engine::digest::HmacState;
use spa_engine::keys::{MAX_HMAC_KEY_LEN, keys_equal};
use spa_engine::message::FKO_VERSION;
use spa_engine::packet::{OpenKeys, SealOptions};
use spa_engine::{DigestType, EncryptionMode, Entropy, SpaMessage, b64};
use zeroize::Zeroizing;

use crate::opts::{Allow, KeySpec, NatOpts, Partial};
use crate::rc::RcFile;

/// `spa --version`: the version and the commit it was built from (`build.rs`).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SPA_GIT_COMMIT"), ")");

/// fwknop's default SPA port.
const DEFAULT_PORT: u16 = 62201;

#[derive(Parser)]
#[command(
    name = "spa",
    version = VERSION,
    about = "Single Packet Authorization client, compatible with fwknop",
    args_conflicts_with_subcommands = true
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
    Knock(Box<KnockArgs>),
    /// Print a new random encryption key and HMAC key in fwknop's rc format.
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

/// fwknop's client options, with fwknop's names and meanings.
#[derive(Args, Default)]
struct KnockArgs {
    /// Ports to open: proto/port[,proto/port...], e.g. tcp/22,udp/53.
    #[arg(short = 'A', long = "access", value_name = "PROTO/PORT,...")]
    access: Option<String>,
    /// The address the server should let in.
    #[arg(short = 'a', long = "allow-ip", value_name = "IP", conflicts_with_all = ["source_ip", "resolve_ip_https"])]
    allow_ip: Option<IpAddr>,
    /// Let the server use the packet's source address (sends 0.0.0.0).
    #[arg(short = 's', long = "source-ip", conflicts_with = "resolve_ip_https")]
    source_ip: bool,
    /// Learn our external address from the --resolve-url page.
    #[arg(short = 'R', long = "resolve-ip-https")]
    resolve_ip_https: bool,
    /// An http:// URL whose body holds our external address (for -R).
    #[arg(long = "resolve-url", value_name = "URL")]
    resolve_url: Option<String>,
    /// The SPA server: hostname, IPv4 or IPv6 address.
    #[arg(short = 'D', long = "destination", value_name = "HOST")]
    destination: Option<String>,
    /// Destination port (default 62201).
    #[arg(short = 'p', long = "server-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    server_port: Option<u16>,
    /// How to send: udp (default), tcp or http.
    #[arg(short = 'P', long = "server-proto", value_name = "PROTO")]
    server_proto: Option<String>,
    /// NAT access to an internal service: host[:,]port.
    #[arg(short = 'N', long = "nat-access", value_name = "HOST[:,]PORT")]
    nat_access: Option<String>,
    /// Local NAT: forward to a port on the server itself.
    #[arg(long = "nat-local")]
    nat_local: bool,
    /// The externally visible port to ask for in NAT modes.
    #[arg(long = "nat-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    nat_port: Option<u16>,
    /// Ask for a random external port (10000..65534) in NAT modes.
    #[arg(long = "nat-rand-port")]
    nat_rand_port: bool,
    /// How long (seconds) the server should keep the rule.
    #[arg(short = 'f', long = "fw-timeout", value_name = "SECONDS")]
    fw_timeout: Option<u32>,
    /// A command for the server to run (command message).
    #[arg(short = 'C', long = "server-cmd", value_name = "CMD")]
    server_cmd: Option<String>,
    /// Username to put in the packet.
    #[arg(short = 'U', long = "spoof-user", value_name = "USER")]
    spoof_user: Option<String>,
    /// Inner digest: md5, sha1, sha256, sha384, sha512, sha3_256, sha3_512.
    #[arg(short = 'm', long = "digest-type", value_name = "TYPE")]
    digest_type: Option<DigestType>,
    /// HMAC digest (implies --use-hmac).
    #[arg(long = "hmac-digest-type", value_name = "TYPE")]
    hmac_digest_type: Option<DigestType>,
    /// Rijndael mode: cbc (default), ecb, cfb, ofb, ctr, legacy.
    #[arg(short = 'M', long = "encryption-mode", value_name = "MODE")]
    encryption_mode: Option<EncryptionMode>,
    /// The Rijndael key (visible to ps; prefer the rc file or the prompt).
    #[arg(long = "key-rijndael", value_name = "KEY")]
    key_rijndael: Option<String>,
    /// The Rijndael key, base64.
    #[arg(long = "key-base64-rijndael", value_name = "B64")]
    key_base64_rijndael: Option<String>,
    /// The HMAC key (implies --use-hmac).
    #[arg(long = "key-hmac", value_name = "KEY")]
    key_hmac: Option<String>,
    /// The HMAC key, base64 (implies --use-hmac).
    #[arg(long = "key-base64-hmac", value_name = "B64")]
    key_base64_hmac: Option<String>,
    /// Add an HMAC (authenticated encryption).
    #[arg(long = "use-hmac")]
    use_hmac: bool,
    /// Read the Rijndael key from a fwknop key file (`host: key` lines).
    #[arg(short = 'G', long = "get-key", value_name = "FILE")]
    get_key: Option<PathBuf>,
    /// Read the HMAC key from a fwknop key file.
    #[arg(long = "get-hmac-key", value_name = "FILE")]
    get_hmac_key: Option<PathBuf>,
    /// Move the timestamp forward, e.g. 60sec, 2min, 1hour, 1day.
    #[arg(long = "time-offset-plus", value_name = "TIME")]
    time_offset_plus: Option<String>,
    /// Move the timestamp back, e.g. 60sec, 2min, 1hour, 1day.
    #[arg(long = "time-offset-minus", value_name = "TIME")]
    time_offset_minus: Option<String>,
    /// Use this stanza of the rc file (over [default]).
    #[arg(short = 'n', long = "named-config", value_name = "STANZA")]
    named_config: Option<String>,
    /// Read this rc file instead of ~/.fwknoprc.
    #[arg(long = "rc-file", value_name = "FILE", conflicts_with = "no_rc_file")]
    rc_file: Option<PathBuf>,
    /// Do not read any rc file.
    #[arg(long = "no-rc-file")]
    no_rc_file: bool,
    /// Build the packet and print it on stdout; send nothing.
    #[arg(short = 'T', long = "test")]
    test: bool,
    /// Also write the packet to FILE.
    #[arg(short = 'B', long = "save-packet", value_name = "FILE")]
    save_packet: Option<PathBuf>,
    /// Print the packet's fields on stderr.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
    /// Generate keys instead (same as `spa keygen`).
    #[arg(short = 'k', long = "key-gen")]
    key_gen: bool,
}

#[derive(Args)]
struct KeygenArgs {
    /// HMAC type the key is for; sets the key length to its block size.
    #[arg(long = "hmac-digest-type", value_name = "TYPE", default_value = "sha256")]
    hmac_digest_type: DigestType,
}

#[derive(Args)]
struct DecodeArgs {
    /// The Rijndael key, base64.
    #[arg(long = "key-base64", value_name = "B64", conflicts_with = "key")]
    key_base64: Option<String>,
    /// The Rijndael key as text.
    #[arg(long = "key", value_name = "KEY")]
    key: Option<String>,
    /// The HMAC key, base64; without an HMAC key the packet must carry no HMAC.
    #[arg(long = "hmac-key-base64", value_name = "B64", conflicts_with = "hmac_key")]
    hmac_key_base64: Option<String>,
    /// The HMAC key as text.
    #[arg(long = "hmac-key", value_name = "KEY")]
    hmac_key: Option<String>,
    /// HMAC type (default sha256).
    #[arg(long = "hmac-digest-type", value_name = "TYPE")]
    hmac_digest_type: Option<DigestType>,
    /// Rijndael mode (default cbc).
    #[arg(long = "encryption-mode", short = 'M', value_name = "MODE", default_value = "cbc")]
    encryption_mode: EncryptionMode,
    /// The packet; read from stdin when absent.
    packet: Option<String>,
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

fn main() -> ExitCode {
    let cli = match Cli::command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            // One line, like every other error: clap's first line without its "error: ".
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!("spa: {} (see spa --help)", first.strip_prefix("error: ").unwrap_or(first));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Command::Knock(a)) => knock(&a),
        Some(Command::Keygen(a)) => keygen(a.hmac_digest_type),
        Some(Command::Decode(a)) => decode(&a),
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "spa", &mut script);
            print(&script)
        }
        Some(Command::Man) => manual::spa_1(Cli::command()).and_then(|page| print(page.as_bytes())),
        None => knock(&cli.knock),
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

/// Base64 with `=` padding, as fwknop prints keys.
fn b64_padded(bytes: &[u8]) -> String {
    let mut s = b64::encode(bytes);
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

/// The key lines `spa keygen` prints.
fn keygen_text(hmac: DigestType, rng: &mut dyn Entropy) -> Zeroizing<String> {
    let mut key = Zeroizing::new([0u8; 32]);
    rng.fill(&mut key[..]);
    // One hash block of key (libfko accepts up to 136 bytes, SHA3-256's block).
    let mut hkey = Zeroizing::new(vec![0u8; hmac.block_len().min(MAX_HMAC_KEY_LEN)]);
    rng.fill(&mut hkey);
    Zeroizing::new(format!("KEY_BASE64: {}\nHMAC_KEY_BASE64: {}\n", b64_padded(&key[..]), b64_padded(&hkey)))
}

fn keygen(hmac: DigestType) -> Result<()> {
    let text = keygen_text(hmac, &mut OsRng);
    std::io::stdout().write_all(text.as_bytes()).context("cannot write to stdout")
}

impl KnockArgs {
    /// The options given on the command line.
    fn to_partial(&self) -> Result<Partial> {
        let offset = match (&self.time_offset_plus, &self.time_offset_minus) {
            (None, None) => None,
            (plus, minus) => {
                let p = plus.as_deref().map(opts::parse_time_offset).transpose()?.unwrap_or(0);
                let m = minus.as_deref().map(opts::parse_time_offset).transpose()?.unwrap_or(0);
                Some(p - m)
            }
        };
        let text = |s: &Option<String>| s.as_ref().map(|k| Zeroizing::new(k.clone()));
        let key = text(&self.key_rijndael)
            .map(KeySpec::Text)
            .or(text(&self.key_base64_rijndael).map(KeySpec::Base64))
            .or(self.get_key.clone().map(KeySpec::File));
        let hmac_key = text(&self.key_hmac)
            .map(KeySpec::Text)
            .or(text(&self.key_base64_hmac).map(KeySpec::Base64))
            .or(self.get_hmac_key.clone().map(KeySpec::File));
        let allow = if let Some(ip) = self.allow_ip {
            Some(Allow::Ip(ip))
        } else if self.source_ip {
            Some(Allow::Source)
        } else if self.resolve_ip_https {
            Some(Allow::Resolve)
        } else {
            None
        };
        Ok(Partial {
            destination: self.destination.clone(),
            allow,
            access: self.access.clone(),
            server_port: self.server_port,
            server_proto: self.server_proto.as_deref().map(str::parse).transpose()?,
            key,
            hmac_key,
            use_hmac: self.use_hmac.then_some(true),
            hmac_type: self.hmac_digest_type,
            digest_type: self.digest_type,
            mode: self.encryption_mode,
            fw_timeout: self.fw_timeout,
            resolve_url: self.resolve_url.clone(),
            time_offset: offset,
            spoof_user: self.spoof_user.clone(),
            nat_access: self.nat_access.clone(),
            nat_local: self.nat_local.then_some(true),
            nat_port: self.nat_port,
            nat_rand_port: self.nat_rand_port.then_some(true),
            server_cmd: self.server_cmd.clone(),
            verbose: (self.verbose > 0).then_some(true),
        })
    }

    /// The rc file to read, if any: `--rc-file`, else `~/.fwknoprc` when it exists.
    fn rc_path(&self) -> Result<Option<PathBuf>> {
        if self.no_rc_file {
            ensure!(
                self.named_config.is_none(),
                "-n/--named-config needs an rc file, but --no-rc-file was given"
            );
            return Ok(None);
        }
        if let Some(p) = &self.rc_file {
            return Ok(Some(p.clone()));
        }
        let Some(home) = opts::home_dir() else {
            ensure!(self.named_config.is_none(), "-n/--named-config given but $HOME is not set");
            return Ok(None);
        };
        let p = Path::new(&home).join(".fwknoprc");
        // A missing default rc file is fine (fwknop would create one; we never write it),
        // unless a stanza from it was asked for.
        if !p.exists() && self.named_config.is_none() {
            return Ok(None);
        }
        Ok(Some(p))
    }

    /// The options from the rc file: the named stanza over `[default]`.
    fn rc_partial(&self) -> Result<Partial> {
        let Some(path) = self.rc_path()? else {
            return Ok(Partial::default());
        };
        let rc = RcFile::read(&path)?;
        let file = rc.path.display().to_string();
        let mut warn = |w: String| eprintln!("spa: warning: {w}");
        let mut default = Partial::default();
        if let Some(lines) = rc.stanza("default") {
            opts::apply_rc(&mut default, &lines, &file, &mut warn)?;
        }
        let Some(name) = &self.named_config else {
            return Ok(default);
        };
        let lines = rc
            .stanza(name)
            .with_context(|| format!("no stanza [{name}] in {file} (it has: {})", rc.names().join(", ")))?;
        let mut named = Partial::default();
        opts::apply_rc(&mut named, &lines, &file, &mut warn)?;
        Ok(named.over(default))
    }
}

/// A port in 10000..=65534, as fwknop's `--nat-rand-port` picks it.
fn random_port(rng: &mut dyn Entropy) -> u16 {
    const SPAN: u32 = 55535;
    const LIMIT: u32 = u32::MAX - u32::MAX % SPAN;
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b);
        let v = u32::from_le_bytes(b);
        if v < LIMIT {
            // v % SPAN < 55535, so the sum is at most 65534.
            return 10000 + (v % SPAN) as u16;
        }
    }
}

fn knock(a: &KnockArgs) -> Result<()> {
    if a.key_gen {
        return keygen(a.hmac_digest_type.unwrap_or_default());
    }
    let p = a.to_partial()?.over(a.rc_partial()?);
    let verbose = p.verbose.unwrap_or(false);
    let mut rng = OsRng;

    let allow = match &p.allow {
        Some(Allow::Ip(ip)) => *ip,
        Some(Allow::Source) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(Allow::Resolve) => {
            let url = p.resolve_url.as_deref().context(
                "-R needs --resolve-url with an http:// URL (this client has no TLS, so fwknop's default https URL cannot be used)",
            )?;
            let ip = net::resolve_external_ip(url).context("cannot learn the external address")?;
            if verbose {
                eprintln!("Resolved external IP: {ip}");
            }
            ip
        }
        None if a.test => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => bail!("say which address to let in: -a IP, -s (the packet's source) or -R"),
    };

    let port = p.server_port.unwrap_or(DEFAULT_PORT);
    let transport = p.server_proto.unwrap_or_default();
    let dest = match (&p.destination, a.test) {
        (Some(host), false) => Some(net::resolve(host, port)?),
        (None, false) => bail!("no SPA server given (-D/--destination or SPA_SERVER)"),
        (_, true) => None,
    };

    let nat = NatOpts {
        access: p.nat_access.clone(),
        local: p.nat_local.unwrap_or(false),
        port: p.nat_port,
        rand_port: p.nat_rand_port.unwrap_or(false),
    };
    let fields = opts::build_request(
        allow,
        p.access.as_deref(),
        p.server_cmd.as_deref(),
        &nat,
        p.destination.as_deref(),
        p.fw_timeout,
        &mut || random_port(&mut OsRng),
    )?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
    let offset = p.time_offset.unwrap_or(0);
    let timestamp = now.checked_add_signed(offset).context("time offset out of range")?;
    let env = |k: &str| std::env::var(k).ok();
    let msg = SpaMessage {
        random: spa_engine::random_value(&mut rng),
        username: opts::username(p.spoof_user.as_deref(), &env, &opts::account_name),
        timestamp,
        version: FKO_VERSION.to_owned(),
        message_type: fields.message_type,
        message: fields.message,
        nat_access: fields.nat_access,
        server_auth: None,
        client_timeout: fields.client_timeout,
    };

    let mode = p.mode.unwrap_or_default();
    let digest = p.digest_type.unwrap_or_default();
    let use_hmac = p.wants_hmac();
    ensure!(
        !(use_hmac && mode == EncryptionMode::Legacy),
        "the legacy encryption mode cannot be combined with an HMAC (as in fwknop)"
    );
    let host = p.destination.as_deref();
    let key = keys::encryption_key(p.key.as_ref(), host)?;
    let hmac = if use_hmac {
        let hk = keys::hmac_key(p.hmac_key.as_ref(), host)?;
        ensure!(!keys_equal(&key, &hk), "the encryption key and the HMAC key must differ");
        Some((hk, p.hmac_type.unwrap_or_default()))
    } else {
        None
    };
    let opts = SealOptions { key: &key, mode, digest, hmac: hmac.as_ref().map(|(k, t)| (k, *t)) };
    let spa = spa_engine::packet::seal(&msg, &opts, &mut rng).context("cannot build the SPA packet")?;

    if verbose {
        print_fields(&msg, digest, hmac.as_ref().map(|(_, t)| *t), mode, &spa);
        if let (Some(d), Some(h)) = (dest, host) {
            eprintln!("Sending via {transport} to {h} ({d})");
        }
    }
    if let Some(path) = &a.save_packet {
        std::fs::write(path, format!("{spa}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if a.test {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{spa}").context("cannot write to stdout")?;
        return Ok(());
    }
    if let (Some(d), Some(h)) = (dest, host) {
        net::send(&spa, d, h, transport)?;
    }
    Ok(())
}

/// The packet's fields on stderr, in fwknop's layout. Never any key.
fn print_fields(
    m: &SpaMessage,
    digest: DigestType,
    hmac: Option<DigestType>,
    mode: EncryptionMode,
    spa: &str,
) {
    let or_null = |s: Option<&str>| s.map_or_else(|| "<NULL>".to_owned(), str::to_owned);
    eprintln!("SPA Field Values:");
    eprintln!("=================");
    eprintln!("   Random Value: {}", m.random);
    eprintln!("       Username: {}", m.username);
    eprintln!("      Timestamp: {}", m.timestamp);
    eprintln!("    FKO Version: {}", m.version);
    eprintln!("   Message Type: {} ({})", m.message_type.id(), m.message_type);
    eprintln!(" Message String: {}", m.message);
    eprintln!("     Nat Access: {}", or_null(m.nat_access.as_deref()));
    eprintln!("    Server Auth: {}", or_null(m.server_auth.as_deref()));
    eprintln!(" Client Timeout: {}", m.client_timeout.unwrap_or(0));
    eprintln!("    Digest Type: {} ({})", digest.fwknop_id(), digest.name().to_ascii_uppercase());
    match hmac {
        Some(h) => eprintln!("      HMAC Type: {} ({})", h.fwknop_id(), h.name().to_ascii_uppercase()),
        None => eprintln!("      HMAC Type: 0 (None)"),
    }
    eprintln!("Encryption Mode: {} ({})", mode.fwknop_id(), mode.name().to_ascii_uppercase());
    eprintln!(" Final SPA Data: {spa}");
}

fn decode(a: &DecodeArgs) -> Result<()> {
    let packet = match &a.packet {
        Some(p) => p.trim().to_owned(),
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read the packet from stdin")?;
            s.trim().to_owned()
        }
    };
    ensure!(!packet.is_empty(), "no packet given");
    let text = |s: &Option<String>| s.as_ref().map(|k| Zeroizing::new(k.clone()));
    let key_spec = text(&a.key_base64).map(KeySpec::Base64).or(text(&a.key).map(KeySpec::Text));
    let key = keys::encryption_key(key_spec.as_ref(), None)?;
    let hmac_spec = text(&a.hmac_key_base64).map(KeySpec::Base64).or(text(&a.hmac_key).map(KeySpec::Text));
    let hmac = match (hmac_spec, a.hmac_digest_type) {
        (None, None) => None,
        (spec, t) => {
            let k = keys::hmac_key(spec.as_ref(), None)?;
            Some(HmacState::new(t.unwrap_or_default(), k.as_bytes()))
        }
    };
    let d = spa_engine::packet::open(
        packet.as_bytes(),
        &OpenKeys { key: &key, mode: a.encryption_mode, hmac: hmac.as_ref() },
    )
    .context("cannot decode the packet")?;
    let m = &d.message;
    let json = serde_json::json!({
        "random": m.random,
        "username": m.username,
        "timestamp": m.timestamp,
        "version": m.version,
        "message_type": m.message_type.id(),
        "message": m.message,
        "nat_access": m.nat_access,
        "server_auth": m.server_auth,
        "client_timeout": m.client_timeout,
        "digest_type": d.digest_type.name(),
    });
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opts::Transport;

    struct Counter(u8);
    impl Entropy for Counter {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                *b = self.0;
                self.0 = self.0.wrapping_add(1);
            }
        }
    }

    #[test]
    fn keygen_lengths_follow_the_hmac_block_size() {
        for t in DigestType::ALL {
            let text = keygen_text(t, &mut Counter(0));
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2);
            let key = lines[0].strip_prefix("KEY_BASE64: ").unwrap();
            let hkey = lines[1].strip_prefix("HMAC_KEY_BASE64: ").unwrap();
            assert_eq!(b64::decode(key).unwrap().len(), 32);
            assert_eq!(b64::decode(hkey).unwrap().len(), t.block_len().min(MAX_HMAC_KEY_LEN), "{t}");
            assert!(key.len().is_multiple_of(4) && hkey.len().is_multiple_of(4), "padded like fwknop");
        }
    }

    #[test]
    fn random_ports_stay_in_fwknops_range() {
        let mut rng = Counter(0);
        for _ in 0..1000 {
            let p = random_port(&mut rng);
            assert!((10000..=65534).contains(&p), "{p}");
        }
    }

    #[test]
    fn cli_parses_fwknop_options() {
        let cli = Cli::try_parse_from([
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
            "--time-offset-minus",
            "30sec",
            "-U",
            "bob",
            "-T",
            "-v",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let p = cli.knock.to_partial().unwrap();
        assert_eq!(p.server_proto, Some(Transport::Http));
        assert_eq!(p.time_offset, Some(90));
        assert_eq!(p.digest_type, Some(DigestType::Sha512));
        assert_eq!(p.mode, Some(EncryptionMode::Ctr));
        assert!(p.wants_hmac());
        assert!(Cli::try_parse_from(["spa", "-a", "1.2.3.4", "-s"]).is_err(), "-a and -s exclude each other");
        assert!(Cli::try_parse_from(["spa", "knock", "-A", "tcp/22"]).is_ok());
        assert!(Cli::try_parse_from(["spa", "-P", "icmp"]).unwrap().knock.to_partial().is_err());
    }
}

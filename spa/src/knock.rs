//! `spa [knock]`: build and send one packet, with fwknop's options and `~/.fwknoprc`; and the
//! fwknop options around a knock: `--save-rc-stanza`, `--stanza-list`, `-k`/`-K`, `-l` and
//! `--show-last` (`~/.fwknop.run`).

use std::ffi::OsString;
use std::io::{BufReader, IsTerminal as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;
use spa_engine::keys::keys_equal;
use spa_engine::message::FKO_VERSION;
use spa_engine::packet::SealOptions;
use spa_engine::{DigestType, EncryptionMode, Entropy, SpaMessage};
use zeroize::Zeroizing;

use crate::keygen::{HMAC_KEY_LENS, KEY_LENS, NewKeys};
use crate::keys::{self, KeyInput};
use crate::modern::{self, WireFormat};
use crate::opts::{self, Allow, NatOpts, Settings};
use crate::rc::{self, RcFile};
use crate::table::{self, Given};
use crate::{OsRng, net, runfile};

/// fwknop's default SPA port.
const DEFAULT_PORT: u16 = 62201;

/// fwknop's client options. The knock settings (`-A`, `-a`, `-D`, keys, ...) come from
/// [`crate::table::OPTIONS`]; these are the options about the run itself.
#[derive(Args, Default)]
pub(crate) struct KnockArgs {
    #[command(flatten)]
    pub(crate) given: Given,
    /// Use this stanza of the rc file (over [default]).
    #[arg(short = 'n', long = "named-config", value_name = "STANZA")]
    named_config: Option<String>,
    /// Read this rc file instead of ~/.fwknoprc.
    #[arg(long = "rc-file", value_name = "FILE", conflicts_with = "no_rc_file")]
    rc_file: Option<PathBuf>,
    /// Do not read any rc file.
    #[arg(long = "no-rc-file")]
    no_rc_file: bool,
    /// Never look at the home directory: the rc file needs --rc-file, -l and the saved command line need -E.
    #[arg(long = "no-home-dir")]
    no_home_dir: bool,
    /// Save the command line's options as the -n stanza (default: the -D host) of the rc file (mode 0600).
    #[arg(long = "save-rc-stanza")]
    save_rc_stanza: bool,
    /// With --save-rc-stanza, replace the stanza's keys without asking.
    #[arg(long = "force-stanza")]
    force_stanza: bool,
    /// List the stanzas of the rc file.
    #[arg(long = "stanza-list")]
    stanza_list: bool,
    /// Build the packet and print it on stdout; send nothing.
    #[arg(short = 'T', long = "test")]
    test: bool,
    /// Also write the packet to FILE.
    #[arg(short = 'B', long = "save-packet", value_name = "FILE")]
    save_packet: Option<PathBuf>,
    /// With -B, append to FILE instead of replacing it.
    #[arg(short = 'b', long = "save-packet-append")]
    save_packet_append: bool,
    /// Generate keys instead (same as `spa keygen`); with --save-rc-stanza, into the stanza.
    #[arg(short = 'k', long = "key-gen")]
    key_gen: bool,
    /// Generate keys and write them to FILE (mode 0600).
    #[arg(short = 'K', long = "key-gen-file", value_name = "FILE")]
    key_gen_file: Option<PathBuf>,
    /// With -k, the encryption key's length in bytes (default 32).
    #[arg(long = "key-len", value_name = "BYTES", value_parser = clap::value_parser!(u64).range(KEY_LENS))]
    key_len: Option<u64>,
    /// With -k, the HMAC key's length in bytes (default: the HMAC type's block size).
    #[arg(long = "hmac-key-len", value_name = "BYTES", value_parser = clap::value_parser!(u64).range(HMAC_KEY_LENS))]
    hmac_key_len: Option<u64>,
    /// Run the last knock's command line again (from ~/.fwknop.run).
    #[arg(short = 'l', long = "last-cmd", conflicts_with = "show_last")]
    last_cmd: bool,
    /// Print the last knock's command line.
    #[arg(long = "show-last")]
    show_last: bool,
    /// Save (and read for -l) the command line in FILE instead of ~/.fwknop.run.
    #[arg(short = 'E', long = "save-args-file", value_name = "FILE")]
    save_args_file: Option<PathBuf>,
    /// Read the keys that no option gives from stdin, one line each, without a prompt.
    #[arg(long = "stdin", conflicts_with = "fd")]
    stdin: bool,
    /// Read the keys that no option gives from file descriptor N, one line each.
    #[arg(long = "fd", value_name = "N")]
    fd: Option<u32>,
}

/// Prints a warning, fwknop-style (the run goes on).
fn warn(w: String) {
    eprintln!("spa: warning: {w}");
}

impl KnockArgs {
    /// Whether only the options that go with `-l` and `--show-last` were given.
    fn only_run_file_options(&self) -> bool {
        self.given.only(&["verbose"])
            && self.named_config.is_none()
            && self.rc_file.is_none()
            && !self.no_rc_file
            && !self.save_rc_stanza
            && !self.force_stanza
            && !self.stanza_list
            && !self.test
            && self.save_packet.is_none()
            && !self.save_packet_append
            && !self.key_gen
            && self.key_gen_file.is_none()
            && self.key_len.is_none()
            && self.hmac_key_len.is_none()
            && !self.stdin
            && self.fd.is_none()
    }

    /// The home directory, unless `--no-home-dir`.
    fn home(&self) -> Option<PathBuf> {
        if self.no_home_dir { None } else { opts::home_dir() }
    }

    /// The rc file: `--rc-file`, else `~/.fwknoprc`; none with `--no-rc-file`.
    fn rc_path(&self) -> Result<Option<PathBuf>> {
        if self.no_rc_file {
            ensure!(
                self.named_config.is_none(),
                "-n/--named-config needs an rc file, but --no-rc-file was given"
            );
            ensure!(!self.save_rc_stanza, "cannot save an rc stanza in --no-rc-file mode");
            ensure!(!self.stanza_list, "cannot list stanzas in --no-rc-file mode");
            return Ok(None);
        }
        if let Some(p) = &self.rc_file {
            return Ok(Some(p.clone()));
        }
        ensure!(
            !self.no_home_dir,
            "in --no-home-dir mode, give the rc file with --rc-file FILE (or --no-rc-file)"
        );
        match self.home() {
            Some(home) => Ok(Some(home.join(".fwknoprc"))),
            None => {
                ensure!(
                    self.named_config.is_none() && !self.save_rc_stanza && !self.stanza_list,
                    "the rc file is in the home directory, but $HOME is not set (give --rc-file FILE)"
                );
                Ok(None)
            }
        }
    }

    /// The saved command line: `-E FILE`, else `~/.fwknop.run`.
    fn run_file(&self) -> Option<PathBuf> {
        self.save_args_file.clone().or_else(|| self.home().map(|h| h.join(".fwknop.run")))
    }

    /// Where keys that no option gives are read from.
    fn key_input(&self) -> Result<KeyInput> {
        if self.stdin {
            return Ok(KeyInput::Lines(Box::new(BufReader::new(std::io::stdin()))));
        }
        let Some(fd) = self.fd else { return Ok(KeyInput::Terminal) };
        #[cfg(unix)]
        {
            let path = format!("/dev/fd/{fd}");
            let f =
                std::fs::File::open(&path).with_context(|| format!("cannot read file descriptor {fd}"))?;
            Ok(KeyInput::Lines(Box::new(BufReader::new(f))))
        }
        #[cfg(not(unix))]
        {
            bail!(
                "--fd {fd}: reading a key from a file descriptor is not supported on Windows (as in fwknop); use --stdin"
            )
        }
    }
}

/// The settings: `[default]`, the named stanza (when `named`), then the command line.
fn load(a: &KnockArgs, rc: Option<&RcFile>, named: Option<&str>) -> Result<Settings> {
    let mut s = Settings::default();
    if let Some(rc) = rc {
        let file = rc.path.display().to_string();
        let mut w = warn;
        if let Some(lines) = rc.stanza("default") {
            table::apply_rc(&mut s, &lines, &file, &mut w)?;
        }
        if let Some(name) = named {
            let lines = rc.stanza(name).with_context(|| {
                format!("no stanza [{name}] in {file} (it has: {})", rc.names().join(", "))
            })?;
            table::apply_rc(&mut s, &lines, &file, &mut w)?;
        }
    } else if let Some(name) = named {
        bail!("no stanza [{name}]: there is no rc file");
    }
    a.given.apply(&mut s)?;
    Ok(s)
}

/// Reads the rc file if it exists, warning as fwknop does when it is not private.
fn read_rc(path: Option<&Path>) -> Result<Option<RcFile>> {
    let Some(path) = path else { return Ok(None) };
    if !path.exists() {
        return Ok(None);
    }
    rc::check_private(path, &mut warn);
    RcFile::read(path).map(Some)
}

/// fwknop's question before a key in the stanza is replaced; no terminal means "no".
fn ask_overwrite(var: &str, stanza: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        eprintln!("spa: {var} in [{stanza}] kept (no terminal to ask; --force-stanza replaces it)");
        return Ok(false);
    }
    let mut err = std::io::stderr();
    write!(err, "Variable '{var}' found in stanza '{stanza}'. Overwrite [N/y] ? ")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("cannot read the answer")?;
    Ok(line.trim().eq_ignore_ascii_case("y"))
}

/// `spa [knock]`. `argv` is the whole command line, saved for `-l`.
pub(crate) fn run(a: &KnockArgs, argv: &[OsString]) -> Result<()> {
    if a.last_cmd || a.show_last {
        return last(a);
    }
    run_with(a, Some(argv))
}

/// A knock and what goes with it; `argv`, when given, is saved for `-l`.
fn run_with(a: &KnockArgs, argv: Option<&[OsString]>) -> Result<()> {
    // Bad command-line values fail before anything is read or written.
    let cli = a.given.settings()?;
    let rc_path = a.rc_path()?;
    if a.stanza_list {
        let path = rc_path.context("no rc file to list")?;
        rc::check_private(&path, &mut warn);
        let rc = RcFile::read(&path)?;
        return crate::print(rc.listing().as_bytes());
    }
    let save_as = match (&a.named_config, a.save_rc_stanza) {
        (Some(n), true) => Some(n.clone()),
        (None, true) => Some(
            cli.destination
                .clone()
                .context("--save-rc-stanza needs -n STANZA or -D HOST (the stanza's name)")?,
        ),
        (_, false) => None,
    };
    let rc = read_rc(rc_path.as_deref())?;
    // When saving, the named stanza is what the command line makes of it (fwknop reads
    // only [default] then).
    let s = load(a, rc.as_ref(), if save_as.is_some() { None } else { a.named_config.as_deref() })?;
    let keygen = a.key_gen || a.key_gen_file.is_some();
    let new_keys =
        keygen.then(|| NewKeys::new(s.hmac_type.unwrap_or_default(), a.key_len, a.hmac_key_len, &mut OsRng));
    if let (Some(name), Some(path)) = (&save_as, &rc_path) {
        let mut lines = a.given.stanza_lines()?;
        if let Some(k) = &new_keys {
            lines.retain(|(var, _)| !is_key_var(var));
            lines.push(("KEY_BASE64", k.key.clone()));
            lines.push(("HMAC_KEY_BASE64", k.hmac.clone()));
        }
        let old = match std::fs::read_to_string(path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Zeroizing::new(String::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let text = rc::updated_text(
            &old,
            name,
            &lines,
            a.force_stanza,
            &mut |var| ask_overwrite(var, name),
            &mut |n| eprintln!("spa: {n}"),
        )?;
        rc::write_private(path, &text)?;
        if s.verbose() > 0 {
            eprintln!("Saved stanza [{name}] in {}", path.display());
        }
    }
    if let Some(k) = new_keys {
        // fwknop ends here in key generation mode: the server cannot know the new keys yet.
        return match (&save_as, &rc_path, &a.key_gen_file) {
            (Some(_), Some(path), None) => {
                println!("[+] Wrote Rijndael and HMAC keys to rc file: {}", path.display());
                Ok(())
            }
            (_, _, file) => k.emit(file.as_deref()),
        };
    }
    let s = match &save_as {
        Some(name) => load(a, read_rc(rc_path.as_deref())?.as_ref(), Some(name))?,
        None => s,
    };
    if !s.no_save_args.unwrap_or(false)
        && let Some(argv) = argv
        && let Some(path) = a.run_file()
        && let Err(e) = runfile::save(&path, argv)
    {
        warn(format!("{e:#}; -l will not repeat this command"));
    }
    knock(a, &s)
}

/// Whether an rc variable holds a key (`KEY`, `HMAC_KEY_FILE`, ...).
fn is_key_var(var: &str) -> bool {
    matches!(var, "KEY" | "KEY_BASE64" | "KEY_FILE" | "HMAC_KEY" | "HMAC_KEY_BASE64" | "HMAC_KEY_FILE")
}

/// The settings of `spa connect`: `[default]`, the `-n` stanza and the command line, as for a
/// knock. The options that do something else than knock (key generation, saving a stanza,
/// listing, `-l`, `-T`) are refused, and so is `--stdin`: stdin is the relayed stream.
pub(crate) fn connect_settings(a: &KnockArgs) -> Result<Settings> {
    let refused = [
        (a.save_rc_stanza, "--save-rc-stanza"),
        (a.force_stanza, "--force-stanza"),
        (a.stanza_list, "--stanza-list"),
        (a.test, "-T/--test (use `spa -T` to see the packet)"),
        (a.key_gen || a.key_gen_file.is_some(), "-k/-K (use `spa keygen`)"),
        (a.key_len.is_some() || a.hmac_key_len.is_some(), "--key-len/--hmac-key-len"),
        (a.last_cmd || a.show_last, "-l/--show-last"),
        (a.stdin, "--stdin (stdin is the relayed stream; put the keys in the rc file or use --fd)"),
    ];
    if let Some((_, what)) = refused.iter().find(|(given, _)| *given) {
        bail!("spa connect does not take {what}");
    }
    let rc = read_rc(a.rc_path()?.as_deref())?;
    load(a, rc.as_ref(), a.named_config.as_deref())
}

/// `-l` and `--show-last`.
fn last(a: &KnockArgs) -> Result<()> {
    ensure!(
        a.only_run_file_options(),
        "-l/--last-cmd and --show-last take no other options but -v, -E and --no-home-dir (the saved command line has them)"
    );
    let path =
        a.run_file().context("in --no-home-dir mode, give the saved command line's file with -E FILE")?;
    rc::check_private(&path, &mut warn);
    let line = runfile::load(&path)?;
    if a.show_last {
        return crate::print(format!("Last fwknop client command line: {}\n", line.trim_end()).as_bytes());
    }
    if a.given.settings()?.verbose() > 0 {
        eprintln!("Executing: {}", line.trim_end());
    }
    let args: Vec<OsString> = runfile::split(&line)?.iter().map(|a| OsString::from(a.as_str())).collect();
    let again =
        crate::parse_knock(&args).with_context(|| format!("the command line saved in {}", path.display()))?;
    ensure!(
        !again.last_cmd && !again.show_last,
        "the command line saved in {} is itself -l or --show-last",
        path.display()
    );
    // Run as saved, without saving it again (as fwknop).
    run_with(&again, None)
}

/// A port in 10000..=65534, as fwknop's `--nat-rand-port` and `-r` pick it.
pub(crate) fn random_port(rng: &mut dyn Entropy) -> u16 {
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

/// A packet built from the settings, and where it goes.
pub(crate) struct Built {
    /// The packet's text.
    pub(crate) spa: String,
    /// The server's address (none in test mode).
    pub(crate) dest: Option<SocketAddr>,
    /// The server as given (`-D`).
    pub(crate) host: Option<String>,
    /// How it travels.
    pub(crate) transport: crate::opts::Transport,
}

/// Builds the packet from the settings and sends it (or prints it with `-T`).
fn knock(a: &KnockArgs, p: &Settings) -> Result<()> {
    let built = build(a, p, None)?;
    deliver(a, p, &built)
}

/// Saves (`-B`), prints (`-T`) or sends a built packet.
pub(crate) fn deliver(a: &KnockArgs, p: &Settings, b: &Built) -> Result<()> {
    let spa = &b.spa;
    if let Some(path) = &a.save_packet {
        let mut f = std::fs::OpenOptions::new();
        if a.save_packet_append {
            f.append(true).create(true);
        } else {
            f.write(true).create(true).truncate(true);
        }
        f.open(path)
            .and_then(|mut f| writeln!(f, "{spa}"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if a.test {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{spa}").context("cannot write to stdout")?;
        return Ok(());
    }
    if let (Some(d), Some(h)) = (b.dest, &b.host) {
        let o = net::SendOptions { source_port: p.source_port, agent: p.user_agent.clone() };
        net::send(spa, d, h, b.transport, &o)?;
    }
    Ok(())
}

/// Builds the packet from the settings, in the format they choose. `tcp_source_port` is the
/// TCP source port the client will connect from (`spa connect`, modern format only).
pub(crate) fn build(a: &KnockArgs, p: &Settings, tcp_source_port: Option<u16>) -> Result<Built> {
    let format = modern::check_format(p)?;
    let verbose = p.verbose() > 0;
    let mut rng = OsRng;
    let resolve = || -> Result<IpAddr> {
        let o = net::ResolveOptions {
            url: p.resolve_url.clone(),
            http_only: p.resolve_http_only.unwrap_or(false),
            agent: p.user_agent.clone(),
        };
        let ip = net::resolve_external_ip(&o, &mut warn).context("cannot learn the external address (-R)")?;
        if verbose {
            eprintln!("Resolved external IP: {ip}");
        }
        Ok(ip)
    };
    // Test mode refuses what a real send refuses: there is no default address.
    let allow = match &p.allow {
        Some(Allow::Ip(ip)) => *ip,
        Some(Allow::Source) => {
            if verbose {
                eprintln!("[-] WARNING: Should use -a or -R to harden SPA against potential MITM attacks");
            }
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
        Some(Allow::Resolve) => resolve()?,
        // fwknop: a resolve URL alone asks for -R.
        None if p.resolve_url.is_some() => resolve()?,
        None => bail!("say which address to let in: -a IP, -s (the packet's source) or -R"),
    };

    let port = if p.rand_port.unwrap_or(false) {
        random_port(&mut rng)
    } else {
        p.server_port.unwrap_or(DEFAULT_PORT)
    };
    let transport = p.server_proto.unwrap_or_default();
    let dest = match (&p.destination, a.test) {
        (Some(host), false) => Some(net::resolve(host, port, p.server_resolve_ipv4.unwrap_or(false))?),
        (None, false) => bail!("no SPA server given (-D/--destination or SPA_SERVER)"),
        (_, true) => None,
    };

    let host = p.destination.clone();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
    let offset = p.time_offset.unwrap_or(0);
    let timestamp = now.checked_add_signed(offset).context("time offset out of range")?;

    if format == WireFormat::Modern {
        let server = p.server_key.context(
            "the modern format needs the server's public key: SPA_SERVER_KEY or --server-key x25519:... \
             (what `spad keygen` printed)",
        )?;
        let allow = (!allow.is_unspecified()).then_some(allow);
        let request = modern::build_request(p, allow, tcp_source_port, &mut || random_port(&mut OsRng))?;
        let user = modern::user_key(p)?;
        let spa = spa_engine::modern::seal(&request, &user, &server, timestamp, &mut rng)
            .context("cannot build the SPA packet")?;
        if verbose {
            print_modern(&request, &user, &server, timestamp, &spa);
            if let (Some(d), Some(h)) = (dest, &host) {
                eprintln!("Sending via {transport} to {h} ({d})");
            }
        }
        return Ok(Built { spa, dest, host, transport });
    }
    ensure!(tcp_source_port.is_none(), "binding a grant to a TCP source port needs the modern format");

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
    #[cfg(feature = "gpg")]
    if p.wants_gpg() {
        let mut input = a.key_input()?;
        let hmac = if use_hmac {
            Some((
                keys::hmac_key(p.hmac_key.as_ref(), host.as_deref(), &mut input)?,
                p.hmac_type.unwrap_or_default(),
            ))
        } else {
            None
        };
        let spa =
            crate::gpg::seal(p, &msg, digest, hmac.as_ref().map(|(k, t)| (k, *t)), &mut rng, &mut warn)?;
        if verbose {
            eprintln!("GPG packet for {}: {} characters", msg.message, spa.len());
            if let (Some(d), Some(h)) = (dest, &host) {
                eprintln!("Sending via {transport} to {h} ({d})");
            }
        }
        return Ok(Built { spa, dest, host, transport });
    }
    #[cfg(not(feature = "gpg"))]
    if p.wants_gpg() {
        bail!("this spa was built without GPG support (cargo feature gpg)");
    }
    ensure!(
        !(use_hmac && mode == EncryptionMode::Legacy),
        "the legacy encryption mode cannot be combined with an HMAC (as in fwknop)"
    );
    let mut input = a.key_input()?;
    let key = keys::encryption_key(p.key.as_ref(), host.as_deref(), &mut input)?;
    let hmac = if use_hmac {
        let hk = keys::hmac_key(p.hmac_key.as_ref(), host.as_deref(), &mut input)?;
        ensure!(!keys_equal(&key, &hk), "the encryption key and the HMAC key must differ");
        Some((hk, p.hmac_type.unwrap_or_default()))
    } else {
        None
    };
    let opts = SealOptions { key: &key, mode, digest, hmac: hmac.as_ref().map(|(k, t)| (k, *t)) };
    let spa = spa_engine::packet::seal(&msg, &opts, &mut rng).context("cannot build the SPA packet")?;

    if verbose {
        print_fields(&msg, digest, hmac.as_ref().map(|(_, t)| *t), mode, &spa);
        if let (Some(d), Some(h)) = (dest, &host) {
            eprintln!("Sending via {transport} to {h} ({d})");
        }
    }
    Ok(Built { spa, dest, host, transport })
}

/// A modern packet's fields on stderr. Never the secret key.
fn print_modern(
    r: &spa_engine::ModernRequest,
    user: &spa_engine::UserSigningKey,
    server: &spa_engine::ServerPublicKey,
    timestamp: u64,
    spa: &str,
) {
    let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
    eprintln!("SPA Field Values (modern format):");
    eprintln!("=================================");
    eprintln!("       User key: {}", user.public_key());
    eprintln!("     Server key: {server}");
    eprintln!("      Timestamp: {timestamp}");
    eprintln!(
        "          Allow: {}",
        r.allow.map_or_else(|| "the packet's source".to_owned(), |ip| ip.to_string())
    );
    eprintln!("          Ports: {}", ports.join(","));
    eprintln!("    Source port: {}", r.source_port.map_or_else(|| "<none>".to_owned(), |p| p.to_string()));
    eprintln!(
        "            NAT: {}",
        r.nat.as_ref().map_or_else(|| "<none>".to_owned(), |n| format!("{n:?}"))
    );
    eprintln!("       Username: {}", r.username.as_deref().unwrap_or("<none>"));
    eprintln!(" Client Timeout: {}", r.client_timeout.unwrap_or(0));
    eprintln!(" Final SPA Data: {spa}");
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn random_ports_stay_in_fwknops_range() {
        let mut rng = Counter(0);
        for _ in 0..1000 {
            let p = random_port(&mut rng);
            assert!((10000..=65534).contains(&p), "{p}");
        }
    }
}

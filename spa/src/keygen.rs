//! `spa keygen`, `-k/--key-gen` and `-K/--key-gen-file`: a new random encryption key and HMAC
//! key in fwknop's format (`KEY_BASE64: ...` and `HMAC_KEY_BASE64: ...`); `spa keygen
//! --modern`: the user's Ed25519 key pair for the modern format; `--qr`: a QR code of what a
//! phone client needs.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use spa_engine::keys::MAX_HMAC_KEY_LEN;
use spa_engine::{DigestType, Entropy, b64};
use zeroize::Zeroizing;

use crate::OsRng;

/// Key lengths `--key-len` accepts: at least 16 bytes (shorter keys are refused by spad's
/// checks), at most AES-256's 32.
pub(crate) const KEY_LENS: std::ops::RangeInclusive<u64> = 16..=32;
/// HMAC key lengths `--hmac-key-len` accepts: at least 16 bytes, at most what libfko takes.
pub(crate) const HMAC_KEY_LENS: std::ops::RangeInclusive<u64> = 16..=MAX_HMAC_KEY_LEN as u64;

/// `spa keygen`'s options.
#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// HMAC type the key is for; sets the key length to its block size.
    #[arg(long = "hmac-digest-type", value_name = "TYPE", default_value = "sha256")]
    hmac_digest_type: DigestType,
    /// Encryption key length in bytes (default 32).
    #[arg(long = "key-len", value_name = "BYTES", value_parser = clap::value_parser!(u64).range(KEY_LENS))]
    key_len: Option<u64>,
    /// HMAC key length in bytes (default: the HMAC type's block size).
    #[arg(long = "hmac-key-len", value_name = "BYTES", value_parser = clap::value_parser!(u64).range(HMAC_KEY_LENS))]
    hmac_key_len: Option<u64>,
    /// Write the keys to FILE (mode 0600) instead of stdout.
    #[arg(short = 'K', long = "key-gen-file", value_name = "FILE", conflicts_with = "modern")]
    key_gen_file: Option<PathBuf>,
    /// Make your Ed25519 key pair for the modern format instead: the secret key goes to --out
    /// (mode 0600), the public line the server's admin adds to `users = [...]` to stdout.
    #[arg(long)]
    modern: bool,
    /// With --modern: the key file to write (default ~/.spa/user.key; with --qr, none).
    #[arg(long, value_name = "FILE", requires = "modern")]
    out: Option<PathBuf>,
    /// With --modern: replace the key file if it exists.
    #[arg(long, requires = "modern")]
    force: bool,
    /// With --modern: the name after the public key in `users` (default: your account name).
    #[arg(long, value_name = "NAME", requires = "modern")]
    name: Option<String>,
    /// Also print a QR code of what a phone client needs. It holds SECRET keys: show it only
    /// to the phone. fwknop format: `KEY_BASE64:... HMAC_KEY_BASE64:...` (as Fwknop2 for
    /// Android reads it). Modern format (needs --server-key and -D): an rc stanza with
    /// SPA_SERVER, SPA_SERVER_PORT, SPA_SERVER_KEY and SPA_USER_KEY (the secret key).
    #[arg(long)]
    qr: bool,
    /// With --modern --qr: the server's public key (x25519:..., what `spad keygen` printed).
    #[arg(long = "server-key", value_name = "x25519:KEY", requires = "qr")]
    server_key: Option<spa_engine::ServerPublicKey>,
    /// With --modern --qr: the SPA server's host name or address.
    #[arg(short = 'D', long = "destination", value_name = "HOST", requires = "qr")]
    destination: Option<String>,
    /// With --modern --qr: the SPA server's port (default 62201).
    #[arg(short = 'p', long = "server-port", value_name = "PORT", requires = "qr")]
    server_port: Option<u16>,
    /// With --modern --qr: the ports to ask for (default tcp/22).
    #[arg(short = 'A', long = "access", value_name = "PROTO/PORT,...", requires = "qr")]
    access: Option<String>,
}

/// A new key pair, base64 with padding as fwknop prints it.
pub(crate) struct NewKeys {
    pub(crate) key: Zeroizing<String>,
    pub(crate) hmac: Zeroizing<String>,
}

impl NewKeys {
    /// Random keys: `key_len` bytes (default 32) and `hmac_len` bytes (default one hash block of
    /// `hmac`, at most the 136 bytes libfko accepts).
    pub(crate) fn new(
        hmac: DigestType,
        key_len: Option<u64>,
        hmac_len: Option<u64>,
        rng: &mut dyn Entropy,
    ) -> Self {
        let len = |l: Option<u64>, default: usize| l.and_then(|l| usize::try_from(l).ok()).unwrap_or(default);
        let mut key = Zeroizing::new(vec![0u8; len(key_len, 32)]);
        rng.fill(&mut key);
        let mut hkey = Zeroizing::new(vec![0u8; len(hmac_len, hmac.block_len().min(MAX_HMAC_KEY_LEN))]);
        rng.fill(&mut hkey);
        NewKeys { key: b64_padded(&key), hmac: b64_padded(&hkey) }
    }

    /// The two lines `-k` prints and `-K` writes.
    pub(crate) fn text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "KEY_BASE64: {}\nHMAC_KEY_BASE64: {}\n",
            self.key.as_str(),
            self.hmac.as_str()
        ))
    }

    /// Prints the keys, or writes them to `file` (mode 0600) and says so, as fwknop does.
    pub(crate) fn emit(&self, file: Option<&Path>) -> Result<()> {
        match file {
            Some(path) => {
                write_key_file(path, &self.text())?;
                println!("[+] Wrote Rijndael and HMAC keys to: {}", path.display());
                Ok(())
            }
            None => std::io::stdout().write_all(self.text().as_bytes()).context("cannot write to stdout"),
        }
    }
}

/// Base64 with `=` padding, as fwknop prints keys.
fn b64_padded(bytes: &[u8]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(b64::encode(bytes));
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

/// Writes keys to `path`, created or truncated with mode 0600 (fwknop leaves it to the umask).
fn write_key_file(path: &Path, text: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).with_context(|| format!("cannot create key file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write key file {}", path.display()))
}

/// `spa keygen`.
pub(crate) fn run(a: &KeygenArgs) -> Result<()> {
    if a.modern {
        return run_modern(a);
    }
    let keys = NewKeys::new(a.hmac_digest_type, a.key_len, a.hmac_key_len, &mut OsRng);
    keys.emit(a.key_gen_file.as_deref())?;
    if a.qr {
        let text = Zeroizing::new(format!(
            "KEY_BASE64:{} HMAC_KEY_BASE64:{}",
            keys.key.as_str(),
            keys.hmac.as_str()
        ));
        print_qr(&text, &format!("HMAC digest {}", a.hmac_digest_type.name()))?;
    }
    Ok(())
}

/// Prints `text` as a QR code on stdout, framed by a warning that it holds secrets.
fn print_qr(text: &str, note: &str) -> Result<()> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).context("cannot make the QR code")?;
    // Light modules drawn, dark ones left blank: reads on a dark terminal, the common case.
    let image = Zeroizing::new(
        code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).build(),
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nQR code for a phone client ({note}). It holds SECRET keys: show it to the phone only.")
        .and_then(|()| writeln!(out, "{}", image.as_str()))
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// The `users` line for `key`: with the given name, else the account name when the server
/// would take it as a name (checked by the server's own parser), else the key alone.
fn users_line(key: &spa_engine::UserPublicKey, given: Option<&str>) -> Result<String> {
    let with = |n: &str| {
        let line = format!("{key} {n}");
        line.parse::<spa_engine::UserEntry>().ok().filter(|e| e.name.as_deref() == Some(n)).map(|_| line)
    };
    match given {
        Some(n) => with(n).with_context(|| {
            format!(
                "invalid --name {n:?}: one word of at most 48 printable characters, none of \"/\\[]:;|=,+*?<>"
            )
        }),
        None => Ok(crate::opts::account_name().and_then(|n| with(&n)).unwrap_or_else(|| key.to_string())),
    }
}

/// `spa keygen --modern`.
fn run_modern(a: &KeygenArgs) -> Result<()> {
    let key = spa_engine::UserSigningKey::generate(&mut OsRng);
    let public = users_line(&key.public_key(), a.name.as_deref())?;
    let out = match (&a.out, a.qr) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => None,
        (None, false) => Some(
            crate::modern::default_user_key_file()
                .context("no home directory for ~/.spa/user.key; give --out FILE")?,
        ),
    };
    if let Some(path) = &out {
        write_new_key_file(path, &key.to_file(), a.force)?;
        eprintln!(
            "spa: wrote your modern-format key to {} (mode 0600). Ask the server's admin to add this line \
             to the stanza's users = [...]:",
            path.display()
        );
    } else {
        eprintln!(
            "spa: a new key for the phone only (no file written). Its line for the stanza's users = [...]:"
        );
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{public}").and_then(|()| stdout.flush()).context("cannot write to stdout")?;
    drop(stdout);
    if a.qr {
        let server =
            a.server_key.context("--qr with --modern needs --server-key x25519:... (from spad keygen)")?;
        let host = a.destination.as_deref().context("--qr with --modern needs -D HOST (the SPA server)")?;
        crate::table::check_rc_value("SPA_SERVER", host)?;
        let access = a.access.as_deref().unwrap_or("tcp/22");
        spa_engine::access::parse_port_list(access).context("invalid -A/--access list")?;
        let text = Zeroizing::new(format!(
            "[{host}]\nSPA_FORMAT modern\nSPA_SERVER {host}\nSPA_SERVER_PORT {}\nACCESS {access}\n\
             SPA_SERVER_KEY {server}\nSPA_USER_KEY {}\n",
            a.server_port.unwrap_or(62201),
            key.to_secret_text().as_str()
        ));
        print_qr(&text, "modern format")?;
    }
    Ok(())
}

/// Writes a new key file with mode 0600; an existing file only with `force`.
fn write_new_key_file(path: &Path, text: &str, force: bool) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if !force && path.exists() {
        anyhow::bail!(
            "{} exists; --force replaces it (and the server's admin then needs the new public key)",
            path.display()
        );
    }
    write_key_file(path, text)
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
    fn keygen_lengths_follow_the_hmac_block_size() {
        for t in DigestType::ALL {
            let keys = NewKeys::new(t, None, None, &mut Counter(0));
            let text = keys.text();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2);
            let key = lines[0].strip_prefix("KEY_BASE64: ").unwrap();
            let hkey = lines[1].strip_prefix("HMAC_KEY_BASE64: ").unwrap();
            assert_eq!(b64::decode(key).unwrap().len(), 32);
            assert_eq!(b64::decode(hkey).unwrap().len(), t.block_len().min(MAX_HMAC_KEY_LEN), "{t}");
            assert!(key.len().is_multiple_of(4) && hkey.len().is_multiple_of(4), "padded like fwknop");
        }
        let keys = NewKeys::new(DigestType::Sha256, Some(16), Some(20), &mut Counter(0));
        assert_eq!(b64::decode(&keys.key).unwrap().len(), 16);
        assert_eq!(b64::decode(&keys.hmac).unwrap().len(), 20);
    }
}

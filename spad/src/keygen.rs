//! `spad keygen`: the server's X25519 key pair for modern-format stanzas.
//!
//! The secret goes to a file only spad reads (mode 0600, never replaced without `--force`, so
//! a slip cannot lock every client out); the public key (`x25519:...`) goes to stdout, for the
//! clients (`SPA_SERVER_KEY`, `--server-key`).

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use spa_engine::{Entropy, ServerSecretKey};

/// Where `spad keygen` writes without `--out`, and the path the example configuration names.
pub const DEFAULT_KEY_FILE: &str = "/etc/spad/server.key";

/// Randomness from the operating system.
pub(crate) struct OsRng;

impl Entropy for OsRng {
    fn fill(&mut self, buf: &mut [u8]) {
        if let Err(e) = getrandom::fill(buf) {
            // No key may be made without randomness; there is nothing to fall back to.
            eprintln!("spad: cannot get random bytes from the operating system: {e}");
            std::process::exit(1);
        }
    }
}

/// Writes a new server key to `out` (mode 0600; an existing file only with `force`) and
/// returns its public key's text.
pub fn write_key(out: &Path, force: bool, rng: &mut dyn Entropy) -> Result<String> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let key = ServerSecretKey::generate(rng);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut f = options.open(out).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
            " (it exists; --force replaces it, and every client then needs the new public key)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot create {}: {e}{hint}", out.display())
    })?;
    // A replaced file keeps its old mode: set it whatever it was.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", out.display()))?;
    f.write_all(key.to_file().as_bytes()).with_context(|| format!("cannot write {}", out.display()))?;
    f.sync_all().with_context(|| format!("cannot write {}", out.display()))?;
    Ok(key.public_key().to_string())
}

/// `spad keygen`: writes the key and prints its public half.
pub fn run(out: &Path, force: bool) -> Result<()> {
    let public = write_key(out, force, &mut OsRng)?;
    eprintln!(
        "spad: wrote the server's secret key to {} (mode 0600); set [server] key_file to it and give \
         the clients of modern stanzas this public key:",
        out.display()
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{public}").and_then(|()| stdout.flush()).context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn writes_a_private_key_file_and_refuses_to_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.key");
        let public = write_key(&p, false, &mut OsRng).unwrap();
        assert!(public.starts_with("x25519:"), "{public}");
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        let key = ServerSecretKey::from_file(&text).unwrap();
        assert_eq!(key.public_key().to_string(), public);
        let e = write_key(&p, false, &mut OsRng).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text, "the key stays");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let again = write_key(&p, true, &mut OsRng).unwrap();
        assert_ne!(again, public);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

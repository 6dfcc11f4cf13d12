//! `spa keygen`, `-k/--key-gen` and `-K/--key-gen-file`: a new random encryption key and HMAC
//! key in fwknop's format (`KEY_BASE64: ...` and `HMAC_KEY_BASE64: ...`).

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
    #[arg(short = 'K', long = "key-gen-file", value_name = "FILE")]
    key_gen_file: Option<PathBuf>,
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
    NewKeys::new(a.hmac_digest_type, a.key_len, a.hmac_key_len, &mut OsRng).emit(a.key_gen_file.as_deref())
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

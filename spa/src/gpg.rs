//! Sending in fwknop's GPG mode (cargo feature `gpg`): the packet is sealed by the engine's
//! OpenPGP code (rpgp) to the server's exported public key and signed with the user's exported
//! secret key. No GnuPG keyring, agent or `gpg` process is used: the keys come from files
//! (`gpg --export --armor SERVER_ID`, `gpg --export-secret-keys --armor YOUR_ID`), and
//! `--gpg-recipient-key`/`--gpg-signer-key` ids, when given, are checked against them.

use anyhow::{Context as _, Result, bail, ensure};
use spa_engine::gpg::{self, RecipientKey, SealOptions, SigningKey, normalize_id};
use spa_engine::{DigestType, Entropy, HmacKey, SpaMessage};
use zeroize::Zeroizing;

use crate::opts::{KeySpec, Settings};

/// Reads a key file of at most [`gpg::MAX_KEY_FILE_LEN`] bytes, wiped when dropped.
fn read(path: &std::path::Path, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut bytes = Zeroizing::new(Vec::new());
    f.take(gpg::MAX_KEY_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    ensure!(bytes.len() <= gpg::MAX_KEY_FILE_LEN, "{what} {} is too large for a key file", path.display());
    Ok(bytes)
}

/// Checks that `id` (as given with `flag`) names the key read from `file`.
fn check_id(id: Option<&str>, flag: &str, has: impl Fn(&str) -> bool, fpr: &str) -> Result<()> {
    let Some(id) = id else { return Ok(()) };
    let norm = normalize_id(id).with_context(|| format!("{flag} {id:?} is not a key id or fingerprint"))?;
    ensure!(has(&norm), "{flag} {id} does not name the key in the file given for it ({fpr})");
    Ok(())
}

/// The signing key's passphrase: `GPG_SIGNING_PW(_BASE64)`, or none.
fn passphrase(p: &Settings) -> Result<Option<Zeroizing<String>>> {
    match &p.gpg_signing_pw {
        None => Ok(None),
        Some(KeySpec::Text(t)) => Ok(Some(t.clone())),
        Some(KeySpec::Base64(b)) => {
            let raw = Zeroizing::new(
                spa_engine::b64::decode(b.trim()).context("GPG_SIGNING_PW_BASE64 is not base64")?,
            );
            let text = String::from_utf8(raw.to_vec()).context("GPG_SIGNING_PW_BASE64 is not UTF-8 text")?;
            Ok(Some(Zeroizing::new(text)))
        }
        Some(KeySpec::File(_)) => bail!("a GPG signing passphrase cannot come from a key file"),
    }
}

/// Builds one GPG packet from the settings: the message, its digest type and the HMAC (if any).
pub(crate) fn seal(
    p: &Settings,
    msg: &SpaMessage,
    digest: DigestType,
    hmac: Option<(&HmacKey, DigestType)>,
    rng: &mut dyn Entropy,
    warn: &mut dyn FnMut(String),
) -> Result<String> {
    let Some(file) = &p.gpg_recipient_key_file else {
        bail!(
            "GPG mode needs the server's public key as a file: `gpg --export --armor {} > server.asc`, then \
             --gpg-recipient-key-file server.asc (GPG_RECIPIENT_KEY_FILE); no GnuPG keyring is read",
            p.gpg_recipient.as_deref().unwrap_or("SERVER_ID")
        );
    };
    let recipient = RecipientKey::from_export(&read(file, "the GPG recipient key")?)
        .with_context(|| format!("{}: not a usable public key", file.display()))?;
    check_id(
        p.gpg_recipient.as_deref(),
        "--gpg-recipient-key",
        |i| recipient.has_id(i),
        &recipient.fingerprint(),
    )?;
    let signer = match &p.gpg_signer_key_file {
        Some(file) => {
            let pw = if p.gpg_no_signing_pw.unwrap_or(false) { None } else { passphrase(p)? };
            let key = SigningKey::from_export(
                &read(file, "the GPG signing key")?,
                pw.as_deref().map(String::as_str),
            )
            .with_context(|| {
                format!(
                    "{}: not a usable secret key (a protected key needs GPG_SIGNING_PW in the rc file)",
                    file.display()
                )
            })?;
            check_id(p.gpg_signer.as_deref(), "--gpg-signer-key", |i| key.has_id(i), &key.fingerprint())?;
            Some(key)
        }
        None if p.gpg_signer.is_some() => bail!(
            "--gpg-signer-key needs your secret key as a file: `gpg --export-secret-keys --armor {} > me.asc`, \
             then --gpg-signer-key-file me.asc (GPG_SIGNER_KEY_FILE); no GnuPG keyring is read",
            p.gpg_signer.as_deref().unwrap_or("YOUR_ID")
        ),
        None => {
            warn(
                "the GPG packet is not signed; fwknopd and spad refuse unsigned packets unless \
                  the server disables signature checks"
                    .into(),
            );
            None
        }
    };
    let opts = SealOptions { recipient: &recipient, signer: signer.as_ref(), digest, hmac };
    let sealed = gpg::seal(msg, &opts, rng).context("cannot build the GPG packet")?;
    if !sealed.fwknop_readable {
        warn(
            "this recipient key does not make packets fwknopd can read (fwknop issue #247); \
              spad reads them; use an RSA key for fwknopd"
                .into(),
        );
    }
    Ok(sealed.wire)
}

//! Getting keys: from options, fwknop key files, a no-echo prompt on the terminal, or lines
//! read from stdin or another file descriptor (fwknop's `--stdin` and `--fd`).
//!
//! Keys are held in `Zeroizing` buffers and never printed; a missing key is only prompted for
//! when stdin is a terminal, so scripts fail with a clear message instead of hanging.

use std::io::{BufRead, IsTerminal as _, Read as _, Write as _};
use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};
use spa_engine::{EncryptionKey, HmacKey};
use zeroize::Zeroizing;

use crate::opts::KeySpec;

/// Finds the key for `host` in a fwknop key file: `host: key` lines (`#` comments allowed), or
/// a file holding a single key on one line.
pub(crate) fn key_from_file_text(text: &str, host: Option<&str>) -> Result<Zeroizing<String>> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    if let Some(host) = host {
        for l in &lines {
            if let Some(rest) = l.trim_start().strip_prefix(host)
                && let Some(key) = rest.strip_prefix(':')
            {
                return Ok(Zeroizing::new(key.trim_start_matches([' ', '\t']).to_owned()));
            }
        }
    }
    match lines.as_slice() {
        [single] if !single.contains(": ") => Ok(Zeroizing::new((*single).to_owned())),
        _ => match host {
            Some(h) => bail!("no key for {h} in the key file"),
            None => bail!("the key file has several keys and no destination selects one"),
        },
    }
}

fn key_from_file(path: &Path, host: Option<&str>) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?,
    );
    key_from_file_text(&text, host).with_context(|| format!("key file {}", path.display()))
}

/// Where keys that no option gives come from.
pub(crate) enum KeyInput {
    /// A prompt on the terminal (stdin), echo off.
    Terminal,
    /// One line each, in order (encryption key, then HMAC key), without a prompt.
    Lines(Box<dyn BufRead>),
}

/// Longest key line read from a stream (keys are at most 136 bytes, base64 or not).
const MAX_LINE: u64 = 4096;

impl KeyInput {
    /// Reads `what` from this input.
    fn read(&mut self, what: &str) -> Result<Zeroizing<String>> {
        match self {
            KeyInput::Terminal => prompt(what),
            KeyInput::Lines(r) => {
                let mut line = Zeroizing::new(String::new());
                let n = (&mut *r)
                    .take(MAX_LINE)
                    .read_line(&mut line)
                    .with_context(|| format!("cannot read the {what}"))?;
                ensure!(n > 0, "no {what} in the input (--stdin/--fd)");
                ensure!(line.ends_with('\n') || (n as u64) < MAX_LINE, "the {what} line is too long");
                Ok(Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned()))
            }
        }
    }
}

/// Reads one line from the terminal on stdin with echo off.
fn prompt(what: &str) -> Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    ensure!(stdin.is_terminal(), "no {what} given and stdin is not a terminal to ask for it");
    // Echo goes off before the prompt shows, so nothing typed after it is ever echoed.
    let guard = EchoOff::new()?;
    let mut err = std::io::stderr();
    write!(err, "Enter {what}: ")?;
    err.flush()?;
    let mut line = Zeroizing::new(String::new());
    let read = stdin.lock().read_line(&mut line);
    drop(guard);
    writeln!(err)?;
    read.with_context(|| format!("cannot read the {what}"))?;
    let trimmed = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned());
    Ok(trimmed)
}

/// Turns terminal echo off on stdin until dropped.
#[cfg(unix)]
struct EchoOff {
    saved: libc::termios,
}

#[cfg(unix)]
impl EchoOff {
    fn new() -> Result<Self> {
        // SAFETY: termios is plain old data; an all-zero value is valid and tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open (we checked it is a terminal) and `t` is a valid out-pointer.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot read the terminal settings");
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        // SAFETY: fd 0 is a terminal and `t` is a fully initialised termios from tcgetattr.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot turn terminal echo off");
        }
        Ok(Self { saved })
    }
}

#[cfg(unix)]
impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from the same fd in `new`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

/// Turns console echo off on stdin until dropped (Windows: the console mode's
/// `ENABLE_ECHO_INPUT`).
#[cfg(windows)]
struct EchoOff {
    handle: windows_sys::Win32::Foundation::HANDLE,
    saved: windows_sys::Win32::System::Console::CONSOLE_MODE,
}

#[cfg(windows)]
impl EchoOff {
    fn new() -> Result<Self> {
        use windows_sys::Win32::System::Console::{
            ENABLE_ECHO_INPUT, GetConsoleMode, GetStdHandle, STD_INPUT_HANDLE, SetConsoleMode,
        };
        // SAFETY: GetStdHandle has no preconditions; it returns the process's stdin handle.
        let handle = unsafe { GetStdHandle(STD_INPUT_HANDLE) };
        let mut saved = 0;
        // SAFETY: `handle` is stdin's (a console: we checked it is a terminal); `saved` is a
        // valid out-pointer.
        if unsafe { GetConsoleMode(handle, &mut saved) } == 0 {
            return Err(std::io::Error::last_os_error()).context("cannot read the console mode");
        }
        // SAFETY: the same handle, with the mode just read less the echo flag.
        if unsafe { SetConsoleMode(handle, saved & !ENABLE_ECHO_INPUT) } == 0 {
            return Err(std::io::Error::last_os_error()).context("cannot turn console echo off");
        }
        Ok(Self { handle, saved })
    }
}

#[cfg(windows)]
impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the mode read from the same handle in `new`.
        unsafe {
            windows_sys::Win32::System::Console::SetConsoleMode(self.handle, self.saved);
        }
    }
}

/// The encryption key from its spec, or `input`.
pub(crate) fn encryption_key(
    spec: Option<&KeySpec>,
    host: Option<&str>,
    input: &mut KeyInput,
) -> Result<EncryptionKey> {
    let key = match spec {
        Some(KeySpec::Base64(b)) => return EncryptionKey::from_base64(b).context("invalid encryption key"),
        Some(KeySpec::Text(t)) => t.clone(),
        Some(KeySpec::File(p)) => key_from_file(p, host)?,
        None => input.read("encryption key")?,
    };
    EncryptionKey::new(key.as_bytes().to_vec()).context("invalid encryption key")
}

/// The HMAC key from its spec, or `input`.
pub(crate) fn hmac_key(spec: Option<&KeySpec>, host: Option<&str>, input: &mut KeyInput) -> Result<HmacKey> {
    let key = match spec {
        Some(KeySpec::Base64(b)) => return HmacKey::from_base64(b).context("invalid hmac key"),
        Some(KeySpec::Text(t)) => t.clone(),
        Some(KeySpec::File(p)) => key_from_file(p, host)?,
        None => input.read("HMAC key")?,
    };
    HmacKey::new(key.as_bytes().to_vec()).context("invalid hmac key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_lines_by_host() {
        let text = "# keys\nother.host: wrong\n10.0.0.1: secret key\ngw.lan:tight\n";
        assert_eq!(key_from_file_text(text, Some("10.0.0.1")).unwrap().as_str(), "secret key");
        assert_eq!(key_from_file_text(text, Some("gw.lan")).unwrap().as_str(), "tight");
        let e = key_from_file_text(text, Some("nope")).unwrap_err();
        assert_eq!(e.to_string(), "no key for nope in the key file");
    }

    #[test]
    fn key_file_with_a_single_key() {
        assert_eq!(key_from_file_text("justakey\n", Some("10.0.0.1")).unwrap().as_str(), "justakey");
        assert_eq!(key_from_file_text("justakey", None).unwrap().as_str(), "justakey");
        assert!(key_from_file_text("a: b\nc: d\n", None).is_err());
    }

    #[test]
    fn keys_from_lines_in_order() {
        let mut input = KeyInput::Lines(Box::new(&b"first key\r\nsecond\n"[..]));
        assert_eq!(encryption_key(None, None, &mut input).unwrap().as_bytes(), b"first key");
        assert_eq!(hmac_key(None, None, &mut input).unwrap().as_bytes(), b"second");
        let e = hmac_key(None, None, &mut input).unwrap_err();
        assert_eq!(e.to_string(), "no HMAC key in the input (--stdin/--fd)");
        let mut long = KeyInput::Lines(Box::new(std::io::Cursor::new(vec![b'x'; 5000])));
        assert!(encryption_key(None, None, &mut long).is_err());
    }

    #[test]
    fn base64_and_length_checks() {
        let k = encryption_key(
            Some(&KeySpec::Base64(Zeroizing::new("dGVzdGtleTEyMw==".into()))),
            None,
            &mut KeyInput::Terminal,
        )
        .unwrap();
        assert_eq!(k.as_bytes(), b"testkey123");
        let long = KeySpec::Text(Zeroizing::new("x".repeat(33)));
        let e = encryption_key(Some(&long), None, &mut KeyInput::Terminal).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "invalid encryption key: encryption key is 33 bytes; at most 32 are allowed"
        );
    }
}

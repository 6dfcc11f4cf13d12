//! fwknop's `~/.fwknop.run`: the last knock's command line, for `-l/--last-cmd` (run it again)
//! and `--show-last` (print it). fwknop's format: one line, the arguments (the program name
//! first) separated by blanks. The file is mode 0600: the line can hold keys given on the
//! command line (`--no-save-args` keeps it from being written).
//!
//! fwknop splits the line at blanks, so it cannot keep an argument with a blank in it; this
//! client quotes such an argument in single quotes (`'echo hi'`, with `'\''` for a quote) and
//! reads both forms. A line fwknop wrote reads the same either way.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};
use zeroize::Zeroizing;

/// Longest line read back (fwknop's limit is 1024 bytes).
const MAX_LINE: u64 = 64 * 1024;

/// One argument as it goes into the line.
fn quote(arg: &str) -> String {
    if !arg.is_empty() && !arg.chars().any(|c| c.is_whitespace() || c == '\'') {
        return arg.to_owned();
    }
    format!("'{}'", arg.replace('\'', "'\\''"))
}

/// The line for `args` (the program name first), as fwknop writes it: each argument followed
/// by a blank, then a newline.
pub(crate) fn line(args: &[OsString]) -> Result<Zeroizing<String>> {
    let mut out = Zeroizing::new(String::new());
    for a in args {
        let a = a.to_str().context("an argument is not UTF-8")?;
        ensure!(!a.contains(['\n', '\r']), "an argument holds a line break");
        out.push_str(&quote(a));
        out.push(' ');
    }
    out.push('\n');
    Ok(out)
}

/// Splits a saved line into arguments (the program name first).
pub(crate) fn split(line: &str) -> Result<Vec<Zeroizing<String>>> {
    let mut args = Vec::new();
    let mut cur = Zeroizing::new(String::new());
    let mut in_arg = false;
    let mut chars = line.trim_end_matches(['\n', '\r']).chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_arg = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => bail!("unterminated quote in the saved command line"),
                    }
                }
            }
            // `\'` is a quote; any other backslash is itself (Windows paths).
            '\\' if chars.clone().next() == Some('\'') => {
                in_arg = true;
                chars.next();
                cur.push('\'');
            }
            c if c.is_whitespace() => {
                if in_arg {
                    args.push(std::mem::replace(&mut cur, Zeroizing::new(String::new())));
                    in_arg = false;
                }
            }
            c => {
                in_arg = true;
                cur.push(c);
            }
        }
    }
    if in_arg {
        args.push(cur);
    }
    Ok(args)
}

/// Writes `args` to `path`, mode 0600 (as fwknop opens it), replacing the last line.
pub(crate) fn save(path: &Path, args: &[OsString]) -> Result<()> {
    let text = line(args)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // An older file may have been made with other permissions.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// The saved line at `path` (its first line).
pub(crate) fn load(path: &Path) -> Result<Zeroizing<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut line = Zeroizing::new(String::new());
    BufReader::new(f.take(MAX_LINE))
        .read_line(&mut line)
        .with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(!line.trim().is_empty(), "{} holds no command line", path.display());
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn fwknops_format_and_quoted_blanks() {
        let l = line(&os(&["spa", "-A", "tcp/22", "-a", "1.2.3.4"])).unwrap();
        assert_eq!(l.as_str(), "spa -A tcp/22 -a 1.2.3.4 \n");
        let args = os(&["spa", "-C", "echo it's", "-U", ""]);
        let l = line(&args).unwrap();
        assert_eq!(l.as_str(), "spa -C 'echo it'\\''s' -U '' \n");
        let back: Vec<String> = split(&l).unwrap().iter().map(|a| a.to_string()).collect();
        assert_eq!(back, ["spa", "-C", "echo it's", "-U", ""]);
        // A line fwknop wrote.
        let back: Vec<String> =
            split("fwknop -A tcp/22 -D 10.0.0.1 \n").unwrap().iter().map(|a| a.to_string()).collect();
        assert_eq!(back, ["fwknop", "-A", "tcp/22", "-D", "10.0.0.1"]);
        let back: Vec<String> =
            split("spa -G C:\\keys\\k \n").unwrap().iter().map(|a| a.to_string()).collect();
        assert_eq!(back, ["spa", "-G", "C:\\keys\\k"]);
        assert!(line(&os(&["spa", "-U", "a\nb"])).is_err());
        assert!(split("spa 'open").is_err());
    }
}

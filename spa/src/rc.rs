//! fwknop's client rc file (`~/.fwknoprc`): `[stanza]` headers and `VARIABLE value` lines.
//!
//! The format is fwknop's: `#` starts a comment line, the variable name ends at the first space,
//! tab or `=`, and any run of those separates it from the value. Lines before the first stanza
//! belong to no stanza and are ignored, as fwknop does. Stanza names match without regard to
//! case, as in fwknop.
//!
//! Writing: `--save-rc-stanza` replaces one stanza with the command line's options, as fwknop
//! does ([`updated_text`]), and the file is rewritten through a new file of mode 0600 renamed
//! over it ([`write_private`]). Unlike fwknop, the rest of the file is kept as it was, comments
//! included.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use zeroize::Zeroizing;

/// One `VARIABLE value` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RcLine {
    /// The variable name, upper-cased.
    pub(crate) var: String,
    /// The value, with surrounding blanks removed.
    pub(crate) value: String,
    /// 1-based line number, for messages.
    pub(crate) line: usize,
}

/// A parsed rc file.
#[derive(Clone, Debug)]
pub(crate) struct RcFile {
    /// Where it was read from, for messages.
    pub(crate) path: PathBuf,
    /// The stanzas in file order, each with its lines.
    pub(crate) stanzas: Vec<(String, Vec<RcLine>)>,
}

/// fwknop's delimiter between a variable and its value (`IS_CONFIG_PARAM_DELIMITER`).
fn is_delim(c: char) -> bool {
    c == ' ' || c == '\t' || c == '='
}

impl RcFile {
    /// Parses rc text. Malformed stanza headers are errors naming the line.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut stanzas: Vec<(String, Vec<RcLine>)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if let Some(rest) = l.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .with_context(|| format!("{}:{line}: malformed stanza header", path.display()))?;
                stanzas.push((name.to_owned(), Vec::new()));
                continue;
            }
            let Some((_, lines)) = stanzas.last_mut() else {
                // Before the first stanza: fwknop ignores these lines too.
                continue;
            };
            let end = l.find(is_delim).unwrap_or(l.len());
            let (var, value) = l.split_at(end);
            let value = value.trim_start_matches(is_delim).trim_end();
            lines.push(RcLine { var: var.to_ascii_uppercase(), value: value.to_owned(), line });
        }
        Ok(Self { path: path.to_owned(), stanzas })
    }

    /// Reads and parses the file at `path`.
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(path, &text)
    }

    /// The lines of stanza `name` (all stanzas of that name, in order; later lines win).
    pub(crate) fn stanza(&self, name: &str) -> Option<Vec<&RcLine>> {
        let mut found = false;
        let mut out = Vec::new();
        for (n, lines) in &self.stanzas {
            if n.eq_ignore_ascii_case(name) {
                found = true;
                out.extend(lines);
            }
        }
        found.then_some(out)
    }

    /// The names of the stanzas, for the error when a named one is missing.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.stanzas.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// `--stanza-list`: fwknop's listing, every stanza but `[default]`.
    pub(crate) fn listing(&self) -> String {
        let mut out = format!("The following stanzas are configured in {} :\n", self.path.display());
        for name in self.names().into_iter().filter(|n| !n.eq_ignore_ascii_case("default")) {
            out.push_str(&format!(" - {name}\n"));
        }
        out
    }
}

/// Warns, as fwknop does, when a file that holds keys is not mode 0600 or not owned by the
/// user (it goes on: a warning, not a refusal, as in fwknop). A missing file is no warning.
#[cfg(unix)]
pub(crate) fn check_private(path: &Path, warn: &mut dyn FnMut(String)) {
    use std::os::unix::fs::MetadataExt as _;
    // Follows a symbolic link, as fwknop's stat() does.
    let Ok(md) = std::fs::metadata(path) else { return };
    let p = path.display();
    if !md.is_file() {
        warn(format!("{p} is not a regular file"));
    }
    let mode = md.mode() & 0o777;
    if mode != 0o600 {
        warn(format!(
            "{p} permissions should only be user read/write (0600, -rw-------), not {mode:04o}: it holds keys"
        ));
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    if md.uid() != unsafe { libc::getuid() } {
        warn(format!("{p} is not owned by the current user"));
    }
}

/// Windows has no mode bits; the profile directory is private to the user.
#[cfg(not(unix))]
pub(crate) fn check_private(_path: &Path, _warn: &mut dyn FnMut(String)) {}

/// fwknop's "critical" variables: an existing value is only replaced after asking (or with
/// `--force-stanza`).
const CRITICAL: &[&str] = &[
    "KEY",
    "KEY_BASE64",
    "HMAC_KEY",
    "HMAC_KEY_BASE64",
    "GPG_RECIPIENT",
    "GPG_SIGNER",
    "GPG_SIGNING_PW",
    "GPG_SIGNING_PW_BASE64",
];

/// Which key a variable holds, so that a kept old key keeps out the new one of the same kind.
fn key_slot(var: &str) -> Option<&'static str> {
    match var {
        "KEY" | "KEY_BASE64" | "KEY_FILE" | "GPG_SIGNING_PW" | "GPG_SIGNING_PW_BASE64" => {
            Some("encryption key")
        }
        "HMAC_KEY" | "HMAC_KEY_BASE64" | "HMAC_KEY_FILE" => Some("HMAC key"),
        _ => None,
    }
}

/// The stanza name on a `[name]` line, as [`RcFile::parse`] reads it.
fn header(line: &str) -> Option<&str> {
    line.trim().strip_prefix('[')?.strip_suffix(']').map(str::trim).filter(|n| !n.is_empty())
}

/// `old` (an rc file's text, empty for a new file) with stanza `name` replaced by `lines`, as
/// fwknop's `--save-rc-stanza` does: the stanza's old variables go, except that a key found
/// there is kept unless `force` or `ask(var)` says to replace it (a kept key keeps out the new
/// key of the same kind, which is reported through `note`). Everything outside the stanza, and
/// comments, stay. A new stanza goes at the end.
pub(crate) fn updated_text(
    old: &str,
    name: &str,
    lines: &[(&str, Zeroizing<String>)],
    force: bool,
    ask: &mut dyn FnMut(&str) -> Result<bool>,
    note: &mut dyn FnMut(String),
) -> Result<Zeroizing<String>> {
    let mut out = Zeroizing::new(String::with_capacity(old.len() + 256));
    let mut kept_slots: Vec<&str> = Vec::new();
    // Where the new lines go: after the last line of the stanza's first block that is not
    // blank (its header, kept keys, comments).
    let mut insert_at: Option<usize> = None;
    let mut target_end: Option<usize> = None;
    let mut in_target = false;
    for raw in old.lines() {
        if let Some(n) = header(raw) {
            if in_target && insert_at.is_none() {
                insert_at = target_end;
            }
            in_target = n.eq_ignore_ascii_case(name);
        } else if in_target {
            let l = raw.trim();
            if !l.is_empty() && !l.starts_with('#') {
                let var = l.split([' ', '\t', '=']).next().unwrap_or_default().to_ascii_uppercase();
                let keep = !force && CRITICAL.contains(&var.as_str()) && !ask(&var)?;
                if !keep {
                    continue;
                }
                if let Some(slot) = key_slot(&var) {
                    kept_slots.push(slot);
                }
                note(format!("kept {var} in [{name}]"));
            }
        }
        out.push_str(raw);
        out.push('\n');
        if in_target && !raw.trim().is_empty() {
            target_end = Some(out.len());
        }
    }
    let mut block = String::new();
    if in_target && insert_at.is_none() {
        insert_at = target_end;
    }
    if insert_at.is_none() {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(&format!("[{name}]\n"));
    }
    for (var, value) in lines {
        if let Some(slot) = key_slot(var)
            && kept_slots.contains(&slot)
        {
            note(format!("the new {slot} ({var}) was not saved: the stanza keeps its old one"));
            continue;
        }
        crate::table::check_rc_value(var, value)?;
        // fwknop's own layout (RC_PARAM_TEMPLATE "%-24s    %s").
        block.push_str(&format!("{var:<24}    {}\n", value.as_str()));
    }
    let block = Zeroizing::new(block);
    match insert_at {
        Some(at) => out.insert_str(at, &block),
        None => out.push_str(&block),
    }
    Ok(out)
}

/// Replaces the file at `path` with `text`, mode 0600, through a new file in the same directory
/// renamed over it (so a crash leaves the old file or the new one, never half of one).
pub(crate) fn write_private(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.spa-{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = || -> Result<()> {
        let mut f = options.open(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# comment
IGNORED before any stanza
[default]
DIGEST_TYPE                 SHA512
  use_hmac=Y

[myserver]
# a comment inside
SPA_SERVER\t10.0.0.1
KEY_BASE64 = dGVzdGtleTEyMw==
ACCESS tcp/22, udp/53
";

    #[test]
    fn parses_stanzas_delimiters_and_comments() {
        let rc = RcFile::parse(Path::new("rc"), SAMPLE).unwrap();
        assert_eq!(rc.names(), ["default", "myserver"]);
        let d = rc.stanza("default").unwrap();
        assert_eq!(d[0], &RcLine { var: "DIGEST_TYPE".into(), value: "SHA512".into(), line: 4 });
        assert_eq!(d[1], &RcLine { var: "USE_HMAC".into(), value: "Y".into(), line: 5 });
        let s = rc.stanza("myserver").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].value, "10.0.0.1");
        // `=` padding at the end of a base64 value survives the `=` delimiter rule.
        assert_eq!(s[1].value, "dGVzdGtleTEyMw==");
        assert_eq!(s[1].line, 10);
        assert_eq!(s[2].value, "tcp/22, udp/53");
        assert!(rc.stanza("other").is_none());
    }

    #[test]
    fn stanza_names_match_without_case_and_list_like_fwknop() {
        let rc = RcFile::parse(Path::new("/h/.fwknoprc"), SAMPLE).unwrap();
        assert!(rc.stanza("MyServer").is_some());
        assert_eq!(rc.listing(), "The following stanzas are configured in /h/.fwknoprc :\n - myserver\n");
    }

    fn lines(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, Zeroizing<String>)> {
        pairs.iter().map(|(k, v)| (*k, Zeroizing::new((*v).to_owned()))).collect()
    }

    #[test]
    fn saving_replaces_the_stanza_and_keeps_the_rest() {
        let old = "# mine\n[default]\nDIGEST_TYPE sha512\n\n[s]\n# about s\nACCESS tcp/1\nKEY oldkey\nSPA_SERVER gw\n\n[t]\nACCESS tcp/3\n";
        let new = lines(&[("ACCESS", "tcp/2"), ("KEY", "newkey")]);
        let mut asked = Vec::new();
        let mut notes = Vec::new();
        let text = updated_text(
            old,
            "S",
            &new,
            false,
            &mut |v| {
                asked.push(v.to_owned());
                Ok(false)
            },
            &mut |n| notes.push(n),
        )
        .unwrap();
        assert_eq!(asked, ["KEY"]);
        assert_eq!(
            text.as_str(),
            "# mine\n[default]\nDIGEST_TYPE sha512\n\n[s]\n# about s\nKEY oldkey\nACCESS                      tcp/2\n\n[t]\nACCESS tcp/3\n"
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        // Answering yes (or --force-stanza) replaces the key.
        let text = updated_text(old, "s", &new, true, &mut |_| panic!("no question with force"), &mut |_| {})
            .unwrap();
        assert!(
            text.contains("KEY                         newkey\n") && !text.contains("oldkey"),
            "{}",
            text.as_str()
        );
        assert!(!text.contains("SPA_SERVER gw"), "the old stanza's other variables go, as in fwknop");
        // A new stanza is appended.
        let text = updated_text("[default]\n", "new", &new, false, &mut |_| Ok(true), &mut |_| {}).unwrap();
        assert_eq!(
            text.as_str(),
            "[default]\n\n[new]\nACCESS                      tcp/2\nKEY                         newkey\n"
        );
        let text = updated_text("", "new", &new, false, &mut |_| Ok(true), &mut |_| {}).unwrap();
        assert!(text.starts_with("[new]\n"));
        let e = updated_text(
            "",
            "x",
            &lines(&[("SPOOF_USER", "a\nKEY b")]),
            false,
            &mut |_| Ok(true),
            &mut |_| {},
        );
        assert!(e.is_err(), "no line injection");
    }

    #[test]
    fn malformed_header_names_the_line() {
        let e = RcFile::parse(Path::new("/x/rc"), "[default]\n[broken\n").unwrap_err();
        assert_eq!(e.to_string(), "/x/rc:2: malformed stanza header");
    }
}

//! fwknop's client rc file (`~/.fwknoprc`): `[stanza]` headers and `VARIABLE value` lines.
//!
//! The format is fwknop's: `#` starts a comment line, the variable name ends at the first space,
//! tab or `=`, and any run of those separates it from the value. Lines before the first stanza
//! belong to no stanza and are ignored, as fwknop does. We only ever read the file: fwknop
//! creates and rewrites it, we never do.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

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
            if n == name {
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
    fn malformed_header_names_the_line() {
        let e = RcFile::parse(Path::new("/x/rc"), "[default]\n[broken\n").unwrap_err();
        assert_eq!(e.to_string(), "/x/rc:2: malformed stanza header");
    }
}

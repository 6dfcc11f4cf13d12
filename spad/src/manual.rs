//! The manual pages `spad(8)` and `spad.toml(5)`, generated rather than written by hand, so
//! that they cannot drift: `spad(8)` from the command line's own definitions (`clap_mangen`),
//! `spad.toml(5)` from the shipped example configuration `conf/spad.toml`, which documents
//! every key (a test holds it to every key the parser accepts). Packagers run `spad man
//! PAGE` (`scripts/package` does).

use std::io::Write as _;

use anyhow::Result;
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

/// The example configuration: the reference `spad.toml(5)` is made from.
pub(crate) const EXAMPLE: &str = include_str!("../../conf/spad.toml");

/// A page `spad man` can print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Page {
    /// The daemon and its commands.
    #[value(name = "spad.8")]
    Spad,
    /// The configuration file.
    #[value(name = "spad.toml.5")]
    Config,
}

/// The page as roff.
pub(crate) fn render(page: Page, cmd: clap::Command) -> Result<String> {
    match page {
        Page::Spad => spad_8(cmd),
        Page::Config => Ok(spad_toml_5(EXAMPLE, cmd.get_version().unwrap_or_default())),
    }
}

/// Text with `code` spans in bold, as the comments in the example configuration and the
/// prose here write them.
fn inline(text: &str) -> Vec<Inline> {
    text.split('`')
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(i, s)| if i % 2 == 1 { bold(s) } else { roman(s) })
        .collect()
}

/// A `.TP` entry: a term in bold and its paragraph.
fn entry(r: &mut Roff, term: &str, text: &str) {
    r.control("TP", []).text([bold(term)]).text(inline(text));
}

fn spad_8(cmd: clap::Command) -> Result<String> {
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    let man = Man::new(cmd.clone())
        .section("8")
        .date(env!("SPA_GIT_DATE"))
        .source(format!("spad {version}"))
        .manual("System Administration");
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;

    let mut r = Roff::new();
    r.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        r.control("SS", [format!("spad {}", sub.get_name()).as_str()]);
        let about = sub.get_long_about().or_else(|| sub.get_about()).map(ToString::to_string);
        r.text(inline(&about.unwrap_or_default()));
        r.to_writer(&mut out)?;
        r = Roff::new();
        let mut options = Vec::new();
        let sub_man = Man::new(sub.clone().disable_help_flag(true));
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            sub_man.render_options_section(&mut options)?;
        }
        // Its arguments, under its own heading rather than a second OPTIONS section.
        let options = String::from_utf8(options)?;
        out.write_all(options.replacen(".SH OPTIONS\n", "", 1).as_bytes())?;
    }

    r.control("SH", ["SIGNALS"]);
    entry(
        &mut r,
        "SIGHUP",
        "Reopen the audit file, then reload the configuration: new access stanzas, limits and log \
         settings take effect, live grants stay; changes to [listen], [firewall] and [replay] wait \
         for a restart (a warning says so). A configuration that does not load is reported and \
         the running one is kept. `spad reload` does the same and reports the result.",
    );
    entry(&mut r, "SIGUSR1", "Reopen the audit file (after logrotate moved it); nothing else changes.");
    entry(
        &mut r,
        "SIGTERM, SIGINT",
        "Stop: grants are revoked, unless `keep_grants_on_exit = true` (the firewall's own \
         timeouts then end them).",
    );

    r.control("SH", ["ENVIRONMENT"]);
    entry(
        &mut r,
        "SPAD_LOG",
        "What the daemon logs, as a tracing filter: a level (`error`, `warn`, `info` (the \
         default), `debug`, `trace`) or per-module directives such as `info,spad=debug`.",
    );
    entry(
        &mut r,
        "JOURNAL_STREAM",
        "Set by systemd when stderr goes to the journal: spad then logs through the journal's \
         native protocol, with each line's priority. Otherwise it writes plain lines with RFC \
         3339 UTC times to stderr, coloured only when stderr is a terminal.",
    );
    entry(
        &mut r,
        "NOTIFY_SOCKET, WATCHDOG_USEC",
        "Set by systemd (Type=notify, WatchdogSec=): spad reports READY, RELOADING, STOPPING and \
         feeds the watchdog while its backend worker is alive.",
    );

    r.control("SH", ["FILES"]);
    entry(&mut r, "/etc/spad/spad.toml", "The configuration; see spad.toml(5).");
    entry(&mut r, "/etc/spad/access.d/*.toml", "More access stanzas.");
    entry(
        &mut r,
        "/var/lib/spad/",
        "State: the grant journal, the replay cache and the lock that keeps one spad per state \
         directory.",
    );
    entry(
        &mut r,
        "/var/log/spad/audit.jsonl",
        "The audit trail: one JSON object per line and decision, with RFC 3339 UTC times.",
    );
    entry(
        &mut r,
        "/run/spad/control.sock",
        "The control socket of `spad status`, `spad revoke` and `spad reload` (mode 0600, root          only; `[control]` in spad.toml(5)).",
    );

    r.control("SH", ["EXIT STATUS"]);
    r.text(inline(
        "0 on success; 1 with one message on stderr (a configuration error names the file, \
         the line and the key); 2 for a command-line error.",
    ));
    r.control("PP", []);
    r.text(inline(
        "`spad check`: 0 when it found nothing; 1 when it found at least one error (spad would \
         refuse to start, or would not work); 2 when it found warnings only (spad would run, \
         probably not as meant), or for a command-line error. With `--warnings-ok`, warnings \
         alone exit with 0. Each finding is one `error:` or `warning:` line on stderr, naming \
         the file, the line and the key.",
    ));

    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("spa"),
        roman("(1), "),
        bold("spad.toml"),
        roman("(5), "),
        bold("nft"),
        roman("(8), "),
        bold("iptables"),
        roman("(8), "),
        bold("fwknopd"),
        roman("(8), "),
        bold("systemd.exec"),
        roman("(5); "),
        italic("/usr/share/doc/spad/"),
    ]);
    r.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(once_preamble(&String::from_utf8(out)?))
}

/// The page with roff's preamble (which each rendered part starts with) only at the top.
fn once_preamble(page: &str) -> String {
    let preamble = Roff::new().render();
    match page.strip_prefix(preamble.as_str()) {
        Some(rest) => format!("{preamble}{}", rest.replace(preamble.as_str(), "")),
        None => page.to_owned(),
    }
}

/// One piece of the example configuration, in order.
#[derive(Debug, PartialEq)]
enum Piece {
    /// A table header (`[listen]`, `[[access]]`, or a commented-out one for an optional
    /// table), with the comment lines just above it.
    Table { header: String, text: Vec<String> },
    /// A key (set or commented out), its value, and the comment above it and after it.
    Key { key: String, value: String, text: Vec<String> },
    /// Comment lines standing alone (a blank line after them).
    Prose(Vec<String>),
}

/// The key of a line `key = value` or `# key = value`, with the value and the trailing
/// comment.
fn key_line(line: &str) -> Option<(&str, &str, Option<&str>)> {
    let rest = line.strip_prefix('#').unwrap_or(line).trim_start();
    let (key, value) = rest.split_once('=')?;
    let key = key.trim_end();
    let is_key =
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !is_key {
        return None;
    }
    match value.split_once(" # ") {
        Some((v, comment)) => Some((key, v.trim(), Some(comment.trim()))),
        None => Some((key, value.trim(), None)),
    }
}

/// A table header `[name]`, `[[name]]`, or the same commented out.
fn header_line(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('#').unwrap_or(line).trim();
    let name = rest.strip_prefix('[')?.strip_suffix(']')?;
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    let ok = !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.');
    ok.then_some(rest)
}

/// Splits the example configuration into what the page shows: the comment at the top, then
/// tables, keys and prose in order.
fn pieces(text: &str) -> (Vec<String>, Vec<Piece>) {
    let mut intro = Vec::new();
    let mut out = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim_end) {
        if line.trim().is_empty() {
            if !pending.is_empty() {
                if out.is_empty() {
                    intro.append(&mut pending);
                } else {
                    out.push(Piece::Prose(std::mem::take(&mut pending)));
                }
            }
        } else if let Some(header) = header_line(line) {
            out.push(Piece::Table { header: header.to_owned(), text: std::mem::take(&mut pending) });
        } else if let Some((key, value, comment)) = key_line(line) {
            let mut text = std::mem::take(&mut pending);
            text.extend(comment.map(str::to_owned));
            out.push(Piece::Key { key: key.to_owned(), value: value.to_owned(), text });
        } else if let Some(comment) = line.strip_prefix('#') {
            pending.push(comment.trim().to_owned());
        }
    }
    if !pending.is_empty() {
        out.push(Piece::Prose(pending));
    }
    (intro, out)
}

fn spad_toml_5(example: &str, version: &str) -> String {
    let (intro, pieces) = pieces(example);
    let mut r = Roff::new();
    r.control("TH", ["spad.toml", "5", env!("SPA_GIT_DATE"), &format!("spad {version}"), "File Formats"]);
    r.control("SH", ["NAME"]);
    r.text([roman("spad.toml - configuration of the SPA daemon spad")]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([italic("/etc/spad/spad.toml"), roman(", "), italic("/etc/spad/access.d/*.toml")]);
    r.control("SH", ["DESCRIPTION"]);
    r.text(inline(&intro.join(" ")));
    r.control("PP", []);
    r.text(inline(
        "The file is TOML. The tables and keys below are those of the example configuration \
         shipped as /etc/spad/spad.toml, with its comments; a key shown commented out there is \
         optional, and its value is the default or an example. Access stanzas are [[access]] \
         tables in this file or in files named *.toml in the access.d directory beside it, read \
         in name order after this file; a file holding stanzas must not be readable or writable \
         by group or others (chmod 600). Keys of access stanzas mirror fwknop's access.conf \
         variables in lower snake case.",
    ));
    r.control("SH", ["TABLES AND KEYS"]);
    for piece in pieces {
        match piece {
            Piece::Table { header, text } => {
                r.control("SS", [header.as_str()]);
                if !text.is_empty() {
                    r.text(inline(&text.join(" ")));
                }
            }
            Piece::Key { key, value, text } => {
                r.control("TP", []).text([bold(key), roman(" = "), italic(value)]);
                r.text(inline(&text.join(" ")));
            }
            Piece::Prose(text) => {
                r.control("PP", []).text(inline(&text.join(" ")));
            }
        }
    }
    r.control("SH", ["FILES"]);
    r.control("TP", []).text([italic("/etc/spad/spad.toml")]).text([roman("The configuration.")]);
    r.control("TP", []).text([italic("/etc/spad/access.d/*.toml")]).text([roman("More [[access]] stanzas.")]);
    r.control("TP", [])
        .text([italic("/usr/share/doc/spad/")])
        .text([roman("The backends' documentation (nft, iptables, script) and examples.")]);
    r.control("SH", ["SEE ALSO"]);
    r.text([bold("spad"), roman("(8), "), bold("spa"), roman("(1), "), bold("fwknopd.conf"), roman("(5)")]);
    r.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names a parser accepts, from the error serde gives for an unknown key
    /// (``unknown field `zz`, expected one of `a`, `b` ``).
    fn accepted(error: &str) -> Vec<String> {
        let (_, expected) = error.split_once("expected").unwrap_or_else(|| panic!("{error}"));
        expected.split('`').skip(1).step_by(2).map(str::to_owned).collect()
    }

    fn unknown_key<T: serde::de::DeserializeOwned>() -> String {
        match toml::from_str::<T>("zz_unknown = 1") {
            Ok(_) => panic!("an unknown key was accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// Every key every table accepts is in the example (set or commented out), in its own
    /// table, so the page made from it documents all of them; and it names no key that does
    /// not exist. A new backend's options go into the example as a commented-out
    /// `[firewall.NAME]` table.
    #[test]
    fn the_example_documents_every_key_the_parsers_accept() {
        use spa_engine::stanza::AccessStanza;
        use spad::config::{Limits, Listen, Log, NatSettings, RedisSettings, Replay, TcpListen};

        let mut tables: Vec<(String, Vec<String>)> = vec![
            ("[listen]".into(), accepted(&unknown_key::<Listen>())),
            ("[listen.tcp]".into(), accepted(&unknown_key::<TcpListen>())),
            ("[replay]".into(), accepted(&unknown_key::<Replay>())),
            ("[replay.redis]".into(), accepted(&unknown_key::<RedisSettings>())),
            ("[log]".into(), accepted(&unknown_key::<Log>())),
            ("[nat]".into(), accepted(&unknown_key::<NatSettings>())),
            ("[limits]".into(), accepted(&unknown_key::<Limits>())),
            ("[control]".into(), accepted(&unknown_key::<spad::control::Control>())),
            ("[metrics]".into(), accepted(&unknown_key::<spad::metrics::Metrics>())),
            ("[server]".into(), accepted(&unknown_key::<spad::config::Server>())),
            ("[[access]]".into(), accepted(&unknown_key::<AccessStanza>())),
            // Read by hand in config.rs, not by serde.
            ("[firewall]".into(), vec!["backend".into(), "keep_grants_on_exit".into()]),
        ];
        let registry = spa_backends::Registry::collect().unwrap();
        for name in registry.names().into_iter().filter(|n| *n != "none") {
            let table: toml::Table = toml::from_str("zz_unknown = 1").unwrap();
            let error = match registry.create(name, &table) {
                Ok(_) => panic!("backend {name} accepted an unknown key"),
                Err(e) => spad::config::error_chain(&e),
            };
            tables.push((format!("[firewall.{name}]"), accepted(&error)));
        }

        let (_, pieces) = pieces(EXAMPLE);
        let mut documented: Vec<(String, String)> = Vec::new();
        let mut headers: Vec<String> = Vec::new();
        let mut table = String::new();
        for p in &pieces {
            match p {
                Piece::Table { header, .. } => {
                    table.clone_from(header);
                    headers.push(header.clone());
                }
                Piece::Key { key, text, .. } => {
                    assert!(!text.is_empty(), "{table} {key}: no description in conf/spad.toml");
                    documented.push((table.clone(), key.clone()));
                }
                Piece::Prose(_) => {}
            }
        }
        // A key that holds a table is documented by that table's header (`tcp` of `[listen]`
        // by `[listen.tcp]`).
        let headers: Vec<&String> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Table { header, .. } => Some(header),
                _ => None,
            })
            .collect();
        for (table, keys) in &tables {
            assert!(!keys.is_empty(), "{table}");
            for key in keys {
                let sub = format!("[{}.{key}]", table.trim_matches(['[', ']']));
                assert!(
                    documented.contains(&(table.clone(), key.clone())) || headers.contains(&&sub),
                    "{table} {key} is not in conf/spad.toml"
                );
            }
        }
        for (table, key) in &documented {
            // A backend this build leaves out cannot be asked; the full build checks it.
            let backend = table.strip_prefix("[firewall.").and_then(|t| t.strip_suffix(']'));
            if backend.is_some_and(|b| !registry.names().contains(&b)) {
                continue;
            }
            let known = tables.iter().find(|(t, _)| t == table);
            let known = known.unwrap_or_else(|| panic!("conf/spad.toml: unknown table {table}"));
            assert!(known.1.contains(key), "conf/spad.toml: {table} {key} is not a key spad accepts");
        }
    }

    /// Every visible option and command of the real command line is on `spad(8)`, and every
    /// table of the example on `spad.toml(5)`.
    #[test]
    fn the_pages_show_every_option_command_and_table() {
        let cmd = crate::command();
        let page = render(Page::Spad, cmd.clone()).unwrap();
        assert!(page.contains(".TH spad 8 "), "{page}");
        assert_eq!(page.matches(".ie \\n(.g").count(), 1, "one preamble");
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                assert!(page.contains(&format!("\\-\\-{long}")), "--{long}");
            }
        }
        for sub in cmd.get_subcommands() {
            let heading = format!(".SS \"spad {}\"", sub.get_name());
            assert_eq!(page.contains(&heading), !sub.is_hide_set(), "{}", sub.get_name());
        }
        let page = render(Page::Config, cmd).unwrap();
        for header in ["[listen]", "[firewall.nft]", "[firewall.iptables]", "[[access]]", "[limits]"] {
            assert!(page.contains(&format!(".SS {header}")), "{header}");
        }
    }

    #[test]
    fn lines_of_the_example_are_told_apart() {
        assert_eq!(key_line("mode = \"socket\""), Some(("mode", "\"socket\"", None)));
        assert_eq!(
            key_line("# port = 62201   # capture mode"),
            Some(("port", "62201", Some("capture mode")))
        );
        assert_eq!(key_line("# \"socket\": UDP sockets = x"), None);
        assert_eq!(key_line("# Keys: `spa keygen` prints a pair"), None);
        assert_eq!(header_line("[[access]]"), Some("[[access]]"));
        assert_eq!(header_line("# [firewall.script]"), Some("[firewall.script]"));
        assert_eq!(header_line("# [see the README]"), None);
    }

    #[test]
    fn comments_attach_to_what_follows_them() {
        let (intro, p) = pieces("# top\n\n[a]\n# about b\nb = 1   # more\n\n# alone\n\n# c = 2\n");
        assert_eq!(intro, ["top"]);
        assert_eq!(
            p,
            [
                Piece::Table { header: "[a]".into(), text: vec![] },
                Piece::Key {
                    key: "b".into(),
                    value: "1".into(),
                    text: vec!["about b".into(), "more".into()]
                },
                Piece::Prose(vec!["alone".into()]),
                Piece::Key { key: "c".into(), value: "2".into(), text: vec![] },
            ]
        );
    }
}

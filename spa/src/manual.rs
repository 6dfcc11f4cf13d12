//! The manual page `spa(1)`, generated from the command line's own definitions
//! (`clap_mangen`) so that it cannot drift from them. Packagers run `spa man` (`scripts/package`
//! does).

use std::io::Write as _;

use anyhow::Result;
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

/// Text with `code` spans in bold.
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

/// `spa(1)` as roff.
pub(crate) fn spa_1(cmd: clap::Command) -> Result<String> {
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    let man = Man::new(cmd.clone()).date(env!("SPA_GIT_DATE")).source(format!("spa {version}"));
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;

    let mut r = Roff::new();
    r.control("SH", ["COMMANDS"]);
    r.to_writer(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut r = Roff::new();
        r.control("SS", [format!("spa {}", sub.get_name()).as_str()]);
        let mut about = sub.get_long_about().or_else(|| sub.get_about()).map(ToString::to_string);
        if sub.get_name() == "knock" {
            about = about.map(|a| format!("{a}. It takes the OPTIONS above."));
        }
        r.text(inline(&about.unwrap_or_default()));
        r.to_writer(&mut out)?;
        if sub.get_name() != "knock" && sub.get_arguments().any(|a| !a.is_hide_set()) {
            let mut options = Vec::new();
            Man::new(sub.clone().disable_help_flag(true)).render_options_section(&mut options)?;
            out.write_all(String::from_utf8(options)?.replacen(".SH OPTIONS\n", "", 1).as_bytes())?;
        }
    }

    let mut r = Roff::new();
    r.control("SH", ["EXAMPLES"]);
    for (what, example) in [
        ("Make a key pair for a new access stanza:", "spa keygen"),
        (
            "Open tcp/22 for the address the packet comes from:",
            "spa -A tcp/22 -s -D gw.example.org --key-base64-rijndael K --key-base64-hmac H",
        ),
        ("The same with the settings of a ~/.fwknoprc stanza:", "spa -n myserver"),
        (
            "Save the options as that stanza (fwknop reads it too), then knock with it:",
            "spa -n myserver --save-rc-stanza -A tcp/22 -s -D gw.example.org -T",
        ),
        (
            "Learn the address to let in over HTTPS, from a resolver of your own:",
            "spa -n myserver -R --resolve-url https://ip.example.org/",
        ),
        ("Run the last knock again:", "spa -l"),
        ("Make your key pair for a modern-format stanza:", "spa keygen --modern"),
        (
            "Knock, then connect, as ssh's ProxyCommand:",
            "ssh -o ProxyCommand='spa connect -n myserver %h %p' gw.example.org",
        ),
        ("Load completions in bash:", "source <(spa completions bash)"),
    ] {
        r.text(inline(what));
        r.control("IP", []).text([bold(example)]);
        r.control("PP", []);
    }
    r.control("SH", ["FWKNOP OPTIONS NOT SUPPORTED"]);
    r.text(inline(
        "These fwknop options are refused on the command line with the reason (exit status 2); \
         their ~/.fwknoprc variables are ignored with a warning.",
    ));
    for o in crate::table::OPTIONS {
        if let crate::table::Kind::Refused(why) = o.kind {
            let term = match (o.short.is_some() || o.long.is_some(), o.rc.is_empty()) {
                (true, false) => format!("{} ({})", o.flag(), o.rc.join(", ")),
                (true, true) => o.flag(),
                (false, _) => o.rc.join(", "),
            };
            entry(&mut r, &term, why);
        }
    }
    r.control("SH", ["FILES"]);
    entry(
        &mut r,
        "~/.fwknoprc",
        "fwknop's client settings, read unless --no-rc-file (or --rc-file names another): \
         [default] and named stanzas (-n), in fwknop's variable names; the command line wins, \
         and an option given twice keeps its last value. --save-rc-stanza writes a stanza in \
         fwknop's format (the real fwknop reads it), replacing that stanza's variables and \
         asking before it replaces a key (--force-stanza does not ask); the file is rewritten \
         with mode 0600. It holds keys: spa warns, as fwknop does, when it is not mode 0600 \
         or not yours.",
    );
    entry(
        &mut r,
        "~/.fwknop.run",
        "The last knock's command line (fwknop's format, mode 0600; it holds any key given on \
         the command line), for -l and --show-last. -E names another file; --no-save-args \
         (or NO_SAVE_ARGS Y) keeps it from being written.",
    );
    r.control("SH", ["ENVIRONMENT"]);
    entry(
        &mut r,
        "SSL_CERT_FILE, SSL_CERT_DIR",
        "-R fetches its page (default https://www.cipherdyne.org/cgi-bin/myip, fwknop's) over \
         HTTPS and trusts the system's certificate store; either variable replaces that store \
         (a PEM bundle, or a directory of hashed certificates), e.g. for a private resolver's CA.",
    );
    entry(
        &mut r,
        "SPOOF_USER, LOGNAME, USER",
        "The username in the packet when -U/SPOOF_USER is not given, in this order (then the \
         account name).",
    );
    r.control("SH", ["EXIT STATUS"]);
    r.text(inline("0 on success; 1 with one message on stderr; 2 for a command-line error."));
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("spad"),
        roman("(8), "),
        bold("spad.toml"),
        roman("(5), "),
        bold("fwknop"),
        roman("(8); "),
        italic("/usr/share/doc/spa/"),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every visible option and command of the real command line is on the page.
    #[test]
    fn the_page_shows_every_option_and_command() {
        let cmd = crate::Cli::command();
        let page = super::spa_1(cmd.clone()).unwrap();
        assert!(page.starts_with(".ie"), "{page}");
        assert!(page.contains(".TH spa 1 "), "{page}");
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                assert!(page.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))), "--{long}");
            }
        }
        for o in crate::table::OPTIONS {
            if let crate::table::Kind::Refused(_) = o.kind {
                let name = o.long.map_or_else(|| o.rc[0].to_owned(), |l| format!("--{l}"));
                assert!(page.contains(&name.replace('-', "\\-")), "{}: {page}", o.id);
            }
        }
        for sub in cmd.get_subcommands() {
            assert_eq!(
                page.contains(&format!(".SS \"spa {}\"", sub.get_name())),
                !sub.is_hide_set(),
                "{}",
                sub.get_name()
            );
        }
    }
}

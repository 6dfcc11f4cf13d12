//! Every knock option, each defined once: its command-line flags, its `~/.fwknoprc` variable,
//! its value parser (the same for both), the rc line `--save-rc-stanza` writes for it, or why
//! it is refused. The clap arguments, the rc reader and the stanza writer are all made from
//! [`OPTIONS`], so a new option is one entry here (and its field in [`Settings`]).
//!
//! Sources apply in order, each value overwriting the one before, as fwknop does: `[default]`,
//! the named stanza, then the command line in the order the options were typed. So an option
//! given twice keeps its last value, and `-a`/`-s` override each other by position. `-R` is
//! applied before the other command-line options, so that `-a` or `-s` win over it wherever
//! they stand (fwknop: "-a overrides IP resolution").
//!
//! The options that are not settings (`-T`, `-n`, `--rc-file`, `-k`, ...) are plain clap fields
//! of [`crate::knock::KnockArgs`].

use anyhow::{Context as _, Result, bail};
use clap::builder::ValueParser;
use clap::error::ErrorKind;
use clap::{Arg, ArgAction, ArgMatches, Command};
use zeroize::Zeroizing;

use crate::opts::{Allow, KeySpec, Settings, expand_home, parse_bool, parse_nonzero_port, parse_time_offset};
use crate::rc::RcLine;

/// What an option takes on the command line.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Takes {
    /// A value, shown as this name in the help (`-A PROTO/PORT,...`).
    Value(&'static str),
    /// Nothing: a switch (`--use-hmac`), which stands for the rc value `Y`.
    Switch,
    /// Nothing, counted when repeated (`-v -v`), which stands for the rc value `2`.
    Count,
    /// Not on the command line: an rc variable only.
    RcOnly,
}

/// Stores a value (typed on the command line or read from the rc file) into the settings.
pub(crate) type Setter = fn(&mut Settings, &str) -> Result<()>;
/// The rc value that `--save-rc-stanza` writes for a setting, if it is set.
pub(crate) type Saver = fn(&Settings) -> Option<Zeroizing<String>>;

/// What an option does.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// A knock setting.
    Setting {
        /// The one parser, for both sources.
        set: Setter,
        /// The rc variable `--save-rc-stanza` writes it as, and its value.
        save: Option<(&'static str, Saver)>,
        /// Applied before the other command-line options (so they win over it).
        early: bool,
    },
    /// An fwknop option this client does not implement; the text says why. Refused on the
    /// command line, a warning in the rc file.
    Refused(&'static str),
}

/// One option.
#[derive(Clone, Copy)]
pub(crate) struct Opt {
    /// Its clap id.
    pub(crate) id: &'static str,
    /// `-A`.
    pub(crate) short: Option<char>,
    /// `--access`.
    pub(crate) long: Option<&'static str>,
    /// Other long names fwknop accepts (`--resolve-ip-http`), not shown in the help.
    pub(crate) aliases: &'static [&'static str],
    /// What it takes on the command line.
    pub(crate) takes: Takes,
    /// Its help line.
    pub(crate) help: &'static str,
    /// The rc variables it reads.
    pub(crate) rc: &'static [&'static str],
    /// What it does.
    pub(crate) kind: Kind,
}

impl Opt {
    const fn new(id: &'static str, help: &'static str) -> Self {
        Opt {
            id,
            short: None,
            long: None,
            aliases: &[],
            takes: Takes::RcOnly,
            help,
            rc: &[],
            kind: Kind::Refused("no handler"),
        }
    }
    const fn short(mut self, c: char) -> Self {
        self.short = Some(c);
        self
    }
    const fn long(mut self, l: &'static str) -> Self {
        self.long = Some(l);
        self
    }
    const fn aliases(mut self, a: &'static [&'static str]) -> Self {
        self.aliases = a;
        self
    }
    /// Takes a value on the command line (a long name must be set for it to show).
    const fn value(mut self, name: &'static str) -> Self {
        self.takes = Takes::Value(name);
        self
    }
    const fn switch(mut self) -> Self {
        self.takes = Takes::Switch;
        self
    }
    const fn count(mut self) -> Self {
        self.takes = Takes::Count;
        self
    }
    const fn rc(mut self, vars: &'static [&'static str]) -> Self {
        self.rc = vars;
        self
    }
    /// A setting, not saved by `--save-rc-stanza`.
    const fn set(mut self, set: Setter) -> Self {
        self.kind = Kind::Setting { set, save: None, early: false };
        self
    }
    /// A setting that `--save-rc-stanza` writes as `var`.
    const fn saved(mut self, set: Setter, var: &'static str, save: Saver) -> Self {
        self.kind = Kind::Setting { set, save: Some((var, save)), early: false };
        self
    }
    const fn early(mut self) -> Self {
        if let Kind::Setting { set, save, .. } = self.kind {
            self.kind = Kind::Setting { set, save, early: true };
        }
        self
    }
    const fn refused(mut self, why: &'static str) -> Self {
        self.kind = Kind::Refused(why);
        self
    }

    /// How messages name it: `-A/--access`, `--use-hmac`, or its rc variable.
    pub(crate) fn flag(&self) -> String {
        match (self.short, self.long) {
            (Some(s), Some(l)) => format!("-{s}/--{l}"),
            (Some(s), None) => format!("-{s}"),
            (None, Some(l)) => format!("--{l}"),
            (None, None) => self.rc.first().copied().unwrap_or(self.id).to_owned(),
        }
    }

    /// Its clap argument, if it has a command-line form.
    fn arg(&self) -> Option<Arg> {
        if matches!(self.takes, Takes::RcOnly) || (self.short.is_none() && self.long.is_none()) {
            return None;
        }
        let help = self.help.trim_end_matches('.');
        let help = match self.rc {
            [] => help.to_owned(),
            vars => format!("{help} [{}]", vars.join(", ")),
        };
        let mut a =
            Arg::new(self.id).help(help).help_heading("Knock settings (and their ~/.fwknoprc variables)");
        if let Some(s) = self.short {
            a = a.short(s);
        }
        if let Some(l) = self.long {
            a = a.long(l);
        }
        for alias in self.aliases {
            a = a.alias(*alias);
        }
        a = match self.takes {
            Takes::Value(name) => {
                a.value_name(name).action(ArgAction::Set).value_parser(ValueParser::string())
            }
            Takes::Switch => a.action(ArgAction::SetTrue),
            Takes::Count | Takes::RcOnly => a.action(ArgAction::Count),
        };
        if let Kind::Refused(_) = self.kind {
            // Listed in the manual's own section, not in --help.
            a = a.hide(true);
        }
        Some(a)
    }
}

/// Stores a value: the setters' common last step.
fn put<T>(slot: &mut Option<T>, v: T) -> Result<()> {
    *slot = Some(v);
    Ok(())
}

fn yes_no(b: Option<bool>) -> Option<Zeroizing<String>> {
    b.map(|b| Zeroizing::new(if b { "Y" } else { "N" }.to_owned()))
}

fn shown<T: ToString>(v: Option<T>) -> Option<Zeroizing<String>> {
    v.map(|v| Zeroizing::new(v.to_string()))
}

fn secret(v: &str) -> Zeroizing<String> {
    Zeroizing::new(v.to_owned())
}

/// `ALLOW_IP` as fwknop reads it: `source`, `resolve` or the address.
fn save_allow(s: &Settings) -> Option<Zeroizing<String>> {
    s.allow.as_ref().map(|a| {
        Zeroizing::new(match a {
            Allow::Ip(ip) => ip.to_string(),
            Allow::Source => "source".to_owned(),
            Allow::Resolve => "resolve".to_owned(),
        })
    })
}

/// A key spec as its rc variable and value.
fn key_line(spec: Option<&KeySpec>, names: [&'static str; 3]) -> Option<(&'static str, Zeroizing<String>)> {
    Some(match spec? {
        KeySpec::Text(t) => (names[0], t.clone()),
        KeySpec::Base64(b) => (names[1], b.clone()),
        KeySpec::File(p) => (names[2], Zeroizing::new(p.display().to_string())),
    })
}

/// The encryption key's rc line: `KEY`, `KEY_BASE64` or `KEY_FILE`, by how it was given.
pub(crate) fn key_rc_line(s: &Settings) -> Option<(&'static str, Zeroizing<String>)> {
    key_line(s.key.as_ref(), ["KEY", "KEY_BASE64", "KEY_FILE"])
}

/// The HMAC key's rc line: `HMAC_KEY`, `HMAC_KEY_BASE64` or `HMAC_KEY_FILE`.
pub(crate) fn hmac_key_rc_line(s: &Settings) -> Option<(&'static str, Zeroizing<String>)> {
    key_line(s.hmac_key.as_ref(), ["HMAC_KEY", "HMAC_KEY_BASE64", "HMAC_KEY_FILE"])
}

/// Placeholder saver for the key options: [`stanza_lines`] asks [`key_rc_line`] instead, as
/// the rc variable depends on how the key was given.
fn save_key(s: &Settings) -> Option<Zeroizing<String>> {
    key_rc_line(s).map(|(_, v)| v)
}

fn save_hmac_key(s: &Settings) -> Option<Zeroizing<String>> {
    hmac_key_rc_line(s).map(|(_, v)| v)
}

/// Without the `gpg` feature, every GPG option is refused with this.
#[cfg(not(feature = "gpg"))]
const GPG: &str =
    "this spa was built without fwknop's GnuPG mode (cargo feature gpg); use Rijndael keys (spa keygen)";
const GPG_HOME: &str = "no GnuPG keyring is read; export the keys to files: `gpg --export --armor SERVER_ID > \
                        server.asc` for --gpg-recipient-key-file, `gpg --export-secret-keys --armor YOUR_ID > \
                        me.asc` for --gpg-signer-key-file";
const GPG_EXE: &str =
    "no GnuPG process runs; OpenPGP is built in (--gpg-recipient-key-file, --gpg-signer-key-file)";
const GPG_AGENT: &str = "no GnuPG agent is used; give the signing key as a file (`gpg --export-secret-keys \
                         --armor YOUR_ID > me.asc`, --gpg-signer-key-file me.asc)";

/// A GPG option: a setting in a build with the `gpg` feature, refused without it.
#[cfg(feature = "gpg")]
const fn gpg_opt(o: Opt, set: Setter) -> Opt {
    o.set(set)
}

/// A GPG option: a setting in a build with the `gpg` feature, refused without it.
#[cfg(not(feature = "gpg"))]
const fn gpg_opt(o: Opt, _set: Setter) -> Opt {
    o.refused(GPG)
}
const RAW: &str = "it needs raw sockets, which this client does not use (send with -P udp, tcp or http)";
const WGET: &str = "this client fetches the -R page itself over HTTPS (rustls), without wget";

/// Every option, in the order `--save-rc-stanza` writes them (fwknop's order).
pub(crate) static OPTIONS: &[Opt] = &[
    Opt::new("digest_type", "Inner digest: md5, sha1, sha256, sha384, sha512, sha3_256, sha3_512.")
        .short('m')
        .long("digest-type")
        .value("TYPE")
        .rc(&["DIGEST_TYPE"])
        .saved(
            |s, v| put(&mut s.digest_type, v.parse()?),
            "DIGEST_TYPE",
            |s| shown(s.digest_type.map(|d| d.name())),
        ),
    Opt::new("server_proto", "How to send: udp (default), tcp or http.")
        .short('P')
        .long("server-proto")
        .value("PROTO")
        .rc(&["SPA_SERVER_PROTO"])
        .saved(|s, v| put(&mut s.server_proto, v.parse()?), "SPA_SERVER_PROTO", |s| shown(s.server_proto)),
    Opt::new("server_port", "Destination port (default 62201).")
        .short('p')
        .long("server-port")
        .value("PORT")
        .rc(&["SPA_SERVER_PORT"])
        .saved(
            |s, v| put(&mut s.server_port, parse_nonzero_port(v)?),
            "SPA_SERVER_PORT",
            |s| shown(s.server_port),
        ),
    Opt::new("source_port", "Send from this local UDP port.")
        .short('S')
        .long("source-port")
        .value("PORT")
        .rc(&["SPA_SOURCE_PORT"])
        .saved(
            |s, v| put(&mut s.source_port, parse_nonzero_port(v)?),
            "SPA_SOURCE_PORT",
            |s| shown(s.source_port),
        ),
    Opt::new("fw_timeout", "How long (seconds) the server should keep the rule.")
        .short('f')
        .long("fw-timeout")
        .value("SECONDS")
        .rc(&["FW_TIMEOUT"])
        .saved(
            |s, v| put(&mut s.fw_timeout, v.trim().parse().context("expected seconds")?),
            "FW_TIMEOUT",
            |s| shown(s.fw_timeout),
        ),
    Opt::new("allow_ip", "The address the server should let in.")
        .short('a')
        .long("allow-ip")
        .value("IP")
        .rc(&["ALLOW_IP"])
        .saved(|s, v| put(&mut s.allow, v.parse()?), "ALLOW_IP", save_allow),
    Opt::new(
        "source_ip",
        "Let the server use the packet's source address (sends 0.0.0.0) [ALLOW_IP source].",
    )
    .short('s')
    .long("source-ip")
    .switch()
    .saved(|s, _| put(&mut s.allow, Allow::Source), "ALLOW_IP", save_allow),
    Opt::new(
        "resolve_ip_https",
        "Learn our external address over HTTPS (--resolve-url); -a and -s win over it.",
    )
    .short('R')
    .long("resolve-ip-https")
    .aliases(&["resolve-ip-http"])
    .switch()
    .rc(&["RESOLVE_IP_HTTPS", "RESOLVE_IP_HTTP"])
    .saved(
        |s, v| {
            if parse_bool(v)? {
                s.allow = Some(Allow::Resolve);
            }
            Ok(())
        },
        "ALLOW_IP",
        save_allow,
    )
    .early(),
    Opt::new("time_offset", "TIME_OFFSET: seconds, or with a unit, after a - to go back.")
        .rc(&["TIME_OFFSET"])
        .set(|s, v| {
            s.time_offset = Some(match v.trim().strip_prefix('-') {
                Some(minus) => -parse_time_offset(minus)?,
                None => parse_time_offset(v.trim().trim_start_matches('+'))?,
            });
            Ok(())
        }),
    Opt::new("time_offset_plus", "Move the timestamp forward, e.g. 60sec, 2min, 1hour, 1day [TIME_OFFSET].")
        .long("time-offset-plus")
        .value("TIME")
        .saved(
            |s, v| put(&mut s.time_offset, parse_time_offset(v)?),
            "TIME_OFFSET",
            |s| shown(s.time_offset),
        ),
    Opt::new("time_offset_minus", "Move the timestamp back, e.g. 60sec, 2min, 1hour, 1day [TIME_OFFSET -N].")
        .long("time-offset-minus")
        .value("TIME")
        .saved(
            |s, v| put(&mut s.time_offset, -parse_time_offset(v)?),
            "TIME_OFFSET",
            |s| shown(s.time_offset),
        ),
    Opt::new("encryption_mode", "Rijndael mode: cbc (default), ecb, cfb, ofb, ctr, legacy.")
        .short('M')
        .long("encryption-mode")
        .value("MODE")
        .rc(&["ENCRYPTION_MODE"])
        .saved(|s, v| put(&mut s.mode, v.parse()?), "ENCRYPTION_MODE", |s| shown(s.mode.map(|m| m.name()))),
    gpg_opt(
        Opt::new("gpg_encryption", "fwknop's GPG mode (needs --gpg-recipient-key-file).")
            .short('g')
            .long("gpg-encryption")
            .switch()
            .rc(&["USE_GPG"]),
        |s, v| put(&mut s.gpg, parse_bool(v)?),
    ),
    Opt::new("gpg_agent", "GnuPG agent.")
        .long("gpg-agent")
        .switch()
        .rc(&["USE_GPG_AGENT"])
        .refused(GPG_AGENT),
    gpg_opt(
        Opt::new("gpg_no_signing_pw", "The GPG signing key has no passphrase.")
            .long("gpg-no-signing-pw")
            .switch()
            .rc(&["GPG_NO_SIGNING_PW"]),
        |s, v| put(&mut s.gpg_no_signing_pw, parse_bool(v)?),
    ),
    gpg_opt(
        Opt::new("gpg_recipient_key", "GPG: the server's key id, checked against --gpg-recipient-key-file.")
            .long("gpg-recipient-key")
            .value("KEY")
            .rc(&["GPG_RECIPIENT"]),
        |s, v| put(&mut s.gpg_recipient, v.trim().to_owned()),
    ),
    gpg_opt(
        Opt::new("gpg_signer_key", "GPG: your key id, checked against --gpg-signer-key-file.")
            .long("gpg-signer-key")
            .value("KEY")
            .rc(&["GPG_SIGNER"]),
        |s, v| put(&mut s.gpg_signer, v.trim().to_owned()),
    ),
    gpg_opt(
        Opt::new("gpg_recipient_key_file", "GPG: the server's public key (gpg --export --armor ID > FILE).")
            .long("gpg-recipient-key-file")
            .value("FILE")
            .rc(&["GPG_RECIPIENT_KEY_FILE"]),
        |s, v| put(&mut s.gpg_recipient_key_file, expand_home(v.trim())),
    ),
    gpg_opt(
        Opt::new("gpg_signer_key_file", "GPG: your secret key (gpg --export-secret-keys --armor ID > FILE).")
            .long("gpg-signer-key-file")
            .value("FILE")
            .rc(&["GPG_SIGNER_KEY_FILE"]),
        |s, v| put(&mut s.gpg_signer_key_file, expand_home(v.trim())),
    ),
    Opt::new("gpg_home_dir", "GnuPG home.")
        .long("gpg-home-dir")
        .value("DIR")
        .rc(&["GPG_HOMEDIR"])
        .refused(GPG_HOME),
    Opt::new("gpg_exe", "GnuPG binary.").long("gpg-exe").value("PATH").rc(&["GPG_EXE"]).refused(GPG_EXE),
    gpg_opt(
        Opt::new("gpg_signing_pw", "The passphrase of the GPG signing key.").rc(&["GPG_SIGNING_PW"]),
        |s, v| put(&mut s.gpg_signing_pw, KeySpec::Text(secret(v))),
    ),
    gpg_opt(
        Opt::new("gpg_signing_pw_base64", "The passphrase of the GPG signing key, in base64.")
            .rc(&["GPG_SIGNING_PW_BASE64"]),
        |s, v| put(&mut s.gpg_signing_pw, KeySpec::Base64(secret(v.trim()))),
    ),
    Opt::new("spoof_user", "Username to put in the packet.")
        .short('U')
        .long("spoof-user")
        .value("USER")
        .rc(&["SPOOF_USER"])
        .saved(|s, v| put(&mut s.spoof_user, v.to_owned()), "SPOOF_USER", |s| shown(s.spoof_user.as_ref())),
    Opt::new("spoof_source", "Spoofed source address.")
        .short('Q')
        .long("spoof-source")
        .aliases(&["spoof-src"])
        .value("IP")
        .rc(&["SPOOF_SOURCE_IP"])
        .refused(RAW),
    Opt::new("access", "Ports to open: proto/port[,proto/port...], e.g. tcp/22,udp/53.")
        .short('A')
        .long("access")
        .value("PROTO/PORT,...")
        .rc(&["ACCESS"])
        .saved(|s, v| put(&mut s.access, v.to_owned()), "ACCESS", |s| shown(s.access.as_ref())),
    Opt::new("destination", "The SPA server: hostname, IPv4 or IPv6 address.")
        .short('D')
        .long("destination")
        .value("HOST")
        .rc(&["SPA_SERVER"])
        .saved(|s, v| put(&mut s.destination, v.to_owned()), "SPA_SERVER", |s| shown(s.destination.as_ref())),
    Opt::new("rand_port", "Send to a random server port (10000..65534); the server must listen on them.")
        .short('r')
        .long("rand-port")
        .switch()
        .rc(&["RAND_PORT"])
        .saved(|s, v| put(&mut s.rand_port, parse_bool(v)?), "RAND_PORT", |s| yes_no(s.rand_port)),
    Opt::new("key_rijndael", "The Rijndael key (visible to ps; prefer the rc file or the prompt).")
        .long("key-rijndael")
        .value("KEY")
        .rc(&["KEY"])
        .saved(|s, v| put(&mut s.key, KeySpec::Text(secret(v))), "KEY", save_key),
    Opt::new("key_base64_rijndael", "The Rijndael key, base64.")
        .long("key-base64-rijndael")
        .value("B64")
        .rc(&["KEY_BASE64"])
        .saved(|s, v| put(&mut s.key, KeySpec::Base64(secret(v))), "KEY_BASE64", save_key),
    Opt::new("hmac_digest_type", "HMAC digest (implies --use-hmac); with -k, the key length follows it.")
        .long("hmac-digest-type")
        .value("TYPE")
        .rc(&["HMAC_DIGEST_TYPE"])
        .saved(
            |s, v| put(&mut s.hmac_type, v.parse()?),
            "HMAC_DIGEST_TYPE",
            |s| shown(s.hmac_type.map(|d| d.name())),
        ),
    Opt::new("key_base64_hmac", "The HMAC key, base64 (implies --use-hmac).")
        .long("key-base64-hmac")
        .value("B64")
        .rc(&["HMAC_KEY_BASE64"])
        .saved(|s, v| put(&mut s.hmac_key, KeySpec::Base64(secret(v))), "HMAC_KEY_BASE64", save_hmac_key),
    Opt::new("key_hmac", "The HMAC key (implies --use-hmac).")
        .long("key-hmac")
        .value("KEY")
        .rc(&["HMAC_KEY"])
        .saved(|s, v| put(&mut s.hmac_key, KeySpec::Text(secret(v))), "HMAC_KEY", save_hmac_key),
    Opt::new("use_hmac", "Add an HMAC (authenticated encryption).")
        .long("use-hmac")
        .switch()
        .rc(&["USE_HMAC"])
        .saved(|s, v| put(&mut s.use_hmac, parse_bool(v)?), "USE_HMAC", |s| yes_no(s.use_hmac)),
    Opt::new("use_wget_user_agent", "wget's User-Agent.")
        .long("use-wget-user-agent")
        .switch()
        .rc(&["USE_WGET_USER_AGENT"])
        .refused(WGET),
    Opt::new("get_key", "Read the Rijndael key from a fwknop key file (`host: key` lines).")
        .short('G')
        .long("get-key")
        .value("FILE")
        .rc(&["KEY_FILE"])
        .saved(|s, v| put(&mut s.key, KeySpec::File(expand_home(v))), "KEY_FILE", save_key),
    Opt::new("get_hmac_key", "Read the HMAC key from a fwknop key file.")
        .long("get-hmac-key")
        .value("FILE")
        .rc(&["HMAC_KEY_FILE"])
        .saved(|s, v| put(&mut s.hmac_key, KeySpec::File(expand_home(v))), "HMAC_KEY_FILE", save_hmac_key),
    Opt::new("nat_access", "NAT access to an internal service: host[:,]port.")
        .short('N')
        .long("nat-access")
        .value("HOST[:,]PORT")
        .rc(&["NAT_ACCESS"])
        .saved(|s, v| put(&mut s.nat_access, v.to_owned()), "NAT_ACCESS", |s| shown(s.nat_access.as_ref())),
    Opt::new("user_agent", "The HTTP User-Agent for -R and -P http (default Fwknop/2.6.10).")
        .short('u')
        .long("user-agent")
        .value("AGENT")
        .rc(&["HTTP_USER_AGENT"])
        .saved(
            |s, v| put(&mut s.user_agent, v.to_owned()),
            "HTTP_USER_AGENT",
            |s| shown(s.user_agent.as_ref()),
        ),
    Opt::new(
        "resolve_url",
        "The page that tells our external address for -R (default fwknop's, over HTTPS).",
    )
    .long("resolve-url")
    .value("URL")
    .rc(&["RESOLVE_URL"])
    .saved(
        |s, v| put(&mut s.resolve_url, v.to_owned()),
        "RESOLVE_URL",
        |s| shown(s.resolve_url.as_ref()),
    ),
    Opt::new("server_resolve_ipv4", "Look up only IPv4 addresses for the -D host name.")
        .long("server-resolve-ipv4")
        .switch()
        .rc(&["SERVER_RESOLVE_IPV4"])
        .saved(
            |s, v| put(&mut s.server_resolve_ipv4, parse_bool(v)?),
            "SERVER_RESOLVE_IPV4",
            |s| yes_no(s.server_resolve_ipv4),
        ),
    Opt::new("nat_local", "Local NAT: forward to a port on the server itself.")
        .long("nat-local")
        .switch()
        .rc(&["NAT_LOCAL"])
        .saved(|s, v| put(&mut s.nat_local, parse_bool(v)?), "NAT_LOCAL", |s| yes_no(s.nat_local)),
    Opt::new("nat_rand_port", "Ask for a random external port (10000..65534) in NAT modes.")
        .long("nat-rand-port")
        .switch()
        .rc(&["NAT_RAND_PORT"])
        .saved(
            |s, v| put(&mut s.nat_rand_port, parse_bool(v)?),
            "NAT_RAND_PORT",
            |s| yes_no(s.nat_rand_port),
        ),
    Opt::new("nat_port", "The externally visible port to ask for in NAT modes.")
        .long("nat-port")
        .value("PORT")
        .rc(&["NAT_PORT"])
        .saved(|s, v| put(&mut s.nat_port, parse_nonzero_port(v)?), "NAT_PORT", |s| shown(s.nat_port)),
    Opt::new("verbose", "Print the packet's fields on stderr (repeat for more).")
        .short('v')
        .long("verbose")
        .count()
        .rc(&["VERBOSE"])
        .saved(
            |s, v| {
                // fwknop writes Y/N or a level.
                s.verbose = Some(match v.trim().parse::<u8>() {
                    Ok(n) => n,
                    Err(_) => u8::from(parse_bool(v)?),
                });
                Ok(())
            },
            "VERBOSE",
            |s| match s.verbose {
                Some(0) => yes_no(Some(false)),
                Some(1) => yes_no(Some(true)),
                n => shown(n),
            },
        ),
    Opt::new("resolve_http_only", "With -R, fetch the page over plain HTTP (spoofable; not recommended).")
        .long("resolve-http-only")
        .switch()
        .rc(&["RESOLVE_HTTP_ONLY"])
        .saved(
            |s, v| {
                let b = parse_bool(v)?;
                s.resolve_http_only = Some(b);
                if b && s.allow.is_none() {
                    // fwknop: --resolve-http-only implies -R.
                    s.allow = Some(Allow::Resolve);
                }
                Ok(())
            },
            "RESOLVE_HTTP_ONLY",
            |s| yes_no(s.resolve_http_only),
        )
        .early(),
    Opt::new("wget_cmd", "wget's path.")
        .short('w')
        .long("wget-cmd")
        .value("PATH")
        .rc(&["WGET_CMD"])
        .refused(WGET),
    Opt::new("no_save_args", "Do not save the command line in ~/.fwknop.run (for -l).")
        .long("no-save-args")
        .switch()
        .rc(&["NO_SAVE_ARGS"])
        .saved(|s, v| put(&mut s.no_save_args, parse_bool(v)?), "NO_SAVE_ARGS", |s| yes_no(s.no_save_args)),
    Opt::new(
        "format",
        "Wire format: fwknop (the default) or modern (public keys; --user-key-file, --server-key).",
    )
    .long("format")
    .value("FORMAT")
    .rc(&["SPA_FORMAT"])
    .saved(|s, v| put(&mut s.format, v.parse()?), "SPA_FORMAT", |s| shown(s.format)),
    Opt::new(
        "user_key_file",
        "Modern format: your Ed25519 key file, mode 0600 (spa keygen --modern; default ~/.spa/user.key).",
    )
    .long("user-key-file")
    .value("FILE")
    .rc(&["SPA_USER_KEY_FILE"])
    .saved(
        |s, v| put(&mut s.user_key_file, expand_home(v.trim())),
        "SPA_USER_KEY_FILE",
        |s| shown(s.user_key_file.as_ref().map(|p| p.display())),
    ),
    Opt::new("user_key", "SPA_USER_KEY: modern format: your Ed25519 secret key itself (ed25519-secret:...).")
        .rc(&["SPA_USER_KEY"])
        .set(|s, v| put(&mut s.user_key, KeySpec::Text(secret(v.trim())))),
    Opt::new("server_key", "Modern format: the server's public key, x25519:... (what spad keygen printed).")
        .long("server-key")
        .value("x25519:KEY")
        .rc(&["SPA_SERVER_KEY"])
        .saved(|s, v| put(&mut s.server_key, v.trim().parse()?), "SPA_SERVER_KEY", |s| shown(s.server_key)),
    Opt::new(
        "connect_delay",
        "spa connect: milliseconds between the knock and the first connection attempt (default 500).",
    )
    .long("connect-delay")
    .value("MS")
    .rc(&["SPA_CONNECT_DELAY_MS"])
    .saved(
        |s, v| {
            let ms: u64 = v.trim().parse().context("expected milliseconds")?;
            anyhow::ensure!(ms <= 60_000, "at most 60000 milliseconds");
            put(&mut s.connect_delay_ms, ms)
        },
        "SPA_CONNECT_DELAY_MS",
        |s| shown(s.connect_delay_ms),
    ),
    Opt::new("server_cmd", "A command for the server to run (command message).")
        .short('C')
        .long("server-cmd")
        .value("CMD")
        .set(|s, v| put(&mut s.server_cmd, v.to_owned())),
    Opt::new("http_proxy", "HTTP proxy.")
        .short('H')
        .long("http-proxy")
        .value("HOST[:PORT]")
        .refused("sending through an HTTP proxy is not supported; send directly with -P http or -P tcp"),
    Opt::new("icmp_type", "ICMP type.").long("icmp-type").value("TYPE").rc(&["ICMP_TYPE"]).refused(RAW),
    Opt::new("icmp_code", "ICMP code.").long("icmp-code").value("CODE").rc(&["ICMP_CODE"]).refused(RAW),
    Opt::new("fault_injection_tag", "fwknop test hook.")
        .long("fault-injection-tag")
        .value("TAG")
        .refused("fault injection is a test hook of fwknop's own build"),
];

/// The entry that reads rc variable `var`.
pub(crate) fn by_rc(var: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.rc.contains(&var))
}

/// The settings options given on the command line, in the order they apply.
#[derive(Clone, Debug, Default)]
pub(crate) struct Given(Vec<(&'static str, Zeroizing<String>)>);

impl Given {
    fn entries(&self) -> impl Iterator<Item = (&'static Opt, &str)> {
        self.0.iter().filter_map(|(id, v)| Some((OPTIONS.iter().find(|o| o.id == *id)?, v.as_str())))
    }

    /// Whether no settings option was given, other than those named.
    pub(crate) fn only(&self, allowed: &[&str]) -> bool {
        self.0.iter().all(|(id, _)| allowed.contains(id))
    }

    /// Applies the options over `s`, in order.
    pub(crate) fn apply(&self, s: &mut Settings) -> Result<()> {
        for (o, v) in self.entries() {
            if let Kind::Setting { set, .. } = o.kind {
                set(s, v).with_context(|| format!("invalid value for {}", o.flag()))?;
            }
        }
        Ok(())
    }

    /// The settings given on the command line alone.
    pub(crate) fn settings(&self) -> Result<Settings> {
        let mut s = Settings::default();
        self.apply(&mut s)?;
        Ok(s)
    }

    /// The rc lines `--save-rc-stanza` writes: one per variable, in [`OPTIONS`] order.
    pub(crate) fn stanza_lines(&self) -> Result<Vec<(&'static str, Zeroizing<String>)>> {
        let s = self.settings()?;
        let mut out: Vec<(&'static str, Zeroizing<String>)> = Vec::new();
        for o in OPTIONS {
            let Kind::Setting { save: Some((var, save)), .. } = o.kind else { continue };
            if !self.0.iter().any(|(id, _)| *id == o.id) {
                continue;
            }
            let line = match var {
                "KEY" | "KEY_BASE64" | "KEY_FILE" => key_rc_line(&s),
                "HMAC_KEY" | "HMAC_KEY_BASE64" | "HMAC_KEY_FILE" => hmac_key_rc_line(&s),
                _ => save(&s).map(|v| (var, v)),
            };
            if let Some((var, value)) = line
                && !out.iter().any(|(v, _)| *v == var)
            {
                out.push((var, value));
            }
        }
        Ok(out)
    }
}

impl clap::FromArgMatches for Given {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut found: Vec<(bool, usize, &'static str, Zeroizing<String>)> = Vec::new();
        for o in OPTIONS {
            let value = match o.takes {
                Takes::RcOnly => continue,
                Takes::Value(_) => {
                    m.try_get_one::<String>(o.id).ok().flatten().map(|v| Zeroizing::new(v.clone()))
                }
                Takes::Switch => m
                    .try_get_one::<bool>(o.id)
                    .ok()
                    .flatten()
                    .filter(|b| **b)
                    .map(|_| Zeroizing::new("Y".to_owned())),
                Takes::Count => m
                    .try_get_one::<u8>(o.id)
                    .ok()
                    .flatten()
                    .filter(|n| **n > 0)
                    .map(|n| Zeroizing::new(n.to_string())),
            };
            let Some(value) = value else { continue };
            match o.kind {
                Kind::Refused(why) => {
                    return Err(clap::Error::raw(
                        ErrorKind::ArgumentConflict,
                        format!("{} is not supported: {why}\n", o.flag()),
                    ));
                }
                Kind::Setting { early, .. } => {
                    found.push((!early, m.index_of(o.id).unwrap_or(usize::MAX), o.id, value));
                }
            }
        }
        found.sort_by_key(|(late, index, ..)| (*late, *index));
        Ok(Given(found.into_iter().map(|(_, _, id, v)| (id, v)).collect()))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for Given {
    fn augment_args(cmd: Command) -> Command {
        OPTIONS.iter().filter_map(Opt::arg).fold(cmd, Command::arg)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// Applies one stanza's lines to `s`. Unknown or refused variables are reported through `warn`
/// with file and line; bad values are errors with file and line.
pub(crate) fn apply_rc(
    s: &mut Settings,
    lines: &[&RcLine],
    file: &str,
    warn: &mut dyn FnMut(String),
) -> Result<()> {
    for l in lines {
        match by_rc(&l.var).map(|o| o.kind) {
            Some(Kind::Setting { set, .. }) => {
                set(s, &l.value).with_context(|| format!("{file}:{}: invalid value for {}", l.line, l.var))?
            }
            Some(Kind::Refused(why)) => {
                warn(format!("{file}:{}: {} is not supported ({why}); ignored", l.line, l.var))
            }
            None => warn(format!("{file}:{}: unknown variable {}; ignored", l.line, l.var)),
        }
    }
    Ok(())
}

/// Refuses a value that fwknop's rc format cannot hold: fwknop's reader stops a value at a
/// blank, `;` or `#`, and a line break would start a new line (a new variable).
pub(crate) fn check_rc_value(var: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        bail!("cannot save {var}: its value is empty");
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, ';' | '#')) {
        let what = match c {
            ';' => "a ';'",
            '#' => "a '#'",
            c if c == ' ' || c == '\t' => "a blank",
            _ => "a control character or line break",
        };
        bail!("cannot save {var}: its value holds {what}, which fwknop's rc format cannot hold");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::{Args as _, FromArgMatches as _};
    use spa_engine::{DigestType, EncryptionMode};

    use super::*;
    use crate::opts::Transport;
    use crate::rc::RcFile;

    fn given(args: &[&str]) -> Result<Given, clap::Error> {
        let cmd = Given::augment_args(Command::new("t").args_override_self(true));
        let m = cmd.try_get_matches_from(std::iter::once("t").chain(args.iter().copied()))?;
        Given::from_arg_matches(&m)
    }

    fn rc_settings(text: &str, stanza: &str) -> (Settings, Vec<String>) {
        let rc = RcFile::parse(Path::new("rc"), text).unwrap();
        let mut s = Settings::default();
        let mut warnings = Vec::new();
        apply_rc(&mut s, &rc.stanza(stanza).unwrap(), "rc", &mut |w| warnings.push(w)).unwrap();
        (s, warnings)
    }

    #[test]
    fn ids_flags_and_rc_names_are_unique() {
        let mut ids = Vec::new();
        let mut flags = Vec::new();
        let mut vars = Vec::new();
        for o in OPTIONS {
            assert!(!ids.contains(&o.id), "{}", o.id);
            ids.push(o.id);
            for f in o.short.map(String::from).into_iter().chain(o.long.map(String::from)) {
                assert!(!flags.contains(&f), "{f}");
                flags.push(f);
            }
            for v in o.rc {
                assert!(!vars.contains(v), "{v}");
                vars.push(*v);
            }
            assert!(!matches!(o.kind, Kind::Refused("no handler")), "{} has no handler", o.id);
        }
    }

    #[test]
    fn rc_variables_and_warnings() {
        let (s, w) = rc_settings(
            "[s]\nSPA_SERVER gw.lan\nALLOW_IP source\nACCESS tcp/22\nSPA_SERVER_PORT 40000\n\
             SPA_SERVER_PROTO tcp\nKEY_BASE64 a2V5\nHMAC_KEY_BASE64 aG1hYw==\nUSE_HMAC Y\n\
             HMAC_DIGEST_TYPE SHA384\nDIGEST_TYPE sha3_512\nENCRYPTION_MODE CTR\nFW_TIMEOUT 45\n\
             TIME_OFFSET -2min\nSPOOF_USER alice\nNAT_ACCESS 10.0.0.5,22\nNAT_LOCAL N\nNAT_PORT 2222\n\
             NAT_RAND_PORT n\nVERBOSE Y\nBOGUS 1\nUSE_GPG_AGENT N\n",
            "s",
        );
        assert_eq!(s.destination.as_deref(), Some("gw.lan"));
        assert_eq!(s.allow, Some(Allow::Source));
        assert_eq!(s.server_port, Some(40000));
        assert_eq!(s.server_proto, Some(Transport::Tcp));
        assert!(matches!(s.key, Some(KeySpec::Base64(ref k)) if k.as_str() == "a2V5"));
        assert_eq!(s.use_hmac, Some(true));
        assert_eq!(s.hmac_type, Some(DigestType::Sha384));
        assert_eq!(s.digest_type, Some(DigestType::Sha3_512));
        assert_eq!(s.mode, Some(EncryptionMode::Ctr));
        assert_eq!(s.fw_timeout, Some(45));
        assert_eq!(s.time_offset, Some(-120));
        assert_eq!(s.spoof_user.as_deref(), Some("alice"));
        assert_eq!(s.nat_access.as_deref(), Some("10.0.0.5,22"));
        assert_eq!((s.nat_local, s.nat_port, s.nat_rand_port), (Some(false), Some(2222), Some(false)));
        assert_eq!(s.verbose, Some(1));
        assert_eq!(w.len(), 2);
        assert_eq!(w[0], "rc:21: unknown variable BOGUS; ignored");
        assert!(w[1].starts_with("rc:22: USE_GPG_AGENT is not supported (no GnuPG agent"), "{}", w[1]);
    }

    #[test]
    fn rc_bad_value_names_file_and_line() {
        let rc = RcFile::parse(Path::new("rc"), "[s]\nACCESS tcp/22\nDIGEST_TYPE sha999\n").unwrap();
        let mut s = Settings::default();
        let e = apply_rc(&mut s, &rc.stanza("s").unwrap(), "/home/u/.fwknoprc", &mut |_| {}).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("/home/u/.fwknoprc:3: invalid value for DIGEST_TYPE: "),
            "{e:#}"
        );
    }

    #[test]
    fn command_line_over_named_over_default() {
        let text = "[default]\nDIGEST_TYPE sha1\nSPA_SERVER_PORT 1111\nACCESS tcp/1\n\
                    [srv]\nSPA_SERVER_PORT 2222\nACCESS tcp/2\nKEY k\n";
        let rc = RcFile::parse(Path::new("rc"), text).unwrap();
        let mut s = Settings::default();
        for stanza in ["default", "srv"] {
            apply_rc(&mut s, &rc.stanza(stanza).unwrap(), "rc", &mut |_| {}).unwrap();
        }
        given(&["-A", "udp/53"]).unwrap().apply(&mut s).unwrap();
        assert_eq!(s.access.as_deref(), Some("udp/53"), "command line wins");
        assert_eq!(s.server_port, Some(2222), "named stanza beats [default]");
        assert_eq!(s.digest_type, Some(DigestType::Sha1), "[default] fills the rest");
        assert!(matches!(s.key, Some(KeySpec::Text(_))));
        assert_eq!(s.destination, None);
    }

    #[test]
    fn the_last_of_a_repeated_option_wins() {
        let s = given(&["-A", "tcp/22", "-A", "tcp/22,udp/53", "-f", "10", "-f", "20"])
            .unwrap()
            .settings()
            .unwrap();
        assert_eq!(s.access.as_deref(), Some("tcp/22,udp/53"));
        assert_eq!(s.fw_timeout, Some(20));
        // -a and -s set the same address: the later one wins.
        let s = given(&["-a", "1.2.3.4", "-s"]).unwrap().settings().unwrap();
        assert_eq!(s.allow, Some(Allow::Source));
        let s = given(&["-s", "-a", "1.2.3.4"]).unwrap().settings().unwrap();
        assert_eq!(s.allow, Some(Allow::Ip("1.2.3.4".parse().unwrap())));
        let s = given(&["-a", "1.2.3.4", "-s", "-a", "5.6.7.8"]).unwrap().settings().unwrap();
        assert_eq!(s.allow, Some(Allow::Ip("5.6.7.8".parse().unwrap())), "the last -a's position counts");
        let s = given(&["-s", "-a", "1.2.3.4", "-s"]).unwrap().settings().unwrap();
        assert_eq!(s.allow, Some(Allow::Source), "the last -s's position counts");
        // -a wins over -R wherever it stands, as in fwknop.
        for args in [&["-a", "1.2.3.4", "-R"][..], &["-R", "-a", "1.2.3.4"][..]] {
            let s = given(args).unwrap().settings().unwrap();
            assert_eq!(s.allow, Some(Allow::Ip("1.2.3.4".parse().unwrap())), "{args:?}");
        }
        assert_eq!(given(&["-R"]).unwrap().settings().unwrap().allow, Some(Allow::Resolve));
        // The key given last wins, whatever its form.
        let s = given(&["--key-rijndael", "a", "--key-base64-rijndael", "Yg=="]).unwrap().settings().unwrap();
        assert!(matches!(s.key, Some(KeySpec::Base64(_))));
        let s = given(&["--time-offset-plus", "2min", "--time-offset-minus", "30sec"])
            .unwrap()
            .settings()
            .unwrap();
        assert_eq!(s.time_offset, Some(-30));
        assert_eq!(given(&["-v", "-v"]).unwrap().settings().unwrap().verbose(), 2);
    }

    #[test]
    fn refused_options_name_the_reason() {
        for (args, needle) in [
            (&["--gpg-home-dir", "x"][..], "--gpg-home-dir is not supported: no GnuPG keyring is read"),
            (&["-Q", "1.2.3.4"][..], "-Q/--spoof-source is not supported: it needs raw sockets"),
            (&["--spoof-src", "1.2.3.4"][..], "-Q/--spoof-source is not supported"),
            (&["-H", "proxy:8080"][..], "-H/--http-proxy is not supported: sending through an HTTP proxy"),
            (&["-w", "/usr/bin/wget"][..], "without wget"),
        ] {
            let e = given(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn bad_command_line_values_name_the_option() {
        let e = given(&["-m", "sha999"]).unwrap().settings().unwrap_err();
        assert!(format!("{e:#}").starts_with("invalid value for -m/--digest-type: "), "{e:#}");
        let e = given(&["-p", "0"]).unwrap().settings().unwrap_err();
        assert!(format!("{e:#}").contains("-p/--server-port"), "{e:#}");
    }

    #[test]
    fn stanza_lines_hold_what_the_command_line_said() {
        let g = given(&[
            "-A",
            "tcp/22",
            "-s",
            "-a",
            "1.2.3.4",
            "-m",
            "sha512",
            "--key-base64-rijndael",
            "a2V5",
            "--key-hmac",
            "h",
            "-f",
            "30",
            "--time-offset-minus",
            "2min",
            "-v",
            "-R",
        ])
        .unwrap();
        let lines: Vec<(&str, String)> =
            g.stanza_lines().unwrap().into_iter().map(|(k, v)| (k, v.to_string())).collect();
        let expect = [
            ("DIGEST_TYPE", "sha512"),
            ("FW_TIMEOUT", "30"),
            ("ALLOW_IP", "1.2.3.4"),
            ("TIME_OFFSET", "-120"),
            ("ACCESS", "tcp/22"),
            ("KEY_BASE64", "a2V5"),
            ("HMAC_KEY", "h"),
            ("VERBOSE", "Y"),
        ];
        assert_eq!(lines, expect.map(|(k, v)| (k, v.to_owned())));
    }

    #[test]
    fn values_the_rc_format_cannot_hold_are_refused() {
        assert!(check_rc_value("ACCESS", "tcp/22,udp/53").is_ok());
        for bad in ["tcp/22, udp/53", "a\nKEY x", "a;b", "a#b", ""] {
            let e = check_rc_value("KEY", bad).unwrap_err().to_string();
            assert!(e.starts_with("cannot save KEY: "), "{e}");
            assert!(!bad.is_empty() && !e.contains(bad) || bad.is_empty(), "never echoes the value: {e}");
        }
    }
}

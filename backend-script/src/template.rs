//! Argv templates: `{name}` placeholders inside argv elements, checked once at config load.
//!
//! A placeholder may be a whole element (`"{source}"`) or part of one (`"{source}/32"`);
//! `{{` and `}}` stand for literal braces. The result of a substitution is always exactly one
//! argv element, whatever it contains, so no value can add, remove or split arguments.

use std::fmt;

/// One value a command can receive, as `{name}` in its argv and `SPA_NAME` in its environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Var {
    Action,
    Per,
    Id,
    Source,
    SourcePort,
    Family,
    PacketSource,
    Destination,
    IngressAddr,
    IngressIf,
    Proto,
    ProtoNum,
    Port,
    Ports,
    Nat,
    NatAddr,
    NatPort,
    Snat,
    Timeout,
    Deadline,
    Created,
    Stanza,
    Username,
}

impl Var {
    /// Every variable, in the order the documentation lists them.
    pub(crate) const ALL: [Var; 23] = [
        Var::Action,
        Var::Per,
        Var::Id,
        Var::Source,
        Var::SourcePort,
        Var::Family,
        Var::PacketSource,
        Var::Destination,
        Var::IngressAddr,
        Var::IngressIf,
        Var::Proto,
        Var::ProtoNum,
        Var::Port,
        Var::Ports,
        Var::Nat,
        Var::NatAddr,
        Var::NatPort,
        Var::Snat,
        Var::Timeout,
        Var::Deadline,
        Var::Created,
        Var::Stanza,
        Var::Username,
    ];

    /// The placeholder name (`{name}`).
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Var::Action => "action",
            Var::Per => "per",
            Var::Id => "id",
            Var::Source => "source",
            Var::SourcePort => "source_port",
            Var::Family => "family",
            Var::PacketSource => "packet_source",
            Var::Destination => "destination",
            Var::IngressAddr => "ingress_addr",
            Var::IngressIf => "ingress_if",
            Var::Proto => "proto",
            Var::ProtoNum => "proto_num",
            Var::Port => "port",
            Var::Ports => "ports",
            Var::Nat => "nat",
            Var::NatAddr => "nat_addr",
            Var::NatPort => "nat_port",
            Var::Snat => "snat",
            Var::Timeout => "timeout",
            Var::Deadline => "deadline",
            Var::Created => "created",
            Var::Stanza => "stanza",
            Var::Username => "username",
        }
    }

    /// The environment variable carrying the same value.
    pub(crate) fn env_name(self) -> String {
        format!("SPA_{}", self.name().to_ascii_uppercase())
    }

    fn from_name(name: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// Why an argv element is not a valid template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    /// `{` without its `}`.
    #[error("unclosed '{{' in {0:?} (write '{{{{' for a literal brace)")]
    Unclosed(String),
    /// `}` without a `{` before it.
    #[error("unmatched '}}' in {0:?} (write '}}}}' for a literal brace)")]
    Unmatched(String),
    /// A name that is not one of [`Var::ALL`].
    #[error("unknown placeholder {{{name}}} in {element:?}; known: {known}")]
    Unknown {
        /// The name between the braces.
        name: String,
        /// The whole argv element.
        element: String,
        /// The known names.
        known: String,
    },
    /// A NUL byte, which no argv element can hold.
    #[error("NUL byte in {0:?}")]
    Nul(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// One argv element: literal text and placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `{name}` placeholders and `{{`/`}}` escapes.
    pub(crate) fn parse(element: &str) -> Result<Self, TemplateError> {
        if element.contains('\0') {
            return Err(TemplateError::Nul(element.to_owned()));
        }
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = element.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(TemplateError::Unmatched(element.to_owned())),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(TemplateError::Unclosed(element.to_owned())),
                        }
                    }
                    let var = Var::from_name(&name).ok_or_else(|| TemplateError::Unknown {
                        name,
                        element: element.to_owned(),
                        known: Var::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", "),
                    })?;
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Var(var));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Self { pieces })
    }

    /// True when the element contains at least one placeholder.
    pub(crate) fn has_placeholders(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Var(_)))
    }

    /// True when the element contains placeholder `var`.
    pub(crate) fn uses(&self, var: Var) -> bool {
        self.pieces.contains(&Piece::Var(var))
    }

    /// The element with every placeholder replaced by `value(var)`.
    pub(crate) fn render(&self, value: impl Fn(Var) -> String) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(v) => out.push_str(&value(*v)),
            }
        }
        out
    }
}

impl fmt::Display for Template {
    /// Writes the template back in its source syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => f.write_str(&s.replace('{', "{{").replace('}', "}}"))?,
                Piece::Var(v) => write!(f, "{{{}}}", v.name())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str) -> String {
        Template::parse(t).unwrap().render(|v| format!("<{}>", v.name()))
    }

    #[test]
    fn placeholders_whole_and_inside() {
        assert_eq!(render("{source}"), "<source>");
        assert_eq!(render("ip saddr {source}/32 dport {port}"), "ip saddr <source>/32 dport <port>");
        assert_eq!(render("plain"), "plain");
        assert_eq!(render(""), "");
        assert_eq!(render("{{source}} {{"), "{source} {");
        assert_eq!(render("{{{port}}}"), "{<port>}");
        assert!(!Template::parse("a{{b}}").unwrap().has_placeholders());
        assert!(Template::parse("a{id}").unwrap().has_placeholders());
    }

    #[test]
    fn every_name_parses_and_maps_to_env() {
        for v in Var::ALL {
            let t = Template::parse(&format!("{{{}}}", v.name())).unwrap();
            assert_eq!(t.render(|x| x.name().to_owned()), v.name());
            assert!(v.env_name().starts_with("SPA_"));
        }
        assert_eq!(Var::ProtoNum.env_name(), "SPA_PROTO_NUM");
        assert_eq!(Var::PacketSource.env_name(), "SPA_PACKET_SOURCE");
        assert_eq!(Var::IngressIf.env_name(), "SPA_INGRESS_IF");
        assert_eq!(Var::SourcePort.env_name(), "SPA_SOURCE_PORT");
        assert!(Template::parse("iif={ingress_if}").unwrap().uses(Var::IngressIf));
        assert!(!Template::parse("{ingress_addr}").unwrap().uses(Var::IngressIf));
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_eq!(Template::parse("{source"), Err(TemplateError::Unclosed("{source".into())));
        assert_eq!(Template::parse("a}b"), Err(TemplateError::Unmatched("a}b".into())));
        assert_eq!(Template::parse("x\0"), Err(TemplateError::Nul("x\0".into())));
        let err = Template::parse("{src}").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown placeholder {src} in \"{src}\"; known: action, per, id, source"),
            "{err}"
        );
        assert!(Template::parse("{}").is_err());
        assert!(Template::parse("{$IP}").is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["{source}/32", "{{literal}}", "x{port}y{{z"] {
            assert_eq!(Template::parse(s).unwrap().to_string(), s);
        }
    }
}

//! Pure rendering: configuration and elements in, nft script text out. Only validated names
//! and typed values (addresses, ports, protocol names, integers) are interpolated.

use std::fmt::Write as _;

use crate::config::NftConfig;
use crate::model::{Data, DataShape, Elem, KeyShape, Kind, SetRef, elem_text};

/// Elements per `add element` command when loading many at once (keeps lines short).
const CHUNK: usize = 1000;

/// An element to load with its timeout (whole seconds, at least 1) and comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timed<'a> {
    /// The element.
    pub elem: &'a Elem,
    /// Seconds until the kernel removes it.
    pub timeout: u64,
    /// Our tag, `spa:<grant id>`.
    pub comment: String,
}

/// One change to a live element, rendered so that it cannot fail whether or not the element
/// is (still) in the kernel: every delete is preceded by an add of the same element in the
/// same transaction (the add/delete/add trick, since nft 1.0.6 has no `destroy`). Only an
/// element known to be absent is added plainly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Make the element exist with exactly this timeout (new grant or re-knock).
    Put {
        /// The element.
        elem: Elem,
        /// Seconds until the kernel removes it (at least 1).
        timeout: u64,
        /// Our tag, `spa:<grant id>`.
        comment: String,
        /// For maps: the data the kernel may hold now (adding a key with other data fails).
        prior: Option<Data>,
        /// Known to be absent from the kernel (never added, or deleted or expired for sure),
        /// so a plain `add` suffices.
        fresh: bool,
    },
    /// Make the element absent.
    Remove {
        /// The element.
        elem: Elem,
        /// For maps: the data the kernel may hold now.
        prior: Option<Data>,
    },
}

impl Op {
    /// The element this op is about.
    pub fn elem(&self) -> &Elem {
        match self {
            Op::Put { elem, .. } | Op::Remove { elem, .. } => elem,
        }
    }

    /// The data of the "make sure it exists" add that precedes a delete. For a map, an add with
    /// other data than the kernel holds fails, so it repeats what we believe is there (or the
    /// new data when we know of nothing); a set has no data.
    pub fn existing_data(&self) -> Option<&Data> {
        let prior = match self {
            Op::Put { prior, .. } | Op::Remove { prior, .. } => prior.as_ref(),
        };
        let elem = self.elem();
        if elem.set.is_map() { prior.or(elem.data.as_ref()) } else { None }
    }
}

fn addr_type(v6: bool) -> &'static str {
    if v6 { "ipv6_addr" } else { "ipv4_addr" }
}

fn set_type(set: SetRef) -> String {
    let a = addr_type(set.v6);
    // The source-port twins hold `sport` between the protocol and the destination port.
    let sport = if set.sport { " . inet_service" } else { "" };
    let key = match set.kind.key() {
        KeyShape::SrcProtoPort => format!("{a} . inet_proto{sport} . inet_service"),
        KeyShape::SrcDstProtoPort => format!("{a} . {a} . inet_proto{sport} . inet_service"),
        KeyShape::SrcDst => format!("{a} . {a}"),
        KeyShape::Src => a.to_owned(),
    };
    match set.kind.data() {
        DataShape::None => key,
        DataShape::Port => format!("{key} : inet_service"),
        DataShape::AddrPort => format!("{key} : {a} . inet_service"),
        DataShape::Addr => format!("{key} : {a}"),
    }
}

/// The packet fields a set's key is looked up with.
fn selector(set: SetRef) -> String {
    let ip = if set.v6 { "ip6" } else { "ip" };
    let sport = if set.sport { " . th sport" } else { "" };
    match set.kind.key() {
        KeyShape::SrcProtoPort => format!("{ip} saddr . meta l4proto{sport} . th dport"),
        KeyShape::SrcDstProtoPort => format!("{ip} saddr . {ip} daddr . meta l4proto{sport} . th dport"),
        KeyShape::SrcDst => format!("{ip} saddr . {ip} daddr"),
        KeyShape::Src => format!("{ip} saddr"),
    }
}

/// The sets of a kind in the order their rules are written: IPv4 and IPv6, then (for kinds
/// with a port) their source-port twins.
fn both(kind: Kind) -> impl Iterator<Item = SetRef> {
    SetRef::all().filter(move |s| s.kind == kind)
}

/// The whole table, reset atomically: `add table` + `delete table` + the definition + the
/// elements, in one script that `nft -f -` applies as one transaction.
pub fn table_script(config: &NftConfig, elems: &[Timed<'_>]) -> String {
    let t = &config.table;
    let mark = match config.mark {
        Some(m) => format!(" meta mark set meta mark | {m:#010x}"),
        None => String::new(),
    };
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {t}");
    let _ = writeln!(s, "delete table inet {t}");
    let _ = writeln!(s, "table inet {t} {{");
    s.push_str("\tset protect {\n\t\ttype inet_proto . inet_service\n");
    if !config.protect.is_empty() {
        let list: Vec<String> = config.protect.iter().map(|p| format!("{} . {}", p.proto, p.port)).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
    }
    s.push_str("\t}\n");
    for set in SetRef::all() {
        let what = if set.is_map() { "map" } else { "set" };
        let _ =
            writeln!(s, "\t{what} {} {{\n\t\ttype {}\n\t\tflags timeout\n\t}}", set.name(), set_type(set));
    }

    let _ = writeln!(
        s,
        "\tchain prerouting {{\n\t\ttype nat hook prerouting priority {}; policy accept;",
        config.dnat_priority
    );
    for set in both(Kind::Dnat).chain(both(Kind::DnatHost)) {
        let ip = if set.v6 { "ip6" } else { "ip" };
        let _ = writeln!(s, "\t\tdnat {ip} to {} map @{}", selector(set), set.name());
    }
    for set in both(Kind::Redirect) {
        let _ =
            writeln!(s, "\t\tmeta l4proto {{ tcp, udp }} redirect to {} map @{}", selector(set), set.name());
    }
    s.push_str("\t}\n");

    let _ = writeln!(
        s,
        "\tchain input {{\n\t\ttype filter hook input priority {}; policy accept;",
        config.filter_priority
    );
    s.push_str("\t\tct state established,related accept\n");
    for set in both(Kind::Allow).chain(both(Kind::AllowDst)) {
        let _ = writeln!(s, "\t\t{} @{}{mark} accept", selector(set), set.name());
    }
    s.push_str("\t\tmeta l4proto . th dport @protect counter drop\n\t}\n");

    let _ = writeln!(
        s,
        "\tchain forward {{\n\t\ttype filter hook forward priority {}; policy accept;",
        config.filter_priority
    );
    s.push_str("\t\tct state established,related accept\n");
    for kind in [Kind::Fwd, Kind::FwdHost, Kind::Route, Kind::RouteAll] {
        for set in both(kind) {
            let _ = writeln!(s, "\t\t{} @{}{mark} accept", selector(set), set.name());
        }
    }
    s.push_str("\t}\n");

    let _ = writeln!(
        s,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority {}; policy accept;",
        config.snat_priority
    );
    for kind in [Kind::Snat, Kind::SnatHost, Kind::SnatRoute, Kind::SnatRouteAll] {
        for set in both(kind) {
            let ip = if set.v6 { "ip6" } else { "ip" };
            let _ = writeln!(s, "\t\tsnat {ip} to {} map @{}", selector(set), set.name());
        }
    }
    for kind in [Kind::Masq, Kind::MasqHost, Kind::MasqRoute, Kind::MasqRouteAll] {
        for set in both(kind) {
            let _ = writeln!(s, "\t\t{} @{} masquerade", selector(set), set.name());
        }
    }
    s.push_str("\t}\n}\n");

    // Elements, grouped by set, a chunk per command; still one file, so one transaction.
    let mut sorted: Vec<&Timed<'_>> = elems.iter().collect();
    sorted.sort_by(|a, b| a.elem.cmp(b.elem));
    for group in sorted.chunk_by(|a, b| a.elem.set == b.elem.set) {
        for chunk in group.chunks(CHUNK) {
            let _ = write!(s, "add element inet {t} {} {{ ", chunk[0].elem.set.name());
            for (i, e) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                elem_text(&mut s, &e.elem.key, Some((e.timeout, &e.comment)), e.elem.data.as_ref());
            }
            s.push_str(" }\n");
        }
    }
    s
}

/// The boot-time protection: the same table as [`table_script`] with no grants, prefixed with a
/// comment, for `/etc/nftables.conf` to include so the protected ports are closed from boot
/// until spad's `prepare` replaces the table (atomically, so there is no open gap).
pub fn boot_snippet(config: &NftConfig) -> String {
    let ports: Vec<String> = config.protect.iter().map(ToString::to_string).collect();
    let mut s = format!(
        "# SPA protection for nftables, loaded at boot before spad starts.\n\
         # Generated from [firewall.nft] table = \"{}\", protect = [{}].\n\
         # Include it from /etc/nftables.conf:  include \"/etc/nftables.d/spa-protect.nft\"\n\
         # spad replaces this table atomically at start and never removes it when it stops.\n\
         # To open the protected ports on purpose: nft delete table inet {}\n",
        config.table,
        ports.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", "),
        config.table
    );
    s.push_str(&table_script(config, &[]));
    s
}

/// Removes the table (add first, so a missing table is not an error).
pub fn teardown_script(config: &NftConfig) -> String {
    format!("add table inet {t}\ndelete table inet {t}\n", t = config.table)
}

/// Changes to live elements as ONE line: the long-lived `nft -i` runs each line as one
/// transaction, so a grant (or re-knock, or revoke) applies completely or not at all.
pub fn ops_line(config: &NftConfig, ops: &[Op]) -> String {
    let t = &config.table;
    let mut s = String::new();
    for op in ops {
        if !s.is_empty() {
            s.push_str("; ");
        }
        let elem = op.elem();
        let name = elem.set.name();
        if let Op::Put { timeout, comment, fresh: true, .. } = op {
            let _ = write!(s, "add element inet {t} {name} {{ ");
            elem_text(&mut s, &elem.key, Some((*timeout, comment)), elem.data.as_ref());
            s.push_str(" }");
            continue;
        }
        let _ = write!(s, "add element inet {t} {name} {{ ");
        elem_text(&mut s, &elem.key, None, op.existing_data());
        let _ = write!(s, " }}; delete element inet {t} {name} {{ {} }}", elem.key);
        if let Op::Put { timeout, comment, .. } = op {
            let _ = write!(s, "; add element inet {t} {name} {{ ");
            elem_text(&mut s, &elem.key, Some((*timeout, comment)), elem.data.as_ref());
            s.push_str(" }");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::expand;
    use spa_backends::{Access, Entry as _, Grant, GrantId, Nat, Snat};

    fn config() -> NftConfig {
        NftConfig {
            protect: vec!["tcp/22".parse().unwrap(), "udp/53".parse().unwrap()],
            mark: Some(0x100),
            ..NftConfig::default()
        }
    }

    fn grant(id: u64, source: &str, access: Access, nat: Option<Nat>) -> Grant {
        Grant {
            id: GrantId(id),
            source: source.parse().unwrap(),
            source_port: None,
            packet_source: source.parse().unwrap(),
            destination: None,
            access,
            nat: nat.map(Box::new),
            created: 1000,
            deadline: 1030,
            stanza: "s".into(),
            username: "u".into(),
            ingress: None,
        }
    }

    fn ports(list: &[&str]) -> Access {
        Access::Ports(list.iter().map(|p| p.parse().unwrap()).collect())
    }

    #[test]
    fn empty_table() {
        insta::assert_snapshot!(table_script(&config(), &[]));
    }

    #[test]
    fn table_with_elements() {
        let g = grant(7, "192.0.2.1", ports(&["tcp/22"]), None);
        let h = grant(
            8,
            "2001:db8::1",
            ports(&["tcp/2222"]),
            Some(Nat::Dnat { to: "fd00::2".parse().unwrap(), port: Some(22), snat: None }),
        );
        let elems: Vec<Elem> = expand(&g).unwrap().into_iter().chain(expand(&h).unwrap()).collect();
        let timed: Vec<Timed<'_>> = elems
            .iter()
            .map(|e| Timed { elem: e, timeout: 30, comment: "spa:0000000000000007".into() })
            .collect();
        let script = table_script(&NftConfig { mark: None, ..config() }, &timed);
        let tail: Vec<&str> = script.lines().filter(|l| l.starts_with("add element")).collect();
        insta::assert_snapshot!(tail.join("\n"));
    }

    /// Every shape of grant and what it becomes, as `set { key : data }` lines.
    #[test]
    fn grant_shapes() {
        let v4 = |nat| grant(1, "192.0.2.1", ports(&["tcp/2222", "udp/53"]), nat);
        let all = |nat| grant(1, "192.0.2.1", Access::All, nat);
        let to = "10.0.0.2".parse().unwrap();
        let cases = [
            ("access", v4(None)),
            ("access ipv6", grant(1, "2001:db8::1", ports(&["tcp/22"]), None)),
            (
                "access to one local address",
                Grant { destination: Some("198.51.100.1".parse().unwrap()), ..v4(None) },
            ),
            ("dnat (nat access)", v4(Some(Nat::Dnat { to, port: Some(22), snat: None }))),
            (
                "dnat keeping ports + snat",
                v4(Some(Nat::Dnat { to, port: None, snat: Some(Snat::To("10.0.0.1".parse().unwrap())) })),
            ),
            ("dnat + masquerade", v4(Some(Nat::Dnat { to, port: Some(22), snat: Some(Snat::Masquerade) }))),
            ("forward all to a host", all(Some(Nat::Dnat { to, port: None, snat: Some(Snat::Masquerade) }))),
            ("route ports", v4(Some(Nat::Route { snat: Some(Snat::Masquerade) }))),
            ("route all", all(Some(Nat::Route { snat: Some(Snat::To("10.0.0.1".parse().unwrap())) }))),
            ("forward all without nat", all(None)),
            ("local nat (redirect)", v4(Some(Nat::Redirect { port: 5555 }))),
        ];
        let mut out = String::new();
        for (name, g) in cases {
            out.push_str(&format!("# {name}\n"));
            for e in expand(&g).unwrap() {
                let mut line = format!("{} {{ ", e.set.name());
                crate::model::elem_text(&mut line, &e.key, None, e.data.as_ref());
                out.push_str(&line);
                out.push_str(" }\n");
            }
        }
        insta::assert_snapshot!(out);
    }

    /// Grants bound to a source port: every shape with a port goes to the `_sport` twin, with
    /// the port between the protocol and the destination port.
    #[test]
    fn grant_shapes_with_a_source_port() {
        let sp = |g: Grant| Grant { source_port: Some(40000), ..g };
        let v4 = |nat| sp(grant(1, "192.0.2.1", ports(&["tcp/2222", "udp/53"]), nat));
        let to = "10.0.0.2".parse().unwrap();
        let cases = [
            ("access", v4(None)),
            ("access ipv6", sp(grant(1, "2001:db8::1", ports(&["tcp/22"]), None))),
            (
                "access to one local address",
                Grant { destination: Some("198.51.100.1".parse().unwrap()), ..v4(None) },
            ),
            ("dnat + masquerade", v4(Some(Nat::Dnat { to, port: Some(22), snat: Some(Snat::Masquerade) }))),
            (
                "route ports + snat",
                v4(Some(Nat::Route { snat: Some(Snat::To("10.0.0.1".parse().unwrap())) })),
            ),
            ("local nat (redirect)", v4(Some(Nat::Redirect { port: 5555 }))),
        ];
        let mut out = String::new();
        for (name, g) in cases {
            out.push_str(&format!("# {name}\n"));
            for e in expand(&g).unwrap() {
                assert!(e.set.sport && e.key.sport == Some(40000), "{e}");
                out.push_str(&format!("{e}\n"));
            }
        }
        insta::assert_snapshot!(out);
        // Forward-all has no port to bind: refused, never widened to the address.
        let all = sp(grant(1, "192.0.2.1", Access::All, None));
        assert!(matches!(expand(&all), Err(spa_backends::BackendError::Unsupported(_))));
        let all = sp(grant(1, "192.0.2.1", Access::All, Some(Nat::Route { snat: None })));
        assert!(matches!(expand(&all), Err(spa_backends::BackendError::Unsupported(_))));
    }

    /// The same access with and without a source port, or with two, are different elements.
    #[test]
    fn a_source_port_makes_another_element() {
        let plain = grant(1, "192.0.2.1", ports(&["tcp/22"]), None);
        let a = Grant { source_port: Some(40000), ..plain.clone() };
        let b = Grant { source_port: Some(40001), ..plain.clone() };
        let (ep, ea, eb) = (expand(&plain).unwrap(), expand(&a).unwrap(), expand(&b).unwrap());
        assert_eq!(ep[0].to_string(), "allow4 { 192.0.2.1 . tcp . 22 }");
        assert_eq!(ea[0].to_string(), "allow_sport4 { 192.0.2.1 . tcp . 40000 . 22 }");
        assert_ne!(ea[0].slot(), eb[0].slot());
        assert_ne!(ea[0].slot(), ep[0].slot());
        let timed = [Timed { elem: &ea[0], timeout: 30, comment: "spa:0000000000000001".into() }];
        let line = ops_line(
            &config(),
            &[Op::Put {
                elem: ea[0],
                timeout: 30,
                comment: "spa:0000000000000001".into(),
                prior: None,
                fresh: true,
            }],
        );
        assert_eq!(
            line,
            "add element inet spa allow_sport4 { 192.0.2.1 . tcp . 40000 . 22 timeout 30s comment \"spa:0000000000000001\" }"
        );
        assert!(
            table_script(&config(), &timed)
                .ends_with("add element inet spa allow_sport4 { 192.0.2.1 . tcp . 40000 . 22 timeout 30s comment \"spa:0000000000000001\" }\n")
        );
    }

    #[test]
    fn mixed_families_and_impossible_nat_are_refused() {
        let g = grant(
            1,
            "192.0.2.1",
            ports(&["tcp/22"]),
            Some(Nat::Dnat { to: "fd00::2".parse().unwrap(), port: None, snat: None }),
        );
        assert!(matches!(expand(&g), Err(spa_backends::BackendError::Invalid(_))));
        let g = grant(1, "192.0.2.1", Access::All, Some(Nat::Redirect { port: 22 }));
        assert!(matches!(expand(&g), Err(spa_backends::BackendError::Unsupported(_))));
    }

    #[test]
    fn grant_and_revoke_lines() {
        let g = grant(
            9,
            "192.0.2.1",
            ports(&["tcp/2222"]),
            Some(Nat::Dnat { to: "10.0.0.2".parse().unwrap(), port: Some(22), snat: None }),
        );
        let elems = expand(&g).unwrap();
        let put: Vec<Op> = elems
            .iter()
            .enumerate()
            .map(|(i, e)| Op::Put {
                elem: *e,
                timeout: 30,
                comment: "spa:0000000000000009".into(),
                prior: None,
                fresh: i == 0,
            })
            .collect();
        let remove: Vec<Op> = elems.iter().map(|e| Op::Remove { elem: *e, prior: e.data }).collect();
        insta::assert_snapshot!(format!("{}\n{}", ops_line(&config(), &put), ops_line(&config(), &remove)));
    }

    /// The shipped `conf/nft/spa-protect.nft` is exactly what the renderer makes, so the boot
    /// table and spad's table cannot drift apart.
    #[test]
    fn shipped_boot_snippet_matches_the_renderer() {
        let config = NftConfig { protect: vec!["tcp/22".parse().unwrap()], ..NftConfig::default() };
        let shipped = include_str!("../../conf/nft/spa-protect.nft");
        assert_eq!(shipped, boot_snippet(&config), "regenerate conf/nft/spa-protect.nft");
    }

    #[test]
    fn teardown() {
        assert_eq!(teardown_script(&config()), "add table inet spa\ndelete table inet spa\n");
    }
}

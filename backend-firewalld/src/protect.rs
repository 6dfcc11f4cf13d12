//! The protection check: a protected port must not be open to everyone in the zone that
//! grants go into, or a grant would mean nothing.
//!
//! firewalld owns the zone, so spad cannot put the protection in place itself (as the nft
//! backend does with its `drop` rule); it refuses to run instead, naming the zone and the
//! entry that opens the port. The zone's own reject (its `default` or `%%REJECT%%` target)
//! is the protection.

use spa_backends::ProtoPort;

use crate::bus::{ServicePorts, ZoneOpenings};

/// Which configuration an opening was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// The runtime configuration (in force now).
    Runtime,
    /// The permanent configuration (in force after the next reload).
    Permanent,
}

impl Layer {
    fn words(self) -> &'static str {
        match self {
            Layer::Runtime => "at runtime",
            Layer::Permanent => "in the permanent configuration",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Layer::Runtime => "",
            Layer::Permanent => "--permanent ",
        }
    }
}

/// Whether `spec` (`22` or `1000-2000`) covers `port`.
fn covers(spec: &str, port: u16) -> bool {
    match spec.split_once('-') {
        Some((a, b)) => match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
            (Ok(a), Ok(b)) => a <= port && port <= b,
            _ => false,
        },
        None => spec.trim().parse::<u16>() == Ok(port),
    }
}

/// The ways `zone` (as `openings` describes it in `layer`) opens the protected ports to
/// everyone: one sentence each, naming the entry and how to remove it. `service` looks up a
/// service's definition in the same layer (`None` when it cannot be read: then the service
/// is reported as unknown, which fails closed).
pub fn violations(
    zone: &str,
    layer: Layer,
    openings: &ZoneOpenings,
    protect: &[ProtoPort],
    service: &mut dyn FnMut(&str) -> Option<ServicePorts>,
) -> Vec<String> {
    let mut out = Vec::new();
    if protect.is_empty() {
        return out;
    }
    let at = layer.words();
    let flag = layer.flag();
    if openings.target == "ACCEPT" {
        out.push(format!(
            "zone {zone} accepts everything {at} (target ACCEPT), so the protected ports are open to all; \
             use another zone or `firewall-cmd {flag}--zone={zone} --set-target=default`"
        ));
        return out;
    }
    for p in protect {
        let proto = p.proto.name();
        if openings.protocols.iter().any(|x| x == proto) {
            out.push(format!(
                "zone {zone} opens protected {p} to everyone {at} through protocol {proto}; remove it with \
                 `firewall-cmd {flag}--zone={zone} --remove-protocol={proto}`"
            ));
        }
        for (spec, pr) in &openings.ports {
            if pr == proto && covers(spec, p.port) {
                out.push(format!(
                    "zone {zone} opens protected {p} to everyone {at} through port {spec}/{pr}; remove it with \
                     `firewall-cmd {flag}--zone={zone} --remove-port={spec}/{pr}`"
                ));
            }
        }
    }
    for s in &openings.services {
        let Some(def) = service(s) else {
            out.push(format!("zone {zone} has service {s} {at}, whose definition cannot be read"));
            continue;
        };
        for p in protect {
            let proto = p.proto.name();
            let by_port = def.ports.iter().any(|(spec, pr)| pr == proto && covers(spec, p.port));
            let by_proto = def.protocols.iter().any(|x| x == proto);
            if by_port || by_proto {
                out.push(format!(
                    "zone {zone} opens protected {p} to everyone {at} through service {s}; remove it with \
                     `firewall-cmd {flag}--zone={zone} --remove-service={s}`"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(name: &str) -> Option<ServicePorts> {
        match name {
            "ssh" => Some(ServicePorts { ports: vec![("22".into(), "tcp".into())], protocols: vec![] }),
            "gre" => Some(ServicePorts { ports: vec![], protocols: vec!["gre".into()] }),
            "dhcpv6-client" => {
                Some(ServicePorts { ports: vec![("546".into(), "udp".into())], protocols: vec![] })
            }
            _ => None,
        }
    }

    fn check(o: &ZoneOpenings, layer: Layer) -> Vec<String> {
        let protect: Vec<ProtoPort> = vec!["tcp/22".parse().unwrap(), "udp/53".parse().unwrap()];
        violations("public", layer, o, &protect, &mut ssh)
    }

    #[test]
    fn a_closed_zone_passes() {
        let o = ZoneOpenings {
            target: "default".into(),
            services: vec!["dhcpv6-client".into(), "gre".into()],
            ports: vec![("8000-8100".into(), "udp".into()), ("22".into(), "udp".into())],
            protocols: vec!["icmp".into()],
        };
        assert!(check(&o, Layer::Runtime).is_empty());
        // Nothing protected: nothing to check.
        let open = ZoneOpenings { target: "ACCEPT".into(), ..o };
        assert!(violations("public", Layer::Runtime, &open, &[], &mut ssh).is_empty());
    }

    #[test]
    fn each_way_of_opening_is_named() {
        let o = ZoneOpenings {
            target: "default".into(),
            services: vec!["ssh".into(), "mystery".into()],
            ports: vec![("50-60".into(), "udp".into())],
            protocols: vec!["tcp".into()],
        };
        let v = check(&o, Layer::Permanent);
        assert_eq!(v.len(), 4, "{v:#?}");
        assert!(
            v[0].contains("through protocol tcp")
                && v[0].contains("--permanent --zone=public --remove-protocol=tcp")
        );
        assert!(v[1].contains("protected udp/53") && v[1].contains("port 50-60/udp"));
        assert!(v[2].contains("service ssh") && v[2].contains("in the permanent configuration"));
        assert!(v[3].contains("service mystery") && v[3].contains("cannot be read"));
        let all = ZoneOpenings { target: "ACCEPT".into(), ..ZoneOpenings::default() };
        let v = check(&all, Layer::Runtime);
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("target ACCEPT") && v[0].contains("at runtime"), "{v:?}");
    }

    #[test]
    fn ranges() {
        assert!(covers("22", 22));
        assert!(covers("20-30", 22));
        assert!(covers("22-22", 22));
        assert!(!covers("23-30", 22));
        assert!(!covers("2x", 22));
        assert!(!covers("-", 22));
    }
}

//! Reading our table back: `nft -j list table inet <t>` into [`Observed`] entries, one per
//! timed element, with the grant id from the element's comment and the deadline from its
//! expiry; and the table's structure (`nft -t -j`, no elements) reduced to what must not
//! change, for the tamper check.

use std::collections::BTreeMap;

use serde_json::Value;
use spa_backends::{GrantId, Observed};

use crate::model::SetRef;

/// The comment prefix every element we add carries, followed by the 16-hex-digit grant id.
pub const TAG: &str = "spa:";

/// Our comment for a grant id.
pub fn tag(id: GrantId) -> String {
    format!("{TAG}{id}")
}

fn grant_id(comment: &str) -> Option<GrantId> {
    let hex = comment.strip_prefix(TAG)?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok()).flatten().map(GrantId)
}

/// A key or data value as nft writes it: `a . b . c` for concatenations.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => {
            let parts = o.get("concat")?.as_array()?;
            let parts: Option<Vec<String>> = parts.iter().map(text).collect();
            Some(parts?.join(" . "))
        }
        _ => None,
    }
}

/// Parses the JSON listing of our table. `now` turns the kernel's remaining seconds into a
/// deadline. Sets that are not ours (by name) are ignored; the `protect` set is configuration,
/// not a grant, so it is not listed.
pub fn parse(json: &str, now: u64) -> Result<Vec<Observed>, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("invalid JSON: {e}"))?;
    let items = doc.get("nftables").and_then(Value::as_array).ok_or("no \"nftables\" array")?;
    let names: Vec<String> = SetRef::all().map(SetRef::name).collect();
    let mut out = Vec::new();
    for item in items {
        let Some(set) = item.get("set").or_else(|| item.get("map")) else { continue };
        let Some(name) = set.get("name").and_then(Value::as_str) else { continue };
        if !names.iter().any(|n| n == name) {
            continue;
        }
        let Some(elems) = set.get("elem").and_then(Value::as_array) else { continue };
        for e in elems {
            // A map element is `[key, data]`; a set element is just the key.
            let (key, data) = match e.as_array() {
                Some(pair) if pair.len() == 2 => (&pair[0], Some(&pair[1])),
                _ => (e, None),
            };
            let (val, meta) = match key.get("elem") {
                Some(inner) => (inner.get("val").ok_or("element without \"val\"")?, Some(inner)),
                None => (key, None),
            };
            let key_text = text(val).ok_or_else(|| format!("cannot read an element of {name}"))?;
            let mut entry = format!("{name} {{ {key_text}");
            if let Some(d) = data {
                let d = text(d).ok_or_else(|| format!("cannot read the data of an element of {name}"))?;
                entry.push_str(" : ");
                entry.push_str(&d);
            }
            entry.push_str(" }");
            let comment = meta.and_then(|m| m.get("comment")).and_then(Value::as_str);
            let expires = meta.and_then(|m| m.get("expires")).and_then(Value::as_u64);
            out.push(Observed {
                entry,
                holder: comment.and_then(grant_id),
                until: expires.map(|s| now.saturating_add(s)),
            });
        }
    }
    Ok(out)
}

/// Drops what changes on its own (handles, counters' values) from a listing item.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("handle");
            if let Some(Value::Object(c)) = o.get_mut("counter") {
                c.remove("packets");
                c.remove("bytes");
            }
            o.values_mut().for_each(normalize);
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// The table's structure from `nft -t -j list table inet <t>` (sets without elements), plus
/// the elements of `protect`, as `object name -> normalized JSON`: rules in their chain's
/// order. Two listings of an unchanged table give equal maps.
pub fn structure(terse: &str, protect: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (doc, with_elems) in [(terse, false), (protect, true)] {
        let doc: Value = serde_json::from_str(doc).map_err(|e| format!("invalid JSON: {e}"))?;
        let items = doc.get("nftables").and_then(Value::as_array).ok_or("no \"nftables\" array")?;
        for item in items {
            let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else { continue };
            if kind == "metainfo" || (with_elems && kind != "set") {
                continue;
            }
            let mut body = body.clone();
            normalize(&mut body);
            let name = body.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            if kind == "rule" {
                let chain = body.get("chain").and_then(Value::as_str).unwrap_or_default().to_owned();
                rules.entry(chain).or_default().push(body.to_string());
            } else if with_elems {
                out.insert(
                    format!("set {name} elements"),
                    body.get("elem").map(Value::to_string).unwrap_or_default(),
                );
            } else {
                out.insert(format!("{kind} {name}"), body.to_string());
            }
        }
    }
    for (chain, list) in rules {
        out.insert(format!("rules of chain {chain}"), list.join("\n"));
    }
    Ok(out)
}

/// What differs between two structures, in a few words for the audit trail.
pub fn differences(expected: &BTreeMap<String, String>, found: &BTreeMap<String, String>) -> String {
    let mut what = Vec::new();
    for (k, v) in expected {
        match found.get(k) {
            None => what.push(format!("{k} is gone")),
            Some(f) if f != v => what.push(format!("{k} changed")),
            Some(_) => {}
        }
    }
    for k in found.keys().filter(|k| !expected.contains_key(*k)) {
        what.push(format!("{k} was added"));
    }
    what.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sets_and_concatenated_maps() {
        // Shape as printed by nft 1.0.6 (`nft -j list table inet spa`), trimmed.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"table": {"family": "inet", "name": "spa", "handle": 6}},
          {"set": {"family": "inet", "name": "protect", "table": "spa", "type": ["inet_proto", "inet_service"],
                   "elem": [{"concat": ["tcp", 22]}]}},
          {"set": {"family": "inet", "name": "allow4", "table": "spa", "type": ["ipv4_addr", "inet_proto", "inet_service"],
                   "flags": ["timeout"], "elem": [{"elem": {"val": {"concat": ["10.0.0.1", "tcp", 22]},
                   "timeout": 30, "expires": 29, "comment": "spa:00000000000000ab"}}]}},
          {"map": {"family": "inet", "name": "dnat4", "table": "spa", "type": ["ipv4_addr", "inet_proto", "inet_service"],
                   "map": "ipv4_addr . inet_service", "flags": ["timeout"],
                   "elem": [[{"elem": {"val": {"concat": ["10.0.0.1", "tcp", 2222]}, "timeout": 30, "expires": 7,
                   "comment": "spa:0000000000000002"}}, {"concat": ["10.1.0.2", 22]}]]}},
          {"set": {"family": "inet", "name": "route_all6", "table": "spa", "type": "ipv6_addr", "flags": ["timeout"],
                   "elem": [{"elem": {"val": "fd00::1", "timeout": 5, "expires": 5, "comment": "someone else"}}]}}]}"#;
        let owned = parse(json, 1000).unwrap();
        assert_eq!(
            owned,
            vec![
                Observed {
                    holder: Some(GrantId(0xab)),
                    entry: "allow4 { 10.0.0.1 . tcp . 22 }".into(),
                    until: Some(1029)
                },
                Observed {
                    holder: Some(GrantId(2)),
                    entry: "dnat4 { 10.0.0.1 . tcp . 2222 : 10.1.0.2 . 22 }".into(),
                    until: Some(1007)
                },
                Observed { holder: None, entry: "route_all6 { fd00::1 }".into(), until: Some(1005) },
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse("", 0).is_err());
        assert!(parse("{}", 0).is_err());
        assert!(parse(r#"{"nftables": [{"set": {"name": "allow4", "elem": [{"elem": {}}]}}]}"#, 0).is_err());
        assert_eq!(parse(r#"{"nftables": []}"#, 0).unwrap(), vec![]);
    }

    #[test]
    fn structure_ignores_handles_and_counters_and_sees_a_changed_rule() {
        let terse = |handle: u32, packets: u32, verdict: &str| {
            format!(
                r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6"}}}},
                {{"table": {{"family": "inet", "name": "spa", "handle": {handle}}}}},
                {{"set": {{"family": "inet", "name": "protect", "table": "spa", "type": ["inet_proto", "inet_service"], "handle": 2}}}},
                {{"chain": {{"family": "inet", "table": "spa", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}}},
                {{"rule": {{"family": "inet", "table": "spa", "chain": "input", "handle": 6, "expr": [{{"counter": {{"packets": {packets}, "bytes": 0}}}}, {{"{verdict}": null}}]}}}}]}}"#
            )
        };
        let protect = |port: u16| {
            format!(
                r#"{{"nftables": [{{"set": {{"name": "protect", "elem": [{{"concat": ["tcp", {port}]}}]}}}}]}}"#
            )
        };
        let a = structure(&terse(1, 0, "drop"), &protect(22)).unwrap();
        assert_eq!(a, structure(&terse(9, 1234, "drop"), &protect(22)).unwrap());
        let b = structure(&terse(1, 0, "accept"), &protect(22)).unwrap();
        assert_eq!(differences(&a, &b), "rules of chain input changed");
        let c = structure(&terse(1, 0, "drop"), &protect(23)).unwrap();
        assert_eq!(differences(&a, &c), "set protect elements changed");
        assert!(structure("", "").is_err());
    }
}

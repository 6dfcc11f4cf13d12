//! Reading our table back: `nft -j list table inet <t>` into [`Owned`] entries, one per timed
//! element, with the grant id from the element's comment and the deadline from its expiry.

use serde_json::Value;
use spa_backends::{GrantId, Owned};

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
pub fn parse(json: &str, now: u64) -> Result<Vec<Owned>, String> {
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
            out.push(Owned {
                id: comment.and_then(grant_id),
                entry,
                deadline: expires.map(|s| now.saturating_add(s)),
            });
        }
    }
    Ok(out)
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
                Owned {
                    id: Some(GrantId(0xab)),
                    entry: "allow4 { 10.0.0.1 . tcp . 22 }".into(),
                    deadline: Some(1029)
                },
                Owned {
                    id: Some(GrantId(2)),
                    entry: "dnat4 { 10.0.0.1 . tcp . 2222 : 10.1.0.2 . 22 }".into(),
                    deadline: Some(1007)
                },
                Owned { id: None, entry: "route_all6 { fd00::1 }".into(), deadline: Some(1005) },
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
}

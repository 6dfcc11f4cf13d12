//! What `spad check` (and the start, as warnings) asks of the firewalld backend beyond what
//! building it already checks (firewalld on the bus, its version, the zone's protection): that
//! the interface whose zone it uses exists. It changes nothing.

use spa_backends::preflight::{Context, Finding, interface_exists};

use crate::config::FirewalldConfig;

/// The firewalld backend's preflight (see [`spa_backends::preflight`]).
pub fn preflight(ctx: &Context<'_>) -> Vec<Finding> {
    let Ok(config) = FirewalldConfig::from_table(ctx.table) else { return Vec::new() };
    match &config.interface {
        Some(i) if !interface_exists(i) => vec![Finding::error(
            Some("interface"),
            format!(
                "interface {i:?} does not exist; firewalld puts it in no zone, so grants would go to \
                 the default zone"
            ),
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_must_exist() {
        let table: toml::Table = "interface = \"spa-nope0\"".parse().unwrap();
        let f = preflight(&Context { table: &table, forwards: false });
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].key, Some("interface"));
        assert!(f[0].message.starts_with("interface \"spa-nope0\" does not exist"), "{}", f[0].message);
        let table: toml::Table = "interface = \"lo\"".parse().unwrap();
        assert!(preflight(&Context { table: &table, forwards: false }).is_empty());
    }
}

//! What `spad check` (and the start, as warnings) asks of the ipfw backend before it runs: the
//! ipfw program, the privilege to change the firewall (root), and the interfaces its forwards
//! name. It changes nothing.

use spa_backends::preflight::{
    Capability, Context, Finding, find_program, interface_exists, require_capability,
};

use crate::config::Config;

/// The ipfw backend's preflight (see [`spa_backends::preflight`]).
pub fn preflight(ctx: &Context<'_>) -> Vec<Finding> {
    // A table that does not parse is reported by the constructor, with its line.
    let Ok(config) = Config::from_table(ctx.table) else { return Vec::new() };
    let mut out = Vec::new();
    if let Err(why) = find_program(&config.ipfw, None) {
        out.push(Finding::error(Some("ipfw"), format!("the ipfw program is missing: {why}")));
    }
    out.extend(require_capability(Capability::NetAdmin, "the ipfw backend changes the firewall"));
    for f in &config.forward {
        if !interface_exists(&f.interface) {
            out.push(Finding::error(
                Some("forward"),
                format!("forward {}: interface {:?} does not exist", f.port, f.interface),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_and_the_interfaces_must_exist() {
        let table: toml::Table = "ipfw = \"/nonexistent/ipfw\"".parse().unwrap();
        let f = preflight(&Context { table: &table, forwards: false });
        assert_eq!(f[0].key, Some("ipfw"));
        assert_eq!(f[0].message, "the ipfw program is missing: /nonexistent/ipfw: does not exist");
    }
}

//! What `spad check` (and the start, as warnings) asks of the script backend before it runs:
//! that each command's program exists and is executable, found the way the backend will run
//! it (an absolute path, or a name in the commands' `PATH`). It runs nothing.

use spa_backends::Backend as _;
use spa_backends::preflight::{Context, Finding, find_program};

use crate::ScriptBackend;

/// The script backend's preflight (see [`spa_backends::preflight`]).
pub fn preflight(ctx: &Context<'_>) -> Vec<Finding> {
    // A table that does not parse is reported by the constructor, with its line.
    let Ok(b) = ScriptBackend::from_table(ctx.table) else { return Vec::new() };
    let path = b.base_env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let mut out = Vec::new();
    for (key, cmd) in [("open", Some(&b.open)), ("close", Some(&b.close)), ("check", b.check.as_ref())] {
        let Some(cmd) = cmd else { continue };
        if let Err(why) = find_program(&cmd.program, path) {
            out.push(Finding::error(Some(key), format!("the program cannot be run: {why}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn every_command_must_be_an_executable_program() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fw-open");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let table: toml::Table = format!(
            "open = [\"{}\", \"{{source}}\"]\nclose = [\"fw-close-nowhere\"]\ncheck = [\"true\"]\n",
            script.display()
        )
        .parse()
        .unwrap();
        let f = preflight(&Context { table: &table, forwards: false });
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].key, Some("open"));
        assert_eq!(
            f[0].message,
            format!("the program cannot be run: {}: is not executable (mode 644)", script.display())
        );
        assert_eq!(f[1].key, Some("close"));
        assert!(
            f[1].message
                .starts_with("the program cannot be run: fw-close-nowhere is not in /usr/local/sbin:"),
            "{}",
            f[1].message
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let table: toml::Table =
            format!("open = [\"{}\"]\nclose = [\"true\"]\n", script.display()).parse().unwrap();
        assert!(preflight(&Context { table: &table, forwards: false }).is_empty());
    }
}

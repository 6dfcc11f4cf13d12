//! Records the git commit the binary is built from, for `--version`.
//!
//! `SPA_GIT_COMMIT` and `SPA_GIT_DATE` (`YYYY-MM-DD`, the manual pages' date) in the
//! environment win (a packager building from a tarball without `.git` sets them); otherwise
//! git tells; otherwise `unknown`.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=SPA_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=SPA_GIT_DATE");
    let (commit, date) = match (std::env::var("SPA_GIT_COMMIT"), std::env::var("SPA_GIT_DATE")) {
        (Ok(c), Ok(d)) if !c.is_empty() && !d.is_empty() => (c, d),
        _ => {
            // Rebuild when HEAD moves: HEAD itself (a branch switch) and the branch it names
            // (a commit), wherever this checkout keeps them (worktrees split the two).
            // A path that does not exist would make cargo rerun this at every build.
            let mut watch = Vec::new();
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                watch.push(PathBuf::from(dir).join("HEAD"));
            }
            if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
                let common = PathBuf::from(common);
                if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    watch.push(common.join(head));
                }
                watch.push(common.join("packed-refs"));
            }
            for path in watch.iter().filter(|p| p.exists()) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            (
                git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned()),
                git(&["log", "-1", "--format=%cs"]).unwrap_or_else(|| "unknown".to_owned()),
            )
        }
    };
    println!("cargo:rustc-env=SPA_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=SPA_GIT_DATE={date}");
}

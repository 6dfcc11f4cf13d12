//! How pfctl is run: through [`spa_backends::process::Tool`] (argv only, own process group, a
//! hard time limit), with a fixed prefix for tests (the recording fake).

use std::time::Duration;

use spa_backends::process::Tool;

/// How long one pfctl run may take before it is killed (with its process group). Loading an
/// anchor with many thousand table addresses takes well under a second.
const LIMIT: Duration = Duration::from_secs(20);

/// pfctl, optionally behind a fixed prefix.
pub(crate) fn pfctl(program: String, prefix: Vec<String>) -> Tool {
    Tool::new(program, prefix, "pfctl", LIMIT)
}

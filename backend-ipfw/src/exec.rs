//! How ipfw is run: through [`spa_backends::process::Tool`] (argv only, own process group, a
//! hard time limit), with a fixed prefix for tests (the recording fake).

use std::time::Duration;

use spa_backends::process::Tool;

/// How long one ipfw run may take before it is killed (with its process group). A batch with
/// many thousand table keys takes well under a second.
const LIMIT: Duration = Duration::from_secs(20);

/// ipfw, optionally behind a fixed prefix.
pub(crate) fn ipfw(program: String, prefix: Vec<String>) -> Tool {
    Tool::new(program, prefix, "ipfw", LIMIT)
}

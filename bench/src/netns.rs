//! Entering a named network namespace (`ip netns add` names, under `/var/run/netns`) from the
//! calling thread only: the flood generator and the bench's client threads send from inside a
//! lab host while the rest of the process stays where it is.

use std::os::fd::AsRawFd;

use crate::{Error, Result};

/// Moves the calling thread into network namespace `name`.
pub fn enter(name: &str) -> Result<()> {
    let path = format!("/var/run/netns/{name}");
    let file =
        std::fs::File::open(&path).map_err(|source| Error::NetnsOpen { name: name.to_owned(), source })?;
    // SAFETY: setns on a valid namespace fd; it changes only the calling thread's namespace.
    let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(Error::NetnsEnter { name: name.to_owned(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

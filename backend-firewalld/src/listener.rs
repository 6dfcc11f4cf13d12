//! The signal listener: a thread on its own bus connection, subscribed to firewalld's
//! `Reloaded` signal and to `NameOwnerChanged` for firewalld's name, that raises a flag for
//! `check`. A reload or a restart of firewalld drops every runtime rule, so the gate must
//! put the live grants back; `check` only reads the flag, so it costs nothing while nothing
//! happens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use spa_backends::BackendError;
use zbus::blocking::{Connection, MessageIterator};
use zbus::message::Type;

use crate::bus::{self, BusAddress};

/// firewalld reloaded (`Reloaded`).
pub const RELOADED: u8 = 1;
/// firewalld's name got a new owner (a restart).
pub const STARTED: u8 = 2;
/// firewalld's name lost its owner (firewalld stopped).
pub const STOPPED: u8 = 4;
/// The listener's connection ended (the bus went away): nothing is watched any more.
pub const DEAF: u8 = 8;

/// Why `check` reports damage, from the flags.
pub fn describe(flags: u8) -> String {
    let mut what = Vec::new();
    if flags & RELOADED != 0 {
        what.push("firewalld reloaded");
    }
    if flags & STOPPED != 0 {
        what.push("firewalld left the bus");
    }
    if flags & STARTED != 0 {
        what.push("firewalld restarted");
    }
    if flags & DEAF != 0 {
        what.push("the d-bus connection for firewalld's signals was lost");
    }
    what.join(", ")
}

/// The listening thread and its flags.
#[derive(Debug)]
pub struct Listener {
    flags: Arc<AtomicU8>,
    conn: Option<Connection>,
}

impl Listener {
    /// Subscribes (the match rules are in place when this returns, so nothing after it is
    /// missed) and starts the thread.
    pub fn start(address: &BusAddress, timeout: Duration) -> Result<Self, BackendError> {
        let conn = bus::connect(address, timeout)?;
        let reloaded = zbus::MatchRule::builder()
            .msg_type(Type::Signal)
            .sender(bus::NAME)
            .and_then(|b| b.interface(bus::IFACE))
            .and_then(|b| b.member("Reloaded"))
            .and_then(|b| b.path(bus::PATH))
            .map(|b| b.build())
            .map_err(|e| bus::error("AddMatch", &e))?;
        let owner = zbus::MatchRule::builder()
            .msg_type(Type::Signal)
            .sender("org.freedesktop.DBus")
            .and_then(|b| b.interface("org.freedesktop.DBus"))
            .and_then(|b| b.member("NameOwnerChanged"))
            .and_then(|b| b.add_arg(bus::NAME))
            .map(|b| b.build())
            .map_err(|e| bus::error("AddMatch", &e))?;
        let reloads = MessageIterator::for_match_rule(reloaded, &conn, Some(64))
            .map_err(|e| bus::error("AddMatch", &e))?;
        let owners = MessageIterator::for_match_rule(owner, &conn, Some(64))
            .map_err(|e| bus::error("AddMatch", &e))?;
        let flags = Arc::new(AtomicU8::new(0));
        let (f1, f2) = (Arc::clone(&flags), Arc::clone(&flags));
        // Two small threads, one per subscription: a blocking iterator waits on one stream.
        std::thread::Builder::new()
            .name("firewalld-reload".into())
            .spawn(move || watch(reloads, &f1, |_| RELOADED))
            .map_err(|e| BackendError::Other(format!("cannot start the firewalld signal thread: {e}")))?;
        std::thread::Builder::new()
            .name("firewalld-owner".into())
            .spawn(move || {
                watch(owners, &f2, |m| {
                    // NameOwnerChanged(name, old, new): an empty new owner means it stopped.
                    match m.body().deserialize::<(String, String, String)>() {
                        Ok((_, _, new)) if new.is_empty() => STOPPED,
                        Ok(_) => STARTED,
                        Err(_) => STARTED | STOPPED,
                    }
                })
            })
            .map_err(|e| BackendError::Other(format!("cannot start the firewalld signal thread: {e}")))?;
        Ok(Self { flags, conn: Some(conn) })
    }

    /// The flags raised since the last [`Listener::clear`].
    pub fn flags(&self) -> u8 {
        self.flags.load(Ordering::Acquire)
    }

    /// Lowers the flags (before a prepare, so that anything during it raises them again).
    pub fn clear(&self) {
        self.flags.store(0, Ordering::Release);
    }
}

fn watch(messages: MessageIterator, flags: &AtomicU8, what: impl Fn(&zbus::Message) -> u8) {
    for m in messages {
        match m {
            Ok(m) if m.message_type() == Type::Signal => {
                flags.fetch_or(what(&m), Ordering::AcqRel);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    flags.fetch_or(DEAF, Ordering::AcqRel);
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Closing the connection ends both iterators, and so both threads (not joined: a
        // thread blocked in the bus library must not hold up the daemon).
        if let Some(c) = self.conn.take() {
            let _ = c.close();
        }
    }
}

//! What a backend crate implements: a pure mapping from a grant to typed entries, and a thin
//! layer that puts those entries into the firewall and reads them back.
//!
//! Everything about a grant's life (re-knocks, entries shared by several grants, expiry,
//! closes that failed and are retried, tampering) is decided once, by the
//! [`Ledger`](crate::Ledger), and carried out by the [`Gate`](crate::Gate). A backend only
//! answers "which entries does this grant need" and "make these changes".

use std::fmt;
use std::hash::Hash;

use serde::Serialize;

use crate::{BackendError, Grant, GrantId};

/// One thing a backend puts into the firewall for a grant: a set element, a rule, a command's
/// unit of work. Typed, so that rendering interpolates only checked values; displayed in the
/// firewall's own words (`allow4 { 192.0.2.1 . tcp . 22 }`), which is also how
/// [`Backend::observe`] reports it back.
pub trait Entry: Clone + Eq + Hash + Ord + fmt::Debug + fmt::Display + Send + 'static {
    /// The entry's identity in the firewall. Two entries with the same slot but different
    /// values (a map key with other data) cannot both exist: the ledger refuses the second
    /// grant rather than let it overwrite the first.
    type Slot: Clone + Eq + Hash + fmt::Debug;

    /// Its slot.
    fn slot(&self) -> Self::Slot;

    /// True when the firewall removes the entry by itself at the deadline it was put with
    /// (an nft element timeout, an ipset timeout, a firewalld timeout), so an expiry needs no
    /// change and a stopped daemon still fails closed.
    fn expires_by_itself(&self) -> bool;
}

/// An entry as it is (or is to be) in the firewall: the value, the grant whose deadline it
/// carries (rules and elements are tagged with its id; commands get the whole grant) and that
/// deadline.
#[derive(Debug)]
pub struct Held<'a, E> {
    /// The value.
    pub entry: &'a E,
    /// The grant it is tagged with.
    pub holder: &'a Grant,
    /// When it ends, Unix seconds (the firewall ends it then, for entries that expire by
    /// themselves).
    pub until: u64,
}

impl<E> Clone for Held<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Held<'_, E> {}

/// One change to the firewall.
#[derive(Debug)]
pub enum Change<'a, E> {
    /// Make `new` present (added, or re-timed and re-tagged if its slot is taken). `prior` is
    /// `None` when the ledger knows the slot is empty, so a plain add suffices; otherwise it
    /// is what may be there now (possibly gone already: an entry that expired by itself a
    /// moment ago), with the data the firewall holds for it.
    Put {
        /// What to put.
        new: Held<'a, E>,
        /// What may be there now.
        prior: Option<Held<'a, E>>,
    },
    /// Make `old` absent (it may be gone already: removing an absent entry is not an error).
    Remove {
        /// What may be there now.
        old: Held<'a, E>,
    },
}

impl<E> Clone for Change<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Change<'_, E> {}

impl<'a, E> Change<'a, E> {
    /// The entry the change is about (the new value for a put).
    pub fn entry(&self) -> &'a E {
        match self {
            Change::Put { new, .. } => new.entry,
            Change::Remove { old } => old.entry,
        }
    }
}

/// What a backend can do; the configuration loader refuses what it lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// It implements [`Nat`](crate::Nat).
    pub nat: bool,
    /// It handles IPv6 sources.
    pub ipv6: bool,
    /// Every entry it makes expires by itself (see [`Entry::expires_by_itself`]), so a stopped
    /// daemon leaves nothing open past its deadline.
    pub native_expiry: bool,
    /// [`Backend::prepare`] leaves the firewall holding exactly the given entries: anything
    /// it owned before (entries of grants that ended while the daemon was down, or whose close
    /// failed) is gone afterwards. Backends that own a namespace they can reset have it; the
    /// script backend does not.
    pub exact_prepare: bool,
    /// [`Backend::apply`] changes all or nothing, so a failed grant needs no clean-up.
    pub atomic_apply: bool,
    /// It can bind a grant to the client's source port ([`Grant::source_port`]) exactly.
    /// Without it, the daemon refuses such a grant before it reaches the backend (and the
    /// backend's `entries` refuses it too): a source-port grant is never widened to the whole
    /// address.
    pub source_port: bool,
}

/// The result of a cheap look at the firewall for tampering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Everything the backend set up (tables, chains, sets, hooks, protections) is there.
    Intact,
    /// Something it owns vanished or changed; the text says what (for the audit trail).
    Damaged(String),
}

/// One entry as the firewall reports it, for `spad list --firewall` and reconciling.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Observed {
    /// The entry in the same words as its [`Entry`]'s `Display`.
    pub entry: String,
    /// The grant it is tagged with, where the firewall keeps the tag.
    pub holder: Option<GrantId>,
    /// When the firewall ends it, where the firewall says.
    pub until: Option<u64>,
}

/// A firewall backend: pure rendering plus a thin applying layer. Implementations live in
/// their own crates (`backend-nft`, ...) and register a descriptor built with
/// [`create`](crate::create)`::<B>` (see `backends/README.md`).
///
/// Contract (checked for every backend by the contract suite in `testkit`, cargo feature
/// `testkit`):
/// - Everything lives in one namespace the backend owns (a table, chains with a prefix, an
///   anchor); nothing else is touched.
/// - [`Backend::entries`] is pure: the same grant gives the same entries, whatever was
///   applied before. Every entry's value identifies the grant's source (two grants of
///   different sources never share an entry).
/// - [`Backend::apply`] carries out changes in order; putting an entry that is there re-times
///   it, removing one that is gone is not an error.
/// - [`Backend::prepare`] sets up the namespace (protections first) and makes it hold the
///   given entries, in one atomic step where the firewall allows it.
/// - No backend reads the clock: `now` is passed in.
pub trait Backend: Send + 'static {
    /// What this backend puts into the firewall.
    type Entry: Entry;

    /// Builds the backend from its own table (`[firewall.<name>]`). Starts nothing.
    fn from_table(table: &toml::Table) -> Result<Self, BackendError>
    where
        Self: Sized;

    /// The registered name.
    fn name(&self) -> &'static str;

    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// The entries a grant needs. Pure. An error means the grant cannot be expressed
    /// (mixed address families, a NAT shape the backend lacks).
    fn entries(&self, grant: &Grant) -> Result<Vec<Self::Entry>, BackendError>;

    /// Creates or resets the namespace so that it holds exactly `live` (each entry with the
    /// grant and deadline it carries); the protections are in place when it returns.
    fn prepare(&mut self, live: &[Held<'_, Self::Entry>], now: u64) -> Result<(), BackendError>;

    /// Carries out `changes` (one grant's worth, usually) at `now`.
    fn apply(&mut self, changes: &[Change<'_, Self::Entry>], now: u64) -> Result<(), BackendError>;

    /// A cheap look for tampering: is what `prepare` set up still there and unchanged?
    /// Called about once a second and after every failed change; expensive checks should
    /// throttle themselves.
    fn check(&mut self, now: u64) -> Result<Health, BackendError>;

    /// What the firewall holds now, entry by entry.
    fn observe(&mut self, now: u64) -> Result<Vec<Observed>, BackendError>;

    /// Removes the whole namespace, protections included (an explicit admin action).
    fn teardown(&mut self) -> Result<(), BackendError>;
}

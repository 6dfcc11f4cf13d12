//! The grant ledger: the one place that decides a grant's life, with no I/O and no clock.
//!
//! Events go in with the time (`now`): a grant, a revoke, a tick. Plans come out: the changes
//! to make in the firewall ([`Planned`]), computed from the grants on record and a backend's
//! pure mapping from a grant to its entries. The caller carries a plan out and reports back
//! with [`Ledger::commit`] or [`Ledger::fail`]; only then does the ledger change. So one
//! place, tested once, handles:
//!
//! - **re-knocks**: a grant for the same source, destination, access and NAT as a live one
//!   extends it (same id) when its deadline is later, and changes nothing otherwise;
//! - **shared entries**: two grants of one source can need the same entry (tcp/22 from two
//!   access lists); it lives until the latest deadline of the grants that need it, is re-timed
//!   when that grant ends early, and is removed only when no live grant needs it;
//! - **conflicts**: a grant whose entry would replace another live grant's different value in
//!   the same slot (a DNAT map key to another host) is refused, never silently redirected;
//! - **expiry**: at its deadline a grant ends; entries that the firewall expires by itself
//!   need no change (and are remembered for [`GRACE`] more seconds, since the firewall may
//!   end them up to a second late, so a new grant for the same slot re-times rather than adds);
//! - **failed closes**: a grant whose end could not be carried out stays on record as
//!   closing, still holding its entries, and is retried with backoff (1 s, 2 s, 4 s ... up to
//!   [`MAX_BACKOFF`]).
//!
//! Grants of different sources never share an entry (a backend contract: every entry
//! identifies its grant's source), so everything is computed per source, from the grants
//! recorded for it. The ledger stores grants only, never entries: entries are recomputed from
//! the grant, which keeps one record per grant.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{BackendError, Entry, Grant, GrantId};

/// Seconds an entry that expires by itself may outlive its deadline in the firewall (an
/// element put at wall time `w` with a whole-second timeout ends before `deadline + 1`).
pub const GRACE: u64 = 1;

/// Longest wait between two attempts to close a grant.
pub const MAX_BACKOFF: u64 = 60;

/// Why a grant ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndKind {
    /// Its deadline passed.
    Expire,
    /// It was ended early (by an admin, or because the daemon stops).
    Revoke,
}

impl EndKind {
    /// The audit event's name.
    pub const fn event(self) -> &'static str {
        match self {
            EndKind::Expire => "expire",
            EndKind::Revoke => "revoke",
        }
    }
}

/// A grant whose end could not be carried out yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closing {
    /// Why it is ending.
    pub why: EndKind,
    /// Attempts that failed so far.
    pub attempts: u32,
    /// When the next attempt is due, Unix seconds.
    pub retry_at: u64,
}

impl Closing {
    /// The state after one more failed attempt at `now`.
    pub fn after_failure(why: EndKind, attempts_before: u32, now: u64) -> Self {
        let attempts = attempts_before.saturating_add(1);
        let backoff = 1u64.checked_shl(attempts - 1).unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF);
        Closing { why, attempts, retry_at: now.saturating_add(backoff) }
    }
}

/// Where a recorded grant stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// In force until its deadline.
    Live,
    /// Ended; entries the firewall expires by itself may linger up to [`GRACE`] seconds.
    /// Never journaled: a restart forgets it.
    Lingering,
    /// Ending failed; its entries may still be in the firewall.
    Closing(Closing),
}

/// One grant on record.
#[derive(Clone, Debug)]
pub struct Record {
    /// The grant (its deadline is what its entries carry).
    pub grant: Grant,
    /// Where it stands.
    pub state: State,
}

/// An owned entry with the grant and deadline it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag<E> {
    /// The value.
    pub entry: E,
    /// The grant it is tagged with.
    pub holder: GrantId,
    /// When it ends.
    pub until: u64,
}

/// One change a plan asks for (see [`crate::Change`], which the gate builds from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Planned<E> {
    /// Make `new` present; `prior` is what may be there.
    Put {
        /// What to put.
        new: Tag<E>,
        /// What may be there now.
        prior: Option<Tag<E>>,
    },
    /// Make `old` absent.
    Remove {
        /// What may be there now.
        old: Tag<E>,
    },
}

/// What a plan does to the ledger once carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanKind {
    /// A new grant.
    New,
    /// A live grant gets a later deadline.
    Extend,
    /// A re-knock that moves nothing.
    Reknock,
    /// A grant ends.
    End(EndKind),
    /// A lingering grant is forgotten (nothing to change).
    Forget,
}

/// Changes to carry out for one event, and what they mean for the ledger.
#[derive(Clone, Debug)]
pub struct Plan<E> {
    kind: PlanKind,
    grant: Grant,
    changes: Vec<Planned<E>>,
}

impl<E> Plan<E> {
    /// What it does.
    pub fn kind(&self) -> PlanKind {
        self.kind
    }

    /// The grant as it will be once the plan is committed (for an extension: with the new
    /// deadline).
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// The changes, in order.
    pub fn changes(&self) -> &[Planned<E>] {
        &self.changes
    }
}

/// Why a grant was not planned.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Another grant of the same source holds one of its slots with another value.
    #[error("conflicts with grant {with}")]
    Conflict {
        /// The grant in the way.
        with: GrantId,
    },
    /// The backend cannot express it.
    #[error("the backend cannot express this grant")]
    Unexpressible(#[source] BackendError),
    /// Its deadline is not in the future.
    #[error("the grant's deadline has passed")]
    Expired,
}

/// What happened, for the audit trail and the journal.
#[derive(Debug)]
pub enum Event {
    /// A new grant is in force.
    Granted(Grant),
    /// A live grant got a later deadline.
    Extended(Grant),
    /// A re-knock for a live grant that already lasts at least as long.
    Reknocked(Grant),
    /// A grant or an extension was not made.
    Refused {
        /// The grant as asked for.
        grant: Grant,
        /// Whether it was an extension of a live grant.
        extension: bool,
        /// Why.
        cause: RefusedBecause,
    },
    /// A grant ended (after `attempts` failed attempts before this one).
    Ended {
        /// The grant.
        grant: Grant,
        /// Why.
        why: EndKind,
        /// Earlier attempts that failed.
        attempts: u32,
    },
    /// Ending a grant failed; it stays on record as closing.
    CloseFailed {
        /// The grant.
        grant: Grant,
        /// Its closing state (attempts so far, next attempt).
        closing: Closing,
        /// Why it failed.
        error: BackendError,
    },
    /// What the backend set up vanished or changed under us.
    Tampered {
        /// What the backend saw.
        detail: String,
    },
    /// The backend was set up again with every live grant.
    Repaired {
        /// Live grants put back.
        live: usize,
    },
    /// Setting the backend up again failed; the next check tries again.
    RepairFailed {
        /// Why.
        error: BackendError,
    },
}

/// Why a grant was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefusedBecause {
    /// The ledger refused it.
    #[error(transparent)]
    Ledger(#[from] Refusal),
    /// Its record could not be written before the firewall was changed.
    #[error("state unwritable: {0}")]
    StateUnwritable(String),
    /// The firewall change failed.
    #[error("firewall change failed")]
    Backend(#[source] BackendError),
}

/// The grants on record, live, lingering and closing.
///
/// Memory is one boxed record per grant plus three small indexes: by id (16 bytes a slot),
/// the first grant of each source by a keyed hash of the address (16 bytes; grants of one
/// source, and of sources whose hashes collide, are chained through their records and told
/// apart by address), and the due-time queue (16 bytes).
#[derive(Debug, Default)]
pub struct Ledger {
    records: HashMap<GrantId, Box<Slot>>,
    heads: HashMap<u64, GrantId>,
    hasher: std::collections::hash_map::RandomState,
    /// When to look at a grant next; entries that no longer match the record are skipped.
    queue: BinaryHeap<Reverse<(u64, GrantId)>>,
}

/// A record and the next grant in its source's chain (0: none; 0 is never a grant id).
#[derive(Debug)]
struct Slot {
    record: Record,
    next: u64,
}

/// An entry mapping: a backend's `entries` function.
pub trait Mapper<E>: Fn(&Grant) -> Result<Vec<E>, BackendError> {}
impl<E, F: Fn(&Grant) -> Result<Vec<E>, BackendError>> Mapper<E> for F {}

/// The grants of one source with their entries, computed once per plan.
struct Neighbours<'r, E> {
    list: Vec<(&'r Record, Vec<E>)>,
}

impl<'r, E: Entry> Neighbours<'r, E> {
    /// Whether `rec` (in its state) may have `e` in the firewall.
    fn holds(rec: &Record, e: &E) -> bool {
        match rec.state {
            State::Live | State::Closing(_) => true,
            State::Lingering => e.expires_by_itself(),
        }
    }

    /// What the firewall holds for `slot`, as far as the records say: the holder with the
    /// latest deadline.
    fn current(&self, slot: &E::Slot) -> Option<Tag<E>> {
        self.list
            .iter()
            .flat_map(|(rec, es)| es.iter().map(move |e| (*rec, e)))
            .filter(|(rec, e)| e.slot() == *slot && Self::holds(rec, e))
            .max_by_key(|(rec, _)| rec.grant.deadline)
            .map(|(rec, e)| Tag { entry: e.clone(), holder: rec.grant.id, until: rec.grant.deadline })
    }

    /// Which live grant other than `except` still needs `slot` after `now`: the one with the
    /// latest deadline.
    fn needed(&self, slot: &E::Slot, except: GrantId, now: u64) -> Option<Tag<E>> {
        self.list
            .iter()
            .filter(|(rec, _)| rec.grant.id != except && rec.state == State::Live && rec.grant.deadline > now)
            .flat_map(|(rec, es)| es.iter().map(move |e| (*rec, e)))
            .filter(|(_, e)| e.slot() == *slot)
            .max_by_key(|(rec, _)| rec.grant.deadline)
            .map(|(rec, e)| Tag { entry: e.clone(), holder: rec.grant.id, until: rec.grant.deadline })
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads recorded grants (at start). Live grants whose deadline has passed are due at
    /// once; closing ones at their retry time (or at once).
    pub fn load(records: impl IntoIterator<Item = Record>) -> Self {
        let mut l = Self::new();
        for r in records {
            l.insert(r);
        }
        l
    }

    /// The record of a grant.
    pub fn get(&self, id: GrantId) -> Option<&Record> {
        self.records.get(&id).map(|b| &b.record)
    }

    fn get_mut(&mut self, id: GrantId) -> Option<&mut Record> {
        self.records.get_mut(&id).map(|b| &mut b.record)
    }

    /// Every record (live, lingering, closing), in no order.
    pub fn records(&self) -> impl Iterator<Item = &Record> + '_ {
        self.records.values().map(|b| &b.record)
    }

    /// The live grants, in no order.
    pub fn live(&self) -> impl Iterator<Item = &Grant> + '_ {
        self.records().filter(|r| r.state == State::Live).map(|r| &r.grant)
    }

    /// How many grants are recorded (live, lingering and closing).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The earliest time something may be due (a deadline, a lingering entry's end, a retry).
    /// May be early (a stale queue entry): waking then finds nothing to do.
    pub fn next_due(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    fn due_at(r: &Record) -> u64 {
        match &r.state {
            State::Live => r.grant.deadline,
            State::Lingering => r.grant.deadline.saturating_add(GRACE),
            State::Closing(c) => c.retry_at,
        }
    }

    fn source_key(&self, src: IpAddr) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, src)
    }

    fn insert(&mut self, r: Record) {
        let id = r.grant.id;
        if id.0 == 0 {
            // Not a grant id (the chains use 0 for "none"); the daemon never makes it.
            return;
        }
        self.queue.push(Reverse((Self::due_at(&r), id)));
        if let Some(slot) = self.records.get_mut(&id) {
            // Same id again (a record loaded twice): replace it, keep its place in the chain.
            slot.record = r;
            return;
        }
        let key = self.source_key(r.grant.source);
        let next = self.heads.insert(key, id).map_or(0, |g| g.0);
        self.records.insert(id, Box::new(Slot { record: r, next }));
    }

    fn remove(&mut self, id: GrantId) -> Option<Record> {
        let slot = self.records.remove(&id)?;
        let key = self.source_key(slot.record.grant.source);
        if self.heads.get(&key) == Some(&id) {
            match slot.next {
                0 => self.heads.remove(&key),
                n => self.heads.insert(key, GrantId(n)),
            };
        } else {
            // Unlink from the chain: find the one pointing at it.
            let mut at = self.heads.get(&key).copied();
            while let Some(cur) = at {
                let Some(s) = self.records.get_mut(&cur) else { break };
                if s.next == id.0 {
                    s.next = slot.next;
                    break;
                }
                at = (s.next != 0).then_some(GrantId(s.next));
            }
        }
        Some(slot.record)
    }

    fn reschedule(&mut self, id: GrantId) {
        if let Some(r) = self.get(id) {
            self.queue.push(Reverse((Self::due_at(r), id)));
        }
    }

    fn same_source(&self, src: IpAddr) -> impl Iterator<Item = &Record> + '_ {
        let mut at = self.heads.get(&self.source_key(src)).copied();
        std::iter::from_fn(move || {
            while let Some(cur) = at {
                let s = self.records.get(&cur)?;
                at = (s.next != 0).then_some(GrantId(s.next));
                if s.record.grant.source == src {
                    return Some(&s.record);
                }
            }
            None
        })
    }

    fn neighbours<E: Entry>(&self, src: IpAddr, map: &impl Mapper<E>) -> Neighbours<'_, E> {
        // A recorded grant always mapped before; if the backend now refuses it, it holds
        // nothing the ledger can name.
        Neighbours { list: self.same_source(src).map(|r| (r, map(&r.grant).unwrap_or_default())).collect() }
    }

    /// Plans a new grant, or the extension of the live grant with the same access (a
    /// re-knock). `grant.id` must be new.
    pub fn plan_grant<E: Entry>(
        &self,
        grant: Grant,
        now: u64,
        map: &impl Mapper<E>,
    ) -> Result<Plan<E>, Box<(Grant, Refusal)>> {
        if grant.deadline <= now {
            return Err(Box::new((grant, Refusal::Expired)));
        }
        let near = self.neighbours(grant.source, map);
        let same = near
            .list
            .iter()
            .find(|(r, _)| r.state == State::Live && r.grant.deadline > now && r.grant.same_access(&grant));
        if let Some((rec, entries)) = same {
            // The knock, not the grant it meets, says who knocked and under which stanza:
            // the audit line names them, and an extension is then held to that stanza.
            let mut ext = rec.grant.clone();
            ext.packet_source = grant.packet_source;
            ext.stanza = grant.stanza;
            ext.username = grant.username;
            if grant.deadline <= rec.grant.deadline {
                return Ok(Plan { kind: PlanKind::Reknock, grant: ext, changes: Vec::new() });
            }
            ext.deadline = grant.deadline;
            let changes = Self::puts(&near, entries, &ext);
            return Ok(Plan { kind: PlanKind::Extend, grant: ext, changes });
        }
        let entries = match map(&grant) {
            Ok(e) => e,
            Err(e) => return Err(Box::new((grant, Refusal::Unexpressible(e)))),
        };
        for e in &entries {
            let slot = e.slot();
            let clash = near
                .list
                .iter()
                .find(|(r, es)| r.state != State::Lingering && es.iter().any(|x| x.slot() == slot && x != e));
            if let Some((r, _)) = clash {
                return Err(Box::new((grant, Refusal::Conflict { with: r.grant.id })));
            }
        }
        let changes = Self::puts(&near, &entries, &grant);
        Ok(Plan { kind: PlanKind::New, grant, changes })
    }

    /// Puts for `entries` of `g` (until its deadline), skipping slots another grant already
    /// holds at least as long.
    fn puts<E: Entry>(near: &Neighbours<'_, E>, entries: &[E], g: &Grant) -> Vec<Planned<E>> {
        let mut out = Vec::with_capacity(entries.len());
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        for e in entries {
            if !seen.insert(e.slot()) {
                continue; // the same entry twice (two ports redirected to one): once is enough
            }
            // Another live grant keeps it at least as long: nothing to change. (A closing
            // grant's entry may or may not be there, so it never spares a put.)
            if near.needed(&e.slot(), g.id, 0).is_some_and(|n| n.until >= g.deadline) {
                continue;
            }
            let prior = near.current(&e.slot());
            out.push(Planned::Put { new: Tag { entry: e.clone(), holder: g.id, until: g.deadline }, prior });
        }
        out
    }

    /// The changes that end `rec` at `now`: each entry no live grant needs any more is removed
    /// (unless it expires by itself at a deadline already past), each one another grant still
    /// needs is re-timed to that grant if it carried `rec`'s deadline.
    fn release<E: Entry>(&self, rec: &Record, now: u64, map: &impl Mapper<E>) -> Vec<Planned<E>> {
        let near = self.neighbours(rec.grant.source, map);
        let own = map(&rec.grant).unwrap_or_default();
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(own.len());
        for e in own {
            let slot = e.slot();
            if !seen.insert(slot.clone()) {
                continue;
            }
            let Some(cur) = near.current(&slot) else { continue };
            match near.needed(&slot, rec.grant.id, now) {
                Some(need) => {
                    if cur.holder == rec.grant.id || cur.until > need.until {
                        out.push(Planned::Put { new: need, prior: Some(cur) });
                    }
                }
                None => {
                    if !(cur.entry.expires_by_itself() && cur.until <= now) {
                        out.push(Planned::Remove { old: cur });
                    }
                }
            }
        }
        out
    }

    /// Plans ending a live (or closing) grant now.
    pub fn plan_revoke<E: Entry>(&self, id: GrantId, now: u64, map: &impl Mapper<E>) -> Option<Plan<E>> {
        let rec = self.get(id)?;
        let why = match &rec.state {
            State::Live => EndKind::Revoke,
            State::Closing(c) => c.why,
            State::Lingering => return None,
        };
        let changes = self.release(rec, now, map);
        Some(Plan { kind: PlanKind::End(why), grant: rec.grant.clone(), changes })
    }

    /// Takes the next thing due at `now` off the queue and plans it: an expiry, a retry of a
    /// close, or forgetting a lingering grant. `None` when nothing is due.
    pub fn plan_due<E: Entry>(&mut self, now: u64, map: &impl Mapper<E>) -> Option<Plan<E>> {
        while let Some(Reverse((t, id))) = self.queue.peek().copied() {
            if t > now {
                return None;
            }
            self.queue.pop();
            let Some(rec) = self.get(id) else { continue };
            if Self::due_at(rec) != t {
                continue; // stale: extended, retried or ended since
            }
            let kind = match &rec.state {
                State::Live => PlanKind::End(EndKind::Expire),
                State::Closing(c) => PlanKind::End(c.why),
                State::Lingering => PlanKind::Forget,
            };
            let changes = if kind == PlanKind::Forget { Vec::new() } else { self.release(rec, now, map) };
            return Some(Plan { kind, grant: rec.grant.clone(), changes });
        }
        None
    }

    /// Records that `plan` was carried out at `now`; returns what happened.
    pub fn commit<E: Entry>(&mut self, plan: Plan<E>, now: u64, map: &impl Mapper<E>) -> Option<Event> {
        let Plan { kind, grant, .. } = plan;
        match kind {
            PlanKind::New => {
                self.insert(Record { grant: grant.clone(), state: State::Live });
                Some(Event::Granted(grant))
            }
            PlanKind::Extend => {
                let id = grant.id;
                if let Some(r) = self.get_mut(id) {
                    r.grant.deadline = grant.deadline;
                    r.grant.packet_source = grant.packet_source;
                    r.grant.stanza = grant.stanza.clone();
                    r.grant.username = grant.username.clone();
                }
                self.reschedule(id);
                Some(Event::Extended(grant))
            }
            PlanKind::Reknock => Some(Event::Reknocked(grant)),
            PlanKind::End(why) => {
                let id = grant.id;
                let attempts = match self.get(id).map(|r| &r.state) {
                    Some(State::Closing(c)) => c.attempts,
                    _ => 0,
                };
                // Entries the firewall ends by itself may outlive the deadline by a moment;
                // remember the grant that long so a new grant for the same slot re-times it.
                // (Only past the deadline: an early end removed them.)
                let lingers = grant.deadline <= now
                    && grant.deadline.saturating_add(GRACE) > now
                    && map(&grant).is_ok_and(|es| es.iter().any(Entry::expires_by_itself));
                if lingers && let Some(r) = self.get_mut(id) {
                    r.state = State::Lingering;
                    self.reschedule(id);
                } else {
                    self.remove(id);
                }
                Some(Event::Ended { grant, why, attempts })
            }
            PlanKind::Forget => {
                self.remove(grant.id);
                None
            }
        }
    }

    /// Records that carrying out `plan` at `now` failed with `error`; returns what happened.
    /// A failed end leaves the grant closing (retried with backoff); a failed new grant or
    /// extension leaves the ledger as it was (the caller cleans up after a backend that may
    /// have applied part of it, see [`Ledger::plan_cleanup`]).
    pub fn fail<E>(&mut self, plan: Plan<E>, now: u64, error: BackendError) -> Event {
        let Plan { kind, grant, .. } = plan;
        match kind {
            PlanKind::End(why) => {
                let before = match self.get(grant.id).map(|r| &r.state) {
                    Some(State::Closing(c)) => c.attempts,
                    _ => 0,
                };
                let closing = Closing::after_failure(why, before, now);
                if let Some(r) = self.get_mut(grant.id) {
                    r.state = State::Closing(closing);
                }
                self.reschedule(grant.id);
                Event::CloseFailed { grant, closing, error }
            }
            PlanKind::New | PlanKind::Extend | PlanKind::Reknock | PlanKind::Forget => Event::Refused {
                grant,
                extension: kind == PlanKind::Extend,
                cause: RefusedBecause::Backend(error),
            },
        }
    }

    /// After a new grant failed on a backend that may have applied part of it: the changes
    /// that undo it (put back each prior value, remove each new entry).
    pub fn plan_cleanup<E: Clone>(failed: &Plan<E>) -> Plan<E> {
        let changes = failed
            .changes
            .iter()
            .map(|c| match c {
                Planned::Put { new, prior: Some(p) } => {
                    Planned::Put { new: p.clone(), prior: Some(new.clone()) }
                }
                Planned::Put { new, prior: None } => Planned::Remove { old: new.clone() },
                Planned::Remove { old } => Planned::Put { new: old.clone(), prior: None },
            })
            .collect();
        Plan { kind: PlanKind::End(EndKind::Revoke), grant: failed.grant.clone(), changes }
    }

    /// A grant whose clean-up failed too: kept on record as closing, so its entries are
    /// removed by the retries.
    pub fn keep_for_cleanup(&mut self, grant: Grant, now: u64) -> Closing {
        let closing = Closing::after_failure(EndKind::Revoke, 0, now);
        self.insert(Record { grant, state: State::Closing(closing) });
        closing
    }

    /// Every entry the live grants need at `now`, each slot once with the grant and deadline
    /// it carries (the latest): what `prepare` puts in.
    pub fn holdings<E: Entry>(&self, map: &impl Mapper<E>, now: u64) -> Vec<Tag<E>> {
        let mut best: HashMap<E::Slot, Tag<E>> = HashMap::new();
        for r in self.records().filter(|r| r.state == State::Live && r.grant.deadline > now) {
            for e in map(&r.grant).unwrap_or_default() {
                let tag = Tag { entry: e, holder: r.grant.id, until: r.grant.deadline };
                best.entry(tag.entry.slot())
                    .and_modify(|t| {
                        if tag.until > t.until {
                            *t = tag.clone();
                        }
                    })
                    .or_insert(tag);
            }
        }
        let mut v: Vec<Tag<E>> = best.into_values().collect();
        v.sort_by(|a, b| a.entry.cmp(&b.entry));
        v
    }

    /// After a `prepare` that leaves exactly the live grants' entries: closing grants are
    /// gone from the firewall, so they end; lingering ones need no memory any more.
    pub fn after_exact_prepare(&mut self) -> Vec<Event> {
        let ids: Vec<GrantId> =
            self.records().filter(|r| r.state != State::Live).map(|r| r.grant.id).collect();
        let mut events = Vec::new();
        for id in ids {
            if let Some(r) = self.remove(id)
                && let State::Closing(c) = r.state
            {
                events.push(Event::Ended { grant: r.grant, why: c.why, attempts: c.attempts });
            }
        }
        events
    }
}

//! The gate: a backend driven by the ledger. This is the object the daemon's worker holds
//! (as `Box<dyn Driver>`): it feeds events to the [`Ledger`], carries out the ledger's plans
//! through the [`Backend`], records each step in the daemon's [`Journal`] in the order that
//! fails closed, and reports [`Event`]s for the audit trail.
//!
//! Order of records and changes:
//! - a new grant is journaled **before** the firewall changes (a crash right after leaves a
//!   record, so nothing stays open unknown); if that record cannot be written the grant is
//!   refused;
//! - an extension is journaled after (a crash in between leaves the shorter deadline on
//!   record: fail closed);
//! - an end is journaled after it succeeded, a failed end as `closing`.
//!
//! A failed change is followed by a tamper check: if what the backend set up vanished (a
//! `flush ruleset`, a firewall reload), it is rebuilt with every live grant and the change
//! is tried once more.

use crate::backend::{Backend, Capabilities, Change, Health, Held, Observed};
use crate::ledger::{Closing, Event, Ledger, PlanKind, Planned, Record, RefusedBecause, Tag};
use crate::{BackendError, Grant, GrantId};

/// Where the daemon records grants so they survive a restart. The gate calls it at the
/// points described in the module documentation.
pub trait Journal {
    /// A grant as it now is (new, or extended). An error refuses a new grant.
    fn put(&mut self, grant: &Grant) -> Result<(), String>;
    /// A grant whose end failed; it will be retried.
    fn closing(&mut self, id: GrantId, closing: &Closing);
    /// A grant that ended.
    fn del(&mut self, id: GrantId);
}

/// A journal that keeps nothing (tests, `teardown`).
#[derive(Debug, Default)]
pub struct NoJournal;

impl Journal for NoJournal {
    fn put(&mut self, _: &Grant) -> Result<(), String> {
        Ok(())
    }
    fn closing(&mut self, _: GrantId, _: &Closing) {}
    fn del(&mut self, _: GrantId) {}
}

/// A kind of call into a [`Backend`], for the daemon's latency metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// [`Backend::apply`]: a grant's, an extension's or an end's changes.
    Apply,
    /// [`Backend::check`]: the tamper check (once a second, and after a failed change).
    Check,
    /// [`Backend::prepare`]: setting up (at start, and rebuilding after a tamper).
    Prepare,
}

/// Told how long each backend call took, so the daemon can export latencies without the
/// backends knowing about metrics. Called on the worker thread right after the call.
pub trait CallObserver: Send + Sync {
    /// One call of kind `call` took `took`.
    fn observed(&self, call: Call, took: std::time::Duration);
}

/// The observer of a gate, if any.
#[derive(Clone, Default)]
struct Timer(Option<std::sync::Arc<dyn CallObserver>>);

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Timer(observed)" } else { "Timer(none)" })
    }
}

impl Timer {
    /// Runs `f`, telling the observer how long it took.
    fn time<T>(&self, call: Call, f: impl FnOnce() -> T) -> T {
        let Some(o) = &self.0 else { return f() };
        let started = std::time::Instant::now();
        let out = f();
        o.observed(call, started.elapsed());
        out
    }
}

/// The daemon's view of a backend: object-safe, so the registry can hand out any backend.
pub trait Driver: Send {
    /// The backend's registered name.
    fn name(&self) -> &'static str;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// The entries a grant would need, in the firewall's words (for `--test` and listings).
    fn describe(&self, grant: &Grant) -> Result<Vec<String>, BackendError>;
    /// Takes over the recorded grants and sets the firewall up with the live ones; fails when
    /// the protection cannot be put in place.
    fn start(
        &mut self,
        records: Vec<Record>,
        now: u64,
        journal: &mut dyn Journal,
    ) -> Result<Vec<Event>, BackendError>;
    /// Takes over recorded grants without touching the firewall (for listings and
    /// comparisons, beside a running daemon).
    fn adopt(&mut self, records: Vec<Record>);
    /// A grant (new, or a re-knock of a live one).
    fn grant(&mut self, grant: Grant, now: u64, journal: &mut dyn Journal) -> Vec<Event>;
    /// Ends a grant now (or retries closing it).
    fn revoke(&mut self, id: GrantId, now: u64, journal: &mut dyn Journal) -> Vec<Event>;
    /// Does what is due at `now`: expiries, retries, forgetting.
    fn tick(&mut self, now: u64, journal: &mut dyn Journal) -> Vec<Event>;
    /// When [`Driver::tick`] has something to do next.
    fn next_due(&self) -> Option<u64>;
    /// Looks for tampering and rebuilds what vanished, with every live grant.
    fn check(&mut self, now: u64, journal: &mut dyn Journal) -> Vec<Event>;
    /// At daemon stop: ends every live grant unless `keep`, and tries closing ones once more.
    fn stop(&mut self, keep: bool, now: u64, journal: &mut dyn Journal) -> Vec<Event>;
    /// The grants on record.
    fn ledger(&self) -> &Ledger;
    /// What the ledger says the firewall should hold: `(entry, holder, until, closing)`.
    fn expected(&self, now: u64) -> Vec<(String, GrantId, u64, bool)>;
    /// What the firewall holds, as the backend reads it.
    fn observe(&mut self, now: u64) -> Result<Vec<Observed>, BackendError>;
    /// Removes everything the backend owns, protections included.
    fn teardown(&mut self) -> Result<(), BackendError>;
    /// From now on, tells `observer` how long each apply, check and prepare took.
    fn observe_calls(&mut self, observer: std::sync::Arc<dyn CallObserver>) {
        let _ = observer;
    }
}

/// Plans applied per [`Driver::tick`] at most, so a mass expiry cannot keep the worker
/// from new grants for long.
const TICK_BUDGET: usize = 4096;

/// A backend and its ledger.
#[derive(Debug)]
pub struct Gate<B: Backend> {
    backend: B,
    ledger: Ledger,
    timer: Timer,
}

impl<B: Backend> Gate<B> {
    /// Wraps a backend with an empty ledger.
    pub fn new(backend: B) -> Self {
        Self { backend, ledger: Ledger::new(), timer: Timer::default() }
    }

    /// The backend (for tests and tools).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (for tests and tools).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// A planned entry with its holder's grant (the plan's own grant, or one on record).
    fn resolve<'a>(
        ledger: &'a Ledger,
        subject: &'a Grant,
        t: &'a Tag<B::Entry>,
    ) -> Result<Held<'a, B::Entry>, BackendError> {
        let holder = if t.holder == subject.id {
            subject
        } else {
            ledger
                .get(t.holder)
                .map(|r| &r.grant)
                .ok_or_else(|| BackendError::Other(format!("grant {} is not on record", t.holder)))?
        };
        Ok(Held { entry: &t.entry, holder, until: t.until })
    }

    /// Carries out planned changes made for `subject`.
    fn apply(
        backend: &mut B,
        timer: &Timer,
        ledger: &Ledger,
        subject: &Grant,
        changes: &[Planned<B::Entry>],
        now: u64,
    ) -> Result<(), BackendError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut resolved = Vec::with_capacity(changes.len());
        for c in changes {
            resolved.push(match c {
                Planned::Put { new, prior } => Change::Put {
                    new: Self::resolve(ledger, subject, new)?,
                    prior: prior.as_ref().map(|p| Self::resolve(ledger, subject, p)).transpose()?,
                },
                Planned::Remove { old } => Change::Remove { old: Self::resolve(ledger, subject, old)? },
            });
        }
        timer.time(Call::Apply, || backend.apply(&resolved, now))
    }

    /// Sets the backend up with every live grant's entries.
    fn rebuild(&mut self, now: u64) -> Result<usize, BackendError> {
        let map = |g: &Grant| self.backend.entries(g);
        let tags = self.ledger.holdings(&map, now);
        let live = self.ledger.live().filter(|g| g.deadline > now).count();
        let held: Vec<Held<'_, B::Entry>> = tags
            .iter()
            .filter_map(|t| {
                let holder = self.ledger.get(t.holder).map(|r| &r.grant)?;
                Some(Held { entry: &t.entry, holder, until: t.until })
            })
            .collect();
        let backend = &mut self.backend;
        self.timer.time(Call::Prepare, || backend.prepare(&held, now))?;
        Ok(live)
    }

    /// After a failed change: if the backend's setup was damaged, rebuilds it (returning the
    /// events); `None` when it is intact, so the failure was the change's own.
    fn heal(&mut self, now: u64, journal: &mut dyn Journal) -> Option<Vec<Event>> {
        let backend = &mut self.backend;
        match self.timer.time(Call::Check, || backend.check(now)) {
            Ok(Health::Intact) => None,
            Ok(Health::Damaged(detail)) => Some(self.repair(detail, now, journal)),
            // Cannot even look: treat as damaged, a rebuild is the safe answer.
            Err(e) => Some(self.repair(format!("check failed: {e}"), now, journal)),
        }
    }

    fn repair(&mut self, detail: String, now: u64, journal: &mut dyn Journal) -> Vec<Event> {
        let mut events = vec![Event::Tampered { detail }];
        match self.rebuild(now) {
            Ok(live) => {
                events.push(Event::Repaired { live });
                events.extend(self.settle_after_prepare(journal));
            }
            Err(error) => events.push(Event::RepairFailed { error }),
        }
        events
    }

    /// After a prepare that left exactly the live grants (where the backend does that):
    /// closing grants are gone from the firewall, so they end.
    fn settle_after_prepare(&mut self, journal: &mut dyn Journal) -> Vec<Event> {
        if !self.backend.capabilities().exact_prepare {
            return Vec::new();
        }
        let events = self.ledger.after_exact_prepare();
        for e in &events {
            if let Event::Ended { grant, .. } = e {
                journal.del(grant.id);
            }
        }
        events
    }

    /// Applies one plan: commits it, or fails it (with one rebuild-and-retry when the
    /// backend's setup turns out damaged); journals the outcome.
    fn run(
        &mut self,
        plan: crate::ledger::Plan<B::Entry>,
        now: u64,
        journal: &mut dyn Journal,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let kind = plan.kind();
        if kind == PlanKind::New
            && let Err(why) = journal.put(plan.grant())
        {
            events.push(Event::Refused {
                grant: plan.grant().clone(),
                extension: false,
                cause: RefusedBecause::StateUnwritable(why),
            });
            return events;
        }
        let mut result =
            Self::apply(&mut self.backend, &self.timer, &self.ledger, plan.grant(), plan.changes(), now);
        if result.is_err()
            && let Some(healed) = self.heal(now, journal)
        {
            let repaired = healed.iter().any(|e| matches!(e, Event::Repaired { .. }));
            events.extend(healed);
            if repaired {
                result = Self::apply(
                    &mut self.backend,
                    &self.timer,
                    &self.ledger,
                    plan.grant(),
                    plan.changes(),
                    now,
                );
            }
        }
        let map = |g: &Grant| self.backend.entries(g);
        match result {
            Ok(()) => {
                let grant = plan.grant().clone();
                let event = self.ledger.commit(plan, now, &map);
                match (&event, kind) {
                    (Some(Event::Extended(g)), _) => {
                        // Fails closed either way: the journal keeps the earlier deadline.
                        let _ = journal.put(g);
                    }
                    (Some(Event::Ended { .. }), _) => journal.del(grant.id),
                    _ => {}
                }
                events.extend(event);
            }
            Err(error) => {
                if kind == PlanKind::New && !self.backend.capabilities().atomic_apply {
                    // Part of it may be in the firewall: undo, or keep it closing.
                    let cleanup = Ledger::plan_cleanup(&plan);
                    let undone = Self::apply(
                        &mut self.backend,
                        &self.timer,
                        &self.ledger,
                        cleanup.grant(),
                        cleanup.changes(),
                        now,
                    );
                    let grant = plan.grant().clone();
                    let refused = self.ledger.fail(plan, now, error);
                    events.push(refused);
                    match undone {
                        Ok(()) => journal.del(grant.id),
                        Err(error) => {
                            let closing = self.ledger.keep_for_cleanup(grant.clone(), now);
                            journal.closing(grant.id, &closing);
                            events.push(Event::CloseFailed { grant, closing, error });
                        }
                    }
                } else if kind == PlanKind::Extend && !self.backend.capabilities().atomic_apply {
                    // Part of it may carry the later deadline: put the earlier one back; if
                    // that fails too, keep the later deadline on record, so the ledger never
                    // thinks an entry ends sooner than the firewall does.
                    let cleanup = Ledger::plan_cleanup(&plan);
                    let undone = Self::apply(
                        &mut self.backend,
                        &self.timer,
                        &self.ledger,
                        cleanup.grant(),
                        cleanup.changes(),
                        now,
                    );
                    let refused = Event::Refused {
                        grant: plan.grant().clone(),
                        extension: true,
                        cause: RefusedBecause::Backend(error),
                    };
                    let backend = &self.backend;
                    if undone.is_err()
                        && let Some(Event::Extended(g)) =
                            self.ledger.commit(plan, now, &|g: &Grant| backend.entries(g))
                    {
                        let _ = journal.put(&g);
                    }
                    events.push(refused);
                } else {
                    if kind == PlanKind::New {
                        journal.del(plan.grant().id);
                    }
                    let event = self.ledger.fail(plan, now, error);
                    if let Event::CloseFailed { grant, closing, .. } = &event {
                        journal.closing(grant.id, closing);
                    }
                    events.push(event);
                }
            }
        }
        events
    }
}

impl<B: Backend> Driver for Gate<B> {
    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    fn describe(&self, grant: &Grant) -> Result<Vec<String>, BackendError> {
        Ok(self.backend.entries(grant)?.iter().map(ToString::to_string).collect())
    }

    fn start(
        &mut self,
        records: Vec<Record>,
        now: u64,
        journal: &mut dyn Journal,
    ) -> Result<Vec<Event>, BackendError> {
        // A close that failed before the restart is tried again at once.
        let records = records.into_iter().map(|mut r| {
            if let crate::ledger::State::Closing(c) = &mut r.state {
                c.retry_at = c.retry_at.min(now);
            }
            r
        });
        self.ledger = Ledger::load(records);
        self.rebuild(now)?;
        Ok(self.settle_after_prepare(journal))
    }

    fn adopt(&mut self, records: Vec<Record>) {
        self.ledger = Ledger::load(records);
    }

    fn grant(&mut self, grant: Grant, now: u64, journal: &mut dyn Journal) -> Vec<Event> {
        let map = |g: &Grant| self.backend.entries(g);
        match self.ledger.plan_grant(grant, now, &map) {
            Ok(plan) => self.run(plan, now, journal),
            Err(declined) => {
                let (grant, why) = *declined;
                vec![Event::Refused { grant, extension: false, cause: RefusedBecause::Ledger(why) }]
            }
        }
    }

    fn revoke(&mut self, id: GrantId, now: u64, journal: &mut dyn Journal) -> Vec<Event> {
        let map = |g: &Grant| self.backend.entries(g);
        match self.ledger.plan_revoke(id, now, &map) {
            Some(plan) => self.run(plan, now, journal),
            None => Vec::new(),
        }
    }

    fn tick(&mut self, now: u64, journal: &mut dyn Journal) -> Vec<Event> {
        let mut events = Vec::new();
        for _ in 0..TICK_BUDGET {
            let map = |g: &Grant| self.backend.entries(g);
            let Some(plan) = self.ledger.plan_due(now, &map) else { break };
            events.extend(self.run(plan, now, journal));
        }
        events
    }

    fn next_due(&self) -> Option<u64> {
        self.ledger.next_due()
    }

    fn check(&mut self, now: u64, journal: &mut dyn Journal) -> Vec<Event> {
        self.heal(now, journal).unwrap_or_default()
    }

    fn stop(&mut self, keep: bool, now: u64, journal: &mut dyn Journal) -> Vec<Event> {
        let ids: Vec<GrantId> =
            self.ledger.records().filter(|r| keep_or_end(r, keep)).map(|r| r.grant.id).collect();
        let mut events = Vec::new();
        for id in ids {
            events.extend(self.revoke(id, now, journal));
        }
        events
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn expected(&self, now: u64) -> Vec<(String, GrantId, u64, bool)> {
        let map = |g: &Grant| self.backend.entries(g);
        let live: std::collections::HashSet<String> =
            self.ledger.holdings(&map, now).iter().map(|t| t.entry.to_string()).collect();
        let mut out: Vec<(String, GrantId, u64, bool)> = self
            .ledger
            .holdings(&map, now)
            .into_iter()
            .map(|t| (t.entry.to_string(), t.holder, t.until, false))
            .collect();
        for r in self.ledger.records() {
            if let crate::ledger::State::Closing(_) = r.state {
                for e in map(&r.grant).unwrap_or_default() {
                    let text = e.to_string();
                    if !live.contains(&text) {
                        out.push((text, r.grant.id, r.grant.deadline, true));
                    }
                }
            }
        }
        out.sort();
        out
    }

    fn observe(&mut self, now: u64) -> Result<Vec<Observed>, BackendError> {
        self.backend.observe(now)
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.backend.teardown()
    }

    fn observe_calls(&mut self, observer: std::sync::Arc<dyn CallObserver>) {
        self.timer = Timer(Some(observer));
    }
}

/// Which records a stop ends: every closing one (one more attempt), and the live ones unless
/// they are kept.
fn keep_or_end(r: &Record, keep: bool) -> bool {
    match r.state {
        crate::ledger::State::Live => !keep,
        crate::ledger::State::Closing(_) => true,
        crate::ledger::State::Lingering => false,
    }
}

/// Builds a backend of type `B` from its table and wraps it in a gate: the constructor every
/// backend crate registers (`create: spa_backends::create::<MyBackend>`).
pub fn create<B: Backend>(table: &toml::Table) -> Result<Box<dyn Driver>, BackendError> {
    Ok(Box::new(Gate::new(B::from_table(table)?)))
}

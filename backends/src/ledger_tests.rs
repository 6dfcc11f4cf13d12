//! The ledger driven through a gate against the fake firewall: scenarios for each rule, then
//! random sequences of grants, re-knocks, revokes, ticks, failures and tampering checked
//! against the invariants after every step.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::testkit::{FakeBackend, FakeHeld, MemoryJournal, grant};
use crate::{Driver, EndKind, Entry, Event, Gate, Grant, GrantId, Record, Refusal, RefusedBecause, State};

fn gate() -> (Gate<FakeBackend>, MemoryJournal) {
    let mut g = Gate::new(FakeBackend::default());
    let mut j = MemoryJournal::default();
    g.start(Vec::new(), 0, &mut j).unwrap();
    (g, j)
}

fn present(g: &mut Gate<FakeBackend>, now: u64) -> BTreeMap<u16, (u64, GrantId, u8)> {
    g.backend_mut()
        .present(now)
        .into_values()
        .map(|h: FakeHeld| (h.entry.port, (h.until, h.holder, h.entry.data)))
        .collect()
}

fn g(id: u64, ports: &str, until: u64) -> Grant {
    grant(id).ports(ports).times(0, until).into()
}

#[test]
fn a_reknock_extends_only_when_the_deadline_moves() {
    let (mut gt, mut j) = gate();
    assert!(matches!(gt.grant(g(1, "tcp/1", 100), 0, &mut j).as_slice(), [Event::Granted(_)]));
    assert_eq!(gt.backend().calls.last().unwrap(), "put fake 192.0.2.1 1 : 0 until 100 for 0000000000000001");
    // Same access, earlier deadline: nothing moves, nothing runs.
    let calls = gt.backend().calls.len();
    let ev = gt.grant(g(2, "tcp/1", 90), 10, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Reknocked(x)] if x.id == GrantId(1) && x.deadline == 100));
    assert_eq!(gt.backend().calls.len(), calls);
    // Later deadline: the same grant is extended, same id.
    let ev = gt.grant(g(3, "tcp/1", 150), 20, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Extended(x)] if x.id == GrantId(1) && x.deadline == 150));
    assert_eq!(present(&mut gt, 20)[&1], (150, GrantId(1), 0));
    assert_eq!(j.grants[&GrantId(1)].deadline, 150);
    assert_eq!(gt.ledger().len(), 1);
}

/// Another user's knock that meets a live grant with the same access: the audit must name the
/// one who knocked, and the extended grant is then held to that knock's stanza (the journal
/// keeps both), not to the first user's.
#[test]
fn a_reknock_or_extension_by_another_user_names_that_user() {
    let (mut gt, mut j) = gate();
    gt.grant(g(1, "tcp/1", 100), 0, &mut j);
    let by = |id, until| {
        let mut x = g(id, "tcp/1", until);
        x.username = "bob".into();
        x.stanza = "bobs".into();
        x.packet_source = "192.0.2.9".parse().unwrap();
        x
    };
    let ev = gt.grant(by(2, 90), 10, &mut j);
    assert!(
        matches!(ev.as_slice(), [Event::Reknocked(x)] if x.id == GrantId(1) && &*x.username == "bob" && &*x.stanza == "bobs" && x.deadline == 100),
        "{ev:?}"
    );
    // A re-knock changes nothing recorded.
    assert_eq!(&*j.grants[&GrantId(1)].username, "tester");
    let ev = gt.grant(by(3, 150), 20, &mut j);
    assert!(
        matches!(ev.as_slice(), [Event::Extended(x)] if x.id == GrantId(1) && &*x.username == "bob" && x.deadline == 150),
        "{ev:?}"
    );
    let kept = &j.grants[&GrantId(1)];
    assert_eq!((&*kept.username, &*kept.stanza, kept.deadline), ("bob", "bobs", 150));
    assert_eq!(kept.packet_source, "192.0.2.9".parse::<std::net::IpAddr>().unwrap());
}

#[test]
fn a_shared_entry_lives_until_the_latest_deadline_and_no_longer() {
    let (mut gt, mut j) = gate();
    gt.grant(g(1, "tcp/1,tcp/3", 100), 0, &mut j);
    gt.grant(g(2, "tcp/3,tcp/5", 200), 0, &mut j);
    assert_eq!(present(&mut gt, 0)[&3], (200, GrantId(2), 0));
    // The longer holder ends early: port 3 goes back to the first grant's deadline.
    let ev = gt.revoke(GrantId(2), 50, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Ended { why: EndKind::Revoke, .. }]));
    let p = present(&mut gt, 50);
    assert_eq!(p[&3], (100, GrantId(1), 0));
    assert!(!p.contains_key(&5));
    // Nothing is due before 100.
    assert!(gt.tick(99, &mut j).is_empty());
    let ev = gt.tick(100, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Ended { why: EndKind::Expire, .. }]));
    assert!(present(&mut gt, 100).is_empty());
    assert!(j.grants.is_empty());
}

#[test]
fn entries_that_expire_by_themselves_need_no_change_and_linger_for_a_moment() {
    let (mut gt, mut j) = gate();
    gt.grant(g(1, "tcp/2", 100), 0, &mut j);
    let calls = gt.backend().calls.len();
    let ev = gt.tick(100, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Ended { why: EndKind::Expire, .. }]));
    assert_eq!(gt.backend().calls.len(), calls, "an expiry the firewall does itself needs no change");
    // The element may still be there for up to a second: a new grant re-times, not adds.
    assert_eq!(gt.ledger().get(GrantId(1)).unwrap().state, State::Lingering);
    gt.grant(g(2, "tcp/2", 200), 100, &mut j);
    assert_eq!(present(&mut gt, 100)[&2], (200, GrantId(2), 0));
    gt.tick(101, &mut j);
    assert!(gt.ledger().get(GrantId(1)).is_none(), "forgotten after the grace second");
}

#[test]
fn a_grant_that_would_redirect_another_live_grants_slot_is_refused() {
    let (mut gt, mut j) = gate();
    gt.grant(grant(1).ports("tcp/3").dnat("10.0.0.2", Some(22), None).times(0, 100).into(), 0, &mut j);
    let ev =
        gt.grant(grant(2).ports("tcp/3").dnat("10.0.0.9", Some(22), None).times(0, 100).into(), 0, &mut j);
    assert!(
        matches!(ev.as_slice(), [Event::Refused { cause: RefusedBecause::Ledger(Refusal::Conflict { with }), .. }] if *with == GrantId(1)),
        "{ev:?}"
    );
    assert_eq!(present(&mut gt, 0)[&3].2, 2, "the first grant's target is untouched");
    assert!(!j.grants.contains_key(&GrantId(2)));
}

/// The identity of an access is (source address, source port, ports, destination, NAT): two
/// grants of one address bound to different source ports, and one for the whole address, are
/// three grants with three entries, each re-knocked, timed and ended on its own.
#[test]
fn source_ports_make_distinct_grants_and_entries() {
    let (mut gt, mut j) = gate();
    let sp = |id: u64, port: Option<u16>, until: u64| -> Grant {
        let b = grant(id).ports("tcp/22").times(0, until);
        match port {
            Some(p) => b.source_port(p).into(),
            None => b.into(),
        }
    };
    for (id, port) in [(1, Some(40000)), (2, Some(40001)), (3, None)] {
        let ev = gt.grant(sp(id, port, 100), 0, &mut j);
        assert!(matches!(ev.as_slice(), [Event::Granted(x)] if x.id == GrantId(id)), "{ev:?}");
    }
    let slots = |gt: &mut Gate<FakeBackend>, now| -> Vec<(Option<u16>, u64, GrantId)> {
        gt.backend_mut().present(now).into_iter().map(|((_, sp, _), h)| (sp, h.until, h.holder)).collect()
    };
    assert_eq!(
        slots(&mut gt, 0),
        [(None, 100, GrantId(3)), (Some(40000), 100, GrantId(1)), (Some(40001), 100, GrantId(2))]
    );
    // A re-knock bound to port 40000 extends exactly that grant.
    let ev = gt.grant(sp(4, Some(40000), 200), 10, &mut j);
    assert!(
        matches!(ev.as_slice(), [Event::Extended(x)] if x.id == GrantId(1) && x.deadline == 200),
        "{ev:?}"
    );
    assert_eq!(gt.ledger().len(), 3);
    // Revoking the whole-address grant leaves both source-port grants in place.
    gt.revoke(GrantId(3), 20, &mut j);
    assert_eq!(slots(&mut gt, 20), [(Some(40000), 200, GrantId(1)), (Some(40001), 100, GrantId(2))]);
    assert_eq!(j.grants[&GrantId(1)].source_port, Some(40000));
    // Expiry ends each at its own deadline.
    gt.tick(100, &mut j);
    assert_eq!(slots(&mut gt, 101), [(Some(40000), 200, GrantId(1))]);
}

#[test]
fn a_failed_close_stays_closing_and_is_retried_with_backoff() {
    let (mut gt, mut j) = gate();
    gt.grant(g(1, "tcp/1", 100), 0, &mut j);
    gt.backend_mut().fail_removes = true;
    let ev = gt.revoke(GrantId(1), 10, &mut j);
    assert!(
        matches!(ev.as_slice(), [Event::CloseFailed { closing, .. }] if closing.attempts == 1 && closing.retry_at == 11)
    );
    assert_eq!(j.closing[&GrantId(1)].attempts, 1);
    assert!(present(&mut gt, 10).contains_key(&1), "still in the firewall");
    let ev = gt.tick(11, &mut j);
    assert!(
        matches!(ev.as_slice(), [Event::CloseFailed { closing, .. }] if closing.attempts == 2 && closing.retry_at == 13)
    );
    assert!(gt.tick(12, &mut j).is_empty());
    gt.backend_mut().fail_removes = false;
    let ev = gt.tick(13, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Ended { why: EndKind::Revoke, attempts: 2, .. }]), "{ev:?}");
    assert!(present(&mut gt, 13).is_empty());
    assert!(j.closing.is_empty() && j.grants.is_empty());
}

#[test]
fn the_backoff_is_capped() {
    let c = crate::Closing::after_failure(EndKind::Expire, 40, 1000);
    assert_eq!((c.attempts, c.retry_at), (41, 1000 + crate::ledger::MAX_BACKOFF));
}

#[test]
fn a_failed_grant_leaves_nothing_behind() {
    let (mut gt, mut j) = gate();
    gt.backend_mut().fail_applies = 1;
    let ev = gt.grant(g(1, "tcp/1,tcp/3", 100), 0, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Refused { cause: RefusedBecause::Backend(_), .. }]), "{ev:?}");
    assert!(present(&mut gt, 0).is_empty());
    assert!(j.grants.is_empty(), "the journal forgets it");
    // A backend that applied part of it: the part is undone.
    gt.backend_mut().partial = true;
    gt.backend_mut().fail_applies = 1;
    gt.grant(g(2, "tcp/1,tcp/3", 100), 0, &mut j);
    assert!(present(&mut gt, 0).is_empty());
    // And if the undo fails too, the grant stays closing until its entries are gone.
    gt.backend_mut().fail_applies = 2;
    let ev = gt.grant(g(3, "tcp/1,tcp/3", 100), 0, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Refused { .. }, Event::CloseFailed { .. }]), "{ev:?}");
    assert!(present(&mut gt, 0).contains_key(&1));
    let ev = gt.tick(1, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Ended { .. }]), "{ev:?}");
    assert!(present(&mut gt, 1).is_empty());
}

#[test]
fn a_grant_that_cannot_be_journaled_is_refused_before_the_firewall_changes() {
    let (mut gt, mut j) = gate();
    j.unwritable = true;
    let calls = gt.backend().calls.len();
    let ev = gt.grant(g(1, "tcp/1", 100), 0, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Refused { cause: RefusedBecause::StateUnwritable(_), .. }]));
    assert_eq!(gt.backend().calls.len(), calls);
    assert!(gt.ledger().is_empty());
}

#[test]
fn tampering_is_repaired_with_every_live_grant() {
    let (mut gt, mut j) = gate();
    gt.grant(g(1, "tcp/1", 100), 0, &mut j);
    gt.grant(grant(2).source("192.0.2.9").ports("tcp/3").times(0, 200).into(), 0, &mut j);
    // Someone flushes the ruleset.
    gt.backend_mut().firewall.clear();
    gt.backend_mut().damage = Some("table inet spa is gone".into());
    let ev = gt.check(10, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Tampered { .. }, Event::Repaired { live: 2 }]), "{ev:?}");
    assert_eq!(present(&mut gt, 10).len(), 2);
    assert!(gt.check(11, &mut j).is_empty());
    // Damage noticed by a failing grant: repaired, then the grant goes through.
    gt.backend_mut().damage = Some("chain input changed".into());
    let ev = gt.grant(g(3, "tcp/5", 300), 12, &mut j);
    assert!(
        matches!(ev.as_slice(), [Event::Tampered { .. }, Event::Repaired { .. }, Event::Granted(_)]),
        "{ev:?}"
    );
    assert_eq!(present(&mut gt, 12).len(), 3);
}

#[test]
fn start_puts_back_live_grants_and_settles_the_rest() {
    let mut gt = Gate::new(FakeBackend::default());
    let mut j = MemoryJournal::default();
    let closing = crate::Closing { why: EndKind::Revoke, attempts: 3, retry_at: 0 };
    let records = vec![
        Record { grant: g(1, "tcp/1", 500), state: State::Live },
        Record { grant: grant(2).source("192.0.2.2").ports("tcp/1").times(0, 50).into(), state: State::Live },
        Record {
            grant: grant(3).source("192.0.2.3").ports("tcp/1").times(0, 500).into(),
            state: State::Closing(closing),
        },
    ];
    j.grants.insert(GrantId(1), g(1, "tcp/1", 500));
    let ev = gt.start(records, 100, &mut j).unwrap();
    // The reset removed what the closing grant left: it ends.
    assert!(
        matches!(ev.as_slice(), [Event::Ended { grant, attempts: 3, .. }] if grant.id == GrantId(3)),
        "{ev:?}"
    );
    assert_eq!(present(&mut gt, 100).len(), 1);
    // The grant that ended while the daemon was down ends at the first tick.
    let ev = gt.tick(100, &mut j);
    assert!(
        matches!(ev.as_slice(), [Event::Ended { grant, why: EndKind::Expire, .. }] if grant.id == GrantId(2))
    );
}

#[test]
fn stop_ends_live_grants_unless_kept() {
    let (mut gt, mut j) = gate();
    gt.grant(g(1, "tcp/1", 100), 0, &mut j);
    assert!(gt.stop(true, 10, &mut j).is_empty());
    assert_eq!(present(&mut gt, 10).len(), 1);
    let ev = gt.stop(false, 10, &mut j);
    assert!(matches!(ev.as_slice(), [Event::Ended { why: EndKind::Revoke, .. }]));
    assert!(present(&mut gt, 10).is_empty() && j.grants.is_empty());
}

#[derive(Clone, Debug)]
enum Op {
    Grant { src: u8, ports: Vec<u16>, data: u8, ttl: u64 },
    Revoke(usize),
    Advance(u64),
    FailNext,
    FailRemoves(bool),
    Partial(bool),
    Damage,
    Check,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, proptest::collection::vec(1u16..7, 1..4), 0u8..2, 1u64..40)
            .prop_map(|(src, ports, data, ttl)| Op::Grant { src, ports, data, ttl }),
        2 => (0usize..16).prop_map(Op::Revoke),
        5 => (0u64..15).prop_map(Op::Advance),
        1 => Just(Op::FailNext),
        1 => any::<bool>().prop_map(Op::FailRemoves),
        1 => any::<bool>().prop_map(Op::Partial),
        1 => Just(Op::Damage),
        1 => Just(Op::Check),
    ]
}

/// The invariants after every step.
fn check_invariants(
    gt: &mut Gate<FakeBackend>,
    j: &MemoryJournal,
    now: u64,
    clean: bool,
    tainted: &std::collections::BTreeSet<GrantId>,
) {
    let present = gt.backend_mut().present(now);
    let ledger = gt.ledger();
    let map = |g: &Grant| crate::Backend::entries(gt.backend(), g);
    // Nothing is open that no recorded grant allows, nor longer than one allows.
    for (slot, h) in &present {
        let holders: Vec<&Record> =
            ledger.records().filter(|r| map(&r.grant).unwrap().contains(&h.entry)).collect();
        assert!(!holders.is_empty(), "{slot:?} = {h:?} is open for no recorded grant");
        let longest = holders.iter().map(|r| r.grant.deadline).max().unwrap();
        assert!(h.until <= longest, "{slot:?} is open until {} but grants end by {longest}", h.until);
    }
    // Every live grant's entries are there, with its value, at least until its deadline
    // (except a grant whose own change failed half-way: it may end sooner, never later).
    for r in ledger
        .records()
        .filter(|r| r.state == State::Live && r.grant.deadline > now && !tainted.contains(&r.grant.id))
    {
        for e in map(&r.grant).unwrap() {
            let h =
                present.get(&e.slot()).unwrap_or_else(|| panic!("{e} of live grant {} missing", r.grant.id));
            assert_eq!(h.entry, e, "grant {} sees another value", r.grant.id);
            assert!(
                h.until >= r.grant.deadline,
                "{e} ends at {} before grant {} ({})",
                h.until,
                r.grant.id,
                r.grant.deadline
            );
        }
    }
    // Without injected failures: exactly the live grants' entries, each until the latest
    // deadline (plus entries ending by themselves within their grace second).
    if clean {
        let want: BTreeMap<crate::testkit::FakeSlot, u64> =
            ledger.holdings(&map, now).into_iter().map(|t| (t.entry.slot(), t.until)).collect();
        for (slot, until) in &want {
            assert_eq!(present.get(slot).map(|h| h.until), Some(*until), "{slot:?}");
        }
        for (slot, h) in &present {
            if !want.contains_key(slot) {
                assert!(h.entry.port % 2 == 0 && h.until <= now, "{slot:?} = {h:?} left behind");
            }
        }
    }
    // The journal holds what a restart needs: the live and closing grants.
    let live: Vec<GrantId> =
        ledger.records().filter(|r| r.state == State::Live).map(|r| r.grant.id).collect();
    let mut jl: Vec<GrantId> = j.grants.keys().copied().collect();
    let mut ll = live.clone();
    ll.sort();
    jl.retain(|id| !j.closing.contains_key(id));
    jl.sort();
    assert_eq!(jl, ll, "journal and ledger disagree on live grants");
    for r in ledger.records() {
        if let State::Closing(c) = &r.state {
            assert_eq!(j.closing.get(&r.grant.id), Some(c), "closing grant {} not journaled", r.grant.id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_keeps_the_firewall_true_to_the_ledger(ops in proptest::collection::vec(op(), 1..60)) {
        let (mut gt, mut j) = gate();
        let mut now = 0u64;
        let mut next_id = 1u64;
        let mut clean = true;
        let mut tainted = std::collections::BTreeSet::new();
        let note = |events: Vec<Event>, tainted: &mut std::collections::BTreeSet<GrantId>| {
            for e in events {
                if let Event::Refused { grant, .. } | Event::CloseFailed { grant, .. } = e {
                    tainted.insert(grant.id);
                }
            }
        };
        for op in ops {
            match op {
                Op::Grant { src, ports, data, ttl } => {
                    let list: Vec<String> = ports.iter().map(|p| format!("tcp/{p}")).collect();
                    let mut b = grant(next_id).source(&format!("192.0.2.{}", src + 1)).ports(&list.join(",")).times(now, now + ttl);
                    if data == 1 {
                        b = b.dnat("10.0.0.1", None, None);
                    }
                    next_id += 1;
                    let ev = gt.grant(b.into(), now, &mut j);
                    note(ev, &mut tainted);
                }
                Op::Revoke(i) => {
                    let ids: Vec<GrantId> = {
                        let mut v: Vec<GrantId> = gt.ledger().records().map(|r| r.grant.id).collect();
                        v.sort();
                        v
                    };
                    if let Some(id) = ids.get(i % ids.len().max(1)) {
                        let ev = gt.revoke(*id, now, &mut j);
                        note(ev, &mut tainted);
                    }
                }
                Op::Advance(dt) => {
                    now += dt;
                    // A few ticks: retries may be due one after another.
                    for _ in 0..3 {
                        let ev = gt.tick(now, &mut j);
                        note(ev, &mut tainted);
                    }
                }
                Op::FailNext => { gt.backend_mut().fail_applies += 1; clean = false; }
                Op::FailRemoves(on) => { gt.backend_mut().fail_removes = on; clean &= !on; }
                Op::Partial(on) => { gt.backend_mut().partial = on; }
                Op::Damage => { gt.backend_mut().damage = Some("gone".into()); gt.backend_mut().firewall.clear(); clean = false; }
                Op::Check => { let ev = gt.check(now, &mut j); note(ev, &mut tainted); }
            }
            // A damaged firewall is only known after a check; the invariants hold after it.
            if gt.backend().damage.is_some() {
                let ev = gt.check(now, &mut j);
                note(ev, &mut tainted);
            }
            check_invariants(&mut gt, &j, now, clean, &tainted);
        }
        // Without failures, everything ends: after the last deadline plus retries, nothing
        // is recorded and nothing is open.
        gt.backend_mut().fail_applies = 0;
        gt.backend_mut().fail_removes = false;
        gt.backend_mut().damage = None;
        for _ in 0..200 {
            now += 30;
            gt.tick(now, &mut j);
        }
        prop_assert!(gt.ledger().is_empty(), "{:?}", gt.ledger().records().collect::<Vec<_>>());
        prop_assert!(gt.backend_mut().present(now).is_empty());
        prop_assert!(j.grants.is_empty() && j.closing.is_empty());
    }
}

#[test]
fn an_observer_is_told_each_apply_check_and_prepare() {
    use std::sync::{Arc, Mutex};

    use crate::{Call, CallObserver};

    #[derive(Default)]
    struct Seen(Mutex<Vec<Call>>);
    impl CallObserver for Seen {
        fn observed(&self, call: Call, _: std::time::Duration) {
            self.0.lock().unwrap().push(call);
        }
    }
    let seen = Arc::new(Seen::default());
    let mut gt = Gate::new(FakeBackend::default());
    let mut j = MemoryJournal::default();
    gt.observe_calls(seen.clone());
    gt.start(Vec::new(), 0, &mut j).unwrap();
    gt.grant(g(1, "tcp/1", 100), 0, &mut j);
    gt.check(1, &mut j);
    gt.revoke(GrantId(1), 2, &mut j);
    assert_eq!(*seen.0.lock().unwrap(), [Call::Prepare, Call::Apply, Call::Check, Call::Apply]);
}

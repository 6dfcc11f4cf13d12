//! Tools for testing backends and the ledger (cargo feature `testkit`):
//!
//! - [`GrantBuilder`]: grants in one line (`grant(1).source("192.0.2.1").ports("tcp/22")`);
//! - [`Clock`]: a fixed, hand-advanced time (no backend reads the real clock);
//! - [`Entropy`]: a small seeded generator, so a failing random sequence replays exactly;
//! - [`FakeBackend`]: a recording fake firewall with timed entries, native expiry up to a
//!   second late (as nft and ipset do), and injectable failures and tampering;
//! - [`MemoryJournal`]: the daemon's journal in memory;
//! - [`contract`]: the suite every backend crate runs against its real firewall (or, where the
//!   firewall cannot run here, a recording fake of its tool).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::{
    Access, Backend, BackendError, Capabilities, Change, Closing, Driver, Entry, Event, Gate, Grant, GrantId,
    Health, Held, Journal, Nat, Observed, ProtoPort, Snat,
};

/// Starts a grant with id `id`, source 192.0.2.1, tcp/22, created at 1000, deadline 1030.
pub fn grant(id: u64) -> GrantBuilder {
    GrantBuilder(Grant {
        id: GrantId(id),
        source: "192.0.2.1".parse().expect("literal"),
        source_port: None,
        packet_source: "192.0.2.1".parse().expect("literal"),
        destination: None,
        access: Access::Ports(vec!["tcp/22".parse().expect("literal")].into()),
        nat: None,
        created: 1000,
        deadline: 1030,
        stanza: "test".into(),
        username: "tester".into(),
        ingress: None,
    })
}

/// A grant under construction (see [`grant`]).
#[derive(Clone, Debug)]
pub struct GrantBuilder(Grant);

impl GrantBuilder {
    /// The source let in (also the packet's source).
    pub fn source(mut self, ip: &str) -> Self {
        let ip: IpAddr = ip.parse().expect("an address");
        self.0.source = ip;
        self.0.packet_source = ip;
        self
    }

    /// The TCP/UDP source port the grant is bound to (knock-and-connect).
    pub fn source_port(mut self, port: u16) -> Self {
        self.0.source_port = Some(port);
        self
    }

    /// The packet's source, when it differs (`spa -a`).
    pub fn packet_source(mut self, ip: &str) -> Self {
        self.0.packet_source = ip.parse().expect("an address");
        self
    }

    /// The local address the access is restricted to.
    pub fn destination(mut self, ip: &str) -> Self {
        self.0.destination = Some(ip.parse().expect("an address"));
        self
    }

    /// The ports, comma-separated (`"tcp/22,udp/53"`).
    pub fn ports(mut self, list: &str) -> Self {
        let ports: Vec<ProtoPort> = list.split(',').map(|p| p.trim().parse().expect("proto/port")).collect();
        self.0.access = Access::Ports(ports.into());
        self
    }

    /// Every port (forward-all).
    pub fn all(mut self) -> Self {
        self.0.access = Access::All;
        self
    }

    /// DNAT to `to` (`port` `None` keeps each port), optionally with source NAT.
    pub fn dnat(mut self, to: &str, port: Option<u16>, snat: Option<Snat>) -> Self {
        self.0.nat = Some(Box::new(Nat::Dnat { to: to.parse().expect("an address"), port, snat }));
        self
    }

    /// Routed forwarding, optionally with source NAT.
    pub fn route(mut self, snat: Option<Snat>) -> Self {
        self.0.nat = Some(Box::new(Nat::Route { snat }));
        self
    }

    /// Local redirect to `port`.
    pub fn redirect(mut self, port: u16) -> Self {
        self.0.nat = Some(Box::new(Nat::Redirect { port }));
        self
    }

    /// Created at `created`, ending at `deadline`.
    pub fn times(mut self, created: u64, deadline: u64) -> Self {
        self.0.created = created;
        self.0.deadline = deadline;
        self
    }

    /// Ending at `deadline`.
    pub fn until(mut self, deadline: u64) -> Self {
        self.0.deadline = deadline;
        self
    }

    /// Where the knock arrived: the local address and, if known, the interface.
    pub fn ingress(mut self, addr: &str, interface: Option<&str>) -> Self {
        let addr = addr.parse().expect("an address");
        self.0.ingress =
            Some(std::sync::Arc::new(crate::Ingress { addr, interface: interface.map(str::to_owned) }));
        self
    }

    /// The stanza and username.
    pub fn who(mut self, stanza: &str, username: &str) -> Self {
        self.0.stanza = stanza.into();
        self.0.username = username.into();
        self
    }

    /// The grant.
    pub fn build(self) -> Grant {
        self.0
    }
}

impl From<GrantBuilder> for Grant {
    fn from(b: GrantBuilder) -> Grant {
        b.0
    }
}

/// A fixed clock that only moves when told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock(pub u64);

impl Clock {
    /// Now.
    pub fn now(&self) -> u64 {
        self.0
    }

    /// Moves on by `secs`.
    pub fn advance(&mut self, secs: u64) -> u64 {
        self.0 += secs;
        self.0
    }
}

/// A small seeded generator (xorshift64*): deterministic, so a failing sequence can be
/// replayed from its seed.
#[derive(Clone, Debug)]
pub struct Entropy(u64);

impl Entropy {
    /// A generator from `seed` (0 is replaced by a fixed constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The fake firewall's entry: one per granted port; the data is the NAT target's last byte
/// (so two grants of one source can conflict); even ports expire by themselves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FakeEntry {
    /// The source.
    pub source: IpAddr,
    /// The source port it is bound to, if any.
    pub source_port: Option<u16>,
    /// The port.
    pub port: u16,
    /// Map data.
    pub data: u8,
}

impl fmt::Display for FakeEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source_port {
            Some(sp) => write!(f, "fake {} sport {sp} {} : {}", self.source, self.port, self.data),
            None => write!(f, "fake {} {} : {}", self.source, self.port, self.data),
        }
    }
}

/// A fake entry's identity: source, source port, port.
pub type FakeSlot = (IpAddr, Option<u16>, u16);

impl Entry for FakeEntry {
    type Slot = FakeSlot;

    fn slot(&self) -> FakeSlot {
        (self.source, self.source_port, self.port)
    }

    fn expires_by_itself(&self) -> bool {
        self.port.is_multiple_of(2)
    }
}

/// What the fake firewall holds for a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeHeld {
    /// The value.
    pub entry: FakeEntry,
    /// The grant tag.
    pub holder: GrantId,
    /// Its deadline.
    pub until: u64,
}

/// A recording fake firewall. Entries that expire by themselves vanish one second after
/// their deadline (the late end of what nft and ipset do); a plain add into an occupied slot
/// fails (so a ledger that thinks a slot is empty when it is not is caught), removing an
/// absent entry succeeds.
#[derive(Debug, Default)]
pub struct FakeBackend {
    /// The slots and what they hold.
    pub firewall: BTreeMap<FakeSlot, FakeHeld>,
    /// Every call, in order (`prepare n`, `put ...`, `remove ...`).
    pub calls: Vec<String>,
    /// Fail this many of the next `apply` calls (before changing anything).
    pub fail_applies: u32,
    /// Apply the first change of a failing call before failing (a non-atomic backend).
    pub partial: bool,
    /// Fail every `apply` that removes something.
    pub fail_removes: bool,
    /// What `check` reports as damaged, until the next `prepare`.
    pub damage: Option<String>,
    /// Whether the namespace exists (teardown removes it; prepare creates it).
    pub set_up: bool,
}

impl FakeBackend {
    fn expire(&mut self, now: u64) {
        self.firewall.retain(|_, h| !(h.entry.expires_by_itself() && now > h.until));
    }

    /// The slots present at `now` (after native expiry).
    pub fn present(&mut self, now: u64) -> BTreeMap<FakeSlot, FakeHeld> {
        self.expire(now);
        self.firewall.clone()
    }
}

impl Backend for FakeBackend {
    type Entry = FakeEntry;

    fn from_table(_: &toml::Table) -> Result<Self, BackendError> {
        Ok(Self::default())
    }

    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            nat: true,
            ipv6: true,
            native_expiry: false,
            exact_prepare: true,
            atomic_apply: !self.partial,
            source_port: true,
        }
    }

    fn entries(&self, g: &Grant) -> Result<Vec<FakeEntry>, BackendError> {
        let data = match g.nat.as_deref() {
            Some(Nat::Dnat { to: IpAddr::V4(a), .. }) => a.octets()[3],
            Some(Nat::Dnat { to: IpAddr::V6(a), .. }) => a.octets()[15],
            _ => 0,
        };
        match &g.access {
            Access::All => Err(BackendError::Unsupported("forward-all")),
            Access::Ports(p) => {
                let source_port = g.source_port;
                Ok(p.iter()
                    .map(|pp| FakeEntry { source: g.source, source_port, port: pp.port, data })
                    .collect())
            }
        }
    }

    fn prepare(&mut self, live: &[Held<'_, FakeEntry>], now: u64) -> Result<(), BackendError> {
        self.calls.push(format!("prepare {}", live.len()));
        self.firewall.clear();
        self.damage = None;
        self.set_up = true;
        for h in live {
            let held = FakeHeld { entry: h.entry.clone(), holder: h.holder.id, until: h.until };
            self.firewall.insert(h.entry.slot(), held);
        }
        self.expire(now);
        Ok(())
    }

    fn apply(&mut self, changes: &[Change<'_, FakeEntry>], now: u64) -> Result<(), BackendError> {
        self.expire(now);
        let removes = changes.iter().any(|c| matches!(c, Change::Remove { .. }));
        if !self.set_up || self.damage.is_some() {
            return Err(BackendError::Other("the fake firewall is not set up".into()));
        }
        if self.fail_applies > 0 || (self.fail_removes && removes) {
            self.fail_applies = self.fail_applies.saturating_sub(1);
            if self.partial
                && let Some(Change::Put { new, .. }) = changes.first()
            {
                let held = FakeHeld { entry: new.entry.clone(), holder: new.holder.id, until: new.until };
                self.firewall.insert(new.entry.slot(), held);
            }
            return Err(BackendError::Other("injected failure".into()));
        }
        // All or nothing, like one nft transaction.
        for c in changes {
            if let Change::Put { new, prior: None } = c
                && self.firewall.contains_key(&new.entry.slot())
            {
                return Err(BackendError::Other(format!(
                    "plain add into occupied slot {:?}",
                    new.entry.slot()
                )));
            }
        }
        for c in changes {
            match c {
                Change::Put { new, .. } => {
                    let slot = new.entry.slot();
                    self.calls.push(format!("put {} until {} for {}", new.entry, new.until, new.holder.id));
                    let held = FakeHeld { entry: new.entry.clone(), holder: new.holder.id, until: new.until };
                    self.firewall.insert(slot, held);
                }
                Change::Remove { old } => {
                    self.calls.push(format!("remove {}", old.entry));
                    self.firewall.remove(&old.entry.slot());
                }
            }
        }
        Ok(())
    }

    fn check(&mut self, _now: u64) -> Result<Health, BackendError> {
        Ok(match (&self.damage, self.set_up) {
            (Some(d), _) => Health::Damaged(d.clone()),
            (None, false) => Health::Damaged("not set up".into()),
            (None, true) => Health::Intact,
        })
    }

    fn observe(&mut self, now: u64) -> Result<Vec<Observed>, BackendError> {
        self.expire(now);
        Ok(self
            .firewall
            .values()
            .map(|h| Observed { entry: h.entry.to_string(), holder: Some(h.holder), until: Some(h.until) })
            .collect())
    }

    fn teardown(&mut self) -> Result<(), BackendError> {
        self.firewall.clear();
        self.set_up = false;
        Ok(())
    }
}

/// The daemon's journal in memory: the grants it would hold after a restart.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    /// Live grants by id.
    pub grants: BTreeMap<GrantId, Grant>,
    /// Closing grants by id.
    pub closing: BTreeMap<GrantId, Closing>,
    /// Refuse `put` (a full disk).
    pub unwritable: bool,
}

impl Journal for MemoryJournal {
    fn put(&mut self, grant: &Grant) -> Result<(), String> {
        if self.unwritable {
            return Err("no space left on device".into());
        }
        self.grants.insert(grant.id, grant.clone());
        Ok(())
    }

    fn closing(&mut self, id: GrantId, closing: &Closing) {
        self.closing.insert(id, *closing);
    }

    fn del(&mut self, id: GrantId) {
        self.grants.remove(&id);
        self.closing.remove(&id);
    }
}

/// How the contract suite reads what the firewall holds: the backend's own `observe`, or, for
/// a backend that cannot read its firewall (the script backend), the test's own reader.
pub type Observer<B> = Box<dyn FnMut(&mut B, u64) -> Vec<Observed>>;

/// What the contract suite needs to know about a backend under test.
pub struct ContractSetup<B: Backend> {
    /// Makes a fresh backend (in the test's namespace, with its fake tools, ...).
    pub make: Box<dyn FnMut() -> B>,
    /// How to read the firewall; `None` uses [`Backend::observe`].
    pub observe: Option<Observer<B>>,
    /// An IPv4 source the backend may grant to.
    pub source4: &'static str,
    /// An IPv6 source, if the backend does IPv6.
    pub source6: Option<&'static str>,
    /// A DNAT target in the IPv4 source's family, if the backend does NAT.
    pub dnat4: Option<&'static str>,
}

fn observed<B: Backend>(
    setup: &mut ContractSetup<B>,
    gate: &mut Gate<B>,
    now: u64,
) -> BTreeSet<(String, Option<GrantId>)> {
    let list = match setup.observe.as_mut() {
        Some(f) => f(gate.backend_mut(), now),
        None => gate.backend_mut().observe(now).expect("observe"),
    };
    list.into_iter().map(|o| (o.entry, o.holder)).collect()
}

fn expected<B: Backend>(gate: &Gate<B>, now: u64) -> BTreeSet<(String, Option<GrantId>)> {
    gate.expected(now).into_iter().map(|(e, id, _, _)| (e, Some(id))).collect()
}

fn assert_matches<B: Backend>(setup: &mut ContractSetup<B>, gate: &mut Gate<B>, now: u64, what: &str) {
    let want = expected(gate, now);
    let got = observed(setup, gate, now);
    // A firewall that keeps no tag reports `None`; compare entries only then.
    let untagged = got.iter().all(|(_, h)| h.is_none()) && !got.is_empty();
    if untagged {
        let w: BTreeSet<&String> = want.iter().map(|(e, _)| e).collect();
        let g: BTreeSet<&String> = got.iter().map(|(e, _)| e).collect();
        assert_eq!(g, w, "{what}: the firewall holds other entries than the ledger expects");
    } else {
        assert_eq!(got, want, "{what}: the firewall holds other entries than the ledger expects");
    }
}

fn granted(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Granted(_) | Event::Extended(_)))
}

/// The backend contract, checked against a real firewall (or a faithful fake of its tool):
/// pure and source-bound entries, a prepare that resets, grants and re-knocks seen in the
/// firewall with their tags, shared entries kept while needed, removes of absent entries
/// accepted, a tamper check that sees a fresh setup as intact, and a teardown that removes
/// everything. Panics with a message on the first breach.
pub fn contract<B: Backend>(mut setup: ContractSetup<B>) {
    let now = 1_000_000;
    let mut journal = MemoryJournal::default();
    let mut gate = Gate::new((setup.make)());
    let b = gate.backend();
    let caps = b.capabilities();

    // Entries are pure and bound to their grant's source.
    let g1: Grant = grant(1).source(setup.source4).ports("tcp/22,udp/53").times(now, now + 3600).into();
    let e1 = b.entries(&g1).expect("entries of a plain grant");
    assert!(!e1.is_empty(), "a plain grant needs entries");
    assert_eq!(b.entries(&g1).expect("entries"), e1, "entries must be pure");
    let other: Grant =
        grant(9).source(if setup.source4 == "192.0.2.77" { "192.0.2.78" } else { "192.0.2.77" }).into();
    let e9 = b.entries(&other).expect("entries");
    let slots1: BTreeSet<String> = e1.iter().map(|e| format!("{:?}", e.slot())).collect();
    assert!(
        e9.iter().all(|e| !slots1.contains(&format!("{:?}", e.slot()))),
        "grants of different sources must not share an entry"
    );

    // Start: the firewall holds nothing of ours.
    gate.start(Vec::new(), now, &mut journal).expect("start with no grants");
    assert_matches(&mut setup, &mut gate, now, "after an empty start");
    assert_eq!(gate.backend_mut().check(now).expect("check"), Health::Intact, "a fresh setup is intact");

    // A grant is in the firewall with its tag.
    assert!(granted(&gate.grant(g1.clone(), now, &mut journal)), "plain grant refused");
    assert_matches(&mut setup, &mut gate, now, "after a grant");

    // A re-knock with a later deadline extends in place.
    let again: Grant = Grant { id: GrantId(2), deadline: now + 7200, ..g1.clone() };
    let ev = gate.grant(again, now + 10, &mut journal);
    assert!(matches!(ev.as_slice(), [Event::Extended(g)] if g.id == g1.id), "re-knock: {ev:?}");
    assert_matches(&mut setup, &mut gate, now + 10, "after a re-knock");

    // A second grant of the same source sharing tcp/22, then the first revoked: the shared
    // entry stays for the second.
    let g3: Grant = grant(3).source(setup.source4).ports("tcp/22").times(now, now + 1800).into();
    assert!(granted(&gate.grant(g3.clone(), now + 20, &mut journal)));
    assert_matches(&mut setup, &mut gate, now + 20, "after a sharing grant");
    let ev = gate.revoke(g1.id, now + 30, &mut journal);
    assert!(matches!(ev.as_slice(), [Event::Ended { .. }]), "revoke: {ev:?}");
    assert_matches(&mut setup, &mut gate, now + 30, "after revoking the longer of two sharing grants");

    // Removing what is already gone is not an error (a second revoke of the same entries).
    let e3 = gate.backend().entries(&g3).expect("entries");
    let changes: Vec<Change<'_, B::Entry>> = e3
        .iter()
        .map(|e| Change::Remove { old: Held { entry: e, holder: &g3, until: g3.deadline } })
        .collect();
    gate.backend_mut().apply(&changes, now + 31).expect("first remove");
    gate.backend_mut().apply(&changes, now + 31).expect("removing absent entries must succeed");
    // Put them back through prepare: prepare makes the firewall hold exactly the live grants.
    let held: Vec<Held<'_, B::Entry>> =
        e3.iter().map(|e| Held { entry: e, holder: &g3, until: g3.deadline }).collect();
    gate.backend_mut().prepare(&held, now + 32).expect("prepare with live grants");
    assert_matches(&mut setup, &mut gate, now + 32, "after prepare");

    if let Some(v6) = setup.source6 {
        assert!(caps.ipv6, "an IPv6 source given for a backend without IPv6");
        let g6: Grant = grant(6).source(v6).ports("tcp/22").times(now, now + 600).into();
        assert!(granted(&gate.grant(g6, now + 40, &mut journal)), "IPv6 grant refused");
        assert_matches(&mut setup, &mut gate, now + 40, "after an IPv6 grant");
    }
    if let Some(to) = setup.dnat4 {
        assert!(caps.nat, "a NAT target given for a backend without NAT");
        let gn: Grant = grant(7)
            .source(setup.source4)
            .ports("tcp/2222")
            .dnat(to, Some(22), None)
            .times(now, now + 600)
            .into();
        assert!(granted(&gate.grant(gn.clone(), now + 50, &mut journal)), "DNAT grant refused");
        assert_matches(&mut setup, &mut gate, now + 50, "after a DNAT grant");
        gate.revoke(gn.id, now + 60, &mut journal);
        assert_matches(&mut setup, &mut gate, now + 60, "after revoking the DNAT grant");
    }

    if caps.source_port {
        // A grant bound to a source port is another entry than the whole address's, lives
        // beside it, and ends alone.
        let gp: Grant =
            grant(8).source(setup.source4).source_port(40000).ports("tcp/22").times(now, now + 600).into();
        let ep = gate.backend().entries(&gp).expect("entries of a source-port grant");
        assert!(!ep.is_empty(), "a source-port grant needs entries");
        let plain = gate.backend().entries(&g3).expect("entries");
        assert!(
            ep.iter().all(|e| plain.iter().all(|x| x.slot() != e.slot())),
            "a source-port grant must not share an entry with the whole address's grant"
        );
        assert!(
            ep.iter().all(|e| e.to_string().contains("40000")),
            "every entry of a source-port grant must name the port: {ep:?}"
        );
        assert!(granted(&gate.grant(gp.clone(), now + 62, &mut journal)), "source-port grant refused");
        assert_matches(&mut setup, &mut gate, now + 62, "after a source-port grant");
        gate.revoke(gp.id, now + 64, &mut journal);
        assert_matches(&mut setup, &mut gate, now + 64, "after revoking the source-port grant");
    } else {
        let gp: Grant = grant(8).source(setup.source4).source_port(40000).into();
        assert!(
            gate.backend().entries(&gp).is_err(),
            "a backend without source_port must refuse a source-port grant, never widen it"
        );
    }

    // The stop revokes everything live.
    gate.stop(false, now + 70, &mut journal);
    assert_matches(&mut setup, &mut gate, now + 70, "after stop");
    assert!(journal.grants.is_empty(), "the journal still holds grants after stop: {:?}", journal.grants);

    gate.backend_mut().teardown().expect("teardown");
    gate.backend_mut().teardown().expect("a second teardown is not an error");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_backend_keeps_the_contract() {
        contract(ContractSetup {
            make: Box::new(FakeBackend::default),
            observe: None,
            source4: "192.0.2.1",
            source6: Some("2001:db8::1"),
            dnat4: Some("10.0.0.2"),
        });
    }

    #[test]
    fn the_none_backend_keeps_the_contract() {
        contract(ContractSetup {
            make: Box::new(crate::NoneBackend::default),
            observe: None,
            source4: "192.0.2.1",
            source6: Some("2001:db8::1"),
            dnat4: Some("10.0.0.2"),
        });
    }

    #[test]
    fn entropy_is_deterministic() {
        let (mut a, mut b) = (Entropy::new(7), Entropy::new(7));
        assert_eq!(
            (0..5).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..5).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        assert!(a.below(3) < 3);
    }
}

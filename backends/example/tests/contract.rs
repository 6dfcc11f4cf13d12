//! The example backend keeps the contract every backend keeps, and the gate heals it.

use spa_backend_example::FileBackend;
use spa_backends::testkit::{ContractSetup, MemoryJournal, contract, grant};
use spa_backends::{Backend, Driver, Event, Gate};

fn backend(dir: &std::path::Path) -> FileBackend {
    let table: toml::Table = format!("path = {:?}", dir.join("allowed").to_str().unwrap()).parse().unwrap();
    FileBackend::from_table(&table).unwrap()
}

#[test]
fn keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    contract(ContractSetup {
        make: Box::new(move || backend(&path)),
        observe: None,
        source4: "192.0.2.1",
        source6: Some("2001:db8::1"),
        dnat4: None,
    });
}

#[test]
fn a_deleted_file_is_written_again_with_the_live_grants() {
    let dir = tempfile::tempdir().unwrap();
    let mut gate = Gate::new(backend(dir.path()));
    let mut journal = MemoryJournal::default();
    gate.start(Vec::new(), 1000, &mut journal).unwrap();
    gate.grant(grant(1).ports("tcp/22,tcp/443").times(1000, 1600).into(), 1000, &mut journal);
    std::fs::remove_file(dir.path().join("allowed")).unwrap();
    let ev = gate.check(1001, &mut journal);
    assert!(matches!(ev.as_slice(), [Event::Tampered { .. }, Event::Repaired { live: 1 }]), "{ev:?}");
    let text = std::fs::read_to_string(dir.path().join("allowed")).unwrap();
    assert_eq!(
        text,
        "192.0.2.1 tcp/22 until 1600 grant 0000000000000001\n192.0.2.1 tcp/443 until 1600 grant 0000000000000001\n"
    );
}

#[test]
fn registered_by_name() {
    let r = spa_backends::Registry::collect().unwrap();
    assert!(r.names().contains(&"example-file"));
    assert!(r.create("example-file", &"path = \"relative\"".parse().unwrap()).is_err());
}

//! A dropped firewalld backend ends its threads and connections (in a test binary of its own,
//! so no other test's threads are counted).

use std::time::{Duration, Instant};

use spa_backend_firewalld::testlab::{CLOSED_ZONE, FirewalldLab};
use spa_e2e::{Netns, require_root};

fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn a_dropped_backend_leaves_no_thread_behind() {
    // spad builds a backend for every SIGHUP's configuration check: its listener threads and
    // bus connections must end with it.
    require_root();
    let ns = Netns::new("fwt");
    let fw = FirewalldLab::start(&ns, CLOSED_ZONE);
    drop(fw.backend("").unwrap());
    // The first backend's threads end after the drop returns: count once they have.
    let mut base = threads();
    let settled = eventually(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = threads();
        let same = now == base;
        base = now;
        same
    });
    assert!(settled, "the thread count never settled");
    for _ in 0..5 {
        let b = fw.backend("").unwrap();
        assert!(threads() > base, "the listener runs in threads of its own");
        drop(b);
    }
    assert!(
        eventually(Duration::from_secs(10), || threads() <= base),
        "{} threads, {base} before",
        threads()
    );
}

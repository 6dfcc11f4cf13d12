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

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

/// Threads of the `blocking` crate's process-wide pool (zbus runs short socket calls there).
/// Since blocking 1.7 an idle pool thread stays for the next job, so the pool's size is the
/// most jobs that ever ran at once, not a count of live backends: it is checked apart.
fn is_pool(name: &str) -> bool {
    name.starts_with("blocking-")
}

/// Threads of this process outside that pool: the backend's listeners, zbus's executors, ...
fn threads() -> usize {
    thread_names().iter().filter(|n| !is_pool(n)).count()
}

fn pool_threads() -> usize {
    thread_names().iter().filter(|n| is_pool(n)).count()
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
    const ROUNDS: usize = 20;
    for _ in 0..ROUNDS {
        let b = fw.backend("").unwrap();
        assert!(threads() > base, "the listener runs in threads of its own");
        drop(b);
    }
    assert!(
        eventually(Duration::from_secs(10), || threads() <= base),
        "{} threads, {base} before: {:?}",
        threads(),
        thread_names()
    );
    // A pool job that never ended would hold its thread, and each backend would add one.
    assert!(pool_threads() < ROUNDS / 2, "the blocking pool grew with the backends: {:?}", thread_names());
}

//! CPU time and memory of a daemon, from the process CPU clocks and `/proc`.
//!
//! A daemon's cost includes the programs it runs for it: fwknopd forks `iptables` for every
//! rule change, spad's nft backend keeps one long-lived `nft` process. [`tree_cpu`] therefore
//! adds, for the process and every live descendant, its CPU time (user + system, from the
//! kernel's per-process CPU clock, in nanoseconds) plus the time of its children already
//! reaped (`cutime`/`cstime` of `/proc/<pid>/stat`, in clock ticks). Differences of two
//! readings are the work done in between.

use std::time::Duration;

use crate::{Error, Result};

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn read(pid: u32, file: &'static str) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| Error::Proc { pid, file, source })
}

/// Fields of `/proc/<pid>/stat` after the command name (field 3 is index 0).
fn stat_fields(pid: u32) -> Result<Vec<u64>> {
    let text = read(pid, "stat")?;
    let tail = text.rsplit_once(')').ok_or(Error::ProcFormat { pid, file: "stat" })?.1;
    // Field 3 is the state letter; keep positions by mapping it to 0.
    Ok(tail.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

/// User + system time of `pid` (all its threads), with nanosecond resolution.
pub fn own_cpu(pid: u32) -> Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t to the pointer given.
    let r = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &raw mut clock) };
    if r != 0 {
        return Err(Error::CpuClock { pid, source: std::io::Error::from_raw_os_error(r) });
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a timespec to write to.
    if unsafe { libc::clock_gettime(clock, &raw mut ts) } != 0 {
        return Err(Error::CpuClock { pid, source: std::io::Error::last_os_error() });
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// User + system time of the children of `pid` it has already reaped.
pub fn reaped_cpu(pid: u32) -> Result<Duration> {
    let f = stat_fields(pid)?;
    // cutime and cstime are fields 16 and 17.
    let ticks: u64 = f.get(13..15).ok_or(Error::ProcFormat { pid, file: "stat" })?.iter().sum();
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / ticks_per_second()))
}

/// User + system time of `pid` itself and of its reaped children.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    Ok(own_cpu(pid)? + reaped_cpu(pid)?)
}

/// The live children of `pid` (all its threads').
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(text.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    out
}

/// [`cpu_time`] of `pid` plus that of all its live descendants (one that exits between the
/// listing and the read is skipped; its time shows up in its parent's `cutime` once reaped).
pub fn tree_cpu(pid: u32) -> Result<Duration> {
    let mut total = cpu_time(pid)?;
    let mut stack = children(pid);
    while let Some(c) = stack.pop() {
        if let Ok(t) = cpu_time(c) {
            total += t;
            stack.extend(children(c));
        }
    }
    Ok(total)
}

/// Resident memory (`VmRSS`) of `pid` in KiB.
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let text = read(pid, "status")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or(Error::ProcFormat { pid, file: "status" })
}

/// [`vm_rss_kib`] of `pid` and all its live descendants.
pub fn tree_rss_kib(pid: u32) -> Result<u64> {
    let mut total = vm_rss_kib(pid)?;
    let mut stack = children(pid);
    while let Some(c) = stack.pop() {
        if let Ok(r) = vm_rss_kib(c) {
            total += r;
            stack.extend(children(c));
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable_and_busy_work_shows() {
        let me = std::process::id();
        let before = own_cpu(me).unwrap();
        // Spin until this thread has used 100 ms of CPU (however busy the machine is).
        let thread_cpu = || {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: a valid clock id and a timespec to write to.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
            Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        };
        let start = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - start < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = tree_cpu(me).unwrap();
        assert!(after >= before + Duration::from_millis(100), "{before:?} -> {after:?}");
        assert!(vm_rss_kib(me).unwrap() > 100);
    }

    #[test]
    fn children_are_counted() {
        // A shell waiting for its own child: both idle, so their memory holds still.
        let mut sh = std::process::Command::new("sh").args(["-c", "sleep 5; true"]).spawn().unwrap();
        let me = std::process::id();
        assert!(children(me).contains(&sh.id()));
        let start = std::time::Instant::now();
        while children(sh.id()).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "sh did not start sleep");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        let sleep_pid = children(sh.id())[0];
        let tree = tree_rss_kib(sh.id()).unwrap();
        assert_eq!(tree, vm_rss_kib(sh.id()).unwrap() + vm_rss_kib(sleep_pid).unwrap());
        sh.kill().unwrap();
        sh.wait().unwrap();
        // SAFETY: kill(2) on the orphaned sleep we started.
        unsafe { libc::kill(sleep_pid as i32, libc::SIGKILL) };
    }
}

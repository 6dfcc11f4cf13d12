//! Privileges of the packet-facing threads.
//!
//! Linux keeps capabilities per thread: a thread that clears its own sets keeps none, while
//! the other threads keep theirs. spad's receiver threads parse hostile input and need no
//! privilege once their sockets are open (a UDP socket, or an AF_PACKET socket that needed
//! `CAP_NET_RAW` only to be opened), so each clears every capability it has before reading
//! its first packet. The backend worker keeps `CAP_NET_ADMIN` to change the firewall. The
//! user id stays (threads share it in practice: glibc changes it in every thread at once), so
//! a receiver thread of a daemon running as root can still write the state and audit files
//! root owns; the unit's `ProtectSystem=strict` keeps everything else read-only.

/// Clears the permitted, effective and inheritable capability sets of the calling thread.
/// Irreversible for the thread (it never executes a program). Elsewhere than on Linux there
/// is nothing to do.
pub fn drop_thread_capabilities() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        /// `struct __user_cap_header_struct`.
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        /// `struct __user_cap_data_struct`.
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        /// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two `Data`.
        const VERSION_3: u32 = 0x2008_0522;
        // pid 0: the calling thread only (the raw system call, not libcap's process-wide
        // wrapper).
        let mut header = Header { version: VERSION_3, pid: 0 };
        let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
        // SAFETY: capset reads one header and two data structs laid out as the kernel's
        // (repr(C), version 3); both live until the call returns.
        let r = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The thread that drops its capabilities has none left; its parent keeps its own.
    #[test]
    fn a_thread_drops_only_its_own_capabilities() {
        fn effective(tid: &str) -> u64 {
            let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        }
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() }.to_string();
        let before = effective(&me);
        let child = std::thread::spawn(|| {
            super::drop_thread_capabilities().unwrap();
            // SAFETY: as above.
            let tid = unsafe { libc::gettid() }.to_string();
            (effective(&tid), std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap())
        });
        let (after, status) = child.join().unwrap();
        assert_eq!(after, 0, "{status}");
        assert!(status.lines().any(|l| l == "CapPrm:\t0000000000000000"), "{status}");
        assert_eq!(effective(&me), before, "the other threads keep theirs");
    }
}

//! What survives a restart, in `state_dir`: the grants we made and the packets we have seen.
//!
//! Both are append-only journals, compacted when loaded: `grants.jsonl` holds `put`/`del`
//! records, `replay.log` holds `<sha256-hex> <unix-time>` lines. A record is written (not yet
//! fsynced) before the firewall is changed, so even `kill -9` right after loses nothing; the
//! journals are fsynced at most once a second, off the packet path.
//!
//! The directory is input spad does not trust blindly:
//! - one spad owns it at a time, by an exclusive `flock` on `lock` (which holds its pid), taken
//!   before anything else in it is read or written ([`StateLock`]);
//! - it and every file spad reads there must belong to the effective uid and must not be
//!   writable by group or others; nothing there is opened through a symbolic link; what spad
//!   creates is mode 0700 (the directory) or 0600 (files) whatever the umask;
//! - a line that is not UTF-8, not JSON or not a record is skipped and counted, and a grant
//!   whose stanza is no longer configured is dropped; a deadline is cut to what its stanza
//!   could have granted.
//!
//! Writing fails closed: a packet whose replay record cannot be appended is refused
//! ([`Insert::Unwritable`]); a grant whose `put` cannot be appended is not made; a `del` that
//! cannot be appended leaves the journal marked for a full rewrite, and no grant is recorded
//! until that rewrite succeeds.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spa_backends::{Closing, EndKind, Grant, GrantId, Record, State};
use spa_engine::Verifier;
use spa_engine::replay::{Insert, MemoryReplayStore, ReplayKey, ReplayStore, StoredKey, stored_key};

/// Longest journal line read back; a longer one is skipped as unreadable, so a damaged or
/// planted file cannot make spad allocate without bound.
const MAX_LINE: usize = 64 * 1024;

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory could not be created.
    #[error("cannot create state directory {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    /// A path in the state directory could not be examined or opened.
    #[error("cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// A path belongs to someone else: they could forge grants or replay records.
    #[error("{0} is owned by uid {1}, not by uid {2} that spad runs as; chown it or remove it")]
    NotOwned(PathBuf, u32, u32),
    /// A path is writable by group or others: they could forge grants or replay records.
    #[error("{0} is writable by group or others (mode {1:o}); run chmod go-w on it")]
    Writable(PathBuf, u32),
    /// A symbolic link where spad expects its own file: never followed.
    #[error("{0} is a symbolic link; spad does not follow links in its state directory")]
    Symlink(PathBuf),
    /// Something other than a regular file (or a directory, for the state directory itself).
    #[error("{0} is not a {1}")]
    WrongType(PathBuf, &'static str),
    /// Another process holds the state directory's lock.
    #[error("state directory {} is in use by another spad ({})", .0.display(), pid_text(*.1))]
    Locked(PathBuf, Option<u32>),
    /// The lock could not be taken for another reason.
    #[error("cannot lock {0}")]
    Lock(PathBuf, #[source] std::io::Error),
    /// A journal could not be read.
    #[error("cannot read journal {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// A journal could not be written or synced.
    #[error("cannot write journal {0}")]
    Write(PathBuf, #[source] std::io::Error),
    /// The journal missed a record earlier and has not been rewritten since.
    #[error("journal {0} is waiting for a rewrite after a failed write")]
    NeedsRewrite(PathBuf),
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".into(), |p| format!("pid {p}"))
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Refuses `path` unless it belongs to the effective uid and only its owner may write it.
fn check_owner(path: &Path, m: &Metadata) -> Result<(), StateError> {
    let me = euid();
    if m.uid() != me {
        return Err(StateError::NotOwned(path.to_owned(), m.uid(), me));
    }
    if m.mode() & 0o022 != 0 {
        return Err(StateError::Writable(path.to_owned(), m.mode() & 0o7777));
    }
    Ok(())
}

/// Creates `dir` (mode 0700, whatever the umask) if it does not exist, and checks it: a
/// directory, owned by the effective uid, not writable by group or others. A symbolic link is
/// accepted only if the effective uid made it (an admin moving the state elsewhere); its
/// target is checked the same way.
pub fn prepare_dir(dir: &Path) -> Result<(), StateError> {
    let lm = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| StateError::CreateDir(dir.to_owned(), e))?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| StateError::CreateDir(dir.to_owned(), e))?,
                // Made by someone else meanwhile: checked below like any existing directory.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StateError::CreateDir(dir.to_owned(), e)),
            }
            std::fs::symlink_metadata(dir).map_err(|e| StateError::Open(dir.to_owned(), e))?
        }
        Err(e) => return Err(StateError::Open(dir.to_owned(), e)),
    };
    let m = if lm.file_type().is_symlink() {
        if lm.uid() != euid() {
            return Err(StateError::NotOwned(dir.to_owned(), lm.uid(), euid()));
        }
        std::fs::metadata(dir).map_err(|e| StateError::Open(dir.to_owned(), e))?
    } else {
        lm
    };
    if !m.is_dir() {
        return Err(StateError::WrongType(dir.to_owned(), "directory"));
    }
    check_owner(dir, &m)
}

/// Opens `path` without following a symbolic link, and checks what was opened: a regular file
/// of ours that only we may write. `None` when it does not exist (and `opts` does not create).
/// `O_NONBLOCK` keeps a planted FIFO from hanging the open (it changes nothing for files).
fn open_checked(path: &Path, opts: &mut OpenOptions) -> Result<Option<File>, StateError> {
    let file = match opts.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(StateError::Symlink(path.to_owned())),
        Err(e) => return Err(StateError::Open(path.to_owned(), e)),
    };
    let m = file.metadata().map_err(|e| StateError::Open(path.to_owned(), e))?;
    if !m.is_file() {
        return Err(StateError::WrongType(path.to_owned(), "regular file"));
    }
    check_owner(path, &m)?;
    Ok(Some(file))
}

/// The journals in a state directory.
const JOURNALS: [&str; 2] = ["grants.jsonl", "replay.log"];

/// Checks `path` without opening it, if it exists: not a link, a regular file, ours, and
/// writable only by us.
fn check_existing(path: &Path) -> Result<(), StateError> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StateError::Open(path.to_owned(), e)),
    };
    if m.file_type().is_symlink() {
        return Err(StateError::Symlink(path.to_owned()));
    }
    if !m.is_file() {
        return Err(StateError::WrongType(path.to_owned(), "regular file"));
    }
    check_owner(path, &m)
}

/// Exclusive use of a state directory, for as long as the value lives: an `flock` on its
/// `lock` file, which records the holder's pid so that a second spad can name it. The kernel
/// releases the lock when the process ends, however it ends.
#[derive(Debug)]
pub struct StateLock {
    dir: PathBuf,
    _file: File,
}

impl StateLock {
    /// Prepares `dir` (see [`prepare_dir`]) and locks it, or fails at once naming the process
    /// that holds it. Nothing else in the directory is read or written before this succeeds.
    pub fn acquire(dir: &Path) -> Result<Self, StateError> {
        prepare_dir(dir)?;
        let path = dir.join("lock");
        let mut file =
            open_checked(&path, OpenOptions::new().read(true).write(true).create(true).mode(0o600))?
                .ok_or_else(|| StateError::Open(path.clone(), std::io::ErrorKind::NotFound.into()))?;
        // SAFETY: flock on a descriptor we own; LOCK_NB makes it return at once.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = (&file).take(32).read_to_string(&mut text);
                return Err(StateError::Locked(dir.to_owned(), text.trim().parse().ok()));
            }
            return Err(StateError::Lock(path, e));
        }
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.set_len(0)?;
            f.write_all(format!("{}\n", std::process::id()).as_bytes())
        };
        write(&mut file).map_err(|e| StateError::Lock(path, e))?;
        // Refuse a bad journal before either is rewritten, so a refused start changes nothing.
        // (They are checked again on the descriptors they are read from.)
        for name in JOURNALS {
            check_existing(&dir.join(name))?;
        }
        Ok(Self { dir: dir.to_owned(), _file: file })
    }

    /// The directory this lock owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads `path` line by line, calling `each` with every non-blank line that is valid UTF-8 and
/// not over [`MAX_LINE`]; `each` says whether it could use the line. Unusable lines are
/// counted and reported in one warning with the number of the first (never its content, which
/// whoever damaged the file chose). A missing file has no lines.
fn read_journal(path: &Path, mut each: impl FnMut(&str) -> bool) -> Result<(), StateError> {
    let Some(file) = open_checked(path, OpenOptions::new().read(true))? else { return Ok(()) };
    let err = |e| StateError::Read(path.to_owned(), e);
    let mut r = BufReader::new(file);
    let mut line = Vec::new();
    let (mut number, mut bad, mut first_bad) = (0usize, 0usize, 0usize);
    loop {
        line.clear();
        let (mut too_long, mut ended, mut any) = (false, false, false);
        loop {
            let avail = r.fill_buf().map_err(err)?;
            if avail.is_empty() {
                break;
            }
            any = true;
            let nl = avail.iter().position(|&b| b == b'\n');
            let chunk = &avail[..nl.unwrap_or(avail.len())];
            if !too_long && line.len() + chunk.len() <= MAX_LINE {
                line.extend_from_slice(chunk);
            } else {
                too_long = true;
                line.clear();
            }
            let used = nl.map_or(avail.len(), |i| i + 1);
            r.consume(used);
            if nl.is_some() {
                ended = true;
                break;
            }
        }
        if !any {
            break;
        }
        number += 1;
        let ok = !too_long
            && (line.iter().all(u8::is_ascii_whitespace) || std::str::from_utf8(&line).is_ok_and(&mut each));
        if !ok {
            bad += 1;
            if first_bad == 0 {
                first_bad = number;
            }
        }
        if !ended {
            break;
        }
    }
    if bad > 0 {
        tracing::warn!("{}: skipped {bad} unreadable line(s), the first at line {first_bad}", path.display());
    }
    Ok(())
}

/// An append-only file that is fsynced lazily, and rewritten whole when a write was lost.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes of whole lines in the file: a failed append is cut back to this.
    len: u64,
    dirty: bool,
    /// A failed append left a partial line that could not be cut: the next starts a new line.
    torn: bool,
    /// The file may lack records the daemon relies on: it must be rewritten from memory.
    stale: bool,
}

impl Journal {
    /// Rewrites `path` atomically with `lines`, returning the new file open for appending. The
    /// temporary file is created exclusively, after removing any stale one (`unlink` removes a
    /// planted symbolic link, never its target), so a link can never redirect the write.
    fn rewrite(path: &Path, lines: impl Iterator<Item = String>) -> Result<Self, StateError> {
        let err = |e| StateError::Write(path.to_owned(), e);
        let tmp = path.with_extension("tmp");
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(err)?;
        let fill = || -> std::io::Result<u64> {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            let mut len = 0u64;
            let mut w = BufWriter::new(&file);
            for l in lines {
                w.write_all(l.as_bytes())?;
                w.write_all(b"\n")?;
                len += l.len() as u64 + 1;
            }
            w.flush()?;
            drop(w);
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(len)
        };
        match fill() {
            Ok(len) => Ok(Self { path: path.to_owned(), file, len, dirty: false, torn: false, stale: false }),
            Err(e) => {
                // Give back the space a partial copy holds (the disk may be full).
                let _ = std::fs::remove_file(&tmp);
                Err(err(e))
            }
        }
    }

    /// Compacts `path` to `lines`; if that cannot be done now (a full disk), keeps appending
    /// to the file as it is and marks it for a rewrite at the next sync.
    fn rewrite_or_append(path: &Path, lines: impl Iterator<Item = String>) -> Result<Self, StateError> {
        let e = match Self::rewrite(path, lines) {
            Ok(j) => return Ok(j),
            Err(e) => e,
        };
        tracing::error!(
            "{}; appending to it as it is until it can be rewritten",
            crate::config::error_chain(&e)
        );
        let file = open_checked(path, OpenOptions::new().append(true).create(true).mode(0o600))?
            .ok_or_else(|| StateError::Open(path.to_owned(), std::io::ErrorKind::NotFound.into()))?;
        let len = file.metadata().map_err(|e| StateError::Open(path.to_owned(), e))?.len();
        // The file may end in a partial line: start the next record on a line of its own.
        Ok(Self { path: path.to_owned(), file, len, dirty: false, torn: true, stale: true })
    }

    /// Appends one line (written to the kernel at once; fsynced by [`Journal::sync`]). On
    /// failure nothing of the line stays in the file.
    pub fn append(&mut self, line: &str) -> Result<(), StateError> {
        let mut buf = Vec::with_capacity(line.len() + 2);
        if self.torn {
            buf.push(b'\n');
        }
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        match self.file.write_all(&buf) {
            Ok(()) => {
                self.len = if self.torn {
                    self.file.metadata().map_or(self.len + buf.len() as u64, |m| m.len())
                } else {
                    self.len + buf.len() as u64
                };
                self.torn = false;
                self.dirty = true;
                Ok(())
            }
            Err(e) => {
                // Cut a partial write, or the next record would be glued to it and lost.
                if self.file.set_len(self.len).is_err() {
                    self.torn = true;
                }
                Err(StateError::Write(self.path.clone(), e))
            }
        }
    }

    /// fsyncs if anything was appended since the last call. A failed fsync may have lost
    /// records, so the journal is then marked for a rewrite.
    pub fn sync(&mut self) -> Result<(), StateError> {
        if self.dirty {
            self.dirty = false;
            if let Err(e) = self.file.sync_data() {
                self.stale = true;
                return Err(StateError::Write(self.path.clone(), e));
            }
        }
        Ok(())
    }

    /// Replaces the file with `lines`; the journal stays as it was if that fails.
    fn replace(&mut self, lines: impl Iterator<Item = String>) -> Result<(), StateError> {
        *self = Self::rewrite(&self.path, lines)?;
        Ok(())
    }
}

/// One line of `grants.jsonl`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum GrantRecord {
    /// A grant as it now is (new or extended).
    Put { grant: Grant },
    /// Ending the grant failed; it is retried (its entries may still be in the firewall).
    Closing { id: GrantId, closing: Closing },
    /// The grant ended.
    Del { id: GrantId },
}

fn put_line(grant: &Grant) -> Option<String> {
    serde_json::to_string(&GrantRecord::Put { grant: grant.clone() }).ok()
}

/// The lines that record `r`: its put, and its closing state if it has one.
fn record_lines(r: &Record) -> Vec<String> {
    let mut v: Vec<String> = put_line(&r.grant).into_iter().collect();
    if let State::Closing(c) = &r.state {
        v.extend(serde_json::to_string(&GrantRecord::Closing { id: r.grant.id, closing: *c }).ok());
    }
    v
}

/// One copy of each distinct stanza name, username, port list and ingress among the grants a
/// daemon holds: 100,000 grants from a few stanzas and users then share a few strings instead of
/// carrying 300,000 small allocations. Copies no grant uses any more are dropped now and then.
#[derive(Debug, Default)]
pub struct Interner {
    names: std::collections::HashSet<std::sync::Arc<str>>,
    ports: std::collections::HashSet<std::sync::Arc<[spa_backends::ProtoPort]>>,
    ingresses: std::collections::HashSet<std::sync::Arc<spa_backends::Ingress>>,
    added: usize,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn name(&mut self, s: &str) -> std::sync::Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: std::sync::Arc<str> = s.into();
        self.names.insert(a.clone());
        self.added();
        a
    }

    /// The shared copy of an access (port lists are shared; `all` has nothing to share).
    pub fn access(&mut self, a: &spa_backends::Access) -> spa_backends::Access {
        match a {
            spa_backends::Access::All => spa_backends::Access::All,
            spa_backends::Access::Ports(p) => {
                if let Some(shared) = self.ports.get(&**p) {
                    return spa_backends::Access::Ports(shared.clone());
                }
                self.ports.insert(p.clone());
                self.added();
                spa_backends::Access::Ports(p.clone())
            }
        }
    }

    /// The shared copy of an ingress.
    pub fn ingress(&mut self, i: spa_backends::Ingress) -> std::sync::Arc<spa_backends::Ingress> {
        if let Some(a) = self.ingresses.get(&i) {
            return a.clone();
        }
        let a = std::sync::Arc::new(i);
        self.ingresses.insert(a.clone());
        self.added();
        a
    }

    /// `g` with its shared parts replaced by the shared copies.
    pub fn grant(&mut self, g: &mut Grant) {
        g.stanza = self.name(&g.stanza);
        g.username = self.name(&g.username);
        g.access = self.access(&g.access);
        g.ingress = g.ingress.take().map(|i| self.ingress(std::sync::Arc::unwrap_or_clone(i)));
    }

    /// Every 4096 new copies, forget those only the interner still holds.
    fn added(&mut self) {
        self.added += 1;
        if self.added.is_multiple_of(4096) {
            self.names.retain(|a| std::sync::Arc::strong_count(a) > 1);
            self.ports.retain(|a| std::sync::Arc::strong_count(a) > 1);
            self.ingresses.retain(|a| std::sync::Arc::strong_count(a) > 1);
        }
    }
}

/// The longest grant each configured stanza can make, by stanza name: what a grant read back
/// from the journal is held to.
#[derive(Debug, Clone, Default)]
pub struct StanzaLimits(HashMap<String, u64>);

impl StanzaLimits {
    /// The limits of `verifier`'s stanzas: `max_fw_timeout`, or `fw_access_timeout` where that
    /// is longer (it is what a knock without a client timeout gets).
    pub fn of(verifier: &Verifier) -> Self {
        Self(
            verifier
                .stanzas()
                .iter()
                .map(|s| (s.name().to_string(), u64::from(s.max_fw_timeout().max(s.fw_access_timeout()))))
                .collect(),
        )
    }

    /// Sets the limit of one stanza (for callers without a verifier).
    pub fn insert(&mut self, stanza: &str, seconds: u64) {
        self.0.insert(stanza.to_owned(), seconds);
    }

    fn get(&self, stanza: &str) -> Option<u64> {
        self.0.get(stanza).copied()
    }
}

/// Replays `grants.jsonl` into the recorded grants, live and closing; unusable lines are
/// counted by [`read_journal`].
fn load_grants(path: &Path) -> Result<BTreeMap<GrantId, Record>, StateError> {
    let mut grants: BTreeMap<GrantId, Record> = BTreeMap::new();
    read_journal(path, |line| match serde_json::from_str::<GrantRecord>(line) {
        // 0 is not a grant id (spad never makes it); such a line is unreadable.
        Ok(GrantRecord::Put { grant }) if grant.id.0 == 0 => false,
        Ok(GrantRecord::Put { grant }) => {
            // A put keeps a closing state: only `del` ends a grant.
            let state = grants.get(&grant.id).map_or(State::Live, |r| r.state.clone());
            grants.insert(grant.id, Record { grant, state });
            true
        }
        Ok(GrantRecord::Closing { id, closing }) => {
            if let Some(r) = grants.get_mut(&id) {
                r.state = State::Closing(closing);
            }
            true
        }
        Ok(GrantRecord::Del { id }) => {
            grants.remove(&id);
            true
        }
        Err(_) => false,
    })?;
    Ok(grants)
}

/// What [`GrantStore::open`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The recorded grants, live (some may have expired) and closing. Grants of stanzas no
    /// longer configured are closing (to be revoked); deadlines are capped.
    pub records: Vec<Record>,
    /// How many of them were dropped for an unknown stanza (now closing).
    pub dropped: usize,
}

/// The journal of grants.
#[derive(Debug)]
pub struct GrantStore {
    journal: Journal,
    failed_rewrites: u64,
}

/// The ledger's view of the journal: a new grant's record must be written (or the grant is
/// refused); the others mark the journal for a rewrite when they cannot be written.
impl spa_backends::Journal for GrantStore {
    fn put(&mut self, grant: &Grant) -> Result<(), String> {
        GrantStore::put(self, grant).map_err(|e| crate::config::error_chain(&e))
    }

    fn closing(&mut self, id: GrantId, closing: &Closing) {
        if let Err(e) = GrantStore::closing(self, id, closing) {
            tracing::error!(
                "the closing state of {id} was not recorded: {}; the journal will be rewritten",
                crate::config::error_chain(&e)
            );
        }
    }

    fn del(&mut self, id: GrantId) {
        if let Err(e) = GrantStore::del(self, id) {
            tracing::error!(
                "the end of {id} was not recorded: {}; the journal will be rewritten",
                crate::config::error_chain(&e)
            );
        }
    }
}

impl GrantStore {
    /// Opens `grants.jsonl` in the locked directory and returns the grants it records,
    /// compacted: a grant whose stanza `limits` does not know is dropped, and a deadline past
    /// `now` plus its stanza's limit is cut to that. Both are logged.
    pub fn open(
        lock: &StateLock,
        limits: &StanzaLimits,
        now: u64,
        interner: &mut Interner,
    ) -> Result<(Self, Loaded), StateError> {
        let path = lock.dir().join("grants.jsonl");
        let mut loaded = Loaded::default();
        let mut capped = 0usize;
        let mut first_dropped = None;
        for (_, mut r) in load_grants(&path)? {
            interner.grant(&mut r.grant);
            match limits.get(&r.grant.stanza) {
                None => {
                    // Not ours any more: it ends now (what it holds must still be closed).
                    if r.state == State::Live {
                        r.state = State::Closing(Closing { why: EndKind::Revoke, attempts: 0, retry_at: 0 });
                    }
                    loaded.dropped += 1;
                    first_dropped.get_or_insert((r.grant.id, r.grant.source));
                }
                Some(limit) => {
                    let latest = now.saturating_add(limit);
                    if r.grant.deadline > latest {
                        r.grant.deadline = latest;
                        capped += 1;
                    }
                }
            }
            loaded.records.push(r);
        }
        if let Some((id, source)) = first_dropped {
            tracing::warn!(
                "{}: {} grant(s) of stanzas no longer configured are closed (the first: {id} for {source})",
                path.display(),
                loaded.dropped,
            );
        }
        if capped > 0 {
            tracing::warn!(
                "{}: {capped} grant(s) lasted longer than their stanza allows; cut to its maximum from now",
                path.display()
            );
        }
        let journal = Journal::rewrite_or_append(&path, loaded.records.iter().flat_map(record_lines))?;
        Ok((Self { journal, failed_rewrites: 0 }, loaded))
    }

    /// Records a new or extended grant. Refused while the journal waits for a rewrite: it
    /// could not be trusted to hold the record.
    pub fn put(&mut self, grant: &Grant) -> Result<(), StateError> {
        if self.journal.stale {
            return Err(StateError::NeedsRewrite(self.journal.path.clone()));
        }
        let line = put_line(grant).unwrap_or_default();
        self.journal.append(&line)
    }

    /// Records that a grant ended. If that cannot be written the journal is marked for a
    /// rewrite (it would bring the grant back after a restart).
    pub fn del(&mut self, id: GrantId) -> Result<(), StateError> {
        let line = serde_json::to_string(&GrantRecord::Del { id }).unwrap_or_default();
        self.journal.append(&line).inspect_err(|_| self.journal.stale = true)
    }

    /// Whether a record was lost and the journal must be rewritten (no grant is recorded
    /// until then).
    pub fn needs_rewrite(&self) -> bool {
        self.journal.stale
    }

    /// How many rewrites failed in a row (for reporting without flooding the log).
    pub fn failed_rewrites(&self) -> u64 {
        self.failed_rewrites
    }

    /// Records that ending a grant failed (it is retried). If that cannot be written the
    /// journal is marked for a rewrite.
    pub fn closing(&mut self, id: GrantId, closing: &Closing) -> Result<(), StateError> {
        let line = serde_json::to_string(&GrantRecord::Closing { id, closing: *closing }).unwrap_or_default();
        self.journal.append(&line).inspect_err(|_| self.journal.stale = true)
    }

    /// Rewrites the journal so that it records exactly `records` (lingering ones excluded:
    /// they have ended).
    pub fn rewrite<'a>(&mut self, records: impl Iterator<Item = &'a Record>) -> Result<(), StateError> {
        let r = self.journal.replace(records.filter(|r| r.state != State::Lingering).flat_map(record_lines));
        self.failed_rewrites = if r.is_ok() { 0 } else { self.failed_rewrites + 1 };
        r
    }

    /// fsyncs pending records.
    pub fn sync(&mut self) -> Result<(), StateError> {
        self.journal.sync()
    }
}

/// Reads the grants recorded in `dir` (live and closing) without locking or writing anything
/// (for `spad list`, which may run beside the daemon). Same checks as the daemon's.
pub fn read_grants(dir: &Path) -> Result<Vec<Record>, StateError> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        _ => {}
    }
    let lm = std::fs::symlink_metadata(dir).map_err(|e| StateError::Open(dir.to_owned(), e))?;
    if lm.file_type().is_symlink() && lm.uid() != euid() {
        return Err(StateError::NotOwned(dir.to_owned(), lm.uid(), euid()));
    }
    let m = std::fs::metadata(dir).map_err(|e| StateError::Open(dir.to_owned(), e))?;
    if !m.is_dir() {
        return Err(StateError::WrongType(dir.to_owned(), "directory"));
    }
    check_owner(dir, &m)?;
    Ok(load_grants(&dir.join("grants.jsonl"))?.into_values().collect())
}

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored replay key from its hex text: 32 digits, or the 64 of a full SHA-256 (journals
/// written before the store kept 128 bits), of which the first 32 count.
fn unhex(s: &str) -> Option<StoredKey> {
    if s.len() != 32 && s.len() != 64 {
        return None;
    }
    let mut k = [0u8; 16];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

/// The replay store, journaled so a packet seen before a restart is still refused after it.
#[derive(Debug)]
pub struct PersistentReplay {
    store: MemoryReplayStore,
    journal: Journal,
}

impl PersistentReplay {
    /// Loads `replay.log` from the locked directory, dropping expired entries.
    pub fn open(lock: &StateLock, ttl: u64, capacity: usize, now: u64) -> Result<Self, StateError> {
        let path = lock.dir().join("replay.log");
        let mut store = MemoryReplayStore::new(ttl, capacity);
        read_journal(&path, |line| {
            let mut it = line.split(' ');
            match (it.next().and_then(unhex), it.next().and_then(|t| t.parse().ok()), it.next()) {
                (Some(k), Some(t), None) => {
                    store.restore(k, t, now);
                    true
                }
                _ => false,
            }
        })?;
        let journal =
            Journal::rewrite_or_append(&path, store.entries().map(|(k, at)| format!("{} {at}", hex(k))))?;
        Ok(Self { store, journal })
    }

    /// fsyncs pending records, or rewrites the journal from memory if a write was lost.
    pub fn sync(&mut self) -> Result<(), StateError> {
        if self.journal.stale {
            let lines = self.store.entries().map(|(k, at)| format!("{} {at}", hex(k)));
            return self.journal.replace(lines);
        }
        self.journal.sync()
    }

    /// Whether the journal waits for a rewrite.
    pub fn needs_rewrite(&self) -> bool {
        self.journal.stale
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// True when no packet is remembered.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

impl ReplayStore for PersistentReplay {
    fn contains(&self, key: &ReplayKey, now: u64) -> bool {
        self.store.contains(key, now)
    }

    /// Records in memory and in the journal. If the journal cannot be written the packet is
    /// refused ([`Insert::Unwritable`]): accepted, it could be accepted again after a restart.
    /// It stays remembered in memory, so until then it is a replay.
    fn insert(&mut self, key: ReplayKey, now: u64) -> Insert {
        let r = self.store.insert(key, now);
        if r == Insert::New
            && let Err(e) = self.journal.append(&format!("{} {now}", hex(&stored_key(&key))))
        {
            tracing::error!("refusing an authenticated packet: {}", crate::config::error_chain(&e));
            return Insert::Unwritable;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spa_backends::Access;

    fn grant(id: u64) -> Grant {
        Grant {
            id: GrantId(id),
            source: "192.0.2.1".parse().unwrap(),
            source_port: None,
            packet_source: "192.0.2.1".parse().unwrap(),
            destination: None,
            access: Access::Ports(vec!["tcp/22".parse().unwrap()].into()),
            nat: None,
            created: 1,
            deadline: 100,
            stanza: "s".into(),
            username: "u".into(),
            ingress: None,
        }
    }

    fn limits() -> StanzaLimits {
        let mut l = StanzaLimits::default();
        l.insert("s", 1000);
        l
    }

    #[test]
    fn grants_survive_reopen_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let lock = StateLock::acquire(dir.path()).unwrap();
        {
            let (mut s, l) = GrantStore::open(&lock, &limits(), 0, &mut Interner::default()).unwrap();
            assert!(l.records.is_empty());
            s.put(&grant(1)).unwrap();
            s.put(&grant(2)).unwrap();
            s.del(GrantId(1)).unwrap();
            let mut g2 = grant(2);
            g2.deadline = 200;
            s.put(&g2).unwrap();
        }
        // A torn final line, as after a crash mid-write.
        let mut f = OpenOptions::new().append(true).open(dir.path().join("grants.jsonl")).unwrap();
        f.write_all(b"{\"op\":\"put\",\"gra").unwrap();
        let (_, l) = GrantStore::open(&lock, &limits(), 0, &mut Interner::default()).unwrap();
        assert_eq!(l.records.len(), 1);
        assert_eq!(l.records[0].grant.deadline, 200);
        assert_eq!(read_grants(dir.path()).unwrap().len(), 1);
    }

    /// The journal keeps a grant's source port; a line written before it was kept (no
    /// `source_port`) loads as a grant of the whole address.
    #[test]
    fn the_source_port_survives_reopen_and_old_lines_load_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let lock = StateLock::acquire(dir.path()).unwrap();
        {
            let (mut s, _) = GrantStore::open(&lock, &limits(), 0, &mut Interner::default()).unwrap();
            s.put(&Grant { source_port: Some(40000), ..grant(1) }).unwrap();
        }
        let old = r#"{"op":"put","grant":{"id":2,"source":"192.0.2.1","packet_source":"192.0.2.1","destination":null,"access":{"ports":["tcp/22"]},"nat":null,"created":1,"deadline":100,"stanza":"s","username":"u"}}"#;
        let mut f = OpenOptions::new().append(true).open(dir.path().join("grants.jsonl")).unwrap();
        f.write_all(format!("{old}\n").as_bytes()).unwrap();
        let (_, l) = GrantStore::open(&lock, &limits(), 0, &mut Interner::default()).unwrap();
        let port =
            |id: u64| l.records.iter().find(|r| r.grant.id == GrantId(id)).map(|r| r.grant.source_port);
        assert_eq!(port(1), Some(Some(40000)));
        assert_eq!(port(2), Some(None), "an old line must load, as a grant of the whole address");
    }

    #[test]
    fn a_closing_grant_stays_closing_across_reopen_and_puts() {
        let dir = tempfile::tempdir().unwrap();
        let lock = StateLock::acquire(dir.path()).unwrap();
        let closing = Closing { why: EndKind::Expire, attempts: 2, retry_at: 50 };
        {
            let (mut s, _) = GrantStore::open(&lock, &limits(), 0, &mut Interner::default()).unwrap();
            s.put(&grant(1)).unwrap();
            s.put(&grant(2)).unwrap();
            GrantStore::closing(&mut s, GrantId(1), &closing).unwrap();
        }
        let (mut s, l) = GrantStore::open(&lock, &limits(), 0, &mut Interner::default()).unwrap();
        let state =
            |l: &Loaded, id| l.records.iter().find(|r| r.grant.id == GrantId(id)).map(|r| r.state.clone());
        assert_eq!(state(&l, 1), Some(State::Closing(closing)));
        assert_eq!(state(&l, 2), Some(State::Live));
        // The rewrite at open kept it; a del ends it.
        s.del(GrantId(1)).unwrap();
        drop(s);
        let (_, l) = GrantStore::open(&lock, &limits(), 0, &mut Interner::default()).unwrap();
        assert_eq!(state(&l, 1), None);
        // A grant of a stanza that is gone is closing, to be revoked.
        let mut other = limits();
        other.0.clear();
        let (_, l) = GrantStore::open(&lock, &other, 0, &mut Interner::default()).unwrap();
        assert!(matches!(state(&l, 2), Some(State::Closing(Closing { why: EndKind::Revoke, .. }))));
        assert_eq!(l.dropped, 1);
    }

    #[test]
    fn replay_survives_reopen_until_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let lock = StateLock::acquire(dir.path()).unwrap();
        {
            let mut r = PersistentReplay::open(&lock, 240, 10, 1000).unwrap();
            assert_eq!(r.insert([7; 32], 1000), Insert::New);
        }
        let mut r = PersistentReplay::open(&lock, 240, 10, 1100).unwrap();
        assert!(r.contains(&[7; 32], 1100));
        assert_eq!(r.insert([7; 32], 1100), Insert::Seen);
        let r = PersistentReplay::open(&lock, 240, 10, 1300).unwrap();
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_second_lock_on_the_same_directory_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = StateLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file: a second open in the same process conflicts too.
        let e = StateLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(e, StateError::Locked(_, Some(p)) if p == std::process::id()), "{e}");
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
    }

    #[test]
    fn lines_that_are_not_utf8_json_or_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let lock = StateLock::acquire(dir.path()).unwrap();
        let good = put_line(&grant(5)).unwrap();
        let mut text = b"\xff\xfe not utf-8\n".to_vec();
        text.extend_from_slice(format!("{good}\n\nnot json\n{{\"op\":\"nope\"}}\n").as_bytes());
        text.extend_from_slice(&vec![b'x'; MAX_LINE + 10]);
        text.extend_from_slice(b"\n");
        std::fs::write(dir.path().join("grants.jsonl"), &text).unwrap();
        let (_, l) = GrantStore::open(&lock, &limits(), 0, &mut Interner::default()).unwrap();
        assert_eq!(l.records.iter().map(|r| r.grant.id).collect::<Vec<_>>(), vec![GrantId(5)]);

        let key = hex(&[3; 32]);
        let mut text = b"\xc3\xa9\xff\n".to_vec();
        text.extend_from_slice(format!("{key} 1000\n{key}\n{key} x\n").as_bytes());
        std::fs::write(dir.path().join("replay.log"), text).unwrap();
        let r = PersistentReplay::open(&lock, 240, 10, 1100).unwrap();
        assert_eq!(r.len(), 1);
    }
}

//! Small kernel files read every scrape through descriptors held open between scrapes.
//!
//! Opening `/proc/<pid>/stat` or a cgroup's `cpu.pressure` walks the path through procfs or
//! kernfs every time, and `std::fs::read` adds a `statx` to size its buffer; for files of a
//! few hundred bytes that is most of the cost. A held descriptor is read with one `pread` at
//! offset 0: procfs and kernfs regenerate a seq_file's contents on every read from the start,
//! so the values are as fresh as those of a new open.
//!
//! A held file names the kernel object it was opened on, not its path: when the process or
//! cgroup goes away the read fails (ESRCH for /proc files, ENODEV for kernfs files), even if
//! a new object has the same path by now (a reused pid, a VM restarted in a new scope). Such a
//! failure drops every file of the key, and the path is opened once more: NotFound then means
//! gone, success means replaced (and the new file is held).
//!
//! Descriptors are capped by an [`FdBudget`] shared by all sets of one engine; beyond it files
//! are read by path (open, read, close), which gives the same values.

use std::{
    fs::{File, Metadata},
    hash::Hash,
    io,
    os::unix::fs::FileExt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

/// The initial room of a read buffer: `/proc/<pid>/status` of QEMU is ~1.5 KiB, the others less.
const INITIAL_BUF: usize = 4096;

/// How many descriptors the held-file sets of one engine may keep open together.
#[derive(Debug)]
pub struct FdBudget {
    used: AtomicUsize,
    max: usize,
}

impl FdBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { used: AtomicUsize::new(0), max })
    }

    /// Half the soft RLIMIT_NOFILE (at most 65536): sockets, monitor sessions and the reads
    /// by path always have descriptors left.
    pub fn from_rlimit() -> Arc<Self> {
        let soft = nofile_limit().map_or(1024, |(soft, _)| soft);
        Self::new(usize::try_from(soft / 2).unwrap_or(usize::MAX).min(65536))
    }

    /// Descriptors held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn acquire(self: &Arc<Self>) -> Option<Token> {
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1)).ok()?;
        Some(Token(self.clone()))
    }
}

/// One descriptor of the budget; given back when dropped with its file.
#[derive(Debug)]
struct Token(Arc<FdBudget>);

/// A descriptor held between scrapes outside [`HeldFiles`] (a pidfd), counted in the budget.
#[derive(Debug)]
pub struct BudgetedFd {
    pub fd: std::os::fd::OwnedFd,
    _token: Token,
}

impl FdBudget {
    /// Hold `open()`'s descriptor if the budget has one left (None: it has not; `open` is not
    /// called).
    pub fn hold(
        self: &Arc<Self>,
        open: impl FnOnce() -> io::Result<std::os::fd::OwnedFd>,
    ) -> Option<io::Result<BudgetedFd>> {
        let token = self.acquire()?;
        Some(open().map(|fd| BudgetedFd { fd, _token: token }))
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Held {
    file: File,
    _token: Token,
}

/// What a held file that went stale (its process or cgroup is gone) leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStale {
    /// Open the path once more: a new object there is read (and held), none gives NotFound.
    Reopen,
    /// Return the error: the caller's own knowledge of what the key holds is stale too
    /// (the vCPU listing of a process lists again).
    Fail,
}

/// Files held per key (a pid, a vmid), each in a numbered slot, read whole into one reused
/// buffer. Callers drop the keys that are no longer wanted ([`HeldFiles::retain`]) every
/// scrape, so the files of a stopped VM are closed with the scrape that no longer lists it.
#[derive(Debug)]
pub struct HeldFiles<K> {
    budget: Arc<FdBudget>,
    on_stale: OnStale,
    /// Per key, the slots it holds a file in. A list of the held slots, not a vector indexed
    /// by slot: a key holds a few files of a long list (a v1 memory cgroup its 6 of the 30
    /// cgroup file slots), and 100 containers have ~600 keys, whose vectors grown to their
    /// highest slot took ~290 KB of the heap between scrapes (docs/benchmarks.md, seventh pass).
    entries: crate::fasthash::FastMap<K, Vec<(usize, Held)>>,
    buf: Vec<u8>,
}

impl<K: Hash + Eq + Clone> HeldFiles<K> {
    pub fn new(budget: Arc<FdBudget>, on_stale: OnStale) -> Self {
        Self { budget, on_stale, entries: Default::default(), buf: Vec::new() }
    }

    /// The whole contents of file `slot` of `key`: through its held descriptor, else opened by
    /// `path` (called only then) and held from now on while the budget allows. Errors are
    /// those of open and read, without the path (callers add their context).
    pub fn read(&mut self, key: &K, slot: usize, path: impl FnOnce() -> std::path::PathBuf) -> io::Result<&[u8]> {
        let files = self.entries.entry(key.clone()).or_default();
        if let Some((_, h)) = files.iter().find(|(s, _)| *s == slot) {
            match pread_whole(&h.file, &mut self.buf) {
                Ok(n) => return Ok(&self.buf[..n]),
                Err(e) if is_stale(&e) => {
                    // The object behind the key went away: its other files are stale too.
                    files.clear();
                    if self.on_stale == OnStale::Fail {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let file = File::open(path())?;
        let n = pread_whole(&file, &mut self.buf)?;
        if let Some(token) = self.budget.acquire() {
            files.push((slot, Held { file, _token: token }));
        }
        Ok(&self.buf[..n])
    }

    /// The metadata (`fstat`) of file or directory `slot` of `key`: through its held
    /// descriptor, else opened by `path` (called only then) and held while the budget allows.
    /// A held /proc directory of an exited process still answers (with the counts of a dead
    /// one): callers that need to tell drop the key and ask again.
    pub fn metadata(
        &mut self,
        key: &K,
        slot: usize,
        path: impl FnOnce() -> std::path::PathBuf,
    ) -> io::Result<Metadata> {
        let files = self.entries.entry(key.clone()).or_default();
        if let Some((_, h)) = files.iter().find(|(s, _)| *s == slot) {
            return h.file.metadata();
        }
        let file = File::open(path())?;
        let m = file.metadata()?;
        if let Some(token) = self.budget.acquire() {
            files.push((slot, Held { file, _token: token }));
        }
        Ok(m)
    }

    /// Open file `slot` of `key` now and hold it (while the budget allows) without reading it,
    /// replacing what the slot held. Errors are ignored: the read by path reports them.
    pub fn hold(&mut self, key: &K, slot: usize, path: &Path) {
        let files = self.entries.entry(key.clone()).or_default();
        files.retain(|(s, _)| *s != slot);
        if let Some(token) = self.budget.acquire()
            && let Ok(file) = File::open(path)
        {
            files.push((slot, Held { file, _token: token }));
        }
    }

    /// Close the files of `key`.
    pub fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Keep only the keys `keep` says yes to; the others' files are closed.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    /// Files this set holds open.
    pub fn held(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }
}

/// Whether a read of a held file says its object is gone: ESRCH (a /proc file of an exited
/// process or thread), ENODEV (a kernfs file of a removed cgroup), NotFound.
pub fn is_stale(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENODEV))
}

/// Read `file` whole from offset 0 into `buf`; returns the length. `buf` keeps its size
/// between calls (it is the room offered) and doubles when a read fills it.
///
/// A read shorter than the room is taken as the end, which saves the extra read of 0 bytes
/// that `read_to_end` makes: true of the files read here, regular files and the single-record
/// seq_files of procfs (`single_open`) and kernfs (cgroup files), which hand out their whole
/// contents up to the room asked for. (Not of multi-record seq_files such as
/// `/proc/<pid>/maps`, which stop at a page: do not read those through this.)
pub fn pread_whole(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.len() < INITIAL_BUF {
        buf.resize(INITIAL_BUF, 0);
    }
    let mut n = 0;
    loop {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => return Ok(n),
            Ok(k) => {
                n += k;
                if n < buf.len() {
                    return Ok(n);
                }
                // The files read here are a few KiB; one that keeps filling the room is not
                // one of them, and is not read past the cap of every host file.
                if buf.len() as u64 >= crate::host::MAX_FILE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("larger than {} bytes, not read", crate::host::MAX_FILE),
                    ));
                }
                buf.resize(buf.len() * 2, 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Read a small file whole by path (open, pread, close): no `statx` to size the buffer, as
/// `std::fs::read` makes. The same files as [`pread_whole`].
pub fn read_path(path: &Path, buf: &mut Vec<u8>) -> io::Result<usize> {
    pread_whole(&File::open(path)?, buf)
}

/// The soft and hard RLIMIT_NOFILE.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raise the soft RLIMIT_NOFILE to the hard limit: held files need ~5 descriptors per VM
/// (plus one per vCPU), more than the usual soft limit of 1024 allows on a large host.
/// Returns the soft limit before and after.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile_limit()?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    let lim = libc::rlimit { rlim_cur: hard, rlim_max: hard };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((soft, hard))
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::symlink,
        path::PathBuf,
        process::{Child, Command},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::sources::proc::process::parse_stat;

    fn read(set: &mut HeldFiles<u32>, key: u32, slot: usize, path: &Path) -> io::Result<String> {
        set.read(&key, slot, || path.to_path_buf()).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    #[test]
    fn a_file_that_never_ends_is_not_read_past_the_cap() {
        let mut buf = Vec::new();
        let e = pread_whole(&File::open("/dev/zero").unwrap(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(buf.len() as u64 <= 2 * crate::host::MAX_FILE);
    }

    #[test]
    fn fixture_files_are_held_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "x".repeat(10_000)).unwrap();
        let budget = FdBudget::new(1);
        let mut set = HeldFiles::new(budget.clone(), OnStale::Reopen);
        assert_eq!(read(&mut set, 1, 0, &a).unwrap(), "one");
        assert_eq!((set.held(), budget.used()), (1, 1));
        // Over the budget: read by path, whole (larger than the first buffer), not held.
        assert_eq!(read(&mut set, 1, 1, &b).unwrap().len(), 10_000);
        assert_eq!(set.held(), 1);
        // A file rewritten in place: the held descriptor reads the new contents.
        std::fs::write(&a, "two, longer").unwrap();
        assert_eq!(read(&mut set, 1, 0, &a).unwrap(), "two, longer");
        std::fs::write(&a, "3").unwrap();
        assert_eq!(read(&mut set, 1, 0, &a).unwrap(), "3");
        // Missing: NotFound, nothing held for it.
        assert_eq!(read(&mut set, 2, 0, &dir.path().join("none")).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(budget.used(), 1);
        set.remove(&1);
        assert_eq!((set.held(), budget.used()), (0, 0));
        // The budget is shared: a second set gets what the first gave back.
        let mut other = HeldFiles::new(budget.clone(), OnStale::Reopen);
        read(&mut other, 9, 0, &b).unwrap();
        read(&mut set, 1, 0, &a).unwrap();
        assert_eq!((other.held(), set.held(), budget.used()), (1, 0, 1));
    }

    #[test]
    fn a_new_key_drops_the_old_ones_exactly() {
        // The files of a VM (key: its pid) are closed with the scrape that lists it under a
        // new pid, and only those.
        let dir = tempfile::tempdir().unwrap();
        for pid in [100, 200, 300] {
            std::fs::create_dir_all(dir.path().join(format!("proc/{pid}"))).unwrap();
            std::fs::write(dir.path().join(format!("proc/{pid}/stat")), format!("stat of {pid}")).unwrap();
        }
        let budget = FdBudget::new(100);
        let mut set = HeldFiles::new(budget.clone(), OnStale::Reopen);
        let path = |pid: u32| dir.path().join(format!("proc/{pid}/stat"));
        for pid in [100, 200] {
            assert_eq!(read(&mut set, pid, 0, &path(pid)).unwrap(), format!("stat of {pid}"));
        }
        assert_eq!(budget.used(), 2);
        // VM 1 restarted: pid 100 is now 300.
        let listed = [200, 300];
        set.retain(|p| listed.contains(p));
        assert_eq!((set.held(), budget.used()), (1, 1));
        assert_eq!(read(&mut set, 300, 0, &path(300)).unwrap(), "stat of 300");
        assert_eq!((set.held(), budget.used()), (2, 2));
        set.retain(|_| false);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn replaced_and_removed_fixture_files() {
        // A regular file replaced by another inode (rename) or removed keeps reading through a
        // held descriptor: on procfs and kernfs only the object can go, and its files fail then
        // (the tests below). A fixture VM that stops leaves the VM list, which drops its files.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stat");
        std::fs::write(&f, "old").unwrap();
        let mut set = HeldFiles::new(FdBudget::new(10), OnStale::Reopen);
        assert_eq!(read(&mut set, 1, 0, &f).unwrap(), "old");
        std::fs::write(dir.path().join("new"), "new").unwrap();
        std::fs::rename(dir.path().join("new"), &f).unwrap();
        assert_eq!(read(&mut set, 1, 0, &f).unwrap(), "old");
        set.retain(|_| false);
        assert_eq!(read(&mut set, 1, 0, &f).unwrap(), "new");
        std::fs::remove_file(&f).unwrap();
        set.remove(&1);
        assert_eq!(read(&mut set, 1, 0, &f).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(set.held(), 0);
    }

    /// A child process, killed and reaped when dropped.
    struct Kid(Child);

    impl Kid {
        /// `sh -c script` (a script that forks nothing, so killing sh ends it), or `sleep` alone.
        fn spawn(script: &str) -> Self {
            match script.strip_prefix("sleep ") {
                Some(secs) => Self(Command::new("sleep").arg(secs).spawn().unwrap()),
                None => Self(Command::new("sh").args(["-c", script]).spawn().unwrap()),
            }
        }
        fn pid(&self) -> u32 {
            self.0.id()
        }
        fn end(mut self) {
            self.0.kill().unwrap();
            self.0.wait().unwrap();
        }
    }

    impl Drop for Kid {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// user + system ticks of a stat line.
    fn ticks(stat: &str) -> Duration {
        let c = parse_stat(stat.as_bytes(), 100).unwrap();
        c.user + c.system
    }

    #[test]
    fn held_proc_files_read_fresh_values() {
        let busy = Kid::spawn("while :; do :; done");
        let mut set = HeldFiles::new(FdBudget::new(10), OnStale::Reopen);
        let path = PathBuf::from(format!("/proc/{}/stat", busy.pid()));
        let first = ticks(&read(&mut set, 1, 0, &path).unwrap());
        assert_eq!(set.held(), 1);
        let start = Instant::now();
        let mut later = first;
        while later == first && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
            later = ticks(&read(&mut set, 1, 0, &path).unwrap());
        }
        assert!(later > first, "CPU time of a busy child through a held stat: {first:?} then {later:?}");
        // status and io through held files too (both regenerated on every read).
        let status_path = PathBuf::from(format!("/proc/{}/status", busy.pid()));
        assert!(read(&mut set, 1, 1, &status_path).unwrap().contains("voluntary_ctxt_switches"));
        assert_eq!(set.held(), 2);
    }

    #[test]
    fn a_held_proc_file_of_an_exited_process_tells_gone_from_replaced() {
        // A fixture root whose proc/7 is a link to a real process: retargeting it stands in
        // for a new process that got the same pid.
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("7");
        let first = Kid::spawn("sleep 1000");
        symlink(format!("/proc/{}", first.pid()), &link).unwrap();
        let stat = link.join("stat");
        let pid_of = |s: &str| s.split(' ').next().unwrap().parse::<u32>().unwrap();

        let mut reopen = HeldFiles::new(FdBudget::new(10), OnStale::Reopen);
        let mut fail = HeldFiles::new(FdBudget::new(10), OnStale::Fail);
        assert_eq!(pid_of(&read(&mut reopen, 7, 0, &stat).unwrap()), first.pid());
        read(&mut reopen, 7, 1, &link.join("status")).unwrap();
        assert_eq!(pid_of(&read(&mut fail, 7, 0, &stat).unwrap()), first.pid());
        let first_pid = first.pid();
        first.end();

        // Replaced: the held file fails with ESRCH, the path names another process now.
        let second = Kid::spawn("sleep 1000");
        std::fs::remove_file(&link).unwrap();
        symlink(format!("/proc/{}", second.pid()), &link).unwrap();
        assert_eq!(pid_of(&read(&mut reopen, 7, 0, &stat).unwrap()), second.pid());
        assert_eq!(reopen.held(), 1, "the exited process's other files are dropped with it");
        // OnStale::Fail reports the ESRCH and holds nothing of the key any more.
        let e = read(&mut fail, 7, 0, &stat).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "{e}");
        assert_eq!(fail.held(), 0);
        assert_ne!(first_pid, second.pid());

        // Gone: ESRCH on the held file, then NotFound by path.
        second.end();
        std::fs::remove_file(&link).unwrap();
        assert_eq!(read(&mut reopen, 7, 0, &stat).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(reopen.held(), 0);
    }

    #[test]
    fn raising_the_descriptor_limit() {
        let (soft, hard) = nofile_limit().unwrap();
        let (before, after) = raise_nofile_limit().unwrap();
        assert_eq!((before, after), (soft, hard.max(soft)));
        assert_eq!(nofile_limit().unwrap().0, after);
        assert!(FdBudget::from_rlimit().max <= 65536);
    }
}

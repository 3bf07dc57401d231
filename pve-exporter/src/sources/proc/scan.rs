//! Finding the QEMU processes in /proc, once per scrape, without listing /proc and reading
//! every process's cmdline every time.
//!
//! A process's verdict ("QEMU, with this command line, executable and owner" or "not QEMU")
//! only changes when it execs another program or changes its uids; a new process is a fork,
//! and a process that ends is an exit. The kernel's process events ([`crate::sources::proc::events`])
//! report all four. So the first scan lists
//! /proc (after subscribing: nothing started in between is missed) and reads every cmdline;
//! each later scan applies the events queued since: a new or exec'd process has its cmdline
//! read, an exited one is dropped, and nothing else is touched. When events were lost (the
//! queue overflowed) the next scan lists /proc again, keeping the verdicts of processes the
//! events did not name, keyed by pid and the inode number `/proc/<pid>` has in the listing (a
//! new process under a reused pid gets a new inode).
//!
//! Without the events (no CAP_NET_ADMIN, a kernel without CONFIG_PROC_EVENTS) or when /proc
//! below the host root is not the real procfs (a fixture tree), nothing is kept and every
//! cmdline is read on every scan, as before.

use std::{collections::HashMap, io, os::unix::fs::DirEntryExt, sync::Arc};

use crate::{
    host::HostRoot,
    sources::{
        proc::events::{Change, ProcEvents},
        proc::process::{QemuProcess, is_qemu_binary, parse_cmdline, parse_qemu_cmdline, parse_status_uids},
    },
};

/// procfs' `statfs` magic.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// The /proc scanner with its verdict cache. Long-lived (one per daemon).
pub struct ProcScanner {
    events: Option<ProcEvents>,
    /// pid -> (inode of /proc/<pid> when listed, 0 when learnt from an event; the QEMU process
    /// or None for "not QEMU").
    known: HashMap<u32, (u64, Option<Arc<QemuProcess>>)>,
    /// Whether `known` holds every process: a listing was taken and no event was lost since.
    complete: bool,
    /// Processes whose cmdline could not be read for another reason than their exit: read
    /// again by the next scan.
    retry: Vec<u32>,
    /// Why the last of them could not be read.
    retry_why: String,
    buf: Vec<u8>,
}

/// How the last scan went (for tests and the debug log).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub processes: usize,
    /// cmdlines read in this scan (the others came from the cache).
    pub read: usize,
    /// Whether this scan listed /proc (else it applied process events).
    pub listed: bool,
}

impl ProcScanner {
    /// A scanner for `host`; keeps verdicts only where /proc below the root is the real procfs
    /// and process events can be had.
    pub fn new(host: &HostRoot) -> Self {
        let events = if is_procfs(host) {
            let events = ProcEvents::open()
                .map_err(|e| log::info!("process events unavailable ({e}): every cmdline is read on every scrape"))
                .ok();
            if let Some(ev) = &events {
                let (bytes, forced) = ev.queue();
                if forced {
                    log::debug!("process events subscribed (queue {bytes} bytes): /proc is listed once, then followed");
                } else {
                    // Without CAP_NET_ADMIN (SO_RCVBUFFORCE) the queue is net.core.rmem_max's.
                    log::info!(
                        "process events subscribed, but the queue is limited to {bytes} bytes by net.core.rmem_max \
                         (no CAP_NET_ADMIN): a busy host can overflow it between scrapes, which costs a /proc listing"
                    );
                }
            }
            events
        } else {
            None
        };
        Self {
            events,
            known: HashMap::new(),
            complete: false,
            retry: Vec::new(),
            retry_why: String::new(),
            buf: Vec::with_capacity(4096),
        }
    }

    /// How many processes of the last scan could not be read (not for their exit), and why
    /// the last of them could not: whether they are QEMU is not known until a read works.
    pub fn unread(&self) -> Option<(usize, &str)> {
        (!self.retry.is_empty()).then_some((self.retry.len(), self.retry_why.as_str()))
    }

    /// Whether verdicts are kept between scans.
    pub fn caching(&self) -> bool {
        self.events.is_some()
    }

    /// The QEMU processes now, by pid. Processes that exit while we look are skipped.
    pub fn scan(&mut self, host: &HostRoot) -> io::Result<(Vec<Arc<QemuProcess>>, ScanStats)> {
        // Drain before reading: an event after this is either seen by this scan's reads, or
        // drained by the next scan.
        let changed = self.events.as_mut().map(ProcEvents::drain);
        match changed {
            Some(changed) if !changed.lost && self.complete => return Ok(self.apply(host, changed.pids)),
            Some(changed) if !changed.lost => {
                for pid in changed.pids.keys() {
                    self.known.remove(pid);
                }
            }
            _ => self.known.clear(),
        }
        self.retry.clear();
        self.complete = self.events.is_some();
        let mut stats = ScanStats { listed: true, ..ScanStats::default() };
        let mut seen = HashMap::with_capacity(self.known.len());
        for entry in std::fs::read_dir(host.path("proc"))? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            stats.processes += 1;
            let ino = entry.ino();
            let verdict = match self.known.remove(&pid) {
                Some((i, v)) if i == ino => v,
                _ => {
                    stats.read += 1;
                    match self.classify(host, pid) {
                        Ok(v) => v,
                        Err(e) if crate::host::is_gone(&e) => continue, // exited while we looked
                        Err(e) => {
                            self.retry_why = e.to_string();
                            self.retry.push(pid);
                            continue;
                        }
                    }
                }
            };
            seen.insert(pid, (ino, verdict));
        }
        // Processes not listed any more are gone: `seen` holds exactly the live ones.
        self.known = seen;
        Ok((self.qemu_processes(), stats))
    }

    /// A scan from events alone: read the cmdline of each process that started or exec'd (and
    /// of those a read failed for last time), drop those that exited. (A process whose leader
    /// thread ends while other threads go on is reported as exited: QEMU does not do that, and
    /// the next listing after lost events would see such a process again.)
    fn apply(&mut self, host: &HostRoot, mut changes: HashMap<u32, Change>) -> (Vec<Arc<QemuProcess>>, ScanStats) {
        let mut stats = ScanStats::default();
        for pid in std::mem::take(&mut self.retry) {
            changes.entry(pid).or_insert(Change::Started);
        }
        for (pid, change) in changes {
            self.known.remove(&pid);
            if change == Change::Exited {
                continue;
            }
            stats.read += 1;
            match self.classify(host, pid) {
                Ok(v) => {
                    self.known.insert(pid, (0, v));
                }
                Err(e) if crate::host::is_gone(&e) => {} // exited by now: its exit event follows
                Err(e) => {
                    log::debug!("pid {pid}: cmdline: {e}; read again next scrape");
                    self.retry_why = e.to_string();
                    self.retry.push(pid);
                }
            }
        }
        stats.processes = self.known.len();
        (self.qemu_processes(), stats)
    }

    /// Shared, not copied: a command line holds a few dozen strings.
    fn qemu_processes(&self) -> Vec<Arc<QemuProcess>> {
        let mut out: Vec<Arc<QemuProcess>> = self.known.values().filter_map(|(_, v)| v.clone()).collect();
        out.sort_by_key(|p| p.pid);
        out
    }

    /// Read `pid`'s cmdline (into the reused buffer: no stat, no allocation per process) and
    /// tell whether it is QEMU: by argv[0], or by the executable it runs. For QEMU, also its
    /// executable and owner, which decide whether it is believed (`vm.rs`).
    ///
    /// Everything is read through one handle of `/proc/<pid>`: should the process exit and its
    /// pid be reused between two reads, the second read fails (ESRCH) instead of describing
    /// another process. The owner is read after the command line: a process that changed its
    /// owner before we read the command line shows the new owner (a change after it is a
    /// process event, and the next scan reads the process again).
    fn classify(&mut self, host: &HostRoot, pid: u32) -> io::Result<Option<Arc<QemuProcess>>> {
        let dir = ProcDir::open(host, pid)?;
        let n = crate::heldfile::pread_whole(&dir.open_file(c"cmdline")?, &mut self.buf)?;
        let args = parse_cmdline(&self.buf[..n]);
        let Some(argv0) = args.first() else { return Ok(None) }; // kernel threads
        let exe = dir.read_link(c"exe").ok();
        if !is_qemu_binary(argv0) && !exe.as_deref().is_some_and(is_qemu_binary) {
            return Ok(None);
        }
        let cmdline = parse_qemu_cmdline(&args);
        let n = crate::heldfile::pread_whole(&dir.open_file(c"status")?, &mut self.buf)?;
        let uids = parse_status_uids(&String::from_utf8_lossy(&self.buf[..n]));
        Ok(Some(Arc::new(QemuProcess { pid, cmdline, uids, exe })))
    }
}

/// An open `/proc/<pid>` directory: files below it are those of the process it was opened for.
struct ProcDir(std::os::fd::OwnedFd);

impl ProcDir {
    fn open(host: &HostRoot, pid: u32) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(host.path(format!("proc/{pid}")))?;
        Ok(Self(f.into()))
    }

    fn open_file(&self, name: &std::ffi::CStr) -> io::Result<std::fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: openat with our directory fd and a NUL-terminated name; the fd is owned at once.
        let fd = unsafe {
            libc::openat(self.0.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }

    fn read_link(&self, name: &std::ffi::CStr) -> io::Result<String> {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 4096];
        // SAFETY: readlinkat writes at most buf.len() bytes into buf.
        let n = unsafe { libc::readlinkat(self.0.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
    }
}

/// Whether the host root's `/proc` is procfs (not a fixture tree's plain files).
pub fn is_procfs(host: &HostRoot) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(host.path("proc").as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs is plain data; zeroed is valid, and statfs(2) fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    unsafe { libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type as i64 == PROC_SUPER_MAGIC }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (pid, cmdline) in [(10, "/usr/bin/kvm\0-id\x00100\0-name\0a\0"), (11, "/usr/sbin/sshd\0-D\0"), (12, "")] {
            let d = dir.path().join(format!("proc/{pid}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cmdline"), cmdline).unwrap();
            std::fs::write(d.join("status"), format!("Name:\tx\nPid:\t{pid}\nUid:\t0\t0\t0\t0\n")).unwrap();
        }
        dir
    }

    #[test]
    fn a_fixture_tree_is_read_every_time() {
        let dir = tree();
        let host = HostRoot::new(dir.path());
        let mut s = ProcScanner::new(&host);
        assert!(!s.caching(), "not procfs");
        let (procs, stats) = s.scan(&host).unwrap();
        assert_eq!(procs.iter().map(|p| p.pid).collect::<Vec<_>>(), [10]);
        assert_eq!(procs[0].cmdline.id.as_deref(), Some("100"));
        assert_eq!((procs[0].uids, procs[0].exe.as_deref()), (Some([0; 4]), None), "owner from status; no exe link");
        assert_eq!(stats, ScanStats { processes: 3, read: 3, listed: true });
        // An exec in a fixture: the next scan sees it.
        std::fs::write(dir.path().join("proc/11/cmdline"), "/usr/bin/qemu-system-x86_64\0-id\x00101\0").unwrap();
        let (procs, _) = s.scan(&host).unwrap();
        assert_eq!(procs.iter().map(|p| p.pid).collect::<Vec<_>>(), [10, 11]);
    }

    /// The real /proc (root: process events need CAP_NET_ADMIN): /proc is listed once, then a
    /// new process is read, one that execs QEMU's name is seen at the next scan, and its exit
    /// drops it, all without listing /proc again.
    #[test]
    fn real_proc_reads_only_what_changed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let host = HostRoot::new("/");
        let mut s = ProcScanner::new(&host);
        assert!(s.caching());
        let (_, first) = s.scan(&host).unwrap();
        assert_eq!(first.read, first.processes);
        assert!(first.listed);
        // A shell that sleeps, then execs a program whose argv[0] looks like QEMU.
        let mut child = std::process::Command::new("/bin/bash")
            .args(["-c", "sleep 0.3; exec -a /usr/bin/kvm sleep 30"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let (procs, stats) = s.scan(&host).unwrap();
        assert!(!stats.listed && stats.read < stats.processes / 2, "{stats:?}: from events, not a listing");
        assert!(!procs.iter().any(|p| p.pid == pid), "not QEMU yet");
        let mut found = None;
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let (procs, stats) = s.scan(&host).unwrap();
            assert!(!stats.listed);
            if let Some(p) = procs.iter().find(|p| p.pid == pid) {
                found = Some(p.clone());
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let found = found.unwrap_or_else(|| panic!("the exec of pid {pid} was not seen"));
        // What decides whether it is believed: it runs `sleep`, not QEMU, and is root's.
        assert!(found.exe.as_deref().is_some_and(|e| e.ends_with("/sleep")), "{found:?}");
        assert!(found.owned_by(&[0]), "{found:?}");
        // Gone: no longer reported, and its verdict is dropped.
        let (procs, stats) = s.scan(&host).unwrap();
        assert!(!procs.iter().any(|p| p.pid == pid));
        assert!(!s.known.contains_key(&pid));
        assert!(!stats.listed);
        // What the events built is what a listing finds.
        let mut fresh = ProcScanner::new(&host);
        let pids = |s: &ProcScanner| s.known.keys().copied().collect::<std::collections::BTreeSet<u32>>();
        fresh.scan(&host).unwrap();
        s.scan(&host).unwrap();
        let (a, b) = (pids(&s), pids(&fresh));
        // Processes of other tests may start or end between the two scans: compare with slack.
        assert!(a.symmetric_difference(&b).count() <= 5, "events: {a:?}\nlisting: {b:?}");
    }
}

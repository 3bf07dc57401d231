//! Finding the QEMU processes in /proc, once per scrape, without listing /proc and reading
//! every process's cmdline every time.
//!
//! A process's verdict ("QEMU, with this command line" or "not QEMU") only changes when it
//! execs another program; a new process is a fork, and a process that ends is an exit. The
//! kernel's process events ([`super::proc_events`]) report all three. So the first scan lists
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
        proc_events::{Change, ProcEvents},
        procfs::{QemuProcess, is_qemu_binary, parse_cmdline, parse_qemu_cmdline},
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
            ProcEvents::open()
                .map_err(|e| log::info!("process events unavailable ({e}): every cmdline is read on every scrape"))
                .ok()
        } else {
            None
        };
        Self { events, known: HashMap::new(), complete: false, retry: Vec::new(), buf: Vec::with_capacity(4096) }
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
                        Err(_) => {
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
    /// tell whether it is QEMU: by argv[0], or by the executable it runs.
    fn classify(&mut self, host: &HostRoot, pid: u32) -> io::Result<Option<Arc<QemuProcess>>> {
        let n = crate::heldfile::read_path(&host.path(format!("proc/{pid}/cmdline")), &mut self.buf)?;
        let args = parse_cmdline(&self.buf[..n]);
        let Some(argv0) = args.first() else { return Ok(None) }; // kernel threads
        let qemu = is_qemu_binary(argv0)
            || std::fs::read_link(host.path(format!("proc/{pid}/exe")))
                .is_ok_and(|p| is_qemu_binary(&p.to_string_lossy()));
        Ok(qemu.then(|| Arc::new(QemuProcess { pid, cmdline: parse_qemu_cmdline(&args) })))
    }
}

fn is_procfs(host: &HostRoot) -> bool {
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
        let mut found = false;
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let (procs, stats) = s.scan(&host).unwrap();
            assert!(!stats.listed);
            if procs.iter().any(|p| p.pid == pid) {
                found = true;
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "the exec of pid {pid} was not seen");
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

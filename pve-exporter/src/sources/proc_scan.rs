//! Finding the QEMU processes in /proc, once per scrape, without reading every process's
//! cmdline every time.
//!
//! A process's verdict ("QEMU, with this command line" or "not QEMU") only changes when it
//! execs another program, and a new process is a fork. So each verdict is kept, keyed by pid
//! and the inode number `/proc/<pid>` has in the directory listing (a new process under a reused
//! pid gets a new inode), until the kernel's process events ([`super::proc_events`]) report a
//! fork or exec of that pid, or report that events were lost (then every verdict is dropped).
//! A scan is then one listing of /proc plus a cmdline read for new processes only.
//!
//! Without the events (no CAP_NET_ADMIN, a kernel without CONFIG_PROC_EVENTS) or when /proc
//! below the host root is not the real procfs (a fixture tree), nothing is kept and every
//! cmdline is read on every scan, as before.

use std::{collections::HashMap, io, os::unix::fs::DirEntryExt};

use crate::{
    host::HostRoot,
    sources::{
        proc_events::ProcEvents,
        procfs::{QemuProcess, is_qemu_binary, parse_cmdline, parse_qemu_cmdline},
    },
};

/// procfs' `statfs` magic.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// The /proc scanner with its verdict cache. Long-lived (one per daemon).
pub struct ProcScanner {
    events: Option<ProcEvents>,
    /// pid -> (inode of /proc/<pid>, the QEMU process or None for "not QEMU").
    known: HashMap<u32, (u64, Option<QemuProcess>)>,
    buf: Vec<u8>,
}

/// How the last scan went (for tests and the debug log).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub processes: usize,
    /// cmdlines read in this scan (the others came from the cache).
    pub read: usize,
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
        Self { events, known: HashMap::new(), buf: Vec::with_capacity(4096) }
    }

    /// Whether verdicts are kept between scans.
    pub fn caching(&self) -> bool {
        self.events.is_some()
    }

    /// The QEMU processes now, by pid. Processes that exit while we look are skipped.
    pub fn scan(&mut self, host: &HostRoot) -> io::Result<(Vec<QemuProcess>, ScanStats)> {
        // Drain before listing: a fork or exec after this is either seen by this scan's read,
        // or drained by the next scan.
        match self.events.as_mut().map(ProcEvents::drain) {
            Some(changed) if changed.lost => self.known.clear(),
            Some(changed) => {
                for pid in &changed.pids {
                    self.known.remove(pid);
                }
            }
            None => self.known.clear(),
        }
        let mut stats = ScanStats::default();
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
                        Err(_) => continue, // exited while we looked
                    }
                }
            };
            seen.insert(pid, (ino, verdict));
        }
        // Processes not listed any more are gone: `seen` holds exactly the live ones.
        self.known = seen;
        let mut out: Vec<QemuProcess> = self.known.values().filter_map(|(_, v)| v.clone()).collect();
        out.sort_by_key(|p| p.pid);
        Ok((out, stats))
    }

    /// Read `pid`'s cmdline (into the reused buffer: no stat, no allocation per process) and
    /// tell whether it is QEMU: by argv[0], or by the executable it runs.
    fn classify(&mut self, host: &HostRoot, pid: u32) -> io::Result<Option<QemuProcess>> {
        let n = crate::heldfile::read_path(&host.path(format!("proc/{pid}/cmdline")), &mut self.buf)?;
        let args = parse_cmdline(&self.buf[..n]);
        let Some(argv0) = args.first() else { return Ok(None) }; // kernel threads
        let qemu = is_qemu_binary(argv0)
            || std::fs::read_link(host.path(format!("proc/{pid}/exe")))
                .is_ok_and(|p| is_qemu_binary(&p.to_string_lossy()));
        Ok(qemu.then(|| QemuProcess { pid, cmdline: parse_qemu_cmdline(&args) }))
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
        assert_eq!(stats, ScanStats { processes: 3, read: 3 });
        // An exec in a fixture: the next scan sees it.
        std::fs::write(dir.path().join("proc/11/cmdline"), "/usr/bin/qemu-system-x86_64\0-id\x00101\0").unwrap();
        let (procs, _) = s.scan(&host).unwrap();
        assert_eq!(procs.iter().map(|p| p.pid).collect::<Vec<_>>(), [10, 11]);
    }

    /// The real /proc (root: process events need CAP_NET_ADMIN): processes are read once, a
    /// new process is read, and one that execs QEMU's name is seen at the next scan.
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
        // A shell that sleeps, then execs a program whose argv[0] looks like QEMU.
        let mut child = std::process::Command::new("/bin/bash")
            .args(["-c", "sleep 0.3; exec -a /usr/bin/kvm sleep 30"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let (procs, stats) = s.scan(&host).unwrap();
        assert!(stats.read < stats.processes / 2, "{stats:?}: most verdicts come from the cache");
        assert!(!procs.iter().any(|p| p.pid == pid), "not QEMU yet");
        let mut found = false;
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            if s.scan(&host).unwrap().0.iter().any(|p| p.pid == pid) {
                found = true;
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "the exec of pid {pid} was not seen");
        // Gone: no longer listed, and its verdict is dropped.
        let (procs, _) = s.scan(&host).unwrap();
        assert!(!procs.iter().any(|p| p.pid == pid));
        assert!(!s.known.contains_key(&pid));
    }
}

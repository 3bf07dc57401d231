//! The one configurable root under which every host path is read, so tests and the demo can
//! point the daemon at a fixture tree (`--root`), and small helpers for reading below it.

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

#[derive(Debug, Clone)]
pub struct HostRoot {
    root: PathBuf,
}

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `rel` is a host path with or without its leading `/` (`proc/1/stat` or `/proc/1/stat`).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        self.root.join(rel)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Read a whole (small) file below the root.
    pub fn read(&self, rel: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        fs::read(self.path(rel))
    }

    pub fn read_to_string(&self, rel: impl AsRef<Path>) -> io::Result<String> {
        fs::read_to_string(self.path(rel))
    }
}

/// One read of a file: its contents, or the error (kept as kind and text: io::Error is not Clone).
type FileRead = Result<Arc<Vec<u8>>, (io::ErrorKind, String)>;

/// Host-wide files read at most once per collection: several collectors need the same file
/// (/proc/meminfo: MemTotal for the VMs, swap for the node), and each reads it through here.
/// Made anew for every collection, so nothing is ever stale.
#[derive(Debug)]
pub struct ScrapeFiles<'a> {
    host: &'a HostRoot,
    read: Mutex<HashMap<&'static str, FileRead>>,
}

impl<'a> ScrapeFiles<'a> {
    pub fn new(host: &'a HostRoot) -> Self {
        Self { host, read: Mutex::default() }
    }

    /// The contents of `rel` below the host root, read on first use in this collection.
    pub fn read(&self, rel: &'static str) -> io::Result<Arc<Vec<u8>>> {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let r =
            read.entry(rel).or_insert_with(|| self.host.read(rel).map(Arc::new).map_err(|e| (e.kind(), e.to_string())));
        r.clone().map_err(|(kind, msg)| io::Error::new(kind, msg))
    }
}

/// Whether an I/O error means "the thing is gone" (a process exited, a VM stopped) rather than
/// a failure worth reporting.
pub fn is_gone(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound) || e.raw_os_error() == Some(libc::ESRCH)
}

/// Run blocking `f` on its own thread and give up waiting after `timeout`.
///
/// For reads that can hang (pmxcfs is a FUSE file system): the scrape goes on without the
/// result. A hung thread is left behind, so callers keep at most one call in flight per
/// source (see [`BlockingGate`]).
pub fn call_with_timeout<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    thread::Builder::new().name(format!("io-{what}")).spawn(move || {
        let _ = tx.send(f());
    })?;
    rx.recv_timeout(timeout)
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{what}: no answer within {timeout:?}")))
}

/// At most one call in flight per source: while an earlier call is still hung, new calls fail
/// at once instead of piling up threads.
#[derive(Debug, Default, Clone)]
pub struct BlockingGate {
    busy: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BlockingGate {
    pub fn call<T: Send + 'static>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        use std::sync::atomic::Ordering;
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{what}: an earlier call has not returned yet"),
            ));
        }
        let busy = self.busy.clone();
        call_with_timeout(what, timeout, move || {
            let r = f();
            busy.store(false, Ordering::Release);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_files_read_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "one").unwrap();
        let host = HostRoot::new(dir.path());
        let files = ScrapeFiles::new(&host);
        assert_eq!(files.read("f").unwrap().as_slice(), b"one");
        std::fs::write(dir.path().join("f"), "two").unwrap();
        assert_eq!(files.read("f").unwrap().as_slice(), b"one", "one read per collection");
        assert_eq!(files.read("missing").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(ScrapeFiles::new(&host).read("f").unwrap().as_slice(), b"two");
    }

    #[test]
    fn paths_stay_below_the_root() {
        let h = HostRoot::new("/tmp/x");
        assert_eq!(h.path("/proc/1/stat"), PathBuf::from("/tmp/x/proc/1/stat"));
        assert_eq!(h.path("proc/1/stat"), PathBuf::from("/tmp/x/proc/1/stat"));
    }

    #[test]
    fn gate_refuses_while_a_call_hangs() {
        let gate = BlockingGate::default();
        let (tx, rx) = mpsc::channel::<()>();
        let r = gate.call("slow", Duration::from_millis(20), move || {
            let _ = rx.recv();
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        let r = gate.call("again", Duration::from_millis(20), || 1);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        tx.send(()).unwrap();
        // Once the hung call returns, the gate opens again.
        let mut ok = false;
        for _ in 0..100 {
            if let Ok(v) = gate.call("after", Duration::from_secs(1), || 7) {
                assert_eq!(v, 7);
                ok = true;
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        assert!(ok);
    }
}

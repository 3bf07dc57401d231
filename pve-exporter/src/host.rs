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
///
/// Calls run on the gate's own worker thread, started on first use and kept while calls keep
/// coming (it ends after [`GATE_IDLE`] without one): a scrape pays a channel send instead of a
/// thread start per call. A worker stuck in a hung call keeps the gate busy; a call that panics
/// fails alone and the worker goes on.
#[derive(Debug, Default, Clone)]
pub struct BlockingGate {
    inner: Arc<GateInner>,
}

/// How long an idle gate worker waits for the next call before it ends.
pub const GATE_IDLE: Duration = Duration::from_secs(120);

pub type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, Default)]
struct GateInner {
    busy: std::sync::atomic::AtomicBool,
    worker: Worker,
}

/// A thread kept for jobs that come again and again (one or a few per scrape): a job costs a
/// channel send instead of a thread start. The thread is started on the first job and ends
/// after [`GATE_IDLE`] without one; the next job starts another. Jobs run one after another;
/// one that panics fails alone and the thread goes on.
#[derive(Debug, Default)]
pub struct Worker {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Worker {
    /// Hand `job` to the thread, starting one (named `io-<what>`) if there is none or it ended.
    pub fn run(&self, what: &str, job: Job) -> io::Result<()> {
        let mut worker = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let job = match worker.as_ref() {
            Some(w) => match w.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(job)) => job, // the thread ended (idle)
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new().name(format!("io-{what}")).spawn(move || {
            while let Ok(job) = rx.recv_timeout(GATE_IDLE) {
                // A panicking job loses its answer (the caller sees no reply), not the thread.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })?;
        // A fresh thread's channel is open: this send cannot fail.
        let _ = tx.send(job);
        *worker = Some(tx);
        Ok(())
    }
}

/// Clears the gate's busy flag when the call ends, also by a panic.
struct Idle(Arc<GateInner>);

impl Drop for Idle {
    fn drop(&mut self) {
        self.0.busy.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl BlockingGate {
    /// Run `f` on the gate's worker and wait for its answer at most `timeout`.
    pub fn call<T: Send + 'static>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let rx = self.start(what, f)?;
        rx.recv_timeout(timeout)
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{what}: no answer within {timeout:?}")))
    }

    /// Start `f` on the gate's worker without waiting: the answer comes on the receiver. For
    /// several gates asked at once, each waited for until one common deadline.
    pub fn start<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<mpsc::Receiver<T>> {
        use std::sync::atomic::Ordering;
        if self.inner.busy.swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{what}: an earlier call has not returned yet"),
            ));
        }
        let idle = Idle(self.inner.clone());
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let r = f();
            drop(idle);
            let _ = tx.send(r);
        });
        self.inner.worker.run(what, job)?;
        Ok(rx)
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
    fn gate_reuses_its_worker_and_survives_a_panic() {
        let gate = BlockingGate::default();
        let name = || thread::current().id();
        let a = gate.call("w", Duration::from_secs(5), name).unwrap();
        let b = gate.call("w", Duration::from_secs(5), name).unwrap();
        assert_eq!(a, b, "one worker for successive calls");
        assert_ne!(a, thread::current().id());
        let r = gate.call("boom", Duration::from_secs(5), || -> u32 { panic!("bad input") });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut, "the reply never comes");
        // (The panic message above in the test output is expected.)
        // The panic cleared the busy flag and the worker goes on.
        let c = gate.call("w", Duration::from_secs(5), name).unwrap();
        assert_eq!(c, a);
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

//! The one configurable root under which every host path is read, so tests and the demo can
//! point the daemon at a fixture tree (`--root`), and small helpers for reading below it.

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use crate::deadline::{self, Backoff, Verdict};

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

    /// Whether `rel` below the root is this machine's own `/<rel>` (the root is `/`, or a test
    /// tree links it there): what it names (pids, interfaces) are this process's too. A fixture
    /// tree's copy is not.
    pub fn is_own(&self, rel: &str) -> bool {
        let own = Path::new("/").join(rel.trim_start_matches('/'));
        fs::canonicalize(self.path(rel)).is_ok_and(|p| p == own)
    }

    /// Read a whole (small) file below the root, at most [`MAX_FILE`] bytes.
    pub fn read(&self, rel: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        read_capped(&self.path(rel), MAX_FILE)
    }

    /// Read a whole (small) text file below the root, at most [`MAX_FILE`] bytes.
    pub fn read_to_string(&self, rel: impl AsRef<Path>) -> io::Result<String> {
        read_string_capped(&self.path(rel), MAX_FILE)
    }
}

/// The most the daemon reads of one host file. The largest it reads are `/proc/self/mountinfo`
/// (about 150 bytes a mount: a host with 20,000 mounts stays under 4 MiB), libvirt's domain
/// status XML and PVE's files, which pmxcfs holds to 1 MiB each; a file larger than this is not
/// one of those (a runaway or hostile writer), and reading it whole would cost memory and time
/// for every scrape.
pub const MAX_FILE: u64 = 16 << 20;

/// Read a whole file, failing (`InvalidData`, naming the cap) if it holds more than `cap` bytes
/// instead of reading on: a file that grows without end, or a huge one, costs one bounded read.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    read_open_capped(&fs::File::open(path)?, path, cap)
}

/// [`read_capped`] of a file already open (`path` names it in errors), from where it stands.
pub fn read_open_capped(f: &fs::File, path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    use io::Read;
    let mut buf = Vec::new();
    // One byte past the cap tells "exactly at the cap" from "over it".
    f.take(cap.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(too_large(path, cap));
    }
    Ok(buf)
}

/// [`read_capped`] as text (UTF-8, as `fs::read_to_string` checks it).
pub fn read_string_capped(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, cap)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{}: not UTF-8 text", path.display())))
}

/// The error of a file over its size cap.
pub fn too_large(path: &Path, cap: u64) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: larger than {} bytes, not read", path.display(), cap))
}

/// One read of a file: its contents, or the error (kept as kind and text: io::Error is not Clone).
type FileRead = Result<Arc<Vec<u8>>, (io::ErrorKind, String)>;

/// Host-wide files read at most once per collection: several collectors need the same file
/// (/proc/meminfo: MemTotal for the VMs, swap for the node), and each reads it through here.
/// Made anew for every collection, so nothing is ever stale.
#[derive(Debug)]
pub struct ScrapeFiles {
    host: HostRoot,
    read: Mutex<HashMap<&'static str, FileRead>>,
}

impl ScrapeFiles {
    pub fn new(host: &HostRoot) -> Self {
        Self { host: host.clone(), read: Mutex::default() }
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

/// The message of a caught panic (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// One thread per source, and no piling up behind a hung call: calls run one after another on
/// the gate's worker (collectors running side by side queue up), but while a call has run past
/// its limit (hung), new calls fail at once. A call that took longer than its limit puts the gate
/// under back-off ([`Backoff`]): the following calls fail at once (they cost their series, not
/// time) until a try is due, which runs in the background, not waited on; the gate opens again
/// when a try answers within the limit.
///
/// Calls run on the gate's own worker thread, started on first use and kept while calls keep
/// coming (it ends after [`GATE_IDLE`] without one): a scrape pays a channel send instead of a
/// thread start per call. A worker stuck in a hung call keeps the gate busy, so a hung mount
/// pins one thread per gate, never more; a call that panics fails alone and the worker goes on.
#[derive(Debug, Default, Clone)]
pub struct BlockingGate {
    inner: Arc<GateInner>,
}

/// How long an idle gate worker waits for the next call before it ends.
pub const GATE_IDLE: Duration = Duration::from_secs(120);

pub type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, Default)]
struct GateInner {
    state: Mutex<GateState>,
    worker: Worker,
}

#[derive(Debug, Default)]
struct GateState {
    /// Calls handed to the worker and not finished.
    inflight: usize,
    /// The call running now: when it started and its limit.
    running: Option<(Instant, Duration)>,
    /// A caller gave up waiting for a call still in flight: new calls must not queue behind it.
    abandoned: bool,
    backoff: Backoff,
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

/// Marks the call finished when it ends, also by a panic.
struct Idle(Arc<GateInner>);

impl Drop for Idle {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        st.inflight = st.inflight.saturating_sub(1);
        st.running = None;
        if st.inflight == 0 {
            st.abandoned = false;
        }
    }
}

/// A call started on a gate: wait for its answer with [`Pending::wait`]. A caller that gives up
/// marks the gate, so that later calls fail at once instead of queueing behind the slow one.
pub struct Pending<T> {
    /// The answer, or the message of the panic that ended the call.
    rx: mpsc::Receiver<Result<T, String>>,
    gate: Arc<GateInner>,
    what: String,
    limit: Duration,
}

impl<T> Pending<T> {
    /// The answer, if it comes by `until`.
    pub fn wait(self, until: Instant) -> io::Result<T> {
        let left = until.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(Ok(t)) => Ok(t),
            // A bug, not a hang: say so, or it reads as the source not answering.
            Ok(Err(panic)) => Err(io::Error::other(format!("{}: the read panicked (a bug): {panic}", self.what))),
            Err(_) => {
                let mut st = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.inflight > 0 {
                    st.abandoned = true;
                }
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{}: no answer within {:?}", self.what, self.limit),
                ))
            }
        }
    }
}

impl BlockingGate {
    /// Run `f` on the gate's worker and wait for its answer at most `limit`, and never past
    /// the deadline of the collection this thread works for ([`crate::deadline::current`]).
    pub fn call<T: Send + 'static>(
        &self,
        what: &str,
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        self.start(what, limit, f)?.wait(Instant::now() + deadline::cap(limit))
    }

    /// Start `f` on the gate's worker without waiting: the answer comes on the receiver. For
    /// several gates asked at once, each waited for until one common deadline. `limit` is the
    /// time the call may take before the gate counts it as timed out.
    pub fn start<T: Send + 'static>(
        &self,
        what: &str,
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<Pending<T>> {
        let now = Instant::now();
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let overrun = st.running.is_some_and(|(started, limit)| now.saturating_duration_since(started) > limit);
        if st.inflight > 0 && (st.abandoned || overrun) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{what}: an earlier call has not returned yet"),
            ));
        }
        let probe = match st.backoff.verdict(now) {
            Verdict::Go => false,
            Verdict::Wait(_) => {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, format!("{what}: {}", st.backoff.describe(now))));
            }
            // One try at a time.
            Verdict::Retry if st.inflight > 0 => {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, format!("{what}: {}", st.backoff.describe(now))));
            }
            Verdict::Retry => true,
        };
        st.inflight += 1;
        let failures = st.backoff.failures();
        drop(st);
        let idle = Idle(self.inner.clone());
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let t = Instant::now();
            idle.0.state.lock().unwrap_or_else(|p| p.into_inner()).running = Some((t, limit));
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_message(&p));
            let took = t.elapsed();
            {
                let mut st = idle.0.state.lock().unwrap_or_else(|p| p.into_inner());
                if took > limit {
                    st.backoff.failed(Instant::now());
                } else {
                    st.backoff.recovered();
                }
            }
            drop(idle);
            // A try in the background has no one waiting: its answer only reopens the gate.
            let _ = tx.send(r);
        });
        self.inner.worker.run(what, job)?;
        if probe {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{what}: timed out {failures} time(s) in a row: being tried again in the background"),
            ));
        }
        Ok(Pending { rx, gate: self.inner.clone(), what: what.to_string(), limit })
    }

    /// How long the running call has been running, when it runs past its limit or its caller
    /// gave up on it (it hangs): what `/healthz` reports.
    pub fn hung(&self) -> Option<Duration> {
        let st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let (started, limit) = st.running?;
        let running = started.elapsed();
        (running > limit || st.abandoned).then_some(running)
    }

    /// Whether a call is queued or running (hung, when it stays so).
    pub fn busy(&self) -> bool {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner()).inflight > 0
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
    fn reads_stop_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        std::fs::write(dir.path().join("at"), vec![b'a'; 4096]).unwrap();
        std::fs::write(dir.path().join("over"), vec![b'a'; 4097]).unwrap();
        assert_eq!(read_capped(&dir.path().join("at"), 4096).unwrap().len(), 4096);
        let e = read_capped(&dir.path().join("over"), 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("larger than 4096 bytes"), "{e}");
        // A file that never ends (here /dev/zero) costs one bounded read, not all memory.
        let e = read_capped(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(read_string_capped(&dir.path().join("over"), 4096).is_err());
        std::fs::write(dir.path().join("bin"), [0xff, 0xfe]).unwrap();
        assert_eq!(host.read_to_string("bin").unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(host.read("at").unwrap().len(), 4096);
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
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Other, "a panic is not a hang: {e}");
        assert!(e.to_string().contains("panicked (a bug): bad input"), "{e}");
        // (The panic message above in the test output is expected.)
        // The panic cleared the busy flag and the worker goes on.
        let c = gate.call("w", Duration::from_secs(5), name).unwrap();
        assert_eq!(c, a);
    }

    #[test]
    fn gate_refuses_while_a_call_hangs_then_backs_off() {
        let gate = BlockingGate::default();
        let (tx, rx) = mpsc::channel::<()>();
        let r = gate.call("slow", Duration::from_millis(20), move || {
            let _ = rx.recv();
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // Past its limit: a new call does not queue behind it.
        thread::sleep(Duration::from_millis(20));
        let r = gate.call("again", Duration::from_millis(20), || 1);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // It returns well past its limit.
        thread::sleep(Duration::from_millis(50));
        tx.send(()).unwrap();
        let settle = |gate: &BlockingGate| {
            for _ in 0..1000 {
                if !gate.busy() {
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
            panic!("the call did not end");
        };
        settle(&gate);
        // It took longer than its limit: under back-off, not waited on.
        let e = gate.call("after", Duration::from_secs(1), || 7).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains("tried again in"), "{e}");
        thread::sleep(crate::deadline::BACKOFF_FIRST);
        // The try that is due runs in the background; the caller does not wait for it.
        let e = gate.call("probe", Duration::from_secs(1), || 7).unwrap_err();
        assert!(e.to_string().contains("in the background"), "{e}");
        settle(&gate);
        // It answered within its limit: the gate is open again.
        assert_eq!(gate.call("open", Duration::from_secs(1), || 7).unwrap(), 7);
    }

    #[test]
    fn calls_from_collectors_side_by_side_queue_up() {
        let gate = BlockingGate::default();
        let (tx, rx) = mpsc::channel::<()>();
        let first = gate.start("first", Duration::from_secs(60), move || {
            let _ = rx.recv();
            1
        });
        // Queued behind a call within its limit, not refused.
        let second = gate.start("second", Duration::from_secs(60), || 2);
        tx.send(()).unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(first.unwrap().wait(later).unwrap(), 1);
        assert_eq!(second.unwrap().wait(later).unwrap(), 2);
    }

    #[test]
    fn gate_waits_no_longer_than_the_collection_deadline() {
        let gate = BlockingGate::default();
        let _d = crate::deadline::enter(crate::deadline::Deadline::after(Duration::from_millis(50)));
        let (tx, rx) = mpsc::channel::<()>();
        let r = gate.call("slow", Duration::from_secs(3600), move || {
            let _ = rx.recv();
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        tx.send(()).unwrap();
    }
}

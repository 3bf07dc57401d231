//! Each VM's QEMU monitor, reached in one of two ways behind one interface ([`Session`]):
//! QMP on `/var/run/qemu-server/<vmid>.qmp` ([`crate::sources::qemu::qmp`]) or `qm monitor <vmid>` on a PTY
//! ([`crate::sources::qemu::qm`]). `--qm-mode auto` uses QMP where the socket exists, else qm (with `--root /`).
//!
//! Per scrape and VM, one session: the topology (`info network`, `info block`) comes from a
//! cache when it can, the I/O counters (and with QMP the virtual sizes) are read fresh.
//!
//! - Cache: per (vmid, command), for `--qm-max-ttl` minus a jitter of up to `--qm-rand` drawn
//!   once per entry (entries do not expire together). An entry is dropped when the VM's pid
//!   changes, when one of its disks' `/dev` paths no longer resolves (the disk moved), and when
//!   the VM is gone.
//! - Concurrency: at most `--qm-max-concurrent` sessions at once over all scrapes, and one per
//!   VM: a VM whose last exchange has not returned yet is not asked again.
//! - Time: every step of a session has its own limit (`--qm-terminal-timeout`), and a scrape
//!   waits for the monitors at most that long plus a little: a VM not done by then is reported
//!   from the cache alone, its exchange ends in the background.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, Hasher},
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    deadline::{Backoff, Deadline, Verdict},
    host::HostRoot,
    sources::{
        kernel::sysfs,
        qemu::balloon::{self, Balloon},
        qemu::hmp::{self, BlockStats, Drive, Nic},
        qemu::qm::QmSession,
        qemu::qmp::{self, Qmp},
    },
};

pub const INFO_NETWORK: &str = "info network";
pub const INFO_BLOCK: &str = "info block";
const INFO_BLOCKSTATS: &str = "info blockstats";
const INFO_STATUS: &str = "info status";
const INFO_BALLOON: &str = "info balloon";

/// Past the step limit, how long a scrape still waits for a session's own timeout to report.
const GRACE: Duration = Duration::from_millis(250);

/// An open connection to one VM's monitor.
pub trait Session {
    /// A human monitor command's text.
    fn hmp(&mut self, command: &str) -> io::Result<String>;
    /// (drive name, I/O counters) in QEMU's order; a `-blockdev` drive may be unnamed (qm).
    fn blockstats(&mut self) -> io::Result<Vec<(String, BlockStats)>>;
    /// (drive name, virtual size) as QEMU reports them; None when the way has no such query.
    fn virtual_sizes(&mut self) -> io::Result<Option<Vec<(String, u64)>>>;
    /// QEMU's run state (`running`, `paused`, `prelaunch`, `inmigrate`, ...).
    fn status(&mut self) -> io::Result<String>;
    /// The balloon's size and the guest's memory statistics; None: the VM has no balloon device.
    fn balloon(&mut self) -> io::Result<Option<Balloon>>;
    /// A step failed: the session is not used again.
    fn broken(&self) -> bool;
}

/// QEMU's answer when a VM has no balloon device (`balloon: 0` in PVE's config): to
/// `query-balloon` (class `DeviceNotActive`) and `info balloon`.
const NO_BALLOON: &str = "No balloon device has been activated";
/// The `guest-stats` question: the balloon device's `qom-get`.
fn guest_stats_arguments() -> serde_json::Value {
    serde_json::json!({ "path": balloon::BALLOON_QOM_PATH, "property": "guest-stats" })
}

impl Session for Qmp {
    fn hmp(&mut self, command: &str) -> io::Result<String> {
        Qmp::hmp(self, command)
    }
    fn blockstats(&mut self) -> io::Result<Vec<(String, BlockStats)>> {
        self.execute("query-blockstats", None).map(|r| qmp::blockstats_rows(&r.to_string()))
    }
    fn virtual_sizes(&mut self) -> io::Result<Option<Vec<(String, u64)>>> {
        self.execute("query-block", None).map(|r| Some(qmp::virtual_sizes(&r.to_string())))
    }
    fn status(&mut self) -> io::Result<String> {
        let r = self.execute("query-status", None)?;
        qmp::run_state(&r.to_string())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "query-status: no status"))
    }
    fn balloon(&mut self) -> io::Result<Option<Balloon>> {
        let b = match self.execute("query-balloon", None) {
            Ok(r) => balloon::parse_query_balloon(&r.to_string()).map_err(io::Error::other)?,
            Err(e) if e.to_string().contains(NO_BALLOON) => return Ok(None),
            Err(e) => return Err(e),
        };
        // The device's own report; a VM whose balloon is not PVE's `balloon0` (another id) has
        // only what query-balloon says.
        let stats = match self.execute("qom-get", Some(guest_stats_arguments())) {
            Ok(r) => balloon::parse_guest_stats(&r.to_string()).map_err(io::Error::other)?,
            Err(e) if e.kind() == io::ErrorKind::Other => None,
            Err(e) => return Err(e),
        };
        Ok(Some(balloon::merge(b, stats)))
    }
    fn broken(&self) -> bool {
        Qmp::broken(self)
    }
}

impl Session for QmSession {
    fn hmp(&mut self, command: &str) -> io::Result<String> {
        self.command(command)
    }
    fn blockstats(&mut self) -> io::Result<Vec<(String, BlockStats)>> {
        self.command(INFO_BLOCKSTATS).map(|t| hmp::parse_info_blockstats(&t))
    }
    fn virtual_sizes(&mut self) -> io::Result<Option<Vec<(String, u64)>>> {
        Ok(None)
    }
    fn status(&mut self) -> io::Result<String> {
        let t = self.command(INFO_STATUS)?;
        hmp::parse_info_status(&t).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("info status: unexpected {:?}", t.trim()))
        })
    }
    fn balloon(&mut self) -> io::Result<Option<Balloon>> {
        let t = self.command(INFO_BALLOON)?;
        let Some(b) = balloon::parse_info_balloon(&t) else {
            if t.contains(NO_BALLOON) {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("info balloon: unexpected {:?}", t.trim())));
        };
        // HMP's qom-get prints the property as JSON; anything else (an error text) leaves
        // what info balloon said.
        let t = self.command(&format!("qom-get {} guest-stats", balloon::BALLOON_QOM_PATH))?;
        let stats = if t.trim_start().starts_with('{') {
            balloon::parse_guest_stats(&t).map_err(io::Error::other)?
        } else {
            None
        };
        Ok(Some(balloon::merge(b, stats)))
    }
    fn broken(&self) -> bool {
        QmSession::broken(self)
    }
}

/// How one VM's monitor is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Qmp(PathBuf),
    Qm,
}

/// Opens sessions; tests put a fake here.
pub trait Opener: Send + Sync {
    fn open(&self, access: &Access, vmid: &str) -> io::Result<Box<dyn Session>>;
    /// Whether warm QMP VMs may be asked all at once over real sockets ([`qmp::exchange_many`]);
    /// test doubles that fake sessions say no.
    fn pipelined(&self) -> bool {
        false
    }
}

struct RealOpener {
    qm_path: PathBuf,
    step: Duration,
    defer_close: bool,
}

impl Opener for RealOpener {
    fn open(&self, access: &Access, vmid: &str) -> io::Result<Box<dyn Session>> {
        Ok(match access {
            Access::Qmp(path) => Box::new(Qmp::connect(path, self.step)?),
            Access::Qm => Box::new(QmSession::open(&self.qm_path, vmid, self.step, self.defer_close)?),
        })
    }

    fn pipelined(&self) -> bool {
        true
    }
}

/// A VM whose monitor is asked: its vmid and QEMU pid (a new pid under the same vmid is a
/// new QEMU: what was cached of the old one is not used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub pid: u32,
}

/// How a VM's QEMU monitor is reached (NIC and disk metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QmMode {
    /// QMP where the VM's socket exists, else `qm monitor` (with `--root /` only: qm asks this machine's VMs).
    Auto,
    /// QMP on /var/run/qemu-server/<vmid>.qmp.
    Qmp,
    /// `qm monitor <vmid>` on a pseudo-terminal.
    Qm,
    /// Never ask the monitors: no NIC and disk series from them, and a scrape wakes no QEMU
    /// process (docs/benchmarks.md: on a small host the QEMU side of the exchange dominates).
    Off,
}

#[derive(Debug, Clone)]
pub struct MonitorOptions {
    pub mode: QmMode,
    pub qm_path: PathBuf,
    pub step_timeout: Duration,
    pub max_ttl: Duration,
    pub rand: Duration,
    pub defer_close: bool,
    pub max_concurrent: usize,
}

/// Why a VM's monitor did not tell (all of) its devices in this scrape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonitorError {
    /// Not asked, or not waited for: busy, stuck, out of slots, past the deadline.
    #[error("{0}")]
    NotAsked(String),
    /// A command failed: the session could not be opened, QEMU answered an error, or nothing.
    #[error("{what}: {why}")]
    Command { what: &'static str, why: String },
}

/// What one VM's monitor told in this scrape. `None`: not known this time.
#[derive(Debug, Clone, Default)]
pub struct VmDevices {
    pub id: String,
    pub nics: Option<Vec<Nic>>,
    /// Every drive of `info block`, without-medium and efidisk drives included.
    pub drives: Option<Vec<Drive>>,
    /// I/O counters by drive name.
    pub stats: Option<Vec<(String, BlockStats)>>,
    /// Virtual sizes by drive name (QMP only).
    pub sizes: Option<Vec<(String, u64)>>,
    /// QEMU's run state (`query-status`, `info status`).
    pub status: Option<String>,
    /// The balloon and the guest's memory statistics (`query-balloon` and the device's
    /// `guest-stats`); `Some(None)`: the VM has no balloon device.
    pub balloon: Option<Option<Balloon>>,
    pub errors: Vec<MonitorError>,
    /// The monitor did not answer in time (as a stopped QEMU, or one whose main loop hangs on
    /// storage): the VM goes under back-off.
    pub stalled: bool,
}

struct Entry {
    pid: u32,
    text: Arc<str>,
    expires: Instant,
}

/// Monitor output per (vmid, command).
struct Cache {
    entries: HashMap<(String, &'static str), Entry>,
    max_ttl: Duration,
    rand: Duration,
    seq: u64,
}

impl Cache {
    fn get(&mut self, vmid: &str, pid: u32, command: &'static str, now: Instant) -> Option<Arc<str>> {
        let key = (vmid.to_string(), command);
        match self.entries.get(&key) {
            Some(e) if e.pid == pid && now < e.expires => Some(e.text.clone()),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, vmid: &str, pid: u32, command: &'static str, text: Arc<str>, now: Instant) {
        self.seq = self.seq.wrapping_add(1);
        let ttl = self.max_ttl.saturating_sub(jitter(self.rand, self.seq));
        self.entries.insert((vmid.to_string(), command), Entry { pid, text, expires: now + ttl });
    }

    fn remove(&mut self, vmid: &str, command: &'static str) {
        self.entries.remove(&(vmid.to_string(), command));
    }
}

/// A random duration in [0, max]: std's randomly keyed SipHash of a counter.
fn jitter(max: Duration, seq: u64) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(seq);
    max.mul_f64(h.finish() as f64 / u64::MAX as f64)
}

/// A counting semaphore whose permits outlive a scrape (held by sessions left running).
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

/// At least one slot (waiting for it until `deadline`) and up to `want` that are free now.
fn acquire_many(slots: &Arc<Slots>, want: usize, deadline: Instant) -> Option<Vec<Slot>> {
    let first = acquire(slots, deadline)?;
    let mut free = slots.free.lock().unwrap_or_else(|p| p.into_inner());
    let more = (*free).min(want.saturating_sub(1));
    *free -= more;
    drop(free);
    Some(std::iter::once(first).chain((0..more).map(|_| Slot(slots.clone()))).collect())
}

/// A slot if one is free now.
fn try_acquire(slots: &Arc<Slots>) -> Option<Slot> {
    let mut free = slots.free.lock().unwrap_or_else(|p| p.into_inner());
    if *free == 0 {
        return None;
    }
    *free -= 1;
    Some(Slot(slots.clone()))
}

fn acquire(slots: &Arc<Slots>, deadline: Instant) -> Option<Slot> {
    let mut free = slots.free.lock().unwrap_or_else(|p| p.into_inner());
    while *free == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        free = slots.cv.wait_timeout(free, left).unwrap_or_else(|p| p.into_inner()).0;
    }
    *free -= 1;
    Some(Slot(slots.clone()))
}

/// One VM's exchange in flight.
struct Busy(Arc<AtomicBool>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

struct Inner {
    opts: MonitorOptions,
    opener: Box<dyn Opener>,
    cache: Mutex<Cache>,
    busy: Mutex<HashMap<String, Arc<AtomicBool>>>,
    slots: Arc<Slots>,
    /// VMs whose monitor timed out, by vmid (with the pid it was): not waited on by scrapes
    /// until a try in the background answers.
    stuck: Mutex<HashMap<String, (u32, Backoff)>>,
}

/// Monitor access with its cache and limits, shared by all scrapes.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

impl Monitor {
    pub fn new(opts: MonitorOptions) -> Self {
        let opener =
            RealOpener { qm_path: opts.qm_path.clone(), step: opts.step_timeout, defer_close: opts.defer_close };
        Self::with_opener(opts, Box::new(opener))
    }

    pub fn with_opener(opts: MonitorOptions, opener: Box<dyn Opener>) -> Self {
        let cache = Cache { entries: HashMap::new(), max_ttl: opts.max_ttl, rand: opts.rand, seq: 0 };
        let slots = Arc::new(Slots { free: Mutex::new(opts.max_concurrent.max(1)), cv: Condvar::new() });
        Self {
            inner: Arc::new(Inner {
                opts,
                opener,
                cache: Mutex::new(cache),
                busy: Mutex::default(),
                slots,
                stuck: Mutex::default(),
            }),
        }
    }

    /// How `vm`'s monitor is reached; None in auto mode when there is no way (no QMP socket,
    /// no qm): the VM simply has no NIC and disk series, it is not a failure. qm asks the VMs
    /// of the machine it runs on, not those below `--root`: auto mode uses it only with `/`.
    pub fn access(&self, host: &HostRoot, vm: &Target) -> Option<Access> {
        let socket = host.path(format!("var/run/qemu-server/{}.qmp", vm.id));
        let qm = host.root() == Path::new("/") && self.inner.opts.qm_path.exists();
        match self.inner.opts.mode {
            QmMode::Qmp => Some(Access::Qmp(socket)),
            QmMode::Qm => Some(Access::Qm),
            QmMode::Auto if socket.exists() => Some(Access::Qmp(socket)),
            QmMode::Auto if qm => Some(Access::Qm),
            QmMode::Auto | QmMode::Off => None,
        }
    }

    /// Ask every VM's monitor, at most `--qm-max-concurrent` at once, within the time budget
    /// (`--qm-terminal-timeout` and the scrape's `deadline`, whichever comes first). One entry
    /// per VM, in the order of `vms`.
    ///
    /// VMs reached over QMP whose topology is cached (the warm case: most VMs on most scrapes)
    /// need only their counters and sizes: they are asked all at once from this thread
    /// ([`qmp::exchange_many`]). The others get a session on a thread of their own.
    ///
    /// A VM whose monitor did not answer in time is stuck ([`Backoff`]): the following scrapes
    /// report it from the cache alone without asking; when a try is due, a session with it runs
    /// in the background (not waited on), and the VM rejoins once that answers.
    pub fn fetch_all(&self, host: &HostRoot, vms: &[Target], deadline: Deadline) -> Vec<VmDevices> {
        let inner = &self.inner;
        self.forget_others(vms);
        let deadline = deadline.cap_instant(inner.opts.step_timeout + GRACE);
        let mut results: Vec<Option<VmDevices>> = vec![None; vms.len()];
        let mut why_not: Vec<Option<String>> = vec![None; vms.len()];
        let mut access: Vec<Option<Access>> = vms.iter().map(|vm| self.access(host, vm)).collect();
        // VMs whose monitor is asked in this round (not those without one, nor stuck ones).
        let mut asked = vec![true; vms.len()];
        for (i, vm) in vms.iter().enumerate() {
            if access[i].is_none() {
                log::debug!("VM {}: no QMP socket and no qm: no monitor", vm.id);
                results[i] = Some(VmDevices { id: vm.id.clone(), ..VmDevices::default() });
                asked[i] = false;
            } else if let Some(why) = self.skip_stuck(host, vm, &mut access[i]) {
                results[i] = Some(cached_only(inner, host, vm, why));
                asked[i] = false;
            }
        }
        if inner.opener.pipelined() {
            self.fetch_warm(host, vms, &mut access, &mut results, &mut why_not, deadline);
        }

        let (tx, rx) = mpsc::channel::<(usize, VmDevices)>();
        let mut pending = 0usize;
        for (i, vm) in vms.iter().enumerate() {
            if results[i].is_some() || why_not[i].is_some() {
                continue;
            }
            let Some(access) = access[i].take() else { continue };
            let Some(busy) = self.claim(&vm.id) else {
                why_not[i] = Some("an earlier monitor exchange has not returned yet".into());
                continue;
            };
            let Some(slot) = acquire(&inner.slots, deadline) else {
                why_not[i] = Some(format!("no free monitor slot (--qm-max-concurrent {})", inner.opts.max_concurrent));
                continue;
            };
            let (me, host, vm, tx) = (self.inner.clone(), host.clone(), vm.clone(), tx.clone());
            let spawned = thread::Builder::new().name(format!("qm-{}", vm.id)).spawn(move || {
                let r = fetch_vm(&me, &host, &vm, &access);
                drop((slot, busy));
                let _ = tx.send((i, r));
            });
            match spawned {
                Ok(_) => pending += 1,
                Err(e) => why_not[i] = Some(format!("cannot start a thread: {e}")),
            }
        }
        drop(tx);
        let mut late = vec![false; vms.len()];
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, r)) => {
                    results[i] = Some(r);
                    pending -= 1;
                }
                Err(_) => break,
            }
        }
        for (i, r) in results.iter().enumerate() {
            // Asked and no answer by the deadline: its session is still running.
            late[i] = r.is_none() && why_not[i].is_none();
            // Not asked at all (busy, no slot): says nothing of whether it is stuck.
            asked[i] &= why_not[i].is_none();
        }
        let out: Vec<VmDevices> = vms
            .iter()
            .zip(results)
            .zip(why_not)
            .zip(&late)
            .map(|(((vm, r), why), late)| {
                r.unwrap_or_else(|| {
                    let why = why.unwrap_or_else(|| "no answer before the scrape's monitor deadline".to_string());
                    let mut d = cached_only(inner, host, vm, why);
                    d.stalled = *late;
                    d
                })
            })
            .collect();
        self.note_stalls(vms, &out, &asked);
        out
    }

    /// Whether `vm` is stuck and not to be asked in this scrape (why, for its errors). A try
    /// that is due starts in the background here.
    fn skip_stuck(&self, host: &HostRoot, vm: &Target, access: &mut Option<Access>) -> Option<String> {
        let now = Instant::now();
        let mut stuck = self.inner.stuck.lock().unwrap_or_else(|p| p.into_inner());
        let (pid, backoff) = stuck.get_mut(&vm.id)?;
        if *pid != vm.pid {
            // Another process now: a new start is not stuck.
            stuck.remove(&vm.id);
            return None;
        }
        let why = format!("monitor {}", backoff.describe(now));
        match backoff.verdict(now) {
            Verdict::Go => return None,
            Verdict::Wait(_) => {}
            Verdict::Retry => {
                backoff.trying(now, self.inner.opts.step_timeout * 4);
                drop(stuck);
                self.try_in_background(host, vm, access.clone());
            }
        }
        *access = None;
        Some(why)
    }

    /// A session with a stuck VM on a thread of its own, not waited on: it rejoins when the
    /// session answers (its topology is cached then), else it backs off further.
    fn try_in_background(&self, host: &HostRoot, vm: &Target, access: Option<Access>) {
        let Some(access) = access else { return };
        let Some(busy) = self.claim(&vm.id) else { return };
        let Some(slot) = try_acquire(&self.inner.slots) else {
            // No slot free: the next scrape tries.
            let mut stuck = self.inner.stuck.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, b)) = stuck.get_mut(&vm.id) {
                b.failed(Instant::now());
            }
            return;
        };
        let name = format!("qm-try-{}", vm.id);
        let (me, host, vm) = (self.clone(), host.clone(), vm.clone());
        let spawned = thread::Builder::new().name(name).spawn(move || {
            let r = fetch_vm(&me.inner, &host, &vm, &access);
            drop((slot, busy));
            log::debug!(
                "VM {}: monitor try in the background: {}",
                vm.id,
                if r.stalled { "still stuck" } else { "answered" }
            );
            me.note_stalls(std::slice::from_ref(&vm), std::slice::from_ref(&r), &[true]);
        });
        if let Err(e) = spawned {
            log::warn!("cannot start a thread to try a stuck monitor: {e}");
        }
    }

    /// Back-off after this round: stalled VMs fail (again); the others that were asked and did
    /// not stall rejoin (an error in the answer is no stall).
    fn note_stalls(&self, vms: &[Target], out: &[VmDevices], asked: &[bool]) {
        let now = Instant::now();
        let mut stuck = self.inner.stuck.lock().unwrap_or_else(|p| p.into_inner());
        for ((vm, d), asked) in vms.iter().zip(out).zip(asked) {
            if d.stalled {
                let e = stuck.entry(vm.id.clone()).or_insert((vm.pid, Backoff::default()));
                if e.0 != vm.pid {
                    *e = (vm.pid, Backoff::default());
                }
                if e.1.failures() == 0 {
                    log::warn!("VM {}: its monitor did not answer in time: not waited on until it does", vm.id);
                }
                e.1.failed(now);
            } else if *asked && stuck.remove(&vm.id).is_some() {
                log::info!("VM {}: its monitor answers again", vm.id);
            }
        }
    }

    /// Mark `vmid`'s monitor busy; None when an earlier exchange with it is still running.
    fn claim(&self, vmid: &str) -> Option<Busy> {
        let flag = {
            let mut busy = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
            busy.entry(vmid.to_string()).or_default().clone()
        };
        (!flag.swap(true, Ordering::AcqRel)).then_some(Busy(flag))
    }

    /// The warm path of [`Self::fetch_all`]: every QMP VM with a cached topology, asked for
    /// `query-blockstats` and `query-block` at once. A VM whose drives changed (hotplug: the
    /// counters no longer match the cached `info block`) is left to the session path, with its
    /// `info block` entry dropped.
    fn fetch_warm(
        &self,
        host: &HostRoot,
        vms: &[Target],
        access: &mut [Option<Access>],
        results: &mut [Option<VmDevices>],
        why_not: &mut [Option<String>],
        deadline: Instant,
    ) {
        let inner = &self.inner;
        // (index in vms, socket, cached NICs, cached drives, busy mark)
        type Warm = (usize, PathBuf, Vec<Nic>, Vec<Drive>, Busy);
        let mut warm: Vec<Warm> = Vec::new();
        for (i, vm) in vms.iter().enumerate() {
            let Some(Access::Qmp(path)) = &access[i] else { continue };
            let (Some(nics), Some(drives)) = (cached_network(inner, vm), cached_block(inner, host, vm)) else {
                continue;
            };
            let Some(busy) = self.claim(&vm.id) else {
                why_not[i] = Some("an earlier monitor exchange has not returned yet".into());
                continue;
            };
            warm.push((i, path.clone(), nics, drives, busy));
        }
        if warm.is_empty() {
            return;
        }
        let Some(slots) = acquire_many(&inner.slots, warm.len(), deadline) else {
            for (i, ..) in &warm {
                why_not[*i] = Some(format!("no free monitor slot (--qm-max-concurrent {})", inner.opts.max_concurrent));
            }
            return;
        };
        let paths: Vec<&Path> = warm.iter().map(|(_, p, ..)| p.as_path()).collect();
        let step = Instant::now() + inner.opts.step_timeout;
        // Each VM's replies become rows as soon as they are in (its text is freed then).
        type Rows<T> = Option<Result<Vec<(String, T)>, qmp::QemuError>>;
        type Status = Option<Result<Option<String>, qmp::QemuError>>;
        type Reply = Option<Result<Box<serde_json::value::RawValue>, qmp::QemuError>>;
        type Parsed = io::Result<(Rows<BlockStats>, Rows<u64>, Status, Reply, Reply)>;
        let mut parsed: Vec<Option<Parsed>> = warm.iter().map(|_| None).collect();
        let stats_args = guest_stats_arguments();
        let cmds = [
            qmp::Command::from("query-blockstats"),
            qmp::Command::from("query-block"),
            qmp::Command::from("query-status"),
            qmp::Command::from("query-balloon"),
            qmp::Command { execute: "qom-get", arguments: Some(&stats_args) },
        ];
        qmp::exchange_many_each(&paths, &cmds, slots.len(), step.min(deadline), |k, r| {
            parsed[k] = Some(r.map(|mut replies| {
                let guest_stats = replies.pop();
                let balloon = replies.pop();
                let status = replies.pop().map(|r| r.map(|v| qmp::run_state(v.get())));
                let sizes = replies.pop().map(|r| r.map(|v| qmp::virtual_sizes(v.get())));
                let stats = replies.pop().map(|r| r.map(|v| qmp::blockstats_rows(v.get())));
                (stats, sizes, status, balloon, guest_stats)
            }));
        });
        drop(slots);
        for ((i, path, nics, drives, busy), r) in warm.into_iter().zip(parsed) {
            drop(busy);
            let vm = &vms[i];
            let mut out = VmDevices { id: vm.id.clone(), nics: Some(nics), ..VmDevices::default() };
            match r.unwrap_or_else(|| Err(io::Error::other("no result"))) {
                Err(e) => {
                    out.stalled = e.kind() == io::ErrorKind::TimedOut;
                    out.errors.push(MonitorError::Command {
                        what: "blockstats",
                        why: format!("QMP {}: {e}", path.display()),
                    });
                }
                Ok((stats, sizes, status, balloon, guest_stats)) => {
                    match status {
                        Some(Ok(Some(st))) => out.status = Some(st),
                        Some(Ok(None)) => out
                            .errors
                            .push(MonitorError::Command { what: "query-status", why: "no status in the reply".into() }),
                        Some(Err(e)) => {
                            out.errors.push(MonitorError::Command { what: "query-status", why: e.to_string() })
                        }
                        None => out.errors.push(MonitorError::Command { what: "query-status", why: "no reply".into() }),
                    }
                    match balloon_of(balloon, guest_stats) {
                        Ok(b) => out.balloon = Some(b),
                        Err(e) => out.errors.push(e),
                    }
                    match stats {
                        Some(Ok(rows)) => match hmp::assign_blockstats(rows, &drives) {
                            Some(named) => out.stats = Some(named),
                            None => {
                                inner.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm.id, INFO_BLOCK);
                                continue; // to the session path, which reads info block again
                            }
                        },
                        Some(Err(e)) => out
                            .errors
                            .push(MonitorError::Command { what: "blockstats", why: format!("query-blockstats: {e}") }),
                        None => out.errors.push(MonitorError::Command { what: "blockstats", why: "no reply".into() }),
                    }
                    match sizes {
                        Some(Ok(v)) => out.sizes = Some(v),
                        Some(Err(e)) => {
                            out.errors.push(MonitorError::Command { what: "query-block", why: e.to_string() })
                        }
                        None => out.errors.push(MonitorError::Command { what: "query-block", why: "no reply".into() }),
                    }
                }
            }
            out.drives = Some(drives);
            access[i] = None;
            results[i] = Some(out);
        }
    }

    /// Drop cache entries and busy flags of VMs that are gone.
    fn forget_others(&self, vms: &[Target]) {
        let ids: HashSet<&str> = vms.iter().map(|v| v.id.as_str()).collect();
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.entries.retain(|(id, _), _| ids.contains(id.as_str()));
        drop(cache);
        self.inner.stuck.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| ids.contains(id.as_str()));
        let mut busy = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        // A flag still set belongs to an exchange in flight: keep it, so no second one starts.
        busy.retain(|id, f| ids.contains(id.as_str()) || f.load(Ordering::Acquire));
    }
}

/// The balloon from the pipelined `query-balloon` and `qom-get` replies. `Ok(None)`: the VM
/// has no balloon device. The device's `guest-stats` missing (a balloon of another id than
/// PVE's `balloon0`) leaves what `query-balloon` says.
fn balloon_of(
    balloon: Option<Result<Box<serde_json::value::RawValue>, qmp::QemuError>>,
    guest_stats: Option<Result<Box<serde_json::value::RawValue>, qmp::QemuError>>,
) -> Result<Option<Balloon>, MonitorError> {
    let failed = |why: String| MonitorError::Command { what: "query-balloon", why };
    let b = match balloon {
        Some(Ok(r)) => balloon::parse_query_balloon(r.get()).map_err(|e| failed(e.to_string()))?,
        Some(Err(e)) if e.class == "DeviceNotActive" || e.desc.contains(NO_BALLOON) => return Ok(None),
        Some(Err(e)) => return Err(failed(e.to_string())),
        None => return Err(failed("no reply".into())),
    };
    let stats = match guest_stats {
        Some(Ok(r)) => balloon::parse_guest_stats(r.get()).map_err(|e| failed(format!("guest-stats: {e}")))?,
        _ => None,
    };
    Ok(Some(balloon::merge(b, stats)))
}

/// `info block` text from the cache, if it is still good: no disk's `/dev` path stopped
/// resolving. A stale entry is dropped.
fn cached_block(inner: &Inner, host: &HostRoot, vm: &Target) -> Option<Vec<Drive>> {
    let text = inner.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&vm.id, vm.pid, INFO_BLOCK, Instant::now())?;
    let drives = hmp::parse_info_block(&text);
    if let Some(d) = drives.iter().find(|d| d.path.as_deref().is_some_and(|p| !sysfs::dev_path_resolves(host, p))) {
        log::debug!("VM {}: {} no longer resolves: reading info block again", vm.id, d.path.as_deref().unwrap_or(""));
        inner.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm.id, INFO_BLOCK);
        return None;
    }
    Some(drives)
}

fn cached_network(inner: &Inner, vm: &Target) -> Option<Vec<Nic>> {
    let text =
        inner.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&vm.id, vm.pid, INFO_NETWORK, Instant::now())?;
    Some(hmp::parse_info_network(&text))
}

/// A VM whose monitor was not asked or did not answer in time: its topology from the cache.
fn cached_only(inner: &Inner, host: &HostRoot, vm: &Target, why: String) -> VmDevices {
    VmDevices {
        id: vm.id.clone(),
        nics: cached_network(inner, vm),
        drives: cached_block(inner, host, vm),
        errors: vec![MonitorError::NotAsked(why)],
        ..VmDevices::default()
    }
}

/// A session opened on first use. After a step broke the session, later steps are skipped:
/// `Err(None)`, the failure having been reported once.
struct Lazy<'a> {
    inner: &'a Inner,
    access: &'a Access,
    vmid: &'a str,
    session: Option<Box<dyn Session>>,
    failed: bool,
    /// A step ran out of time.
    timed_out: bool,
}

impl Lazy<'_> {
    fn with<T>(&mut self, f: impl FnOnce(&mut dyn Session) -> io::Result<T>) -> Result<T, Option<String>> {
        if self.failed {
            return Err(None);
        }
        let s = match &mut self.session {
            Some(s) => s,
            None => match self.inner.opener.open(self.access, self.vmid) {
                Ok(s) => self.session.insert(s),
                Err(e) => {
                    self.failed = true;
                    self.timed_out |= e.kind() == io::ErrorKind::TimedOut;
                    return Err(Some(match self.access {
                        Access::Qmp(p) => format!("QMP {}: {e}", p.display()),
                        Access::Qm => format!("qm monitor: {e}"),
                    }));
                }
            },
        };
        let r = f(s.as_mut());
        self.failed = r.is_err() && s.broken();
        self.timed_out |= r.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::TimedOut);
        r.map_err(|e| Some(e.to_string()))
    }
}

fn note(errors: &mut Vec<MonitorError>, what: &'static str, e: Option<String>) {
    if let Some(e) = e {
        errors.push(MonitorError::Command { what, why: e });
    }
}

/// `info block` from the VM; cached.
fn read_block(inner: &Inner, vm: &Target, s: &mut Lazy<'_>, errors: &mut Vec<MonitorError>) -> Option<Vec<Drive>> {
    match s.with(|s| s.hmp(INFO_BLOCK)) {
        Ok(t) => {
            let drives = hmp::parse_info_block(&t);
            let mut cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.put(&vm.id, vm.pid, INFO_BLOCK, t.into(), Instant::now());
            Some(drives)
        }
        Err(e) => {
            note(errors, INFO_BLOCK, e);
            None
        }
    }
}

/// One VM's exchange (on a worker thread).
fn fetch_vm(inner: &Inner, host: &HostRoot, vm: &Target, access: &Access) -> VmDevices {
    let mut out = VmDevices { id: vm.id.clone(), ..VmDevices::default() };
    let mut s = Lazy { inner, access, vmid: &vm.id, session: None, failed: false, timed_out: false };

    out.nics = cached_network(inner, vm).or_else(|| match s.with(|s| s.hmp(INFO_NETWORK)) {
        Ok(t) => {
            let nics = hmp::parse_info_network(&t);
            let mut cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.put(&vm.id, vm.pid, INFO_NETWORK, t.into(), Instant::now());
            Some(nics)
        }
        Err(e) => {
            note(&mut out.errors, INFO_NETWORK, e);
            None
        }
    });

    let cached = cached_block(inner, host, vm);
    let block_from_cache = cached.is_some();
    out.drives = cached.or_else(|| read_block(inner, vm, &mut s, &mut out.errors));

    match s.with(|s| s.blockstats()) {
        Ok(rows) => {
            let mut named = out.drives.as_deref().and_then(|d| hmp::assign_blockstats(rows.clone(), d));
            if named.is_none() && block_from_cache {
                // The drives changed since info block was cached (hotplug): read it again.
                inner.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm.id, INFO_BLOCK);
                out.drives = read_block(inner, vm, &mut s, &mut out.errors);
                named = out.drives.as_deref().and_then(|d| hmp::assign_blockstats(rows.clone(), d));
            }
            out.stats = Some(named.unwrap_or_else(|| {
                if out.drives.is_some() {
                    out.errors.push(MonitorError::Command {
                        what: "blockstats",
                        why: "unnamed drives do not match info block".into(),
                    });
                }
                rows.into_iter().filter(|(n, _)| !n.is_empty()).collect()
            }));
        }
        Err(e) => note(&mut out.errors, "blockstats", e),
    }

    match s.with(|s| s.virtual_sizes()) {
        Ok(sizes) => out.sizes = sizes,
        Err(e) => note(&mut out.errors, "query-block", e),
    }
    match s.with(|s| s.status()) {
        Ok(st) => out.status = Some(st),
        Err(e) => note(&mut out.errors, "query-status", e),
    }
    match s.with(|s| s.balloon()) {
        Ok(b) => out.balloon = Some(b),
        Err(e) => note(&mut out.errors, "query-balloon", e),
    }
    out.stalled = s.timed_out;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted monitor: counts the commands it is asked, per VM.
    #[derive(Default)]
    struct Fake {
        log: Mutex<Vec<String>>,
        block: Mutex<String>,
        hang: Mutex<HashSet<String>>,
        release: Mutex<Option<mpsc::Receiver<()>>>,
    }

    struct FakeSession {
        fake: Arc<Fake>,
        vmid: String,
    }

    impl Session for FakeSession {
        fn hmp(&mut self, command: &str) -> io::Result<String> {
            self.fake.log.lock().unwrap().push(format!("{} {command}", self.vmid));
            Ok(match command {
                INFO_NETWORK => "net0: index=0,type=nic,model=virtio-net-pci,macaddr=bc:24:11:00:00:01\n \\ net0: index=0,type=tap,ifname=tap1i0\n".into(),
                _ => self.fake.block.lock().unwrap().clone(),
            })
        }
        fn blockstats(&mut self) -> io::Result<Vec<(String, BlockStats)>> {
            self.fake.log.lock().unwrap().push(format!("{} blockstats", self.vmid));
            // Like PVE 9's -blockdev drives: one unnamed row per drive.
            let n = hmp::parse_info_block(&self.fake.block.lock().unwrap()).len();
            Ok(vec![(String::new(), BlockStats { rd_operations: 7, ..BlockStats::default() }); n])
        }
        fn virtual_sizes(&mut self) -> io::Result<Option<Vec<(String, u64)>>> {
            Ok(None)
        }
        fn status(&mut self) -> io::Result<String> {
            Ok("running".into())
        }
        fn balloon(&mut self) -> io::Result<Option<Balloon>> {
            Ok(None)
        }
        fn broken(&self) -> bool {
            false
        }
    }

    struct FakeOpener(Arc<Fake>);

    impl Opener for FakeOpener {
        fn open(&self, _: &Access, vmid: &str) -> io::Result<Box<dyn Session>> {
            if self.0.hang.lock().unwrap().contains(vmid) {
                // Hung until the test lets go.
                let rx = self.0.release.lock().unwrap().take();
                if let Some(rx) = rx {
                    let _ = rx.recv_timeout(Duration::from_secs(60));
                }
                return Err(io::ErrorKind::TimedOut.into());
            }
            Ok(Box::new(FakeSession { fake: self.0.clone(), vmid: vmid.into() }))
        }
    }

    fn far() -> Deadline {
        Deadline::after(Duration::from_secs(3600))
    }

    fn opts(ttl: Duration) -> MonitorOptions {
        MonitorOptions {
            mode: QmMode::Qm,
            qm_path: "/nonexistent".into(),
            step_timeout: Duration::from_millis(100),
            max_ttl: ttl,
            rand: Duration::ZERO,
            defer_close: true,
            max_concurrent: 2,
        }
    }

    fn vm(id: &str, pid: u32) -> Target {
        Target { id: id.into(), pid }
    }

    fn take(fake: &Fake) -> Vec<String> {
        let mut l = std::mem::take(&mut *fake.log.lock().unwrap());
        l.sort();
        l
    }

    #[test]
    fn balloon_replies_of_the_pipelined_exchange() {
        let raw = |t: &str| Ok(serde_json::value::RawValue::from_string(t.to_string()).unwrap());
        let err = |class: &str, desc: &str| Err(qmp::QemuError { class: class.into(), desc: desc.into() });
        // No balloon device (`balloon: 0`): no balloon, no error.
        let none = balloon_of(Some(err("DeviceNotActive", NO_BALLOON)), Some(err("DeviceNotFound", "x")));
        assert!(matches!(none, Ok(None)));
        // A balloon whose device is not `balloon0`: its size, without the guest's report.
        let b = balloon_of(Some(raw(r#"{"actual": 67108864}"#)), Some(err("DeviceNotFound", "x"))).unwrap().unwrap();
        assert_eq!((b.actual, b.stats), (Some(64 << 20), None));
        let with = r#"{"stats": {"stat-total-memory": 100, "stat-free-memory": 40}, "last-update": 7}"#;
        let b = balloon_of(Some(raw(r#"{"actual": 1}"#)), Some(raw(with))).unwrap().unwrap();
        assert_eq!(b.stats.and_then(|s| s.used_bytes()), Some(60));
        // Anything else is the VM's monitor error.
        assert!(balloon_of(Some(err("GenericError", "boom")), None).is_err());
        assert!(balloon_of(None, None).is_err());
        assert!(balloon_of(Some(raw("[]")), None).is_err());
    }

    #[test]
    fn topology_is_cached_until_pid_or_device_change() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        std::fs::create_dir_all(dir.path().join("dev/pve")).unwrap();
        std::fs::write(dir.path().join("dev/pve/vm-1-disk-0"), "").unwrap();
        let fake = Arc::new(Fake::default());
        *fake.block.lock().unwrap() = "drive-scsi0: json:{\"driver\":\"throttle\",\"file\":{\"driver\":\"raw\",\"file\":{\"driver\":\"host_device\",\"filename\":\"/dev/pve/vm-1-disk-0\"}}} (throttle)\n".into();
        let m = Monitor::with_opener(opts(Duration::from_secs(600)), Box::new(FakeOpener(fake.clone())));

        let r = m.fetch_all(&host, &[vm("1", 10)], far());
        assert_eq!(take(&fake), ["1 blockstats", "1 info block", "1 info network"]);
        assert!(r[0].errors.is_empty(), "{:?}", r[0].errors);
        assert_eq!(r[0].nics.as_ref().unwrap()[0].ifname, "tap1i0");
        // The unnamed blockstats row is named after the drive at its position.
        assert_eq!(r[0].stats.as_ref().unwrap()[0].0, "drive-scsi0");

        m.fetch_all(&host, &[vm("1", 10)], far());
        assert_eq!(take(&fake), ["1 blockstats"], "topology from the cache");

        // The disk moved: its /dev link is gone.
        std::fs::remove_file(dir.path().join("dev/pve/vm-1-disk-0")).unwrap();
        m.fetch_all(&host, &[vm("1", 10)], far());
        assert_eq!(take(&fake), ["1 blockstats", "1 info block"]);

        // Restarted VM: new pid.
        m.fetch_all(&host, &[vm("1", 11)], far());
        assert_eq!(take(&fake), ["1 blockstats", "1 info block", "1 info network"]);

        // Hotplug: blockstats no longer match the cached drives -> info block again, same session.
        std::fs::write(dir.path().join("dev/pve/vm-1-disk-0"), "").unwrap();
        m.fetch_all(&host, &[vm("1", 11)], far());
        take(&fake);
        *fake.block.lock().unwrap() = "drive-scsi0: /a (raw)\ndrive-scsi1: /b (raw)\n".into();
        let r = m.fetch_all(&host, &[vm("1", 11)], far());
        assert_eq!(take(&fake), ["1 blockstats", "1 info block"]);
        assert!(r[0].errors.is_empty(), "{:?}", r[0].errors);
        let names: Vec<&str> = r[0].stats.as_ref().unwrap().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["drive-scsi0", "drive-scsi1"]);

        // A VM that is gone leaves the cache.
        m.fetch_all(&host, &[], far());
        assert!(m.inner.cache.lock().unwrap().entries.is_empty());
    }

    #[test]
    fn the_way_to_each_monitor() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        std::fs::create_dir_all(dir.path().join("var/run/qemu-server")).unwrap();
        std::fs::write(dir.path().join("var/run/qemu-server/1.qmp"), "").unwrap();
        let socket = dir.path().join("var/run/qemu-server/1.qmp");
        let existing_qm = MonitorOptions { qm_path: "/bin/sh".into(), ..opts(Duration::ZERO) };
        let with = |mode| Monitor::new(MonitorOptions { mode, ..existing_qm.clone() });
        assert_eq!(with(QmMode::Auto).access(&host, &vm("1", 1)), Some(Access::Qmp(socket.clone())));
        // No socket, and qm would ask the machine's VMs rather than those below the root.
        assert_eq!(with(QmMode::Auto).access(&host, &vm("2", 2)), None);
        assert_eq!(with(QmMode::Auto).access(&HostRoot::new("/"), &vm("999999", 2)), Some(Access::Qm));
        assert_eq!(with(QmMode::Qm).access(&host, &vm("1", 1)), Some(Access::Qm));
        assert_eq!(with(QmMode::Off).access(&host, &vm("1", 1)), None, "a socket, but the monitors are off");
        let missing = dir.path().join("var/run/qemu-server/2.qmp");
        assert_eq!(with(QmMode::Qmp).access(&host, &vm("2", 2)), Some(Access::Qmp(missing)));
    }

    #[test]
    fn entries_expire() {
        let host = HostRoot::new("/nonexistent");
        let fake = Arc::new(Fake::default());
        let m = Monitor::with_opener(opts(Duration::ZERO), Box::new(FakeOpener(fake.clone())));
        m.fetch_all(&host, &[vm("1", 10)], far());
        take(&fake);
        m.fetch_all(&host, &[vm("1", 10)], far());
        assert_eq!(take(&fake), ["1 blockstats", "1 info block", "1 info network"]);
        // Jitter is drawn within its range and differs between entries.
        let j: HashSet<Duration> = (0..20).map(|i| jitter(Duration::from_secs(60), i)).collect();
        assert!(j.len() > 10 && j.iter().all(|d| *d <= Duration::from_secs(60)));
    }

    #[test]
    fn a_hung_vm_costs_its_own_series_once() {
        let host = HostRoot::new("/nonexistent");
        let fake = Arc::new(Fake::default());
        fake.hang.lock().unwrap().insert("2".into());
        let (release, rx) = mpsc::channel();
        *fake.release.lock().unwrap() = Some(rx);
        let m = Monitor::with_opener(opts(Duration::from_secs(600)), Box::new(FakeOpener(fake.clone())));
        let vms = [vm("1", 10), vm("2", 20), vm("3", 30)];
        // Returns although VM 2 never answers (it would block for a minute).
        let r = m.fetch_all(&host, &vms, far());
        assert!(r[0].errors.is_empty() && r[2].errors.is_empty());
        assert!(r[0].nics.is_some() && r[2].nics.is_some());
        assert_eq!(r[1].errors.len(), 1);
        assert!(r[1].nics.is_none());
        assert!(r[1].stalled);
        // Stuck: not asked again, fails at once.
        let r = m.fetch_all(&host, &vms, far());
        assert!(r[1].errors[0].to_string().contains("not waited on"), "{:?}", r[1].errors);
        assert!(r[0].errors.is_empty() && r[2].errors.is_empty());
        // It recovers; when its try is due, the try runs in the background and it rejoins.
        fake.hang.lock().unwrap().clear();
        release.send(()).unwrap();
        thread::sleep(crate::deadline::BACKOFF_FIRST);
        let r = m.fetch_all(&host, &vms, far());
        assert!(r[1].errors[0].to_string().contains("being tried again"), "{:?}", r[1].errors);
        for _ in 0..1000 {
            if m.inner.stuck.lock().unwrap().is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let r = m.fetch_all(&host, &vms, far());
        assert!(r.iter().all(|d| d.errors.is_empty() && d.nics.is_some()), "{r:?}");
    }

    #[test]
    fn the_scrape_deadline_bounds_the_wait() {
        let host = HostRoot::new("/nonexistent");
        let fake = Arc::new(Fake::default());
        fake.hang.lock().unwrap().insert("2".into());
        let (release, rx) = mpsc::channel();
        *fake.release.lock().unwrap() = Some(rx);
        let mut o = opts(Duration::from_secs(600));
        o.step_timeout = Duration::from_secs(3600);
        let m = Monitor::with_opener(o, Box::new(FakeOpener(fake.clone())));
        // The step limit is an hour; the deadline ends the wait.
        let r = m.fetch_all(&host, &[vm("1", 10), vm("2", 20)], Deadline::after(Duration::from_millis(200)));
        assert!(r[0].errors.is_empty());
        assert!(r[1].stalled && r[1].errors[0].to_string().contains("deadline"), "{:?}", r[1]);
        release.send(()).unwrap();
    }
}

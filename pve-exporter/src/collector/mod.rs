//! Collection: one scrape runs every collector over the sources and fills one [`MetricSet`].
//! Each collector's failure is its own: it loses its series and reports
//! `pve_exporter_collector_success{collector} 0`; the scrape goes on.
//!
//! Time: a collection has a [`Deadline`]. Its collectors run in three groups, each on a kept
//! thread of its own: `vms` (discovery, per-VM files, eBPF maps, the monitors), `storage` and
//! `pve`. Every wait inside a group ends by the deadline; the collection waits for each group
//! until the deadline and no longer. A group that has not answered by then (it hangs where no
//! time limit reaches: a read of a process stuck in the kernel, say) contributes its last good
//! values while they are at most `--stale-max-age` old, else nothing, with its collectors'
//! success 0 and `pve_exporter_collector_data_age_seconds` telling the age. A group still
//! running from an earlier collection is not started again until it returns.

mod ebpf_maps;
mod kvm;
pub mod kvm_debugfs;
mod nicdisk;
mod pve;
mod selfmetrics;
mod storage;
pub mod vcpu;

use std::{
    collections::HashSet,
    ops::Deref,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use self::kvm_debugfs::KvmDebugfs;
pub use self::vcpu::VcpuThreadCache;
use crate::{
    catalog::Def,
    config::{Config, KvmDebugfsMode, VmSourceMode},
    deadline::{self, Deadline},
    heldfile::{FdBudget, HeldFiles, OnStale},
    host::{HostRoot, ScrapeFiles, Worker},
    metrics::MetricSet,
    sources::{
        kernel::ebpf::{self, EbpfStatus},
        pve::config::{PveConfig, PveConfigReader},
        qemu::libvirt::LibvirtReader,
        qemu::monitor::VmDevices,
    },
    vm::{self, LibvirtSource, PveSource, QemuSource, Vm, VmSource},
};

/// How one collector did in a scrape.
#[derive(Debug, Clone)]
pub struct CollectorRun {
    pub name: &'static str,
    pub duration: Duration,
    pub success: bool,
    /// Age of the values it contributed: zero when collected now, else the age of the last
    /// good values replayed because its group did not answer in time.
    pub age: Duration,
}

/// The collector groups, in the order their families and runs have always been reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Vms,
    Storage,
    Pve,
}

const GROUPS: [Group; 3] = [Group::Vms, Group::Storage, Group::Pve];

/// The time before the scrape's deadline at which the groups' own waits end (at most; 5 % of
/// the budget when that is less): room to finish, merge and send what they found.
const GROUP_RESERVE: Duration = Duration::from_millis(250);

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Vms => "vms",
            Group::Storage => "storage",
            Group::Pve => "pve",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one group produced in one collection.
struct GroupOutput {
    set: MetricSet,
    runs: Vec<CollectorRun>,
    /// When it was collected.
    at: Instant,
}

/// A group's last good values, kept in the collection they went out with (no copy is made
/// unless they are replayed).
struct LastGood {
    /// The collection that holds them.
    collection: Arc<MetricSet>,
    /// The group's families in it.
    families: Vec<&'static Def>,
    runs: Vec<CollectorRun>,
    at: Instant,
}

/// A group's thread and what the collections know of it.
#[derive(Default)]
struct GroupSlot {
    worker: Worker,
    /// The deadline of the collection the group works for, while it runs.
    running: Mutex<Option<Deadline>>,
    /// Output of a run that finished after its collection had gone out.
    late: Mutex<Option<GroupOutput>>,
    last: Mutex<Option<LastGood>>,
}

/// Long-lived state shared by all scrapes.
pub struct EngineState {
    pub config: Config,
    pub host: HostRoot,
    pve_config: Arc<PveConfigReader>,
    /// eBPF state; the lock is held only while a scrape reads the maps.
    ebpf: Mutex<EbpfStatus>,
    /// What the eBPF set-up reports (taken at start: reporting it never waits for `ebpf`).
    ebpf_summary: selfmetrics::EbpfSummary,
    /// Collectors that failed in the last scrape: failures are logged when they start and
    /// end, not on every scrape.
    failing: Mutex<HashSet<&'static str>>,
    /// vCPU threads of each QEMU process (the vcpu collector; the eBPF side asks it too).
    pub vcpu_threads: VcpuThreadCache,
    /// Each VM process's stat, status and io, held open by pid (the kvm collector).
    process_files: Mutex<HeldFiles<u32>>,
    /// The KVM debugfs reader; None when not collected (`--kvm-debugfs off`, or `auto` in eBPF mode).
    kvm_debugfs: Option<Mutex<KvmDebugfs>>,
    /// storage.cfg cache, statvfs gates and command slots of the storage collectors.
    storage: storage::StorageState,
    /// Each VM's QEMU monitor, its topology cache and limits (the qm, nic and disk collectors).
    monitor: crate::sources::qemu::monitor::Monitor,
    /// The PVE collectors (node_status, vm_pressure, ha_status, physical_disk): plan, API client, caches.
    pve: pve::PveState,
    /// libvirt's status XML per domain, parsed once per file version.
    libvirt: LibvirtReader,
    /// The /proc scan with its per-process verdicts (kept until a process forks or execs).
    scanner: Mutex<crate::sources::proc::scan::ProcScanner>,
    /// The thread the monitor exchange runs on, kept between scrapes.
    fetch_worker: Worker,
    /// Disk sizes read from the host, one timed gate per mount.
    disk_sizes: nicdisk::DiskSizes,
    /// The VM source `--vm-source auto` found last (kept while /etc/pve does not answer).
    last_source: Mutex<Option<VmSourceMode>>,
    groups: [GroupSlot; 3],
}

/// The engine: shared by the HTTP side and the group threads.
#[derive(Clone)]
pub struct Engine(Arc<EngineState>);

impl Deref for Engine {
    type Target = EngineState;
    fn deref(&self) -> &EngineState {
        &self.0
    }
}

impl Engine {
    /// Build the engine; this loads and attaches the eBPF programs (Err: `--ebpf on` failed).
    pub fn new(config: Config) -> Result<Self, String> {
        let host = HostRoot::new(&config.root);
        let ebpf = ebpf::start(
            &host,
            &ebpf::EbpfOptions {
                mode: config.ebpf,
                events: config.ebpf_events.clone(),
                btf_path: config.btf_path.clone(),
                stats: config.ebpf_stats,
            },
        )?;
        let kvm_debugfs = match config.kvm_debugfs {
            KvmDebugfsMode::On => true,
            KvmDebugfsMode::Off => false,
            // eBPF mode counts the same events without reading ~60 files per VM per scrape.
            KvmDebugfsMode::Auto => ebpf.counters.is_none(),
        }
        .then(|| Mutex::new(KvmDebugfs::start(&host, config.kvm_debugfs_per_vcpu)));
        let pve_config = PveConfigReader::new();
        // One descriptor budget for every file held open between scrapes.
        let fds = FdBudget::from_rlimit();
        let scanner = Mutex::new(crate::sources::proc::scan::ProcScanner::new(&host));
        Ok(Self(Arc::new(EngineState {
            vcpu_threads: VcpuThreadCache::with_budget(host.clone(), fds.clone()),
            process_files: Mutex::new(HeldFiles::new(fds.clone(), OnStale::Reopen)),
            kvm_debugfs,
            pve: pve::PveState::new(&config, &host, pve_config.gate().clone(), fds),
            storage: storage::StorageState::new(&config, pve_config.gate().clone()),
            disk_sizes: nicdisk::DiskSizes::new(config.storage_timeout),
            host,
            pve_config,
            ebpf_summary: selfmetrics::EbpfSummary::of(&ebpf),
            ebpf: Mutex::new(ebpf),
            failing: Mutex::default(),
            monitor: crate::sources::qemu::monitor::Monitor::from_config(&config),
            libvirt: LibvirtReader::new(),
            scanner,
            fetch_worker: Worker::default(),
            last_source: Mutex::default(),
            groups: Default::default(),
            config,
        })))
    }

    /// The state, if no one else holds the engine (no collection is running).
    pub fn try_unwrap(self) -> Result<EngineState, Engine> {
        Arc::try_unwrap(self.0).map_err(Engine)
    }

    /// One whole scrape with the default deadline (`--scrape-timeout`). Blocking.
    pub fn collect(&self) -> MetricSet {
        (*self.collect_until(Deadline::after(self.config.scrape_timeout))).clone()
    }

    /// One whole scrape, answered by `deadline`. Blocking: call it from a blocking thread.
    pub fn collect_until(&self, deadline: Deadline) -> Arc<MetricSet> {
        let start = Instant::now();
        let files = Arc::new(ScrapeFiles::new(&self.host));
        let enabled = |g: Group| match g {
            Group::Vms => self.config.collect_running_vms,
            Group::Storage => self.config.collect_storage,
            Group::Pve => true,
        };
        // The groups' own waits end a little earlier, so that what they found is merged and
        // sent before the scrape's deadline.
        let reserve = deadline.left().div_f64(20.0).min(GROUP_RESERVE);
        let inner = Deadline::at(deadline.instant().checked_sub(reserve).unwrap_or(deadline.instant()));
        // Start every group first, then wait for each: they run side by side.
        let started: Vec<(Group, Option<mpsc::Receiver<GroupOutput>>)> =
            GROUPS.iter().filter(|g| enabled(**g)).map(|&g| (g, self.start_group(g, inner, &files))).collect();
        let mut out = MetricSet::new(&self.config.metrics_prefix);
        let mut runs = Vec::new();
        let mut fresh: Vec<(Group, Vec<&'static Def>, Vec<CollectorRun>, Instant)> = Vec::new();
        for (g, rx) in started {
            let answer = rx.and_then(|rx| rx.recv_timeout(deadline.left()).ok());
            match answer {
                Some(o) => {
                    let families: Vec<&'static Def> = o.set.families().iter().map(|f| f.def).collect();
                    merge_owned(&mut out, o.set);
                    runs.extend(o.runs.iter().cloned());
                    fresh.push((g, families, o.runs, o.at));
                }
                None => self.replay(g, &mut out, &mut runs),
            }
        }

        selfmetrics::collect(&self.ebpf_summary, &runs, start.elapsed(), &mut out);
        let out = Arc::new(out);
        // Kept for a replay only when replays are wanted: holding them costs one collection's
        // memory (~2 MiB at 100 VMs with their NIC and disk series; docs/benchmarks.md).
        if self.config.stale_max_age.is_zero() {
            return out;
        }
        for (g, families, runs, at) in fresh {
            let last = LastGood { collection: out.clone(), families, runs, at };
            *self.groups[g.index()].last.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
        }
        out
    }

    /// Start group `g` on its thread for the collection of `deadline`; None when it is still
    /// running for an earlier collection (it is not started twice) or cannot be started.
    fn start_group(
        &self,
        g: Group,
        deadline: Deadline,
        files: &Arc<ScrapeFiles>,
    ) -> Option<mpsc::Receiver<GroupOutput>> {
        let slot = &self.groups[g.index()];
        {
            let mut running = slot.running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(d) = *running {
                log::debug!(
                    "collector group {}: still running for a collection due {:?} ago",
                    g.name(),
                    d.instant().elapsed()
                );
                return None;
            }
            *running = Some(deadline);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let (me, files) = (self.clone(), files.clone());
        let job = Box::new(move || {
            let _d = deadline::enter(deadline);
            let mut set = MetricSet::new(&me.config.metrics_prefix);
            let mut runs = Vec::new();
            match g {
                Group::Vms => me.collect_vms(deadline, &files, &mut runs, &mut set),
                Group::Storage => storage::collect(&me, &mut runs, &mut set),
                Group::Pve => pve::collect(&me, &files, &mut runs, &mut set),
            }
            let slot = &me.groups[g.index()];
            *slot.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let out = GroupOutput { set, runs, at: Instant::now() };
            if let Err(mpsc::TrySendError::Full(o) | mpsc::TrySendError::Disconnected(o)) = tx.try_send(out) {
                // Its collection went out without it: kept for the next replay.
                log::debug!(
                    "collector group {}: answered {:?} after its deadline",
                    g.name(),
                    deadline.instant().elapsed()
                );
                *slot.late.lock().unwrap_or_else(|p| p.into_inner()) = Some(o);
            }
        });
        match slot.worker.run(g.name(), job) {
            Ok(()) => Some(rx),
            Err(e) => {
                log::warn!("collector group {}: cannot start its thread: {e}", g.name());
                *slot.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
                None
            }
        }
    }

    /// Group `g` did not answer by the deadline: its last good values if recent enough, else
    /// nothing; its collectors failed in this collection either way.
    fn replay(&self, g: Group, out: &mut MetricSet, runs: &mut Vec<CollectorRun>) {
        let slot = &self.groups[g.index()];
        let now = Instant::now();
        let mut last = slot.last.lock().unwrap_or_else(|p| p.into_inner());
        // A run that finished late is newer than what the last collection holds.
        if let Some(late) = slot.late.lock().unwrap_or_else(|p| p.into_inner()).take()
            && last.as_ref().is_none_or(|l| late.at > l.at)
        {
            let families = late.set.families().iter().map(|f| f.def).collect();
            *last = Some(LastGood { collection: Arc::new(late.set), families, runs: late.runs, at: late.at });
        }
        let why = format!("collector group {} did not answer before the scrape's deadline", g.name());
        match last.as_ref() {
            Some(l) => {
                let age = now.saturating_duration_since(l.at);
                let fresh_enough = age <= self.config.stale_max_age;
                if fresh_enough {
                    for def in &l.families {
                        if let Some(f) = l.collection.families().into_iter().find(|f| std::ptr::eq(f.def, *def)) {
                            out.family(f.def).samples.extend(f.samples.iter().cloned());
                        }
                    }
                }
                for r in &l.runs {
                    let age = if fresh_enough { age } else { Duration::ZERO };
                    runs.push(CollectorRun { name: r.name, duration: Duration::ZERO, success: false, age });
                    self.note_failure(r.name, &why);
                }
            }
            None => {
                runs.push(CollectorRun {
                    name: g.name(),
                    duration: Duration::ZERO,
                    success: false,
                    age: Duration::ZERO,
                });
                self.note_failure(g.name(), &why);
            }
        }
    }

    /// What `/healthz` reports: collector groups running past their collection's deadline by
    /// more than `grace`, and sources whose call runs past its own limit (a hung pmxcfs, a hung
    /// storage mount). Each as (what, for how long).
    pub fn stuck(&self, grace: Duration) -> Vec<(String, Duration)> {
        let mut out: Vec<(String, Duration)> = GROUPS
            .iter()
            .filter_map(|g| {
                let d = (*self.groups[g.index()].running.lock().unwrap_or_else(|p| p.into_inner()))?;
                let past = d.instant().elapsed();
                (past > grace).then(|| (format!("collector group {} past its deadline", g.name()), past))
            })
            .collect();
        if let Some(t) = self.pve_config.gate().hung() {
            out.push(("/etc/pve (pmxcfs)".into(), t));
        }
        if let Some(t) = self.pve.hung() {
            out.push(("statvfs of /".into(), t));
        }
        out.extend(self.storage.hung().into_iter().map(|(p, t)| (format!("statvfs of storage path {p}"), t)));
        out.extend(self.disk_sizes.hung().into_iter().map(|(m, t)| (format!("disk sizes on mount {m}"), t)));
        out
    }
}

/// Move the families of `part` into `out`.
fn merge_owned(out: &mut MetricSet, part: MetricSet) {
    for f in part.into_families() {
        out.family(f.def).samples.extend(f.samples);
    }
}

impl EngineState {
    pub fn ebpf_mode(&self) -> (String, String) {
        (self.ebpf_summary.mode.clone(), self.ebpf_summary.reason.clone())
    }

    /// The VM source a collection now would use.
    pub fn vm_source(&self) -> VmSourceMode {
        self.resolve_source(&mut Vec::new()).0
    }

    /// The VM source of `--vm-source` and, in PVE mode, /etc/pve's part. `auto` looks at the
    /// host on every scrape, so a host that gets PVE or libvirt later needs no restart: the
    /// config listing of /etc/pve (through the timed pmxcfs gate; a pmxcfs that does not answer
    /// keeps the source found last, PVE if none) and libvirt's run directory.
    fn resolve_source(&self, runs: &mut Vec<CollectorRun>) -> (VmSourceMode, Option<PveConfig>) {
        let wanted = self.config.vm_source;
        if !matches!(wanted, VmSourceMode::Auto | VmSourceMode::Pve) {
            return (wanted, None);
        }
        let mut pve: Option<PveConfig> = None;
        let mut failed = false;
        self.timed(runs, "pve_config", || {
            let r = self.pve_config.read(&self.host, self.config.pmxcfs_timeout).map_err(|e| e.to_string());
            failed = r.is_err();
            pve = Some(r?);
            Ok(())
        });
        if wanted == VmSourceMode::Pve {
            return (wanted, pve);
        }
        let mut last = self.last_source.lock().unwrap_or_else(|p| p.into_inner());
        let kind = match &pve {
            Some(c) if c.vm_configs.is_some() => VmSourceMode::Pve,
            Some(_) if self.host.path(crate::sources::qemu::libvirt::RUN_DIR).is_dir() => VmSourceMode::Libvirt,
            Some(_) => VmSourceMode::Qemu,
            // /etc/pve did not answer: a hung pmxcfs is a PVE node's.
            None => last.unwrap_or(VmSourceMode::Pve),
        };
        *last = Some(kind);
        drop(last);
        match kind {
            // Not a PVE host: no pve_config collector to report.
            VmSourceMode::Libvirt | VmSourceMode::Qemu if !failed => {
                runs.retain(|r| r.name != "pve_config");
                (kind, None)
            }
            _ => (kind, pve),
        }
    }

    /// The `vms` group: discovery, per-VM files, vCPUs, eBPF maps and the monitors.
    fn collect_vms(&self, deadline: Deadline, files: &ScrapeFiles, runs: &mut Vec<CollectorRun>, out: &mut MetricSet) {
        let (kind, pve) = self.resolve_source(runs);
        let mut vms: Vec<Vm> = Vec::new();
        self.timed(runs, "kvm", || {
            let pve_source;
            let libvirt_source;
            let qemu_source;
            let source: &dyn VmSource = match kind {
                VmSourceMode::Libvirt => {
                    libvirt_source = LibvirtSource {
                        host: &self.host,
                        reader: &self.libvirt,
                        owners: &self.config.qemu_allowed_users,
                    };
                    &libvirt_source
                }
                VmSourceMode::Qemu => {
                    qemu_source = QemuSource { owners: &self.config.qemu_allowed_users };
                    &qemu_source
                }
                VmSourceMode::Pve | VmSourceMode::Auto => {
                    pve_source = PveSource { host: &self.host, config: pve.as_ref() };
                    &pve_source
                }
            };
            let mut scanner = self.scanner.lock().unwrap_or_else(|p| p.into_inner());
            let found = vm::discover(&self.host, &mut scanner, source).map_err(|e| format!("listing /proc: {e}"))?;
            drop(scanner);
            for (pid, why) in &found.skipped {
                log::debug!("pid {pid}: not reported: {why}");
            }
            vms = found.vms;
            let mut held = self.process_files.lock().unwrap_or_else(|p| p.into_inner());
            let r = kvm::collect(&self.host, files, &mut held, &mut vms, out);
            // A domain whose files could not be read is missing: the collector failed.
            match (r, found.errors.is_empty()) {
                (r, true) => r,
                (Ok(()), false) => Err(found.errors.join("; ")),
                (Err(e), false) => Err(format!("{}; {e}", found.errors.join("; "))),
            }
        });
        // NICs and disks from each VM's QEMU monitor, within --qm-terminal-timeout and the
        // deadline. The exchange mostly waits for the QEMU processes to answer, so it runs on a
        // thread of its own while the collectors below read /proc and the eBPF maps.
        let at = runs.len();
        let fetch = self.spawn_fetch(&vms, deadline);
        // vCPU schedstat (both modes; before eBPF, which asks the same thread cache) and
        // KVM debugfs stats.
        self.timed(runs, "vcpu", || vcpu::collect(&self.vcpu_threads, &vms, out));
        if let Some(d) = &self.kvm_debugfs {
            let mut d = d.lock().unwrap_or_else(|p| p.into_inner());
            self.timed(runs, "kvm_debugfs", || d.collect(&vms, out));
        }
        let mut st = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counters) = st.counters.as_mut() {
            // vCPU threads of the VMs, for the run-queue program (as the vcpu collector
            // listed and checked them just now).
            let vcpus: Vec<(u32, u32)> = vms
                .iter()
                .flat_map(|vm| {
                    self.vcpu_threads.listed(vm.pid).unwrap_or_default().into_iter().map(move |t| (vm.pid, t.tid))
                })
                .collect();
            self.timed(runs, "ebpf", || ebpf_maps::collect(&self.host, counters, &vms, &vcpus, out));
        }
        drop(st);
        let (elapsed, result, devices) = fetch.join(deadline);
        // Reported where they always were: qm, nic and disk after kvm.
        let mut monitor_runs = Vec::new();
        self.record(&mut monitor_runs, "qm", elapsed, result);
        self.timed(&mut monitor_runs, "nic", || nicdisk::collect_nics(&self.host, &devices, out));
        self.timed(&mut monitor_runs, "disk", || nicdisk::collect_disks(&self.host, &self.disk_sizes, &devices, out));
        runs.splice(at..at, monitor_runs);
    }
}

/// Run a collector: its time and result. A bug that panics in one collector costs that
/// collector, not the scrape.
fn run_timed(f: impl FnOnce() -> Result<(), String>) -> (Duration, Result<(), String>) {
    let t = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(format!("panicked: {}", panic_message(&p))));
    (t.elapsed(), r)
}

/// The `qm` collector: every VM's monitor, timed.
fn fetch_devices(
    monitor: &crate::sources::qemu::monitor::Monitor,
    host: &HostRoot,
    vms: &[Vm],
    deadline: Deadline,
) -> FetchResult {
    let mut devices = Vec::new();
    let (d, r) = run_timed(|| nicdisk::fetch(monitor, host, vms, deadline, &mut devices));
    (d, r, devices)
}

type FetchResult = (Duration, Result<(), String>, Vec<VmDevices>);

/// The monitor exchange of one collection, running on the fetch worker (or done already).
enum Fetch {
    Running(mpsc::Receiver<FetchResult>),
    Done(FetchResult),
}

impl Fetch {
    fn join(self, deadline: Deadline) -> FetchResult {
        match self {
            // The exchange ends by the deadline itself; this wait is the guarantee that the
            // collection does not wait past it even so.
            Fetch::Running(rx) => rx.recv_timeout(deadline.left() + Duration::from_millis(50)).unwrap_or_else(|e| {
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => "the monitor exchange did not end by the scrape's deadline",
                    mpsc::RecvTimeoutError::Disconnected => "the monitor thread ended without an answer",
                };
                (Duration::ZERO, Err(why.into()), Vec::new())
            }),
            Fetch::Done(r) => r,
        }
    }
}

impl EngineState {
    /// Start the monitor exchange of `vms` (the `qm` collector) on the fetch worker; inline when
    /// there is no monitor to ask (`--qm-mode off`: nothing to wait for) or no thread can be started.
    fn spawn_fetch(&self, vms: &[Vm], deadline: Deadline) -> Fetch {
        if self.config.qm_mode == crate::config::QmMode::Off {
            return Fetch::Done(fetch_devices(&self.monitor, &self.host, vms, deadline));
        }
        let (monitor, host, owned) = (self.monitor.clone(), self.host.clone(), vms.to_vec());
        let (tx, rx) = mpsc::sync_channel(1);
        let job = Box::new(move || {
            let _d = deadline::enter(deadline);
            let _ = tx.send(fetch_devices(&monitor, &host, &owned, deadline));
        });
        match self.fetch_worker.run("qm-fetch", job) {
            Ok(()) => Fetch::Running(rx),
            Err(e) => {
                log::warn!("cannot start the monitor thread ({e}): asking the monitors inline");
                Fetch::Done(fetch_devices(&self.monitor, &self.host, vms, deadline))
            }
        }
    }

    fn timed(&self, runs: &mut Vec<CollectorRun>, name: &'static str, f: impl FnOnce() -> Result<(), String>) {
        let (duration, r) = run_timed(f);
        self.record(runs, name, duration, r);
    }

    /// Note a collector's run, logging when it starts or stops failing.
    fn record(&self, runs: &mut Vec<CollectorRun>, name: &'static str, duration: Duration, r: Result<(), String>) {
        match &r {
            Err(e) => self.note_failure(name, e),
            Ok(()) => {
                if self.failing.lock().unwrap_or_else(|p| p.into_inner()).remove(name) {
                    log::info!("collector {name} works again");
                }
            }
        }
        runs.push(CollectorRun { name, duration, success: r.is_ok(), age: Duration::ZERO });
    }

    fn note_failure(&self, name: &'static str, e: &str) {
        if self.failing.lock().unwrap_or_else(|p| p.into_inner()).insert(name) {
            log::warn!("collector {name} failed: {e}");
        } else {
            log::debug!("collector {name} still failing: {e}");
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// Shared handle.
pub type SharedEngine = Engine;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_collector_costs_only_itself() {
        let cfg = Config::from_args(["pve-exporter", "--ebpf", "off", "--root", "/nonexistent"]).unwrap();
        let engine = Engine::new(cfg).unwrap();
        let mut runs = Vec::new();
        engine.timed(&mut runs, "boom", || panic!("bad input"));
        engine.timed(&mut runs, "fine", || Ok(()));
        assert_eq!(runs.iter().map(|r| (r.name, r.success)).collect::<Vec<_>>(), [("boom", false), ("fine", true)]);
        // A whole collection over a root without /proc: kvm fails, the scrape still answers.
        let set = engine.collect();
        let ok = set.get("pve_exporter_collector_success").unwrap();
        assert!(ok.samples.iter().any(|s| s.labels[0].1 == "kvm" && s.value == crate::metrics::Value::Int(0)));
    }
}

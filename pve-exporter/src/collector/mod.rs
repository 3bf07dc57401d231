//! Collection: one scrape runs every collector over the sources and fills one [`MetricSet`].
//! Each collector's failure is its own: it loses its series and reports
//! `pve_exporter_collector_success{collector} 0`; the scrape goes on.

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
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use self::kvm_debugfs::KvmDebugfs;
pub use self::vcpu::VcpuThreadCache;
use crate::{
    config::{Config, KvmDebugfsMode, VmSourceMode},
    heldfile::{FdBudget, HeldFiles, OnStale},
    host::HostRoot,
    metrics::MetricSet,
    sources::{
        ebpf::{self, EbpfStatus},
        libvirt::LibvirtReader,
        monitor::VmDevices,
        pve_config::{PveConfig, PveConfigReader},
    },
    vm::{self, LibvirtSource, PveSource, QemuSource, Vm, VmSource},
};

/// How one collector did in a scrape.
#[derive(Debug, Clone)]
pub struct CollectorRun {
    pub name: &'static str,
    pub duration: Duration,
    pub success: bool,
}

/// Long-lived state shared by all scrapes.
pub struct Engine {
    pub config: Config,
    pub host: HostRoot,
    pve_config: Arc<PveConfigReader>,
    /// eBPF state; the lock is held only while a scrape reads the maps.
    ebpf: Mutex<EbpfStatus>,
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
    monitor: crate::sources::monitor::Monitor,
    /// The PVE collectors (node_status, vm_pressure, ha_status, physical_disk): plan, API client, caches.
    pve: pve::PveState,
    /// libvirt's status XML per domain, parsed once per file version.
    libvirt: LibvirtReader,
    /// The /proc scan with its per-process verdicts (kept until a process forks or execs).
    scanner: Mutex<crate::sources::proc_scan::ProcScanner>,
    /// The thread the monitor exchange runs on, kept between scrapes.
    fetch_worker: crate::host::Worker,
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
        let scanner = Mutex::new(crate::sources::proc_scan::ProcScanner::new(&host));
        Ok(Self {
            vcpu_threads: VcpuThreadCache::with_budget(host.clone(), fds.clone()),
            process_files: Mutex::new(HeldFiles::new(fds.clone(), OnStale::Reopen)),
            kvm_debugfs,
            pve: pve::PveState::new(&config, &host, pve_config.gate().clone(), fds),
            host,
            storage: storage::StorageState::new(&config, pve_config.gate().clone()),
            pve_config,
            ebpf: Mutex::new(ebpf),
            failing: Mutex::default(),
            monitor: crate::sources::monitor::Monitor::from_config(&config),
            libvirt: LibvirtReader::new(),
            scanner,
            fetch_worker: crate::host::Worker::default(),
            config,
        })
    }

    pub fn ebpf_mode(&self) -> (String, String) {
        let st = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        (st.mode.to_string(), st.reason.clone())
    }

    /// The VM source of `--vm-source`; `auto` looks at the host on every scrape (two `stat`s),
    /// so a host that gets PVE or libvirt later needs no restart.
    pub fn vm_source(&self) -> VmSourceMode {
        match self.config.vm_source {
            VmSourceMode::Auto if self.host.path("etc/pve/qemu-server").is_dir() => VmSourceMode::Pve,
            VmSourceMode::Auto if self.host.path(crate::sources::libvirt::RUN_DIR).is_dir() => VmSourceMode::Libvirt,
            VmSourceMode::Auto => VmSourceMode::Qemu,
            forced => forced,
        }
    }

    /// One whole scrape. Blocking: call it from a blocking thread.
    pub fn collect(&self) -> MetricSet {
        let start = Instant::now();
        let mut out = MetricSet::new(&self.config.metrics_prefix);
        let mut runs = Vec::new();
        let files = crate::host::ScrapeFiles::new(&self.host);

        if self.config.collect_running_vms {
            let kind = self.vm_source();
            let mut pve: Option<PveConfig> = None;
            if kind == VmSourceMode::Pve {
                self.timed(&mut runs, "pve_config", || {
                    let c = self.pve_config.read(&self.host, self.config.pmxcfs_timeout).map_err(|e| e.to_string())?;
                    pve = Some(c);
                    Ok(())
                });
            }
            let mut vms: Vec<Vm> = Vec::new();
            self.timed(&mut runs, "kvm", || {
                let pve_source;
                let libvirt_source;
                let source: &dyn VmSource = match kind {
                    VmSourceMode::Libvirt => {
                        libvirt_source = LibvirtSource { host: &self.host, reader: &self.libvirt };
                        &libvirt_source
                    }
                    VmSourceMode::Qemu => &QemuSource,
                    VmSourceMode::Pve | VmSourceMode::Auto => {
                        pve_source = PveSource { host: &self.host, config: pve.as_ref() };
                        &pve_source
                    }
                };
                let mut scanner = self.scanner.lock().unwrap_or_else(|p| p.into_inner());
                let found =
                    vm::discover(&self.host, &mut scanner, source).map_err(|e| format!("listing /proc: {e}"))?;
                drop(scanner);
                for (pid, why) in &found.skipped {
                    log::debug!("pid {pid}: not reported: {why}");
                }
                vms = found.vms;
                let mut held = self.process_files.lock().unwrap_or_else(|p| p.into_inner());
                let r = kvm::collect(&self.host, &files, &mut held, &mut vms, &mut out);
                // A domain whose files could not be read is missing: the collector failed.
                match (r, found.errors.is_empty()) {
                    (r, true) => r,
                    (Ok(()), false) => Err(found.errors.join("; ")),
                    (Err(e), false) => Err(format!("{}; {e}", found.errors.join("; "))),
                }
            });
            // NICs and disks from each VM's QEMU monitor, within --qm-terminal-timeout. The
            // exchange mostly waits for the QEMU processes to answer, so it runs on a thread of
            // its own while the collectors below read /proc and the eBPF maps.
            let at = runs.len();
            let fetch = self.spawn_fetch(&vms);
            // vCPU schedstat (both modes; before eBPF, which asks the same thread cache) and
            // KVM debugfs stats.
            self.timed(&mut runs, "vcpu", || vcpu::collect(&self.vcpu_threads, &vms, &mut out));
            if let Some(d) = &self.kvm_debugfs {
                let mut d = d.lock().unwrap_or_else(|p| p.into_inner());
                self.timed(&mut runs, "kvm_debugfs", || d.collect(&vms, &mut out));
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
                self.timed(&mut runs, "ebpf", || ebpf_maps::collect(&self.host, counters, &vms, &vcpus, &mut out));
            }
            drop(st);
            let (elapsed, result, devices) = fetch.join();
            // Reported where they always were: qm, nic and disk after kvm.
            let mut monitor_runs = Vec::new();
            self.record(&mut monitor_runs, "qm", elapsed, result);
            self.timed(&mut monitor_runs, "nic", || nicdisk::collect_nics(&self.host, &devices, &mut out));
            self.timed(&mut monitor_runs, "disk", || nicdisk::collect_disks(&self.host, &devices, &mut out));
            runs.splice(at..at, monitor_runs);
        }

        if self.config.collect_storage {
            storage::collect(self, &mut runs, &mut out);
        }
        pve::collect(self, &files, &mut runs, &mut out);

        let st = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        selfmetrics::collect(&st, &runs, start.elapsed(), &mut out);
        out
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
fn fetch_devices(monitor: &crate::sources::monitor::Monitor, host: &HostRoot, vms: &[Vm]) -> FetchResult {
    let mut devices = Vec::new();
    let (d, r) = run_timed(|| nicdisk::fetch(monitor, host, vms, &mut devices));
    (d, r, devices)
}

type FetchResult = (Duration, Result<(), String>, Vec<VmDevices>);

/// The monitor exchange of one collection, running on the fetch worker (or done already).
enum Fetch {
    Running(std::sync::mpsc::Receiver<FetchResult>),
    Done(FetchResult),
}

impl Fetch {
    fn join(self) -> FetchResult {
        match self {
            // The job sends exactly once; no answer means it panicked outside `run_timed`.
            Fetch::Running(rx) => rx.recv().unwrap_or_else(|_| {
                (Duration::ZERO, Err("the monitor thread ended without an answer".into()), Vec::new())
            }),
            Fetch::Done(r) => r,
        }
    }
}

impl Engine {
    /// Start the monitor exchange of `vms` (the `qm` collector) on the fetch worker; inline when
    /// there is no monitor to ask (`--qm-mode off`: nothing to wait for) or no thread can be started.
    fn spawn_fetch(&self, vms: &[Vm]) -> Fetch {
        if self.config.qm_mode == crate::config::QmMode::Off {
            return Fetch::Done(fetch_devices(&self.monitor, &self.host, vms));
        }
        let (monitor, host, owned) = (self.monitor.clone(), self.host.clone(), vms.to_vec());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job = Box::new(move || {
            let _ = tx.send(fetch_devices(&monitor, &host, &owned));
        });
        match self.fetch_worker.run("qm-fetch", job) {
            Ok(()) => Fetch::Running(rx),
            Err(e) => {
                log::warn!("cannot start the monitor thread ({e}): asking the monitors inline");
                Fetch::Done(fetch_devices(&self.monitor, &self.host, vms))
            }
        }
    }

    fn timed(&self, runs: &mut Vec<CollectorRun>, name: &'static str, f: impl FnOnce() -> Result<(), String>) {
        let (duration, r) = run_timed(f);
        self.record(runs, name, duration, r);
    }

    /// Note a collector's run, logging when it starts or stops failing.
    fn record(&self, runs: &mut Vec<CollectorRun>, name: &'static str, duration: Duration, r: Result<(), String>) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match &r {
            Err(e) if failing.insert(name) => log::warn!("collector {name} failed: {e}"),
            Err(e) => log::debug!("collector {name} still failing: {e}"),
            Ok(()) if failing.remove(name) => log::info!("collector {name} works again"),
            Ok(()) => {}
        }
        runs.push(CollectorRun { name, duration, success: r.is_ok() });
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// Shared handle.
pub type SharedEngine = Arc<Engine>;

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

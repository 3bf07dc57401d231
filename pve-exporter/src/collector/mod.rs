//! Collectors: each turns what the sources read into metric families, and all of them are
//! registered in one place, [`REGISTRY`] (node_exporter's `registerCollector` model).
//!
//! A collector is one file here (or a folder where it has several) with one type implementing
//! [`Collector`]: its name, its families (from `catalog`), what it needs from the scrape
//! ([`Need`]: the VM list, the monitors' answers, /etc/pve), and `collect`, which fills the
//! metric set and returns a typed [`Error`]. The engine (`engine.rs`) runs the registry; it has
//! no code of any one collector. What several collectors share per scrape (the VM list, the
//! monitor answers) is made once per scrape by a stage (`stages.rs`) on first use.
//!
//! Each collector's failure is its own: it loses its series and reports
//! `pve_exporter_collector_success{collector} 0`; the scrape goes on. Adding one:
//! docs/architecture.md, "Adding a collector".

mod agent;
mod backup;
pub(crate) mod balloon;
mod disk;
mod ebpf_maps;
pub mod engine;
mod error;
mod guest;
mod kvm;
pub mod kvm_debugfs;
mod lxc;
pub(crate) mod nic;
mod ppe;
mod pve;
mod replication;
mod selfmetrics;
mod stages;
mod storage;
pub mod vcpu;

use std::{
    cell::{Cell, RefCell},
    time::Duration,
};

pub use self::{
    engine::{CollectorRun, Engine, EngineState, SharedEngine},
    error::Error,
    vcpu::VcpuThreadCache,
};
use crate::{
    catalog::Def,
    config::{CollectorSwitch, Config},
    deadline::Deadline,
    host::{HostRoot, ScrapeFiles},
    metrics::MetricSet,
};

/// The thread a collector runs on. Groups run side by side, each on a kept thread of its own,
/// so one that hangs where no time limit reaches costs only its own collectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Discovery, per-VM files, vCPUs, eBPF maps and the monitors.
    Vms,
    /// storage.cfg, statvfs, zfs and lvm.
    Storage,
    /// The PVE collectors (local files or the API).
    Pve,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Vms, Group::Storage, Group::Pve];

    pub fn name(self) -> &'static str {
        match self {
            Group::Vms => "vms",
            Group::Storage => "storage",
            Group::Pve => "pve",
        }
    }
}

/// What a collector needs from the scrape: made once per scrape by a stage (stages.rs), on
/// the first collector that asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// /etc/pve's guest configs (the `pve_config` stage).
    PveConfig,
    /// The VMs of the host with their process files (discovery, reported by `kvm`).
    Vms,
    /// Every VM's monitor answers (the `qm` stage). It runs in the background from the moment
    /// the VM list is known; collectors that need it run after the others of their group.
    Monitor,
    /// The PVE API session and, in cluster scope, the node list (the `pve_nodes` stage).
    PveApi,
    /// This node's configured guests, VMs and containers, running or not (/etc/pve).
    Guests,
}

/// A collector: one registry line, one file.
pub trait Collector: Send + Sync {
    /// Its name: `pve_exporter_collector_success{collector}` and `--collector.<name>`.
    fn name(&self) -> &'static str;
    /// The families it emits, as sections of the catalogue (the engine checks, in debug
    /// builds, that it emits no other).
    fn families(&self) -> &'static [&'static [&'static Def]];
    fn group(&self) -> Group;
    fn needs(&self) -> &'static [Need] {
        &[]
    }
    /// What it says of itself whether or not it is switched on (once per scrape, first; it
    /// must not wait for anything).
    fn describe(&self, _config: &Config, _out: &mut MetricSet) {}
    /// What of it runs past its own time limit now (for `/healthz`): (what, for how long).
    fn stuck(&self) -> Vec<(String, Duration)> {
        Vec::new()
    }
    /// Fill `out`. `Err(Error::NotApplicable)`: nothing to do on this host, not reported;
    /// `Err(Error::Gone)`: what it read vanished mid-scrape, reported as success.
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error>;
}

/// What the engine gives a collector when it is built (once, at start).
pub struct Setup<'a> {
    pub config: &'a Config,
    pub host: &'a HostRoot,
    pub stages: &'a stages::StageState,
    /// Whether the eBPF programs count (then KVM debugfs is not read in `auto` mode).
    pub ebpf_counting: bool,
    /// One descriptor budget for every file held open between scrapes.
    pub fds: std::sync::Arc<crate::heldfile::FdBudget>,
}

/// One registry line: a name known before anything is built (for the flags), and how to build it.
pub struct Entry {
    pub name: &'static str,
    pub help: &'static str,
    pub default_on: bool,
    pub kind: EntryKind,
}

pub enum EntryKind {
    /// A collector, built at start when switched on.
    Collector(fn(&Setup) -> Box<dyn Collector>),
    /// A scrape stage that reports its own success (`pve_config`, `qm`, `pve_nodes`); switched
    /// off, the stage is not run and what needs it has nothing.
    Stage,
    /// A part of another collector that reports its own success (`storage_zfs`, `storage_lvm`).
    Part,
}

/// Every collector, stage and part, in the order their runs are reported.
pub static REGISTRY: &[Entry] = &[
    stage("pve_config", "Guest configs and pools from /etc/pve (PVE hosts)"),
    collector("kvm", "Per-VM process figures from /proc; discovery of the VMs", kvm::new),
    stage("qm", "Every PVE VM's QEMU monitor (QMP or qm monitor): NIC and disk topology and I/O"),
    collector("nic", "Per-VM NICs: tap counters from netlink or sysfs", nic::new),
    collector("disk", "Per-VM disks: sizes from QEMU or the host, I/O counters", disk::new),
    collector(
        "balloon",
        "Per-VM guest memory: balloon size and the guest's own memory statistics (QEMU monitor)",
        balloon::new,
    ),
    collector(
        "agent",
        "Per-VM guest file systems from the QEMU guest agent (PVE VMs with `agent: 1`), asked once per --agent-interval",
        agent::new,
    ),
    collector("vcpu", "Per-vCPU schedstat: run time and run-queue wait", vcpu::new),
    collector("kvm_debugfs", "KVM's debugfs statistics per VM (--kvm-debugfs)", kvm_debugfs::new),
    collector("ebpf", "Per-VM counters of the eBPF programs (VM exits, run-queue wait, halts)", ebpf_maps::new),
    collector(
        "guest",
        "Every guest configured on this node, VMs and containers, running or not (/etc/pve)",
        guest::new,
    ),
    collector(
        "lxc",
        "Running LXC containers: cgroup CPU, memory, I/O, pressure; veth counters; file systems",
        lxc::new,
    ),
    // Off by default: it doubles a scrape's series (PPE's one-series-per-state lock and HA
    // families) and, at 100 VMs, adds ~5 ms of CPU to a ~9 ms scrape (docs/benchmarks.md).
    collector_off("ppe", "prometheus-pve-exporter's families (pve_up, pve_guest_info, ...) from local data", ppe::new),
    collector("storage", "Storages of /etc/pve/storage.cfg, sized by statvfs", storage::new),
    part("storage_zfs", "zfspool storages sized by zfs and zpool"),
    part("storage_lvm", "lvm and lvmthin storages sized by vgs and lvs"),
    collector(
        "backup",
        "Each guest's last backup, backup archives and job coverage (task list, dump directories, jobs.cfg)",
        backup::new,
    ),
    collector(
        "replication",
        "Storage replication jobs of this node's guests: last sync, next sync, failures (replication.cfg, PVE's state)",
        replication::new,
    ),
    stage("pve_nodes", "The cluster's node list from the PVE API (--pve-scope cluster)"),
    collector("node_status", "This node's status (local files or the API)", pve::node_status),
    collector("vm_pressure", "Each VM's pressure stall figures (local cgroups or the API)", pve::vm_pressure),
    collector("ha_status", "HA manager, resources and LRM status (pmxcfs or the API)", pve::ha_status),
    collector("physical_disk", "Physical disks and their SMART health (the PVE API)", pve::physical_disk),
];

const fn collector(name: &'static str, help: &'static str, new: fn(&Setup) -> Box<dyn Collector>) -> Entry {
    Entry { name, help, default_on: true, kind: EntryKind::Collector(new) }
}
/// A collector that is off unless switched on (`--collector.<name>`).
const fn collector_off(name: &'static str, help: &'static str, new: fn(&Setup) -> Box<dyn Collector>) -> Entry {
    Entry { name, help, default_on: false, kind: EntryKind::Collector(new) }
}
const fn stage(name: &'static str, help: &'static str) -> Entry {
    Entry { name, help, default_on: true, kind: EntryKind::Stage }
}
const fn part(name: &'static str, help: &'static str) -> Entry {
    Entry { name, help, default_on: true, kind: EntryKind::Part }
}

/// The `--collector.<name>` switches, one per registry line (config.rs makes the flags).
pub fn switches() -> Vec<CollectorSwitch> {
    REGISTRY.iter().map(|e| CollectorSwitch { name: e.name, help: e.help, default_on: e.default_on }).collect()
}

/// Position of a registry line (the order runs are reported in).
pub fn position(name: &str) -> usize {
    REGISTRY.iter().position(|e| e.name == name).unwrap_or(REGISTRY.len())
}

impl Config {
    /// Parse the command line with the registry's `--collector.<name>` flags.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::parse_with_collectors(args, &switches())
    }
}

/// What one collector gets for one scrape.
pub struct Context<'a> {
    pub engine: &'a EngineState,
    pub config: &'a Config,
    pub host: &'a HostRoot,
    /// Host-wide files read once per scrape.
    pub files: &'a ScrapeFiles,
    /// No wait of the collector may end after it (the sources cap theirs by it too).
    pub deadline: Deadline,
    stages: &'a stages::Stages<'a>,
    /// Runs reported by what this collector started (a stage, a part, a node of the cluster),
    /// before its own.
    runs: RefCell<Vec<CollectorRun>>,
    /// Whether its own run is reported (not when it reported one per node).
    own_run: Cell<bool>,
    /// Runs of its parts, reported after its own.
    after: RefCell<Vec<CollectorRun>>,
}

impl<'a> Context<'a> {
    /// Whether the registry line `name` (a part, a stage) is switched on.
    pub fn enabled(&self, name: &str) -> bool {
        self.config.collector_enabled(name)
    }

    /// Run the part `name` of this collector and report it as a run of its own (when switched on).
    pub fn part(&self, name: &'static str, f: impl FnOnce() -> Result<(), Error>) {
        if self.enabled(name) {
            let (duration, r) = error::run_timed(f);
            self.report(name, duration, r);
        }
    }

    /// Report a run under `name` (a part, a stage, a `<collector>/<node>` pair).
    pub fn report(&self, name: &'static str, duration: Duration, r: Result<(), Error>) {
        if let Some(run) = self.engine.record(name, duration, r) {
            self.runs.borrow_mut().push(run);
        }
    }

    /// The VMs of this scrape (made by the first collector that asks).
    pub fn vms(&self) -> &stages::VmList {
        self.stages.vms(self)
    }

    /// This scrape's listing of /etc/pve (the `pve_config` stage the VM list is made from);
    /// None where the stage did not read it (off, not a PVE source, pmxcfs failed).
    pub fn pve_config(&self) -> Option<&crate::sources::pve::config::PveConfig> {
        self.stages.pve_config(self).1.as_ref()
    }

    /// Every VM's devices from its monitor, waited for until the deadline.
    pub fn devices(&self) -> &[crate::sources::qemu::monitor::VmDevices] {
        self.stages.devices(self)
    }

    /// The PVE API session and node list (None: no collector reads the API).
    pub fn pve_api(&self) -> Option<&pve::ApiStage<'a>> {
        self.stages.pve_api(self)
    }

    /// This node's configured guests (read by the first collector that asks).
    pub fn guests(&self) -> &stages::GuestList<'a> {
        self.stages.guests()
    }

    /// Pools by vmid from /etc/pve/user.cfg (empty off PVE).
    pub fn pools(&self) -> std::sync::Arc<std::collections::HashMap<String, crate::sources::pve::config::PoolInfo>> {
        self.stages.pve_config(self).1.as_ref().map(|c| c.pools.clone()).unwrap_or_default()
    }

    /// The scrape's one netlink dump of interface counters (None: read sysfs); `wanted` adds
    /// names to PVE's guest interfaces when this call makes the dump.
    pub fn host_links(&self, wanted: &dyn Fn(&str) -> bool) -> Option<&crate::sources::kernel::netlink::Dump> {
        self.stages.host_links(wanted)
    }

    /// Counters of the guests' host interfaces (`tap<vmid>i<N>`, `veth<ctid>i<N>`) by name.
    pub fn guest_links(&self) -> stages::GuestLinks<'_> {
        self.stages.guest_links()
    }

    /// Whether container `ctid` is frozen (its cgroup's freezer).
    pub fn container_frozen(&self, ctid: &str) -> bool {
        self.stages.container_frozen(ctid)
    }

    /// The containers running on this host.
    pub fn containers(&self) -> &[stages::RunningContainer] {
        self.stages.containers()
    }

    /// Container `ctid`'s cgroup figures, read once per scrape (None: it stopped).
    pub fn container_stats(
        &self,
        ctid: &str,
        errors: &mut Vec<crate::sources::error::SourceError>,
    ) -> Option<std::rc::Rc<crate::sources::kernel::cgroup::CgroupStats>> {
        self.stages.container_stats(ctid, errors)
    }

    /// Record container `ctid`'s root file system figures for other collectors of the scrape.
    pub fn set_container_rootfs(&self, ctid: &str, u: crate::sources::storage::statvfs::Usage) {
        self.stages.ct_rootfs.borrow_mut().insert(ctid.to_string(), u);
    }

    /// Container `ctid`'s root file system figures, when `lxc` read them in this scrape.
    pub fn container_rootfs(&self, ctid: &str) -> Option<crate::sources::storage::statvfs::Usage> {
        self.stages.ct_rootfs.borrow().get(ctid).copied()
    }

    /// The host's cgroup hierarchies.
    pub fn cgroups(&self) -> Option<&crate::sources::kernel::cgroup::Hierarchies> {
        self.stages.cgroups()
    }

    /// What the stages keep between scrapes.
    pub fn stage_state(&self) -> &'a stages::StageState {
        self.stages.state()
    }

    /// Report runs of parts that ran inside this collector, after its own run.
    pub fn after(&self, parts: Vec<(&'static str, Duration, Result<(), Error>)>) {
        let runs: Vec<CollectorRun> =
            parts.into_iter().filter_map(|(name, d, r)| self.engine.record(name, d, r)).collect();
        self.after.borrow_mut().extend(runs);
    }

    /// The runs this collector reported are all of its runs (one per node of the cluster):
    /// no run of its own is added.
    pub fn reported_own_runs(&self) {
        self.own_run.set(false);
    }
}

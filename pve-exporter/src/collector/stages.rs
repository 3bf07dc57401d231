//! Scrape stages: what several collectors share in one scrape, made once, on the first
//! collector that asks ([`Need`](super::Need)). A stage that reports its own success does so
//! under its registry name (`pve_config`, `qm`, `pve_nodes`) just before the collector that
//! started it; the VM list's problems are reported by `kvm`.
//!
//! - `pve_config`: /etc/pve's guest configs and pools, through the timed pmxcfs gate;
//! - the VM list: discovery (PVE, libvirt or plain QEMU) and each VM's process files;
//! - `qm`: every VM's monitor, on a thread of its own from the moment the VM list is known,
//!   while the other collectors read /proc and the eBPF maps;
//! - `pve_nodes`: the PVE API session and, in cluster scope, the node list.

use std::{
    cell::{OnceCell, RefCell},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use super::{Context, Error, error::run_timed, pve::PveState};
use crate::{
    config::{Config, QmMode, VmSourceMode},
    deadline::{self, Deadline},
    heldfile::{FdBudget, HeldFiles, OnStale},
    host::{HostRoot, Worker, is_gone},
    sources::{
        kernel::{
            cgroup::{self, CgroupFiles, CgroupStats, Hierarchies},
            netlink::{self, LinkStats},
        },
        proc::{
            pidfd,
            process::{self, ProcessStats},
            scan::ProcScanner,
        },
        pve::{
            config::{PveConfig, PveConfigReader},
            guests::{GuestReader, Guests},
        },
        qemu::{
            libvirt::{self, LibvirtReader},
            monitor::{Monitor, MonitorError, Target, VmDevices},
        },
    },
    vm::{self, LibvirtSource, PveSource, QemuSource, Vm, VmSource},
};

/// The most of a group's time kept, after the monitors, for what needs their answers.
const AFTER_MONITORS: Duration = Duration::from_millis(200);

/// What the stages keep between scrapes.
pub struct StageState {
    pub pve_config: std::sync::Arc<PveConfigReader>,
    /// The VM source `--vm-source auto` found last (kept while /etc/pve does not answer).
    last_source: Mutex<Option<VmSourceMode>>,
    /// The /proc scan with its per-process verdicts (kept until a process forks or execs).
    scanner: Mutex<ProcScanner>,
    /// libvirt's status XML per domain, parsed once per file version.
    libvirt: LibvirtReader,
    /// Each VM process's stat, status and io, held open by pid.
    process_files: Mutex<HeldFiles<u32>>,
    /// The cgroup mounts, read again when the kernel reports a mount change.
    cgroup_mounts: Mutex<crate::sources::kernel::cgroup::HierarchyWatch>,
    /// Each VM's QEMU monitor, its topology cache and limits.
    pub monitor: Monitor,
    /// The thread the monitor exchange runs on, kept between scrapes.
    fetch_worker: Worker,
    /// vCPU threads of each QEMU process (the vcpu collector lists them; eBPF asks the list).
    pub vcpu_threads: super::VcpuThreadCache,
    /// The PVE collectors' plan, API client and caches.
    pub pve: PveState,
    /// This node's guest configs, each parsed once per version.
    guests: Arc<GuestReader>,
    /// Each running container's cgroup files, held open between scrapes (by mount and cgroup).
    ct_files: Mutex<HeldFiles<crate::sources::kernel::cgroup::CgroupKey>>,
    /// Each running container's init, kept while it runs.
    ct_init: Mutex<ContainerInits>,
    /// The interfaces' names between scrapes (each scrape dumps only their counters).
    links: Mutex<netlink::LinkWatch>,
    /// Each running container's cgroup limits as last read, and what they were read under.
    ct_limits: Mutex<std::collections::HashMap<String, KnownLimits>>,
    /// Each running container's counters that move only with the host's, as last read.
    ct_quiet: Mutex<std::collections::HashMap<String, KnownQuiet>>,
    /// The host's own counters of those, held open.
    host_counters: Mutex<HostCounterFiles>,
}

/// A container's figures that change only when the host's do, each with the host's figure
/// read before it. While the host's is the same, the container's file is not read again:
/// - OOM kills (`memory.events`, v1 `memory.oom_control`): the kernel counts each kill in the
///   victim's memory cgroup and in /proc/vmstat's `oom_kill`, in one place (mm/oom_kill.c
///   `__oom_kill_process`);
/// - pressure stall totals (`{cpu,memory,io}.pressure`): a task stalled in a cgroup is
///   stalled in each ancestor up to the root (kernel/sched/psi.c walks the groups up to
///   `psi_system`), whose `some` total is /proc/pressure/*'s; a cgroup's `full` time is part
///   of its `some` time. The files show µs: a container's total can move by less than 1 µs
///   unseen, until the host's moves.
///
/// On a host whose memory is not short, the memory pressure and OOM files of every container
/// are read once; CPU and I/O pressure are read again whenever the host stalled at all since.
/// 300 of the 1 200 cgroup reads per scrape at 100 containers on an idle bench host, for
/// four reads of the host's files.
struct KnownQuiet {
    pid: u32,
    oom_kills: Option<(u64, u64)>,
    pressure: [Option<(u64, crate::sources::proc::pressure::Pressure)>; 3],
}

/// /proc/vmstat and /proc/pressure/{cpu,memory,io}, opened on first use where the host root's
/// /proc is the daemon's own.
#[derive(Default)]
struct HostCounterFiles {
    opened: bool,
    vmstat: Option<std::fs::File>,
    pressure: [Option<std::fs::File>; 3],
}

/// `oom_kill` of /proc/vmstat. Read to the end: /proc/vmstat is a seq_file of one record per
/// line, which hands out at most a page per read (~4 KiB of its ~180 lines; `oom_kill` is
/// past the middle), so [`crate::heldfile::pread_whole`]'s one short read is not the end here.
fn vmstat_oom_kills(f: &std::fs::File, buf: &mut Vec<u8>) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    buf.clear();
    buf.resize(16 << 10, 0);
    let mut n = 0;
    loop {
        if n == buf.len() {
            return None; // not the file it should be
        }
        match f.read_at(&mut buf[n..], n as u64).ok()? {
            0 => break,
            k => n += k,
        }
    }
    crate::sources::proc::node::vmstat_value(&buf[..n], "oom_kill")
}

/// The host's counters of one scrape ([`KnownQuiet`]).
#[derive(Debug, Clone, Copy, Default)]
struct HostTotals {
    oom_kills: Option<u64>,
    pressure_some_us: [Option<u64>; 3],
}

/// A container's limits ([`crate::sources::kernel::cgroup::Limits`]) and when they hold: PVE
/// writes the limit files when the container starts and when its config changes (`pct set`
/// applies memory, swap and CPU limits to a running container and writes the config), so they
/// are read again when its init or its config is another one, and at least every
/// [`LIMITS_MAX_AGE`] for a change made past PVE (`lxc-cgroup`, a hand-written cgroup file).
struct KnownLimits {
    pid: u32,
    /// The parsed config they were read under (a new parse is a changed file; held, so its
    /// address cannot be taken by another).
    config: Option<Arc<crate::sources::pve::guest_config::GuestConfig>>,
    at: Instant,
    limits: crate::sources::kernel::cgroup::Limits,
}

/// How long a container's limits are taken as read (see [`KnownLimits`]): the four limit files
/// are a fifth of a container's cgroup reads on a cgroup v1 host, a quarter on cgroup2.
pub const LIMITS_MAX_AGE: Duration = Duration::from_secs(60);

impl StageState {
    pub fn new(config: &Config, host: &HostRoot, fds: std::sync::Arc<FdBudget>) -> Self {
        let pve_config = PveConfigReader::new();
        Self {
            pve: PveState::new(config, host, pve_config.gate().clone(), fds.clone()),
            pve_config,
            last_source: Mutex::default(),
            scanner: Mutex::new(ProcScanner::new(host)),
            libvirt: LibvirtReader::new(),
            process_files: Mutex::new(HeldFiles::new(fds.clone(), OnStale::Reopen)),
            cgroup_mounts: Mutex::default(),
            monitor: Monitor::new(crate::config::monitor_options(config)),
            fetch_worker: Worker::default(),
            vcpu_threads: super::VcpuThreadCache::with_budget(host.clone(), fds.clone()),
            guests: GuestReader::new(),
            ct_files: Mutex::new(HeldFiles::new(fds.clone(), OnStale::Reopen)),
            links: Mutex::default(),
            ct_limits: Mutex::default(),
            ct_quiet: Mutex::default(),
            host_counters: Mutex::default(),
            ct_init: Mutex::new(ContainerInits::new(host, fds)),
        }
    }
}

impl StageState {
    /// Sources whose call runs past its own limit: a hung pmxcfs, a hung statvfs of /.
    pub fn stuck(&self) -> Vec<(String, Duration)> {
        let mut out = Vec::new();
        if let Some(t) = self.pve_config.gate().hung() {
            out.push(("/etc/pve (pmxcfs)".into(), t));
        }
        if let Some(t) = self.pve.hung() {
            out.push(("statvfs of /".into(), t));
        }
        out
    }
}

/// The VMs of this scrape: found, with their process files read. VMs whose process ended by
/// then are not in it.
pub struct VmList {
    pub vms: Vec<Vm>,
    /// Each VM's process figures, in the order of `vms`.
    pub stats: Vec<ProcessStats>,
    /// What could not be listed or read (taken and reported by `kvm`).
    pub errors: RefCell<Vec<Error>>,
}

type FetchResult = (Duration, Result<(), Error>, Vec<VmDevices>);

/// The monitor exchange of one scrape.
enum Fetch {
    Off,
    Running(mpsc::Receiver<FetchResult>),
    Done(FetchResult),
}

/// The stages of one scrape of one collector group (used on the group's thread only).
pub struct Stages<'a> {
    state: &'a StageState,
    config: &'a Config,
    host: &'a HostRoot,
    deadline: Deadline,
    /// Whether a collector of this scrape needs the monitors (then they are asked as soon as
    /// the VM list is known).
    monitor_wanted: bool,
    pve_config: OnceCell<(VmSourceMode, Option<PveConfig>)>,
    vms: OnceCell<VmList>,
    fetch: RefCell<Option<Fetch>>,
    devices: OnceCell<Vec<VmDevices>>,
    pve_api: OnceCell<Option<super::pve::ApiStage<'a>>>,
    guests: OnceCell<GuestList<'a>>,
    /// Shared with the other groups of this collection.
    shared: &'a Shared,
    cgroups: OnceCell<Option<Arc<Hierarchies>>>,
    containers: OnceCell<Vec<RunningContainer>>,
    host_links: OnceCell<Option<netlink::Dump>>,
    guest_links: OnceCell<std::collections::HashMap<String, LinkStats>>,
    /// Each running container's cgroup figures, read once per scrape (`lxc` and `ppe`).
    ct_stats: RefCell<std::collections::HashMap<String, Option<std::rc::Rc<CgroupStats>>>>,
    /// The host's OOM kill count and pressure totals, read once per scrape before any
    /// container's files ([`KnownQuiet`]).
    host_totals: OnceCell<HostTotals>,
    /// Each running container's root file system (statvfs by `lxc`, used by `ppe`).
    pub ct_rootfs: RefCell<std::collections::HashMap<String, crate::sources::storage::statvfs::Usage>>,
}

/// The guests' host interfaces (`tap<vmid>i<N>`, `veth<ctid>i<N>`) and their counters, by name.
#[derive(Clone, Copy)]
pub enum GuestLinks<'s> {
    /// The scrape's netlink dump (it may hold other interfaces too: only guests' are answered).
    Dump(&'s netlink::Dump),
    /// Read from sysfs (a fixture root, or the dump failed).
    Read(&'s std::collections::HashMap<String, LinkStats>),
}

impl<'s> GuestLinks<'s> {
    fn is_guest(name: &str) -> bool {
        crate::sources::pve::guest_config::guest_of_interface(name).is_some()
    }

    pub fn get(&self, name: &str) -> Option<&'s LinkStats> {
        match *self {
            GuestLinks::Dump(d) => d.links.get(name)?.as_ref().filter(|_| Self::is_guest(name)),
            GuestLinks::Read(m) => m.get(name),
        }
    }

    /// Every guest interface with its counters.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&'s str, &'s LinkStats)> + 's> {
        match *self {
            GuestLinks::Dump(d) => Box::new(
                d.links.iter().filter(|(n, _)| Self::is_guest(n)).filter_map(|(n, s)| Some((n.as_str(), s.as_ref()?))),
            ),
            GuestLinks::Read(m) => Box::new(m.iter().map(|(n, s)| (n.as_str(), s))),
        }
    }
}

/// A running container: its cgroup exists and holds processes.
#[derive(Debug, Clone)]
pub struct RunningContainer {
    pub ctid: String,
    /// Its init process (pid 1 in its PID namespace) as the host sees it.
    pub pid: u32,
    /// When init started, since boot.
    pub started: Option<Duration>,
}

/// This node's configured guests for one scrape (the `guest` collector reports what could
/// not be read).
pub struct GuestList<'a> {
    pub guests: Arc<Guests>,
    /// Whether /etc/pve answered at all (a hung pmxcfs: no guest is known).
    pub read: bool,
    /// What went wrong (taken and reported by the `guest` collector), shared by the groups.
    errors: &'a Mutex<Vec<Error>>,
}

impl GuestList<'_> {
    /// What went wrong reading the guests, for the collector that reports it (once).
    pub fn take_errors(&self) -> Vec<Error> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What the collector groups of one collection share: read by the first group that asks.
#[derive(Default)]
pub struct Shared {
    guests: std::sync::OnceLock<SharedGuests>,
}

struct SharedGuests {
    guests: Arc<Guests>,
    read: bool,
    errors: Mutex<Vec<Error>>,
}

impl<'a> Stages<'a> {
    pub fn new(
        state: &'a StageState,
        config: &'a Config,
        host: &'a HostRoot,
        deadline: Deadline,
        monitor_wanted: bool,
        shared: &'a Shared,
    ) -> Self {
        Self {
            shared,
            state,
            config,
            host,
            deadline,
            monitor_wanted,
            pve_config: OnceCell::new(),
            vms: OnceCell::new(),
            fetch: RefCell::new(None),
            devices: OnceCell::new(),
            pve_api: OnceCell::new(),
            guests: OnceCell::new(),
            cgroups: OnceCell::new(),
            containers: OnceCell::new(),
            host_links: OnceCell::new(),
            guest_links: OnceCell::new(),
            ct_stats: RefCell::default(),
            host_totals: OnceCell::new(),
            ct_rootfs: RefCell::default(),
        }
    }

    /// This node's configured guests: read once per collection, by the first group that asks
    /// (through the timed pmxcfs gate), and shared with the other groups.
    pub fn guests(&self) -> &GuestList<'a> {
        self.guests.get_or_init(|| {
            let shared = self.shared.guests.get_or_init(|| {
                let reader = self.state.guests.clone();
                let host = self.host.clone();
                let r =
                    self.state.pve_config.gate().call("pmxcfs", self.config.pmxcfs_timeout, move || reader.read(&host));
                match r.and_then(|r| r) {
                    Ok((guests, errors)) => {
                        let errors = errors.into_iter().map(Error::from).collect();
                        SharedGuests { guests, read: true, errors: Mutex::new(errors) }
                    }
                    Err(e) => SharedGuests {
                        guests: Arc::new(Guests::default()),
                        read: false,
                        errors: Mutex::new(vec![Error::io(self.host.path("etc/pve"), e)]),
                    },
                }
            });
            GuestList { guests: shared.guests.clone(), read: shared.read, errors: &shared.errors }
        })
    }

    /// The containers running on this host (from their cgroups, not a process walk), in numeric
    /// order of their ids.
    pub fn containers(&self) -> &[RunningContainer] {
        self.containers.get_or_init(|| {
            let Some(h) = self.cgroups() else { return Vec::new() };
            let ids = match crate::sources::kernel::cgroup::container_ids(self.host, h) {
                Ok(ids) => ids,
                Err(e) => {
                    log::warn!("containers: {e}");
                    return Vec::new();
                }
            };
            let mut held = self.state.ct_files.lock().unwrap_or_else(|p| p.into_inner());
            // The files of containers that stopped are closed.
            let running: std::collections::HashSet<u32> = ids.iter().filter_map(|id| id.parse().ok()).collect();
            held.retain(|k| running.contains(&k.1));
            let mut files = CgroupFiles::held(self.host, &mut held);
            let mut init = self.state.ct_init.lock().unwrap_or_else(|p| p.into_inner());
            // `ids` is in numeric order: a binary search, not a walk per entry.
            let listed = |id: &String| ids.binary_search_by(|x| cgroup::id_order(x, id)).is_ok();
            init.known.retain(|id, _| listed(id));
            init.forget_exited();
            self.state.ct_limits.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| listed(id));
            self.state.ct_quiet.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| listed(id));
            ids.into_iter().filter_map(|ctid| running_container(self.host, &mut files, h, &mut init, ctid)).collect()
        })
    }

    /// The scrape's one dump of interface counters (every caller shares it; named from the
    /// last RTM_GETLINK dump, see [`netlink::LinkWatch`]): the guests' interfaces of
    /// PVE's naming (`tap<vmid>i<N>`, `veth<ctid>i<N>`) and what the first caller adds with
    /// `wanted` (libvirt's and plain QEMU's taps); an interface missing from it is read from
    /// sysfs by its caller. None where the host root's /sys is not the daemon's own (a
    /// fixture root) or the dump failed: logged at warning level once per process, then at
    /// debug (it would otherwise repeat every scrape).
    pub fn host_links(&self, wanted: &dyn Fn(&str) -> bool) -> Option<&netlink::Dump> {
        self.host_links
            .get_or_init(|| {
                use crate::sources::pve::guest_config::guest_of_interface;
                if !netlink::sees_own_sysfs(self.host) {
                    return None;
                }
                let mut watch = self.state.links.lock().unwrap_or_else(|p| p.into_inner());
                match watch.links(&|n| guest_of_interface(n).is_some() || wanted(n)) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                        if LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            log::debug!("interface counters: {e}; reading sysfs");
                        } else {
                            log::warn!(
                                "interface counters: {e}; reading sysfs instead (logged once, then at debug level)"
                            );
                        }
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The counters of every guest interface of PVE's naming (`tap<vmid>i<N>`,
    /// `veth<ctid>i<N>`): from the scrape's dump (looked up in it, not copied), else the
    /// statistics files below the root.
    pub fn guest_links(&self) -> GuestLinks<'_> {
        if let Some(d) = self.host_links(&|_| false) {
            return GuestLinks::Dump(d);
        }
        GuestLinks::Read(self.guest_links.get_or_init(|| {
            let Ok(rd) = std::fs::read_dir(self.host.path("sys/class/net")) else { return Default::default() };
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| GuestLinks::is_guest(n))
                .filter_map(|n| {
                    let stats = crate::sources::kernel::sysfs::net_statistics(self.host, &n).ok()?;
                    let mut v = [None; crate::sources::kernel::sysfs::NET_STATISTICS.len()];
                    for (i, x) in stats {
                        v[i] = Some(x);
                    }
                    Some((n, LinkStats(v)))
                })
                .collect()
        }))
    }

    /// Whether container `ctid` is frozen.
    pub fn container_frozen(&self, ctid: &str) -> bool {
        let Some(h) = self.cgroups() else { return false };
        let mut held = self.state.ct_files.lock().unwrap_or_else(|p| p.into_inner());
        crate::sources::kernel::cgroup::frozen(&mut CgroupFiles::held(self.host, &mut held), h, ctid)
    }

    /// Container `ctid`'s cgroup figures (read on first use in this scrape; None: stopped).
    /// What could not be read goes to `errors` of the first caller.
    pub fn container_stats(
        &self,
        ctid: &str,
        errors: &mut Vec<crate::sources::error::SourceError>,
    ) -> Option<std::rc::Rc<CgroupStats>> {
        if let Some(s) = self.ct_stats.borrow().get(ctid) {
            return s.clone();
        }
        let h = self.cgroups()?;
        // In numeric order, as their cgroups were listed: a binary search per container.
        let cts = self.containers();
        let pid = cts.binary_search_by(|c| cgroup::id_order(&c.ctid, ctid)).ok().map(|i| cts[i].pid);
        let config = self.ct_config(ctid);
        let mut known = self.state.ct_limits.lock().unwrap_or_else(|p| p.into_inner());
        let valid = |k: &KnownLimits| {
            Some(k.pid) == pid
                && k.at.elapsed() < LIMITS_MAX_AGE
                && match (&k.config, &config) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        };
        let limits = known.get(ctid).filter(|k| valid(k)).map(|k| k.limits);
        let host = self.host_totals();
        let mut quiet = self.state.ct_quiet.lock().unwrap_or_else(|p| p.into_inner());
        let q = quiet.get(ctid).filter(|k| Some(k.pid) == pid);
        // Taken only while the host's figure is the one read before the container's.
        let oom_kills = q.and_then(|k| k.oom_kills).filter(|(h, _)| Some(*h) == host.oom_kills).map(|(_, v)| v);
        let pressure = std::array::from_fn(|i| {
            q.and_then(|k| k.pressure[i]).filter(|(h, _)| Some(*h) == host.pressure_some_us[i]).map(|(_, p)| p)
        });
        let mut held = self.state.ct_files.lock().unwrap_or_else(|p| p.into_inner());
        let before = errors.len();
        let st = crate::sources::kernel::cgroup::read_container(
            &mut CgroupFiles::held(self.host, &mut held),
            h,
            ctid,
            errors,
            cgroup::Known { limits: limits.as_ref(), oom_kills, pressure },
        );
        match (&st, pid) {
            // Each figure with the host's read before it (a taken one's is the same).
            (Some(st), Some(pid)) => {
                let k = KnownQuiet {
                    pid,
                    oom_kills: host.oom_kills.zip(st.oom_kills),
                    pressure: std::array::from_fn(|i| host.pressure_some_us[i].zip(st.pressure[i])),
                };
                quiet.insert(ctid.to_string(), k);
            }
            _ => {
                quiet.remove(ctid);
            }
        }
        match (&st, pid) {
            // Read now and read whole: kept.
            (Some(st), Some(pid)) if limits.is_none() && errors.len() == before => {
                let k = KnownLimits { pid, config, at: Instant::now(), limits: st.limits };
                known.insert(ctid.to_string(), k);
            }
            (None, _) => {
                known.remove(ctid);
            }
            _ => {}
        }
        let st = st.map(std::rc::Rc::new);
        self.ct_stats.borrow_mut().insert(ctid.to_string(), st.clone());
        st
    }

    /// The host's OOM kill count and pressure totals for this scrape ([`KnownQuiet`]), read
    /// once, before any container's files; nothing where the host root's /proc is not the
    /// daemon's own (a fixture tree's files do not move with its cgroups).
    fn host_totals(&self) -> HostTotals {
        *self.host_totals.get_or_init(|| {
            let mut f = self.state.host_counters.lock().unwrap_or_else(|p| p.into_inner());
            if !f.opened {
                f.opened = true;
                if self.host.is_own("proc") {
                    f.vmstat = std::fs::File::open("/proc/vmstat").ok();
                    for (slot, res) in f.pressure.iter_mut().zip(["cpu", "memory", "io"]) {
                        *slot = std::fs::File::open(format!("/proc/pressure/{res}")).ok();
                    }
                }
            }
            let mut buf = Vec::new();
            let some_us = |file: &Option<std::fs::File>, buf: &mut Vec<u8>| {
                let n = crate::heldfile::pread_whole(file.as_ref()?, buf).ok()?;
                let text = std::str::from_utf8(&buf[..n]).ok()?;
                Some(crate::sources::proc::pressure::parse_pressure(text).ok()?.some?.total_us)
            };
            let pressure_some_us = std::array::from_fn(|i| some_us(&f.pressure[i], &mut buf));
            HostTotals { oom_kills: f.vmstat.as_ref().and_then(|v| vmstat_oom_kills(v, &mut buf)), pressure_some_us }
        })
    }

    /// Container `ctid`'s config: looked up in the guest list, which is sorted by vmid as
    /// numbers sort (length, then text), not copied into a map per scrape.
    fn ct_config(&self, ctid: &str) -> Option<Arc<crate::sources::pve::guest_config::GuestConfig>> {
        let list = &self.guests().guests.guests;
        let start = list.partition_point(|g| (g.vmid.len(), g.vmid.as_str()) < (ctid.len(), ctid));
        list[start..]
            .iter()
            .take_while(|g| g.vmid == ctid)
            .find(|g| g.ty == crate::sources::pve::guest_config::GuestType::Lxc)
            .map(|g| g.config.clone())
    }

    /// The host's cgroup hierarchies (None: /proc/self/mountinfo unreadable).
    pub fn cgroups(&self) -> Option<&Hierarchies> {
        self.cgroups
            .get_or_init(|| {
                let mut watch = self.state.cgroup_mounts.lock().unwrap_or_else(|p| p.into_inner());
                watch.get(self.host).map_err(|e| log::debug!("cgroup mounts: {e}")).ok()
            })
            .as_deref()
    }

    pub fn state(&self) -> &'a StageState {
        self.state
    }

    /// The VM source of `--vm-source` and, in PVE mode, /etc/pve's part (the `pve_config`
    /// stage). `auto` looks at the host on every scrape, so a host that gets PVE or libvirt
    /// later needs no restart: the config listing of /etc/pve (through the timed pmxcfs gate; a
    /// pmxcfs that does not answer keeps the source found last, PVE if none) and libvirt's run
    /// directory.
    pub fn pve_config(&self, cx: &Context) -> &(VmSourceMode, Option<PveConfig>) {
        self.pve_config.get_or_init(|| resolve_source(self.state, self.config, self.host, Some(cx)))
    }

    /// The VMs of this scrape.
    pub fn vms(&self, cx: &Context) -> &VmList {
        if let Some(v) = self.vms.get() {
            return v;
        }
        let (kind, pve) = self.pve_config(cx);
        let list = discover(self.state, self.config, self.host, *kind, pve.as_ref());
        let list = self.vms.get_or_init(|| list);
        if self.monitor_wanted && cx.enabled("qm") {
            *self.fetch.borrow_mut() = Some(self.start_fetch(&list.vms));
        }
        list
    }

    /// Every VM's devices from its monitor (libvirt's and plain QEMU's from what discovery
    /// read), waited for until the deadline. The `qm` stage's run is reported here.
    pub fn devices(&self, cx: &Context) -> &[VmDevices] {
        if let Some(d) = self.devices.get() {
            return d;
        }
        self.vms(cx);
        let fetch = self.fetch.borrow_mut().take().unwrap_or(Fetch::Off);
        let devices = match fetch {
            // `--no-collector.qm`: no monitor is asked; libvirt's and plain QEMU's devices are
            // what discovery read.
            Fetch::Off => self.vms.get().map(|l| extra_devices(&l.vms)).unwrap_or_default(),
            Fetch::Running(rx) => {
                // The exchange ends by the deadline itself; this wait is the guarantee that
                // the collection does not wait past it even so.
                let (took, r, devices) =
                    rx.recv_timeout(self.deadline.left() + Duration::from_millis(50)).unwrap_or_else(|e| {
                        let why = match e {
                            mpsc::RecvTimeoutError::Timeout => {
                                "the monitor exchange did not end by the scrape's deadline"
                            }
                            mpsc::RecvTimeoutError::Disconnected => "the monitor thread ended without an answer",
                        };
                        (Duration::ZERO, Err(Error::Stalled(why.into())), Vec::new())
                    });
                cx.report("qm", took, r);
                devices
            }
            Fetch::Done((took, r, devices)) => {
                cx.report("qm", took, r);
                devices
            }
        };
        self.devices.get_or_init(|| devices)
    }

    /// The PVE API session and node list (None: no collector reads the API).
    pub fn pve_api(&self, cx: &Context) -> Option<&super::pve::ApiStage<'a>> {
        self.pve_api.get_or_init(|| super::pve::ApiStage::start(&self.state.pve, self.config, self.host, cx)).as_ref()
    }

    /// Start the monitor exchange of `vms` on the fetch worker; inline when there is no
    /// monitor to ask (`--qm-mode off`: nothing to wait for) or no thread can be started.
    fn start_fetch(&self, vms: &[Vm]) -> Fetch {
        // The monitors are given up on a little before the group's deadline: what needs their
        // answers (the disks' sizes from the host, in qm mode and on non-PVE hosts) comes after
        // them, and with a hung monitor it would otherwise find no time left and fail for
        // every VM, not only the hung one's.
        let after = self.deadline.left().div_f64(20.0).min(AFTER_MONITORS);
        let deadline = Deadline::at(self.deadline.instant().checked_sub(after).unwrap_or(self.deadline.instant()));
        if self.config.qm_mode == QmMode::Off {
            return Fetch::Done(fetch_devices(&self.state.monitor, self.host, vms, deadline));
        }
        let (monitor, host, owned) = (self.state.monitor.clone(), self.host.clone(), vms.to_vec());
        let (tx, rx) = mpsc::sync_channel(1);
        let job = Box::new(move || {
            let _d = deadline::enter(deadline);
            let _ = tx.send(fetch_devices(&monitor, &host, &owned, deadline));
        });
        match self.state.fetch_worker.run("qm-fetch", job) {
            Ok(()) => Fetch::Running(rx),
            Err(e) => {
                log::warn!("cannot start the monitor thread ({e}): asking the monitors inline");
                Fetch::Done(fetch_devices(&self.state.monitor, self.host, vms, deadline))
            }
        }
    }
}

/// Each running container's init as last found: its pid, start time, and a pidfd of it where
/// the host root's /proc is the daemon's own.
///
/// Finding the init reads the container's `ns/cgroup.procs` (the kernel walks the cgroup's
/// tasks) and checks candidates' `status`. With a pidfd of the init that is done once per
/// container start, not per scrape: one `poll` over every init's pidfd per scrape says which
/// of them exited (the container stopped or restarted), and only those are looked for again.
/// Without a pidfd (a fixture root, whose pids are not this machine's; the fd budget spent),
/// `cgroup.procs` is read every scrape and the kept init checked against it.
pub struct ContainerInits {
    known: std::collections::HashMap<String, KnownInit>,
    /// The host root's /proc is this process's own: pids there are pids here.
    own_proc: bool,
    fds: std::sync::Arc<FdBudget>,
}

struct KnownInit {
    pid: u32,
    started: Option<Duration>,
    /// Open while the init runs (its container does too, with this init).
    pidfd: Option<crate::heldfile::BudgetedFd>,
}

impl ContainerInits {
    fn new(host: &HostRoot, fds: std::sync::Arc<FdBudget>) -> Self {
        Self { known: Default::default(), own_proc: host.is_own("proc"), fds }
    }

    /// Forget the inits that exited since the last scrape (one poll over their pidfds).
    fn forget_exited(&mut self) {
        use std::os::fd::AsFd;
        let held: Vec<(&String, std::os::fd::BorrowedFd)> =
            self.known.iter().filter_map(|(id, k)| Some((id, k.pidfd.as_ref()?.fd.as_fd()))).collect();
        let fds: Vec<_> = held.iter().map(|(_, fd)| *fd).collect();
        let gone: Vec<String> = match pidfd::exited(&fds) {
            Ok(exited) => held.iter().zip(exited).filter(|(_, e)| *e).map(|((id, _), _)| (*id).clone()).collect(),
            // Cannot tell: look for every init again.
            Err(_) => held.iter().map(|(id, _)| (*id).clone()).collect(),
        };
        for id in gone {
            self.known.remove(&id);
        }
    }
}

/// Container `ctid` if it runs: its init among the payload's processes (the one that is pid 1
/// in its namespace; the lowest pid where none says so, as on kernels without NSpid), found
/// once and kept while it runs ([`ContainerInits`]).
fn running_container(
    host: &HostRoot,
    files: &mut CgroupFiles,
    h: &Hierarchies,
    inits: &mut ContainerInits,
    ctid: String,
) -> Option<RunningContainer> {
    use crate::sources::kernel::cgroup::{container_pids, ns_pid};
    // Its init's pidfd polled not readable this scrape: that init runs, so does its container.
    if let Some(k) = inits.known.get(&ctid)
        && k.pidfd.is_some()
    {
        return Some(RunningContainer { ctid, pid: k.pid, started: k.started });
    }
    let pids = container_pids(files, h, &ctid);
    let first = *pids.first()?;
    if let Some(k) = inits.known.get(&ctid)
        && pids.binary_search(&k.pid).is_ok()
    {
        return Some(RunningContainer { ctid, pid: k.pid, started: k.started });
    }
    let init = pids
        .iter()
        .take(8)
        .copied()
        .find(|pid| host.read_to_string(format!("proc/{pid}/status")).ok().and_then(|s| ns_pid(&s)) == Some(1));
    let pid = init.unwrap_or(first);
    // A pidfd only of an init found by its namespace pid, and only once the container's list,
    // read again after the pidfd was opened, still has its pid: the pidfd's process runs (it
    // has not exited, so nothing else can have its pid) and is in the container, not a process
    // that took the pid of one that exited between the two reads.
    let pidfd = init.filter(|_| inits.own_proc).and_then(|pid| {
        let fd = inits.fds.hold(|| pidfd::open(pid))?.ok()?;
        let still = container_pids(files, h, &ctid).binary_search(&pid).is_ok();
        let runs = pidfd::exited(&[std::os::fd::AsFd::as_fd(&fd.fd)]).is_ok_and(|e| e == [false]);
        (still && runs).then_some(fd)
    });
    let started = host
        .read(format!("proc/{pid}/stat"))
        .ok()
        .and_then(|t| process::parse_stat(&t, procfs::ticks_per_second()).ok())
        .map(|c| c.started);
    inits.known.insert(ctid.clone(), KnownInit { pid, started, pidfd });
    Some(RunningContainer { ctid, pid, started })
}

/// pmxcfs's SQLite database behind /etc/pve (pve-cluster's `DBFILENAME`): there on every PVE
/// node, mounted or not.
const PMXCFS_DB: &str = "var/lib/pve-cluster/config.db";

/// The VM source a scrape now would use (without reporting anything).
pub fn vm_source(state: &StageState, config: &Config, host: &HostRoot) -> VmSourceMode {
    resolve_source(state, config, host, None).0
}

fn resolve_source(
    state: &StageState,
    config: &Config,
    host: &HostRoot,
    cx: Option<&Context>,
) -> (VmSourceMode, Option<PveConfig>) {
    let wanted = config.vm_source;
    if !matches!(wanted, VmSourceMode::Auto | VmSourceMode::Pve) || cx.is_some_and(|cx| !cx.enabled("pve_config")) {
        return (if wanted == VmSourceMode::Auto { VmSourceMode::Pve } else { wanted }, None);
    }
    let t = Instant::now();
    let r = state.pve_config.read(host, config.pmxcfs_timeout).map_err(|e| Error::io(host.path("etc/pve"), e));
    let took = t.elapsed();
    let (pve, failed) = match r {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e)),
    };
    let failed_now = failed.is_some();
    let report = |r: Result<(), Error>| {
        if let Some(cx) = cx {
            cx.report("pve_config", took, r);
        }
    };
    if wanted == VmSourceMode::Pve {
        report(failed.map_or(Ok(()), Err));
        return (wanted, pve);
    }
    let mut last = state.last_source.lock().unwrap_or_else(|p| p.into_inner());
    // A node seen as PVE stays one while /etc/pve has no VM configs: that is pmxcfs not
    // mounted (pve-cluster stopped or restarting), not another kind of host. The VMs keep
    // their ids (plain-QEMU discovery would name them by `-name`), and pve_config says why.
    // A daemon started while pmxcfs is down has not seen the node as PVE yet: pmxcfs's
    // database, on every PVE node whether pmxcfs runs or not, tells it.
    let unmounted = matches!(&pve, Some(c) if c.vm_configs.is_none())
        && (*last == Some(VmSourceMode::Pve) || host.path(PMXCFS_DB).is_file());
    let kind = match &pve {
        Some(c) if c.vm_configs.is_some() => VmSourceMode::Pve,
        Some(_) if unmounted => VmSourceMode::Pve,
        Some(_) if host.path(libvirt::RUN_DIR).is_dir() => VmSourceMode::Libvirt,
        Some(_) => VmSourceMode::Qemu,
        // /etc/pve did not answer: a hung pmxcfs is a PVE node's.
        None => last.unwrap_or(VmSourceMode::Pve),
    };
    *last = Some(kind);
    drop(last);
    match kind {
        // Not a PVE host: no pve_config stage to report.
        VmSourceMode::Libvirt | VmSourceMode::Qemu if !failed_now => (kind, None),
        _ if unmounted => {
            let why = "no VM configs: pmxcfs is not mounted (pve-cluster stopped?)";
            report(Err(Error::io(
                host.path("etc/pve/qemu-server"),
                std::io::Error::new(std::io::ErrorKind::NotFound, why),
            )));
            (kind, pve)
        }
        _ => {
            report(failed.map_or(Ok(()), Err));
            (kind, pve)
        }
    }
}

/// Discovery and each VM's process files.
fn discover(
    state: &StageState,
    config: &Config,
    host: &HostRoot,
    kind: VmSourceMode,
    pve: Option<&PveConfig>,
) -> VmList {
    let pve_source;
    let libvirt_source;
    let qemu_source;
    let source: &dyn VmSource = match kind {
        VmSourceMode::Libvirt => {
            libvirt_source = LibvirtSource { host, reader: &state.libvirt, owners: &config.qemu_allowed_users };
            &libvirt_source
        }
        VmSourceMode::Qemu => {
            qemu_source = QemuSource { owners: &config.qemu_allowed_users };
            &qemu_source
        }
        VmSourceMode::Pve | VmSourceMode::Auto => {
            pve_source = PveSource { host, config: pve };
            &pve_source
        }
    };
    let mut scanner = state.scanner.lock().unwrap_or_else(|p| p.into_inner());
    let found = vm::discover(host, &mut scanner, source);
    drop(scanner);
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            return VmList {
                vms: Vec::new(),
                stats: Vec::new(),
                errors: RefCell::new(vec![Error::io(host.path("proc"), e)]),
            };
        }
    };
    for (pid, why) in &found.skipped {
        log::debug!("pid {pid}: not reported: {why}");
    }
    // A domain whose files could not be read is missing: the collector failed.
    let mut errors: Vec<Error> = found.errors.into_iter().map(Error::from).collect();
    let mut vms = found.vms;
    let mut held = state.process_files.lock().unwrap_or_else(|p| p.into_inner());
    let pids: std::collections::HashSet<u32> = vms.iter().map(|v| v.pid).collect();
    held.retain(|pid| pids.contains(pid));
    let mut stats = Vec::with_capacity(vms.len());
    vms.retain(|vm| {
        let mut errs = Vec::new();
        let r = process::read_process(host, &mut held, vm.pid, &mut errs);
        errors.extend(errs.into_iter().map(Error::from));
        match r {
            Ok(s) => {
                stats.push(s);
                true
            }
            // Stopped mid-scrape: not an error.
            Err(e) if is_gone(&e) => false,
            Err(e) => {
                errors.push(Error::source(format!("VM {} (pid {})", vm.id, vm.pid), e));
                false
            }
        }
    });
    VmList { vms, stats, errors: RefCell::new(errors) }
}

/// Ask every VM's monitor, timed. Only PVE VMs have a monitor to ask: libvirt holds its
/// domains' monitors itself, and plain QEMU has none we know of; their devices come from the
/// XML or command line.
fn fetch_devices(monitor: &Monitor, host: &HostRoot, vms: &[Vm], deadline: Deadline) -> FetchResult {
    let mut out = Vec::new();
    let (took, r) = run_timed(|| {
        let pve: Vec<Target> = vms
            .iter()
            .filter(|v| v.source == crate::vm::PVE)
            .map(|v| Target { id: v.id.clone(), pid: v.pid })
            .collect();
        out = monitor.fetch_all(host, &pve, deadline);
        // A VM whose QEMU exited while it was asked (its socket closed in the middle) is gone,
        // as its /proc entry says: that is no failure of the monitors.
        for d in &mut out {
            if !d.errors.is_empty()
                && let Some(t) = pve.iter().find(|t| t.id == d.id)
                && !host.path(format!("proc/{}", t.pid)).exists()
            {
                d.errors.clear();
            }
        }
        out.extend(extra_devices(vms));
        Error::all(
            out.iter()
                .flat_map(|d| {
                    d.errors.iter().map(|e| match e {
                        MonitorError::NotAsked(why) => Error::Stalled(format!("VM {}: {why}", d.id)),
                        e => Error::source(format!("VM {}", d.id), e.clone()),
                    })
                })
                .collect(),
        )
    });
    (took, r, out)
}

/// The devices of VMs whose discovery read them (libvirt's XML, plain QEMU's command line).
fn extra_devices(vms: &[Vm]) -> Vec<VmDevices> {
    vms.iter()
        .filter_map(|v| {
            let x = v.extra.as_ref()?;
            Some(VmDevices {
                id: v.id.clone(),
                nics: Some(x.nics.clone()),
                drives: Some(x.drives.clone()),
                ..VmDevices::default()
            })
        })
        .collect()
}

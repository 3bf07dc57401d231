//! The `lxc` collector: every running LXC container, from its cgroups (no process walk): CPU,
//! memory, swap, limits, block I/O, pressure, processes, OOM kills; its NICs' host-side veth
//! counters (`net<N>` -> `veth<ctid>i<N>`); and its root file system and mount points, by
//! statvfs through `/proc/<init>/root/<mount point>` (what PVE shows as the CT's disk usage),
//! each container's on a thread of its own with a time limit, as an NFS mount point can hang.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    Collector, Context, Error, Group, Need, Setup,
    guest::{EtcPve, Pools},
    stages::RunningContainer,
};
use crate::{
    catalog::*,
    fasthash::FastMap,
    host::BlockingGate,
    metrics::MetricSet,
    sources::{
        kernel::cgroup,
        pve::{
            guest_config::{GuestConfig, GuestType},
            guests::Guests,
        },
        storage::statvfs::{self, Usage},
    },
};

pub fn new(setup: &Setup) -> Box<dyn Collector> {
    Box::new(Lxc { timeout: setup.config.storage_timeout, gates: Mutex::default(), info: Mutex::default() })
}

struct Lxc {
    /// Limit of one container's statvfs calls.
    timeout: Duration,
    /// One gate per storage: a hung storage holds its own thread and costs the file system
    /// figures of the mount points on it, no others.
    gates: Mutex<HashMap<String, BlockingGate>>,
    /// The last scrape's `pve_lxc_info` lines.
    info: Mutex<Option<InfoLines>>,
}

/// The `pve_lxc_info` lines of every running container, sealed, with what they were written
/// from: the containers and their inits, and /etc/pve (their configs and pools, as the
/// `guest` collector's kept lines). While all hold, they are the lines.
struct InfoLines {
    cts: Vec<(String, u32)>,
    from: EtcPve,
    chunks: Vec<(&'static Def, bytes::Bytes)>,
}

impl InfoLines {
    fn made_of(&self, cts: &[RunningContainer], guests: &Arc<Guests>, pools: &Pools) -> bool {
        self.from.holds(guests, pools)
            && self.cts.len() == cts.len()
            && self.cts.iter().zip(cts).all(|((id, pid), ct)| *id == ct.ctid && *pid == ct.pid)
    }
}

impl Collector for Lxc {
    fn name(&self) -> &'static str {
        "lxc"
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        FAMILIES
    }
    fn group(&self) -> Group {
        Group::Vms
    }
    fn needs(&self) -> &'static [Need] {
        &[Need::Guests, Need::PveConfig]
    }
    fn stuck(&self) -> Vec<(String, Duration)> {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates
            .iter()
            .filter_map(|(st, g)| Some((format!("statvfs of container mount points on {st}"), g.hung()?)))
            .collect()
    }
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error> {
        if cx.cgroups().is_none() {
            return Err(Error::NotApplicable);
        }
        let cts = cx.containers();
        let list = cx.guests();
        let configs: FastMap<&str, &Arc<GuestConfig>> = list
            .guests
            .guests
            .iter()
            .filter(|g| g.ty == GuestType::Lxc)
            .map(|g| (g.vmid.as_str(), &g.config))
            .collect();
        let pools = cx.pools();
        // File systems first, on their threads, while the cgroups are read here.
        let pending = self.start_statvfs(cx, cts, &configs);
        let mut errors = Vec::new();
        // The NIC labels' text, written anew per NIC into the same room.
        let mut names = (String::new(), String::new());
        // Which containers were read (one that stopped mid-scrape has no series).
        let mut read = Vec::with_capacity(cts.len());
        for ct in cts {
            let config = configs.get(ct.ctid.as_str()).map(|c| c.as_ref());
            let mut errs = Vec::new();
            let Some(st) = cx.container_stats(&ct.ctid, &mut errs) else {
                read.push(false);
                continue; // stopped mid-scrape
            };
            read.push(true);
            errors.extend(errs.into_iter().map(|e| Error::source(format!("container {}", ct.ctid), e)));
            emit(ct, &st, out);
            if let Some(c) = config {
                emit_nics(cx, ct, c, &mut names, out);
            }
        }
        self.info_lines(cts, &read, &configs, &list.guests, &pools, out);
        self.finish_statvfs(cx, cts, pending, out, &mut errors);
        Error::all(errors)
    }
}

/// One container's mount point to size: the container (its place in the scrape's list), its
/// config and the disk's place in it, the path through the init's root. Indices and a shared
/// config, not copies: a few hundred allocations less per scrape at 100 containers.
type FsJob = (usize, Arc<GuestConfig>, usize, std::path::PathBuf);
type FsResult = Vec<(usize, Arc<GuestConfig>, usize, std::io::Result<Usage>)>;
type Pending = (String, std::io::Result<crate::host::Pending<FsResult>>);

/// The storage a volume is on (`local-lvm:vm-101-disk-0` -> `local-lvm`); a bind mount's host
/// path is its own. A hung NFS or CIFS server hangs every mount point on it, and only those.
fn storage_of(volume: &str) -> std::borrow::Cow<'_, str> {
    match volume.split_once(':') {
        Some((storage, _)) if !volume.starts_with('/') => std::borrow::Cow::Borrowed(storage),
        _ => std::borrow::Cow::Owned(format!("bind:{volume}")),
    }
}

impl Lxc {
    /// `pve_lxc_info` of the containers `read`: the kept lines while they hold (all read),
    /// else written now (and kept, where `out` writes its lines and all were read).
    fn info_lines(
        &self,
        cts: &[RunningContainer],
        read: &[bool],
        configs: &FastMap<&str, &Arc<GuestConfig>>,
        guests: &Arc<Guests>,
        pools: &Pools,
        out: &mut MetricSet,
    ) {
        let write = |out: &mut MetricSet| {
            for (ct, _) in cts.iter().zip(read).filter(|(_, r)| **r) {
                emit_info(ct, configs.get(ct.ctid.as_str()).map(|c| c.as_ref()), pools.get(&ct.ctid), out);
            }
        };
        // A set that keeps its samples (not what is served), or a container that stopped
        // mid-scrape: the lines written now.
        if !out.writes() || !read.iter().all(|r| *r) {
            return write(out);
        }
        let mut kept = self.info.lock().unwrap_or_else(|p| p.into_inner());
        if !kept.as_ref().is_some_and(|k| k.made_of(cts, guests, pools)) {
            let chunks = out.sealed(write).unwrap_or_default();
            let cts = cts.iter().map(|ct| (ct.ctid.clone(), ct.pid)).collect();
            *kept = Some(InfoLines { cts, from: EtcPve::new(guests, pools), chunks });
        }
        if let Some(k) = kept.as_ref() {
            out.append_sealed(&k.chunks);
        }
    }

    /// statvfs of every running container's mount points, one job per storage on that
    /// storage's gate (a thread kept between scrapes): all started now, waited for later.
    fn start_statvfs(
        &self,
        cx: &Context,
        cts: &[RunningContainer],
        configs: &FastMap<&str, &Arc<GuestConfig>>,
    ) -> Vec<Pending> {
        let mut jobs: std::collections::BTreeMap<String, Vec<FsJob>> = Default::default();
        let proc = cx.host.path("proc");
        let mut pid = itoa::Buffer::new();
        for (i, ct) in cts.iter().enumerate() {
            let Some(c) = configs.get(ct.ctid.as_str()) else { continue };
            for (k, d) in c.disks(GuestType::Lxc).iter().enumerate() {
                let Some(mp) = &d.mountpoint else { continue };
                let mut path = proc.join(pid.format(ct.pid));
                path.push("root");
                path.push(mp.trim_start_matches('/'));
                let job = (i, Arc::clone(c), k, path);
                let storage = storage_of(&d.volume);
                match jobs.get_mut(storage.as_ref()) {
                    Some(list) => list.push(job),
                    None => {
                        jobs.insert(storage.into_owned(), vec![job]);
                    }
                }
            }
        }
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.retain(|storage, g| g.busy() || jobs.contains_key(storage));
        jobs.into_iter()
            .map(|(storage, list)| {
                let gate = gates.entry(storage.clone()).or_default().clone();
                let job = move || {
                    list.into_iter().map(|(i, c, k, path)| (i, c, k, statvfs::statvfs(&path))).collect::<FsResult>()
                };
                let started = gate.start(&format!("statvfs-{storage}"), self.timeout, job);
                (storage, started)
            })
            .collect()
    }

    fn finish_statvfs(
        &self,
        cx: &Context,
        cts: &[RunningContainer],
        pending: Vec<Pending>,
        out: &mut MetricSet,
        errors: &mut Vec<Error>,
    ) {
        let until = cx.deadline.cap_instant(self.timeout);
        for (storage, p) in pending {
            let rows = match p.and_then(|p| p.wait(until)) {
                Ok(rows) => rows,
                Err(e) => {
                    errors.push(Error::io(format!("statvfs of container mount points on storage {storage}"), e));
                    continue;
                }
            };
            for (i, c, k, r) in rows {
                let (Some(ct), Some(d)) = (cts.get(i), c.disks(GuestType::Lxc).get(k)) else { continue };
                let ctid = &ct.ctid;
                match r {
                    Ok(u) => {
                        if d.key == "rootfs" {
                            cx.set_container_rootfs(ctid, u);
                        }
                        let labels = [
                            ("id", ctid.as_str()),
                            ("disk", &d.key),
                            ("mountpoint", d.mountpoint.as_deref().unwrap_or("")),
                            ("volume", &d.volume),
                        ];
                        out.family(&LXC_FS_SIZE_BYTES).push_ref(&labels, u.size);
                        out.family(&LXC_FS_USED_BYTES).push_ref(&labels, u.used);
                        out.family(&LXC_FS_FREE_BYTES).push_ref(&labels, u.free);
                    }
                    // The container stopped, or the mount point is not mounted (yet).
                    Err(e) if crate::host::is_gone(&e) => {}
                    Err(e) => errors.push(Error::io(format!("container {ctid}: statvfs of {}", d.key), e)),
                }
            }
        }
    }
}

/// A container's `pve_lxc_info` line. Labels are borrowed from the container, its config and
/// its pool: written as they are.
fn emit_info(
    ct: &RunningContainer,
    config: Option<&GuestConfig>,
    pool: Option<&crate::sources::pve::config::PoolInfo>,
    out: &mut MetricSet,
) {
    let id = ct.ctid.as_str();
    let get = |k: &str| config.and_then(|c| c.get(k)).unwrap_or("");
    let name = config.map(|c| c.name(GuestType::Lxc, &ct.ctid)).unwrap_or_default();
    let tags = config.map_or("", |c| c.tags());
    let (mut pid, mut levels) = (itoa::Buffer::new(), itoa::Buffer::new());
    let [pool, pool_levels, pool1, pool2, pool3] = super::guest::pool_labels(pool, &mut levels);
    out.family(&LXC_INFO).push_ref(
        &[
            ("id", id),
            ("name", &name),
            ("pid", pid.format(ct.pid)),
            ("ostype", get("ostype")),
            ("arch", get("arch")),
            ("unprivileged", if config.is_some_and(|c| c.unprivileged()) { "1" } else { "0" }),
            ("tags", tags),
            pool,
            pool_levels,
            pool1,
            pool2,
            pool3,
        ],
        1u64,
    );
}

/// A container's figures from its cgroups.
fn emit(ct: &RunningContainer, st: &cgroup::CgroupStats, out: &mut MetricSet) {
    let id = ct.ctid.as_str();
    if let (Some(u), Some(s)) = (st.cpu_user_seconds, st.cpu_system_seconds) {
        let f = out.family(&LXC_CPU_SECONDS);
        f.push_ref(&[("id", id), ("mode", "user")], u);
        f.push_ref(&[("id", id), ("mode", "system")], s);
    }
    let f = out.family(&LXC_MEMORY_BYTES);
    for (ty, v) in
        [("current", st.memory_bytes), ("anon", st.memory_anon), ("file", st.memory_file), ("kernel", st.memory_kernel)]
    {
        if let Some(v) = v {
            f.push_ref(&[("id", id), ("type", ty)], v);
        }
    }
    let one = [("id", id)];
    if let Some(u) = st.memory_used() {
        out.family(&LXC_MEMORY_USED_BYTES).push_ref(&one, u);
    }
    if let Some(s) = st.swap_bytes {
        out.family(&LXC_SWAP_BYTES).push_ref(&one, s);
    }
    if let Some(Some(m)) = st.limits.memory_max {
        out.family(&LXC_MEMORY_LIMIT_BYTES).push_ref(&one, m);
    }
    if let Some(Some(m)) = st.limits.swap_max {
        out.family(&LXC_SWAP_LIMIT_BYTES).push_ref(&one, m);
    }
    if let Some(Some(c)) = st.limits.cpu_max_cores {
        out.family(&LXC_CPU_LIMIT_CORES).push_ref(&one, c);
    }
    for (dev, c) in &st.io {
        for (def, r, w) in [(&LXC_IO_BYTES, c.read_bytes, c.write_bytes), (&LXC_IO_OPERATIONS, c.read_ops, c.write_ops)]
        {
            let f = out.family(def);
            f.push_ref(&[("id", id), ("device", dev), ("direction", "read")], r);
            f.push_ref(&[("id", id), ("device", dev), ("direction", "write")], w);
        }
    }
    for (res, p) in ["cpu", "memory", "io"].iter().zip(&st.pressure) {
        let Some(p) = p else { continue };
        for (kind, a) in [("some", p.some), ("full", p.full)] {
            let Some(a) = a else { continue };
            out.family(&LXC_PRESSURE_SECONDS)
                .push_ref(&[("id", id), ("resource", res), ("kind", kind)], a.total_us as f64 / 1e6);
        }
    }
    if let Some(p) = st.pids {
        out.family(&LXC_PROCESSES).push_ref(&one, p);
    }
    if let Some(o) = st.oom_kills {
        out.family(&LXC_OOM_KILLS).push_ref(&one, o);
    }
}

/// The veth counters exported per NIC, in the order of `catalog::LXC_NIC`, by their place in
/// the link's statistics.
const VETH_COUNTERS: [usize; 6] = {
    use crate::sources::kernel::netlink::statistic_index as at;
    [at("rx_bytes"), at("tx_bytes"), at("rx_packets"), at("tx_packets"), at("rx_dropped"), at("tx_dropped")]
};

fn emit_nics(
    cx: &Context,
    ct: &RunningContainer,
    config: &GuestConfig,
    (ifname, net): &mut (String, String),
    out: &mut MetricSet,
) {
    let links = cx.guest_links();
    for nic in config.nics() {
        use std::fmt::Write;
        ifname.clear();
        let _ = write!(ifname, "veth{}i{}", ct.ctid, nic.index);
        // Not up (yet), or the container stopped: no counters, no error.
        let Some(stats) = links.get(ifname) else { continue };
        net.clear();
        let _ = write!(net, "net{}", nic.index);
        for (def, i) in LXC_NIC.iter().zip(VETH_COUNTERS) {
            if let Some(v) = stats.at(i) {
                out.family(def).push_ref(&[("id", &ct.ctid), ("ifname", ifname), ("net", net)], v);
            }
        }
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&Def]] = &[LXC_FAMILIES, LXC_NIC];

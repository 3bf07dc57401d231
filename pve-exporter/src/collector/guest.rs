//! The `guest` collector: every guest configured on this node, VMs and containers, running or
//! not, from /etc/pve (`.vmlist`, each config, the HA manager status) and whether its process
//! runs (the VM list, the containers' cgroups).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::{Collector, Context, Error, Group, Need, Setup};
use crate::{
    catalog::*,
    fasthash::FastMap,
    metrics::MetricSet,
    sources::pve::{config::PoolInfo, guest_config::GuestType, guests::Guests},
};

pub fn new(_: &Setup) -> Box<dyn Collector> {
    Box::new(Guest { kept: Mutex::default() })
}

struct Guest {
    /// The lines of the last scrape's families that follow from the configs alone.
    kept: Mutex<Option<ConfigLines>>,
}

/// user.cfg's pools by vmid, as the `pve_config` stage shares them.
pub type Pools = Arc<HashMap<String, PoolInfo>>;

/// What lines kept between scrapes were written from in /etc/pve: the guests and user.cfg's
/// pools. The guest reader gives the same `Arc<Guests>` while no file of /etc/pve it reads
/// changed, and user.cfg's parse is shared the same way; both are held here, so neither can
/// have been freed and another put at its address, and the same address is the same files.
pub struct EtcPve {
    guests: Arc<Guests>,
    pools: Pools,
}

impl EtcPve {
    pub fn new(guests: &Arc<Guests>, pools: &Pools) -> Self {
        Self { guests: guests.clone(), pools: pools.clone() }
    }

    /// Whether `guests` and `pools` are the ones these are.
    pub fn holds(&self, guests: &Arc<Guests>, pools: &Pools) -> bool {
        Arc::ptr_eq(&self.guests, guests)
            && (Arc::ptr_eq(&self.pools, pools) || (self.pools.is_empty() && pools.is_empty()))
    }
}

/// The lines of the families a guest's config, its pool, the node's name, the HA manager's
/// state and the host's CPU count make ([`write_config_lines`]), sealed, with what they were
/// written from: while that holds, these are the lines, and writing them again (~2 500 of
/// the ~3 600 lines at 100 VMs, 100 containers and 50 stopped guests) is skipped.
struct ConfigLines {
    from: EtcPve,
    host_cpus: u64,
    chunks: Vec<(&'static Def, bytes::Bytes)>,
}

/// A guest's pool labels (`pool`, `pool_levels` and the levels of a nested pool,
/// `pool1`..`pool3`), borrowed from its pool; `levels` holds the count's text.
pub fn pool_labels<'a>(pool: Option<&'a PoolInfo>, levels: &'a mut itoa::Buffer) -> [(&'static str, &'a str); 5] {
    let level = |i: usize| pool.and_then(|p| p.levels.get(i)).map_or("", String::as_str);
    [
        ("pool", pool.map_or("", |p| p.name.as_str())),
        ("pool_levels", levels.format(pool.map_or(0, |p| p.levels.len()))),
        ("pool1", level(0)),
        ("pool2", level(1)),
        ("pool3", level(2)),
    ]
}

/// This node's configured guests, for a collector that needs /etc/pve: NotApplicable off PVE;
/// /etc/pve's failure (reported by the first collector that asks) when it did not answer.
pub fn configured_guests<'c, 'a>(cx: &'c Context<'a>) -> Result<&'c super::stages::GuestList<'a>, Error> {
    let list = cx.guests();
    if !list.read {
        return Err(Error::all(list.take_errors()).err().unwrap_or(Error::Unavailable("/etc/pve did not answer")));
    }
    if list.guests.guests.is_empty() && !cx.host.path("etc/pve").is_dir() {
        return Err(Error::NotApplicable);
    }
    Ok(list)
}

/// This node's configured guests, for a collector other than `guest` (which reports /etc/pve's
/// failure): Unavailable when /etc/pve did not answer, NotApplicable off PVE. The list's errors
/// are left for `guest`.
pub fn node_guests<'c, 'a>(cx: &'c Context<'a>) -> Result<&'c super::stages::GuestList<'a>, Error> {
    let list = cx.guests();
    if !list.read {
        return Err(Error::Unavailable("/etc/pve did not answer: the node's guests are not known"));
    }
    if list.guests.guests.is_empty() && !cx.host.path("etc/pve").is_dir() {
        return Err(Error::NotApplicable);
    }
    Ok(list)
}

/// Seconds since boot of `/proc/uptime`.
pub fn host_uptime(cx: &Context) -> Option<f64> {
    let t = cx.files.read("proc/uptime").ok()?;
    std::str::from_utf8(&t).ok()?.split_whitespace().next()?.parse().ok()
}

/// What runs now, by (type, vmid): the process's start since boot.
pub fn running<'c>(cx: &'c Context) -> FastMap<(GuestType, &'c str), Option<std::time::Duration>> {
    let list = cx.vms();
    let cts = cx.containers();
    let mut out = FastMap::with_capacity_and_hasher(list.vms.len() + cts.len(), Default::default());
    for (vm, st) in list.vms.iter().zip(&list.stats) {
        if vm.source == crate::vm::PVE {
            out.insert((GuestType::Qemu, vm.id.as_str()), st.cpu.map(|c| c.started));
        }
    }
    for ct in cts {
        out.insert((GuestType::Lxc, ct.ctid.as_str()), ct.started);
    }
    out
}

impl Collector for Guest {
    fn name(&self) -> &'static str {
        "guest"
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        FAMILIES
    }
    fn group(&self) -> Group {
        Group::Vms
    }
    fn needs(&self) -> &'static [Need] {
        &[Need::Guests, Need::PveConfig, Need::Vms, Need::Monitor]
    }
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error> {
        let list = configured_guests(cx)?;
        let running = running(cx);
        let host_cpus = host_cpus(cx);
        let uptime = host_uptime(cx);
        let pools = cx.pools();
        // QEMU's own run state where its monitor answered (else a running process is `running`,
        // as PVE's status says).
        let qemu_state: FastMap<&str, &str> =
            cx.devices().iter().filter_map(|d| Some((d.id.as_str(), d.status.as_deref()?))).collect();
        self.config_lines(&list.guests, &pools, host_cpus, out);
        for g in &list.guests.guests {
            let id = g.vmid.as_str();
            let ty = g.ty.as_str();
            let both = [("id", id), ("type", ty)];
            let run = running.get(&(g.ty, id));
            out.family(&GUEST_UP).push_ref(&both, run.is_some());
            let state = match (run, g.ty) {
                (None, _) => "stopped",
                (Some(_), GuestType::Qemu) => qemu_state.get(id).copied().unwrap_or("running"),
                (Some(_), GuestType::Lxc) if cx.container_frozen(&g.vmid) => "frozen",
                (Some(_), GuestType::Lxc) => "running",
            };
            out.family(&GUEST_STATE).push_ref(&[("id", id), ("type", ty), ("state", state)], 1u64);
            let up = match (run, uptime) {
                (Some(Some(started)), Some(now)) => (now - started.as_secs_f64()).max(0.0).floor(),
                _ => 0.0,
            };
            out.family(&GUEST_UPTIME).push_ref(&both, up);
        }
        Error::all(list.take_errors())
    }
}

impl Guest {
    /// The families that follow from the configs ([`ConfigLines`]): the kept lines while they
    /// hold, else written now (and kept, where `out` writes its lines).
    fn config_lines(&self, guests: &Arc<Guests>, pools: &Pools, host_cpus: u64, out: &mut MetricSet) {
        if !out.writes() {
            // A set that keeps its samples (not what is served): its samples, written now.
            return write_config_lines(guests, pools, host_cpus, out);
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if !kept.as_ref().is_some_and(|k| k.from.holds(guests, pools) && k.host_cpus == host_cpus) {
            let chunks = out.sealed(|set| write_config_lines(guests, pools, host_cpus, set)).unwrap_or_default();
            *kept = Some(ConfigLines { from: EtcPve::new(guests, pools), host_cpus, chunks });
        }
        if let Some(k) = kept.as_ref() {
            out.append_sealed(&k.chunks);
        }
    }
}

/// The lines of each guest that follow from its config, its pool, the node's name, the HA
/// manager's state and the host's CPU count.
fn write_config_lines(guests: &Guests, pools: &Pools, host_cpus: u64, out: &mut MetricSet) {
    let node = guests.node.as_str();
    let mut levels = itoa::Buffer::new();
    for g in &guests.guests {
        let c = &g.config;
        // Labels are borrowed from the guest, its config and its pool: written as they are.
        let id = g.vmid.as_str();
        let ty = g.ty.as_str();
        let both = [("id", id), ("type", ty)];
        let [pool, pool_levels, pool1, pool2, pool3] = pool_labels(pools.get(&g.vmid), &mut levels);
        out.family(&GUEST_CONFIG_INFO).push_ref(
            &[
                ("id", id),
                ("type", ty),
                ("name", &c.name(g.ty, &g.vmid)),
                ("node", node),
                ("ostype", c.get("ostype").unwrap_or("")),
                ("tags", c.tags()),
                pool,
                pool_levels,
                pool1,
                pool2,
                pool3,
            ],
            1u64,
        );
        out.family(&GUEST_TEMPLATE).push_ref(&both, c.template());
        out.family(&GUEST_ONBOOT).push_ref(&both, c.onboot().unwrap_or(false));
        if let Some(o) = c.startup_order() {
            out.family(&GUEST_STARTUP_ORDER).push_ref(&both, o);
        }
        out.family(&GUEST_PROTECTION).push_ref(&both, c.protection());
        if let Some(l) = c.lock() {
            out.family(&GUEST_LOCK).push_ref(&[("id", id), ("type", ty), ("lock", l)], 1u64);
        }
        if let Some(s) = &g.ha_state {
            out.family(&GUEST_HA_STATE).push_ref(&[("id", id), ("type", ty), ("state", s)], 1u64);
        }
        out.family(&GUEST_CPUS).push_ref(&both, c.cpus(g.ty, host_cpus));
        out.family(&GUEST_MEMORY_BYTES).push_ref(&both, c.memory_bytes());
        if g.ty == GuestType::Qemu
            && let Some(b) = c.balloon_min_bytes()
        {
            out.family(&GUEST_BALLOON_MIN_BYTES).push_ref(&both, b);
        }
        if g.ty == GuestType::Lxc {
            out.family(&GUEST_SWAP_BYTES).push_ref(&both, c.swap_bytes());
        }
        for d in c.disks(g.ty) {
            if let Some(size) = d.size {
                out.family(&GUEST_DISK_SIZE_BYTES)
                    .push_ref(&[("id", id), ("type", ty), ("disk", &d.key), ("volume", &d.volume)], size);
            }
        }
        out.family(&GUEST_SNAPSHOTS).push_ref(&both, c.snapshots.len() as u64);
        if let Some(t) = c.newest_snapshot() {
            out.family(&GUEST_SNAPSHOT_NEWEST).push_ref(&both, t);
        }
    }
}

/// The host's CPUs as PVE counts them (`$cpuinfo->{cpus}`: the `processor` lines of
/// /proc/cpuinfo, one per online CPU): the kernel's list of online CPUs below the root
/// (`/sys/devices/system/cpu/online`, a few bytes), else /proc/cpuinfo itself (a fixture root
/// without that list), else the CPUs online here. /proc/cpuinfo is formatted anew on every
/// read, ~10 µs per CPU on this machine: over a millisecond per scrape on a 128-thread host.
pub fn host_cpus(cx: &Context) -> u64 {
    cpus_of(cx.files)
}

fn cpus_of(files: &crate::host::ScrapeFiles) -> u64 {
    files
        .read("sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| crate::sources::kernel::sysfs::parse_cpulist(std::str::from_utf8(&t).ok()?))
        .filter(|n| *n > 0)
        .or_else(|| {
            let t = files.read("proc/cpuinfo").ok()?;
            Some(String::from_utf8_lossy(&t).lines().filter(|l| l.starts_with("processor")).count() as u64)
        })
        .filter(|n| *n > 0)
        .unwrap_or_else(num_cpus)
}

/// The CPUs online.
pub fn num_cpus() -> u64 {
    // Online CPUs, not this process's affinity or cgroup quota (PVE counts /proc/cpuinfo).
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as u64 } else { 1 }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&Def]] = &[GUEST_FAMILIES];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{HostRoot, ScrapeFiles};

    #[test]
    fn host_cpus_from_the_online_list_else_cpuinfo() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("proc")).unwrap();
        std::fs::write(p.join("proc/cpuinfo"), "processor\t: 0\nvendor_id\t: x\n\nprocessor\t: 1\nvendor_id\t: x\n\n")
            .unwrap();
        let host = HostRoot::new(p);
        // A fixture root without the list: /proc/cpuinfo's processors.
        assert_eq!(cpus_of(&ScrapeFiles::new(&host)), 2);
        // With it (every host has it): the list, and cpuinfo is not read.
        std::fs::create_dir_all(p.join("sys/devices/system/cpu")).unwrap();
        std::fs::write(p.join("sys/devices/system/cpu/online"), "0-3,6\n").unwrap();
        std::fs::remove_file(p.join("proc/cpuinfo")).unwrap();
        assert_eq!(cpus_of(&ScrapeFiles::new(&host)), 5);
        // A list that does not parse: cpuinfo, else the CPUs online here.
        std::fs::write(p.join("sys/devices/system/cpu/online"), "garbage\n").unwrap();
        assert_eq!(cpus_of(&ScrapeFiles::new(&host)), num_cpus());
        // This machine: the list and cpuinfo agree.
        let real = ScrapeFiles::new(&HostRoot::new("/"));
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        assert_eq!(cpus_of(&real), cpuinfo.lines().filter(|l| l.starts_with("processor")).count() as u64);
    }
}

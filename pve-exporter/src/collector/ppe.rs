//! The `ppe` collector: prometheus-pve-exporter's families (`pve_up`, `pve_guest_info`,
//! `pve_cpu_usage_ratio`, ...) for this node, its cluster and its guests, from local files
//! instead of `/cluster/resources`, so dashboards built for it (Grafana 10347) work unchanged.
//! The figures follow PVE's own definitions (qemu-server's and pve-container's `vmstatus`,
//! pvestatd): CPU usage is the share of the configured CPUs used since the last scrape, a
//! VM's memory the guest's total less free when its balloon driver reports them (the
//! `balloon` collector's `kvm_guest_memory_used_bytes`), else its cgroup's (less page cache),
//! else its QEMU process's RSS, network "receive"
//! the tap's or veth's transmit counter. PPE's storage series come from the `storage`
//! collector. The names carry `--metrics-prefix`; the dashboards expect `pve`.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use super::{
    Collector, Context, Error, Group, Need, Setup,
    guest::{configured_guests, host_cpus, host_uptime, running},
};
use crate::{
    catalog::*,
    heldfile::{HeldFiles, OnStale},
    host::BlockingGate,
    metrics::MetricSet,
    sources::{
        kernel::cgroup,
        proc::node,
        pve::guest_config::{GuestType, guest_of_interface},
        storage::statvfs,
    },
};

pub fn new(setup: &Setup) -> Box<dyn Collector> {
    Box::new(Ppe {
        cpu: Mutex::default(),
        statvfs: BlockingGate::default(),
        vm_files: Mutex::new(HeldFiles::new(setup.fds.clone(), OnStale::Reopen)),
    })
}

/// PPE's lock states (LockStateMetric.GUEST_STATES): one series each per guest.
pub const LOCK_STATES: [&str; 9] =
    ["backup", "clone", "create", "migrate", "rollback", "snapshot", "snapshot-delete", "suspended", "suspending"];
/// PPE's HA states of guests and of nodes (HighAvailabilityStateMetric).
pub const HA_GUEST_STATES: [&str; 11] = [
    "stopped",
    "request_stop",
    "request_start",
    "request_start_balance",
    "started",
    "fence",
    "recovery",
    "migrate",
    "relocate",
    "freeze",
    "error",
];
pub const HA_NODE_STATES: [&str; 5] = ["online", "maintenance", "unknown", "fence", "gone"];

/// The last CPU reading per id: (when, CPU seconds used, the ratio given then).
type CpuSample = (Instant, f64, f64);

struct Ppe {
    cpu: Mutex<HashMap<String, CpuSample>>,
    /// statvfs of the node's root file system.
    statvfs: BlockingGate,
    /// Each running VM's cgroup memory files, held open between scrapes.
    vm_files: Mutex<HeldFiles<cgroup::CgroupKey>>,
}

impl Ppe {
    /// CPU usage as PVE's vmstatus computes it: CPU seconds used since the last reading per
    /// wall second, per CPU given; a reading less than a second after the last repeats the last
    /// ratio; the first reading of a guest is 0.
    fn ratio(&self, seen: &mut HashMap<String, CpuSample>, id: &str, used: f64, cpus: f64, now: Instant) -> f64 {
        let Some(&(t, u, last)) = self.cpu.lock().unwrap_or_else(|p| p.into_inner()).get(id) else {
            seen.insert(id.to_string(), (now, used, 0.0));
            return 0.0;
        };
        let dt = now.saturating_duration_since(t).as_secs_f64();
        if dt < 1.0 {
            seen.insert(id.to_string(), (t, u, last));
            return last;
        }
        let r = ((used - u).max(0.0) / dt / cpus.max(0.01)).max(0.0);
        seen.insert(id.to_string(), (now, used, r));
        r
    }
}

/// Guest figures PPE takes from `/cluster/resources`.
#[derive(Default)]
struct Figures {
    cpu: f64,
    mem: u64,
    disk: u64,
    maxdisk: u64,
    netin: u64,
    netout: u64,
    diskread: u64,
    diskwrite: u64,
    uptime: f64,
}

impl Collector for Ppe {
    fn name(&self) -> &'static str {
        "ppe"
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
        let now = Instant::now();
        let mut seen = HashMap::new();
        let mut errors = Vec::new();
        let node = list.guests.node.clone();
        let host_cpus = host_cpus(cx);
        let uptime = host_uptime(cx);
        let run = running(cx);
        let vms = cx.vms();
        let by_vmid: HashMap<&str, usize> = vms
            .vms
            .iter()
            .enumerate()
            .filter(|(_, v)| v.source == crate::vm::PVE)
            .map(|(i, v)| (v.id.as_str(), i))
            .collect();
        let devices: HashMap<&str, &crate::sources::qemu::monitor::VmDevices> =
            cx.devices().iter().map(|d| (d.id.as_str(), d)).collect();
        let net = net_by_guest(cx);
        let mut vm_files = self.vm_files.lock().unwrap_or_else(|p| p.into_inner());
        let running_vms: std::collections::HashSet<u32> = by_vmid.keys().filter_map(|id| id.parse().ok()).collect();
        vm_files.retain(|k| running_vms.contains(&k.1));

        // The node and its cluster (a node without a name, as a fixture tree without a host
        // name: none).
        let node_id = format!("node/{node}");
        let named = !node.is_empty();
        if named {
            self.node_series(cx, &node, &node_id, host_cpus, uptime, &mut seen, now, out, &mut errors);
        }
        if let Some(c) = list.guests.members.as_ref().and_then(|m| m.cluster.as_ref()) {
            let id = format!("cluster/{}", c.name);
            out.family(&PPE_UP).push([("id", id.clone())], c.quorate);
            out.family(&PPE_CLUSTER_INFO).push(
                [
                    ("id", id),
                    ("nodes", c.nodes.to_string()),
                    ("quorate", u8::from(c.quorate).to_string()),
                    ("version", c.version.to_string()),
                ],
                1u64,
            );
        }

        for g in &list.guests.guests {
            let c = &g.config;
            let id = format!("{}/{}", g.ty.as_str(), g.vmid);
            let one = || [("id", id.clone())];
            let cpus = c.cpus(g.ty, host_cpus);
            let running_since = run.get(&(g.ty, g.vmid.as_str()));
            let mut f = Figures::default();
            if let Some((rx, tx)) = net.get(&(g.ty, g.vmid.clone())) {
                // The host's receive is what the guest sent.
                (f.netout, f.netin) = (*rx, *tx);
            }
            match g.ty {
                GuestType::Qemu => {
                    f.maxdisk = c.boot_disk().and_then(|d| d.size).unwrap_or(0);
                    if let Some(&i) = by_vmid.get(g.vmid.as_str()) {
                        let (vm, st) = (&vms.vms[i], &vms.stats[i]);
                        if let Some(t) = st.cpu {
                            f.cpu = self.ratio(&mut seen, &id, (t.user + t.system).as_secs_f64(), cpus, now);
                        }
                        let dev = devices.get(g.vmid.as_str());
                        let guest_used = dev.and_then(|d| d.balloon.as_ref()?.as_ref()?.stats.as_ref()?.used_bytes());
                        // qemu-server's vmstatus: the guest's total less free when its balloon
                        // driver reports them, else what the host sees.
                        f.mem = guest_used
                            .or_else(|| {
                                cx.cgroups().and_then(|h| {
                                    let mut files = cgroup::CgroupFiles::held(cx.host, &mut vm_files);
                                    cgroup::memory_used(&mut files, h, &cgroup::vm_cgroup(&vm.id))
                                })
                            })
                            .or_else(|| st.status.as_ref().and_then(|s| s.memory("vmrss")))
                            .unwrap_or(0);
                        if let Some(stats) = dev.and_then(|d| d.stats.as_ref()) {
                            f.diskread = stats.iter().map(|(_, s)| s.rd_bytes).sum();
                            f.diskwrite = stats.iter().map(|(_, s)| s.wr_bytes).sum();
                        }
                    }
                }
                GuestType::Lxc => {
                    f.maxdisk = c
                        .disks(GuestType::Lxc)
                        .iter()
                        .find(|d| d.key == "rootfs")
                        .and_then(|d| d.size)
                        .unwrap_or(4 << 30);
                    if running_since.is_some() {
                        let mut errs = Vec::new();
                        if let Some(st) = cx.container_stats(&g.vmid, &mut errs) {
                            if let (Some(u), Some(s)) = (st.cpu_user_seconds, st.cpu_system_seconds) {
                                f.cpu = self.ratio(&mut seen, &id, u + s, cpus, now);
                            }
                            f.mem = st.memory_used().unwrap_or(0);
                            f.diskread = st.io.values().map(|c| c.read_bytes).sum();
                            f.diskwrite = st.io.values().map(|c| c.write_bytes).sum();
                        }
                        errors.extend(errs.into_iter().map(|e| Error::source(format!("container {}", g.vmid), e)));
                        if let Some(u) = cx.container_rootfs(&g.vmid) {
                            (f.disk, f.maxdisk) = (u.used, u.size);
                        }
                    }
                }
            }
            if let (Some(Some(started)), Some(now)) = (running_since, uptime) {
                f.uptime = (now - started.as_secs_f64()).max(0.0).floor();
            }
            out.family(&PPE_UP).push(one(), running_since.is_some());
            out.family(&PPE_GUEST_INFO).push(
                [
                    ("id", id.clone()),
                    ("node", node.clone()),
                    ("name", c.name(g.ty, &g.vmid).into_owned()),
                    ("type", g.ty.as_str().to_string()),
                    ("template", u8::from(c.template()).to_string()),
                    ("tags", c.tags().to_string()),
                ],
                1u64,
            );
            out.family(&PPE_CPU_USAGE_RATIO).push(one(), f.cpu);
            out.family(&PPE_CPU_USAGE_LIMIT).push(one(), cpus);
            out.family(&PPE_MEMORY_USAGE).push(one(), f.mem);
            out.family(&PPE_MEMORY_SIZE).push(one(), c.memory_bytes());
            out.family(&PPE_DISK_SIZE).push(one(), f.maxdisk);
            out.family(&PPE_DISK_USAGE).push(one(), f.disk);
            for (gauge, counter, v) in [
                (&PPE_DISK_READ, &PPE_DISK_READ_TOTAL, f.diskread),
                (&PPE_DISK_WRITE, &PPE_DISK_WRITTEN_TOTAL, f.diskwrite),
                (&PPE_NET_RECEIVE, &PPE_NET_RECEIVE_TOTAL, f.netin),
                (&PPE_NET_TRANSMIT, &PPE_NET_TRANSMIT_TOTAL, f.netout),
            ] {
                out.family(gauge).push(one(), v);
                out.family(counter).push(one(), v);
            }
            out.family(&PPE_UPTIME).push(one(), f.uptime);
            if let Some(b) = c.onboot() {
                out.family(&PPE_ONBOOT)
                    .push([("id", id.clone()), ("node", node.clone()), ("type", g.ty.as_str().to_string())], b);
            }
            for st in LOCK_STATES {
                out.family(&PPE_LOCK_STATE).push([("id", id.clone()), ("state", st.to_string())], c.lock() == Some(st));
            }
            for st in HA_GUEST_STATES {
                out.family(&PPE_HA_STATE)
                    .push([("id", id.clone()), ("state", st.to_string())], g.ha_state.as_deref() == Some(st));
            }
        }
        // Guests not seen this time (deleted, moved away) are forgotten.
        *self.cpu.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        Error::all(errors)
    }
}

impl Ppe {
    /// The node's own series: up, info, its figures and its HA state.
    #[allow(clippy::too_many_arguments)]
    fn node_series(
        &self,
        cx: &Context,
        node: &str,
        node_id: &str,
        host_cpus: u64,
        uptime: Option<f64>,
        seen: &mut HashMap<String, CpuSample>,
        now: Instant,
        out: &mut MetricSet,
        errors: &mut Vec<Error>,
    ) {
        let list = cx.guests();
        out.family(&PPE_UP).push([("id", node_id.to_string())], 1u64);
        let nodeid = list
            .guests
            .members
            .as_ref()
            .and_then(|m| m.nodes.iter().find(|n| n.name == node))
            .map(|n| n.id)
            .unwrap_or(0);
        out.family(&PPE_NODE_INFO).push(
            [
                ("id", node_id.to_string()),
                ("level", String::new()),
                ("name", node.to_string()),
                ("nodeid", nodeid.to_string()),
            ],
            1u64,
        );
        self.node(cx, node_id, host_cpus, uptime, seen, now, out, errors);
        let ha_node = list.guests.ha_nodes.get(node);
        for st in HA_NODE_STATES {
            out.family(&PPE_HA_STATE)
                .push([("id", node_id.to_string()), ("state", st.to_string())], ha_node.is_some_and(|s| s == st));
        }
    }

    /// The node's figures as pvestatd gives them: CPU busy share of /proc/stat, memory used
    /// (MemTotal - MemAvailable), the root file system, uptime.
    #[allow(clippy::too_many_arguments)]
    fn node(
        &self,
        cx: &Context,
        id: &str,
        cpus: u64,
        uptime: Option<f64>,
        seen: &mut HashMap<String, CpuSample>,
        now: Instant,
        out: &mut MetricSet,
        errors: &mut Vec<Error>,
    ) {
        let one = || [("id", id.to_string())];
        match cx.files.read("proc/stat") {
            Ok(t) => match node::busy_cpu_seconds(&String::from_utf8_lossy(&t)) {
                // Busy seconds of all CPUs against wall time times the CPUs.
                Some(busy) => {
                    out.family(&PPE_CPU_USAGE_RATIO).push(one(), self.ratio(seen, id, busy, cpus as f64, now))
                }
                None => errors.push(Error::Unavailable("/proc/stat: no cpu line")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(Error::io(cx.host.path("proc/stat"), e)),
        }
        out.family(&PPE_CPU_USAGE_LIMIT).push(one(), cpus);
        if let Ok(t) = cx.files.read("proc/meminfo") {
            match node::memory_from_meminfo(&t) {
                Ok((total, used)) => {
                    out.family(&PPE_MEMORY_SIZE).push(one(), total);
                    out.family(&PPE_MEMORY_USAGE).push(one(), used);
                }
                Err(e) => errors.push(e.into()),
            }
        }
        // The root file system, as pvestatd's df of / (through a gate: a time limit, and one
        // thread however long it hangs).
        let root = cx.host.path("/");
        match self.statvfs.call("statvfs-root", cx.config.storage_timeout, move || statvfs::statvfs(&root)) {
            Ok(Ok(u)) => {
                out.family(&PPE_DISK_SIZE).push(one(), u.size);
                out.family(&PPE_DISK_USAGE).push(one(), u.used);
            }
            Ok(Err(e)) | Err(e) => errors.push(Error::io(cx.host.path("/"), e)),
        }
        if let Some(u) = uptime {
            out.family(&PPE_UPTIME).push(one(), u.floor());
        }
    }
}

/// Host-side (rx, tx) byte counters summed per guest over its `tap<vmid>i<N>` and
/// `veth<ctid>i<N>` interfaces (as vmstatus sums /proc/net/dev).
fn net_by_guest(cx: &Context) -> HashMap<(GuestType, String), (u64, u64)> {
    let mut out: HashMap<(GuestType, String), (u64, u64)> = HashMap::new();
    for (name, stats) in cx.guest_links().iter() {
        let Some((ty, vmid)) = guest_of_interface(name) else { continue };
        let s = out.entry((ty, vmid)).or_default();
        s.0 += stats.get("rx_bytes").unwrap_or(0);
        s.1 += stats.get("tx_bytes").unwrap_or(0);
    }
    out
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&Def]] = &[PPE_FAMILIES];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ratio_as_vmstatus() {
        let p = Ppe {
            cpu: Mutex::default(),
            statvfs: BlockingGate::default(),
            vm_files: Mutex::new(HeldFiles::new(crate::heldfile::FdBudget::new(8), OnStale::Reopen)),
        };
        let t0 = Instant::now();
        let mut seen = HashMap::new();
        assert_eq!(p.ratio(&mut seen, "qemu/1", 10.0, 2.0, t0), 0.0, "first reading");
        *p.cpu.lock().unwrap() = std::mem::take(&mut seen);
        let r = p.ratio(&mut seen, "qemu/1", 14.0, 2.0, t0 + std::time::Duration::from_secs(4));
        assert!((r - 0.5).abs() < 1e-9, "4 s of CPU in 4 s on 2 CPUs: {r}");
        *p.cpu.lock().unwrap() = std::mem::take(&mut seen);
        let again = p.ratio(&mut seen, "qemu/1", 20.0, 2.0, t0 + std::time::Duration::from_millis(4500));
        assert_eq!(again, r, "less than a second later: the last ratio");
    }
}

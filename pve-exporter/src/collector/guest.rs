//! The `guest` collector: every guest configured on this node, VMs and containers, running or
//! not, from /etc/pve (`.vmlist`, each config, the HA manager status) and whether its process
//! runs (the VM list, the containers' cgroups).

use std::collections::HashMap;

use super::{Collector, Context, Error, Group, Need, Setup};
use crate::{
    catalog::*,
    metrics::{LabelValue, MetricSet},
    sources::pve::guest_config::GuestType,
};

pub fn new(_: &Setup) -> Box<dyn Collector> {
    Box::new(Guest)
}

struct Guest;

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
pub fn running(cx: &Context) -> HashMap<(GuestType, String), Option<std::time::Duration>> {
    let mut out = HashMap::new();
    let list = cx.vms();
    for (vm, st) in list.vms.iter().zip(&list.stats) {
        if vm.source == crate::vm::PVE {
            out.insert((GuestType::Qemu, vm.id.clone()), st.cpu.map(|c| c.started));
        }
    }
    for ct in cx.containers() {
        out.insert((GuestType::Lxc, ct.ctid.clone()), ct.started);
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
        let qemu_state: HashMap<&str, &str> =
            cx.devices().iter().filter_map(|d| Some((d.id.as_str(), d.status.as_deref()?))).collect();
        let node: LabelValue = list.guests.node.clone().into();
        for g in &list.guests.guests {
            let c = &g.config;
            let id = LabelValue::Shared(g.vmid.as_str().into());
            let ty: LabelValue = g.ty.as_str().into();
            let both = || [("id", id.clone()), ("type", ty.clone())];
            let pool = pools.get(&g.vmid).cloned().unwrap_or_default();
            let level = |i: usize| pool.levels.get(i).cloned().unwrap_or_default();
            out.family(&GUEST_CONFIG_INFO).push(
                [
                    ("id", id.clone()),
                    ("type", ty.clone()),
                    ("name", c.name(g.ty, &g.vmid).into()),
                    ("node", node.clone()),
                    ("ostype", c.get("ostype").unwrap_or("").to_string().into()),
                    ("tags", c.tags().into()),
                    ("pool", pool.name.clone().into()),
                    ("pool_levels", pool.levels.len().to_string().into()),
                    ("pool1", level(0).into()),
                    ("pool2", level(1).into()),
                    ("pool3", level(2).into()),
                ],
                1u64,
            );
            let run = running.get(&(g.ty, g.vmid.clone()));
            out.family(&GUEST_UP).push(both(), run.is_some());
            let state: LabelValue = match (run, g.ty) {
                (None, _) => "stopped".into(),
                (Some(_), GuestType::Qemu) => {
                    qemu_state.get(g.vmid.as_str()).map_or("running".into(), |s| s.to_string().into())
                }
                (Some(_), GuestType::Lxc) if cx.container_frozen(&g.vmid) => "frozen".into(),
                (Some(_), GuestType::Lxc) => "running".into(),
            };
            out.family(&GUEST_STATE).push([("id", id.clone()), ("type", ty.clone()), ("state", state)], 1u64);
            let up = match (run, uptime) {
                (Some(Some(started)), Some(now)) => (now - started.as_secs_f64()).max(0.0).floor(),
                _ => 0.0,
            };
            out.family(&GUEST_UPTIME).push(both(), up);
            out.family(&GUEST_TEMPLATE).push(both(), c.template());
            out.family(&GUEST_ONBOOT).push(both(), c.onboot().unwrap_or(false));
            if let Some(o) = c.startup_order() {
                out.family(&GUEST_STARTUP_ORDER).push(both(), o);
            }
            out.family(&GUEST_PROTECTION).push(both(), c.protection());
            if let Some(l) = c.lock() {
                out.family(&GUEST_LOCK)
                    .push([("id", id.clone()), ("type", ty.clone()), ("lock", l.to_string().into())], 1u64);
            }
            if let Some(s) = &g.ha_state {
                out.family(&GUEST_HA_STATE)
                    .push([("id", id.clone()), ("type", ty.clone()), ("state", s.clone().into())], 1u64);
            }
            out.family(&GUEST_CPUS).push(both(), c.cpus(g.ty, host_cpus));
            out.family(&GUEST_MEMORY_BYTES).push(both(), c.memory_bytes());
            if g.ty == GuestType::Qemu
                && let Some(b) = c.balloon_min_bytes()
            {
                out.family(&GUEST_BALLOON_MIN_BYTES).push(both(), b);
            }
            if g.ty == GuestType::Lxc {
                out.family(&GUEST_SWAP_BYTES).push(both(), c.swap_bytes());
            }
            for d in c.disks(g.ty) {
                if let Some(size) = d.size {
                    out.family(&GUEST_DISK_SIZE_BYTES).push(
                        [
                            ("id", id.clone()),
                            ("type", ty.clone()),
                            ("disk", d.key.clone().into()),
                            ("volume", d.volume.clone().into()),
                        ],
                        size,
                    );
                }
            }
            out.family(&GUEST_SNAPSHOTS).push(both(), c.snapshots.len() as u64);
            if let Some(t) = c.newest_snapshot() {
                out.family(&GUEST_SNAPSHOT_NEWEST).push(both(), t);
            }
        }
        Error::all(list.take_errors())
    }
}

/// The host's CPUs as PVE counts them (`$cpuinfo->{cpus}`: `processor` lines of
/// /proc/cpuinfo below the root), else the CPUs online.
pub fn host_cpus(cx: &Context) -> u64 {
    cx.files
        .read("proc/cpuinfo")
        .ok()
        .map(|t| String::from_utf8_lossy(&t).lines().filter(|l| l.starts_with("processor")).count() as u64)
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

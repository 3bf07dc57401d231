//! Per-VM NICs: topology from each VM's monitor (the `qm` stage), tap counters from one
//! netlink dump or sysfs.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicBool, Ordering},
};

use super::{Collector, Context, Error, Group, Need, Setup};
use crate::{
    catalog::*,
    host::{HostRoot, is_gone},
    metrics::{LabelValue, MetricSet},
    sources::{
        kernel::{netlink, sysfs},
        qemu::monitor::VmDevices,
    },
};

pub fn new(_: &Setup) -> Box<dyn Collector> {
    Box::new(Nic)
}

struct Nic;

impl Collector for Nic {
    fn name(&self) -> &'static str {
        "nic"
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        FAMILIES
    }
    fn group(&self) -> Group {
        Group::Vms
    }
    fn needs(&self) -> &'static [Need] {
        &[Need::Vms, Need::Monitor]
    }
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error> {
        collect_nics(cx.host, cx.devices(), out)
    }
}

/// The counters of every NIC's host interface in one netlink dump, where the host root's
/// `/sys/class/net` is the daemon's own (None elsewhere, e.g. under a fixture root: the caller
/// reads the files below the root). A failed dump costs that scrape the faster path only, and is
/// logged at warning level once per process (then at debug: it would otherwise repeat every scrape).
fn nic_dump(host: &HostRoot, devices: &[VmDevices]) -> Option<netlink::Dump> {
    let wanted: HashSet<&str> = devices
        .iter()
        .flat_map(|d| d.nics.iter().flatten())
        .map(|n| n.ifname.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    if wanted.is_empty() || !netlink::sees_own_sysfs(host) {
        return None;
    }
    match netlink::dump_links(&|name| wanted.contains(name)) {
        Ok(d) => Some(d),
        Err(e) => {
            static LOGGED: AtomicBool = AtomicBool::new(false);
            if LOGGED.swap(true, Ordering::Relaxed) {
                log::debug!("NIC counters: {e}; reading sysfs");
            } else {
                log::warn!("NIC counters: {e}; reading sysfs instead (logged once, then at debug level)");
            }
            None
        }
    }
}

/// NIC families: info and queues from `info network`, counters of each tap from one netlink
/// dump (see [`nic_dump`]) or its sysfs statistics files.
pub(super) fn collect_nics(host: &HostRoot, devices: &[VmDevices], out: &mut MetricSet) -> Result<(), Error> {
    let dump = nic_dump(host, devices);
    let mut errors = Vec::new();
    for d in devices {
        let Some(nics) = &d.nics else { continue };
        // Shared label values: ~30 series per NIC clone these, not their strings.
        let id = shared(&d.id);
        let mut ifnames = HashSet::new();
        for nic in nics {
            let ifname = shared(&nic.ifname);
            out.family(&KVM_NIC_INFO).push(
                [
                    ("id", id.clone()),
                    ("ifname", ifname.clone()),
                    ("netdev", nic.netdev.clone().into()),
                    ("queues", nic.queues.to_string().into()),
                    ("type", nic.kind.clone().into()),
                    ("model", nic.model.clone().into()),
                    ("macaddr", nic.macaddr.clone().into()),
                ],
                1u64,
            );
            // Series keyed by ifname need one: a NIC on a user-mode backend has no host interface.
            if nic.ifname.is_empty() || !ifnames.insert(nic.ifname.as_str()) {
                continue;
            }
            let labels = || [("id", id.clone()), ("ifname", ifname.clone())];
            out.family(&KVM_NIC_QUEUES).push(labels(), nic.queues);
            let stats = match dump.as_ref().map(|d| d.links.get(&nic.ifname)) {
                Some(Some(Some(link))) => Ok(link.statistics()),
                // Not in the dump: gone, or missed by a dump the kernel flagged as interrupted,
                // or a name the dump cannot have; sysfs says which (NotFound when gone). Also
                // without a dump, or (never seen) without IFLA_STATS64.
                _ => sysfs::net_statistics(host, &nic.ifname),
            };
            match stats {
                Ok(stats) => {
                    for &(i, v) in &stats {
                        if let Some(def) = KVM_NIC_STATS.get(i) {
                            out.family(def).push(labels(), v);
                        }
                    }
                    // The guest's view: what the host's tap receives, the guest sent.
                    for (file, def) in [
                        ("tx_bytes", &KVM_GUEST_NETWORK_RECEIVE_BYTES),
                        ("rx_bytes", &KVM_GUEST_NETWORK_TRANSMIT_BYTES),
                        ("tx_packets", &KVM_GUEST_NETWORK_RECEIVE_PACKETS),
                        ("rx_packets", &KVM_GUEST_NETWORK_TRANSMIT_PACKETS),
                    ] {
                        if let Some(&(_, v)) = stats.iter().find(|(i, _)| sysfs::NET_STATISTICS.get(*i) == Some(&file))
                        {
                            out.family(def).push(labels(), v);
                        }
                    }
                }
                // The tap went away with its VM (or the NIC was unplugged) since the cache was filled.
                Err(e) if is_gone(&e) => log::debug!("VM {}: {}: {e}", d.id, nic.ifname),
                Err(e) => errors.push(Error::source(format!("VM {}: {}", d.id, nic.ifname), e)),
            }
        }
    }
    Error::all(errors)
}

fn shared(s: &str) -> LabelValue {
    LabelValue::Shared(s.into())
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&crate::catalog::Def]] = &[KVM_NIC, KVM_NIC_STATS, KVM_GUEST];

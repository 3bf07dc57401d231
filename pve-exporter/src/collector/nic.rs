//! Per-VM NICs: topology from each VM's monitor (the `qm` stage), tap counters from one
//! netlink dump or sysfs.

use std::collections::HashSet;

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
        let devices = cx.devices();
        let wanted: HashSet<&str> = devices
            .iter()
            .flat_map(|d| d.nics.iter().flatten())
            .map(|n| n.ifname.as_str())
            .filter(|n| !n.is_empty())
            .collect();
        // The scrape's one dump (the containers' veths may have asked for it already).
        let dump = if wanted.is_empty() { None } else { cx.host_links(&|n| wanted.contains(n)) };
        collect_nics(cx.host, devices, dump, out)
    }
}

/// NIC families: info and queues from `info network`, counters of each tap from one netlink
/// dump (the scrape's `host_links`) or its sysfs statistics files.
pub(super) fn collect_nics(
    host: &HostRoot,
    devices: &[VmDevices],
    dump: Option<&netlink::Dump>,
    out: &mut MetricSet,
) -> Result<(), Error> {
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
            let stats = match dump.map(|d| d.links.get(&nic.ifname)) {
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

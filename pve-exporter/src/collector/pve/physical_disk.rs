//! physical_disk: SMART health, wear-out, size and use of each node's disks
//! (`/nodes/<node>/disks/list`). API only: PVE runs smartctl for it, which needs more than a
//! file read.

use super::{ApiCtx, LocalCtx, PveCollector};
use crate::collector::Error;
use crate::{
    catalog::*,
    host::HostRoot,
    metrics::MetricSet,
    sources::pve::api::{self, PhysicalDisk},
};

pub(super) struct PhysicalDiskCollector;

impl PveCollector for PhysicalDiskCollector {
    fn families(&self) -> &'static [&'static [&'static crate::catalog::Def]] {
        FAMILIES
    }

    fn name(&self) -> &'static str {
        "physical_disk"
    }

    fn per_node(&self) -> bool {
        true
    }

    fn has_local_source(&self) -> bool {
        false
    }

    fn local_applies(&self, _host: &HostRoot, _node: Option<&str>, _pve_node: bool) -> Result<(), Error> {
        Err(Error::Unavailable("needs the PVE API (PVE runs smartctl for it)"))
    }

    fn local(&self, _ctx: &LocalCtx, _out: &mut MetricSet) -> Result<(), Error> {
        Err(Error::Unavailable("needs the PVE API"))
    }

    fn api(&self, ctx: &ApiCtx, node: Option<&str>, out: &mut MetricSet) -> Result<(), Error> {
        let node = node.ok_or(Error::Unavailable("no node"))?;
        let path = format!("/nodes/{node}/disks/list");
        let disks = api::parse_disks(&ctx.api.get(&path)?).map_err(|e| e.input(path.clone()))?;
        emit(node, &disks, out);
        Ok(())
    }
}

pub(super) fn emit(node: &str, disks: &[PhysicalDisk], out: &mut MetricSet) {
    let nd = |d: &PhysicalDisk| [("node", node.to_string()), ("devpath", d.devpath.clone())];
    let f = out.family(&PVE_PHYSICAL_DISK_HEALTH);
    for d in disks {
        // No verdict (no SMART data, SMART off) is no series, not "failing": the status
        // family below says which.
        let Some(healthy) = d.healthy() else { continue };
        f.push(
            [
                ("node", node.to_string()),
                ("devpath", d.devpath.clone()),
                ("model", d.model.clone()),
                ("serial", d.serial.clone()),
                ("type", d.kind.clone()),
            ],
            healthy,
        );
    }
    let f = out.family(&PVE_PHYSICAL_DISK_SMART_STATUS);
    for d in disks {
        let status = if d.health.is_empty() { "UNKNOWN".to_string() } else { d.health.clone() };
        f.push([("node", node.to_string()), ("devpath", d.devpath.clone()), ("status", status)], 1u64);
    }
    for d in disks {
        if let Some(w) = d.wearout_remaining {
            out.family(&PVE_PHYSICAL_DISK_WEAROUT).push(nd(d), w);
        }
    }
    for d in disks {
        if let Some(s) = d.size {
            out.family(&PVE_PHYSICAL_DISK_SIZE).push(nd(d), s);
        }
    }
    let f = out.family(&PVE_PHYSICAL_DISK_INFO);
    for d in disks {
        f.push(
            [
                ("node", node.to_string()),
                ("devpath", d.devpath.clone()),
                ("model", d.model.clone()),
                ("serial", d.serial.clone()),
                ("type", d.kind.clone()),
                ("used", d.used.clone()),
            ],
            1u64,
        );
    }
    for d in disks {
        for osd in &d.osds {
            out.family(&PVE_PHYSICAL_DISK_OSD).push(
                [("node", node.to_string()), ("devpath", d.devpath.clone()), ("osd", format!("osd.{osd}"))],
                1u64,
            );
        }
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&crate::catalog::Def]] = &[crate::catalog::PVE_PHYSICAL_DISKS];

//! vm_pressure: CPU, memory and I/O pressure (PSI) of each running QEMU VM, as ratios 0..1
//! (`/nodes/<node>/qemu`, or the VMs' cgroup pressure files). LXC containers are not covered:
//! PVE's API has no pressure for them.

use super::{ApiCtx, LocalCtx, PveCollector, vm_configs};
use crate::{
    catalog::*,
    host::HostRoot,
    metrics::MetricSet,
    sources::{
        proc::pressure::{self, VmPressure},
        pve::api,
    },
};
use crate::{collector::Error, sources::error::SourceError};

pub(super) struct VmPressureCollector;

impl PveCollector for VmPressureCollector {
    fn families(&self) -> &'static [&'static [&'static crate::catalog::Def]] {
        FAMILIES
    }

    fn name(&self) -> &'static str {
        "vm_pressure"
    }

    fn per_node(&self) -> bool {
        true
    }

    fn local_applies(&self, host: &HostRoot, node: Option<&str>, _pve_node: bool) -> Result<(), Error> {
        node.ok_or(Error::Unavailable("this node's name is unknown (no /proc/sys/kernel/hostname)"))?;
        if !host.path("sys/fs/cgroup").is_dir() {
            return Err(Error::Unavailable("no cgroup v2 at sys/fs/cgroup below the root"));
        }
        Ok(())
    }

    fn local(&self, ctx: &LocalCtx, out: &mut MetricSet) -> Result<(), Error> {
        let node = ctx.emit.node()?;
        let mut errors = Vec::new();
        let mut vmids = pressure::running_vm_scopes(ctx.host)
            .map_err(|e| Error::io(ctx.host.path("sys/fs/cgroup/qemu.slice"), e))?;
        // The API lists the VMs configured on this node; a VM running here without its config
        // is migrating in and belongs to the other node until the migration ends.
        match vm_configs(ctx) {
            Ok(Some(configs)) => vmids.retain(|id| configs.contains(&id.to_string())),
            Ok(None) => {}
            // Every running VM is reported then, without the config check.
            Err(e) => errors.push(SourceError::io(ctx.host.path("etc/pve/qemu-server"), e)),
        }
        // The pressure files of VMs no longer listed are closed; those listed are held.
        let mut held = ctx.pressure_files.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|id| vmids.binary_search(id).is_ok());
        let vms: Vec<VmPressure> = vmids
            .into_iter()
            .filter_map(|id| pressure::read_vm_pressure(ctx.host, &mut held, id, &mut errors))
            .collect();
        emit(node, &vms, out);
        Error::all_of(errors)
    }

    fn api(&self, ctx: &ApiCtx, node: Option<&str>, out: &mut MetricSet) -> Result<(), Error> {
        let node = node.ok_or(Error::Unavailable("no node"))?;
        let path = format!("/nodes/{node}/qemu");
        let vms = api::parse_qemu_pressure(&ctx.api.get(&path)?).map_err(|e| e.input(path.clone()))?;
        emit(node, &vms, out);
        Ok(())
    }
}

pub(super) fn emit(node: &str, vms: &[VmPressure], out: &mut MetricSet) {
    // PVE_VM_PRESSURE lists the families in the order of `VmPressure::ratios`.
    for (i, def) in PVE_VM_PRESSURE.iter().enumerate() {
        for vm in vms {
            if let Some(r) = vm.ratios[i] {
                out.family(def).push([("id", format!("qemu/{}", vm.vmid)), ("node", node.to_string())], r);
            }
        }
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&crate::catalog::Def]] = &[crate::catalog::PVE_VM_PRESSURE];

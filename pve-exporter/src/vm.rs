//! VMs and where they come from. A [`VmSource`] finds the VMs of one kind of host; PVE is the
//! first, libvirt and plain QEMU plug in beside it.

use std::collections::HashMap;

use crate::{
    host::HostRoot,
    sources::{
        procfs::{QemuProcess, find_qemu_processes},
        pve_config::{PoolInfo, PveConfig},
    },
};

/// A running VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    /// The `id` label: the PVE vmid.
    pub id: String,
    /// The QEMU process.
    pub pid: u32,
    pub name: String,
    pub cpu: String,
    pub vcores: u64,
    pub maxmem_bytes: u64,
    pub pool: Option<PoolInfo>,
}

/// What discovery found, and what it skipped and why.
#[derive(Debug, Default)]
pub struct Discovered {
    pub vms: Vec<Vm>,
    /// (pid, why) of QEMU processes that are not reported.
    pub skipped: Vec<(u32, &'static str)>,
}

pub trait VmSource: Send + Sync {
    fn name(&self) -> &'static str;
    /// Turn the QEMU processes of the host into VMs.
    fn vms(&self, procs: Vec<QemuProcess>, out: &mut Discovered);
}

/// PVE: QEMU processes with `-id <vmid>` whose `/etc/pve/qemu-server/<vmid>.conf` exists
/// (a VM without it is migrating in and belongs to the other node until it is done).
pub struct PveSource<'a> {
    pub config: Option<&'a PveConfig>,
}

impl VmSource for PveSource<'_> {
    fn name(&self) -> &'static str {
        "pve"
    }

    fn vms(&self, procs: Vec<QemuProcess>, out: &mut Discovered) {
        let empty = HashMap::new();
        let pools = self.config.map_or(&empty, |c| c.pools.as_ref());
        for p in procs {
            let Some(id) = p.cmdline.id.clone() else {
                out.skipped.push((p.pid, "no -id"));
                continue;
            };
            if let Some(cfgs) = self.config.and_then(|c| c.vm_configs.as_ref())
                && !cfgs.contains(&id)
            {
                out.skipped.push((p.pid, "no config (migrating in)"));
                continue;
            }
            let c = p.cmdline;
            out.vms.push(Vm {
                pool: pools.get(&id).cloned(),
                id,
                pid: p.pid,
                name: c.name,
                cpu: c.cpu,
                vcores: c.vcores,
                maxmem_bytes: c.maxmem_bytes,
            });
        }
        // Numeric vmid order: stable output, and what operators expect to read.
        out.vms.sort_by(|a, b| (a.id.len(), &a.id).cmp(&(b.id.len(), &b.id)));
    }
}

/// Find the VMs of the host. Err when /proc cannot be listed.
pub fn discover(host: &HostRoot, source: &dyn VmSource) -> std::io::Result<Discovered> {
    let procs = find_qemu_processes(host)?;
    let mut out = Discovered::default();
    source.vms(procs, &mut out);
    Ok(out)
}

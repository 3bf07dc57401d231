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

/// Keep one VM per id: two processes claiming one vmid would give duplicate series, which
/// makes Prometheus reject the whole scrape. `preferred(id)` names the pid to keep (PVE's pid
/// file); else the oldest process (lowest pid from a sorted scan) stays.
pub fn dedup_ids(out: &mut Discovered, preferred: impl Fn(&str) -> Option<u32>) {
    let mut kept: Vec<Vm> = Vec::with_capacity(out.vms.len());
    for vm in out.vms.drain(..) {
        match kept.iter_mut().find(|k| k.id == vm.id) {
            None => kept.push(vm),
            Some(k) => {
                let loser = if preferred(&vm.id) == Some(vm.pid) { std::mem::replace(k, vm) } else { vm };
                out.skipped.push((loser.pid, "another process has the same vmid"));
            }
        }
    }
    out.vms = kept;
}

/// PVE: QEMU processes with `-id <vmid>` whose `/etc/pve/qemu-server/<vmid>.conf` exists
/// (a VM without it is migrating in and belongs to the other node until it is done).
pub struct PveSource<'a> {
    pub host: &'a HostRoot,
    pub config: Option<&'a PveConfig>,
}

/// The pid in `/var/run/qemu-server/<vmid>.pid`.
fn pid_file(host: &HostRoot, id: &str) -> Option<u32> {
    host.read_to_string(format!("var/run/qemu-server/{id}.pid")).ok()?.trim().parse().ok()
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
        dedup_ids(out, |id| pid_file(self.host, id));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(id: &str, pid: u32) -> Vm {
        Vm { id: id.into(), pid, name: String::new(), cpu: String::new(), vcores: 1, maxmem_bytes: 0, pool: None }
    }

    #[test]
    fn one_vm_per_id() {
        let mut d = Discovered { vms: vec![vm("100", 10), vm("100", 20), vm("101", 30)], skipped: vec![] };
        dedup_ids(&mut d, |_| None);
        assert_eq!(d.vms.iter().map(|v| (v.id.as_str(), v.pid)).collect::<Vec<_>>(), [("100", 10), ("101", 30)]);
        assert_eq!(d.skipped, [(20, "another process has the same vmid")]);
        // The pid file wins.
        let mut d = Discovered { vms: vec![vm("100", 10), vm("100", 20)], skipped: vec![] };
        dedup_ids(&mut d, |id| (id == "100").then_some(20));
        assert_eq!(d.vms[0].pid, 20);
        assert_eq!(d.skipped[0].0, 10);
    }
}

//! vm_pressure: CPU, memory and I/O pressure (PSI) of each running QEMU VM, as ratios 0..1
//! (`/nodes/<node>/qemu`, or the VMs' cgroup pressure files). LXC containers are not covered:
//! PVE's API has no pressure for them (the `lxc` collector reads theirs).
//!
//! Locally each VM's cgroup is its QEMU process's (`0::` of `/proc/<pid>/cgroup`: PVE's
//! `qemu.slice/<vmid>.scope`, libvirt's `machine.slice/machine-qemu…scope/…`, wherever a
//! plain QEMU was started) below the cgroup2 mount that mountinfo names (`/sys/fs/cgroup`, or
//! `/sys/fs/cgroup/unified` on a hybrid host), for every VM the discovery found.

use std::{
    collections::{HashMap, HashSet},
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{ApiCtx, LocalCtx, PveCollector, vm_configs};
use crate::{
    catalog::*,
    heldfile::HeldFiles,
    host::{HostRoot, is_gone},
    metrics::MetricSet,
    sources::{
        proc::pressure::{self, VmPressure},
        pve::api,
    },
    vm::{self, Vm},
};
use crate::{collector::Error, sources::error::SourceError};

pub(super) struct VmPressureCollector;

/// The slot of `/proc/<pid>/cgroup` among a VM's held files (0..3: the pressure files).
const CGROUP_SLOT: usize = pressure::RESOURCES.len();

/// How long a QEMU process's cgroup, once read, is taken as known. PVE starts each VM in its
/// scope and never moves it; a process moved all the same is read again after this, or at
/// once when the files of the cgroup it had are gone.
const CGROUP_MAX_AGE: Duration = Duration::from_secs(60);

/// The VMs' pressure files and their /proc/<pid>/cgroup, held open by QEMU pid, and the
/// cgroup2 path each process's /proc/<pid>/cgroup last said (read once, not every scrape).
pub(super) struct PressureFiles {
    held: HeldFiles<u32>,
    cgroups: HashMap<u32, (Box<str>, Instant)>,
}

impl PressureFiles {
    pub(super) fn new(held: HeldFiles<u32>) -> Self {
        Self { held, cgroups: HashMap::new() }
    }

    /// Process `pid`'s cgroup2 path (`/qemu.slice/100.scope`; `/`: the root cgroup): as last
    /// read unless that is older than [`CGROUP_MAX_AGE`] or `again`. Err: unreadable (`Ok(None)`:
    /// no cgroup2 line), with the file's path.
    fn cgroup_of(&mut self, host: &HostRoot, pid: u32, again: bool) -> Result<Option<&str>, (PathBuf, io::Error)> {
        let fresh = |at: &Instant| at.elapsed() < CGROUP_MAX_AGE;
        if again || !self.cgroups.get(&pid).is_some_and(|(_, at)| fresh(at)) {
            let proc_cgroup = || host.path(format!("proc/{pid}/cgroup"));
            let raw = self.held.read(&pid, CGROUP_SLOT, proc_cgroup).map_err(|e| (proc_cgroup(), e))?;
            let Some(rel) = pressure::cgroup2_path(&String::from_utf8_lossy(raw)).map(Box::<str>::from) else {
                self.cgroups.remove(&pid);
                return Ok(None);
            };
            // Moved: the pressure files held are the old cgroup's.
            if self.cgroups.get(&pid).is_some_and(|(old, _)| *old != rel) {
                self.held.retain(|k| *k != pid);
            }
            self.cgroups.insert(pid, (rel, Instant::now()));
        }
        Ok(self.cgroups.get(&pid).map(|(rel, _)| &**rel))
    }
}

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
        // Wherever it is mounted (a hybrid host has it at /sys/fs/cgroup/unified).
        match crate::sources::kernel::cgroup::Hierarchies::read(host) {
            Ok(h) if h.v2.is_some() => Ok(()),
            _ => Err(Error::Unavailable("no cgroup2 mount in /proc/self/mountinfo")),
        }
    }

    fn local_reads_vms(&self) -> bool {
        true
    }

    fn local(&self, ctx: &LocalCtx, out: &mut MetricSet) -> Result<(), Error> {
        let node = ctx.emit.node()?;
        let cx = ctx.cx;
        let mut errors = Vec::new();
        let mut vms: Vec<&Vm> = cx.vms().vms.iter().collect();
        // The API lists the VMs configured on this node; a VM running here without its config
        // is migrating in and belongs to the other node until the migration ends.
        // The listing the VM list was made from in this scrape where there is one (not a second
        // walk of the directory and trip through the pmxcfs gate), else its own.
        let mut own = None;
        let configs = match cx.pve_config() {
            Some(c) => Ok(c.vm_configs.as_ref()),
            None => vm_configs(ctx).map(|c| own.insert(c).as_ref()),
        };
        match configs {
            Ok(Some(configs)) => vms.retain(|vm| vm.source != vm::PVE || configs.contains(&vm.id)),
            Ok(None) => {}
            // Every running VM is reported then, without the config check.
            Err(e) => errors.push(SourceError::io(ctx.host.path("etc/pve/qemu-server"), e)),
        }
        // The files of VMs no longer running are closed; those running are held.
        let mut files = ctx.pressure_files.lock().unwrap_or_else(|p| p.into_inner());
        let pids: HashSet<u32> = vms.iter().map(|vm| vm.pid).collect();
        files.held.retain(|pid| pids.contains(pid));
        files.cgroups.retain(|pid, _| pids.contains(pid));
        if vms.is_empty() {
            return Error::all_of(errors);
        }
        let Some(mount) = cx.cgroups().and_then(|h| h.v2.clone()) else {
            // VMs run, and no cgroup2 to read them from: say so, not "success, no VMs".
            return Err(Error::Unavailable("no cgroup2 mount in /proc/self/mountinfo"));
        };
        let mut found = Vec::new();
        for vm in vms {
            // Read again at once when the cgroup it had is gone: the process may have moved.
            for again in [false, true] {
                let dir = match files.cgroup_of(ctx.host, vm.pid, again) {
                    Ok(Some(rel)) => {
                        // In the root cgroup (a plain QEMU started by hand): the host's
                        // pressure, not the VM's.
                        if rel == "/" {
                            log::debug!("VM {}: its QEMU process is in the root cgroup: no pressure of its own", vm.id);
                            break;
                        }
                        mount.join(rel.trim_start_matches('/'))
                    }
                    Ok(None) => {
                        errors.push(SourceError::io(
                            ctx.host.path(format!("proc/{}/cgroup", vm.pid)),
                            std::io::Error::new(std::io::ErrorKind::InvalidData, "no cgroup2 (0::) line"),
                        ));
                        break;
                    }
                    // Stopped since the discovery: not a failure.
                    Err((_, e)) if is_gone(&e) => break,
                    Err((path, e)) => {
                        errors.push(SourceError::io(path, e));
                        break;
                    }
                };
                match pressure::read_cgroup_pressure(
                    ctx.host,
                    &mut files.held,
                    vm.pid,
                    &dir,
                    vm.id.clone(),
                    &mut errors,
                ) {
                    Some(p) => found.push(p),
                    None if !again => continue,
                    // The cgroup is gone: the VM stopped, unless its process is still there
                    // (then the lookup is wrong, and that must not read as "no VMs").
                    None if ctx.host.path(format!("proc/{}", vm.pid)).exists() => errors.push(SourceError::io(
                        ctx.host.path(&dir),
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("the cgroup of VM {} is not there", vm.id),
                        ),
                    )),
                    None => {}
                }
                break;
            }
        }
        emit(node, &found, out);
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
                out.family(def).push([("id", format!("qemu/{}", vm.id)), ("node", node.to_string())], r);
            }
        }
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&crate::catalog::Def]] = &[crate::catalog::PVE_VM_PRESSURE];

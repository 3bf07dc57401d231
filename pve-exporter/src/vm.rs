//! VMs and where they come from. A [`VmSource`] finds the VMs of one kind of host: PVE,
//! libvirt (OpenStack Nova compute nodes among them) or plain QEMU.

use std::{collections::HashMap, sync::Arc};

use crate::{
    host::HostRoot,
    sources::{
        error::SourceError,
        proc::process::{QemuCmdline, QemuProcess, is_qemu_binary},
        proc::scan::ProcScanner,
        proc::trust,
        pve::config::{PoolInfo, PveConfig},
        qemu::hmp::{Drive, Nic},
        qemu::libvirt::{LibvirtDomain, LibvirtReader, NovaInstance},
    },
};

/// `--qemu-allowed-users` as given, or root alone when it names nobody.
fn owners_or_root(owners: &[u32]) -> &[u32] {
    if owners.is_empty() { &[0] } else { owners }
}

/// Why a QEMU process found in /proc is not believed as a plain QEMU VM, or None: every uid of
/// it must be one of `owners` (the command line is its owner's word: `-drive file=` paths the
/// daemon opens as root, `-name` labels), and its executable a QEMU binary (argv[0] is
/// whatever the starter chose).
pub fn plain_untrusted(p: &QemuProcess, owners: &[u32]) -> Option<&'static str> {
    if p.uids.is_none() {
        Some(OWNER_UNKNOWN)
    } else if !p.owned_by(owners) {
        Some(NOT_ALLOWED_OWNER)
    } else if !p.exe.as_deref().is_some_and(is_qemu_binary) {
        Some(NOT_QEMU_EXE)
    } else {
        None
    }
}

const OWNER_UNKNOWN: &str = "owner unknown (no Uid line in its status)";
const NOT_ALLOWED_OWNER: &str = "owned by a user not in --qemu-allowed-users";
const NOT_QEMU_EXE: &str = "its executable is not a QEMU binary";
const NOT_A_VMID: &str = "-id is not a vmid (digits only)";
const NOT_ROOTS: &str = "not root's (PVE runs QEMU as root)";
/// The reasons that mean "looks like a VM, but its word does not count" (not "no -id", not
/// "migrating in").
const UNTRUSTED: [&str; 5] = [OWNER_UNKNOWN, NOT_ALLOWED_OWNER, NOT_QEMU_EXE, NOT_A_VMID, NOT_ROOTS];

/// Processes named in a warning already (pruned to those still skipped): each is logged once,
/// not every scrape.
static WARNED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Warn once per process about a QEMU process that is not believed: a VM that disappeared after
/// an upgrade (its owner is not allowed) or somebody posing as one.
fn warn_untrusted(skipped: &[(u32, &'static str)]) {
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    warned.retain(|pid| skipped.iter().any(|(p, why)| p == pid && UNTRUSTED.contains(why)));
    for &(pid, why) in skipped.iter().filter(|(_, why)| UNTRUSTED.contains(why)) {
        if !warned.contains(&pid) {
            warned.push(pid);
            log::warn!("pid {pid} looks like QEMU but is not reported: {why} (docs/operations.md, Trust rules)");
        }
    }
}

/// Why a QEMU process is not believed as a PVE VM, or None: its `-id` must be a vmid (digits:
/// it becomes part of socket paths and of `qm monitor <vmid>`), and the process root's (PVE
/// starts QEMU as root; anybody else's `-id` is a claim, not a VM).
pub fn pve_untrusted(p: &QemuProcess) -> Option<&'static str> {
    match p.cmdline.id.as_deref() {
        None => Some("no -id"),
        Some(id) if !trust::is_vmid(id) => Some(NOT_A_VMID),
        Some(_) if !p.owned_by(&[0]) => Some(NOT_ROOTS),
        Some(_) => None,
    }
}

/// The `source` of a VM found by [`PveSource`].
pub const PVE: &str = "pve";
/// ... by [`LibvirtSource`].
pub const LIBVIRT: &str = "libvirt";
/// ... by [`QemuSource`] (and QEMU processes of a libvirt host that libvirt did not start).
pub const QEMU: &str = "qemu";

/// A running VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    /// The `id` label: the PVE vmid; the libvirt domain name; for plain QEMU the `-name`, else the pid.
    pub id: String,
    /// The QEMU process.
    pub pid: u32,
    pub name: String,
    pub cpu: String,
    pub vcores: u64,
    pub maxmem_bytes: u64,
    pub pool: Option<PoolInfo>,
    /// [`PVE`], [`LIBVIRT`] or [`QEMU`]: PVE VMs have a QEMU monitor to ask, the others do not.
    pub source: &'static str,
    /// What a non-PVE source knows beyond the fields above.
    pub extra: Option<Arc<VmExtra>>,
}

/// What libvirt's XML or the QEMU command line tell of a VM that PVE learns from its monitor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmExtra {
    pub uuid: String,
    /// The guest's NICs, in the shape the monitor gives them (`type` is libvirt's
    /// `<interface type>` or the `-netdev` backend).
    pub nics: Vec<Nic>,
    pub drives: Vec<Drive>,
    pub nova: Option<NovaInstance>,
}

impl VmExtra {
    fn from_domain(d: &LibvirtDomain) -> Self {
        VmExtra {
            uuid: d.uuid.clone(),
            nics: d
                .nics
                .iter()
                .enumerate()
                .map(|(i, n)| Nic {
                    netdev: format!("net{i}"),
                    ifname: n.target.clone(),
                    queues: 1,
                    kind: n.kind.clone(),
                    model: n.model.clone(),
                    macaddr: n.mac.clone(),
                })
                .collect(),
            drives: d
                .disks
                .iter()
                .filter(|x| !x.target.is_empty())
                .map(|x| Drive {
                    name: x.target.clone(),
                    path: (!x.source.is_empty()).then(|| x.source.clone()),
                    driver: x.format.clone(),
                    format: x.format.clone(),
                    read_only: x.read_only,
                    attached_to: x.target.clone(),
                    ..Drive::default()
                })
                .collect(),
            nova: d.nova.clone(),
        }
    }

    fn from_cmdline(c: &QemuCmdline) -> Self {
        VmExtra {
            uuid: c.uuid.clone().unwrap_or_default(),
            nics: c
                .nics
                .iter()
                .map(|n| Nic {
                    netdev: n.netdev.clone(),
                    ifname: n.ifname.clone(),
                    queues: n.queues,
                    kind: n.kind.clone(),
                    model: n.model.clone(),
                    macaddr: n.mac.clone(),
                })
                .collect(),
            drives: c
                .drives
                .iter()
                .map(|d| Drive {
                    name: d.name.clone(),
                    path: Some(d.file.clone()),
                    driver: d.format.clone(),
                    format: d.format.clone(),
                    read_only: d.read_only,
                    attached_to: d.name.clone(),
                    ..Drive::default()
                })
                .collect(),
            nova: None,
        }
    }
}

/// What discovery found, and what it skipped and why.
#[derive(Debug, Default)]
pub struct Discovered {
    pub vms: Vec<Vm>,
    /// (pid, why) of QEMU processes that are not reported.
    pub skipped: Vec<(u32, &'static str)>,
    /// Files of the source that could not be read or parsed (their VMs are missing).
    pub errors: Vec<SourceError>,
}

pub trait VmSource: Send + Sync {
    fn name(&self) -> &'static str;
    /// Turn the QEMU processes of the host into VMs.
    fn vms(&self, procs: Vec<Arc<QemuProcess>>, out: &mut Discovered);
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

/// The pid in `/var/run/qemu-server/<vmid>.pid`, when root wrote that file.
fn pid_file(host: &HostRoot, id: &str) -> Option<u32> {
    if !trust::is_vmid(id) {
        return None;
    }
    let path = host.path(format!("var/run/qemu-server/{id}.pid"));
    match trust::read_owned_file(&path) {
        Ok(text) => text.trim().parse().ok(),
        Err(e) => {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                log::warn!("{e}");
            }
            None
        }
    }
}

impl VmSource for PveSource<'_> {
    fn name(&self) -> &'static str {
        "pve"
    }

    fn vms(&self, procs: Vec<Arc<QemuProcess>>, out: &mut Discovered) {
        let empty = HashMap::new();
        let pools = self.config.map_or(&empty, |c| c.pools.as_ref());
        for p in procs {
            if let Some(why) = pve_untrusted(&p) {
                out.skipped.push((p.pid, why));
                continue;
            }
            let Some(id) = p.cmdline.id.clone() else { continue };
            if let Some(cfgs) = self.config.and_then(|c| c.vm_configs.as_ref())
                && !cfgs.contains(&id)
            {
                out.skipped.push((p.pid, "no config (migrating in)"));
                continue;
            }
            let c = &p.cmdline;
            out.vms.push(Vm {
                pool: pools.get(&id).cloned(),
                id,
                pid: p.pid,
                name: c.name.clone(),
                cpu: c.cpu.clone(),
                vcores: c.vcores,
                maxmem_bytes: c.maxmem_bytes,
                source: PVE,
                extra: None,
            });
        }
        dedup_ids(out, |id| pid_file(self.host, id));
        // Numeric vmid order: stable output, and what operators expect to read.
        out.vms.sort_by(|a, b| (a.id.len(), &a.id).cmp(&(b.id.len(), &b.id)));
    }
}

/// A plain QEMU VM: id from `-name`, else the pid.
fn plain_vm(p: &QemuProcess) -> Vm {
    let c = &p.cmdline;
    Vm {
        id: if c.name.is_empty() { p.pid.to_string() } else { c.name.clone() },
        pid: p.pid,
        extra: Some(Arc::new(VmExtra::from_cmdline(c))),
        name: c.name.clone(),
        cpu: c.cpu.clone(),
        vcores: c.vcores,
        maxmem_bytes: c.maxmem_bytes,
        pool: None,
        source: QEMU,
    }
}

/// Names sort first as they are (domain names, `-name`s), as strings.
fn sort_by_id(vms: &mut [Vm]) {
    vms.sort_by(|a, b| a.id.cmp(&b.id));
}

/// libvirt: QEMU processes named by a pid file of `/run/libvirt/qemu/`, described by the
/// domain's status XML; any other QEMU process is reported as plain QEMU.
pub struct LibvirtSource<'a> {
    pub host: &'a HostRoot,
    pub reader: &'a LibvirtReader,
    /// Owners whose QEMU processes libvirt did not start are believed as plain QEMU
    /// (`--qemu-allowed-users`).
    pub owners: &'a [u32],
}

impl VmSource for LibvirtSource<'_> {
    fn name(&self) -> &'static str {
        LIBVIRT
    }

    fn vms(&self, procs: Vec<Arc<QemuProcess>>, out: &mut Discovered) {
        let domains = self.reader.running(self.host, &mut out.errors).unwrap_or_else(|e| {
            out.errors.push(SourceError::io(self.host.path(crate::sources::qemu::libvirt::RUN_DIR), e));
            Vec::new()
        });
        let by_pid: HashMap<u32, &Arc<LibvirtDomain>> = domains.iter().map(|d| (d.pid, &d.domain)).collect();
        let owners = owners_or_root(self.owners);
        // A QEMU process libvirt did not start is plain QEMU, believed as such or not at all.
        let plain = |p: &QemuProcess, out: &mut Discovered| match plain_untrusted(p, owners) {
            Some(why) => out.skipped.push((p.pid, why)),
            None => out.vms.push(plain_vm(p)),
        };
        for p in procs {
            // libvirt's root-owned pid file (or status XML) names the process: it is the
            // domain's, whoever it runs as (libvirt-qemu, by default).
            let Some(d) = by_pid.get(&p.pid) else {
                plain(&p, out);
                continue;
            };
            // A pid file left behind by a crashed libvirtd may name a reused pid.
            if !p.cmdline.name.is_empty() && p.cmdline.name != d.name {
                out.skipped.push((p.pid, "a libvirt pid file names it, but its -name is another domain's"));
                plain(&p, out);
                continue;
            }
            let c = &p.cmdline;
            out.vms.push(Vm {
                id: d.name.clone(),
                pid: p.pid,
                name: d.name.clone(),
                cpu: c.cpu.clone(),
                vcores: if d.vcpus > 0 { d.vcpus } else { c.vcores },
                maxmem_bytes: if d.memory_bytes > 0 { d.memory_bytes } else { c.maxmem_bytes },
                pool: None,
                source: LIBVIRT,
                extra: Some(Arc::new(VmExtra::from_domain(d))),
            });
        }
        // A domain's own process wins over a plain one of the same name.
        let libvirt_pids: Vec<(String, u32)> =
            out.vms.iter().filter(|v| v.source == LIBVIRT).map(|v| (v.id.clone(), v.pid)).collect();
        dedup_ids(out, |id| libvirt_pids.iter().find(|(i, _)| i == id).map(|(_, p)| *p));
        sort_by_id(&mut out.vms);
    }
}

/// Plain QEMU: every QEMU process of an allowed owner (`--qemu-allowed-users`, root when it
/// names nobody) that runs a QEMU binary.
pub struct QemuSource<'a> {
    pub owners: &'a [u32],
}

impl VmSource for QemuSource<'_> {
    fn name(&self) -> &'static str {
        QEMU
    }

    fn vms(&self, procs: Vec<Arc<QemuProcess>>, out: &mut Discovered) {
        let owners = owners_or_root(self.owners);
        for p in &procs {
            match plain_untrusted(p, owners) {
                Some(why) => out.skipped.push((p.pid, why)),
                None => out.vms.push(plain_vm(p)),
            }
        }
        dedup_ids(out, |_| None);
        sort_by_id(&mut out.vms);
    }
}

/// Find the VMs of the host. Err when /proc cannot be listed.
pub fn discover(host: &HostRoot, scanner: &mut ProcScanner, source: &dyn VmSource) -> std::io::Result<Discovered> {
    let (procs, stats) = scanner.scan(host)?;
    log::trace!("/proc: {} processes, {} cmdlines read", stats.processes, stats.read);
    let mut out = Discovered::default();
    source.vms(procs, &mut out);
    warn_untrusted(&out.skipped);
    // A process whose command line could not be read (the daemon out of file descriptors,
    // say) may be a VM missing from this scrape: that is a failure, not "no such VM".
    if let Some((n, why)) = scanner.unread() {
        let e = std::io::Error::other(format!(
            "{n} process(es) whose command line could not be read ({why}): VMs among them are missing; read again next scrape"
        ));
        out.errors.push(SourceError::io(host.path("proc"), e));
    }
    Ok(out)
}

/// A bare PVE VM for unit tests.
#[cfg(test)]
pub fn tests_vm(id: &str, pid: u32) -> Vm {
    Vm {
        id: id.into(),
        pid,
        name: String::new(),
        cpu: String::new(),
        vcores: 1,
        maxmem_bytes: 0,
        pool: None,
        source: PVE,
        extra: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(id: &str, pid: u32) -> Vm {
        tests_vm(id, pid)
    }

    #[test]
    fn one_vm_per_id() {
        let mut d =
            Discovered { vms: vec![vm("100", 10), vm("100", 20), vm("101", 30)], skipped: vec![], errors: vec![] };
        dedup_ids(&mut d, |_| None);
        assert_eq!(d.vms.iter().map(|v| (v.id.as_str(), v.pid)).collect::<Vec<_>>(), [("100", 10), ("101", 30)]);
        assert_eq!(d.skipped, [(20, "another process has the same vmid")]);
        // The pid file wins.
        let mut d = Discovered { vms: vec![vm("100", 10), vm("100", 20)], skipped: vec![], errors: vec![] };
        dedup_ids(&mut d, |id| (id == "100").then_some(20));
        assert_eq!(d.vms[0].pid, 20);
        assert_eq!(d.skipped[0].0, 10);
    }

    fn proc(pid: u32, uid: u32, exe: Option<&str>, args: &str) -> Arc<QemuProcess> {
        let args: Vec<String> = args.split(' ').map(str::to_string).collect();
        Arc::new(QemuProcess {
            pid,
            cmdline: crate::sources::proc::process::parse_qemu_cmdline(&args),
            uids: Some([uid; 4]),
            exe: exe.map(str::to_string),
        })
    }

    const QEMU: Option<&str> = Some("/usr/bin/qemu-system-x86_64");

    #[test]
    fn pve_believes_root_and_vmids_only() {
        assert_eq!(pve_untrusted(&proc(1, 0, QEMU, "/usr/bin/kvm -id 100")), None);
        // PVE's QEMU is root's whatever its executable: root's word is the VM.
        assert_eq!(pve_untrusted(&proc(1, 0, None, "/usr/bin/kvm -id 100")), None);
        assert_eq!(pve_untrusted(&proc(1, 0, QEMU, "/usr/bin/kvm -name x")), Some("no -id"));
        for id in ["../x", "100/../../etc", "", "1e3", "0x64", "100 ", "1000000000"] {
            let p = QemuProcess {
                cmdline: QemuCmdline { id: Some(id.into()), ..QemuCmdline::default() },
                ..(*proc(1, 0, QEMU, "kvm")).clone()
            };
            assert_eq!(pve_untrusted(&p), Some("-id is not a vmid (digits only)"), "{id:?}");
        }
        assert_eq!(
            pve_untrusted(&proc(1, 65534, QEMU, "/usr/bin/kvm -id 100")),
            Some("not root's (PVE runs QEMU as root)")
        );
        let mut p = (*proc(1, 0, QEMU, "/usr/bin/kvm -id 100")).clone();
        p.uids = Some([1000, 0, 0, 0]);
        assert!(pve_untrusted(&p).is_some(), "a setuid start by a user is the user's");
        p.uids = None;
        assert!(pve_untrusted(&p).is_some(), "unknown owner");
    }

    #[test]
    fn plain_qemu_believes_allowed_owners_running_qemu() {
        let root = [0];
        assert_eq!(plain_untrusted(&proc(1, 0, QEMU, "qemu-system-x86_64 -name a"), &root), None);
        assert_eq!(plain_untrusted(&proc(1, 0, Some("/usr/libexec/qemu-kvm"), "x"), &root), None);
        assert_eq!(plain_untrusted(&proc(1, 0, Some("/usr/bin/kvm"), "x"), &root), None);
        assert_eq!(plain_untrusted(&proc(1, 0, Some("/usr/bin/qemu-system-x86_64 (deleted)"), "x"), &root), None);
        assert_eq!(
            plain_untrusted(&proc(1, 0, Some("/usr/bin/sleep"), "qemu-system-x86_64 -name a"), &root),
            Some("its executable is not a QEMU binary")
        );
        assert_eq!(
            plain_untrusted(&proc(1, 0, None, "qemu-system-x86_64"), &root),
            Some("its executable is not a QEMU binary")
        );
        assert_eq!(
            plain_untrusted(&proc(1, 65534, QEMU, "qemu-system-x86_64"), &root),
            Some("owned by a user not in --qemu-allowed-users")
        );
        // libvirt's QEMU user, when allowed.
        assert_eq!(plain_untrusted(&proc(1, 64055, QEMU, "qemu-system-x86_64"), &[0, 64055]), None);
        let mut p = (*proc(1, 0, QEMU, "x")).clone();
        p.uids = None;
        assert_eq!(plain_untrusted(&p, &root), Some("owner unknown (no Uid line in its status)"));
    }

    /// Whole sources: a user's process posing as QEMU (FIFO drive, `-id ../x`) is no VM.
    #[test]
    fn sources_skip_what_they_do_not_believe() {
        let procs = vec![
            proc(10, 0, QEMU, "/usr/bin/kvm -id 100 -name web"),
            proc(11, 65534, QEMU, "qemu-system-x86_64 -id 101 -name fake -drive file=/tmp/fifo,if=none,id=d0"),
            proc(12, 0, QEMU, "/usr/bin/kvm -id ../x -name bad"),
            proc(13, 0, Some("/usr/bin/sleep"), "qemu-system-x86_64 -name notqemu -drive file=/etc/shadow,id=d1"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let mut out = Discovered::default();
        PveSource { host: &host, config: None }.vms(procs.clone(), &mut out);
        assert_eq!(out.vms.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), ["100"]);
        let mut skipped = out.skipped.clone();
        skipped.sort();
        assert_eq!(
            skipped,
            [(11, "not root's (PVE runs QEMU as root)"), (12, "-id is not a vmid (digits only)"), (13, "no -id"),]
        );
        let mut out = Discovered::default();
        QemuSource { owners: &[] }.vms(procs, &mut out);
        assert_eq!(out.vms.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), ["bad", "web"]);
        assert!(out.skipped.contains(&(11, "owned by a user not in --qemu-allowed-users")), "{:?}", out.skipped);
        assert!(out.skipped.contains(&(13, "its executable is not a QEMU binary")), "{:?}", out.skipped);
    }

    /// PVE's pid file counts when root wrote it, and only for a vmid.
    #[test]
    fn pid_files_of_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let run = dir.path().join("var/run/qemu-server");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("100.pid"), "4242\n").unwrap();
        assert_eq!(pid_file(&host, "100"), Some(4242));
        assert_eq!(pid_file(&host, "../qemu-server/100"), None);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(run.join("100.pid"), Some(65534), None).unwrap();
            assert_eq!(pid_file(&host, "100"), None);
        }
    }
}

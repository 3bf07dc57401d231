//! Per-VM disks: topology and I/O counters from each VM's monitor (the `qm` stage), sizes
//! from QEMU or, where it does not tell, the host.

use std::{
    collections::{HashMap, HashSet},
    io,
    path::PathBuf,
    sync::Arc,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{Collector, Context, Error, Group, Need, Setup};
use crate::{
    catalog::*,
    host::{BlockingGate, HostRoot},
    metrics::{LabelValue, MetricSet},
    sources::{
        kernel::sysfs,
        qemu::hmp::{self, BlockStats},
        qemu::monitor::VmDevices,
        qemu::redact,
        storage::statvfs::{self, MountTable},
    },
};

pub fn new(setup: &Setup) -> Box<dyn Collector> {
    Box::new(Disk { sizes: DiskSizes::new(setup.config.storage_timeout) })
}

struct Disk {
    /// Disk sizes read from the host, one timed gate per mount.
    sizes: DiskSizes,
}

impl Collector for Disk {
    fn name(&self) -> &'static str {
        "disk"
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
        collect_disks(cx.host, &self.sizes, cx.devices(), out)
    }
    fn stuck(&self) -> Vec<(String, Duration)> {
        self.sizes.hung().into_iter().map(|(m, t)| (format!("disk sizes on mount {m}"), t)).collect()
    }
}

/// Whether a drive is exported: it has a medium, and is one of the guest's disks.
fn exported(d: &hmp::Drive) -> bool {
    d.path.is_some() && !firmware_or_state(d)
}

/// Drives that are no guest disk: the UEFI firmware's code ROM and its vars store (QEMU's
/// `pflash0`/`pflash1`, by name or by their machine flash devices; PVE 8 `-drive if=pflash`,
/// PVE 9 `-blockdev` nodes for `-machine pflash0=,pflash1=`), PVE's EFI vars disk
/// (`drive-efidisk0`) and TPM state (`drive-tpmstate0-backup`, attached while PVE backs it
/// up). Left out of the disk families: they are PVE volumes, not disks the guest writes data
/// to, and the ROM is the same read-only file on every UEFI VM (docs/metrics.md).
fn firmware_or_state(d: &hmp::Drive) -> bool {
    let name = d.disk_name();
    name.starts_with("pflash")
        || name.starts_with("efidisk")
        || name.starts_with("tpmstate")
        || d.attached_to.starts_with("/machine/system.flash")
}

/// Disk sizes read from the host (qcow2 headers, file lengths, device sizes) where QEMU does
/// not tell them. The images may sit on NFS, CIFS or a hung iSCSI device: every read runs on
/// a timed gate of the image's mount (`--storage-timeout`, capped by the scrape's deadline),
/// so a hung mount costs its own disks' sizes, pins one thread, and backs off.
pub struct DiskSizes {
    limit: Duration,
    gates: Mutex<HashMap<PathBuf, BlockingGate>>,
}

type SizeJob = (String, String); // (host path, format)

impl DiskSizes {
    pub fn new(limit: Duration) -> Self {
        Self { limit, gates: Mutex::default() }
    }

    /// Mounts whose size reads hang: (mount, for how long).
    pub fn hung(&self) -> Vec<(String, Duration)> {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.iter().filter_map(|(m, g)| Some((m.display().to_string(), g.hung()?))).collect()
    }

    /// The sizes of `wanted`, each read on its mount's gate; all mounts at once, each waited
    /// for until one deadline.
    fn read(&self, host: &HostRoot, wanted: Vec<SizeJob>) -> HashMap<SizeJob, Result<u64, Arc<io::Error>>> {
        let mut out = HashMap::new();
        if wanted.is_empty() {
            return out;
        }
        let mounts = host.read_to_string("proc/self/mountinfo").map(|t| MountTable::new(&statvfs::parse_mountinfo(&t)));
        // (mount, its disks)
        let mut by_mount: Vec<(PathBuf, Vec<SizeJob>)> = Vec::new();
        for job in wanted {
            let full = host.path(&job.0);
            let mount = mounts.as_ref().ok().and_then(|m| m.mount_of(&full)).unwrap_or_else(|| PathBuf::from("/"));
            match by_mount.iter_mut().find(|(m, _)| *m == mount) {
                Some((_, jobs)) => jobs.push(job),
                None => by_mount.push((mount, vec![job])),
            }
        }
        let gates: Vec<BlockingGate> = {
            let mut map = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            // Gates of mounts no VM disk is on any more go (a hung one stays while its call runs).
            map.retain(|m, g| g.busy() || by_mount.iter().any(|(x, _)| x == m));
            by_mount.iter().map(|(m, _)| map.entry(m.clone()).or_default().clone()).collect()
        };
        let deadline = Instant::now() + crate::deadline::cap(self.limit);
        let pending: Vec<_> = by_mount
            .iter()
            .zip(&gates)
            .map(|((_, jobs), gate)| {
                let (host, jobs) = (host.clone(), jobs.clone());
                gate.start("disk-size", self.limit, move || {
                    jobs.iter().map(|(p, f)| sysfs::disk_size(&host, p, f).map_err(Arc::new)).collect::<Vec<_>>()
                })
            })
            .collect();
        for ((mount, jobs), rx) in by_mount.into_iter().zip(pending) {
            // A mount that did not answer fails each of its disks' sizes alike.
            let answers: Result<Vec<Result<u64, Arc<io::Error>>>, Arc<io::Error>> = rx
                .and_then(|p| p.wait(deadline))
                .map_err(|e| Arc::new(io::Error::new(e.kind(), format!("{}: {e}", mount.display()))));
            match answers {
                Ok(v) => out.extend(jobs.into_iter().zip(v)),
                Err(e) => out.extend(jobs.into_iter().map(|j| (j, Err(e.clone())))),
            }
        }
        out
    }
}

/// Disk families: info from `info block`, size from QEMU (QMP) or the host, I/O counters.
pub(super) fn collect_disks(
    host: &HostRoot,
    sizes: &DiskSizes,
    devices: &[VmDevices],
    out: &mut MetricSet,
) -> Result<(), Error> {
    let mut errors = Vec::new();
    // Sizes QEMU did not tell, read from the host first, all at once.
    let mut wanted: Vec<SizeJob> = Vec::new();
    for d in devices {
        for drive in d.drives.iter().flatten().filter(|x| exported(x)) {
            let path = drive.path.as_deref().unwrap_or("");
            let told = d.sizes.as_ref().is_some_and(|s| s.iter().any(|(n, _)| *n == drive.name));
            // librbd and other network storage have no host path to measure.
            if !told && path.starts_with('/') {
                let job = (path.to_string(), drive.format.clone());
                if !wanted.contains(&job) {
                    wanted.push(job);
                }
            }
        }
    }
    let host_sizes = sizes.read(host, wanted);
    for d in devices {
        let Some(drives) = &d.drives else { continue };
        let id = shared(&d.id);
        let stats = d.stats.as_deref().map(hmp::stats_by_name).unwrap_or_default();
        let mut seen = HashSet::new();
        for drive in drives.iter().filter(|x| exported(x)) {
            let disk_name = drive.disk_name().to_string();
            if !seen.insert(disk_name.clone()) {
                continue;
            }
            let path = drive.path.as_deref().unwrap_or("");
            // Labels get the path without credentials (iSCSI CHAP, cephx keys: sources/qemu/redact.rs);
            // sizing below needs the path itself, and only local paths are sized.
            let label_path = redact::drive_path(path);
            let kind = hmp::classify(&label_path, &drive.format);
            let device = sysfs::device_name(host, path).unwrap_or_default();
            let disk = shared(&disk_name);
            out.family(&KVM_DISK_INFO).push(
                [
                    ("id", id.clone()),
                    ("disk_name", disk.clone()),
                    ("block_id", drive.block_id().to_string().into()),
                    ("disk_path", label_path.into_owned().into()),
                    ("disk_type", kind.disk_type.into()),
                    ("vol_name", kind.vol_name.into()),
                    ("pool", kind.pool.into()),
                    ("pool_name", kind.pool_name.into()),
                    ("cluster_id", kind.cluster_id.into()),
                    ("vg_name", kind.vg_name.into()),
                    ("device", device.into()),
                    ("attached_to", drive.attached_device().to_string().into()),
                    ("cache_mode", drive.cache_mode.clone().into()),
                    ("detect_zeroes", drive.detect_zeroes.clone().into()),
                    ("read_only", LabelValue::Static(if drive.read_only { "true" } else { "" })),
                ],
                1u64,
            );
            let labels = || [("id", id.clone()), ("disk_name", disk.clone())];

            let qemu_size = d.sizes.as_ref().and_then(|s| s.iter().find(|(n, _)| *n == drive.name).map(|(_, v)| *v));
            let size = match qemu_size {
                Some(v) => Some(v),
                None => match host_sizes.get(&(path.to_string(), drive.format.clone())) {
                    None => None,
                    Some(Ok(v)) => Some(*v),
                    Some(Err(e)) => {
                        errors.push(Error::source(format!("VM {}: {disk_name}: size", d.id), e.clone()));
                        None
                    }
                },
            };
            if let Some(v) = size.filter(|v| *v > 0) {
                out.family(&KVM_DISK_SIZE_BYTES).push(labels(), v);
            }

            if let Some(st) = stats.get(drive.name.as_str()) {
                push_io(out, labels(), st);
            }
        }
    }
    Error::all(errors)
}

fn shared(s: &str) -> LabelValue {
    LabelValue::Shared(s.into())
}

fn push_io(out: &mut MetricSet, labels: [(&'static str, LabelValue); 2], st: &BlockStats) {
    let secs = |ns: u64| ns as f64 / 1e9;
    out.family(&KVM_DISK_READ_OPERATIONS).push(labels.clone(), st.rd_operations);
    out.family(&KVM_DISK_READ_BYTES).push(labels.clone(), st.rd_bytes);
    out.family(&KVM_DISK_READ_TIME).push(labels.clone(), secs(st.rd_total_time_ns));
    out.family(&KVM_DISK_WRITE_OPERATIONS).push(labels.clone(), st.wr_operations);
    out.family(&KVM_DISK_WRITE_BYTES).push(labels.clone(), st.wr_bytes);
    out.family(&KVM_DISK_WRITE_TIME).push(labels.clone(), secs(st.wr_total_time_ns));
    out.family(&KVM_DISK_FLUSH_OPERATIONS).push(labels.clone(), st.flush_operations);
    out.family(&KVM_DISK_FLUSH_TIME).push(labels, secs(st.flush_total_time_ns));
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&crate::catalog::Def]] = &[KVM_DISK];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Value;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/qemu");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
    }

    #[test]
    fn firmware_and_state_drives_are_no_guest_disks() {
        // A plain QEMU's UEFI pair as its command line names it, and PVE's forms.
        let c = crate::sources::proc::process::parse_qemu_cmdline(
            &"qemu-system-x86_64 -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd -drive if=pflash,format=raw,file=/vm/vars.fd -drive file=/vm/disk.qcow2,if=virtio"
                .split(' ')
                .map(String::from)
                .collect::<Vec<_>>(),
        );
        let drive = |name: &str, attached: &str| hmp::Drive {
            name: name.into(),
            path: Some("/x".into()),
            attached_to: attached.into(),
            ..hmp::Drive::default()
        };
        let kept: Vec<&str> = c
            .drives
            .iter()
            .map(|d| drive(&d.name, ""))
            .filter(exported)
            .map(|d| if d.name == "virtio0" { "virtio0" } else { "other" })
            .collect();
        assert_eq!(kept, ["virtio0"]);
        for (name, attached) in [
            ("pflash0", "/machine/system.flash0"),
            ("drive-efidisk0", "/machine/system.flash1"),
            ("drive-tpmstate0-backup", ""),
            ("", "/machine/system.flash0"),
        ] {
            assert!(!exported(&drive(name, attached)), "{name} {attached}");
        }
        assert!(exported(&drive("drive-scsi0", "scsi0")));
    }

    #[test]
    fn nic_stat_families_follow_the_sysfs_files() {
        assert_eq!(KVM_NIC_STATS.len(), sysfs::NET_STATISTICS.len());
        for (def, file) in KVM_NIC_STATS.iter().zip(sysfs::NET_STATISTICS) {
            assert_eq!(def.name, format!("kvm_nic_{file}_total"));
        }
    }

    fn labels(s: &crate::metrics::Sample) -> Vec<(&str, &str)> {
        s.labels.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect()
    }

    /// The real captures, as a QMP-mode scrape would see them, on a host without the files.
    #[test]
    fn families_from_real_captures() {
        let q: serde_json::Value = serde_json::from_str(&fixture("query-blockstats.json")).unwrap();
        let b: serde_json::Value = serde_json::from_str(&fixture("query-block.json")).unwrap();
        let dev = VmDevices {
            id: "900".into(),
            nics: Some(hmp::parse_info_network(&fixture("info-network.txt"))),
            drives: Some(hmp::parse_info_block(&fixture("info-block.txt"))),
            stats: Some(crate::sources::qemu::qmp::blockstats_rows(&q["return"].to_string())),
            sizes: Some(crate::sources::qemu::qmp::virtual_sizes(&b["return"].to_string())),
            balloon: None,
            errors: vec![],
            stalled: false,
            status: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let mut out = MetricSet::new("pve");
        collect_disks(&host, &DiskSizes::new(Duration::from_secs(5)), std::slice::from_ref(&dev), &mut out).unwrap();
        let info = out.get("pve_kvm_disk_info").unwrap();
        // Every drive with a medium: not the empty CD-ROM.
        let names: Vec<&str> = info.samples.iter().map(|s| s.labels[1].1.as_str()).collect();
        assert_eq!(names, ["scsi0", "virtio0", "scsi1", "virtio1", "ide0", "scsi2", "scsi3"]);
        assert_eq!(
            labels(&info.samples[3]),
            [
                ("id", "900"),
                ("disk_name", "virtio1"),
                ("block_id", "1332"),
                ("disk_path", "/dev/zvol/rpool/data/vm-900-disk-4"),
                ("disk_type", "zvol"),
                ("vol_name", "vm-900-disk-4"),
                ("pool", "rpool/data"),
                ("pool_name", ""),
                ("cluster_id", ""),
                ("vg_name", ""),
                ("device", ""),
                ("attached_to", "virtio1"),
                ("cache_mode", "writeback, direct"),
                ("detect_zeroes", ""),
                ("read_only", "true"),
            ]
        );
        let lvm = labels(&info.samples[2]);
        assert!(lvm.contains(&("disk_type", "lvm")) && lvm.contains(&("vg_name", "pvecap")), "{lvm:?}");
        let pve9 = labels(&info.samples[5]);
        assert!(pve9.contains(&("disk_type", "qcow2")) && pve9.contains(&("block_id", "")), "{pve9:?}");
        let size = out.get("pve_kvm_disk_size_bytes").unwrap();
        assert_eq!(size.samples.len(), 7);
        assert_eq!(size.samples[5].value, Value::Int(2 << 30));
        let rd = out.get("pve_kvm_disk_read_operations_total").unwrap();
        assert_eq!(rd.samples[0].value, Value::Int(1));
        let wr = out.get("pve_kvm_disk_write_bytes_total").unwrap();
        assert_eq!(wr.samples[0].value, Value::Int(12288));

        // NICs: the user-mode NIC has info only; the tap counters are missing here (no
        // /sys below the root): gone, not a failure.
        let mut out = MetricSet::new("pve");
        crate::collector::nic::collect_nics(&host, &[dev], None, &mut out).unwrap();
        assert_eq!(out.get("pve_kvm_nic_info").unwrap().samples.len(), 3);
        let q = out.get("pve_kvm_nic_queues").unwrap();
        assert_eq!(q.samples.iter().map(|s| s.value.clone()).collect::<Vec<_>>(), [Value::Int(1), Value::Int(4)]);
        assert!(out.get("pve_kvm_nic_rx_bytes_total").is_none());
    }

    #[test]
    fn sizes_from_the_host_when_qemu_does_not_tell() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        std::fs::create_dir_all(dir.path().join("img")).unwrap();
        std::fs::write(dir.path().join("img/vm-1-disk-0.raw"), vec![0u8; 8192]).unwrap();
        let dev = VmDevices {
            id: "1".into(),
            drives: Some(hmp::parse_info_block(
                "drive-scsi0 (#block1): /img/vm-1-disk-0.raw (raw)\ndrive-scsi1 (#block2): /img/gone.qcow2 (qcow2)\ndrive-efidisk0 (#block3): /img/vm-1-disk-0.raw (raw)\ndrive-scsi2 (#block4): rbd:pool/vm-1-disk-2:conf=/etc/pve/ceph.conf (raw)\n",
            )),
            ..VmDevices::default()
        };
        let mut out = MetricSet::new("pve");
        let e = collect_disks(&host, &DiskSizes::new(Duration::from_secs(5)), &[dev], &mut out).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("scsi1: size") && !e.contains("scsi2"), "{e}");
        let size = out.get("pve_kvm_disk_size_bytes").unwrap();
        assert_eq!(size.samples.len(), 1);
        assert_eq!(size.samples[0].value, Value::Int(8192));
        assert_eq!(out.get("pve_kvm_disk_info").unwrap().samples.len(), 3, "efidisk skipped");
    }

    /// A drive whose path carries credentials (a cephx key, iSCSI CHAP) is labelled without
    /// them; the storage labels still come from the path.
    #[test]
    fn credentials_never_reach_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let dev = VmDevices {
            id: "1".into(),
            drives: Some(hmp::parse_info_block(
                "drive-scsi0 (#block1): rbd:ceph-vm/vm-1-disk-0:id=admin:key=AQBz4lRbAAAAABAA2w+fkMn0==:mon_host=10.0.0.1 (raw)\n\
                 drive-scsi1 (#block2): iscsi://chap%hunter2@10.0.0.9/iqn.2003-01.org.example:t1/0 (raw)\n",
            )),
            ..VmDevices::default()
        };
        let mut out = MetricSet::new("pve");
        collect_disks(&host, &DiskSizes::new(Duration::from_secs(5)), &[dev], &mut out).unwrap();
        let info = out.get("pve_kvm_disk_info").unwrap();
        let text = format!("{:?}", info.samples);
        assert!(!text.contains("AQBz4l") && !text.contains("hunter2") && !text.contains("chap"), "{text}");
        let l = labels(&info.samples[0]);
        assert!(
            l.contains(&("disk_path", "rbd:ceph-vm/vm-1-disk-0:id=admin:key=<redacted>:mon_host=10.0.0.1")),
            "{l:?}"
        );
        assert!(l.contains(&("pool", "ceph-vm")) && l.contains(&("vol_name", "vm-1-disk-0")), "{l:?}");
        let l = labels(&info.samples[1]);
        assert!(l.contains(&("disk_path", "iscsi://<redacted>@10.0.0.9/iqn.2003-01.org.example:t1/0")), "{l:?}");
    }
}

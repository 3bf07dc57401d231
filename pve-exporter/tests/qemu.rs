//! NICs and disks of real QEMU VMs through the real daemon: `qemu-system-x86_64 -accel tcg -S`
//! with PVE-shaped command lines (see `support`), read over QMP and through `qm monitor` on a
//! PTY (the `pve-test-qm` double, which talks to the same QEMU), and the monitor's failure
//! modes: a QMP socket that never answers, a `qm` that hangs. Need root (tap and loop
//! devices) and QEMU with qemu-img (`cargo xtask setup` installs them).

mod common;
mod support;

use std::{
    collections::BTreeSet,
    io::Read,
    os::unix::net::UnixListener,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Daemon, Guest, host_root, require_privileges};
use pve_exporter::sources::kernel::sysfs::NET_STATISTICS;
use support::{
    Loop, Pve, Qemu, Sample, VmSpec, children, fd_count, find, link_own_path, mac, parse, qm_wrapper, thread_count,
    value,
};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

fn require_qemu() {
    require_privileges();
    for tool in ["qemu-system-x86_64", "qemu-img", "losetup", "ip", "cc"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} not found: `cargo xtask setup` installs QEMU (qemu-system-x86, qemu-utils)");
    }
}

fn scrape(d: &Daemon) -> (String, Vec<Sample>) {
    let text = d.get("/metrics");
    let samples = parse(&text);
    (text, samples)
}

fn net_stats(tap: &str) -> Vec<u64> {
    NET_STATISTICS
        .iter()
        .map(|s| {
            let p = format!("/sys/class/net/{tap}/statistics/{s}");
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")).trim().parse().expect("number")
        })
        .collect()
}

/// Bring a tap up (without IPv6, so the kernel sends nothing of its own) and send raw frames
/// into it; QEMU reads what its paused NIC can take, so the tap's counters move.
fn send_frames(tap: &str, n: usize) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1");
    let ok = std::process::Command::new("ip").args(["link", "set", "dev", tap, "up"]).status().expect("ip");
    assert!(ok.success(), "ip link set {tap} up");
    let name = std::ffi::CString::new(tap).expect("name");
    // SAFETY: plain socket calls on a fresh fd with a valid sockaddr_ll.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].fill(0xff);
        // Broadcast, a local MAC, the local experimental ethertype 0x88b5, padding.
        let mut frame = vec![0xffu8; 6];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
        frame.resize(64, 0x5a);
        for _ in 0..n {
            let r = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, frame.len() as isize, "sendto {tap}: {}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
}

/// The lines of the NIC, disk and balloon families, for comparing two scrapes.
fn device_lines(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| {
            ["pve_kvm_nic_", "pve_kvm_disk_", "pve_kvm_balloon_", "pve_kvm_guest_memory"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(String::from)
        .collect()
}

#[track_caller]
fn assert_labels(s: &Sample, want: &[(&str, &str)]) {
    for (k, v) in want {
        assert_eq!(s.label(k), Some(*v), "{k} of {s:?}");
    }
}

/// Every NIC (with tap counters) and every disk (info, size, I/O counters) of a real QEMU,
/// over QMP (`--qm-mode auto` with the socket present).
#[test]
fn qmp_reports_every_nic_and_disk_of_a_real_qemu() {
    require_qemu();
    let root = host_root(&[930]);
    link_own_path(root.path());
    let lp = Loop::new(root.path(), &root.path().join("lvm.img"), 32 << 20);
    let vm = Qemu::start(root.path(), 930, &VmSpec { block_device: Some(lp.dev.clone()), ..VmSpec::default() });
    // Known I/O through scsi0's own BlockBackend (qemu-io's aio commands are accounted like
    // a guest's requests), and frames into the first tap.
    vm.hmp(r#"qemu-io drive-scsi0 "aio_read 0 4k""#);
    vm.hmp(r#"qemu-io drive-scsi0 "aio_write -P 0x5a 64k 8k""#);
    vm.hmp(r#"qemu-io drive-scsi0 "aio_flush""#);
    send_frames("tap930i0", 3);

    let daemon = Daemon::start(root.path(), &["--ebpf", "off", "--collector.ppe"]);
    let before: Vec<Vec<u64>> = ["tap930i0", "tap930i1"].iter().map(|t| net_stats(t)).collect();
    let (text, m) = scrape(&daemon);
    let after: Vec<Vec<u64>> = ["tap930i0", "tap930i1"].iter().map(|t| net_stats(t)).collect();
    for c in ["qm", "nic", "disk", "kvm"] {
        assert_eq!(value(&m, "pve_exporter_collector_success", &[("collector", c)]), Some(1.0), "{c}\n{text}");
    }

    // NICs: two taps (one with two queues) and a user-mode NIC.
    let id = [("id", "930")];
    let nics = find(&m, "pve_kvm_nic_info", &id);
    assert_eq!(nics.len(), 3, "{text}");
    let lower = |s: String| s.to_lowercase();
    for (s, (netdev, ifname, queues, ty, model, n)) in nics.iter().zip([
        ("net0", "tap930i0", "1", "tap", "virtio-net-pci", 0),
        ("net1", "tap930i1", "2", "tap", "virtio-net-pci", 1),
        ("net2", "", "1", "user", "e1000", 2),
    ]) {
        let macaddr = lower(mac(930, n));
        assert_labels(
            s,
            &[
                ("netdev", netdev),
                ("ifname", ifname),
                ("queues", queues),
                ("type", ty),
                ("model", model),
                ("macaddr", &macaddr),
            ],
        );
    }
    let queues: Vec<(&str, f64)> =
        find(&m, "pve_kvm_nic_queues", &id).iter().map(|s| (s.label("ifname").unwrap_or(""), s.value)).collect();
    assert_eq!(queues, [("tap930i0", 1.0), ("tap930i1", 2.0)]);
    // Every statistics file of both taps, as sysfs has it.
    for (t, tap) in ["tap930i0", "tap930i1"].iter().enumerate() {
        for (i, stat) in NET_STATISTICS.iter().enumerate() {
            let name = format!("pve_kvm_nic_{stat}_total");
            let v = value(&m, &name, &[("id", "930"), ("ifname", tap)]).unwrap_or_else(|| panic!("{name} {tap}"));
            assert!(before[t][i] as f64 <= v && v <= after[t][i] as f64, "{name} {tap}: {v}");
        }
    }
    assert!(value(&m, "pve_kvm_nic_tx_packets_total", &[("ifname", "tap930i0")]).unwrap_or(0.0) >= 1.0);

    // Disks: every drive with a medium (not the empty CD-ROM ide2); QEMU lists the
    // `-blockdev` drive after those with a BlockBackend name.
    let disks = find(&m, "pve_kvm_disk_info", &id);
    let names: Vec<&str> = disks.iter().map(|s| s.label("disk_name").unwrap_or("")).collect();
    assert_eq!(names, ["scsi0", "virtio0", "ide0", "virtio1", "scsi1"], "{text}");
    let images = root.path().join("var/lib/vz/images/930");
    let img = |f: &str| images.join(f).to_string_lossy().into_owned();
    let loop_name = lp.dev.trim_start_matches("/dev/");
    let iso = root.path().join("var/lib/vz/template/iso/install.iso").to_string_lossy().into_owned();
    let want: [&[(&str, &str)]; 5] = [
        &[
            ("disk_path", &img("vm-930-disk-0.qcow2")),
            ("disk_type", "qcow2"),
            ("vol_name", "vm-930-disk-0"),
            ("attached_to", "scsi0"),
            ("cache_mode", "writeback, direct"),
            ("detect_zeroes", "unmap"),
            ("read_only", ""),
            ("device", ""),
        ],
        &[
            ("disk_path", &img("vm-930-disk-1.raw")),
            ("disk_type", "raw"),
            ("vol_name", "vm-930-disk-1"),
            ("attached_to", "virtio0"),
            ("cache_mode", "writeback"),
            ("detect_zeroes", "on"),
        ],
        &[
            ("disk_path", &iso),
            ("disk_type", "raw"),
            ("vol_name", "install"),
            ("read_only", "true"),
            ("attached_to", "ide0"),
        ],
        &[("disk_path", &lp.dev), ("disk_type", "raw"), ("device", loop_name), ("cache_mode", "writeback, direct")],
        // PVE 9: a -blockdev throttle node over qcow2, no #block id.
        &[
            ("disk_path", &img("vm-930-disk-2.qcow2")),
            ("disk_type", "qcow2"),
            ("block_id", ""),
            ("attached_to", "scsi1"),
        ],
    ];
    for (s, w) in disks.iter().zip(want) {
        assert_labels(s, w);
    }
    for s in disks.iter().filter(|s| s.label("disk_name") != Some("scsi1")) {
        assert!(s.label("block_id").is_some_and(|b| b.parse::<u64>().is_ok()), "{s:?}");
    }
    for (disk, size) in
        [("scsi0", GIB), ("virtio0", 64.0 * MIB), ("scsi1", 2.0 * GIB), ("ide0", 4.0 * MIB), ("virtio1", 32.0 * MIB)]
    {
        assert_eq!(value(&m, "pve_kvm_disk_size_bytes", &[("id", "930"), ("disk_name", disk)]), Some(size), "{disk}");
    }
    let io = |m: &[Sample], fam: &str, disk: &str| {
        value(m, &format!("pve_kvm_disk_{fam}_total"), &[("id", "930"), ("disk_name", disk)])
            .unwrap_or_else(|| panic!("{fam} of {disk}"))
    };
    assert_eq!(io(&m, "read_operations", "scsi0"), 1.0);
    assert_eq!(io(&m, "read_bytes", "scsi0"), 4096.0);
    assert_eq!(io(&m, "write_operations", "scsi0"), 1.0);
    assert_eq!(io(&m, "write_bytes", "scsi0"), 8192.0);
    assert!(io(&m, "read_time_seconds", "scsi0") > 0.0 && io(&m, "write_time_seconds", "scsi0") > 0.0);
    for disk in ["virtio0", "scsi1", "ide0", "virtio1"] {
        assert_eq!(io(&m, "read_operations", disk), 0.0, "{disk}");
        assert_eq!(io(&m, "flush_operations", disk), 0.0, "{disk}");
    }
    // The counters move with the next requests.
    vm.hmp(r#"qemu-io drive-scsi0 "aio_read 1M 16k""#);
    vm.hmp(r#"qemu-io drive-virtio0 "aio_write 0 4k""#);
    vm.hmp(r#"qemu-io drive-virtio0 "aio_flush""#);
    let (_, m) = scrape(&daemon);
    assert_eq!(io(&m, "read_operations", "scsi0"), 2.0);
    assert_eq!(io(&m, "read_bytes", "scsi0"), 4096.0 + 16384.0);
    assert_eq!((io(&m, "write_operations", "virtio0"), io(&m, "write_bytes", "virtio0")), (1.0, 4096.0));

    // QEMU's run state, from query-status on each scrape: -S is prelaunch; `cont` runs it,
    // `stop` pauses it. prometheus-pve-exporter's families see a running guest throughout.
    let state = |m: &[Sample]| {
        let s = find(m, "pve_guest_state", &[("id", "930")]);
        assert_eq!(s.len(), 1, "one state per guest");
        s[0].label("state").unwrap_or_default().to_string()
    };
    assert_eq!(state(&m), "prelaunch");
    vm.hmp("cont");
    let (_, m) = scrape(&daemon);
    assert_eq!(state(&m), "running");
    vm.hmp("stop");
    let (_, m) = scrape(&daemon);
    assert_eq!(state(&m), "paused");
    assert_eq!(value(&m, "pve_up", &[("id", "qemu/930")]), Some(1.0));
    assert_eq!(value(&m, "pve_guest_up", &[("id", "930"), ("type", "qemu")]), Some(1.0));
    // The VM's block statistics are PPE's disk read/write figures (the firmware that `cont`
    // started may have read its boot disk since).
    let read = value(&m, "pve_disk_read_bytes_total", &[("id", "qemu/930")]).unwrap_or(0.0);
    assert!(read >= 4096.0 + 16384.0, "{read}");
    assert_eq!(value(&m, "pve_disk_written_bytes_total", &[("id", "qemu/930")]), Some(8192.0 + 4096.0));

    promtool_accepts(&text);
}

/// The balloon of real QEMUs in both monitor modes: PVE's `balloon0` device gives the VM's
/// size (`actual`, the configured 64 MiB: no driver in a `-S` guest inflates it), and no guest
/// statistics (QEMU answers -1 and `last-update` 0 until a driver reports: no series, not
/// zeros); a VM without a balloon device has no balloon series and costs no collector error.
#[test]
fn the_balloon_of_real_qemus_in_both_modes() {
    require_qemu();
    let root = host_root(&[933, 934]);
    link_own_path(root.path());
    let _with = Qemu::start(root.path(), 933, &VmSpec::default());
    let _without = Qemu::start(root.path(), 934, &VmSpec { no_balloon: true, ..VmSpec::default() });
    let log = root.path().join("qm.log");
    let qm = qm_wrapper(root.path(), &log, &[]);
    let qm = qm.to_str().expect("path");
    for args in [&["--qm-mode", "qmp"][..], &["--qm-mode", "qm", "--qm-path", qm][..]] {
        let mut all = vec!["--ebpf", "off", "--collector.ppe"];
        all.extend_from_slice(args);
        let daemon = Daemon::start(root.path(), &all);
        let (text, m) = scrape(&daemon);
        for c in ["qm", "balloon", "ppe"] {
            assert_eq!(
                value(&m, "pve_exporter_collector_success", &[("collector", c)]),
                Some(1.0),
                "{args:?} {c}\n{text}"
            );
        }
        assert_eq!(value(&m, "pve_kvm_balloon_actual_bytes", &[("id", "933")]), Some(64.0 * MIB), "{args:?}\n{text}");
        assert_eq!(find(&m, "pve_kvm_balloon_actual_bytes", &[("id", "934")]).len(), 0, "{args:?}");
        for fam in ["pve_kvm_guest_memory_bytes", "pve_kvm_guest_memory_used_bytes", "pve_kvm_guest_page_faults_total"]
        {
            assert_eq!(find(&m, fam, &[]).len(), 0, "{args:?}: {fam} without a guest report");
        }
        // PPE's memory usage without a guest report: what the host sees of the process.
        assert!(value(&m, "pve_memory_usage_bytes", &[("id", "qemu/933")]).is_some_and(|v| v > 0.0), "{text}");
        promtool_accepts(&text);
    }
    let asked = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(asked.contains("933 info balloon") && asked.contains("934 info balloon"), "{asked}");
}

/// UEFI VMs as PVE 8 (`-drive if=pflash`) and PVE 9 (`-blockdev` nodes for `-machine
/// pflash0=,pflash1=`) start them, each with a PVE 9 `-blockdev` drive whose protocol node has
/// no file name (`null-co`): the firmware's code ROM and the EFI vars disk are no guest disks
/// (no series), the file-less drive is one (named by its driver), in QMP and qm modes alike,
/// and every data disk keeps its series (in qm mode the unnamed blockstats rows match their
/// drives).
#[test]
fn firmware_and_efi_vars_are_not_guest_disks_and_file_less_drives_are() {
    require_qemu();
    let root = host_root(&[936, 937]);
    link_own_path(root.path());
    let spec = |pve| VmSpec { uefi: Some(pve), null_disk: true, ..VmSpec::default() };
    let pve8 = Qemu::start(root.path(), 936, &spec(Pve::V8));
    let _pve9 = Qemu::start(root.path(), 937, &spec(Pve::V9));
    // A read on the device's own BlockBackend (`-d`: the drive has no name of its own).
    pve8.hmp(r#"qemu-io -d scsi2 "aio_read 0 4k""#);
    let log = root.path().join("qm.log");
    let qm = qm_wrapper(root.path(), &log, &[]);
    let qm = qm.to_str().expect("path");
    let mut by_mode = Vec::new();
    for args in [&["--qm-mode", "qmp"][..], &["--qm-mode", "qm", "--qm-path", qm][..]] {
        let mut all = vec!["--ebpf", "off"];
        all.extend_from_slice(args);
        let daemon = Daemon::start(root.path(), &all);
        let (text, m) = scrape(&daemon);
        for c in ["qm", "disk"] {
            assert_eq!(
                value(&m, "pve_exporter_collector_success", &[("collector", c)]),
                Some(1.0),
                "{args:?} {c}\n{text}"
            );
        }
        for vmid in ["936", "937"] {
            let names: BTreeSet<&str> =
                find(&m, "pve_kvm_disk_info", &[("id", vmid)]).iter().filter_map(|s| s.label("disk_name")).collect();
            assert_eq!(
                names,
                BTreeSet::from(["scsi0", "virtio0", "ide0", "scsi1", "scsi2"]),
                "{args:?} VM {vmid}\n{text}"
            );
            let null = find(&m, "pve_kvm_disk_info", &[("id", vmid), ("disk_name", "scsi2")]);
            assert_eq!(null[0].label("disk_path"), Some("null-co"), "{args:?}");
            let io: BTreeSet<&str> = find(&m, "pve_kvm_disk_read_operations_total", &[("id", vmid)])
                .iter()
                .filter_map(|s| s.label("disk_name"))
                .collect();
            assert_eq!(io, names, "{args:?} VM {vmid}: I/O of every data disk, none of the firmware");
        }
        assert!(!text.contains("pflash") && !text.contains("efidisk"), "{args:?}\n{text}");
        assert_eq!(
            value(&m, "pve_kvm_disk_read_operations_total", &[("id", "936"), ("disk_name", "scsi2")]),
            Some(1.0),
            "{args:?}: the file-less drive's own counters"
        );
        // In qm mode sizes come from the host, which has no file to measure for `null-co`.
        let mut lines = device_lines(&text);
        lines.retain(|l| !(l.starts_with("pve_kvm_disk_size_bytes") && l.contains("\"scsi2\"")));
        by_mode.push(lines);
    }
    let (a, b) = (&by_mode[0], &by_mode[1]);
    assert!(a == b, "QMP and qm modes differ:\nonly qmp: {:#?}\nonly qm: {:#?}", a.difference(b), b.difference(a));
}

fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup`)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qm monitor` on a PTY gives the same series as QMP (sizes measured on the host instead of
/// asked from QEMU; the `-blockdev` drive's counters matched by position), and its topology
/// is cached until a disk's /dev path disappears or the VM restarts.
/// What a warm scrape asks VM 931 through `qm monitor`.
const EVERY_SCRAPE: [&str; 4] = [
    "931 info blockstats",
    "931 info status",
    "931 info balloon",
    "931 qom-get /machine/peripheral/balloon0 guest-stats",
];

#[test]
fn qm_through_a_pty_reports_what_qmp_reports_and_caches_the_topology() {
    require_qemu();
    let root = host_root(&[931]);
    link_own_path(root.path());
    let lp = Loop::new(root.path(), &root.path().join("lvm.img"), 32 << 20);
    let spec = VmSpec { block_device: Some(lp.dev.clone()), ..VmSpec::default() };
    let vm = Qemu::start(root.path(), 931, &spec);
    vm.hmp(r#"qemu-io drive-scsi0 "aio_write 0 12k""#);
    vm.hmp(r#"qemu-io drive-scsi0 "aio_flush""#);
    let log = root.path().join("qm.log");
    let qm = qm_wrapper(root.path(), &log, &[]);
    let qm = qm.to_str().expect("path");
    let via_qmp = Daemon::start(root.path(), &["--ebpf", "off", "--qm-mode", "qmp"]);
    let via_qm = Daemon::start(root.path(), &["--ebpf", "off", "--qm-mode", "qm", "--qm-path", qm]);

    let (a, _) = scrape(&via_qmp);
    let (b, bm) = scrape(&via_qm);
    assert_eq!(value(&bm, "pve_exporter_collector_success", &[("collector", "qm")]), Some(1.0), "{b}");
    assert_eq!(value(&bm, "pve_exporter_collector_success", &[("collector", "disk")]), Some(1.0), "{b}");
    let (a, b) = (device_lines(&a), device_lines(&b));
    assert!(a.len() > 60, "{a:#?}");
    assert_eq!(a, b, "qmp and qm modes differ:\nonly qmp: {:#?}\nonly qm: {:#?}", a.difference(&b), b.difference(&a));
    assert_eq!(value(&bm, "pve_kvm_disk_write_bytes_total", &[("disk_name", "scsi0")]), Some(12288.0));
    assert_eq!(value(&bm, "pve_kvm_disk_write_operations_total", &[("disk_name", "scsi1")]), Some(0.0));

    let log_lines =
        || -> Vec<String> { std::fs::read_to_string(&log).unwrap_or_default().lines().map(String::from).collect() };
    let mut seen = 0;
    let mut new_commands = || {
        let l = log_lines();
        let new = l[seen..].to_vec();
        seen = l.len();
        new
    };
    // The start-up collection, the warm-up scrape of Daemon::start and the scrape above: the
    // topology once, then the I/O counters, the run state and the balloon on every collection.
    let first = new_commands();
    assert_eq!(first[..2], ["931 info network", "931 info block"], "{first:?}");
    assert!(first.len() >= 6 && first[2..].chunks(4).all(|c| c == EVERY_SCRAPE), "{first:?}");
    // `info status` of a QEMU started with -S: prelaunch, as query-status says.
    assert_eq!(value(&bm, "pve_guest_state", &[("id", "931"), ("state", "prelaunch")]), Some(1.0), "{b:?}");
    let (_, m) = scrape(&via_qm);
    assert_eq!(new_commands(), EVERY_SCRAPE, "topology from the cache");
    assert_eq!(value(&m, "pve_guest_up", &[("id", "931"), ("type", "qemu")]), Some(1.0));

    // The disk on the block device "moved": its /dev path no longer resolves below the root.
    let link = root.path().join(lp.dev.trim_start_matches('/'));
    std::fs::remove_file(&link).expect("remove link");
    scrape(&via_qm);
    assert_eq!(new_commands()[..2], ["931 info block", "931 info blockstats"]);
    std::os::unix::fs::symlink(&lp.dev, &link).expect("restore link");
    scrape(&via_qm);
    assert_eq!(new_commands(), EVERY_SCRAPE);

    // A restarted VM has a new pid: everything is read again.
    drop(vm);
    let vm = Qemu::start(root.path(), 931, &spec);
    let (_, m) = scrape(&via_qm);
    assert_eq!(new_commands()[..3], ["931 info network", "931 info block", "931 info blockstats"]);
    assert_eq!(value(&m, "pve_kvm_disk_write_bytes_total", &[("disk_name", "scsi0")]), Some(0.0), "a new process");
    let pid = vm.pid.to_string();
    assert!(value(&m, "pve_kvm_info", &[("id", "931"), ("pid", &pid)]).is_some());
}

/// A Unix socket that accepts connections and never says anything.
struct SilentSocket {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl SilentSocket {
    fn bind(path: &Path) -> SilentSocket {
        let listener = UnixListener::bind(path).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, accepted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (s, a) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.set_nonblocking(false);
                        // Read until the client gives up; never answer.
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 4096];
                            while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SilentSocket { stop, accepted }
    }
}

impl Drop for SilentSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A QMP socket that accepts and never answers and a `qm` that hangs cost only their VMs'
/// NIC and disk series, within the time budget; 200 scrapes against them leave no zombie,
/// no process and no file descriptor behind.
#[test]
fn hung_monitors_cost_only_their_vms_and_leak_nothing() {
    require_qemu();
    let root = host_root(&[940, 941, 942]);
    link_own_path(root.path());
    let healthy = Qemu::start(root.path(), 940, &VmSpec::default());
    // 941: a VM process whose QMP socket is silent (through qm: a qm that hangs on it);
    // 942: no socket (QMP: refused at once), and a qm double that hangs on the first command.
    let _g941 = Guest::start(941, 1, 1, root.path());
    let silent = SilentSocket::bind(&root.path().join("var/run/qemu-server/941.qmp"));
    let _g942 = Guest::start(942, 1, 1, root.path());
    let log = root.path().join("qm.log");
    let qm = qm_wrapper(root.path(), &log, &[942]);
    let qm = qm.to_str().expect("path");
    let daemons = |step: &str| {
        let args = ["--ebpf", "off", "--qm-terminal-timeout", step];
        let via_qmp = Daemon::start(root.path(), &[&args[..], &["--qm-mode", "qmp"]].concat());
        let via_qm = Daemon::start(root.path(), &[&args[..], &["--qm-mode", "qm", "--qm-path", qm]].concat());
        [via_qmp, via_qm]
    };

    for (daemon, mode) in daemons("500ms").iter().zip(["qmp", "qm"]) {
        let (text, m) = scrape(daemon);
        assert!(!find(&m, "pve_kvm_nic_info", &[("id", "940")]).is_empty(), "{mode}\n{text}");
        assert_eq!(find(&m, "pve_kvm_disk_info", &[("id", "940")]).len(), 4, "{mode}\n{text}");
        for id in ["941", "942"] {
            assert!(value(&m, "pve_kvm_info", &[("id", id)]).is_some(), "{mode}: VM {id} is still reported\n{text}");
            let fams = ["pve_kvm_nic_info", "pve_kvm_disk_info", "pve_kvm_disk_read_bytes_total"];
            assert!(fams.iter().all(|f| find(&m, f, &[("id", id)]).is_empty()), "{mode}: VM {id}\n{text}");
        }
        for (c, ok) in [("qm", 0.0), ("nic", 1.0), ("disk", 1.0), ("kvm", 1.0)] {
            let v = value(&m, "pve_exporter_collector_success", &[("collector", c)]);
            assert_eq!(v, Some(ok), "{mode}: {c}\n{text}");
        }
        let d = value(&m, "pve_scrape_duration_seconds", &[]).expect("duration");
        assert!(d < 3.0, "{mode}: the scrape took {d}s; the monitor budget is 0.5 s + 0.25 s");
    }
    assert!(silent.accepted.load(Ordering::Relaxed) >= 1);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("941 info network") && logged.contains("942 info network"), "{logged}");
    drop(healthy);

    // 200 scrapes with a short step limit against the hung monitors, over QMP and qm.
    let daemons = daemons("20ms");
    let pids: Vec<u32> = daemons.iter().map(|d| d.proc.0.id()).collect();
    for _ in 0..10 {
        daemons.iter().for_each(|d| drop(scrape(d)));
    }
    let settle = || {
        // The reaper kills a deferred qm session one step after it is handed over.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|p| !children(*p).is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    settle();
    let fds: Vec<usize> = pids.iter().map(|p| fd_count(*p)).collect();
    let threads: Vec<usize> = pids.iter().map(|p| thread_count(*p)).collect();
    let (accepted, spawned) =
        (silent.accepted.load(Ordering::Relaxed), std::fs::read_to_string(&log).unwrap_or_default().lines().count());
    let loop_started = Instant::now();
    for i in 0..200 {
        for d in &daemons {
            let (text, m) = scrape(d);
            assert_eq!(value(&m, "pve_exporter_collector_success", &[("collector", "qm")]), Some(0.0), "{i}: {text}");
            let dur = value(&m, "pve_scrape_duration_seconds", &[]).expect("duration");
            assert!(dur < 2.0, "scrape {i} took {dur}s");
            for id in ["941", "942"] {
                assert!(value(&m, "pve_kvm_info", &[("id", id)]).is_some(), "{i}: {text}");
            }
        }
    }
    settle();
    for (k, pid) in pids.iter().enumerate() {
        let left = children(*pid);
        assert!(left.is_empty(), "processes left behind by the daemon (pid, state): {left:?}");
        let fds_after = fd_count(*pid);
        assert!(fds_after <= fds[k] + 3, "file descriptors: {} before 200 scrapes, {fds_after} after", fds[k]);
        // Idle threads of the runtime's blocking pool come and go; 200 leaked ones would show.
        let threads_after = thread_count(*pid);
        assert!(threads_after <= threads[k] + 20, "threads: {} before 200 scrapes, {threads_after} after", threads[k]);
    }
    // Stuck monitors are not asked on every scrape: after a timeout a VM is tried again only
    // at growing intervals (2 s, doubling), in the background. 200 scrapes used to make 200
    // connections to the silent socket and start 200 hung qm sessions.
    let secs = loop_started.elapsed().as_secs_f64();
    let tries = silent.accepted.load(Ordering::Relaxed) - accepted;
    let spawned = std::fs::read_to_string(&log).unwrap_or_default().lines().count() - spawned;
    // Per daemon and stuck VM at most one try per 2 s, and one more in flight.
    let bound = 2 * 2 * ((secs / 2.0) as usize + 2);
    assert!(tries <= bound, "{tries} connections to the silent socket in {secs:.1} s of scrapes");
    assert!(spawned <= bound, "{spawned} qm sessions in {secs:.1} s of scrapes");
}

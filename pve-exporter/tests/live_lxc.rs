//! Containers and stopped guests through the real daemon, on the real kernel: a container
//! laid out as PVE's LXC lays one out (`pve-test-container`: real processes in real cgroups
//! `lxc/<ctid>/ns` of every mounted hierarchy, an init that is pid 1 of its namespace, a tmpfs
//! root of known size, a real veth pair), a VM configured and not running, and a guest of
//! another node in `.vmlist`. Values the kernel gives exactly are asserted exactly: the
//! cgroup's memory, the veth counters after known frames, statvfs of the tmpfs. Needs root.

mod common;

use std::path::PathBuf;

use common::{
    Ct, Daemon, collector_success as success, host_root, promtool_accepts, require_privileges, sample, send_frames,
    write_below as write,
};
use pve_exporter::{host::HostRoot, sources::kernel::cgroup::Hierarchies};

const MIB: f64 = (1u64 << 20) as f64;

/// The memory the kernel charges to `lxc/<ctid>`, from wherever the memory controller is.
fn charged_memory(h: &Hierarchies, ctid: u32) -> u64 {
    let path: PathBuf = if h.v2_controllers.iter().any(|c| c == "memory") {
        h.v2.as_ref().expect("cgroup2").join(format!("lxc/{ctid}/memory.current"))
    } else {
        h.v1.get("memory").expect("memory controller").join(format!("lxc/{ctid}/memory.usage_in_bytes"))
    };
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().parse().expect("number")
}

/// Freeze or thaw `lxc/<ctid>` as `lxc-freeze` does (cgroup2 `cgroup.freeze`, else v1 freezer).
fn freeze(h: &Hierarchies, ctid: u32, on: bool) {
    let (path, text) = match h.v1.get("freezer") {
        Some(m) => (m.join(format!("lxc/{ctid}/freezer.state")), if on { "FROZEN" } else { "THAWED" }),
        None => (h.v2.as_ref().expect("cgroup2").join(format!("lxc/{ctid}/cgroup.freeze")), if on { "1" } else { "0" }),
    };
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Freezing takes until every task is stopped (v1 says FREEZING meanwhile, v2's
    // cgroup.events says frozen 0): the test asks the exporter only once the kernel says so,
    // as a PVE node's `pct suspend` waits for it too.
    let done = || match h.v1.get("freezer") {
        Some(_) => std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == text),
        None => std::fs::read_to_string(path.with_file_name("cgroup.events"))
            .is_ok_and(|t| t.lines().any(|l| l == format!("frozen {}", u8::from(on)))),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{} did not reach {text} within 30 s", path.display());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// One real OOM kill charged to `lxc/<ctid>`: a process that grows without end (`tail` keeps
/// the line /dev/zero never ends) in the container's memory cgroup, over its limit. Where
/// memory is on cgroup v1 the process goes into `lxc/<ctid>` itself, as v1 counts a kill
/// only in the victim's own cgroup; on cgroup2 into `lxc/<ctid>/ns` (a kill counts up the
/// tree, and `lxc/<ctid>` may hold no process of its own).
fn oom_kill_in(h: &Hierarchies, ctid: u32) {
    let dir = match h.v1.get("memory") {
        Some(m) if !h.v2_controllers.iter().any(|c| c == "memory") => m.join(format!("lxc/{ctid}")),
        _ => h.v2.as_ref().expect("cgroup2").join(format!("lxc/{ctid}/ns")),
    };
    let procs = dir.join("cgroup.procs");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec tail /dev/zero", procs.display()))
        .status()
        .expect("sh");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "killed by the OOM killer: {status:?}");
}

#[test]
fn containers_and_stopped_guests_from_real_cgroups_veths_and_mounts() {
    require_privileges();
    let (ctid, stopped) = (960u32, 961u32);
    let root = host_root(&[ctid, stopped]);
    let r = root.path();
    std::fs::remove_file(r.join(format!("etc/pve/qemu-server/{ctid}.conf"))).expect("rm");
    write(
        r,
        &format!("etc/pve/lxc/{ctid}.conf"),
        &format!(
            "arch: amd64\ncores: 1\nhostname: web-ct\nmemory: 256\nswap: 128\nostype: debian\nunprivileged: 1\n\
             net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:09:60,ip=dhcp,type=veth\n\
             rootfs: local:{ctid}/vm-{ctid}-disk-0.raw,size=48M\ntags: web\n"
        ),
    );
    write(
        r,
        &format!("etc/pve/qemu-server/{stopped}.conf"),
        &format!(
            "name: off-vm\nmemory: 1024\nsockets: 1\ncores: 2\nonboot: 1\nlock: backup\nboot: order=scsi0\n\
             scsi0: local-lvm:vm-{stopped}-disk-0,size=10G\nparent: before\n\n[before]\nsnaptime: 1700000000\n"
        ),
    );
    write(
        r,
        "etc/pve/.vmlist",
        &format!(
            "{{\n\"version\": 5,\n\"ids\": {{\n\"{ctid}\": {{ \"node\": \"testnode\", \"type\": \"lxc\", \"version\": 1 }},\n\
             \"{stopped}\": {{ \"node\": \"testnode\", \"type\": \"qemu\", \"version\": 2 }},\n\
             \"962\": {{ \"node\": \"othernode\", \"type\": \"qemu\", \"version\": 3 }}}}\n\n}}\n"
        ),
    );
    write(r, "etc/pve/.members", "{\n\"nodename\": \"testnode\",\n\"version\": 0\n}\n");
    write(
        r,
        "etc/pve/ha/manager_status",
        &format!(
            r#"{{"master_node":"testnode","node_status":{{"testnode":"online"}},"service_status":{{"ct:{ctid}":{{"node":"testnode","state":"started"}}}}}}"#
        ),
    );
    let h = Hierarchies::read(&HostRoot::new("/")).expect("cgroup mounts");
    let file_bytes = 300_000u64;
    let mut ct = Ct::start(
        ctid,
        &["--veth", "--rootfs-mib", "48", "--memory-mib", "256", "--touch-mib", "16", "--file-bytes", "300000"],
    );
    common::wait_until_up(&format!("veth{ctid}i0"));
    common::wait_until_up(&format!("veth{ctid}p0"));
    // Known frames from the container's side: the host end receives them.
    send_frames(&format!("veth{ctid}p0"), 5, 100);

    let daemon = Daemon::start(r, &["--ebpf", "off", "--collector.ppe"]);
    let before = charged_memory(&h, ctid);
    let t = daemon.get("/metrics");
    let after = charged_memory(&h, ctid);
    for c in ["guest", "lxc", "ppe"] {
        assert_eq!(success(&t, c), Some(1.0), "{c}\n{t}");
    }
    let id = ctid.to_string();
    let one = [("id", id.as_str())];
    let pid = ct.pid.to_string();
    assert_eq!(
        sample(&t, "pve_lxc_info", &[("id", &id), ("pid", &pid), ("name", "web-ct"), ("unprivileged", "1")]),
        Some(1.0),
        "{t}"
    );
    // Memory: what the kernel charges, exactly (an idle init: the same before and after).
    let current = sample(&t, "pve_lxc_memory_bytes", &[("id", &id), ("type", "current")]).expect("current");
    assert!((before.min(after) as f64..=before.max(after) as f64).contains(&current), "{current} vs {before}..{after}");
    assert!(sample(&t, "pve_lxc_memory_bytes", &[("id", &id), ("type", "anon")]).expect("anon") >= 16.0 * MIB);
    assert_eq!(sample(&t, "pve_lxc_memory_limit_bytes", &one), Some(256.0 * MIB));
    let used = sample(&t, "pve_lxc_memory_used_bytes", &one).expect("used");
    assert_eq!(sample(&t, "pve_memory_usage_bytes", &[("id", &format!("lxc/{ctid}"))]), Some(used));
    assert_eq!(sample(&t, "pve_lxc_processes", &one), Some(1.0));
    assert!(sample(&t, "pve_lxc_cpu_seconds_total", &[("id", &id), ("mode", "system")]).is_some());
    // The veth: exactly the test's frames.
    let nic = [("id", id.as_str()), ("ifname", &format!("veth{ctid}i0")), ("net", "net0")];
    assert_eq!(sample(&t, "pve_lxc_nic_rx_bytes_total", &nic), Some(500.0), "{t}");
    assert_eq!(sample(&t, "pve_lxc_nic_rx_packets_total", &nic), Some(5.0));
    assert_eq!(sample(&t, "pve_lxc_nic_tx_packets_total", &nic), Some(0.0));
    assert_eq!(sample(&t, "pve_network_transmit_bytes_total", &[("id", &format!("lxc/{ctid}"))]), Some(500.0));
    // The root file system: statvfs of the container's tmpfs, 48 MiB, the file's pages used.
    let fs = [("id", id.as_str()), ("disk", "rootfs"), ("mountpoint", "/")];
    assert_eq!(sample(&t, "pve_lxc_fs_size_bytes", &fs), Some(48.0 * MIB), "{t}");
    let pages = file_bytes.div_ceil(4096) * 4096;
    assert_eq!(sample(&t, "pve_lxc_fs_used_bytes", &fs), Some(pages as f64));
    assert_eq!(sample(&t, "pve_disk_size_bytes", &[("id", &format!("lxc/{ctid}"))]), Some(48.0 * MIB));
    assert_eq!(sample(&t, "pve_disk_usage_bytes", &[("id", &format!("lxc/{ctid}"))]), Some(pages as f64));
    // Run state, HA and the configured figures.
    let lxc = [("id", id.as_str()), ("type", "lxc")];
    assert_eq!(sample(&t, "pve_guest_up", &lxc), Some(1.0));
    assert_eq!(sample(&t, "pve_guest_state", &[("id", &id), ("type", "lxc"), ("state", "running")]), Some(1.0));
    assert!(sample(&t, "pve_guest_uptime_seconds", &lxc).is_some());
    assert_eq!(sample(&t, "pve_guest_ha_state", &[("id", &id), ("state", "started")]), Some(1.0));
    assert_eq!(sample(&t, "pve_ha_state", &[("id", &format!("lxc/{ctid}")), ("state", "started")]), Some(1.0));
    assert_eq!(sample(&t, "pve_guest_swap_bytes", &lxc), Some(128.0 * MIB));
    assert_eq!(sample(&t, "pve_guest_info", &[("id", &format!("lxc/{ctid}")), ("node", "testnode")]), Some(1.0));

    // The VM that is configured and not running: its config's series, no process series.
    let sid = stopped.to_string();
    let vm = [("id", sid.as_str()), ("type", "qemu")];
    assert_eq!(sample(&t, "pve_guest_up", &vm), Some(0.0));
    assert_eq!(sample(&t, "pve_guest_state", &[("id", &sid), ("state", "stopped")]), Some(1.0));
    assert_eq!(sample(&t, "pve_guest_lock", &[("id", &sid), ("lock", "backup")]), Some(1.0));
    assert_eq!(sample(&t, "pve_guest_snapshots", &vm), Some(1.0));
    assert_eq!(sample(&t, "pve_guest_snapshot_newest_timestamp_seconds", &vm), Some(1_700_000_000.0));
    assert_eq!(sample(&t, "pve_guest_cpus", &vm), Some(2.0));
    assert_eq!(sample(&t, "pve_guest_disk_size_bytes", &[("id", &sid), ("disk", "scsi0")]), Some(10.0 * 1024.0 * MIB));
    assert!(sample(&t, "pve_kvm_info", &[("id", &sid)]).is_none());
    let qid = format!("qemu/{stopped}");
    assert_eq!(sample(&t, "pve_up", &[("id", &qid)]), Some(0.0));
    assert_eq!(sample(&t, "pve_lock_state", &[("id", &qid), ("state", "backup")]), Some(1.0));
    assert_eq!(sample(&t, "pve_lock_state", &[("id", &qid), ("state", "migrate")]), Some(0.0));
    assert_eq!(sample(&t, "pve_onboot_status", &[("id", &qid), ("node", "testnode")]), Some(1.0));
    assert_eq!(sample(&t, "pve_disk_size_bytes", &[("id", &qid)]), Some(10.0 * 1024.0 * MIB));
    // The other node's guest is that node's exporter's.
    assert!(!t.contains("\"962\"") && !t.contains("qemu/962"), "{t}");
    promtool_accepts(&t);

    // Limits are what PVE writes at start and on `pct set`, which writes the config too: a
    // limit changed in the cgroup alone is read again only with the config (or after
    // LIMITS_MAX_AGE); with the config, at the next scrape.
    let limit_file = match h.v1.get("memory") {
        Some(m) if !h.v2_controllers.iter().any(|c| c == "memory") => {
            m.join(format!("lxc/{ctid}/memory.limit_in_bytes"))
        }
        _ => h.v2.as_ref().expect("cgroup2").join(format!("lxc/{ctid}/memory.max")),
    };
    std::fs::write(&limit_file, (320u64 << 20).to_string()).expect("raise the memory limit");
    let t = daemon.get("/metrics");
    assert_eq!(sample(&t, "pve_lxc_memory_limit_bytes", &one), Some(256.0 * MIB), "kept while the config is the same");
    let conf = std::fs::read_to_string(r.join(format!("etc/pve/lxc/{ctid}.conf"))).expect("config");
    write(r, &format!("etc/pve/lxc/{ctid}.conf"), &conf.replace("memory: 256", "memory: 320"));
    let t = daemon.get("/metrics");
    assert_eq!(sample(&t, "pve_lxc_memory_limit_bytes", &one), Some(320.0 * MIB), "read again with the new config");
    assert_eq!(success(&t, "lxc"), Some(1.0));

    // Frozen (lxc-freeze, a suspended container), then thawed.
    freeze(&h, ctid, true);
    let t = daemon.get("/metrics");
    freeze(&h, ctid, false);
    assert_eq!(sample(&t, "pve_guest_state", &[("id", &id), ("state", "frozen")]), Some(1.0), "{t}");
    let t = daemon.get("/metrics");
    assert_eq!(sample(&t, "pve_guest_state", &[("id", &id), ("state", "running")]), Some(1.0));

    // A real OOM kill in the container: counted at the next scrape, though the count was
    // taken as unchanged (not read) while the host's OOM kills (/proc/vmstat) stayed the same.
    let t = daemon.get("/metrics");
    assert_eq!(sample(&t, "pve_lxc_oom_kills_total", &one), Some(0.0), "{t}");
    oom_kill_in(&h, ctid);
    let t = daemon.get("/metrics");
    assert_eq!(sample(&t, "pve_lxc_oom_kills_total", &one), Some(1.0), "{t}");
    // CPU stall in the container (two busy processes on one CPU): its pressure total moves at
    // the next scrape, as the host's does.
    let cpu_some = [("id", id.as_str()), ("resource", "cpu"), ("kind", "some")];
    let before = sample(&t, "pve_lxc_pressure_stalled_seconds_total", &cpu_some).expect("cpu some");
    let procs = h.v2.as_ref().expect("cgroup2").join(format!("lxc/{ctid}/ns/cgroup.procs"));
    let busy: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("echo $$ > {} && exec taskset -c 0 timeout 0.5 yes", procs.display()))
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("sh")
        })
        .collect();
    for mut b in busy {
        b.wait().expect("wait");
    }
    let t = daemon.get("/metrics");
    let after = sample(&t, "pve_lxc_pressure_stalled_seconds_total", &cpu_some).expect("cpu some");
    assert!(after > before, "{after} after {before}");

    // The config edited in place (a new hostname) and edited back: each next scrape's info
    // lines say so (the lines kept between scrapes are written again when a config changes).
    let conf = r.join(format!("etc/pve/lxc/{ctid}.conf"));
    let original = std::fs::read_to_string(&conf).expect("config");
    for name in ["web-ct-renamed", "web-ct"] {
        std::fs::write(&conf, original.replace("hostname: web-ct", &format!("hostname: {name}"))).expect("config");
        let t = daemon.get("/metrics");
        assert_eq!(sample(&t, "pve_lxc_info", &[("id", &id), ("pid", &pid), ("name", name)]), Some(1.0), "{t}");
        assert_eq!(sample(&t, "pve_guest_config_info", &[("id", &id), ("name", name)]), Some(1.0), "{t}");
    }

    // Restarted between two scrapes (no scrape saw it stopped): the new init, not the one the
    // daemon kept (its pidfd polls readable; without one, the cgroup's list no longer has it).
    let old_pid = ct.pid;
    ct.stop(&h, ctid);
    ct = Ct::start(ctid, &["--rootfs-mib", "48", "--memory-mib", "256"]);
    assert_ne!(ct.pid, old_pid);
    let t = daemon.get("/metrics");
    assert_eq!(success(&t, "lxc"), Some(1.0), "{t}");
    let pid = ct.pid.to_string();
    assert_eq!(
        sample(&t, "pve_lxc_info", &[("id", &id), ("pid", &pid), ("name", "web-ct"), ("unprivileged", "1")]),
        Some(1.0),
        "{t}"
    );
    assert_eq!(sample(&t, "pve_guest_up", &lxc), Some(1.0));

    // Stopped: its cgroups are gone, its series go, nothing failed; its config's stay.
    ct.stop(&h, ctid);
    let t = daemon.get("/metrics");
    for c in ["guest", "lxc", "ppe"] {
        assert_eq!(success(&t, c), Some(1.0), "{c}\n{t}");
    }
    assert!(!t.contains(&format!("pve_lxc_info{{id=\"{ctid}\"")), "{t}");
    assert_eq!(sample(&t, "pve_guest_up", &lxc), Some(0.0));
    assert_eq!(sample(&t, "pve_up", &[("id", &format!("lxc/{ctid}"))]), Some(0.0));
    // A stopped container's disk: the rootfs size of its config, as pve-container says.
    assert_eq!(sample(&t, "pve_disk_size_bytes", &[("id", &format!("lxc/{ctid}"))]), Some(48.0 * MIB));
}

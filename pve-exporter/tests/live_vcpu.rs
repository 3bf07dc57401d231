//! Live tests of the vCPU schedstat families and the KVM debugfs collector: the real daemon
//! against real KVM guests on this machine. They need root and /dev/kvm (see
//! `common::require_privileges`).

mod common;

use common::{Daemon, Guest, host_root, require_privileges, sample, thread_schedstats};
use pve_exporter::sources::proc::process::vcpu_index;

/// Sum of `[run ns, wait ns, timeslices]` over the `CPU n/KVM` threads of `pid`, and their number.
fn vcpu_sum(pid: u32) -> (usize, [u64; 3]) {
    let vcpus: Vec<[u64; 3]> =
        thread_schedstats(pid).into_iter().filter(|(comm, _)| vcpu_index(comm).is_some()).map(|(_, s)| s).collect();
    let sum = vcpus.iter().fold([0; 3], |a, s| [a[0] + s[0], a[1] + s[1], a[2] + s[2]]);
    (vcpus.len(), sum)
}

/// Whether `exported` (seconds or a count) lies between the two readings taken around the
/// scrape (the threads may run between them), allowing for the float rounding of ns -> s.
fn between(exported: f64, before: u64, after: u64, scale: f64) -> bool {
    let slack = 1e-6 * exported.abs().max(1.0);
    exported >= before as f64 / scale - slack && exported <= after as f64 / scale + slack
}

#[track_caller]
fn check_vcpus(m: &str, id: &str, pid: u32, before: [u64; 3], after: [u64; 3]) {
    assert_eq!(sample(m, "pve_kvm_vcpu_threads", &[("id", id)]), Some(2.0), "-smp 2\n{m}");
    let run = sample(m, "pve_kvm_vcpu_run_seconds_total", &[("id", id)]).expect("run seconds");
    let wait = sample(m, "pve_kvm_vcpu_wait_seconds_total", &[("id", id)]).expect("wait seconds");
    let slices = sample(m, "pve_kvm_vcpu_timeslices_total", &[("id", id)]).expect("timeslices");
    assert!(run > 0.0, "the vCPUs ran the guest's port writes: {run}");
    assert!(between(run, before[0], after[0], 1e9), "run {run} s vs schedstat of pid {pid}: {before:?} .. {after:?}");
    assert!(between(wait, before[1], after[1], 1e9), "wait {wait} s vs {before:?} .. {after:?}");
    assert!(between(slices, before[2], after[2], 1.0), "timeslices {slices} vs {before:?} .. {after:?}");
    assert!(slices >= 2.0, "each vCPU ran at least once: {slices}");
}

/// A real guest with `-smp 2`: two vCPU threads, and run time, wait and timeslices that are the
/// sums of the threads' own schedstat. In procfs mode (`--ebpf off`) and in the default mode
/// (eBPF when it loads): the families exist in both.
#[test]
fn vcpu_schedstat_of_a_real_guest_in_both_modes() {
    require_privileges();
    let root = host_root(&[140]);
    let guest = Guest::start(140, 2, 2000, root.path());
    let procfs = Daemon::start(root.path(), &["--ebpf", "off"]);
    let auto = Daemon::start(root.path(), &[]);
    for (daemon, mode) in [(&procfs, "procfs"), (&auto, "default")] {
        let (n, before) = vcpu_sum(guest.pid);
        assert_eq!(n, 2, "the test guest names its two vCPU threads CPU 0/KVM and CPU 1/KVM");
        let m = daemon.get("/metrics");
        let (_, after) = vcpu_sum(guest.pid);
        check_vcpus(&m, "140", guest.pid, before, after);
        assert_eq!(sample(&m, "pve_exporter_collector_success", &[("collector", "vcpu")]), Some(1.0), "{mode}\n{m}");
        if mode == "procfs" {
            assert_eq!(sample(&m, "pve_exporter_ebpf_enabled", &[]), Some(0.0), "{m}");
        }
        // A second scrape answers from the cached thread list: the same threads, never less.
        let m2 = daemon.get("/metrics");
        let run = |m: &str| sample(m, "pve_kvm_vcpu_run_seconds_total", &[("id", "140")]).unwrap_or(0.0);
        assert!(run(&m2) >= run(&m), "{mode}: counter went back");
        assert_eq!(sample(&m2, "pve_kvm_vcpu_threads", &[("id", "140")]), Some(2.0));
    }
    // The VM stops: its series go.
    drop(guest);
    let m = procfs.get("/metrics");
    assert!(common::process_series(&m, "140").is_empty(), "{m}");
    assert_eq!(sample(&m, "pve_exporter_collector_success", &[("collector", "vcpu")]), Some(1.0), "{m}");
}

/// `--kvm-debugfs on`: the daemon finds or mounts debugfs. On this build machine the kernel
/// refuses the counter files (EPERM, as under lockdown): the collector reports
/// `pve_exporter_kvm_debugfs_available 0` and does not fail, and the scrape answers 200. On a
/// host whose debugfs reads fine, the VM's stats are served instead.
#[test]
fn kvm_debugfs_on_this_machine() {
    require_privileges();
    let root = host_root(&[141]);
    let guest = Guest::start(141, 2, 10, root.path());
    let daemon = Daemon::start(root.path(), &["--ebpf", "off", "--kvm-debugfs", "on", "--kvm-debugfs-per-vcpu"]);
    for _ in 0..2 {
        let (status, _, m) = daemon.try_get("/metrics", None).expect("GET /metrics");
        assert_eq!(status, 200);
        assert_eq!(sample(&m, "pve_exporter_collector_success", &[("collector", "kvm_debugfs")]), Some(1.0), "{m}");
        // Whatever debugfs does, the other collectors carry on.
        assert_eq!(sample(&m, "pve_kvm_vcpu_threads", &[("id", "141")]), Some(2.0), "{m}");
        // What the kernel says about a counter file, asked after the daemon mounted debugfs.
        let counter = std::fs::read_to_string("/sys/kernel/debug/kvm/exits");
        let available = sample(&m, "pve_exporter_kvm_debugfs_available", &[]);
        match counter {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                assert_eq!(available, Some(0.0), "EPERM on {e}: reported as not available\n{m}");
                assert!(!m.contains("pve_kvm_debugfs_stat{"), "{m}");
            }
            Ok(_) => {
                assert_eq!(available, Some(1.0), "{m}");
                assert!(sample(&m, "pve_kvm_debugfs_stat", &[("id", "141"), ("stat", "exits")]).is_some(), "{m}");
                assert!(sample(&m, "pve_kvm_debugfs_vcpu_stat", &[("id", "141"), ("vcpu", "1")]).is_some(), "{m}");
            }
            Err(e) => panic!("/sys/kernel/debug/kvm/exits: {e} (debugfs not mounted by the daemon?)\n{m}"),
        }
    }
    drop(guest);
}

//! Whole scrapes of `fixtures/hosts/pve-kvmstat` (pve-basic plus vCPU threads and KVM debugfs,
//! see fixtures/hosts/pve-kvmstat.md) through the library API: `Config` -> `Engine::collect` ->
//! `exposition::render`, in procfs mode.
//!
//! Golden file: `fixtures/golden/pve-kvmstat.prom`, normalised as in tests/fixtures.rs (values
//! of `*_duration_seconds` are 0, `ebpf_programs` of the build info is `absent`). Rewrite it
//! after an intended change with `UPDATE_GOLDEN=1 cargo test -p pve-exporter --test
//! fixtures_kvmstat` and review the diff. The targeted tests do not depend on it.

mod fixture_scrape;

use std::{path::Path, sync::Arc};

use fixture_scrape::{assert_value as assert_sample, check_golden, copy_tree, tree, value as sample};
use pve_exporter::{
    collector::Engine,
    config::Config,
    exposition::{self, Format},
};

fn engine(root: &str, extra: &[&str]) -> Engine {
    let mut args = vec!["pve-exporter", "--root", root, "--ebpf", "off"];
    args.extend_from_slice(extra);
    Engine::new(Config::from_args(args).expect("flags parse")).expect("engine starts with --ebpf off")
}

fn render(engine: &Engine) -> String {
    exposition::render(Arc::new(engine.collect()), Format::Text)
}

fn scrape(root: &str, extra: &[&str]) -> String {
    render(&engine(root, extra))
}

/// The lines of one family's samples (not its HELP/TYPE).
fn lines<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.strip_prefix(family).is_some_and(|r| r.starts_with(['{', ' ']))).collect()
}

#[test]
fn vcpu_schedstat_per_vm() {
    let t = scrape(&tree("pve-kvmstat"), &[]);
    // VM 100: CPU 0..3/KVM ran 1.25 + 2.5 + 3.75 + 5 s, waited 0.05 + 0.1 + 0.15 + 0.2 s; the
    // main thread, I/O threads, vnc_worker, io_uring workers and kvm-nx-lpage-re are not vCPUs.
    // VM 200: four vCPUs of 100 s / 2 s / 1000000 each. VM 300: a kernel without schedstat
    // support, 0 0 0 everywhere (and a second thread still named like the process).
    for (id, threads, run, wait, slices) in
        [("100", 4.0, 12.5, 0.5, 120_000.0), ("200", 4.0, 400.0, 8.0, 4_000_000.0), ("300", 2.0, 0.0, 0.0, 0.0)]
    {
        assert_sample(&t, "pve_kvm_vcpu_threads", &[("id", id)], threads);
        assert_sample(&t, "pve_kvm_vcpu_run_seconds_total", &[("id", id)], run);
        assert_sample(&t, "pve_kvm_vcpu_wait_seconds_total", &[("id", id)], wait);
        assert_sample(&t, "pve_kvm_vcpu_timeslices_total", &[("id", id)], slices);
    }
    // Only the reported VMs.
    assert_eq!(lines(&t, "pve_kvm_vcpu_threads").len(), 3, "{t}");
    assert_sample(&t, "pve_exporter_collector_success", &[("collector", "vcpu")], 1.0);
}

#[test]
fn debugfs_stats_by_exact_pid() {
    let t = scrape(&tree("pve-kvmstat"), &[]);
    assert_sample(&t, "pve_exporter_kvm_debugfs_available", &[], 1.0);
    assert_sample(&t, "pve_exporter_collector_success", &[("collector", "kvm_debugfs")], 1.0);
    // VM 200's and 300's directories hold 2x and 3x VM 100's values.
    for (id, k) in [("100", 1.0), ("200", 2.0), ("300", 3.0)] {
        assert_sample(&t, "pve_kvm_debugfs_stat", &[("id", id), ("stat", "exits")], 61_013_387.0 * k);
        assert_sample(&t, "pve_kvm_debugfs_stat", &[("id", id), ("stat", "halt_successful_poll")], 25_206_512.0 * k);
        assert_sample(&t, "pve_kvm_debugfs_stat", &[("id", id), ("stat", "pages_4k")], 5379.0 * k);
        // Every one of the kernel's 60 names, none of our own; the rmap table is no number.
        let stats =
            lines(&t, "pve_kvm_debugfs_stat").into_iter().filter(|l| l.contains(&format!("id=\"{id}\""))).count();
        assert_eq!(stats, 60, "VM {id}");
    }
    assert!(!t.contains("mmu_rmaps_stat"), "{t}");
    // 110-3 (pid 110 is no process; its name starts like pid 1100's), VM 400 without config,
    // QEMU without -id and pid 4242 all hold 999000000-ish values: none may show.
    assert!(!t.contains("99900000"), "{t}");
    // Per vCPU only on request.
    assert!(lines(&t, "pve_kvm_debugfs_vcpu_stat").is_empty());
}

#[test]
fn debugfs_per_vcpu() {
    let t = scrape(&tree("pve-kvmstat"), &["--kvm-debugfs-per-vcpu"]);
    let vcpu = |id, vcpu, stat| sample(&t, "pve_kvm_debugfs_vcpu_stat", &[("id", id), ("vcpu", vcpu), ("stat", stat)]);
    assert_eq!(vcpu("100", "0", "tsc-offset"), Some(-64_921_693_680_401_860.0));
    assert_eq!(vcpu("100", "3", "lapic_timer_advance_ns"), Some(1000.0 + 3.0 * 1345.0));
    assert_eq!(vcpu("300", "1", "tsc-scaling-ratio-frac-bits"), Some(48.0));
    assert_eq!(vcpu("300", "2", "guest_mode"), None, "VM 300 has two vCPUs");
    // `pid` is a thread id, not a stat. 5 stats x (4 + 4 + 2) vCPUs.
    assert!(!t.contains("stat=\"pid\""), "{t}");
    assert_eq!(lines(&t, "pve_kvm_debugfs_vcpu_stat").len(), 5 * 10, "{t}");
    // The VM-level stats are the same as without the flag.
    assert_eq!(lines(&t, "pve_kvm_debugfs_stat"), lines(&scrape(&tree("pve-kvmstat"), &[]), "pve_kvm_debugfs_stat"));
}

#[test]
fn kvm_debugfs_flag() {
    let root = tree("pve-kvmstat");
    let off = scrape(&root, &["--kvm-debugfs", "off"]);
    assert!(!off.contains("debugfs"), "{off}");
    assert_sample(&off, "pve_kvm_vcpu_threads", &[("id", "100")], 4.0);
    let on = scrape(&root, &["--kvm-debugfs", "on"]);
    assert_sample(&on, "pve_exporter_kvm_debugfs_available", &[], 1.0);
    assert_eq!(lines(&on, "pve_kvm_debugfs_stat").len(), 180);
}

/// pve-basic has neither task directories nor debugfs: no vCPU series, debugfs unavailable,
/// and neither is a failure.
#[test]
fn a_tree_without_tasks_or_debugfs() {
    let t = scrape(&tree("pve-basic"), &[]);
    assert!(lines(&t, "pve_kvm_vcpu_threads").is_empty(), "{t}");
    assert_sample(&t, "pve_exporter_kvm_debugfs_available", &[], 0.0);
    assert_sample(&t, "pve_exporter_collector_success", &[("collector", "vcpu")], 1.0);
    assert_sample(&t, "pve_exporter_collector_success", &[("collector", "kvm_debugfs")], 1.0);
}

/// One engine over several scrapes of a tree that changes: a vCPU added (the thread count
/// changes, the cached listing is renewed), a VM that exits mid-scrape, a broken schedstat.
#[test]
fn changes_between_scrapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(Path::new(&tree("pve-kvmstat")), dir.path());
    let root = dir.path().to_str().expect("utf-8 path");
    let e = engine(root, &[]);
    assert_sample(&render(&e), "pve_kvm_vcpu_threads", &[("id", "100")], 4.0);

    let task = dir.path().join("proc/1100/task/1112");
    std::fs::create_dir_all(&task).expect("mkdir");
    std::fs::write(task.join("comm"), "CPU 4/KVM\n").expect("comm");
    std::fs::write(task.join("schedstat"), "7500000000 1000000000 60000\n").expect("schedstat");
    let t = render(&e);
    assert_sample(&t, "pve_kvm_vcpu_threads", &[("id", "100")], 5.0);
    assert_sample(&t, "pve_kvm_vcpu_run_seconds_total", &[("id", "100")], 20.0);
    assert_sample(&t, "pve_kvm_vcpu_wait_seconds_total", &[("id", "100")], 1.5);

    // VM 300 exits after /proc was listed; VM 200's vCPU 2 reads garbage.
    std::fs::remove_dir_all(dir.path().join("proc/1300/task")).expect("rm");
    std::fs::write(dir.path().join("proc/1200/task/1206/schedstat"), "not a schedstat\n").expect("write");
    let t = render(&e);
    assert_eq!(sample(&t, "pve_kvm_vcpu_threads", &[("id", "300")]), None, "{t}");
    assert_eq!(sample(&t, "pve_kvm_vcpu_threads", &[("id", "200")]), None, "{t}");
    assert_sample(&t, "pve_kvm_vcpu_threads", &[("id", "100")], 5.0);
    assert_sample(&t, "pve_exporter_collector_success", &[("collector", "vcpu")], 0.0);
    // The other collectors are not affected.
    assert_sample(&t, "pve_exporter_collector_success", &[("collector", "kvm_debugfs")], 1.0);
    assert_sample(&t, "pve_kvm_debugfs_stat", &[("id", "200"), ("stat", "exits")], 2.0 * 61_013_387.0);

    // VM 100 stops: its debugfs directory goes, the scrape goes on.
    std::fs::remove_dir_all(dir.path().join("sys/kernel/debug/kvm/1100-11")).expect("rm");
    let t = render(&e);
    assert_eq!(sample(&t, "pve_kvm_debugfs_stat", &[("id", "100"), ("stat", "exits")]), None);
    assert_sample(&t, "pve_exporter_collector_success", &[("collector", "kvm_debugfs")], 1.0);
}

// ---------------------------------------------------------------------------------------------
// Golden file.

#[test]
fn golden_pve_kvmstat_text() {
    check_golden(&fixture_scrape::normalize(&scrape(&tree("pve-kvmstat"), &[]), |_| false), "pve-kvmstat.prom");
}

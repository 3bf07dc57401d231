//! Live tests of the files held open between scrapes (`heldfile`): a real process's /proc
//! files and a real cgroup's pressure files read fresh through held descriptors, and what a
//! held file says once its process or cgroup is gone or replaced. They need root (cgroups,
//! /dev/kvm for the guests; see `common::require_privileges`).

mod common;

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use common::{Daemon, Guest, cgroup2_mount, host_root, require_privileges, sample};
use pve_exporter::{
    heldfile::{FdBudget, HeldFiles, OnStale},
    host::{HostRoot, is_gone},
    sources::{proc::pressure, proc::process},
};

fn cpu(st: &process::ProcessStats) -> Duration {
    let c = st.cpu.expect("stat parsed");
    c.user + c.system
}

/// A busy child's stat, status and io through held files: values move between reads, and once
/// the child has exited and been reaped the held files fail (ESRCH) and the process is gone.
#[test]
fn held_process_files_of_a_real_child() {
    require_privileges();
    let host = HostRoot::new("/");
    let mut child: Child = Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("spawn");
    let pid = child.id();
    let budget = FdBudget::new(100);
    let mut held = HeldFiles::new(budget.clone(), OnStale::Reopen);
    let mut errors = Vec::new();
    let first = process::read_process(&host, &mut held, pid, &mut errors).expect("read");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(first.status.is_some() && first.io.is_some());
    assert_eq!(budget.used(), 3, "stat, status and io held");
    let start = Instant::now();
    let mut later = first.clone();
    while cpu(&later) == cpu(&first) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
        later = process::read_process(&host, &mut held, pid, &mut errors).expect("read");
    }
    assert!(cpu(&later) > cpu(&first), "fresh CPU time through held files: {:?} then {:?}", first.cpu, later.cpu);
    assert!(errors.is_empty(), "{errors:?}");

    // The raw held stat file after the child is reaped: ESRCH.
    let mut raw = HeldFiles::new(budget.clone(), OnStale::Fail);
    raw.read(&pid, 0, || PathBuf::from(format!("/proc/{pid}/stat"))).expect("held stat");
    child.kill().expect("kill");
    child.wait().expect("reap");
    let e = raw.read(&pid, 0, || PathBuf::from(format!("/proc/{pid}/stat"))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "{e}");
    // read_process: gone, not an error, and nothing of it held any more.
    let e = process::read_process(&host, &mut held, pid, &mut errors).unwrap_err();
    assert!(is_gone(&e), "{e}");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(budget.used(), 0);
}

/// Removes a test cgroup (and its scopes) when dropped.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.0) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A VM restart recreates its scope: the held pressure files of the old scope fail with
/// ENODEV, and the reader opens the new scope's files by path without an error; a scope that
/// is gone makes the VM gone.
#[test]
fn held_pressure_files_of_a_recreated_scope() {
    require_privileges();
    let slice = TestCgroup(cgroup2_mount().join(format!("pve-exporter-test-{}.slice", std::process::id())));
    std::fs::create_dir(&slice.0).expect("mkdir test cgroup");
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("sys/fs/cgroup")).expect("mkdir");
    std::os::unix::fs::symlink(&slice.0, root.path().join("sys/fs/cgroup/qemu.slice")).expect("symlink");
    let host = HostRoot::new(root.path());
    let scope = slice.0.join("990.scope");
    std::fs::create_dir(&scope).expect("mkdir scope");
    if !scope.join("cpu.pressure").exists() {
        panic!("{}: no pressure files (kernel booted with psi=0?)", scope.display());
    }

    let budget = FdBudget::new(100);
    let mut held = HeldFiles::new(budget.clone(), OnStale::Reopen);
    let mut raw = HeldFiles::new(budget.clone(), OnStale::Fail);
    let read = |held: &mut HeldFiles<u32>| {
        let mut errors = Vec::new();
        let vm = pressure::read_cgroup_pressure(
            &host,
            held,
            990,
            std::path::Path::new("/sys/fs/cgroup/qemu.slice/990.scope"),
            "990".into(),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        vm
    };
    let vm = read(&mut held).expect("running");
    assert_eq!(vm.ratios.iter().filter(|r| r.is_some()).count(), 6, "{vm:?}");
    assert_eq!(held.held(), 3);
    raw.read(&990, 0, || scope.join("cpu.pressure")).expect("held read");

    // Restart: the scope is removed and made again.
    std::fs::remove_dir(&scope).expect("rmdir scope");
    std::fs::create_dir(&scope).expect("mkdir scope again");
    let e = raw.read(&990, 0, || scope.join("cpu.pressure")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "a held kernfs file of a removed cgroup: {e}");
    let vm = read(&mut held).expect("running again");
    assert_eq!(vm.ratios.iter().filter(|r| r.is_some()).count(), 6, "{vm:?}");
    assert_eq!(held.held(), 3, "the new scope's files are held");

    // Stopped: the scope is gone.
    std::fs::remove_dir(&scope).expect("rmdir scope");
    assert_eq!(read(&mut held), None);
    assert_eq!(held.held(), 0);
    assert_eq!(budget.used(), 0);
}

/// Through the daemon: a VM restarted under a new pid is reported with the new process's
/// values (its files held from the first scrape are dropped), without an error. (Fresh values
/// through held files: `held_process_files_of_a_real_child`; the test guest idles.)
#[test]
fn a_restarted_vm_is_read_through_its_new_process() {
    require_privileges();
    let root = host_root(&[171]);
    let guest = Guest::start(171, 1, 50, root.path());
    let daemon = Daemon::start(root.path(), &["--ebpf", "off"]);
    let pid_of = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("pve_kvm_info{") && l.contains("id=\"171\""))
            .and_then(|l| l.split("pid=\"").nth(1)?.split('"').next()?.parse::<u32>().ok())
    };
    let threads = |m: &str| sample(m, "pve_kvm_threads", &[("id", "171")]);
    let ok = |m: &str| sample(m, "pve_exporter_collector_success", &[("collector", "kvm")]);
    let m = daemon.get("/metrics");
    assert_eq!(pid_of(&m), Some(guest.pid), "{m}");
    assert_eq!(ok(&m), Some(1.0), "{m}");
    assert!(threads(&m).is_some_and(|t| t >= 2.0), "{m}");
    drop(guest);

    let count = |pid: u32| {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        s.lines().find_map(|l| l.strip_prefix("Threads:")).map(|v| v.trim().parse::<f64>().expect("Threads"))
    };
    let second = Guest::start(171, 2, 50, root.path());
    let before = count(second.pid);
    let m = daemon.get("/metrics");
    let after = count(second.pid);
    assert_eq!(pid_of(&m), Some(second.pid), "{m}");
    assert_eq!(ok(&m), Some(1.0), "{m}");
    assert_eq!(sample(&m, "pve_kvm_vcpu_threads", &[("id", "171")]), Some(2.0), "{m}");
    // The thread count is the new process's, not the old one's.
    assert!(threads(&m) == before || threads(&m) == after, "{:?} vs {before:?}..{after:?}\n{m}", threads(&m));
}

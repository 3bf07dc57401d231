//! Live tests of the eBPF programs beyond event counting: run-queue wait against the
//! kernel's own schedstat, map cleanup over many VM lifetimes, and the fallbacks to procfs
//! mode. They need root and /dev/kvm (see `common::require_privileges`).

mod common;

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Daemon, Guest, Proc, guest, host_root, require_privileges, sample};

fn pin_current_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t filled with CPU_SET, for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A guest whose vCPU writes to a port without end (busy), with every thread on `cpu`.
fn busy_guest_on_cpu(vmid: u32, cpu: usize) -> Proc {
    let mut c = Command::new(guest());
    c.arg0("/usr/bin/kvm")
        .args(["-id", &vmid.to_string(), "-name", &format!("busy{vmid},debug-threads=on")])
        .args(["-smp", "1", "-m", "32", "-pio-writes", "4000000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            pin_current_thread(cpu);
            Ok(())
        });
    }
    Proc(c.spawn().expect("start pve-test-guest"))
}

/// The vCPU thread of `pid` and its schedstat run-queue wait (ns).
fn vcpu_run_delay(pid: u32) -> (u32, u64) {
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir").flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == "CPU 0/KVM" {
            let tid = e.file_name().to_string_lossy().parse().expect("tid");
            let st = std::fs::read_to_string(e.path().join("schedstat")).expect("schedstat");
            let wait = st.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("run_delay");
            return (tid, wait);
        }
    }
    panic!("no CPU 0/KVM thread in {pid}");
}

/// The run-queue wait the eBPF programs measure for a vCPU agrees with the kernel's own
/// schedstat run_delay of that thread (the steal time KVM reports to the guest) within 10%,
/// with a busy guest and a CPU hog pinned to one CPU.
#[test]
fn runqueue_wait_agrees_with_schedstat() {
    require_privileges();
    let root = host_root(&[120]);
    let daemon = Daemon::start(root.path(), &["--ebpf", "on"]);
    let guest = busy_guest_on_cpu(120, 0);
    let pid = guest.0.id();
    let stop = Arc::new(AtomicBool::new(false));
    let hog = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            pin_current_thread(0);
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x = x.wrapping_add(1);
                std::hint::black_box(x);
            }
        })
    };
    // The first scrape tells the programs which threads are vCPUs; measure from the second.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(&daemon.get("/metrics"), "pve_kvm_info", &[("id", "120")]).is_none() {
        assert!(Instant::now() < deadline, "VM 120 not discovered");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let wait_sum = |m: &str| sample(m, "pve_kvm_vcpu_runqueue_wait_seconds_sum", &[("id", "120")]).unwrap_or(0.0);
    let m0 = daemon.get("/metrics");
    let (_, d0) = vcpu_run_delay(pid);
    std::thread::sleep(Duration::from_secs(3));
    let m1 = daemon.get("/metrics");
    let (_, d1) = vcpu_run_delay(pid);
    stop.store(true, Ordering::Relaxed);
    hog.join().expect("hog");

    let ebpf = wait_sum(&m1) - wait_sum(&m0);
    let schedstat = (d1 - d0) as f64 / 1e9;
    assert!(schedstat > 0.5, "the vCPU should have waited a lot behind the hog: {schedstat}s");
    let diff = (ebpf - schedstat).abs() / schedstat;
    eprintln!(
        "run-queue wait over 3 s: eBPF {ebpf:.4} s, schedstat run_delay {schedstat:.4} s, {:.2}% apart",
        diff * 100.0
    );
    assert!(diff <= 0.10, "eBPF wait {ebpf:.3}s vs schedstat run_delay {schedstat:.3}s: {:.1}% apart", diff * 100.0);
    let count = sample(&m1, "pve_kvm_vcpu_runqueue_wait_seconds_count", &[("id", "120")]).unwrap_or(0.0);
    let inf = sample(&m1, "pve_kvm_vcpu_runqueue_wait_seconds_bucket", &[("id", "120"), ("le", "+Inf")]);
    assert_eq!(inf, Some(count), "+Inf bucket equals the count");
    drop(guest);
}

/// One finished burst of port writes of a `-pio-report` guest (one vCPU).
#[derive(Debug, Clone, Copy)]
struct Burst {
    writes: u64,
    start_ns: u64,
    end_ns: u64,
}

fn parse_burst(line: &str) -> Option<Burst> {
    let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok());
    line.starts_with("burst ").then_some(())?;
    Some(Burst { writes: field("writes")?, start_ns: field("start_ns")?, end_ns: field("end_ns")? })
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kvm_userspace_exit event is no longer a counter program of its own but the sum of
/// `count_userspace_exit`'s counts by reason: it must still be exact, before the VM is
/// registered (hash maps) and after (per-VM arrays). A guest bursts port writes (each burst
/// ends in one HLT exit) and reports each burst's start and end on CLOCK_MONOTONIC, so a scrape
/// between two bursts knows exactly how many exits happened before it.
#[test]
fn derived_userspace_exit_count_is_exact_before_and_after_registration() {
    require_privileges();
    let root = host_root(&[123]);
    let daemon = Daemon::start(root.path(), &["--ebpf", "on", "--ebpf-stats"]);
    let mut child = Command::new(guest())
        .arg0("/usr/bin/kvm")
        .args(["-id", "123", "-name", "derived123,debug-threads=on", "-smp", "1", "-m", "32"])
        .args(["-pio-writes", "500", "-pio-interval-ms", "100", "-pio-report"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pve-test-guest");
    let stdout = child.stdout.take().expect("stdout");
    let _guest = Proc(child);
    let bursts = Arc::new(std::sync::Mutex::new(Vec::<Burst>::new()));
    {
        let bursts = bursts.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(b) = parse_burst(&line) {
                    bursts.lock().expect("bursts").push(b);
                }
            }
        });
    }
    let reported = || bursts.lock().expect("bursts").clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Bursts reported so far, once one has started after `t` (the vCPU runs them one after
    // the other, so every burst that started before `t` is among them).
    let bursts_after = |t: u64| loop {
        let b = reported();
        if b.iter().any(|b| b.start_ns > t) {
            return b;
        }
        assert!(Instant::now() < deadline, "the guest stopped reporting bursts");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The first bursts run before the daemon knows the VM: they count in the hash maps.
    bursts_after(0);
    // The scrape that finds the VM registers it: from then on it counts in the arrays.
    let first = loop {
        let m = daemon.get("/metrics");
        if sample(&m, "pve_kvm_info", &[("id", "123")]).is_some() {
            break m;
        }
        assert!(Instant::now() < deadline, "VM 123 not discovered");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Both histograms from that first scrape, observed or not yet (on this machine's PVM
    // backend kvm_exit never fires: the exit time stays at zero observations).
    for h in ["pve_kvm_exit_handling_seconds", "pve_kvm_vcpu_runqueue_wait_seconds"] {
        let count = sample(&first, &format!("{h}_count"), &[("id", "123")]);
        let inf = sample(&first, &format!("{h}_bucket"), &[("id", "123"), ("le", "+Inf")]);
        assert!(count.is_some() && count == inf, "{h} from the first scrape\n{first}");
    }
    let registered_at = monotonic_ns();
    let mut checked = 0;
    while checked < 3 {
        assert!(Instant::now() < deadline, "no scrape fell between two bursts");
        std::thread::sleep(Duration::from_millis(150));
        let t0 = monotonic_ns();
        let m = daemon.get("/metrics");
        let t1 = monotonic_ns();
        let b = bursts_after(t1);
        if b.iter().any(|b| b.start_ns < t1 && b.end_ns > t0) {
            continue; // a burst ran during the scrape: its count is not known exactly
        }
        let done: Vec<_> = b.iter().filter(|b| b.end_ns < t0).collect();
        assert!(done.iter().any(|b| b.start_ns > registered_at), "no burst counted in the arrays yet");
        let writes: u64 = done.iter().map(|b| b.writes).sum();
        let halts = done.len() as u64; // each burst of fewer than 65536 writes ends in one HLT
        let get = |name, labels: &[(&str, &str)]| sample(&m, name, labels).map(|v| v as u64);
        let event = |e| get("pve_kvm_tracepoint_events_total", &[("id", "123"), ("event", e)]);
        let reason = |r| get("pve_kvm_userspace_exits_total", &[("id", "123"), ("reason", r)]);
        assert_eq!(event("kvm_pio"), Some(writes), "{m}");
        assert_eq!(reason("io"), Some(writes), "{m}");
        assert_eq!(reason("hlt"), Some(halts), "{m}");
        assert_eq!(event("kvm_userspace_exit"), Some(writes + halts), "port writes + HLT exits\n{m}");
        assert_eq!(get("pve_exporter_ebpf_tracepoint_attached", &[("event", "kvm:kvm_userspace_exit")]), Some(1));
        checked += 1;
    }
    // No counter program on the tracepoints a named program counts: one per other event.
    let m = daemon.get("/metrics");
    let attached = m.lines().filter(|l| l.starts_with("pve_exporter_ebpf_tracepoint_attached{") && l.ends_with(" 1"));
    let derived = ["kvm:kvm_userspace_exit", "kvm:kvm_exit", "kvm:kvm_entry", "kvm:kvm_vcpu_wakeup"];
    let counted = attached.filter(|l| !derived.iter().any(|d| l.contains(&format!("\"{d}\"")))).count();
    let counters = m.lines().filter(|l| l.starts_with("pve_exporter_ebpf_program_runs_total{program=\"count_event_"));
    assert_eq!(counters.count(), counted, "{m}");
}

/// VMs that stop leave no series and no map entries: 200 VM lifetimes keep the maps bounded.
#[test]
fn stopped_vms_leave_nothing_behind() {
    require_privileges();
    let root = host_root(&[121]);
    let daemon = Daemon::start(root.path(), &["--ebpf", "on"]);
    let entries = |m: &str, map: &str| sample(m, "pve_exporter_ebpf_map_entries", &[("map", map)]).unwrap_or(0.0);
    let mut max_counts = 0.0f64;
    for i in 0..200 {
        let g = Guest::start(121, 1, 5, root.path());
        if i % 20 == 0 {
            let m = daemon.get("/metrics");
            assert_eq!(
                sample(&m, "pve_kvm_tracepoint_events_total", &[("id", "121"), ("event", "kvm_pio")]),
                Some(5.0),
                "lifetime {i}: a new process starts from zero\n{m}"
            );
        }
        drop(g);
        let m = daemon.get("/metrics");
        assert!(common::process_series(&m, "121").is_empty(), "lifetime {i}: stopped VM still reported");
        max_counts = max_counts.max(entries(&m, "EVENT_COUNTS"));
    }
    let m = daemon.get("/metrics");
    // Other tests' guests may run at the same time; 200 lifetimes without cleanup would leave
    // some 800 entries here.
    assert!(max_counts < 60.0, "EVENT_COUNTS grew to {max_counts} entries");
    assert!(entries(&m, "USERSPACE_EXITS") < 30.0, "{m}");
    assert!(entries(&m, "VCPU_THREADS") < 30.0, "{m}");
    assert_eq!(sample(&m, "pve_exporter_ebpf_uncounted_events_total", &[("cause", "map_full")]), Some(0.0));
}

/// Start a test guest as VM `vmid` on exactly `pid` (free now): the kernel hands out the pid
/// after `ns_last_pid`, so write `pid - 1` there and spawn, until no other process of the host
/// took the pid in between. None when it could not be had.
fn guest_on_pid(pid: u32, vmid: u32, writes: u64, dir: &std::path::Path) -> Option<Guest> {
    let ready = dir.join(format!("guest-{vmid}.ready"));
    for _ in 0..500 {
        let _ = std::fs::remove_file(&ready);
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("ns_last_pid (needs root)");
        let child = Command::new(guest())
            .arg0("/usr/bin/kvm")
            .args(["-id", &vmid.to_string(), "-name", &format!("reused{vmid},debug-threads=on")])
            .args(["-smp", "1", "-m", "32", "-pio-writes", &writes.to_string()])
            .arg("-ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pve-test-guest");
        let got = child.id();
        let mut g = Guest { proc: Proc(child), pid: got };
        if got != pid {
            continue; // dropped: killed and reaped, try again
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(&ready).map(|t| t.trim() != format!("done {writes}")).unwrap_or(true) {
            assert!(g.proc.0.try_wait().expect("wait").is_none(), "guest on pid {pid} exited early");
            assert!(Instant::now() < deadline, "guest on pid {pid} did not finish its writes");
            std::thread::sleep(Duration::from_millis(20));
        }
        return Some(g);
    }
    None
}

/// A VM whose process exits and whose pid a new VM process takes before the next scrape: the
/// new process must not carry on the dead one's counters (the maps key counters by pid). The
/// daemon tells the two processes apart by a pidfd, and forgets the dead one's counters before
/// it registers the new one.
#[test]
fn a_vm_on_a_reused_pid_starts_from_zero() {
    require_privileges();
    let root = host_root(&[125]);
    let daemon = Daemon::start(root.path(), &["--ebpf", "on"]);
    let pio = |m: &str| sample(m, "pve_kvm_tracepoint_events_total", &[("id", "125"), ("event", "kvm_pio")]);
    let first = Guest::start(125, 1, 1000, root.path());
    let pid = first.pid;
    let m = daemon.get("/metrics");
    assert_eq!(pio(&m), Some(1000.0), "{m}");
    // Registered now: from here on VM 125 counts in the per-VM arrays, under this pid.
    assert_eq!(pio(&daemon.get("/metrics")), Some(1000.0));
    drop(first);
    let second = guest_on_pid(pid, 125, 5, root.path()).expect("the pid of the stopped guest could not be had again");
    assert_eq!(second.pid, pid);
    let m = daemon.get("/metrics");
    assert!(sample(&m, "pve_kvm_info", &[("id", "125")]).is_some(), "the new VM is seen\n{m}");
    // Not 1000 (nor 1005): the dead process's counts are gone. The new process's 5 writes before
    // this scrape were counted under the old registration and went with it.
    assert_eq!(pio(&m), None, "a new process on a reused pid inherited counters\n{m}");
    assert_eq!(sample(&m, "pve_exporter_ebpf_map_entries", &[("map", "VM_INDEX")]), Some(1.0), "{m}");
    drop(second);
}

/// The kernel's accounting of the maps' memory (fdinfo `memlock`, what `bpftool map show` prints)
/// follows the sizing for this host's possible CPUs, and the hash maps that allocate per key
/// (`BPF_F_NO_PREALLOC`) hold no per-CPU values up front.
#[test]
fn map_memory_follows_the_sizing_for_the_possible_cpus() {
    use pve_exporter::sources::kernel::ebpf::map_sizes;
    require_privileges();
    let root = host_root(&[126]);
    let daemon = Daemon::start(root.path(), &["--ebpf", "on"]);
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").expect("possible CPUs");
    let cpus: usize = possible
        .trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().expect("cpu") - a.parse::<usize>().expect("cpu") + 1,
            None => 1,
        })
        .sum();
    let sizes = map_sizes(cpus);
    // Every BPF map the daemon holds: (type, key size, value size, max entries, flags, memlock).
    let pid = daemon.proc.0.id();
    let mut maps = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir").flatten() {
        if std::fs::read_link(e.path()).map(|l| l.to_string_lossy() == "anon_inode:bpf-map").unwrap_or(false) {
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy()))
                .expect("fdinfo");
            let field = |k: &str| {
                info.lines()
                    .find_map(|l| {
                        let v = l.strip_prefix(k)?.strip_prefix(':')?.trim();
                        // map_flags is printed in hex.
                        Some(match v.strip_prefix("0x") {
                            Some(hex) => u64::from_str_radix(hex, 16).unwrap_or(0),
                            None => v.parse::<u64>().unwrap_or(0),
                        })
                    })
                    .unwrap_or(0)
            };
            maps.push([
                field("map_type"),
                field("key_size"),
                field("value_size"),
                field("max_entries"),
                field("map_flags"),
                field("memlock"),
            ]);
        }
    }
    const HASH: u64 = 1;
    const PERCPU_HASH: u64 = 5;
    const PERCPU_ARRAY: u64 = 6;
    // A map by its type, key and value sizes (and its entries where those are not enough).
    let find = |ty: u64, key: u64, value: u64, entries: Option<u64>| {
        let found: Vec<_> = maps
            .iter()
            .filter(|m| m[0] == ty && m[1] == key && m[2] == value && entries.is_none_or(|n| m[3] == n))
            .collect();
        assert_eq!(found.len(), 1, "map type {ty} key {key} value {value} in {maps:?}");
        *found[0]
    };
    let event_array = find(PERCPU_ARRAY, 4, 200, None);
    let uexit_array = find(PERCPU_ARRAY, 4, 256, None);
    let hist = find(PERCPU_HASH, 8, 104, None);
    assert_eq!(event_array[3], u64::from(sizes.indexed_vms));
    assert_eq!(uexit_array[3], u64::from(sizes.indexed_vms));
    assert_eq!(hist[3], u64::from(sizes.hist_keys));
    // The sized maps take what the sizing says, plus each map's fixed header (< 1 KiB).
    let sized = event_array[5] + uexit_array[5] + hist[5];
    let want = sizes.percpu_memlock(cpus);
    assert!(sized >= want && sized <= want + 3 * 1024, "{cpus} CPUs: memlock {sized}, sizing says {want}");
    // Allocated per key: flag set, and far below what preallocated values would take.
    for (key, value, max) in [(8, 8, 8192), (8, 8, 4096), (12, 16, 16384), (8, 16, 4096)] {
        let m = find(PERCPU_HASH, key, value, Some(max));
        assert_eq!(m[4] & 1, 1, "BPF_F_NO_PREALLOC on {m:?}");
        // Preallocated, the kernel would account its buckets and, per entry, an element and
        // a value per CPU.
        let prealloc = 16 * max.next_power_of_two() + max * (56 + key.div_ceil(8) * 8 + value * cpus as u64);
        assert!(m[5] < prealloc / 2, "{m:?} holds its values up front (preallocated: {prealloc} B)");
    }
    let vcpu_threads = find(HASH, 4, 4, None);
    assert_eq!(vcpu_threads[4] & 1, 1, "VCPU_THREADS allocates per key: {vcpu_threads:?}");
    let total: u64 = maps.iter().map(|m| m[5]).sum();
    eprintln!(
        "{cpus} possible CPUs: {} indexed VMs, {} histogram keys; sized per-CPU maps {sized} B, all maps {total} B",
        sizes.indexed_vms, sizes.hist_keys
    );
    let m = daemon.get("/metrics");
    assert_eq!(
        sample(&m, "pve_exporter_ebpf_map_capacity", &[("map", "VM_INDEX")]),
        Some(f64::from(sizes.indexed_vms))
    );
    assert_eq!(sample(&m, "pve_exporter_ebpf_map_capacity", &[("map", "HIST")]), Some(f64::from(sizes.hist_keys)));
}

/// Capabilities (linux/capability.h) the BPF programs need to load and attach.
const CAP_SYS_ADMIN: libc::c_ulong = 21;
const CAP_PERFMON: libc::c_ulong = 38;
const CAP_BPF: libc::c_ulong = 39;

/// What a procfs-mode scrape must still have, and must not: the guest's process and vCPU
/// figures are there and every collector that reports works; the eBPF families are absent
/// and the `ebpf` collector, which does not apply, reports nothing.
fn procfs_mode_keeps_the_rest(m: &str, id: &str) {
    assert_eq!(sample(m, "pve_kvm_vcores", &[("id", id)]), Some(1.0), "procfs families still served\n{m}");
    assert!(sample(m, "pve_kvm_vcpu_run_seconds_total", &[("id", id)]).is_some(), "{m}");
    for f in ["pve_kvm_tracepoint_events_total{", "pve_kvm_exits_total{", "pve_kvm_userspace_exits_total{"] {
        assert!(!m.contains(f), "{f} in procfs mode\n{m}");
    }
    assert_eq!(sample(m, "pve_exporter_collector_success", &[("collector", "ebpf")]), None, "{m}");
    let failed: Vec<&str> =
        m.lines().filter(|l| l.starts_with("pve_exporter_collector_success{") && l.ends_with(" 0")).collect();
    assert!(failed.is_empty(), "{failed:?}");
}

/// Without BTF, or without the rights to load BPF programs, `auto` serves procfs mode and
/// says why (the info series and one warning); `on` refuses to start.
#[test]
fn falls_back_to_procfs_mode() {
    require_privileges();
    let root = host_root(&[122]);
    let no_btf = Daemon::start(root.path(), &["--btf-path", "/nonexistent/vmlinux"]);
    let _g = Guest::start(122, 1, 5, root.path());
    let m = no_btf.get("/metrics");
    assert_eq!(sample(&m, "pve_exporter_ebpf_enabled", &[]), Some(0.0));
    assert!(
        m.contains(r#"pve_exporter_ebpf_info{mode="procfs",reason="the kernel has no BTF ("#),
        "reason missing:\n{m}"
    );
    assert_eq!(sample(&m, "pve_kvm_vcores", &[("id", "122")]), Some(1.0), "procfs families still served");
    procfs_mode_keeps_the_rest(&m, "122");
    let line = no_btf.wait_for_log("eBPF unavailable, running in procfs mode: ", Duration::from_secs(5));
    assert!(line.contains(" WARN ") && line.contains("the kernel has no BTF"), "{line}");
    assert_eq!(no_btf.log_lines("procfs mode:").len(), 1, "{}", no_btf.logs());

    // BPF refused: the daemon without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN.
    let refused = |mode: &str| {
        Command::new("setpriv")
            .args(["--bounding-set", "-bpf,-perfmon,-sys_admin", "--"])
            .arg(common::DAEMON)
            .arg("--root")
            .arg(root.path())
            .args(["--host", "127.0.0.1", "--port", "0", "--ebpf", mode, "--loglevel", "INFO"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv")
    };
    let out = refused("on").wait_with_output().expect("daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--ebpf on must fail without BPF rights");
    assert!(err.contains("eBPF required by --ebpf on but unavailable"), "{err}");

    // `auto` starts and keeps running in procfs mode (the same bounding set as setpriv's
    // above, dropped before the exec); its one log line says why.
    let auto = Daemon::start_with(root.path(), &["--ebpf", "auto"], |cmd| {
        // SAFETY: prctl is async-signal-safe and touches only the child's own bounding set.
        unsafe {
            cmd.pre_exec(|| {
                for cap in [CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN] {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    });
    let line = auto.wait_for_log("running in procfs mode", Duration::from_secs(5));
    assert!(line.contains(" WARN ") && line.contains("loading the eBPF object"), "{line}");
    let m = auto.get("/metrics");
    assert_eq!(sample(&m, "pve_exporter_ebpf_enabled", &[]), Some(0.0));
    assert!(m.contains(r#"pve_exporter_ebpf_info{mode="procfs",reason="loading the eBPF object"#), "{m}");
    procfs_mode_keeps_the_rest(&m, "122");
    let mut auto = auto;
    assert!(auto.proc.0.try_wait().expect("wait").is_none(), "auto mode must keep running");
}

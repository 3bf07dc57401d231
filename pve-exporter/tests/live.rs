//! Live tests: the real daemon against real KVM guests on this machine, with real BPF
//! programs. They need root and /dev/kvm (see `common::require_privileges`).

mod common;

use std::{process::Command, time::Duration};

use common::{Daemon, Guest, host_root, require_privileges, sample};

/// The acceptance test of the eBPF path: exact per-VM counts from the kernel's tracepoints,
/// two concurrent VMs counted apart, and a stopped VM gone from the next scrape.
#[test]
fn ebpf_counts_port_writes_exactly_per_vm() {
    require_privileges();
    let root = host_root(&[100, 101]);
    let daemon = Daemon::start(root.path(), &["--ebpf", "on"]);
    let m = daemon.get("/metrics");
    assert_eq!(sample(&m, "pve_exporter_ebpf_enabled", &[]), Some(1.0), "{m}");
    assert_eq!(sample(&m, "pve_exporter_ebpf_tracepoint_attached", &[("event", "kvm:kvm_pio")]), Some(1.0));

    // Programs attached before the guests run, so every write is seen. The two run at once.
    let (g100, g101) = std::thread::scope(|s| {
        let a = s.spawn(|| Guest::start(100, 1, 1000, root.path()));
        let b = s.spawn(|| Guest::start(101, 2, 300, root.path()));
        (a.join().expect("guest 100"), b.join().expect("guest 101"))
    });

    let m = daemon.get("/metrics");
    let pio = |id| sample(&m, "pve_kvm_tracepoint_events_total", &[("id", id), ("event", "kvm_pio")]);
    assert_eq!(pio("100"), Some(1000.0), "VM 100 did 1000 port writes\n{m}");
    assert_eq!(pio("101"), Some(600.0), "VM 101 did 300 port writes on each of 2 vCPUs\n{m}");
    // Every port write leaves to user space; each vCPU also halts once.
    let uexit = |id| sample(&m, "pve_kvm_tracepoint_events_total", &[("id", id), ("event", "kvm_userspace_exit")]);
    assert_eq!(uexit("100"), Some(1001.0), "{m}");
    assert_eq!(uexit("101"), Some(602.0), "{m}");
    // The same exits by reason, read at the format file's offsets.
    let by_reason = |id, reason| sample(&m, "pve_kvm_userspace_exits_total", &[("id", id), ("reason", reason)]);
    assert_eq!(by_reason("100", "io"), Some(1000.0), "{m}");
    assert_eq!(by_reason("100", "hlt"), Some(1.0), "{m}");
    assert_eq!(by_reason("101", "io"), Some(600.0), "{m}");
    assert_eq!(by_reason("101", "hlt"), Some(2.0), "{m}");
    // Every program loads, passes the verifier and attaches on this kernel (kvm_exit, kvm_entry
    // and kvm_vcpu_wakeup never fire on this machine's PVM backend, but they are attached).
    for program in [
        "count_userspace_exit",
        "kvm_exit",
        "kvm_entry",
        "vcpu_wakeup",
        "sched_switch",
        "sched_wakeup",
        "sched_wakeup_new",
    ] {
        assert_eq!(sample(&m, "pve_exporter_ebpf_program_attached", &[("program", program)]), Some(1.0), "{program}");
    }
    // The procfs families of the same VMs.
    assert_eq!(sample(&m, "pve_kvm_vcores", &[("id", "101")]), Some(2.0));
    assert_eq!(sample(&m, "pve_kvm_maxmem_bytes", &[("id", "100")]), Some((32u64 << 20) as f64));
    let pid = g100.pid.to_string();
    assert_eq!(sample(&m, "pve_kvm_info", &[("id", "100"), ("pid", &pid), ("name", "test100")]), Some(1.0), "{m}");
    assert!(sample(&m, "pve_kvm_threads", &[("id", "101")]).unwrap_or(0.0) >= 3.0, "main thread + 2 vCPU threads");
    assert!(sample(&m, "pve_kvm_cpu_seconds_total", &[("id", "100"), ("mode", "system")]).is_some());

    // A VM that stops disappears from the next scrape; the other stays, counts unchanged.
    drop(g100);
    let m = daemon.get("/metrics");
    assert!(common::process_series(&m, "100").is_empty(), "stopped VM 100 still reported:\n{m}");
    assert_eq!(sample(&m, "pve_guest_up", &[("id", "100")]), Some(0.0), "its config stays: a stopped guest");
    assert_eq!(sample(&m, "pve_kvm_tracepoint_events_total", &[("id", "101"), ("event", "kvm_pio")]), Some(600.0));
    assert_eq!(sample(&m, "pve_exporter_collector_success", &[("collector", "ebpf")]), Some(1.0));
    drop(g101);
}

#[test]
fn procfs_mode_when_ebpf_is_off() {
    require_privileges();
    let root = host_root(&[102]);
    let daemon = Daemon::start(root.path(), &["--ebpf", "off"]);
    let _g = Guest::start(102, 1, 10, root.path());
    let m = daemon.get("/metrics");
    assert_eq!(sample(&m, "pve_exporter_ebpf_enabled", &[]), Some(0.0));
    assert_eq!(
        sample(&m, "pve_exporter_ebpf_info", &[("mode", "procfs"), ("reason", "disabled by --ebpf off")]),
        Some(1.0),
        "{m}"
    );
    assert!(!m.contains("pve_kvm_tracepoint_events_total"));
    assert_eq!(sample(&m, "pve_kvm_vcores", &[("id", "102")]), Some(1.0), "{m}");
}

#[test]
fn a_vm_without_config_is_not_reported_and_a_vmid_is_reported_once() {
    require_privileges();
    let root = host_root(&[103, 104]);
    std::fs::remove_file(root.path().join("etc/pve/qemu-server/104.conf")).expect("rm"); // 104: migrating in
    let daemon = Daemon::start(root.path(), &["--ebpf", "off"]);
    let a = Guest::start(103, 1, 1, root.path());
    let _b = Guest::start(104, 1, 1, root.path());
    let m = daemon.get("/metrics");
    assert!(sample(&m, "pve_kvm_info", &[("id", "103")]).is_some(), "{m}");
    assert!(!m.contains("id=\"104\""), "{m}");
    // A second process claiming vmid 103 must not duplicate its series (Prometheus would
    // reject the whole scrape): the older one stays, unless PVE's pid file names the other.
    let dup_dir = tempfile::tempdir().expect("tempdir");
    let dup = Guest::start(103, 1, 1, dup_dir.path());
    let m = daemon.get("/metrics");
    assert_eq!(m.matches("pve_kvm_info{id=\"103\"").count(), 1, "{m}");
    assert!(sample(&m, "pve_kvm_info", &[("id", "103"), ("pid", &a.pid.to_string())]).is_some(), "{m}");
    std::fs::create_dir_all(root.path().join("var/run/qemu-server")).expect("mkdir");
    std::fs::write(root.path().join("var/run/qemu-server/103.pid"), format!("{}\n", dup.pid)).expect("pid file");
    let m = daemon.get("/metrics");
    assert_eq!(m.matches("pve_kvm_info{id=\"103\"").count(), 1, "{m}");
    assert!(sample(&m, "pve_kvm_info", &[("id", "103"), ("pid", &dup.pid.to_string())]).is_some(), "{m}");
}

#[test]
fn http_endpoints_and_formats() {
    require_privileges();
    let root = host_root(&[]);
    let daemon = Daemon::start(root.path(), &["--ebpf", "off", "--no-collector.kvm_debugfs"]);
    let (st, _, body) = daemon.try_get("/healthz", None).expect("healthz");
    assert_eq!((st, body.as_str()), (200, "ok\n"));
    let (st, ctype, body) = daemon.try_get("/", None).expect("index");
    assert_eq!(st, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(body.contains("href=\"/metrics\"") && body.contains("procfs"), "{body}");
    // The page lists every line of the collector registry with its switch.
    for e in pve_exporter::collector::REGISTRY {
        // kvm_debugfs shows off in this run (as before); ppe is off by default.
        let state = if e.name == "kvm_debugfs" || !e.default_on { "off" } else { "on" };
        assert!(body.contains(&format!("<td><code>{}</code></td><td>{state}</td>", e.name)), "{}: {body}", e.name);
    }
    let (st, ctype, text) = daemon.try_get("/metrics", None).expect("metrics");
    assert_eq!((st, ctype.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"));
    assert!(text.contains("# TYPE pve_exporter_build_info gauge") && !text.contains("# EOF"));
    let (st, ctype, om) = daemon
        .try_get("/metrics", Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"))
        .expect("metrics");
    assert_eq!((st, ctype.as_str()), (200, "application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(om.ends_with("# EOF\n"), "{om}");
    let (st, _, _) = daemon.try_get("/nope", None).expect("404");
    assert_eq!(st, 404);
}

/// promtool (Prometheus' own linter) accepts a real scrape with VMs and eBPF counters.
#[test]
fn promtool_accepts_a_real_scrape() {
    require_privileges();
    let root = host_root(&[105]);
    let daemon = Daemon::start(root.path(), &[]);
    let _g = Guest::start(105, 1, 50, root.path());
    let m = daemon.get("/metrics");
    assert!(m.contains("pve_kvm_info{"), "{m}");
    common::promtool_accepts(&m);
}

/// /etc/pve hangs (pmxcfs stuck): the scrape still answers 200, only pve_config fails, and
/// concurrent scrapes wait for one shared collection instead of each starting one.
#[test]
fn hung_pmxcfs_costs_only_its_collector_and_scrapes_share_a_collection() {
    require_privileges();
    let root = host_root(&[]);
    let daemon = Daemon::start(root.path(), &["--ebpf", "off", "--pmxcfs-timeout", "1500ms"]);
    // Only now (the start-up collection is done) does /etc/pve hang: a FIFO without a writer
    // blocks whoever opens it, like a read from a hung FUSE file system. user.cfg is re-read
    // because its stamp changes.
    let fifo = root.path().join("etc/pve/user.cfg");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    let port = daemon.port;
    let bodies: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(100 * i));
                    let (st, _, body) = common::http_get(port, "/metrics", None).expect("GET");
                    assert_eq!(st, 200);
                    body
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("scrape")).collect()
    });
    let durations: Vec<f64> =
        bodies.iter().map(|b| sample(b, "pve_scrape_duration_seconds", &[]).expect("duration")).collect();
    for (b, d) in bodies.iter().zip(&durations) {
        assert_eq!(sample(b, "pve_exporter_collector_success", &[("collector", "pve_config")]), Some(0.0), "{b}");
        assert_eq!(sample(b, "pve_exporter_collector_success", &[("collector", "kvm")]), Some(1.0), "{b}");
        // Same collection: the very same duration figure; and it waited for the timeout.
        assert_eq!(*d, durations[0]);
        assert!(*d >= 1.4, "collection took {d}s; the pmxcfs timeout is 1.5 s");
    }
    // The next scrape does not wait again for the still-hung read: it fails fast.
    let m = daemon.get("/metrics");
    let d = sample(&m, "pve_scrape_duration_seconds", &[]).expect("duration");
    assert!(d < 1.0, "second scrape waited {d}s on a read known to hang");
    assert_eq!(sample(&m, "pve_exporter_collector_success", &[("collector", "pve_config")]), Some(0.0));
}

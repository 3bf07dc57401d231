//! The scrape answers in time whatever hangs, tried as an operator would meet it, with the
//! daemon's production time limits (none is shortened here):
//! - a real QEMU stopped with SIGSTOP (as a main loop stuck on a hung NFS or Ceph volume) while
//!   a real Prometheus scrapes with its default 10 s timeout;
//! - a real FUSE file system that stalls every operation, mounted where pmxcfs (/etc/pve) and an
//!   NFS storage are;
//! - back-to-back requests within `--min-collection-interval` share one collection.
//!
//! Need root (FUSE mounts, tap devices, KVM test guests) and QEMU (`cargo xtask setup`).

mod common;
mod ops;
mod prom;
mod stallfs;
mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::{Daemon, Guest, host_root, require_privileges, sample};
use prom::{Prometheus, value};
use stallfs::StallFs;
use support::{Qemu, VmSpec, link_own_path};

/// A GET /metrics as Prometheus sends it, with its scrape timeout in the header: (status,
/// body, how long the answer took).
fn scrape(port: u16, timeout_header: &str) -> (u16, String, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain;version=0.0.4\r\n\
         X-Prometheus-Scrape-Timeout-Seconds: {timeout_header}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("answer");
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string(), took)
}

fn success(m: &str, collector: &str) -> Option<f64> {
    sample(m, "pve_exporter_collector_success", &[("collector", collector)])
}

/// Scrape until `ok` holds (each scrape as Prometheus would, 10 s timeout), at most `limit`.
fn scrape_until(port: u16, limit: Duration, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (st, m, took) = scrape(port, "10");
        eprintln!("waiting for {what}: a scrape answered in {took:?}");
        assert_eq!(st, 200, "{m}");
        assert!(took < Duration::from_secs(10), "answered after {took:?}, beyond the scrape timeout of 10 s");
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}:\n{m}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

const STORAGE_CFG: &str = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n\n\
nfs: nfs1\n\texport /srv/nfs\n\tpath /mnt/pve/nfs1\n\tserver nfs.invalid\n\tcontent images\n";

/// pmxcfs hangs, then an NFS storage hangs: each scrape still answers before its deadline, the
/// stuck part costs its own series (and after the first scrape no time), `/healthz` says what
/// hangs, and everything rejoins once the mounts answer again.
#[test]
fn a_stalled_pmxcfs_or_storage_mount_costs_its_series_not_the_scrape() {
    require_privileges();
    let root = host_root(&[970]);
    let etc_pve = root.path().join("etc/pve");
    std::fs::remove_dir_all(&etc_pve).expect("rm etc/pve");
    std::fs::create_dir_all(root.path().join("var/lib/vz")).expect("mkdir");
    let pmxcfs = StallFs::mount(
        &etc_pve,
        &[("qemu-server/970.conf", "memory: 64\n"), ("user.cfg", "pool:prod::970::\n"), ("storage.cfg", STORAGE_CFG)],
        &["nodes", "ha"],
    );
    let nfs = StallFs::mount(&root.path().join("mnt/pve/nfs1"), &[("images/970/vm-970-disk-0.raw", "")], &[]);
    let _guest = Guest::start(970, 1, 1, root.path());
    let daemon = Daemon::start(root.path(), &["--ebpf", "off"]);
    let _release = (pmxcfs.release_on_drop(), nfs.release_on_drop());
    let port = daemon.port;

    let m = scrape_until(port, Duration::from_secs(30), "a first complete scrape", |m| {
        ["pve_config", "kvm", "storage"].iter().all(|c| success(m, c) == Some(1.0))
    });
    assert_eq!(sample(&m, "pve_kvm_info", &[("id", "970"), ("pool", "prod")]).map(|_| ()), Some(()), "{m}");
    let nfs_size = [("name", "nfs1"), ("type", "nfs")];
    assert!(sample(&m, "pve_node_storage_size_bytes", &nfs_size).is_some(), "{m}");

    eprintln!("step: pmxcfs stalls");
    // pmxcfs hangs. A scrape whose Prometheus allows 3 s answers within them, although
    // --pmxcfs-timeout is 5 s: every wait is capped by the scrape's deadline (3 s - 0.5 s).
    pmxcfs.stall(true);
    let (st, m, took) = scrape(port, "3");
    eprintln!("pmxcfs stalled: first scrape (3 s timeout) answered in {took:?}");
    assert_eq!(st, 200, "{m}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}, beyond the scrape timeout of 3 s");
    assert!(pmxcfs.stalled_ops() > 0, "the daemon never met the stalled pmxcfs");
    assert_eq!(success(&m, "pve_config"), Some(0.0), "{m}");
    // The VM is still reported (from /proc; without the config check, as its pool is unknown).
    assert_eq!(success(&m, "kvm"), Some(1.0), "{m}");
    assert!(sample(&m, "pve_kvm_info", &[("id", "970")]).is_some(), "{m}");
    assert!(sample(&m, "pve_node_load1", &[]).is_some() || m.contains("pve_node_load1{"), "{m}");
    // The following scrapes do not wait for pmxcfs again: it is known to hang.
    for _ in 0..3 {
        let (st, m, took) = scrape(port, "10");
        assert_eq!(st, 200);
        eprintln!("pmxcfs stalled: a following scrape answered in {took:?}");
        assert!(took < Duration::from_secs(2), "a scrape waited {took:?} on a pmxcfs known to hang:\n{m}");
        assert_eq!(success(&m, "pve_config"), Some(0.0), "{m}");
        assert_eq!(success(&m, "storage"), Some(0.0), "{m}");
        assert!(sample(&m, "pve_kvm_info", &[("id", "970")]).is_some(), "{m}");
    }
    let (st, _, health) = daemon.try_get("/healthz", None).expect("healthz");
    assert_eq!(st, 503, "{health}");
    assert!(health.contains("/etc/pve (pmxcfs)"), "{health}");
    // The log names what hangs, once per collector that starts failing; the VMs' collector
    // does not fail.
    let limit = Duration::from_secs(5);
    let line = daemon.wait_for_log("collector pve_config failed: ", limit);
    assert!(line.contains(" WARN ") && line.contains("etc/pve: pmxcfs: "), "{line}");
    assert!(daemon.wait_for_log("collector storage failed: ", limit).contains("storage.cfg: pmxcfs: "));
    assert!(daemon.log_lines("collector kvm failed").is_empty(), "{}", daemon.logs());

    eprintln!("step: NFS stalls");
    // pmxcfs answers again; the NFS storage hangs.
    pmxcfs.stall(false);
    nfs.stall(true);
    let m = scrape_until(port, Duration::from_secs(90), "pmxcfs rejoining", |m| success(m, "pve_config") == Some(1.0));
    assert!(sample(&m, "pve_kvm_info", &[("id", "970"), ("pool", "prod")]).is_some(), "{m}");
    let m =
        scrape_until(port, Duration::from_secs(30), "the NFS stall showing", |m| success(m, "storage") == Some(0.0));
    assert!(nfs.stalled_ops() > 0, "the daemon never met the stalled NFS mount");
    assert!(sample(&m, "pve_node_storage_size_bytes", &nfs_size).is_none(), "{m}");
    // The local storage is still sized.
    assert!(sample(&m, "pve_node_storage_size_bytes", &[("name", "local"), ("type", "dir")]).is_some(), "{m}");
    for _ in 0..3 {
        let (st, m, took) = scrape(port, "10");
        assert_eq!(st, 200);
        eprintln!("NFS stalled: a following scrape answered in {took:?}");
        assert!(took < Duration::from_secs(2), "a scrape waited {took:?} on a storage known to hang:\n{m}");
        assert_eq!(success(&m, "pve_config"), Some(1.0), "{m}");
    }
    let (st, _, health) = daemon.try_get("/healthz", None).expect("healthz");
    assert_eq!(st, 503, "{health}");
    assert!(health.contains("mnt/pve/nfs1"), "{health}");

    eprintln!("step: both answer");
    // Both answer: everything rejoins, nothing stays hung.
    nfs.stall(false);
    let m = scrape_until(port, Duration::from_secs(90), "the storage rejoining", |m| {
        success(m, "storage") == Some(1.0) && success(m, "pve_config") == Some(1.0)
    });
    assert!(sample(&m, "pve_node_storage_size_bytes", &nfs_size).is_some(), "{m}");
    let (st, _, health) = daemon.try_get("/healthz", None).expect("healthz");
    assert_eq!((st, health.as_str()), (200, "ok\n"));
    // And says so.
    for c in ["pve_config", "storage"] {
        daemon.wait_for_log(&format!("collector {c} works again"), limit);
    }
    drop(_release);
    drop(daemon);
    drop((pmxcfs, nfs));
}

/// A group of collectors that hangs where no time limit reaches (here: /proc itself, on a FUSE
/// file system that stalls; on a real host, a read of a process stuck in the kernel) does not
/// hold the scrape: its last good values are replayed with their age, its collectors fail,
/// `/healthz` says so, and fresh values return once it answers.
#[test]
fn a_hung_collector_group_is_replayed_from_its_last_good_values() {
    require_privileges();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hosts/pve-basic");
    let root = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(fixture.join("etc"), root.path().join("etc")).expect("symlink etc");
    // The fixture's /proc (regular files: the VM processes, meminfo) on a stallable mount.
    let mut files: Vec<(String, String)> = Vec::new();
    let mut dirs = vec![fixture.join("proc")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("fixture proc").flatten() {
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                dirs.push(e.path());
            } else if ft.is_file() {
                let rel = e.path().strip_prefix(fixture.join("proc")).expect("below").to_string_lossy().into_owned();
                files.push((rel, std::fs::read_to_string(e.path()).expect("read")));
            }
        }
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let proc = StallFs::mount(&root.path().join("proc"), &files, &[]);
    let daemon = Daemon::start(root.path(), &["--ebpf", "off", "--vm-source", "pve"]);
    let _release = proc.release_on_drop();
    let port = daemon.port;
    let age = |m: &str| sample(m, "pve_exporter_collector_data_age_seconds", &[("collector", "kvm")]);
    let m = scrape_until(port, Duration::from_secs(30), "a fresh scrape", |m| success(m, "kvm") == Some(1.0));
    assert_eq!(age(&m), Some(0.0), "{m}");
    let vms = |m: &str| sample(m, "pve_kvm_info", &[("id", "100")]).is_some();
    assert!(vms(&m), "{m}");

    proc.stall(true);
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let (st, m, took) = scrape(port, "3");
        assert_eq!(st, 200, "{m}");
        assert!(took < Duration::from_secs(3), "answered after {took:?}, beyond the scrape timeout of 3 s");
        assert_eq!(success(&m, "kvm"), Some(0.0), "{m}");
        let a = age(&m).expect("age");
        assert!(a > 0.0 && a < 120.0, "replayed values are {a} s old:\n{m}");
        assert!(vms(&m), "the last good values of the VMs are replayed:\n{m}");
    }
    assert!(proc.stalled_ops() > 0, "the daemon never met the stalled /proc");
    // /healthz tells once the group runs more than a second past its deadline.
    std::thread::sleep(Duration::from_millis(1500));
    let (st, _, health) = daemon.try_get("/healthz", None).expect("healthz");
    assert_eq!(st, 503, "{health}");
    assert!(health.contains("collector group vms past its deadline"), "{health}");

    proc.stall(false);
    let m = scrape_until(port, Duration::from_secs(30), "fresh values", |m| success(m, "kvm") == Some(1.0));
    assert_eq!(age(&m), Some(0.0), "{m}");
    let (st, _, health) = daemon.try_get("/healthz", None).expect("healthz");
    assert_eq!((st, health.as_str()), (200, "ok\n"));
    drop(_release);
    drop(daemon);
    drop(proc);
}

/// Samples of `name` (job `pve`) in the last `range`, as (timestamp, value).
fn raw_samples(p: &Prometheus, name: &str, range: &str) -> Vec<(f64, f64)> {
    let r = p.query(&format!("{name}{{job=\"pve\"}}[{range}]"));
    let Some(series) = r.first() else { return Vec::new() };
    series["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v[0].as_f64()?, v[1].as_str()?.parse().ok()?)))
        .collect()
}

/// A real QEMU stops (SIGSTOP) while a real Prometheus scrapes with its default 10 s timeout:
/// every scrape answers (up stays 1), the first within the timeout and the following ones in
/// normal time; the other VM keeps all its series; after SIGCONT the VM rejoins.
#[test]
fn a_stopped_qemu_costs_its_own_series_not_the_scrape() {
    require_privileges();
    let root = host_root(&[950, 951]);
    link_own_path(root.path());
    let healthy = Qemu::start(root.path(), 950, &VmSpec::default());
    let stuck = Qemu::start(root.path(), 951, &VmSpec::default());
    let daemon = Daemon::start(root.path(), &["--ebpf", "off"]);
    // Prometheus's defaults: scrape_timeout 10 s (the interval may not be shorter).
    let prom = Prometheus::start(&format!(
        "global:\n  scrape_interval: 10s\nscrape_configs:\n  - job_name: pve\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        daemon.port
    ));
    let disk_io = |id: &str| format!("pve_kvm_disk_read_bytes_total{{job=\"pve\",id=\"{id}\"}}");
    // Both VMs' topology is cached by a first scrape.
    prom.wait_for(&disk_io("951"), |_| true, Duration::from_secs(60));

    // SAFETY: plain syscall on our own child.
    assert_eq!(unsafe { libc::kill(stuck.pid as i32, libc::SIGSTOP) }, 0);
    let stopped_at = Instant::now();
    let t_stop = prom.query("vector(time())").first().map(value).unwrap_or(0.0);
    // Four scrapes while it is stopped.
    let deadline = Instant::now() + Duration::from_secs(90);
    let after = loop {
        let s: Vec<(f64, f64)> =
            raw_samples(&prom, "scrape_duration_seconds", "3m").into_iter().filter(|(t, _)| *t > t_stop).collect();
        if s.len() >= 4 {
            break s;
        }
        assert!(Instant::now() < deadline, "Prometheus did not scrape 4 times in 90 s:\n{}", prom.log());
        std::thread::sleep(Duration::from_millis(500));
    };
    let up: Vec<(f64, f64)> = raw_samples(&prom, "up", "3m").into_iter().filter(|(t, _)| *t > t_stop).collect();
    assert!(up.iter().all(|(_, v)| *v == 1.0), "a scrape failed while one VM was stopped: {up:?}");
    // The first may wait up to the deadline (10 s - 0.5 s); the ones after do not wait at all
    // for the VM known to be stuck (this machine scrapes in milliseconds otherwise).
    assert!(after[0].1 < 10.0, "the first scrape took {} s", after[0].1);
    for (_, d) in &after[1..] {
        assert!(*d < 2.0, "a scrape after the first took {d} s with the stuck VM: {after:?}");
    }
    // The healthy VM keeps every series; the stopped one is still reported, without its
    // monitor's counters; qm says it failed.
    let now = |q: &str| prom.query(q);
    assert!(!now(&disk_io("950")).is_empty(), "VM 950 lost its disk series");
    assert!(!now("pve_kvm_nic_info{job=\"pve\",id=\"950\"}").is_empty());
    assert!(!now("pve_kvm_info{job=\"pve\",id=\"951\"}").is_empty(), "the stopped VM must still be listed");
    let qm = now("pve_exporter_collector_success{job=\"pve\",collector=\"qm\"}");
    assert_eq!(qm.first().map(value), Some(0.0), "{qm:?}");
    // The log names the VM, once; not the healthy one.
    let stuck_line = "VM 951: its monitor did not answer in time: not waited on until it does";
    assert!(daemon.wait_for_log(stuck_line, Duration::from_secs(5)).contains(" WARN "));
    assert_eq!(daemon.log_lines(stuck_line).len(), 1, "{}", daemon.logs());
    assert!(daemon.log_lines("VM 950:").is_empty(), "{}", daemon.logs());
    assert!(daemon.wait_for_log("collector qm failed: ", Duration::from_secs(5)).contains("951"));

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(stuck.pid as i32, libc::SIGCONT) }, 0);
    let stopped_for = stopped_at.elapsed();
    // It rejoins: its disk counters come back fresh and qm works again.
    let q = format!("timestamp({}) > time() - 15", disk_io("951"));
    prom.wait_for(&q, |_| true, Duration::from_secs(120));
    prom.wait_for(
        "pve_exporter_collector_success{job=\"pve\",collector=\"qm\"} == 1",
        |_| true,
        Duration::from_secs(60),
    );
    daemon.wait_for_log("VM 951: its monitor answers again", Duration::from_secs(5));
    daemon.wait_for_log("collector qm works again", Duration::from_secs(5));
    let durations: Vec<f64> =
        raw_samples(&prom, "scrape_duration_seconds", "10m").into_iter().map(|(_, v)| v).collect();
    eprintln!("stopped for {stopped_for:?}; scrape durations (s) over the test: {durations:?}");
    drop((healthy, stuck, daemon, prom));
}

/// A request within `--min-collection-interval` (1 s, the default) of the last collection gets
/// that collection: a flood of requests, or the second server of a Prometheus HA pair, does not
/// make the node's monitors answer again. Each collection opens one QMP connection per VM, so
/// a flood from 8 clients opens at most about one per VM per second.
#[test]
fn a_flood_of_requests_makes_at_most_one_collection_per_interval() {
    require_privileges();
    let root = host_root(&[952]);
    link_own_path(root.path());
    let _vm = Qemu::start(root.path(), 952, &VmSpec::default());
    let daemon = Daemon::start(root.path(), &["--ebpf", "off", "--min-collection-interval", "1s"]);
    let (_, a, _) = scrape(daemon.port, "10");
    let (_, b, _) = scrape(daemon.port, "10");
    assert_eq!(a, b, "a request right after a collection got a new one");
    assert!(sample(&a, "pve_kvm_disk_read_bytes_total", &[("id", "952"), ("disk_name", "scsi0")]).is_some(), "{a}");

    let flood = Duration::from_secs(5);
    let started = Instant::now();
    let bodies: Vec<String> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut seen = Vec::new();
                    while started.elapsed() < flood {
                        let (st, m, _) = scrape(daemon.port, "10");
                        assert_eq!(st, 200);
                        seen.push(m);
                    }
                    seen
                })
            })
            .collect();
        clients.into_iter().flat_map(|c| c.join().expect("client")).collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let mut collections: Vec<&String> = bodies.iter().collect();
    collections.sort();
    collections.dedup();
    eprintln!("{} requests in {secs:.1} s answered by {} collections", bodies.len(), collections.len());
    assert!(bodies.len() > 2 * collections.len(), "the flood was too slow to tell: {} requests", bodies.len());
    // One collection per interval, and one more at each end.
    assert!(collections.len() as f64 <= secs + 2.0, "{} collections in {secs:.1} s", collections.len());
    for m in &collections {
        assert!(sample(m, "pve_kvm_disk_read_bytes_total", &[("id", "952"), ("disk_name", "scsi0")]).is_some());
    }
}

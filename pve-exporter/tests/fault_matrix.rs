//! The fault matrix of docs/robustness.md: each fault an operator can meet, made with the real
//! component (a real QEMU and its QMP socket, `qm` on a pseudo-terminal, a storage tool, the
//! PVE API over TLS, the kernel's BPF, tracefs, file descriptor and cgroup limits, a full file
//! system), with the daemon's production limits (none is shortened here). Each test checks what
//! the operator sees (which series go, `pve_exporter_collector_success`, the log line), that
//! nothing else goes, and that everything comes back once the fault is gone.
//!
//! The scrapes are made as Prometheus makes them, with its default 10 s timeout in
//! `X-Prometheus-Scrape-Timeout-Seconds`; the one time asserted is that each answer came within
//! it. Needs root, /dev/kvm and QEMU (`cargo xtask setup`).

mod common;
mod ops;
mod pve_server;
mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Daemon, Guest, cgroup2_mounts, dechunk, host_root, require_privileges, sample};
use support::{Qemu, VmSpec, link_own_path};

/// Prometheus's default scrape timeout, sent with every scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a log line may take from the daemon to the test (it is read from a pipe).
const LOG_WAIT: Duration = Duration::from_secs(5);

/// GET /metrics as Prometheus sends it, with its default scrape timeout in the header; asserts
/// the answer is a 200 that came within that timeout, and returns its body.
#[track_caller]
fn scrape(port: u16) -> String {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain;version=0.0.4\r\n\
         X-Prometheus-Scrape-Timeout-Seconds: {}\r\nConnection: close\r\n\r\n",
        SCRAPE_TIMEOUT.as_secs()
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("answer");
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    eprintln!("scrape answered {status} in {took:?}");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(took < SCRAPE_TIMEOUT, "answered after {took:?}, beyond Prometheus's scrape timeout");
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() }
}

/// Scrape until `ok` holds, at most `limit` (each scrape checked as in [`scrape`]).
#[track_caller]
fn scrape_until(port: u16, limit: Duration, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let m = scrape(port);
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}:\n{m}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn success(m: &str, collector: &str) -> Option<f64> {
    sample(m, "pve_exporter_collector_success", &[("collector", collector)])
}

/// Whether the scrape has a sample of `name` with (at least) `labels`.
fn has(m: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    sample(m, name, labels).is_some()
}

/// The names of the families with a sample whose `id` is `id` (the `guest` collector's, which
/// a configured guest has running or not, left out).
fn families_of(m: &str, id: &str) -> std::collections::BTreeSet<String> {
    common::process_series(m, id).iter().filter_map(|l| l.split(['{', ' ']).next()).map(String::from).collect()
}

// ---------------------------------------------------------------------------------------------
// QEMU monitors.

/// `--qm-path`: the `qm` test double (which talks to the VM's real QEMU), hanging on the
/// commands of `hang` (support's wrapper, replaced atomically).
fn install_qm(root: &Path, log: &Path, hang: &[u32]) -> String {
    support::qm_wrapper(root, log, hang).to_string_lossy().into_owned()
}

/// The disk I/O counters of a VM: what only its monitor gives (the topology is cached).
fn disk_io(m: &str, id: &str) -> bool {
    has(m, "pve_kvm_disk_read_bytes_total", &[("id", id), ("disk_name", "scsi0")])
}

/// `qm monitor` hangs for one VM (PVE's `qm` through a pseudo-terminal, `--qm-mode qm`): the
/// first scrape waits for it at most until its deadline, that VM loses its monitor's series
/// (disk I/O) and `qm` fails, with one warning naming the VM; the other VM and every other
/// collector keep everything; the VM rejoins once its `qm` answers again.
#[test]
fn a_hung_qm_costs_its_vms_monitor_series() {
    require_privileges();
    let root = host_root(&[711, 712]);
    link_own_path(root.path());
    let _healthy = Qemu::start(root.path(), 711, &VmSpec::default());
    let _stuck = Qemu::start(root.path(), 712, &VmSpec::default());
    let log = root.path().join("qm.log");
    let qm = install_qm(root.path(), &log, &[]);
    let daemon = Daemon::start(root.path(), &["--ebpf", "off", "--qm-mode", "qm", "--qm-path", &qm]);
    let m = scrape(daemon.port);
    assert!(disk_io(&m, "711") && disk_io(&m, "712"), "{m}");
    let before_711 = families_of(&m, "711");

    // From now on qm hangs on VM 712's commands (a QEMU whose main loop is stuck).
    install_qm(root.path(), &log, &[712]);
    let m = scrape_until(daemon.port, Duration::from_secs(60), "qm failing", |m| success(m, "qm") == Some(0.0));
    // The scrape that waited for the hung qm (until its deadline) has everything else too.
    assert_eq!(families_of(&m, "711"), before_711, "{m}");
    assert_eq!(success(&m, "disk"), Some(1.0), "{m}");
    let line = daemon.wait_for_log("VM 712: its monitor did not answer in time: not waited on until it does", LOG_WAIT);
    assert!(line.contains(" WARN "), "{line}");
    assert!(daemon.wait_for_log("collector qm failed: ", LOG_WAIT).contains("712"));
    for _ in 0..3 {
        let m = scrape(daemon.port);
        // VM 712: still reported from /proc, with its cached NIC and disk topology, without
        // the disk I/O counters only its monitor gives.
        assert!(has(&m, "pve_kvm_info", &[("id", "712")]), "{m}");
        assert!(has(&m, "pve_kvm_disk_info", &[("id", "712"), ("disk_name", "scsi0")]), "{m}");
        assert!(!disk_io(&m, "712"), "{m}");
        // VM 711 keeps every family; only qm fails.
        assert_eq!(families_of(&m, "711"), before_711, "{m}");
        assert_eq!(success(&m, "qm"), Some(0.0), "{m}");
        for c in ["pve_config", "kvm", "nic", "disk", "balloon", "vcpu", "guest", "node_status"] {
            assert_eq!(success(&m, c), Some(1.0), "{c}\n{m}");
        }
    }
    assert!(daemon.log_lines("VM 711").is_empty(), "{}", daemon.logs());
    assert_eq!(daemon.log_lines("VM 712: its monitor did not answer").len(), 1, "{}", daemon.logs());

    // qm answers again: a try in the background finds it, and the VM rejoins.
    install_qm(root.path(), &log, &[]);
    let m = scrape_until(daemon.port, Duration::from_secs(120), "VM 712 rejoining", |m| {
        disk_io(m, "712") && success(m, "qm") == Some(1.0)
    });
    assert_eq!(families_of(&m, "711"), before_711, "{m}");
    daemon.wait_for_log("VM 712: its monitor answers again", LOG_WAIT);
    daemon.wait_for_log("collector qm works again", LOG_WAIT);
}

/// A proxy in front of a real QEMU's QMP socket: passes everything through, or, while `cut`
/// is set, sends QEMU's greeting and its answer to `qmp_capabilities` and then only the first
/// half of the next answer before it closes the connection (QEMU or the socket going away in
/// the middle of an answer).
struct QmpProxy {
    cut: Arc<AtomicBool>,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
}

impl QmpProxy {
    fn start(front: &Path, back: std::path::PathBuf) -> QmpProxy {
        let listener = UnixListener::bind(front).expect("bind the proxy socket");
        let cut = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (c, n) = (cut.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = UnixStream::connect(&back) else { return };
                let (c, n) = (c.clone(), n.clone());
                std::thread::spawn(move || Self::relay(client, server, &c, &n));
            }
        });
        QmpProxy { cut, cuts }
    }

    fn relay(mut client: UnixStream, server: UnixStream, cut: &AtomicBool, cuts: &std::sync::atomic::AtomicUsize) {
        let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone()) else { return };
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_server);
            let _ = to_server.shutdown(std::net::Shutdown::Write);
        });
        let mut reader = BufReader::new(server);
        for n in 1.. {
            let mut line = Vec::new();
            if !reader.read_until(b'\n', &mut line).is_ok_and(|len| len > 0) {
                break;
            }
            // 1: the greeting, 2: the answer to qmp_capabilities, 3: the first answer to a query.
            if n == 3 && cut.load(Ordering::SeqCst) {
                let _ = client.write_all(&line[..line.len() / 2]);
                cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
            if client.write_all(&line).is_err() {
                break;
            }
        }
        let _ = client.shutdown(std::net::Shutdown::Both);
        let _ = reader.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

/// A VM's QMP connection closes in the middle of an answer: that VM loses its monitor's
/// series (disk I/O) and `qm` fails with the reason, at once (no waiting: the connection is
/// closed, not silent); the other VM and every other collector keep everything; the next
/// scrape after the socket answers whole again has the VM back.
#[test]
fn a_qmp_connection_closing_mid_answer_costs_its_vms_monitor_series() {
    require_privileges();
    let root = host_root(&[713, 714]);
    link_own_path(root.path());
    let _vm = Qemu::start(root.path(), 713, &VmSpec::default());
    let _other = Qemu::start(root.path(), 714, &VmSpec::default());
    // The proxy takes VM 713's socket path; QEMU's own socket moves aside.
    let run = root.path().join("var/run/qemu-server");
    std::fs::rename(run.join("713.qmp"), run.join("713.qemu.qmp")).expect("move QEMU's socket");
    let proxy = QmpProxy::start(&run.join("713.qmp"), run.join("713.qemu.qmp"));
    let daemon = Daemon::start(root.path(), &["--ebpf", "off"]);
    let m = scrape(daemon.port);
    assert!(disk_io(&m, "713") && disk_io(&m, "714"), "through the proxy as without it:\n{m}");
    assert_eq!(success(&m, "qm"), Some(1.0), "{m}");
    let before_714 = families_of(&m, "714");

    proxy.cut.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let m = scrape(daemon.port);
        assert!(has(&m, "pve_kvm_info", &[("id", "713")]), "{m}");
        assert!(has(&m, "pve_kvm_disk_info", &[("id", "713"), ("disk_name", "scsi0")]), "cached topology\n{m}");
        assert!(!disk_io(&m, "713"), "{m}");
        assert_eq!(families_of(&m, "714"), before_714, "{m}");
        assert_eq!(success(&m, "qm"), Some(0.0), "{m}");
        for c in ["pve_config", "kvm", "nic", "disk", "balloon", "vcpu", "guest", "node_status"] {
            assert_eq!(success(&m, c), Some(1.0), "{c}\n{m}");
        }
    }
    assert!(proxy.cuts.load(Ordering::SeqCst) >= 3, "the proxy never cut an answer");
    let line = daemon.wait_for_log("collector qm failed: ", LOG_WAIT);
    assert!(line.contains(" WARN ") && line.contains("713") && line.contains("closed the connection"), "{line}");
    assert_eq!(daemon.log_lines("collector qm failed").len(), 1, "{}", daemon.logs());
    // Closed, not silent: the VM is asked again on the next scrape, not put under back-off.
    assert!(daemon.log_lines("did not answer in time").is_empty(), "{}", daemon.logs());
    assert!(daemon.log_lines("VM 714").is_empty(), "{}", daemon.logs());

    proxy.cut.store(false, Ordering::SeqCst);
    let m = scrape(daemon.port);
    assert!(disk_io(&m, "713"), "{m}");
    assert_eq!(families_of(&m, "714"), before_714, "{m}");
    assert_eq!(success(&m, "qm"), Some(1.0), "{m}");
    daemon.wait_for_log("collector qm works again", LOG_WAIT);
}

// ---------------------------------------------------------------------------------------------
// Storage tools.

/// dir `local` (sized by statvfs) and two zfspool storages (sized by `zfs get` and `zpool
/// list`), as the recorded outputs of fixtures/commands/pve-storage answer them.
const ZFS_STORAGE_CFG: &str = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n\n\
zfspool: local-zfs\n\tpool rpool/data\n\tsparse\n\tcontent images,rootdir\n\n\
zfspool: tank-vm\n\tpool tank\n\tcontent rootdir,images\n";

/// A `--command-path` with the recorded `zpool` of the pve-storage fixture and `zfs` as given
/// (replaced atomically, so a run never reads half a script).
fn storage_tools(dir: &Path, zfs: &str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/commands/pve-storage");
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir bin");
    for f in ["zfs-get.out", "zpool-list.out"] {
        std::fs::copy(fixture.join(f), dir.join(f)).expect("copy recorded output");
    }
    std::fs::copy(fixture.join("bin/zpool"), dir.join("bin/zpool")).expect("copy zpool");
    let tmp = dir.join("bin/.zfs.new");
    std::fs::write(&tmp, zfs).expect("write zfs");
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, dir.join("bin/zfs")).expect("rename zfs");
}

/// `zfs` hangs (a pool whose disks stopped answering): the scrape waits for it at most
/// `--storage-timeout` (5 s), kills it, and is not held up by it again while it is under
/// back-off; the zfspool storages lose their sizes and `storage_zfs` fails with the reason;
/// `zpool list`, the statvfs-sized storage and every other collector keep theirs; once `zfs`
/// answers again a try finds it and the sizes return.
#[test]
fn a_hung_storage_command_costs_only_its_storages_sizes() {
    require_privileges();
    let root = host_root(&[]);
    std::fs::write(root.path().join("etc/pve/storage.cfg"), ZFS_STORAGE_CFG).expect("storage.cfg");
    std::fs::create_dir_all(root.path().join("var/lib/vz")).expect("mkdir");
    let tools = tempfile::tempdir().expect("tempdir");
    let runs = tools.path().join("zfs.runs");
    let hung = format!("#!/bin/sh\necho \"$$\" >> '{}'\nexec sleep 3600\n", runs.display());
    let recorded = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/commands/pve-storage/bin/zfs");
    let recorded = std::fs::read_to_string(recorded).expect("the recorded zfs");
    storage_tools(tools.path(), &recorded);
    let bin = tools.path().join("bin");
    let daemon = Daemon::start(root.path(), &["--ebpf", "off", "--command-path", bin.to_str().expect("utf-8")]);
    let size = |m: &str, name: &str| sample(m, "pve_node_storage_size_bytes", &[("name", name)]);
    let m = scrape(daemon.port);
    for name in ["local", "local-zfs", "tank-vm"] {
        assert!(size(&m, name).is_some(), "{name}\n{m}");
    }
    assert_eq!(success(&m, "storage_zfs"), Some(1.0), "{m}");

    storage_tools(tools.path(), &hung);
    let m = scrape_until(daemon.port, Duration::from_secs(30), "storage_zfs failing", |m| {
        success(m, "storage_zfs") == Some(0.0)
    });
    let line = daemon.wait_for_log("collector storage_zfs failed: ", LOG_WAIT);
    assert!(line.contains(" WARN ") && line.contains("zfs") && line.contains("killed"), "{line}");
    for m in [m, scrape(daemon.port), scrape(daemon.port)] {
        assert!(size(&m, "local-zfs").is_none() && size(&m, "tank-vm").is_none(), "{m}");
        assert!(size(&m, "local").is_some(), "{m}");
        assert!(has(&m, "pve_node_zpool_size_bytes", &[("pool", "rpool")]), "zpool still answers\n{m}");
        assert!(has(&m, "pve_node_storage_info", &[("name", "tank-vm")]), "{m}");
        assert_eq!(success(&m, "storage_zfs"), Some(0.0), "{m}");
        for c in ["storage", "pve_config", "kvm", "guest", "node_status"] {
            assert_eq!(success(&m, c), Some(1.0), "{c}\n{m}");
        }
    }
    // Every hung run was killed: none of them is left.
    let pids = std::fs::read_to_string(&runs).expect("zfs ran");
    for pid in pids.lines() {
        let deadline = Instant::now() + LOG_WAIT;
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "the hung zfs {pid} is still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    storage_tools(tools.path(), &recorded);
    let m = scrape_until(daemon.port, Duration::from_secs(120), "storage_zfs answering again", |m| {
        success(m, "storage_zfs") == Some(1.0)
    });
    assert!(size(&m, "local-zfs").is_some() && size(&m, "tank-vm").is_some(), "{m}");
    daemon.wait_for_log("collector storage_zfs works again", LOG_WAIT);
}

// ---------------------------------------------------------------------------------------------
// pmxcfs.

/// pmxcfs stops (pve-cluster stopped or restarting): /etc/pve is an empty directory. The VMs
/// are still reported from /proc under their vmids (without the pools user.cfg gave them),
/// `pve_config` fails with one warning that says pmxcfs is not mounted, and what only /etc/pve
/// knows goes: the guests' configs (`pve_guest_*`) and the storages; once pmxcfs is back, all
/// of it returns.
#[test]
fn a_missing_pmxcfs_keeps_the_vms_under_their_ids() {
    require_privileges();
    let root = host_root(&[715]);
    let etc = root.path().join("etc/pve");
    std::fs::write(etc.join("user.cfg"), "pool:prod::715::\n").expect("user.cfg");
    std::fs::write(etc.join("storage.cfg"), "dir: local\n\tpath /var/lib/vz\n\tcontent iso\n").expect("storage.cfg");
    std::fs::create_dir_all(root.path().join("var/lib/vz")).expect("mkdir");
    let _guest = Guest::start(715, 1, 1, root.path());
    let daemon = Daemon::start(root.path(), &["--ebpf", "off"]);
    let m = scrape(daemon.port);
    assert!(has(&m, "pve_kvm_info", &[("id", "715"), ("pool", "prod")]), "{m}");
    assert!(has(&m, "pve_guest_up", &[("id", "715")]), "{m}");
    assert!(has(&m, "pve_node_storage_size_bytes", &[("name", "local")]), "{m}");
    let vm_families = families_of(&m, "715");
    let healthy: Vec<(String, f64)> = ["kvm", "qm", "nic", "disk", "vcpu", "guest", "storage", "node_status"]
        .iter()
        .map(|c| (c.to_string(), success(&m, c).unwrap_or_else(|| panic!("{c} not reported\n{m}"))))
        .collect();

    // pmxcfs is not mounted: the mount point is an empty directory.
    let away = root.path().join("etc/pve.mounted");
    std::fs::rename(&etc, &away).expect("unmount /etc/pve");
    std::fs::create_dir(&etc).expect("the empty mount point");
    for _ in 0..3 {
        let m = scrape(daemon.port);
        assert!(has(&m, "pve_kvm_info", &[("id", "715"), ("pool", "")]), "{m}");
        assert_eq!(families_of(&m, "715"), vm_families, "{m}");
        assert!(!m.contains("id=\"test715\""), "the VM was renamed after its -name:\n{m}");
        assert_eq!(success(&m, "pve_config"), Some(0.0), "{m}");
        for (c, was) in &healthy {
            assert_eq!(success(&m, c), Some(*was), "{c}\n{m}");
        }
        assert!(!has(&m, "pve_guest_up", &[("id", "715")]), "{m}");
        assert!(!m.contains("pve_node_storage_"), "{m}");
    }
    let line = daemon.wait_for_log("collector pve_config failed: ", LOG_WAIT);
    assert!(line.contains(" WARN ") && line.contains("pmxcfs is not mounted"), "{line}");
    assert_eq!(daemon.log_lines("failed:").len(), 1, "one warning:\n{}", daemon.logs());

    std::fs::remove_dir(&etc).expect("rmdir");
    std::fs::rename(&away, &etc).expect("mount /etc/pve again");
    let m = scrape(daemon.port);
    assert!(has(&m, "pve_kvm_info", &[("id", "715"), ("pool", "prod")]), "{m}");
    assert!(has(&m, "pve_guest_up", &[("id", "715")]), "{m}");
    assert!(has(&m, "pve_node_storage_size_bytes", &[("name", "local")]), "{m}");
    assert_eq!(success(&m, "pve_config"), Some(1.0), "{m}");
    daemon.wait_for_log("collector pve_config works again", LOG_WAIT);
}

/// The daemon starts while pmxcfs is down (a node booting, pve-cluster failing): /etc/pve is
/// an empty mount point from the start, so the node was never seen as PVE. pmxcfs's database
/// (`/var/lib/pve-cluster/config.db`) says it is one: the VM keeps its vmid, `pve_config`
/// fails saying pmxcfs is not mounted, and everything returns once pmxcfs is there.
#[test]
fn a_daemon_started_while_pmxcfs_is_down_keeps_the_vms_under_their_ids() {
    require_privileges();
    let root = host_root(&[716]);
    let etc = root.path().join("etc/pve");
    let away = root.path().join("etc/pve.mounted");
    std::fs::rename(&etc, &away).expect("unmount /etc/pve");
    std::fs::create_dir(&etc).expect("the empty mount point");
    std::fs::create_dir_all(root.path().join("var/lib/pve-cluster")).expect("mkdir");
    std::fs::write(root.path().join("var/lib/pve-cluster/config.db"), b"SQLite format 3\0").expect("config.db");
    let _guest = Guest::start(716, 1, 1, root.path());
    let daemon = Daemon::start(root.path(), &["--ebpf", "off"]);
    for _ in 0..2 {
        let m = scrape(daemon.port);
        assert!(has(&m, "pve_kvm_info", &[("id", "716")]), "{m}");
        assert!(!m.contains("id=\"test716\""), "the VM was named after its -name:\n{m}");
        assert_eq!(success(&m, "pve_config"), Some(0.0), "{m}");
        assert_eq!(success(&m, "kvm"), Some(1.0), "{m}");
    }
    let line = daemon.wait_for_log("collector pve_config failed: ", LOG_WAIT);
    assert!(line.contains(" WARN ") && line.contains("pmxcfs is not mounted"), "{line}");

    std::fs::remove_dir(&etc).expect("rmdir");
    std::fs::rename(&away, &etc).expect("mount /etc/pve");
    let m = scrape(daemon.port);
    assert!(has(&m, "pve_guest_up", &[("id", "716")]), "{m}");
    assert_eq!(success(&m, "pve_config"), Some(1.0), "{m}");
    daemon.wait_for_log("collector pve_config works again", LOG_WAIT);
}

// ---------------------------------------------------------------------------------------------
// The PVE API.

const TOKEN: &str = "monitor@pve!metrics=5e9f5d3c-2a0b-4c1e-9f47-0d2b7f1a8c63";

/// What the relay in front of the API does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Relay {
    /// Pass it to the API server on this port.
    To(u16),
    /// Pass it on after this long (pveproxy overloaded).
    Slow(u16, Duration),
    /// Nothing listens on the port: connections are refused (pveproxy stopped).
    Down,
}

/// A TCP relay on a port of its own in front of the test API servers: the URL the daemon
/// knows stays the same while the API behind it goes down, gets slow, or is replaced by a
/// server whose certificate another CA signed (TLS passes through untouched).
struct ApiRelay {
    port: u16,
    mode: Arc<std::sync::Mutex<Relay>>,
    stop: Arc<AtomicBool>,
}

impl ApiRelay {
    fn start(to: u16) -> ApiRelay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().expect("address").port();
        let mode = Arc::new(std::sync::Mutex::new(Relay::To(to)));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (mode.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            while !s.load(Ordering::SeqCst) {
                let current = *m.lock().expect("mode");
                match (current, listener.take()) {
                    (Relay::Down, l) => {
                        // Closed: the kernel refuses connections to the port.
                        drop(l);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    (_, None) => {
                        // Back up on the same port (std sets SO_REUSEADDR).
                        listener = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
                        if listener.is_none() {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    (_, Some(l)) => {
                        l.set_nonblocking(true).expect("nonblocking");
                        match l.accept() {
                            Ok((conn, _)) => {
                                let mode = *m.lock().expect("mode");
                                std::thread::spawn(move || Self::pipe(conn, mode));
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                        listener = Some(l);
                    }
                }
            }
        });
        ApiRelay { port, mode, stop }
    }

    fn set(&self, mode: Relay) {
        *self.mode.lock().expect("mode") = mode;
        if mode == Relay::Down {
            let deadline = Instant::now() + LOG_WAIT;
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                assert!(Instant::now() < deadline, "the relay still accepts connections");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn pipe(client: TcpStream, mode: Relay) {
        let to = match mode {
            Relay::To(p) => p,
            Relay::Slow(p, d) => {
                std::thread::sleep(d);
                p
            }
            Relay::Down => return,
        };
        let _ = client.set_nodelay(true);
        let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else { return };
        let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else { return };
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut c_read, &mut s_write);
            let _ = s_write.shutdown(std::net::Shutdown::Write);
        });
        let (mut s_read, mut c_write) = (server, client);
        let _ = std::io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(std::net::Shutdown::Write);
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for ApiRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A central exporter's setup (`--pve-scope cluster`, a token, the cluster's CA) on a host
/// with a real guest, against the test API server through a relay.
struct ApiSetup {
    server: pve_server::PveServer,
    relay: ApiRelay,
    dir: tempfile::TempDir,
}

impl ApiSetup {
    fn new() -> ApiSetup {
        let server = pve_server::PveServer::start(TOKEN);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token");
        std::fs::set_permissions(dir.path().join("token"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        std::fs::write(dir.path().join("ca.pem"), &server.pki.ca_pem).expect("ca");
        let relay = ApiRelay::start(server.port);
        ApiSetup { server, relay, dir }
    }

    fn args(&self) -> Vec<String> {
        let f = |n: &str| self.dir.path().join(n).to_string_lossy().into_owned();
        ["--ebpf", "off", "--pve-scope", "cluster", "--pve-api-url", &self.relay.url()]
            .into_iter()
            .map(String::from)
            .chain(["--pve-api-token-file".into(), f("token"), "--pve-api-ca-file".into(), f("ca.pem")])
            .collect()
    }
}

/// The API collectors' runs in a scrape: `collector` label -> success, for the names that
/// start with one of the API collectors' (`node_status/pve1`, ...) and `pve_nodes`.
fn api_runs(m: &str) -> std::collections::BTreeMap<String, f64> {
    m.lines()
        .filter_map(|l| l.strip_prefix("pve_exporter_collector_success{collector=\""))
        .filter_map(|l| l.split_once("\"} "))
        .filter(|(c, _)| {
            ["pve_nodes", "node_status", "vm_pressure", "ha_status", "physical_disk"]
                .iter()
                .any(|n| c == n || c.starts_with(&format!("{n}/")))
        })
        .map(|(c, v)| (c.to_string(), v.parse().expect("a number")))
        .collect()
}

impl ApiSetup {
    /// The daemon with a real guest beside the API (its series are what must stay), after a
    /// first scrape in which every API collector worked; returns it with that scrape.
    fn daemon(&self, root: &Path) -> (Daemon, String) {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = Daemon::start(root, &args);
        let m = scrape(daemon.port);
        let runs = api_runs(&m);
        assert_eq!(runs.len(), 11, "pve_nodes, ha_status and three per node of pve1..pve3: {runs:?}");
        assert!(runs.values().all(|v| *v == 1.0), "{runs:?}");
        assert!(has(&m, "pve_node_load1", &[("node", "pve2")]), "{m}");
        (daemon, m)
    }
}

/// The local collectors that must not notice the API's faults, and the guest's series.
fn assert_local_kept(m: &str, vm: &str, vm_families: &std::collections::BTreeSet<String>) {
    assert_eq!(&families_of(m, vm), vm_families, "{m}");
    for c in ["pve_config", "kvm", "qm", "vcpu", "guest", "storage"] {
        assert_eq!(success(m, c), Some(1.0), "{c}\n{m}");
    }
}

/// The PVE API is down (pveproxy stopped: connections refused), for a central exporter
/// (`--pve-scope cluster`): every API collector fails at once (after two quick retries) and
/// its series go, with one warning per collector and node naming the refused connection;
/// the VMs of the exporter's own host and the local collectors keep everything; once the API
/// listens again the next scrape has everything back.
#[test]
fn the_api_down_costs_only_the_api_series() {
    require_privileges();
    let root = host_root(&[716]);
    let _guest = Guest::start(716, 1, 1, root.path());
    let api = ApiSetup::new();
    let (daemon, m) = api.daemon(root.path());
    let vm_families = families_of(&m, "716");

    api.relay.set(Relay::Down);
    for _ in 0..3 {
        let m = scrape(daemon.port);
        let runs = api_runs(&m);
        assert!(runs.len() == 11 && runs.values().all(|v| *v == 0.0), "{runs:?}");
        assert!(!m.contains("pve_node_load1{") && !m.contains("pve_physical_disk_"), "{m}");
        assert_local_kept(&m, "716", &vm_families);
    }
    let line = daemon.wait_for_log("collector node_status/pve2 failed: ", LOG_WAIT);
    assert!(line.contains(" WARN ") && line.contains("GET /nodes/pve2/status") && line.contains("refused"), "{line}");
    assert!(daemon.wait_for_log("collector pve_nodes failed: ", LOG_WAIT).contains("GET /nodes: "));
    assert_eq!(daemon.log_lines("failed: ").len(), 11, "one line per collector and node:\n{}", daemon.logs());

    api.relay.set(Relay::To(api.server.port));
    let m = scrape(daemon.port);
    assert!(api_runs(&m).values().all(|v| *v == 1.0), "{m}");
    assert!(has(&m, "pve_node_load1", &[("node", "pve2")]), "{m}");
    daemon.wait_for_log("collector node_status/pve2 works again", LOG_WAIT);
}

/// The PVE API answers, but only after `--pve-api-timeout` (5 s; pveproxy overloaded): every
/// scrape still answers within Prometheus's timeout; the API collectors fail, with the time
/// limit in the log, and their series go (or, while the PVE group is still waiting, its last
/// values are served with their age in `pve_exporter_collector_data_age_seconds`, never as
/// fresh ones); the VMs and the local collectors keep everything; the API's series are fresh
/// again once it answers in time.
#[test]
fn a_slow_api_costs_only_fresh_api_values() {
    require_privileges();
    let root = host_root(&[717]);
    let _guest = Guest::start(717, 1, 1, root.path());
    let api = ApiSetup::new();
    let (daemon, m) = api.daemon(root.path());
    let vm_families = families_of(&m, "717");
    let age = |m: &str| sample(m, "pve_exporter_collector_data_age_seconds", &[("collector", "node_status/pve2")]);
    assert_eq!(age(&m), Some(0.0), "{m}");

    api.relay.set(Relay::Slow(api.server.port, Duration::from_secs(6)));
    for _ in 0..3 {
        let m = scrape(daemon.port);
        let runs = api_runs(&m);
        assert!(runs.values().all(|v| *v == 0.0), "{runs:?}");
        // The PVE group answered by the deadline with its failures, without the API's series,
        // or (its requests still running) its last values were served: never as fresh ones.
        if has(&m, "pve_node_load1", &[("node", "pve2")]) {
            assert!(age(&m).is_some_and(|a| a > 0.0), "API values served as fresh:\n{m}");
        }
        assert_local_kept(&m, "717", &vm_families);
    }
    let line = daemon.wait_for_log("collector pve_nodes failed: ", LOG_WAIT);
    assert!(line.contains(" WARN ") && line.contains("GET /nodes: no answer within 5s (--pve-api-timeout)"), "{line}");
    assert!(daemon.wait_for_log("collector node_status/pve2 failed: ", LOG_WAIT).contains(" WARN "));

    api.relay.set(Relay::To(api.server.port));
    // Its nodes were put under back-off (up to a minute between tries).
    let m = scrape_until(daemon.port, Duration::from_secs(150), "the API answering in time again", |m| {
        api_runs(m).values().all(|v| *v == 1.0)
    });
    assert_eq!(age(&m), Some(0.0), "{m}");
    assert_local_kept(&m, "717", &vm_families);
    daemon.wait_for_log("collector node_status/pve2 works again", LOG_WAIT);
}

/// The API's certificate changes to one the configured CA did not sign (the cluster's
/// certificates renewed by another CA, `--pve-api-ca-file` stale): every API collector fails
/// at once (a TLS failure is not retried) and its series go; the log says the certificate is
/// not trusted and names `--pve-api-ca-file`; the VMs and local collectors keep everything;
/// with the right certificate back, so are the API's series.
#[test]
fn an_api_certificate_of_another_ca_costs_only_the_api_series() {
    require_privileges();
    let root = host_root(&[718]);
    let _guest = Guest::start(718, 1, 1, root.path());
    let api = ApiSetup::new();
    let (daemon, m) = api.daemon(root.path());
    let vm_families = families_of(&m, "718");

    // Another test API server: its own CA signed its certificate.
    let other = pve_server::PveServer::start(TOKEN);
    api.relay.set(Relay::To(other.port));
    for _ in 0..3 {
        let m = scrape(daemon.port);
        let runs = api_runs(&m);
        assert!(runs.len() == 11 && runs.values().all(|v| *v == 0.0), "{runs:?}");
        assert!(!m.contains("pve_node_load1{") && !m.contains("pve_physical_disk_"), "{m}");
        assert_local_kept(&m, "718", &vm_families);
    }
    assert!(other.log().is_empty(), "a request got through: {:?}", other.log());
    let line = daemon.wait_for_log("collector pve_nodes failed: ", LOG_WAIT);
    assert!(line.contains(" WARN ") && line.contains("TLS") && line.contains("not trusted"), "{line}");
    assert!(line.contains("--pve-api-ca-file") && !line.contains("attempts"), "{line}");

    api.relay.set(Relay::To(api.server.port));
    let m = scrape(daemon.port);
    assert!(api_runs(&m).values().all(|v| *v == 1.0), "{m}");
    daemon.wait_for_log("collector pve_nodes works again", LOG_WAIT);
}

// ---------------------------------------------------------------------------------------------
// eBPF.

/// A host root whose /sys is the real one except /sys/kernel/tracing and /sys/kernel/debug,
/// which are not there (a kernel without tracefs, or a /sys where it cannot be mounted): each
/// other entry of /sys and /sys/kernel links to the real one, BTF included.
fn root_without_tracefs(vmids: &[u32]) -> common::TestRoot {
    let root = host_root(vmids);
    let sys = root.path().join("sys");
    std::fs::remove_file(&sys).expect("rm the sys link");
    std::fs::create_dir_all(sys.join("kernel")).expect("mkdir sys/kernel");
    for (dir, skip) in [("/sys", &["kernel"][..]), ("/sys/kernel", &["tracing", "debug"][..])] {
        for e in std::fs::read_dir(dir).expect(dir).flatten() {
            let name = e.file_name();
            if skip.iter().any(|s| name == *s) {
                continue;
            }
            let rel = Path::new(dir).strip_prefix("/").expect("absolute").join(&name);
            std::os::unix::fs::symlink(e.path(), root.path().join(rel)).expect("symlink");
        }
    }
    root
}

/// No tracefs (the daemon finds none and cannot mount one where it looks): `--ebpf auto`
/// runs in procfs mode, says why in `pve_exporter_ebpf_info` and one warning; the eBPF
/// families are absent (the `ebpf` collector does not apply and reports nothing), and the
/// guest's procfs series and every collector are there.
#[test]
fn no_tracefs_serves_procfs_mode_and_says_why() {
    require_privileges();
    let root = root_without_tracefs(&[719]);
    assert!(root.path().join("sys/kernel/btf/vmlinux").exists(), "this test needs the kernel's BTF");
    let _guest = Guest::start(719, 1, 1, root.path());
    let daemon = Daemon::start(root.path(), &[]);
    let m = scrape(daemon.port);
    assert_eq!(sample(&m, "pve_exporter_ebpf_enabled", &[]), Some(0.0), "{m}");
    let reason = m
        .lines()
        .find_map(|l| l.strip_prefix("pve_exporter_ebpf_info{mode=\"procfs\",reason=\""))
        .unwrap_or_else(|| panic!("no procfs-mode info\n{m}"));
    assert!(reason.starts_with("tracefs: mount tracefs at ") && reason.contains("sys/kernel/tracing"), "{reason}");
    let line = daemon.wait_for_log("eBPF unavailable, running in procfs mode: tracefs: ", LOG_WAIT);
    assert!(line.contains(" WARN "), "{line}");
    for f in ["pve_kvm_tracepoint_events_total{", "pve_kvm_exits_total{", "pve_kvm_vcpu_runqueue_wait_seconds"] {
        assert!(!m.contains(f), "{f}\n{m}");
    }
    assert_eq!(success(&m, "ebpf"), None, "{m}");
    for f in ["pve_kvm_info", "pve_kvm_cpu_seconds_total", "pve_kvm_vcpu_run_seconds_total", "pve_kvm_threads"] {
        assert!(has(&m, f, &[("id", "719")]), "{f}\n{m}");
    }
    let failed: Vec<&str> =
        m.lines().filter(|l| l.starts_with("pve_exporter_collector_success{") && l.ends_with(" 0")).collect();
    assert!(failed.is_empty(), "{failed:?}");
}

// ---------------------------------------------------------------------------------------------
// Host limits and layouts.

/// A cgroup of its own below the cgroup2 mount, removed (after its processes) when dropped.
struct TestCgroup(std::path::PathBuf);

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

/// cgroup2 is mounted at an odd place (not /sys/fs/cgroup, not /sys/fs/cgroup/unified): the
/// daemon, in a mount namespace where that is the only cgroup2 mount, finds it through
/// /proc/self/mountinfo and reports the VM's pressure from its cgroup there, as PVE's own
/// `qemu.slice/<vmid>.scope` would be read; nothing fails and nothing is lost.
#[test]
fn cgroup2_mounted_elsewhere_is_found_through_mountinfo() {
    require_privileges();
    let usual = cgroup2_mounts();
    assert!(!usual.is_empty(), "this test needs a cgroup2 mount");
    let slice = TestCgroup(usual[0].join(format!("pve-exporter-fault-matrix-{}.slice", std::process::id())));
    let scope = slice.0.join("720.scope");
    std::fs::create_dir_all(&scope).expect("mkdir the test cgroup");
    assert!(scope.join("cpu.pressure").exists(), "{}: no pressure files (psi=0?)", scope.display());
    let root = host_root(&[720]);
    link_own_path(root.path());
    let guest = Guest::start(720, 1, 1, root.path());
    std::fs::write(scope.join("cgroup.procs"), guest.pid.to_string()).expect("move the guest into its scope");
    let elsewhere = root.path().join("odd/place/for/cgroup2");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");

    // Prepared before the fork: the child only makes system calls.
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let unmount: Vec<std::ffi::CString> = usual.iter().map(|p| c(p)).collect();
    let (target, fstype, none, slash) =
        (c(&elsewhere), c(Path::new("cgroup2")), c(Path::new("none")), c(Path::new("/")));
    let daemon = Daemon::start_with(root.path(), &["--ebpf", "off"], move |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe system calls on strings made before the fork; they
        // change the child's own (new) mount namespace, never the test's.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    slash.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for m in &unmount {
                    check(libc::umount2(m.as_ptr(), libc::MNT_DETACH))?;
                }
                check(libc::mount(none.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()))
            });
        }
    });
    // In the daemon's namespace cgroup2 is only at the odd place.
    let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", daemon.proc.0.id())).expect("its mountinfo");
    let its: Vec<&str> = info.lines().filter(|l| l.contains(" - cgroup2 ")).collect();
    assert!(its.len() == 1 && its[0].contains(elsewhere.to_str().expect("utf-8")), "{its:?}");

    let m = scrape(daemon.port);
    for f in ["pve_vm_pressure_cpu_some_ratio", "pve_vm_pressure_memory_full_ratio", "pve_vm_pressure_io_some_ratio"] {
        assert!(has(&m, f, &[("id", "qemu/720")]), "{f}\n{m}");
    }
    assert_eq!(success(&m, "vm_pressure"), Some(1.0), "{m}");
    assert!(has(&m, "pve_kvm_info", &[("id", "720")]), "{m}");
    let failed: Vec<&str> =
        m.lines().filter(|l| l.starts_with("pve_exporter_collector_success{") && l.ends_with(" 0")).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(daemon.log_lines("cgroup").is_empty(), "{}", daemon.logs());
    drop(daemon);
    drop(guest);
}

/// Set the soft open-file limit of process `pid` (at most its hard limit; None: up to the hard
/// limit, as the daemon sets it at start); returns the hard limit.
fn set_nofile(pid: u32, soft: Option<u64>) -> u64 {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit with no new limit fills `old`.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit {pid}: {}", std::io::Error::last_os_error());
    let lim = libc::rlimit { rlim_cur: soft.unwrap_or(old.rlim_max).min(old.rlim_max), rlim_max: old.rlim_max };
    // SAFETY: prlimit reads `lim` and writes nothing (no old-limit pointer).
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit {pid} {soft:?}: {}", std::io::Error::last_os_error());
    old.rlim_max
}

/// The limit below which `pid` has exactly `free` descriptor numbers unused: a new descriptor
/// takes the lowest free number, and fails with EMFILE when none is below the limit.
fn nofile_leaving(pid: u32, free: u64) -> u64 {
    let used: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("its fds")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    (1..).find(|&l| l - used.range(..l).count() as u64 == free).expect("a limit")
}

/// The daemon runs out of file descriptors (its open-file limit lowered under it, as a busy
/// host with the unit's LimitNOFILE too small would bring it there): a VM that starts then cannot
/// be read, and what has no descriptor kept open fails, each collector with one warning that
/// says "Too many open files"; the scrape still answers, and the VMs that ran before keep their
/// series, read through the descriptors the daemon holds; once descriptors are free again the
/// new VM and every collector are back, and the log says so.
#[test]
fn running_out_of_file_descriptors_costs_what_needs_new_ones() {
    require_privileges();
    let root = host_root(&[721, 722, 723]);
    let _a = Guest::start(721, 1, 1, root.path());
    let _b = Guest::start(722, 1, 1, root.path());
    let daemon = Daemon::start(root.path(), &[]);
    let pid = daemon.proc.0.id();
    let m = scrape(daemon.port);
    // Read through descriptors held from scrape to scrape (/proc/<pid>/stat, status, io, the
    // vCPU threads' schedstat; eBPF maps).
    let held = ["pve_kvm_info", "pve_kvm_cpu_seconds_total", "pve_kvm_threads", "pve_kvm_io_read_bytes_total"];
    let held: Vec<&str> = held
        .into_iter()
        .chain(["pve_kvm_vcpu_run_seconds_total", "pve_kvm_tracepoint_events_total"])
        .filter(|f| has(&m, f, &[("id", "721")]))
        .collect();
    assert!(held.len() >= 5, "{held:?}\n{m}");

    // One descriptor number left (for the scrape's connection), once the daemon is idle.
    let deadline = Instant::now() + LOG_WAIT;
    let mut open = support::fd_count(pid);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = support::fd_count(pid);
        if now == open {
            break;
        }
        open = now;
        assert!(Instant::now() < deadline, "the daemon's descriptors do not settle");
    }
    set_nofile(pid, Some(nofile_leaving(pid, 1)));
    let _c = Guest::start(723, 1, 1, root.path());
    for _ in 0..3 {
        let m = scrape(daemon.port);
        for id in ["721", "722"] {
            for f in &held {
                assert!(has(&m, f, &[("id", id)]), "{id}: {f}\n{m}");
            }
        }
        assert!(families_of(&m, "723").is_empty(), "{m}");
        assert_eq!(success(&m, "kvm"), Some(0.0), "{m}");
    }
    let line = daemon.wait_for_log("collector kvm failed: ", LOG_WAIT);
    assert!(line.contains(" WARN ") && line.contains("Too many open files"), "{line}");
    assert!(line.contains("command line could not be read"), "the new VM is missing, and said so: {line}");
    for l in daemon.log_lines("failed: ") {
        assert!(l.contains("Too many open files") || l.contains("did not answer") || l.contains("no cgroup2"), "{l}");
    }

    set_nofile(pid, None);
    let m = scrape(daemon.port);
    for f in &held {
        assert!(has(&m, f, &[("id", "723")]), "723: {f}\n{m}");
    }
    let failed: Vec<&str> =
        m.lines().filter(|l| l.starts_with("pve_exporter_collector_success{") && l.ends_with(" 0")).collect();
    assert!(failed.is_empty(), "{failed:?}");
    daemon.wait_for_log("collector kvm works again", LOG_WAIT);
}

// ---------------------------------------------------------------------------------------------
// The web config.

/// A tmpfs of `size` mounted at a new directory, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs: {st}");
        Tmpfs(dir)
    }

    /// Fill it: write until the file system says it is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.path().join("filler")).expect("filler");
        let page = [0u8; 4096];
        loop {
            match f.write(&page) {
                Ok(n) if n > 0 => {}
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    break;
                }
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

/// A web config with TLS from the certificate files beside it and `users` (name, hash), the
/// first `pad` bytes of it a comment.
fn web_config(users: &[(String, String)], pad: usize) -> String {
    let mut text =
        format!("# {}\ntls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n", "-".repeat(pad));
    text.push_str("basic_auth_users:\n");
    for (u, h) in users {
        text.push_str(&format!("  {u}: {h}\n"));
    }
    text
}

/// The operator adds users to the web config on a full file system and reloads: the rewrite
/// stops at the first page (the text cut in the middle of a bcrypt hash), and SIGHUP finds an
/// unusable file. The daemon logs why and keeps serving with the configuration it has (TLS, the
/// same users, no access without them); once there is room and the file is whole, the next
/// reload applies it.
#[test]
fn a_web_config_cut_short_by_a_full_disk_keeps_the_current_one() {
    require_privileges();
    let root = ops::plain_root();
    let pki = ops::Pki::new();
    let fs = Tmpfs::mount("64k");
    let dir = fs.0.path();
    for f in ["server.crt", "server.key"] {
        std::fs::copy(pki.dir.path().join(f), dir.join(f)).expect("certificate files");
    }
    let first = vec![("prometheus".to_string(), ops::bcrypt_hash("scrape"))];
    let config = dir.join("web-config.yml");
    std::fs::write(&config, web_config(&first, 0)).expect("web config");
    let mut e = ops::Exporter::start(
        root.path(),
        &["--ebpf", "off", "--web.config.file", config.to_str().expect("utf-8")],
        &[],
    );
    let ca = pki.path("ca.crt");
    let metrics = e.url("https", "/metrics");
    let get = |creds: Option<&str>| {
        let mut args = vec!["--cacert", ca.as_str()];
        args.extend(creds.iter().flat_map(|c| ["-u", *c]));
        args.push(&metrics);
        ops::curl(&args).status
    };
    assert_eq!((get(Some("prometheus:scrape")), get(None)), (200, 401));

    // A hundred more users: more than the page the old file had; the file system has no other.
    let mut more = first.clone();
    more.extend((0..100).map(|i| (format!("team{i:03}"), ops::bcrypt_hash(&format!("pw{i}")))));
    let (text, cut) = (0..80)
        .map(|pad| (web_config(&more, pad), 4096))
        .find(|(t, cut)| {
            // Cut inside a hash, not at the end of a line (which would leave fewer users, whole).
            let line = t[..*cut].rsplit('\n').next().unwrap_or("");
            line.contains(": $2") && !t[*cut..].starts_with('\n')
        })
        .expect("a layout whose first page ends inside a hash");
    fs.fill();
    let wrote = std::fs::write(&config, &text);
    let err = wrote.expect_err("the rewrite must hit the full file system");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let left = std::fs::read_to_string(&config).expect("what is left");
    assert!(left.len() <= cut && text.starts_with(&left), "{} bytes left", left.len());

    e.signal(libc::SIGHUP);
    e.wait_for_log("; keeping the current one", Duration::from_secs(10));
    let logs = e.logs();
    let line = logs.lines().find(|l| l.contains("reload: web config: ")).expect("the reload's line");
    assert!(line.contains(" ERROR ") && line.contains("web-config.yml") && line.contains("bcrypt"), "{line}");
    assert!(!logs.contains("reloaded:"), "{logs}");
    // Still TLS, still the same users, still no access without them.
    assert_eq!((get(Some("prometheus:scrape")), get(Some("team000:pw0")), get(None)), (200, 401, 401));
    let plain = ops::curl(&["-u", "prometheus:scrape", &e.url("http", "/metrics")]);
    assert_eq!(plain.status, 400, "{}", plain.stderr);

    // Room again, the file written whole, reloaded: the new users are in.
    std::fs::remove_file(dir.join("filler")).expect("rm filler");
    std::fs::write(&config, &text).expect("the whole file");
    e.signal(libc::SIGHUP);
    e.wait_for_log("reloaded: TLS, basic auth (101 users)", Duration::from_secs(10));
    assert_eq!((get(Some("prometheus:scrape")), get(Some("team099:pw99")), get(None)), (200, 200, 401));
    drop(e);
}

// ---------------------------------------------------------------------------------------------
// Guests that go away.

/// A QMP socket that holds the first connection made to it: it tells the test (the daemon's
/// scrape is under way, past discovery) and waits for the test's word to close it, as a QEMU
/// that exits closes its socket.
struct Hook {
    accepted: std::sync::mpsc::Receiver<()>,
    release: std::sync::mpsc::Sender<()>,
}

impl Hook {
    fn bind(path: &Path) -> Hook {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind hook");
        let (tx, accepted) = std::sync::mpsc::channel();
        let (release, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else { return };
            let _ = tx.send(());
            let _ = rx.recv();
            drop(conn);
        });
        Hook { accepted, release }
    }
}

/// Every collector's success, by collector, in a scrape.
fn runs(m: &str) -> std::collections::BTreeMap<String, f64> {
    m.lines()
        .filter_map(|l| l.strip_prefix("pve_exporter_collector_success{collector=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(c, v)| (c.to_string(), v.parse().expect("a number")))
        .collect()
}

/// VMs and containers stop while a scrape is under way: a VM whose QEMU exits while its
/// monitor is being asked (after its /proc files were read: its socket closes in the middle),
/// and VMs and containers stopped at every point of scrapes that run back to back. Each costs
/// only its own series, from the scrape after its exit at the latest: no collector fails, no
/// warning is logged, the VM and the container that keep running keep every series, and a
/// stopped guest is left with its configuration's series (`pve_guest_up 0`).
#[test]
fn guests_that_stop_mid_scrape_cost_only_their_own_series() {
    require_privileges();
    let (vm, other_vm, ct, other_ct) = (724u32, 725u32, 726u32, 727u32);
    let root = host_root(&[vm, other_vm, ct, other_ct]);
    for id in [ct, other_ct] {
        std::fs::remove_file(root.path().join(format!("etc/pve/qemu-server/{id}.conf"))).expect("rm");
        std::fs::create_dir_all(root.path().join("etc/pve/lxc")).expect("mkdir");
        std::fs::write(root.path().join(format!("etc/pve/lxc/{id}.conf")), "hostname: ct\nmemory: 64\n").expect("conf");
    }
    let run = root.path().join("var/run/qemu-server");
    std::fs::create_dir_all(&run).expect("mkdir");
    let h = pve_exporter::sources::kernel::cgroup::Hierarchies::read(&pve_exporter::host::HostRoot::new("/"))
        .expect("cgroup mounts");
    let _keep_vm = Guest::start(other_vm, 1, 1, root.path());
    let _keep_ct = common::Ct::start(other_ct, &[]);
    let daemon = Daemon::start(root.path(), &[]);
    let m = scrape(daemon.port);
    let (vm_families, ct_families) = (families_of(&m, "725"), families_of(&m, "727"));
    assert!(vm_families.contains("pve_kvm_info") && ct_families.contains("pve_lxc_info"), "{m}");
    let all_ok = |m: &str| {
        let r = runs(m);
        assert!(r.len() > 10 && r.values().all(|v| *v == 1.0), "{r:?}");
        assert_eq!(families_of(m, "725"), vm_families, "{m}");
        assert_eq!(families_of(m, "727"), ct_families, "{m}");
    };
    all_ok(&m);

    // A VM's QEMU exits while the scrape asks its monitor (a socket that holds the scrape
    // until the VM is gone, then closes as QEMU's does).
    for _ in 0..3 {
        let g = Guest::start(vm, 1, 1, root.path());
        assert!(has(&scrape(daemon.port), "pve_kvm_info", &[("id", "724")]));
        let hook = Hook::bind(&run.join(format!("{vm}.qmp")));
        let port = daemon.port;
        let during = std::thread::spawn(move || scrape(port));
        hook.accepted.recv_timeout(Duration::from_secs(10)).expect("the scrape asks the VM's monitor");
        drop(g);
        hook.release.send(()).expect("release");
        all_ok(&during.join().expect("the scrape"));
        let m = scrape(daemon.port);
        all_ok(&m);
        assert!(families_of(&m, "724").is_empty(), "{m}");
        assert_eq!(sample(&m, "pve_guest_up", &[("id", "724")]), Some(0.0), "{m}");
        std::fs::remove_file(run.join(format!("{vm}.qmp"))).expect("rm socket");
    }

    // VMs and containers stopped at any point of scrapes made back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (stop, port) = (stop.clone(), daemon.port);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                seen.push(scrape(port));
            }
            seen
        })
    };
    for round in 0..8u64 {
        let g = Guest::start(vm, 1, 1, root.path());
        let mut c = common::Ct::start(ct, &[]);
        std::thread::sleep(Duration::from_millis(7 * round));
        drop(g);
        c.stop(&h, ct);
    }
    stop.store(true, Ordering::SeqCst);
    let seen = scraper.join().expect("the scraper");
    assert!(seen.len() >= 8, "{} scrapes", seen.len());
    for m in &seen {
        all_ok(m);
    }
    let m = scrape(daemon.port);
    all_ok(&m);
    assert!(families_of(&m, "724").is_empty() && families_of(&m, "726").is_empty(), "{m}");
    assert_eq!(sample(&m, "pve_guest_up", &[("id", "726")]), Some(0.0), "{m}");
    let warnings: Vec<String> = daemon.log_lines(" WARN ").into_iter().filter(|l| !l.contains("KVM debugfs")).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}

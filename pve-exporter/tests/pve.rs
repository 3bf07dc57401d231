//! The PVE collectors (node_status, vm_pressure, ha_status, physical_disk) from both sources:
//!
//! - local: the fixture host `fixtures/hosts/pve-cluster` (node `pve1` of a 3-node cluster:
//!   /proc, /sys/firmware, KSM, the VMs' cgroup pressure files, pmxcfs HA files), and this
//!   machine's own /proc and /sys (`--root /`);
//! - api: a real HTTPS server (`pve_server`, its own CA) serving `fixtures/pve-api/` under the
//!   real API paths for the same cluster state, checking the token header; faults make one
//!   node answer 500 or hang.
//!
//! Golden files `fixtures/golden/pve-cluster-local.prom` (local source, this node) and
//! `fixtures/golden/pve-cluster-api.prom` (API, cluster scope): before comparing, every
//! `*_duration_seconds` value and, in the local output, the `pve_node_rootfs_*` and
//! `pve_disk_*{id="node/..."}` values of both (statvfs of the checkout's file system) become 0.
//! Regenerate after an intended change with
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p pve-exporter --test pve
//! ```

mod common;
mod fixture_scrape;
mod pve_server;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use common::cgroup2_mount;
use fixture_scrape::{FIXTURES, Sample, assert_value, check_golden, copy_tree, samples, value};
use pve_exporter::{
    collector::Engine,
    config::Config,
    exposition::{self, Format},
    host::{BlockingGate, HostRoot},
    sources::pve::api::{ApiSettings, PveApi, Token, Trust},
};
use pve_server::{Fault, Pki, PveServer};

const TOKEN: &str = "monitor@pve!metrics=5e9f5d3c-2a0b-4c1e-9f47-0d2b7f1a8c63";
const SECRET: &str = "5e9f5d3c-2a0b-4c1e-9f47-0d2b7f1a8c63";

fn tree() -> String {
    format!("{FIXTURES}/hosts/pve-cluster")
}

/// One scrape through the library, PVE collectors only (no VM or storage collectors).
fn scrape(root: &str, extra: &[&str]) -> String {
    let mut args = vec!["--root", root, "--collect-running-vms", "false", "--collect-storage", "false"];
    args.extend_from_slice(extra);
    fixture_scrape::scrape(&args, Format::Text)
}

/// The test API server with a token file and its CA file.
struct Api {
    server: PveServer,
    dir: tempfile::TempDir,
}

impl Api {
    fn start() -> Api {
        let server = PveServer::start(TOKEN);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        // As an operator would keep it (the exporter warns about a token file anyone can read).
        std::fs::set_permissions(dir.path().join("token"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), &server.pki.ca_pem).unwrap();
        Api { server, dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// URL, token file and CA file flags.
    fn args(&self) -> Vec<String> {
        [
            "--pve-api-url",
            &self.server.url(),
            "--pve-api-token-file",
            &self.file("token"),
            "--pve-api-ca-file",
            &self.file("ca.pem"),
        ]
        .map(String::from)
        .to_vec()
    }

    fn scrape(&self, root: &str, extra: &[&str]) -> String {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        scrape(root, &args)
    }
}

// ---------------------------------------------------------------------------------------------
// Samples.

fn family(text: &str, name: &str) -> Vec<Sample> {
    samples(text).into_iter().filter(|s| s.name == name).collect()
}

fn success(text: &str, collector: &str) -> Option<f64> {
    value(text, "pve_exporter_collector_success", &[("collector", collector)])
}

/// Samples of the PVE families whose `node` label is `node`.
fn of_node(text: &str, node: &str) -> Vec<Sample> {
    samples(text).into_iter().filter(|s| is_pve_family(&s.name) && s.get("node") == node).collect()
}

fn is_pve_family(name: &str) -> bool {
    ["pve_node_", "pve_vm_pressure_", "pve_ha_", "pve_physical_disk_"].iter().any(|p| {
        name.starts_with(p)
            && !name.starts_with("pve_node_storage_")
            && !name.starts_with("pve_node_zpool_")
            && !is_ppe_family(name)
    })
}

/// prometheus-pve-exporter's families (the `ppe` collector) whose names share a prefix with
/// the PVE collectors' (`pve_node_info`, `pve_ha_state`).
fn is_ppe_family(name: &str) -> bool {
    ["pve_node_info", "pve_ha_state"].contains(&name)
}

// ---------------------------------------------------------------------------------------------
// Golden files.

/// The root file system's figures of the local source are this machine's.
fn normalize(text: &str, zero_rootfs: bool) -> String {
    fixture_scrape::normalize(text, |s| {
        (zero_rootfs && s.name.starts_with("pve_node_rootfs_"))
            // prometheus-pve-exporter's node disk: statvfs of the checkout's file system in
            // both outputs (the `ppe` collector reads this node's files whatever the source).
            || (s.name.starts_with("pve_disk_") && s.label("id").is_some_and(|i| i.starts_with("node/")))
    })
}

#[test]
fn golden_pve_cluster_local() {
    check_golden(&normalize(&scrape(&tree(), &[]), true), "pve-cluster-local.prom");
}

#[test]
fn golden_pve_cluster_api() {
    let api = Api::start();
    check_golden(&normalize(&api.scrape(&tree(), &["--pve-scope", "cluster"]), false), "pve-cluster-api.prom");
}

// ---------------------------------------------------------------------------------------------
// Local source.

#[test]
fn local_source_values() {
    let t = scrape(&tree(), &[]);
    let n = [("node", "pve1")]; // hostname pve1.lab.example, up to the first dot
    assert_value(&t, "pve_node_load1", &n, 3.12);
    assert_value(&t, "pve_node_load5", &n, 2.88);
    assert_value(&t, "pve_node_load15", &n, 2.79);
    assert_value(&t, "pve_node_swap_total_bytes", &n, 8_388_604.0 * 1024.0);
    assert_value(&t, "pve_node_swap_free_bytes", &n, 8_126_460.0 * 1024.0);
    assert_value(&t, "pve_node_swap_used_bytes", &n, 262_144.0 * 1024.0);
    // pages_sharing 262144 x 4 KiB pages.
    assert_value(&t, "pve_node_ksm_shared_bytes", &n, 1_073_741_824.0);
    assert_value(&t, "pve_node_boot_mode_info", &[("node", "pve1"), ("mode", "efi"), ("secureboot", "1")], 1.0);
    // The root file system is the tree's own: statvfs of the fixture directory, like df.
    let df = pve_exporter::sources::storage::statvfs::statvfs(Path::new(&tree())).unwrap();
    assert_value(&t, "pve_node_rootfs_total_bytes", &n, df.size as f64);
    assert!(value(&t, "pve_node_rootfs_available_bytes", &n).is_some());
    assert!(value(&t, "pve_node_rootfs_used_bytes", &n).is_some());

    // Pressure: avg10 / 100 of the running VMs with a config (100, 101); 105 runs without
    // one (migrating in), 102 is stopped; VM 101's cpu.pressure has no `full` line.
    let ids: BTreeSet<String> =
        family(&t, "pve_vm_pressure_cpu_some_ratio").iter().map(|s| s.get("id").to_string()).collect();
    assert_eq!(ids, BTreeSet::from(["qemu/100".to_string(), "qemu/101".to_string()]));
    let vm = |id: &'static str| [("id", id), ("node", "pve1")];
    for (fam, v) in [
        ("pve_vm_pressure_cpu_some_ratio", 0.125),
        ("pve_vm_pressure_cpu_full_ratio", 0.0375),
        ("pve_vm_pressure_memory_some_ratio", 0.0125),
        ("pve_vm_pressure_memory_full_ratio", 0.005),
        ("pve_vm_pressure_io_some_ratio", 0.25),
        ("pve_vm_pressure_io_full_ratio", 0.2),
    ] {
        assert_value(&t, fam, &vm("qemu/100"), v);
    }
    assert_value(&t, "pve_vm_pressure_cpu_full_ratio", &vm("qemu/101"), 0.0);
    assert_value(&t, "pve_vm_pressure_cpu_some_ratio", &vm("qemu/101"), 0.008);

    // HA: pve1 is the CRM master, so it emits the cluster-wide families.
    assert_value(&t, "pve_ha_crm_master", &[("node", "pve1")], 1.0);
    assert_value(&t, "pve_ha_crm_master", &[("node", "pve2")], 0.0);
    assert_value(&t, "pve_ha_node_status", &[("node", "pve3"), ("status", "maintenance")], 1.0);
    assert_value(&t, "pve_ha_lrm_timestamp_seconds", &[("node", "pve2")], 1_774_016_348.0);
    assert_value(&t, "pve_ha_lrm_mode", &[("node", "pve3"), ("mode", "maintenance")], 1.0);
    // Unset properties are PVE's defaults.
    let cfg = [("sid", "vm:101"), ("type", "vm"), ("max_restart", "1"), ("max_relocate", "1"), ("failback", "1")];
    assert_value(&t, "pve_ha_service_config", &cfg, 1.0);
    assert_value(&t, "pve_ha_service_config", &[("sid", "vm:200"), ("max_restart", "3"), ("failback", "0")], 1.0);
    assert_value(&t, "pve_ha_service_status", &[("sid", "vm:201"), ("node", "pve2"), ("state", "migrate")], 1.0);

    // Without a token physical_disk is off, and says so; nothing failed.
    assert!(family(&t, "pve_physical_disk_health").is_empty());
    assert_value(
        &t,
        "pve_exporter_pve_collector_info",
        &[("collector", "physical_disk"), ("source", "off"), ("scope", "local")],
        1.0,
    );
    for c in ["node_status", "vm_pressure", "ha_status"] {
        assert_value(&t, "pve_exporter_pve_collector_info", &[("collector", c), ("source", "local")], 1.0);
        assert_eq!(success(&t, c), Some(1.0), "{c}");
    }
    assert_eq!(success(&t, "physical_disk"), None, "an off collector does not run");
}

fn tree_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(Path::new(&tree()), dir.path());
    dir
}

fn ha_families(text: &str) -> Vec<Sample> {
    samples(text).into_iter().filter(|s| s.name.starts_with("pve_ha_") && !is_ppe_family(&s.name)).collect()
}

#[test]
fn only_the_crm_master_emits_ha_in_local_scope() {
    let dir = tree_copy();
    let ms = dir.path().join("etc/pve/ha/manager_status");
    let text = std::fs::read_to_string(&ms).unwrap().replace("\"master_node\":\"pve1\"", "\"master_node\":\"pve2\"");
    std::fs::write(&ms, text).unwrap();
    let root = dir.path().to_str().unwrap();
    let t = scrape(root, &[]);
    assert!(ha_families(&t).is_empty(), "pve1 is not the master:\n{t}");
    assert_eq!(success(&t, "ha_status"), Some(1.0));
    let t = scrape(root, &["--ha-always-emit"]);
    assert_value(&t, "pve_ha_crm_master", &[("node", "pve2")], 1.0);
    assert_eq!(ha_families(&t).len(), 3 + 3 + 3 + 3 + 5 + 5);
    // Cluster scope: always (one central exporter).
    let t = scrape(root, &["--pve-scope", "cluster"]);
    assert_value(&t, "pve_ha_crm_master", &[("node", "pve1")], 0.0);
}

#[test]
fn a_host_without_ha_or_token_has_nothing_failing() {
    // pve-basic: /etc/pve without ha/, no hostname, no /proc/loadavg, no cgroups.
    let t = scrape(&format!("{FIXTURES}/hosts/pve-basic"), &[]);
    assert_eq!(success(&t, "ha_status"), Some(1.0), "{t}");
    assert!(ha_families(&t).is_empty());
    for s in family(&t, "pve_exporter_collector_success") {
        assert_eq!(s.num(), 1.0, "{s:?}");
    }
    // A host that is no PVE node at all: no HA collector.
    let empty = tempfile::tempdir().unwrap();
    let t = scrape(empty.path().to_str().unwrap(), &[]);
    assert_value(&t, "pve_exporter_pve_collector_info", &[("collector", "ha_status"), ("source", "off")], 1.0);
    assert!(family(&t, "pve_exporter_collector_success").is_empty(), "{t}");
}

#[test]
fn broken_files_cost_only_their_series() {
    let dir = tree_copy();
    let p = dir.path();
    std::fs::write(p.join("proc/loadavg"), "garbage").unwrap();
    std::fs::write(p.join("sys/fs/cgroup/qemu.slice/100.scope/io.pressure"), "some avg10=x\n").unwrap();
    std::fs::write(p.join("etc/pve/nodes/pve2/lrm_status"), "{not json").unwrap();
    let t = scrape(p.to_str().unwrap(), &[]);
    assert!(family(&t, "pve_node_load1").is_empty());
    assert_value(&t, "pve_node_swap_total_bytes", &[("node", "pve1")], 8_388_604.0 * 1024.0);
    assert!(value(&t, "pve_vm_pressure_io_some_ratio", &[("id", "qemu/100")]).is_none());
    assert_value(&t, "pve_vm_pressure_cpu_some_ratio", &[("id", "qemu/100")], 0.125);
    assert_value(&t, "pve_vm_pressure_io_some_ratio", &[("id", "qemu/101")], 0.02);
    assert!(value(&t, "pve_ha_lrm_timestamp_seconds", &[("node", "pve2")]).is_none());
    assert_value(&t, "pve_ha_lrm_timestamp_seconds", &[("node", "pve1")], 1_774_016_350.0);
    for c in ["node_status", "vm_pressure", "ha_status"] {
        assert_eq!(success(&t, c), Some(0.0), "{c}");
    }
    // A broken manager_status: no HA series at all, the rest goes on.
    std::fs::write(p.join("etc/pve/ha/manager_status"), "\u{0}\u{1}").unwrap();
    let t = scrape(p.to_str().unwrap(), &[]);
    assert!(ha_families(&t).is_empty());
    assert_eq!(success(&t, "ha_status"), Some(0.0));
    assert_value(&t, "pve_node_swap_total_bytes", &[("node", "pve1")], 8_388_604.0 * 1024.0);
}

/// VM pressure wherever cgroup2 is mounted: the same VMs and values when the tree is laid out
/// as a hybrid host (cgroup2 at /sys/fs/cgroup/unified, as this test machine has it; v1
/// controllers beside it, and /proc/<pid>/cgroup listing them before the `0::` line); a VM
/// whose cgroup is not where its process says is an error, not "no VMs".
#[test]
fn vm_pressure_on_a_hybrid_host_and_a_broken_lookup() {
    let pure = scrape(&tree(), &[]);
    let pressure = |t: &str| -> Vec<String> {
        samples(t).into_iter().filter(|s| s.name.starts_with("pve_vm_pressure_")).map(|s| format!("{s:?}")).collect()
    };
    assert_eq!(pressure(&pure).len(), 12, "{pure}");

    let dir = tree_copy();
    let p = dir.path();
    let cg = p.join("sys/fs/cgroup");
    std::fs::create_dir_all(cg.join("unified")).unwrap();
    std::fs::rename(cg.join("qemu.slice"), cg.join("unified/qemu.slice")).unwrap();
    std::fs::write(cg.join("unified/cgroup.controllers"), "").unwrap();
    std::fs::remove_file(cg.join("cgroup.controllers")).unwrap();
    std::fs::write(
        p.join("proc/self/mountinfo"),
        "28 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/pve-root rw\n\
         25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755\n\
         26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n\
         33 25 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory\n\
         34 25 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,cpu,cpuacct\n",
    )
    .unwrap();
    for (pid, vmid) in [(3100, 100), (3101, 101), (3105, 105)] {
        std::fs::write(
            p.join(format!("proc/{pid}/cgroup")),
            format!("4:memory:/qemu.slice/{vmid}.scope\n2:cpu,cpuacct:/qemu.slice/{vmid}.scope\n0::/qemu.slice/{vmid}.scope\n"),
        )
        .unwrap();
    }
    let hybrid = scrape(p.to_str().unwrap(), &[]);
    assert_eq!(success(&hybrid, "vm_pressure"), Some(1.0), "{hybrid}");
    assert_eq!(pressure(&hybrid), pressure(&pure), "the same VMs and values on the hybrid layout");

    // VM 101's process says a cgroup that is not below the mount: its series go, with an error.
    std::fs::write(p.join("proc/3101/cgroup"), "0::/elsewhere.slice/101.scope\n").unwrap();
    let t = scrape(p.to_str().unwrap(), &[]);
    assert_eq!(success(&t, "vm_pressure"), Some(0.0), "a broken lookup is no success");
    assert!(value(&t, "pve_vm_pressure_cpu_some_ratio", &[("id", "qemu/101")]).is_none());
    assert_value(&t, "pve_vm_pressure_cpu_some_ratio", &[("id", "qemu/100")], 0.125);
}

/// A QEMU process's cgroup is read once and kept (PVE never moves it), not read every scrape;
/// a process that did move is found in its new cgroup in the same scrape that finds its old
/// cgroup gone. The VM's cgroups are real ones (a removed cgroup's open files answer ENODEV,
/// which a fixture file cannot), reached from the fixture tree through symbolic links.
#[test]
fn vm_pressure_follows_a_process_that_moved() {
    let dir = tree_copy();
    let p = dir.path();
    let real = cgroup2_mount().join(format!("pve-exporter-test-moved-{}", std::process::id()));
    let (old, new) = (real.join("old"), real.join("new"));
    for d in [&old, &new] {
        std::fs::create_dir_all(d).expect("a cgroup2 directory (this test runs as root)");
    }
    let _cleanup = RemoveCgroups(vec![old.clone(), new.clone(), real.clone()]);
    let cg = p.join("sys/fs/cgroup");
    std::fs::remove_dir_all(cg.join("qemu.slice/101.scope")).unwrap();
    std::os::unix::fs::symlink(&old, cg.join("qemu.slice/101.scope")).unwrap();
    std::fs::create_dir_all(cg.join("other.slice")).unwrap();
    std::os::unix::fs::symlink(&new, cg.join("other.slice/101.scope")).unwrap();

    let root = p.to_str().unwrap();
    let args = [
        "pve-exporter",
        "--ebpf",
        "off",
        "--root",
        root,
        "--collect-running-vms",
        "false",
        "--collect-storage",
        "false",
    ];
    let engine = Engine::new(Config::from_args(args).unwrap()).unwrap();
    let scrape = || exposition::render(Arc::new(engine.collect()), Format::Text);
    let t = scrape();
    assert_eq!(success(&t, "vm_pressure"), Some(1.0), "{t}");
    assert!(value(&t, "pve_vm_pressure_cpu_some_ratio", &[("id", "qemu/101")]).is_some(), "{t}");

    // Kept: what /proc/<pid>/cgroup says now is not read while the cgroup it said is there.
    std::fs::write(p.join("proc/3101/cgroup"), "garbage\n").unwrap();
    let t = scrape();
    assert_eq!(success(&t, "vm_pressure"), Some(1.0), "{t}");
    assert!(value(&t, "pve_vm_pressure_cpu_some_ratio", &[("id", "qemu/101")]).is_some(), "{t}");

    // Moved, and the old cgroup removed (its held files now answer ENODEV): read again at
    // once, and the new cgroup's files.
    std::fs::write(p.join("proc/3101/cgroup"), "0::/other.slice/101.scope\n").unwrap();
    std::fs::remove_dir(&old).unwrap();
    let t = scrape();
    assert_eq!(success(&t, "vm_pressure"), Some(1.0), "{t}");
    assert!(value(&t, "pve_vm_pressure_cpu_some_ratio", &[("id", "qemu/101")]).is_some(), "{t}");
    assert_value(&t, "pve_vm_pressure_cpu_some_ratio", &[("id", "qemu/100")], 0.125);
}

/// Removes the test's (empty) cgroups, in order, when dropped.
struct RemoveCgroups(Vec<std::path::PathBuf>);

impl Drop for RemoveCgroups {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn collectors_can_be_switched_off() {
    let t = scrape(&tree(), &["--no-collector.vm_pressure", "--no-collector.ha_status"]);
    assert!(samples(&t).iter().all(|s| !s.name.starts_with("pve_vm_pressure_") && !ha_families(&t).contains(s)));
    assert_value(&t, "pve_exporter_pve_collector_info", &[("collector", "vm_pressure"), ("source", "off")], 1.0);
    assert_eq!(success(&t, "vm_pressure"), None);
    assert_value(&t, "pve_node_load1", &[("node", "pve1")], 3.12);
    let t = scrape(&tree(), &["--no-collector.node_status", "--collector.node_status"]);
    assert_value(&t, "pve_node_load1", &[("node", "pve1")], 3.12);
}

/// The node values of this machine, through `--root /`, against /proc and df.
#[test]
fn live_node_values_of_this_machine() {
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap();
    let before = loadavg();
    let t = scrape("/", &[]);
    let after = loadavg();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let node = host.trim().split('.').next().unwrap().to_string();
    let n = [("node", node.as_str())];
    let load1 = value(&t, "pve_node_load1", &n).unwrap_or_else(|| panic!("no load on {node}:\n{t}"));
    let first = |s: &str| s.split_whitespace().next().unwrap().parse::<f64>().unwrap();
    assert!(load1 == first(&before) || load1 == first(&after), "{load1} vs {before} / {after}");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb = |key: &str| -> f64 {
        let line = meminfo.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 1024.0
    };
    assert_value(&t, "pve_node_swap_total_bytes", &n, kb("SwapTotal:"));
    // df's size of / (f_blocks x f_frsize), measured by another program.
    let df = Command::new("df").args(["-B1", "--output=size", "/"]).output().expect("df");
    let size: f64 = String::from_utf8_lossy(&df.stdout).lines().nth(1).unwrap().trim().parse().unwrap();
    assert_value(&t, "pve_node_rootfs_total_bytes", &n, size);
    let mode = if Path::new("/sys/firmware/efi").is_dir() { "efi" } else { "legacy-bios" };
    assert_eq!(family(&t, "pve_node_boot_mode_info")[0].get("mode"), mode);
    assert!(value(&t, "pve_node_ksm_shared_bytes", &n).is_some());
    assert_eq!(success(&t, "node_status"), Some(1.0), "{t}");
}

// ---------------------------------------------------------------------------------------------
// API source.

#[test]
fn api_cluster_scope_serves_every_node() {
    let api = Api::start();
    let t = api.scrape(&tree(), &["--pve-scope", "cluster"]);
    for node in ["pve1", "pve2", "pve3"] {
        assert_eq!(success(&t, &format!("node_status/{node}")), Some(1.0), "{t}");
        assert_eq!(success(&t, &format!("vm_pressure/{node}")), Some(1.0));
        assert_eq!(success(&t, &format!("physical_disk/{node}")), Some(1.0));
    }
    assert_eq!(success(&t, "pve_nodes"), Some(1.0));
    assert_eq!(success(&t, "ha_status"), Some(1.0));
    assert_value(&t, "pve_node_boot_mode_info", &[("node", "pve2"), ("mode", "legacy-bios"), ("secureboot", "0")], 1.0);
    assert_value(&t, "pve_node_rootfs_available_bytes", &[("node", "pve1")], 66_943_684_608.0);
    // Pressure: running QEMU VMs only, 0..100 -> 0..1.
    assert_value(&t, "pve_vm_pressure_cpu_some_ratio", &[("id", "qemu/301"), ("node", "pve3")], 1.0);
    assert_value(&t, "pve_vm_pressure_io_some_ratio", &[("id", "qemu/200"), ("node", "pve2")], 0.4225);
    assert!(value(&t, "pve_vm_pressure_cpu_some_ratio", &[("id", "qemu/202")]).is_none(), "stopped");
    // Disks: health PASSED (ATA, NVMe) and OK (SAS) -> 1; FAILED! and a SAS informational
    // exception -> 0; UNKNOWN and empty -> no health series, their text in the status family;
    // N/A wear-out skipped; one osd series per OSD.
    let disk = |node, dev| [("node", node), ("devpath", dev)];
    assert_value(&t, "pve_physical_disk_health", &disk("pve1", "/dev/nvme0n1"), 1.0);
    assert_value(&t, "pve_physical_disk_health", &disk("pve2", "/dev/sdb"), 1.0);
    assert_value(&t, "pve_physical_disk_health", &disk("pve2", "/dev/sdc"), 0.0);
    assert_value(&t, "pve_physical_disk_health", &disk("pve3", "/dev/sda"), 0.0);
    assert!(value(&t, "pve_physical_disk_health", &disk("pve2", "/dev/sda")).is_none(), "UNKNOWN");
    assert!(value(&t, "pve_physical_disk_health", &disk("pve3", "/dev/sdb")).is_none(), "empty");
    assert_value(
        &t,
        "pve_physical_disk_smart_status",
        &[("devpath", "/dev/sda"), ("node", "pve2"), ("status", "UNKNOWN")],
        1.0,
    );
    assert_value(
        &t,
        "pve_physical_disk_smart_status",
        &[("devpath", "/dev/sdb"), ("node", "pve2"), ("status", "OK")],
        1.0,
    );
    assert_value(
        &t,
        "pve_physical_disk_smart_status",
        &[("devpath", "/dev/sda"), ("node", "pve3"), ("status", "FAILED!")],
        1.0,
    );
    assert_value(&t, "pve_physical_disk_wearout_remaining_ratio", &disk("pve1", "/dev/sda"), 0.97);
    assert!(value(&t, "pve_physical_disk_wearout_remaining_ratio", &disk("pve1", "/dev/sdb")).is_none());
    assert_value(&t, "pve_physical_disk_size_bytes", &disk("pve1", "/dev/nvme0n1"), 7_681_501_126_656.0);
    let osds: Vec<String> = family(&t, "pve_physical_disk_osd")
        .iter()
        .map(|s| format!("{} {} {}", s.get("node"), s.get("devpath"), s.get("osd")))
        .collect();
    assert_eq!(osds, ["pve1 /dev/nvme0n1 osd.8", "pve2 /dev/nvme0n1 osd.3", "pve2 /dev/nvme0n1 osd.4"]);
    assert_value(&t, "pve_physical_disk_info", &[("devpath", "/dev/sdb"), ("node", "pve3"), ("used", "")], 1.0);
    for c in ["node_status", "vm_pressure", "ha_status", "physical_disk"] {
        assert_value(
            &t,
            "pve_exporter_pve_collector_info",
            &[("collector", c), ("source", "api"), ("scope", "cluster")],
            1.0,
        );
    }
}

/// The API in local scope (node pve1) and the local files of pve1 give the same families,
/// labels and values; only the root file system differs (the fixture's statvfs), and
/// physical_disk has the API alone.
#[test]
fn both_sources_serve_the_same_families() {
    let api = Api::start();
    let remote = api.scrape(&tree(), &[]);
    let local = scrape(&tree(), &[]);
    let comparable = |t: &str| -> BTreeSet<String> {
        samples(t)
            .into_iter()
            .filter(|s| is_pve_family(&s.name) && !s.name.starts_with("pve_physical_disk_"))
            .map(|s| {
                if s.name.starts_with("pve_node_rootfs_") {
                    format!("{} {:?}", s.name, s.labels)
                } else {
                    format!("{s:?}")
                }
            })
            .collect()
    };
    let (r, l) = (comparable(&remote), comparable(&local));
    assert!(r.len() > 40, "{remote}");
    assert_eq!(r, l, "api only: {:?}\nlocal only: {:?}", r.difference(&l), l.difference(&r));
    assert!(!family(&remote, "pve_physical_disk_health").is_empty());
    // Both name their collectors alike in local scope.
    for c in ["node_status", "vm_pressure", "ha_status"] {
        assert_eq!(success(&remote, c), Some(1.0), "{remote}");
    }
    assert_eq!(success(&remote, "physical_disk"), Some(1.0));
    // Only /nodes/pve1/... was asked, never /nodes.
    assert_eq!(api.server.requests("/api2/json/nodes"), 0);
    assert!(api.server.log().iter().all(|(p, _)| !p.contains("pve2") && !p.contains("pve3")), "{:?}", api.server.log());
}

#[test]
fn one_node_failing_keeps_the_other_nodes() {
    let api = Api::start();
    let healthy = api.scrape(&tree(), &["--pve-scope", "cluster"]);
    api.server.fault("pve2", Fault::Status(500));
    api.server.fault("pve3", Fault::Status(403));
    let t = api.scrape(&tree(), &["--pve-scope", "cluster"]);
    assert!(of_node(&t, "pve2").iter().all(|s| s.name.starts_with("pve_ha_")), "{t}");
    assert!(of_node(&t, "pve3").iter().all(|s| s.name.starts_with("pve_ha_")));
    assert_eq!(of_node(&t, "pve1"), of_node(&healthy, "pve1"));
    for c in ["node_status", "vm_pressure", "physical_disk"] {
        assert_eq!(success(&t, &format!("{c}/pve1")), Some(1.0));
        assert_eq!(success(&t, &format!("{c}/pve2")), Some(0.0));
        assert_eq!(success(&t, &format!("{c}/pve3")), Some(0.0));
    }
    assert_eq!(success(&t, "ha_status"), Some(1.0));
    // 5xx is retried (twice), 4xx is not.
    assert_eq!(api.server.requests("/api2/json/nodes/pve2/status"), 1 + 3);
    assert_eq!(api.server.requests("/api2/json/nodes/pve3/status"), 1 + 1);
}

#[test]
fn one_node_hanging_past_the_timeout_keeps_the_other_nodes() {
    let api = Api::start();
    let healthy = api.scrape(&tree(), &["--pve-scope", "cluster"]);
    api.server.fault("pve3", Fault::Hang);
    let t = api.scrape(&tree(), &["--pve-scope", "cluster", "--pve-api-timeout", "1s"]);
    assert!(of_node(&t, "pve3").iter().all(|s| s.name.starts_with("pve_ha_")), "{t}");
    for node in ["pve1", "pve2"] {
        assert_eq!(of_node(&t, node), of_node(&healthy, node), "{node}");
    }
    for c in ["node_status", "vm_pressure", "physical_disk"] {
        assert_eq!(success(&t, &format!("{c}/pve3")), Some(0.0));
        assert_eq!(success(&t, &format!("{c}/pve2")), Some(1.0));
    }
}

#[test]
fn a_wrong_token_is_refused() {
    let api = Api::start();
    std::fs::write(api.dir.path().join("token"), "monitor@pve!metrics=00000000-0000-0000-0000-000000000000").unwrap();
    let t = api.scrape(&tree(), &[]);
    assert!(samples(&t).iter().all(|s| !is_pve_family(&s.name)), "{t}");
    for c in ["node_status", "vm_pressure", "ha_status", "physical_disk"] {
        assert_eq!(success(&t, c), Some(0.0), "{c}");
    }
    let api2 = PveApi::new(settings(&api, Token::parse("monitor@pve!metrics=wrong").unwrap(), ca_trust(&api)));
    let err =
        api2.session(&HostRoot::new(tree()), &BlockingGate::default(), Duration::from_secs(5)).unwrap().get("/nodes");
    let err = err.unwrap_err().to_string();
    assert!(err.contains("HTTP 401") && err.contains("check the API token"), "{err}");
    assert!(!err.contains("wrong"));
    // Every request carried the header: none was served without it.
    assert!(api.server.log().iter().all(|(_, status)| *status == 401));
}

fn settings(api: &Api, token: Token, trust: Trust) -> ApiSettings {
    ApiSettings { url: api.server.url(), token: Ok(token), trust, timeout: Duration::from_secs(5), max_concurrent: 2 }
}

fn ca_trust(api: &Api) -> Trust {
    Trust::CaFile(api.dir.path().join("ca.pem"))
}

#[test]
fn a_wrong_ca_is_refused_with_a_clear_error() {
    let api = Api::start();
    let other = Pki::generate("Another CA");
    let wrong = api.dir.path().join("other-ca.pem");
    std::fs::write(&wrong, &other.ca_pem).unwrap();
    let client = PveApi::new(settings(&api, Token::parse(TOKEN).unwrap(), Trust::CaFile(wrong.clone())));
    let session = client.session(&HostRoot::new(tree()), &BlockingGate::default(), Duration::from_secs(5)).unwrap();
    let err = session.get("/nodes").unwrap_err().to_string();
    assert!(err.starts_with("GET /nodes: TLS: "), "{err}");
    assert!(err.contains("--pve-api-ca-file") && err.contains("not trusted"), "{err}");
    assert!(!err.contains("attempts"), "a TLS failure is not retried: {err}");
    assert_eq!(api.server.requests("/api2/json/nodes"), 0, "no request got through");
    // Through the exporter: every API collector fails, the scrape still answers.
    let wrong = wrong.to_string_lossy().into_owned();
    let token = api.file("token");
    let t = scrape(
        &tree(),
        &["--pve-api-url", &api.server.url(), "--pve-api-token-file", &token, "--pve-api-ca-file", &wrong],
    );
    assert_eq!(success(&t, "node_status"), Some(0.0));
    // The right CA works, and so does --pve-api-insecure.
    let client = PveApi::new(settings(&api, Token::parse(TOKEN).unwrap(), ca_trust(&api)));
    let s = client.session(&HostRoot::new(tree()), &BlockingGate::default(), Duration::from_secs(5)).unwrap();
    assert!(s.get("/nodes").is_ok());
    let client = PveApi::new(settings(&api, Token::parse(TOKEN).unwrap(), Trust::Insecure));
    let s = client.session(&HostRoot::new(tree()), &BlockingGate::default(), Duration::from_secs(5)).unwrap();
    assert!(s.get("/nodes").is_ok());
}

#[test]
fn answers_are_size_capped() {
    let api = Api::start();
    api.server.fault("pve2", Fault::Oversized);
    let client = PveApi::new(settings(&api, Token::parse(TOKEN).unwrap(), ca_trust(&api)));
    let s = client.session(&HostRoot::new(tree()), &BlockingGate::default(), Duration::from_secs(5)).unwrap();
    let err = s.get("/nodes/pve2/status").unwrap_err().to_string();
    assert!(err.contains("answer larger than"), "{err}");
    assert_eq!(api.server.requests("/api2/json/nodes/pve2/status"), 1, "not retried");
    assert!(s.get("/nodes/pve1/status").is_ok());
}

#[test]
fn tls_is_verified_against_pve_root_ca_by_default() {
    let api = Api::start();
    let dir = tree_copy();
    let root = dir.path().to_str().unwrap().to_string();
    let token = api.file("token");
    let url = api.server.url();
    let args = ["--pve-api-url", url.as_str(), "--pve-api-token-file", token.as_str()];
    // No /etc/pve/pve-root-ca.pem: Mozilla's roots, which do not know the test CA.
    let t = scrape(&root, &args);
    assert_eq!(success(&t, "node_status"), Some(0.0), "{t}");
    std::fs::write(dir.path().join("etc/pve/pve-root-ca.pem"), &api.server.pki.ca_pem).unwrap();
    let t = scrape(&root, &args);
    assert_eq!(success(&t, "node_status"), Some(1.0), "{t}");
    assert_value(&t, "pve_node_rootfs_total_bytes", &[("node", "pve1")], 100_861_726_720.0);
}

// ---------------------------------------------------------------------------------------------
// The daemon with the token in its environment.

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

#[test]
fn daemon_takes_the_token_from_the_environment_and_never_logs_it() {
    let api = Api::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pve-exporter"))
        .args(["--root", &tree(), "--ebpf", "off", "--collect-running-vms", "false", "--collect-storage", "false"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--loglevel", "DEBUG"])
        .args(["--pve-scope", "cluster", "--pve-api-url", &api.server.url(), "--pve-api-ca-file", &api.file("ca.pem")])
        .env("PVE_EXPORTER_API_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pve-exporter");
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Ok(r) = http_get(port, "/metrics")
            && r.starts_with("HTTP/1.1 200")
        {
            break r;
        }
        assert!(child.try_wait().unwrap().is_none(), "pve-exporter exited");
        assert!(Instant::now() < deadline, "no answer within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(body.contains("pve_node_load1{node=\"pve3\"} 0.01"), "{body}");
    assert!(!log.contains(SECRET) && !body.contains(SECRET), "the secret leaked:\n{log}");
    assert!(!log.is_empty());
    // The deprecated aliases still work (no VM or storage series above), with one warning each at start.
    for flag in ["--collect-running-vms false", "--collect-storage false"] {
        assert_eq!(log.matches(&format!("{flag} (")).count(), 1, "one deprecation warning for {flag}:\n{log}");
    }
    assert!(!body.contains("collector=\"kvm\"") && !body.contains("collector=\"storage\""), "{body}");
}

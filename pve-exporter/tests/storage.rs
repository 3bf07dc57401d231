//! The storage collectors on the fixture host `fixtures/hosts/pve-storage` (one storage of every
//! type, see `fixtures/commands/README.md`), with the recorded command outputs of
//! `fixtures/commands/pve-storage/` as `zfs`, `zpool`, `vgs` and `lvs`, through the library API.
//!
//! Golden files `fixtures/golden/pve-storage.{prom,om}`: before comparing, the value of every
//! `*_duration_seconds` sample and of every size/free/used sample of a statvfs-sized storage
//! (dir, btrfs, nfs, cifs, cephfs, glusterfs: they measure the file system the checkout is on)
//! becomes `0` (so do prometheus-pve-exporter's `pve_disk_*` of the node and of those storages),
//! and `ebpf_programs` of the build info becomes `absent`. The targeted tests
//! check the real values. Regenerate after an intended change with
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p pve-exporter --test storage
//! ```

mod fixture_scrape;

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use fixture_scrape::{FIXTURES, Sample, scrape as scrape_with, tree};
use pve_exporter::{config::Config, exposition::Format};

fn commands() -> String {
    format!("{FIXTURES}/commands/pve-storage/bin")
}

/// The storage fixture host, storage collectors only.
fn scrape_storage(root: &str, cmds: &str, extra: &[&str], format: Format) -> String {
    // With prometheus-pve-exporter's families, whose storage series the storage collector adds.
    let mut args = vec!["--root", root, "--command-path", cmds, "--collect-running-vms", "false", "--collector.ppe"];
    args.extend_from_slice(extra);
    scrape_with(&args, format)
}

/// The samples of `name`.
fn samples(text: &str, name: &str) -> Vec<Sample> {
    fixture_scrape::samples(text).into_iter().filter(|s| s.name == name).collect()
}

/// name label -> value of the samples of `family`.
fn by_name(text: &str, family: &str) -> BTreeMap<String, f64> {
    samples(text, family).into_iter().map(|s| (s.get("name").to_string(), s.num())).collect()
}

fn collector(text: &str, name: &str) -> Option<f64> {
    samples(text, "pve_exporter_collector_success").into_iter().find(|s| s.get("collector") == name).map(|s| s.num())
}

const STATVFS_TYPES: &[&str] = &["dir", "btrfs", "nfs", "cifs", "cephfs", "glusterfs"];

/// Sizes by statvfs depend on this machine's file systems; the targeted test checks them. The
/// `ppe` collector's `pve_disk_*` of the node (`df /`) and of statvfs-sized storages too.
fn normalize(text: &str) -> String {
    let statvfs_ids: Vec<String> = samples(text, "pve_node_storage_info")
        .into_iter()
        .filter(|s| STATVFS_TYPES.contains(&s.get("type")))
        .map(|s| format!("/{}", s.get("name")))
        .collect();
    fixture_scrape::normalize(text, |s| {
        (s.name.starts_with("pve_node_storage_")
            && s.name.ends_with("_bytes")
            && s.label("type").is_some_and(|t| STATVFS_TYPES.contains(&t)))
            || (s.name.starts_with("pve_disk_")
                && s.label("id").is_some_and(|id| {
                    id.starts_with("node/")
                        || (id.starts_with("storage/") && statvfs_ids.iter().any(|n| id.ends_with(n.as_str())))
                }))
    })
}

fn check_golden(actual: &str, file: &str) {
    fixture_scrape::check_golden(&normalize(actual), file);
}

#[test]
fn golden_pve_storage_text() {
    check_golden(&scrape_storage(&tree("pve-storage"), &commands(), &[], Format::Text), "pve-storage.prom");
}

#[test]
fn golden_pve_storage_openmetrics() {
    let om = scrape_storage(&tree("pve-storage"), &commands(), &[], Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"));
    check_golden(&om, "pve-storage.om");
}

/// Every configured storage is described; exactly the enabled, locally sizable ones on this
/// node (pve1) are sized, with the values of the recorded command outputs or of statvfs.
#[test]
fn pve_storage_produces_the_documented_series() {
    let t = scrape_storage(&tree("pve-storage"), &commands(), &[], Format::Text);
    let info = samples(&t, "pve_node_storage_info");
    let names: Vec<&str> = info.iter().map(|s| s.get("name")).collect();
    assert_eq!(
        names,
        [
            "local",
            "local-zfs",
            "tank-vm",
            "local-lvm",
            "san-lvm",
            "nas-images",
            "nas-backup",
            "smb-iso",
            "cephfs",
            "gluster",
            "btrfs-local",
            "ceph-vm",
            "san-iscsi",
            "san-direct",
            "zfs-over-iscsi",
            "pbs-backup",
            "esxi-import",
            "usb-backup",
            "old-backup",
            "pve2-zfs",
            "dup-path",
        ],
        "the malformed sections (nas-typo, 9lives) are left out:\n{t}"
    );
    let mut types: Vec<&str> = info.iter().map(|s| s.get("type")).collect();
    types.sort_unstable();
    types.dedup();
    assert_eq!(
        types,
        [
            "btrfs",
            "cephfs",
            "cifs",
            "dir",
            "esxi",
            "glusterfs",
            "iscsi",
            "iscsidirect",
            "lvm",
            "lvmthin",
            "nfs",
            "pbs",
            "rbd",
            "zfs",
            "zfspool"
        ]
    );
    let get = |name: &str| info.iter().find(|s| s.get("name") == name).expect(name).clone();
    let labels = |name: &str, keys: &[&str]| -> Vec<String> {
        let s = get(name);
        keys.iter().map(|k| s.get(k).to_string()).collect()
    };
    assert_eq!(
        labels("local", &["type", "content", "path", "shared", "disabled", "nodes"]),
        ["dir", "backup,iso,vztmpl", "/var/lib/vz", "0", "0", ""]
    );
    assert_eq!(labels("local-zfs", &["pool", "content"]), ["rpool/data", "images,rootdir"]);
    assert_eq!(labels("tank-vm", &["pool", "nodes"]), ["tank", "pve1,pve2"]);
    assert_eq!(labels("local-lvm", &["vgname", "thinpool", "shared"]), ["pve", "data", "0"]);
    assert_eq!(labels("san-lvm", &["vgname", "shared"]), ["vg_san", "1"]);
    assert_eq!(
        labels("nas-backup", &["server", "export", "path", "shared"]),
        ["10.0.0.1", "/mnt/backup", "/mnt/pve/nas-backup", "1"]
    );
    assert_eq!(labels("smb-iso", &["server", "path"]), ["fd00::10", "/mnt/pve/smb-iso"]);
    assert_eq!(labels("ceph-vm", &["pool", "shared", "path"]), ["vm-pool", "1", ""]);
    assert_eq!(labels("pbs-backup", &["server", "shared"]), ["pbs.example.com", "1"]);
    assert_eq!(labels("old-backup", &["disabled"]), ["1"]);
    assert_eq!(labels("dup-path", &["path"]), ["/srv/dup"], "a repeated key keeps its first value");

    let enabled = by_name(&t, "pve_node_storage_enabled");
    assert_eq!(enabled.len(), names.len());
    for (name, v) in &enabled {
        let want = if matches!(name.as_str(), "old-backup" | "pve2-zfs") { 0.0 } else { 1.0 };
        assert_eq!(*v, want, "enabled of {name}");
    }

    let size = by_name(&t, "pve_node_storage_size_bytes");
    let free = by_name(&t, "pve_node_storage_free_bytes");
    let used = by_name(&t, "pve_node_storage_used_bytes");
    let sized: Vec<&str> = size.keys().map(String::as_str).collect();
    assert_eq!(
        sized,
        [
            "btrfs-local",
            "cephfs",
            "dup-path",
            "gluster",
            "local",
            "local-lvm",
            "local-zfs",
            "nas-images",
            "san-lvm",
            "smb-iso",
            "tank-vm"
        ],
        "not sized: the unmounted nas-backup and usb-backup, the disabled old-backup, pve2-zfs of \
         another node, and the remote types"
    );
    assert_eq!(free.keys().collect::<Vec<_>>(), size.keys().collect::<Vec<_>>());
    assert_eq!(used.keys().collect::<Vec<_>>(), size.keys().collect::<Vec<_>>());
    // zfs get: size = used + available.
    assert_eq!(
        (size["local-zfs"], free["local-zfs"], used["local-zfs"]),
        (1_825_361_100_800.0, 1_610_612_736_000.0, 214_748_364_800.0)
    );
    assert_eq!(
        (size["tank-vm"], free["tank-vm"], used["tank-vm"]),
        (7_696_581_394_432.0, 5_497_558_138_880.0, 2_199_023_255_552.0)
    );
    // vgs and lvs (12.59 % of the thin pool in use).
    assert_eq!(
        (size["san-lvm"], free["san-lvm"], used["san-lvm"]),
        (2_199_019_061_248.0, 549_755_813_888.0, 1_649_263_247_360.0)
    );
    assert_eq!(
        (size["local-lvm"], free["local-lvm"], used["local-lvm"]),
        (348_131_704_832.0, 304_301_923_194.0, 43_829_781_638.0)
    );
    // statvfs of the directories of the fixture tree (the sizes are stable, the free space
    // of a build machine is not).
    for (name, dir) in [
        ("local", "var/lib/vz"),
        ("nas-images", "mnt/pve/nas-images"),
        ("smb-iso", "mnt/pve/smb-iso"),
        ("cephfs", "mnt/pve/cephfs"),
        ("gluster", "mnt/pve/gluster"),
        ("btrfs-local", "srv/btrfs"),
        ("dup-path", "srv/dup"),
    ] {
        let st = statvfs(&Path::new(&tree("pve-storage")).join(dir));
        assert_eq!(size[name], (st.f_frsize * st.f_blocks) as f64, "{name}");
        assert!(free[name] <= size[name] && used[name] <= size[name], "{name}");
    }
    let pools: BTreeMap<String, (f64, f64)> = samples(&t, "pve_node_zpool_size_bytes")
        .into_iter()
        .zip(samples(&t, "pve_node_zpool_free_bytes"))
        .map(|(s, f)| (s.get("pool").to_string(), (s.num(), f.num())))
        .collect();
    assert_eq!(
        pools,
        BTreeMap::from([
            ("rpool".to_string(), (1_992_864_825_344.0, 1_717_986_918_400.0)),
            ("tank".to_string(), (11_991_548_690_432.0, 8_796_093_022_208.0)),
        ])
    );
    for c in ["storage", "storage_zfs", "storage_lvm"] {
        assert_eq!(collector(&t, c), Some(1.0), "{c}\n{t}");
    }
}

fn statvfs(p: &Path) -> libc::statvfs {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid path string and output buffer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) }, 0, "statvfs {}", p.display());
    // SAFETY: filled by the successful call.
    unsafe { st.assume_init() }
}

/// A host without storage.cfg (not PVE, or pve-basic) has no storage series, and that is not
/// a failure.
#[test]
fn no_storage_cfg_is_not_a_failure() {
    let t = scrape_with(&["--root", &tree("pve-basic")], Format::Text);
    assert!(!t.contains("pve_node_storage_"), "{t}");
    assert_eq!(collector(&t, "storage"), Some(1.0), "{t}");
    assert_eq!(collector(&t, "storage_zfs"), None, "no zfspool storage: the zfs collector does not run");
    let t = scrape_storage(&tree("pve-storage"), &commands(), &["--collect-storage", "false"], Format::Text);
    assert!(!t.contains("pve_node_storage_") && collector(&t, "storage").is_none(), "{t}");
}

/// A copy of the command doubles in which `tool` is replaced by `script`.
fn doubles_with(tool: &str, script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(FIXTURES).join("commands/pve-storage");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    for entry in std::fs::read_dir(src.join("bin")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join("bin").join(entry.file_name())).unwrap();
    }
    let p: PathBuf = dir.path().join("bin").join(tool);
    std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A hung `zfs` costs the zfs sizes and the storage_zfs collector, nothing else.
#[test]
fn a_hung_zfs_costs_only_its_own_series() {
    let cmds = doubles_with("zfs", "exec sleep 60");
    let bin = cmds.path().join("bin");
    let t = scrape_storage(&tree("pve-storage"), bin.to_str().unwrap(), &["--storage-timeout", "300ms"], Format::Text);
    assert_eq!(collector(&t, "storage_zfs"), Some(0.0), "{t}");
    assert_eq!(collector(&t, "storage"), Some(1.0));
    assert_eq!(collector(&t, "storage_lvm"), Some(1.0));
    let size = by_name(&t, "pve_node_storage_size_bytes");
    assert!(!size.contains_key("local-zfs") && !size.contains_key("tank-vm"), "{t}");
    for still in ["local", "nas-images", "local-lvm", "san-lvm"] {
        assert!(size.contains_key(still), "{still} lost its size:\n{t}");
    }
    assert_eq!(samples(&t, "pve_node_zpool_size_bytes").len(), 2, "zpool list still answered");
    assert_eq!(samples(&t, "pve_node_storage_info").len(), 21);
}

/// A `vgs` that prints garbage and an `lvs` that fails cost the LVM sizes only.
#[test]
fn broken_lvm_tools_cost_only_their_series() {
    let cmds = doubles_with("vgs", "echo 'WARNING: something'; exit 5");
    let lvs = cmds.path().join("bin/lvs");
    std::fs::write(&lvs, "#!/bin/sh\necho '  Volume group \"pve\" not found' >&2\nexit 5\n").unwrap();
    let bin = cmds.path().join("bin");
    let t = scrape_storage(&tree("pve-storage"), bin.to_str().unwrap(), &[], Format::Text);
    assert_eq!(collector(&t, "storage_lvm"), Some(0.0), "{t}");
    assert_eq!(collector(&t, "storage_zfs"), Some(1.0));
    let size = by_name(&t, "pve_node_storage_size_bytes");
    assert!(!size.contains_key("local-lvm") && !size.contains_key("san-lvm"));
    assert!(size.contains_key("local-zfs") && size.contains_key("local"));
}

/// storage.cfg that hangs (a FIFO without writer, like a stuck pmxcfs): the storage collector
/// fails within --pmxcfs-timeout and reports nothing; the scrape goes on.
#[test]
fn a_hung_storage_cfg_fails_the_storage_collector_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc/pve")).unwrap();
    let fifo = std::ffi::CString::new(dir.path().join("etc/pve/storage.cfg").to_str().unwrap()).unwrap();
    // SAFETY: valid path string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let root = dir.path().to_str().unwrap();
    let t = scrape_storage(root, &commands(), &["--pmxcfs-timeout", "200ms"], Format::Text);
    assert_eq!(collector(&t, "storage"), Some(0.0), "{t}");
    assert!(!t.contains("pve_node_storage_"), "{t}");
    assert!(t.contains("pve_scrape_duration_seconds"));
}

/// Garbage in storage.cfg and mountinfo: no panic, and what can be read is reported.
#[test]
fn garbage_files_do_not_break_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/pve")).unwrap();
    std::fs::create_dir_all(root.join("proc/self")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/vz")).unwrap();
    std::fs::write(root.join("etc/pve/storage.cfg"), "\u{1}\u{2}:\n\t:\nnfs: x1\n\t\t\n\n:::\n\nzfspool:zz\n\tpool\n")
        .unwrap();
    std::fs::write(root.join("proc/self/mountinfo"), "\0\0 - - -\n\n").unwrap();
    let t = scrape_storage(root.to_str().unwrap(), &commands(), &[], Format::Text);
    assert_eq!(by_name(&t, "pve_node_storage_enabled").keys().collect::<Vec<_>>(), ["local", "x1", "zz"]);
    assert!(by_name(&t, "pve_node_storage_size_bytes").contains_key("local"));
    // zz is a zfspool without pool: the storage collector says so.
    assert_eq!(collector(&t, "storage"), Some(0.0), "{t}");
}

#[test]
fn storage_flags() {
    let c = Config::from_args(["pve-exporter"]).unwrap();
    assert_eq!(c.storage_timeout, std::time::Duration::from_secs(5));
    assert_eq!(c.command_path, None);
    let c = Config::from_args(["pve-exporter", "--storage-timeout", "1500ms", "--command-path", "/opt/t"]).unwrap();
    assert_eq!(c.storage_timeout, std::time::Duration::from_millis(1500));
    assert_eq!(c.command_path.as_deref(), Some(Path::new("/opt/t")));
}

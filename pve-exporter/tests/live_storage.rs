//! Live test of the storage collector on this machine: the real daemon, real tmpfs mounts and
//! real statvfs. Needs root (it mounts). Every mount is undone by a guard, also when the test
//! fails.

mod common;

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::symlink},
    path::{Path, PathBuf},
};

use common::{Daemon, promtool_accepts, sample};

const MIB: f64 = (1u64 << 20) as f64;

/// A tmpfs mounted at a path; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let c = |s: &[u8]| CString::new(s).expect("no NUL");
        let (src, target, fstype, opts) =
            (c(b"tmpfs"), c(at.as_os_str().as_bytes()), c(b"tmpfs"), c(format!("size={size}").as_bytes()));
        // SAFETY: valid NUL-terminated strings; the data argument is tmpfs's option string.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, opts.as_ptr().cast()) };
        assert_eq!(rc, 0, "mount tmpfs at {}: {}", at.display(), std::io::Error::last_os_error());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Ok(target) = CString::new(self.0.as_os_str().as_bytes()) else { return };
        // SAFETY: valid NUL-terminated string. A busy mount is detached instead, so it never
        // outlives the test.
        unsafe {
            if libc::umount2(target.as_ptr(), 0) != 0 {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

fn statvfs_size(p: &Path) -> f64 {
    let c = CString::new(p.as_os_str().as_bytes()).expect("no NUL");
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid path string and output buffer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) }, 0);
    // SAFETY: filled by the successful call.
    let st = unsafe { st.assume_init() };
    (st.f_frsize * st.f_blocks) as f64
}

const STORAGE_CFG: &str = "\
dir: live-dir
\tpath /mnt/pve/live
\tcontent backup

nfs: live-nfs
\tpath /mnt/pve/live
\tserver 127.0.0.1
\texport /live
\tcontent images

nfs: gone-nfs
\tpath /mnt/pve/unmounted
\tserver 127.0.0.1
\texport /gone

cifs: gone-cifs
\tpath /mnt/pve/unmounted
\tserver 127.0.0.1
\tshare gone

dir: plain-dir
\tpath /mnt/pve/unmounted

dir: wants-mount
\tpath /mnt/pve/unmounted
\tis_mountpoint yes
";

/// A `dir` and an `nfs` storage on a real tmpfs mount are sized exactly; an `nfs`, a `cifs`
/// and an `is_mountpoint` dir on a path that is not mounted are not (their statvfs would be
/// the file system below); once the tmpfs is unmounted the nfs storage loses its size.
#[test]
fn storages_on_real_mounts() {
    // SAFETY: no preconditions.
    assert!(unsafe { libc::geteuid() } == 0, "this test mounts tmpfs: run it as root (cargo xtask test does)");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    for d in ["etc/pve", "var/lib/vz", "mnt/pve/live", "mnt/pve/unmounted"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    // The real /proc: mountinfo of the daemon's own mount namespace.
    symlink("/proc", root.join("proc")).expect("symlink proc");
    std::fs::write(root.join("etc/pve/storage.cfg"), STORAGE_CFG).expect("storage.cfg");
    // Declared after `tmp`: unmounted before the directory is removed.
    let mount = Tmpfs::mount(&root.join("mnt/pve/live"), "64m");
    std::fs::write(root.join("mnt/pve/live/data"), vec![7u8; 1 << 20]).expect("write 1 MiB");

    let daemon = Daemon::start(&root, &["--ebpf", "off", "--collect-running-vms", "false"]);
    let m = daemon.get("/metrics");
    let size = |name: &str| sample(&m, "pve_node_storage_size_bytes", &[("name", name)]);
    let free = |name: &str| sample(&m, "pve_node_storage_free_bytes", &[("name", name)]);
    let used = |name: &str| sample(&m, "pve_node_storage_used_bytes", &[("name", name)]);
    for name in ["live-dir", "live-nfs"] {
        assert_eq!(size(name), Some(64.0 * MIB), "{name}\n{m}");
        assert_eq!(used(name), Some(MIB), "{name}\n{m}");
        assert_eq!(free(name), Some(63.0 * MIB), "{name}\n{m}");
    }
    for name in ["gone-nfs", "gone-cifs", "wants-mount"] {
        assert_eq!(size(name), None, "{name} is not mounted and must not be sized:\n{m}");
        assert_eq!(sample(&m, "pve_node_storage_enabled", &[("name", name)]), Some(1.0));
        assert_eq!(sample(&m, "pve_node_storage_info", &[("name", name)]), Some(1.0));
    }
    // A plain dir storage is sized wherever its path is: here the temp dir's file system.
    let below = statvfs_size(&root.join("mnt/pve/unmounted"));
    assert_eq!(size("plain-dir"), Some(below), "{m}");
    assert_ne!(below, 64.0 * MIB);
    assert_eq!(sample(&m, "pve_exporter_collector_success", &[("collector", "storage")]), Some(1.0), "{m}");
    promtool_accepts(&m);

    // Unmounted: the nfs storage is no longer sized; the dir storage now shows what is below.
    drop(mount);
    let m = daemon.get("/metrics");
    assert_eq!(sample(&m, "pve_node_storage_size_bytes", &[("name", "live-nfs")]), None, "{m}");
    assert_eq!(sample(&m, "pve_node_storage_size_bytes", &[("name", "live-dir")]), Some(below), "{m}");
    assert_eq!(sample(&m, "pve_exporter_collector_success", &[("collector", "storage")]), Some(1.0));
}

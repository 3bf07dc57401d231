//! File system sizes (statvfs) and mount points (/proc/self/mountinfo), for the storages that
//! live on a path. A network storage (NFS, CIFS, ...) is sized only while its path is really a
//! mount point: the statvfs of an unmounted path is that of the file system below it (usually
//! the root file system), which would be a lie.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
};

/// Size, free and used bytes of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub size: u64,
    pub free: u64,
    pub used: u64,
}

/// statvfs figures as `df` shows them: size = frsize × blocks, free = frsize × bavail (what
/// unprivileged writers can still use), used = size - frsize × bfree. Blocks reserved for root
/// count neither as free nor as used, so used + free can be less than size.
pub fn usage_from_statvfs(frsize: u64, blocks: u64, bfree: u64, bavail: u64) -> Usage {
    let size = frsize.saturating_mul(blocks);
    Usage { size, free: frsize.saturating_mul(bavail), used: size.saturating_sub(frsize.saturating_mul(bfree)) }
}

/// statvfs(2) of `path`. Can block for long on a hung network file system: call it through a
/// timeout (see `collector::storage`).
pub fn statvfs(path: &Path) -> io::Result<Usage> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated string and `st` is writable memory of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    // f_frsize is the unit of the block counts; very old file systems leave it 0.
    let frsize = if st.f_frsize != 0 { st.f_frsize } else { st.f_bsize };
    Ok(usage_from_statvfs(frsize, st.f_blocks, st.f_bfree, st.f_bavail))
}

/// One line of /proc/<pid>/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The super options (`rw,memory` of a cgroup v1 hierarchy: its controllers).
    pub options: String,
}

/// Lines of `/proc/self/mountinfo`:
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
/// (field 5 is the mount point; after the ` - ` separator come the type and the source).
/// Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().skip(6).position(|f| *f == "-").map(|i| i + 6) else {
            continue;
        };
        let (Some(mp), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        if !mp.starts_with('/') {
            continue;
        }
        out.push(Mount {
            mount_point: PathBuf::from(unescape(mp)),
            fstype: unescape(fstype),
            source: fields.get(sep + 2).map(|s| unescape(s)).unwrap_or_default(),
            options: fields.get(sep + 3).map(|s| unescape(s)).unwrap_or_default(),
        });
    }
    out
}

/// The kernel writes space, tab, newline and backslash in mountinfo paths as `\040`, `\011`,
/// `\012`, `\134`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/a//b/./c/` -> `/a/b/c` (no file system access: a hung mount must not be touched before
/// we know it is mounted).
pub fn normalize(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

/// The mount points of a mountinfo, for "is this storage path mounted?".
#[derive(Debug, Default, Clone)]
pub struct MountTable {
    points: HashSet<PathBuf>,
}

impl MountTable {
    pub fn new(mounts: &[Mount]) -> Self {
        Self { points: mounts.iter().map(|m| normalize(&m.mount_point)).collect() }
    }

    /// Whether the host path `path` is a mount point. `root` is the canonical `--root`:
    /// mountinfo lists mount points as the reading process sees them, so below a `--root`
    /// that is a directory of the running system (live tests) the storage path appears with
    /// the root in front; a recorded host tree lists host paths as they are.
    /// The mount that `path` (absolute, as this process sees it) is on: its nearest ancestor
    /// that is a mount point, found without touching the file system.
    pub fn mount_of(&self, path: &Path) -> Option<PathBuf> {
        normalize(path).ancestors().find(|a| self.points.contains(*a)).map(Path::to_path_buf)
    }

    pub fn is_mount_point(&self, path: &Path, root: &Path) -> bool {
        let p = normalize(path);
        if self.points.contains(&p) {
            return true;
        }
        let rel = p.strip_prefix("/").unwrap_or(&p);
        root != Path::new("/") && self.points.contains(&normalize(&root.join(rel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_like_df() {
        // 4 KiB blocks: 1000 in all, 300 free, 250 of them for unprivileged users.
        let u = usage_from_statvfs(4096, 1000, 300, 250);
        assert_eq!(u, Usage { size: 4_096_000, free: 1_024_000, used: 2_867_200 });
        assert_eq!(usage_from_statvfs(u64::MAX, 2, 1, 1).size, u64::MAX, "saturates, no overflow panic");
        assert_eq!(usage_from_statvfs(4096, 10, 20, 20).used, 0, "bad counts do not underflow");
    }

    #[test]
    fn statvfs_of_a_real_directory() {
        let u = statvfs(Path::new("/")).unwrap();
        assert!(u.size > 0 && u.free <= u.size && u.used <= u.size, "{u:?}");
        assert_eq!(statvfs(Path::new("/nonexistent/x")).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(statvfs(Path::new("/a\0b")).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime shared:13 - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
40 27 0:45 / /mnt/pve/nas rw,relatime shared:30 - nfs4 10.0.0.1:/export/images rw,vers=4.2
41 27 0:46 / /mnt/pve/with\\040space rw,relatime - cifs //fd00::10/iso rw
42 27 0:47 / /tmp/t/root/mnt/live rw - tmpfs tmpfs rw,size=65536k
garbage line
43 27 0:48 / relative rw - tmpfs tmpfs rw
";

    #[test]
    fn mountinfo() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[2],
            Mount {
                mount_point: "/mnt/pve/nas".into(),
                fstype: "nfs4".into(),
                source: "10.0.0.1:/export/images".into(),
                options: "rw,vers=4.2".into(),
            }
        );
        assert_eq!(m[3].mount_point, Path::new("/mnt/pve/with space"));
        assert_eq!(m[3].source, "//fd00::10/iso");
        assert!(parse_mountinfo("").is_empty());
        assert!(
            parse_mountinfo("1 2 3 4 /x 6 - \n- - - - - - -\n\\\\\\").iter().all(|m| m.mount_point == Path::new("/x"))
        );
        assert_eq!(unescape("a\\134b\\011c\\0"), "a\\b\tc\\0");
        assert_eq!(unescape("\\777x"), "\\777x", "out of byte range: kept as is");
    }

    #[test]
    fn mount_points() {
        let t = MountTable::new(&parse_mountinfo(MOUNTINFO));
        let root = Path::new("/");
        assert!(t.is_mount_point(Path::new("/mnt/pve/nas"), root));
        assert!(t.is_mount_point(Path::new("/mnt/pve//nas/"), root));
        assert!(t.is_mount_point(Path::new("/mnt/pve/./nas"), root));
        assert!(t.is_mount_point(Path::new("/mnt/pve/with space"), root));
        // An unmounted storage directory is not a mount point, nor is a path below a mount.
        assert!(!t.is_mount_point(Path::new("/mnt/pve/backup"), root));
        assert!(!t.is_mount_point(Path::new("/mnt/pve/nas/sub"), root));
        assert!(!t.is_mount_point(Path::new("/mnt/pve"), root));
        // Below a --root that is a directory of this system.
        assert!(t.is_mount_point(Path::new("/mnt/live"), Path::new("/tmp/t/root")));
        assert!(!t.is_mount_point(Path::new("/mnt/live"), root));
        assert!(t.is_mount_point(Path::new("/"), root));
    }
}

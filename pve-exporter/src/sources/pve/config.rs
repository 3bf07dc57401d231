//! PVE configuration files below /etc/pve: pools from `user.cfg` and the set of VM configs
//! in `qemu-server/`. /etc/pve is pmxcfs (FUSE): reads go through a timeout, and user.cfg is
//! re-parsed only when it changes.

use std::{
    collections::{HashMap, HashSet},
    io,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use crate::host::{BlockingGate, HostRoot};

/// vmid -> pool.
pub type Pools = Arc<HashMap<String, PoolInfo>>;

/// A resource pool's place in the pool tree, as exported on `pve_kvm_info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolInfo {
    /// Full pool name (`a/b/c` for nested pools).
    pub name: String,
    /// The name split at `/`: pool_levels = levels.len(), pool1..pool3 = levels[0..3].
    pub levels: Vec<String>,
}

/// vmid -> pool, from `pool:<name>:<comment>:<vmlist>:<storagelist>:` lines of user.cfg.
pub fn parse_user_cfg_pools(text: &str) -> HashMap<String, PoolInfo> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim_end().strip_prefix("pool:") else {
            continue;
        };
        let mut parts = rest.split(':');
        let name = parts.next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        let _comment = parts.next();
        let vmlist = parts.next().unwrap_or("");
        let info = PoolInfo {
            name: name.to_string(),
            levels: name.split('/').filter(|l| !l.is_empty()).map(str::to_string).collect(),
        };
        for vmid in split_list(vmlist) {
            // As PVE's parse_user_config: only digits, as a number (`0100` is VM 100).
            if vmid.is_empty() || !vmid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(vmid) = vmid.parse::<u64>() else { continue };
            // A VM belongs to one pool; should a file list it twice, the first wins.
            out.entry(vmid.to_string()).or_insert_with(|| info.clone());
        }
    }
    out
}

/// PVE::Tools::split_list: NUL-separated if there is a NUL, else separated by `,`, `;` and
/// whitespace.
pub fn split_list(text: &str) -> Vec<&str> {
    if text.contains('\0') {
        return text.split('\0').collect();
    }
    text.split(|c: char| c == ',' || c == ';' || c.is_whitespace()).filter(|w| !w.is_empty()).collect()
}

/// vmids with a config in a `qemu-server/` directory listing (`<vmid>.conf`).
pub fn vmids_from_listing<I: IntoIterator<Item = String>>(names: I) -> HashSet<String> {
    names
        .into_iter()
        .filter_map(|n| {
            n.strip_suffix(".conf")
                .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
                .map(str::to_string)
        })
        .collect()
}

/// What a scrape needs from /etc/pve.
#[derive(Debug, Clone, Default)]
pub struct PveConfig {
    /// vmids that have a config on this node; None when /etc/pve has no qemu-server dir.
    pub vm_configs: Option<HashSet<String>>,
    pub pools: Arc<HashMap<String, PoolInfo>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    mtime: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(meta: &std::fs::Metadata) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    FileStamp { mtime: meta.modified().ok(), len: meta.len(), ino: meta.ino() }
}

/// A directory held open between scrapes, so that the files in it are looked up by name alone:
/// a `stat` of each guest config by its whole path walks every component from / on every
/// scrape (on PVE through pmxcfs and its `qemu-server` link into `nodes/<node>/`), 250 walks
/// at 250 guests. The holder checks once per scrape, by path, that the directory there is
/// still the one held ([`HeldDir::is_at`]): a directory replaced (or a link pointed elsewhere)
/// is opened again, never read stale.
#[derive(Debug)]
pub struct HeldDir {
    fd: std::os::fd::OwnedFd,
    /// (device, inode) of the directory held.
    id: (u64, u64),
}

impl HeldDir {
    /// Open `path` (O_PATH: no read rights needed, nothing read).
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let dir = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(path)?;
        let meta = dir.metadata()?;
        Ok(Self { id: (meta.dev(), meta.ino()), fd: dir.into() })
    }

    /// Whether `path` names the directory held (one walk of the directory's path).
    pub fn is_at(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == self.id)
    }

    fn stamp(&self, name: &std::ffi::CStr) -> io::Result<FileStamp> {
        let st = fstatat(&self.fd, name, 0)?;
        // As std's `modified()` builds it from statx's seconds and nanoseconds.
        let (sec, nsec) = (st.st_mtime, st.st_mtime_nsec as u32);
        let mtime = if sec >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(Duration::new(sec as u64, nsec))
        } else {
            SystemTime::UNIX_EPOCH
                .checked_sub(Duration::new(sec.unsigned_abs(), 0))
                .and_then(|t| t.checked_add(Duration::new(0, nsec)))
        };
        Ok(FileStamp { mtime, len: st.st_size as u64, ino: st.st_ino })
    }

    fn open_file(&self, name: &std::ffi::CStr) -> io::Result<std::fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: a NUL-terminated name below a descriptor we hold; the one returned is ours.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nobody else owns.
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }
}

fn fstatat(dir: &std::os::fd::OwnedFd, name: &std::ffi::CStr, flags: libc::c_int) -> io::Result<libc::stat> {
    use std::os::fd::AsRawFd;
    // SAFETY: stat is plain data the call fills; the name is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, `st` outlives the call.
    if unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// A file parsed once per version: parsed again only when its (mtime, size, inode) change.
#[derive(Debug)]
pub struct ParsedFile<T> {
    cache: Mutex<Option<(FileStamp, Arc<T>)>>,
}

impl<T> Default for ParsedFile<T> {
    fn default() -> Self {
        Self { cache: Mutex::new(None) }
    }
}

impl<T> ParsedFile<T> {
    /// The parsed content of `path`; None when the file does not exist.
    pub fn get(&self, path: &Path, parse: impl FnOnce(&str) -> T) -> io::Result<Option<Arc<T>>> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        self.cached_or(stamp(&meta), path, || std::fs::File::open(path), parse).map(Some)
    }

    /// [`ParsedFile::get`] of the file `name` in `dir`, which `path` names (in errors).
    pub fn get_in(
        &self,
        dir: &HeldDir,
        name: &std::ffi::CStr,
        path: &Path,
        parse: impl FnOnce(&str) -> T,
    ) -> io::Result<Option<Arc<T>>> {
        let st = match dir.stamp(name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        self.cached_or(st, path, || dir.open_file(name), parse).map(Some)
    }

    /// The last parse if the file is still at `st`, else `open()` read and parsed.
    fn cached_or(
        &self,
        st: FileStamp,
        path: &Path,
        open: impl FnOnce() -> io::Result<std::fs::File>,
        parse: impl FnOnce(&str) -> T,
    ) -> io::Result<Arc<T>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, parsed)) = cache.as_ref()
            && *s == st
        {
            return Ok(parsed.clone());
        }
        let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let raw = crate::host::read_open_capped(&open().map_err(ctx)?, path, crate::host::MAX_FILE).map_err(ctx)?;
        let text = String::from_utf8(raw)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{}: not UTF-8 text", path.display())))?;
        let parsed = Arc::new(parse(&text));
        *cache = Some((st, parsed.clone()));
        Ok(parsed)
    }
}

/// Reads /etc/pve with a time limit and caches user.cfg by (mtime, size, inode).
#[derive(Debug, Default)]
pub struct PveConfigReader {
    gate: BlockingGate,
    pools: ParsedFile<HashMap<String, PoolInfo>>,
}

impl PveConfigReader {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The time-limited gate of /etc/pve reads; other readers of /etc/pve (storage.cfg) share
    /// it, so a hung pmxcfs holds one thread, not one per file.
    pub fn gate(&self) -> &BlockingGate {
        &self.gate
    }

    /// Read the VM config listing and (if changed) user.cfg, within `timeout`.
    pub fn read(self: &Arc<Self>, host: &HostRoot, timeout: Duration) -> io::Result<PveConfig> {
        let me = self.clone();
        let host = host.clone();
        self.gate.call("pmxcfs", timeout, move || me.read_blocking(&host))?
    }

    /// user.cfg's pools alone (parsed again only when it changed), within `timeout`: for
    /// collectors outside the per-VM group that need pools but not the `pve_config` stage.
    pub fn read_pools(self: &Arc<Self>, host: &HostRoot, timeout: Duration) -> io::Result<Pools> {
        let me = self.clone();
        let host = host.clone();
        self.gate.call("pmxcfs", timeout, move || me.pools(&host))?
    }

    fn read_blocking(&self, host: &HostRoot) -> io::Result<PveConfig> {
        let vm_configs = match std::fs::read_dir(host.path("etc/pve/qemu-server")) {
            Ok(rd) => {
                Some(vmids_from_listing(rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok())))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(io::Error::new(e.kind(), format!("etc/pve/qemu-server: {e}")));
            }
        };
        let pools = self.pools(host)?;
        Ok(PveConfig { vm_configs, pools })
    }

    fn pools(&self, host: &HostRoot) -> io::Result<Pools> {
        Ok(self.pools.get(&host.path("etc/pve/user.cfg"), parse_user_cfg_pools)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_of_the_spec() {
        let p = parse_user_cfg_pools(
            "user:root@pam:1:0:::root@pam:\npool:production:Some comment:100,200,300\npool:staging:Staging env:400\npool:production/tier1:Tier 1:500,600\n",
        );
        assert_eq!(p.len(), 6);
        assert_eq!(p["100"].name, "production");
        assert_eq!(p["100"].levels, vec!["production"]);
        assert_eq!(p["500"].levels, vec!["production", "tier1"]);
        assert_eq!(p["400"].name, "staging");
        assert!(parse_user_cfg_pools("pool:empty:No VMs:\n").is_empty());
        let deep = parse_user_cfg_pools("pool:a/b/c::100:local:\n");
        assert_eq!(deep["100"].levels, vec!["a", "b", "c"]);
        // The odd fixture of the Go tests: "deep" sits in the vmlist position; PVE skips it as
        // an invalid vmid (and 100 is in the storage list): no member, no crash.
        let odd = parse_user_cfg_pools("pool:a/b/c::deep:100");
        assert!(odd.is_empty(), "{odd:?}");
        assert!(parse_user_cfg_pools("pool:\npool::x:1\n\u{0}garbage:::\n").is_empty());
    }

    #[test]
    fn first_pool_wins() {
        // PVE's split_list: `,`, `;` and whitespace; vmids as numbers; junk skipped.
        let p = parse_user_cfg_pools("pool:sep::100;101 102\t103, 0104,x1,,;\n");
        let mut ids: Vec<&str> = p.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["100", "101", "102", "103", "104"]);
        assert_eq!(split_list("1\u{0}2,3"), ["1", "2,3"], "NUL-separated wins");
        let p = parse_user_cfg_pools("pool:a::100\npool:b::100,101\n");
        assert_eq!(p["100"].name, "a");
        assert_eq!(p["101"].name, "b");
    }

    #[test]
    fn config_listing() {
        let ids =
            vmids_from_listing(["100.conf", "101.conf", "x.conf", ".conf", "102.conf.tmp", "lock"].map(String::from));
        assert_eq!(ids, HashSet::from(["100".to_string(), "101".to_string()]));
    }

    #[test]
    fn reader_caches_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/pve/qemu-server")).unwrap();
        std::fs::write(dir.path().join("etc/pve/qemu-server/100.conf"), "").unwrap();
        std::fs::write(dir.path().join("etc/pve/user.cfg"), "pool:a::100\n").unwrap();
        let host = HostRoot::new(dir.path());
        let r = PveConfigReader::new();
        let c1 = r.read(&host, Duration::from_secs(5)).unwrap();
        let c2 = r.read(&host, Duration::from_secs(5)).unwrap();
        assert!(Arc::ptr_eq(&c1.pools, &c2.pools), "unchanged file is not parsed again");
        assert_eq!(c1.vm_configs.unwrap(), HashSet::from(["100".to_string()]));
        std::fs::write(dir.path().join("etc/pve/user.cfg"), "pool:bb::100,101\n").unwrap();
        let c3 = r.read(&host, Duration::from_secs(5)).unwrap();
        assert_eq!(c3.pools["101"].name, "bb");
        // No /etc/pve at all: no filter, no pools.
        let empty = tempfile::tempdir().unwrap();
        let c = PveConfigReader::new().read(&HostRoot::new(empty.path()), Duration::from_secs(5)).unwrap();
        assert!(c.vm_configs.is_none() && c.pools.is_empty());
    }
}

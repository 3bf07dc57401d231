//! Control groups of LXC containers as PVE's LXC lays them out: `lxc/<ctid>/` below the
//! cgroup mount (the container's limits and accounting), the payload in `lxc/<ctid>/ns/`
//! (PVE sets `lxc.cgroup.dir.container = lxc/<ctid>` and `.inner = ns`).
//!
//! Like pve-common's `PVE::CGroup`, each controller is read where the host has it: in the
//! cgroup2 hierarchy when it is enabled there (PVE 7+ default: everything in cgroup2 at
//! /sys/fs/cgroup), else in its own cgroup v1 hierarchy (hybrid hosts: memory, cpu, blkio,
//! pids on v1, cgroup2 at /sys/fs/cgroup/unified with the pressure files). The mounts come from
//! mountinfo, wherever they are.
//!
//! cgroup v2 files (Documentation/admin-guide/cgroup-v2.rst) and their v1 counterparts
//! (cgroup-v1/memory.rst, blkio-controller.rst, cpuacct.rst):
//!
//! | what | v2 | v1 |
//! |---|---|---|
//! | CPU user/system | `cpu.stat` user_usec, system_usec | `cpuacct.stat` user, system (clock ticks) |
//! | memory | `memory.current`, `memory.stat` anon/file/kernel | `memory.usage_in_bytes`, `memory.stat` total_rss/total_cache, `memory.kmem.usage_in_bytes` |
//! | swap | `memory.swap.current` | `memory.stat` total_swap |
//! | limits | `memory.max`, `memory.swap.max`, `cpu.max` | `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` - limit, `cpu.cfs_quota_us`/`cpu.cfs_period_us` |
//! | block I/O | `io.stat` rbytes/wbytes/rios/wios | `blkio.throttle.io_service_bytes_recursive`, `io_serviced_recursive` |
//! | processes | `pids.current` | `pids.current` |
//! | OOM kills | `memory.events` oom_kill | `memory.oom_control` oom_kill |
//! | pressure | `{cpu,memory,io}.pressure` | (none) |

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use crate::{
    heldfile::HeldFiles,
    host::HostRoot,
    sources::{
        error::{ParseError, SourceError},
        proc::pressure::{Pressure, parse_pressure},
        storage::statvfs::parse_mountinfo,
    },
};

/// Where each controller is: the cgroup2 mount with its enabled controllers, and each v1
/// hierarchy's mount by controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// The cgroup2 mount point (host path, `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
    pub v2: Option<PathBuf>,
    /// Controllers enabled in cgroup2 (its root's `cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    /// controller -> v1 mount point.
    pub v1: BTreeMap<String, PathBuf>,
}

/// The cgroup mounts of a mountinfo text: cgroup2 (the first one, as the host's own is mounted
/// before any a container sees) and each v1 hierarchy by its controllers (`cpu,cpuacct`
/// mounted together serves both). Named v1 hierarchies (`name=systemd`) hold no controller.
pub fn parse_cgroup_mounts(mountinfo: &str) -> (Option<PathBuf>, BTreeMap<String, PathBuf>) {
    let mut v2 = None;
    let mut v1 = BTreeMap::new();
    for m in parse_mountinfo(mountinfo) {
        match m.fstype.as_str() {
            "cgroup2" if v2.is_none() => v2 = Some(m.mount_point),
            "cgroup" => {
                for opt in m.options.split(',').filter(|o| CONTROLLERS.contains(o)) {
                    v1.entry(opt.to_string()).or_insert_with(|| m.mount_point.clone());
                }
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// The v1 controllers this module reads.
const CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "blkio", "pids", "io", "freezer"];

impl Hierarchies {
    /// The host's hierarchies, from `/proc/self/mountinfo` and cgroup2's root `cgroup.controllers`.
    pub fn read(host: &HostRoot) -> io::Result<Self> {
        let text = host.read_to_string("proc/self/mountinfo")?;
        Ok(Self::from_mountinfo(host, &text))
    }

    /// The hierarchies of a mountinfo text, with cgroup2's enabled controllers read below `host`.
    fn from_mountinfo(host: &HostRoot, text: &str) -> Self {
        let (v2, v1) = parse_cgroup_mounts(text);
        let v2_controllers = match &v2 {
            Some(m) => host
                .read_to_string(m.join("cgroup.controllers"))
                .map(|t| t.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Self { v2, v2_controllers, v1 }
    }

    /// Where controller `c` (v2 name) is read: (mount, is v2). v1 names: `io` is `blkio`,
    /// CPU accounting is `cpuacct`, CPU limits `cpu`.
    fn find(&self, v2_name: &str, v1_name: &str) -> Option<(&Path, bool)> {
        if let Some(m) = &self.v2
            && self.v2_controllers.iter().any(|c| c == v2_name)
        {
            return Some((m, true));
        }
        self.v1.get(v1_name).map(|m| (m.as_path(), false))
    }

    /// The directory listing running containers: cgroup2's `lxc/`, else a v1 hierarchy's.
    pub fn lxc_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.v2.iter().map(|m| m.join("lxc")).collect();
        v.extend(self.v1.values().map(|m| m.join("lxc")));
        v.dedup();
        v
    }
}

/// The host's hierarchies, kept between scrapes: mountinfo (a few hundred lines on a host of
/// a hundred containers, ~1 % of a scrape) is read again only when the kernel says the mounts
/// changed. proc(5): an open `/proc/<pid>/mountinfo` reports `POLLPRI` after a mount or unmount
/// in its namespace, once per change (`mounts_poll`). A host root whose mountinfo is not a
/// procfs file (a fixture tree) gives no such signal: read on every call there. Read again at
/// least every [`MOUNTS_MAX_AGE`] all the same, for what no mount changes (cgroup2's
/// `cgroup.controllers`).
#[derive(Debug, Default)]
pub struct HierarchyWatch {
    held: Option<(std::fs::File, std::sync::Arc<Hierarchies>, std::time::Instant)>,
}

/// How long [`HierarchyWatch`] keeps what it read without a mount change.
pub const MOUNTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

impl HierarchyWatch {
    pub fn get(&mut self, host: &HostRoot) -> io::Result<std::sync::Arc<Hierarchies>> {
        if let Some((f, h, at)) = &self.held
            && at.elapsed() < MOUNTS_MAX_AGE
            && !mounts_changed(f)
        {
            return Ok(h.clone());
        }
        self.held = None;
        let path = host.path("proc/self/mountinfo");
        // Opened before it is read: a change made while it is read is reported next time.
        let f = std::fs::File::open(&path)?;
        // Not `pread_whole`: mountinfo is a seq_file of one record per mount, handed out a page
        // at a time. Capped as every host file is.
        let text = crate::host::read_open_capped(&f, &path, crate::host::MAX_FILE)?;
        let h = std::sync::Arc::new(Hierarchies::from_mountinfo(host, &String::from_utf8_lossy(&text)));
        if crate::sources::proc::scan::is_procfs(host) {
            self.held = Some((f, h.clone(), std::time::Instant::now()));
        }
        Ok(h)
    }
}

/// Whether the kernel reported a mount change on `f` (an open mountinfo) since the last ask;
/// an error of poll counts as a change.
fn mounts_changed(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLPRI, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n != 0 && (n < 0 || p.revents & (libc::POLLPRI | libc::POLLERR | libc::POLLNVAL) != 0)
}

/// What one container's cgroups say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    pub cpu_user_seconds: Option<f64>,
    pub cpu_system_seconds: Option<f64>,
    /// Memory charged to the container (file cache included).
    pub memory_bytes: Option<u64>,
    pub memory_anon: Option<u64>,
    pub memory_file: Option<u64>,
    pub memory_kernel: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub limits: Limits,
    /// device (`major:minor`) -> counters.
    pub io: BTreeMap<String, IoCounters>,
    pub pids: Option<u64>,
    pub oom_kills: Option<u64>,
    /// cpu, memory, io.
    pub pressure: [Option<Pressure>; 3],
}

/// A cgroup's limits (None: not read; Some(None): no limit). PVE writes them
/// when the guest starts and when its config changes (`pct set` on a running container), so a
/// caller may keep them between scrapes and hand them back ([`read_cgroup`]'s `known`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory_max: Option<Option<u64>>,
    pub swap_max: Option<Option<u64>>,
    pub cpu_max_cores: Option<Option<f64>>,
}

impl CgroupStats {
    /// What PVE shows as the container's memory: charged memory less the file cache
    /// (pve-common `get_memory_stat`).
    pub fn memory_used(&self) -> Option<u64> {
        Some(self.memory_bytes?.saturating_sub(self.memory_file.unwrap_or(0)))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// `key value` lines (cpu.stat, memory.stat, memory.events); malformed lines are skipped.
pub fn parse_flat_keyed(text: &str) -> FlatKeyed<'_> {
    FlatKeyed(text)
}

/// A flat-keyed file's values, looked up in its text: these files have a few dozen lines and
/// a reader asks for a handful of keys, so scanning the text costs less than collecting every
/// line (a scrape reads some hundred of them; a list of all lines was one allocation each).
#[derive(Debug, Default, Clone, Copy)]
pub struct FlatKeyed<'a>(&'a str);

impl<'a> FlatKeyed<'a> {
    /// The well-formed `key value` lines, in order.
    fn lines(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0.lines().filter_map(|l| {
            let mut w = l.split_ascii_whitespace();
            Some((w.next()?, w.next()?))
        })
    }

    pub fn get(&self, key: &str) -> Option<u64> {
        self.lines().find_map(|(k, v)| if k == key { v.parse().ok() } else { None })
    }

    /// The values of `keys` (the first well-formed line of each), in one pass over the text.
    pub fn get_many<const N: usize>(&self, keys: [&str; N]) -> [Option<u64>; N] {
        let mut out = [None; N];
        let mut left = N;
        for (k, v) in self.lines() {
            if let Some(i) = keys.iter().position(|want| *want == k)
                && out[i].is_none()
                && let Ok(v) = v.parse::<u64>()
            {
                out[i] = Some(v);
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.lines().filter(|(_, v)| v.parse::<u64>().is_ok()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A single number, or `max` (no limit).
pub fn parse_limit(text: &str) -> Result<Option<u64>, ParseError> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    t.parse::<u64>().map(Some).map_err(|_| ParseError::new("limit", format!("not a number or max: {t:?}")))
}

/// v1's "no limit": the largest page-aligned value (PAGE_COUNTER_MAX * page size), printed as
/// 9223372036854771712 on x86-64.
fn v1_limit(v: u64) -> Option<u64> {
    (v < (1 << 62)).then_some(v)
}

/// `cpu.max`: `$MAX $PERIOD` (`max 100000`: no limit) -> cores.
pub fn parse_cpu_max(text: &str) -> Result<Option<f64>, ParseError> {
    let mut w = text.split_whitespace();
    let bad = || ParseError::new("cpu.max", format!("unexpected {:?}", text.trim()));
    let quota = w.next().ok_or_else(bad)?;
    let period: f64 = w.next().unwrap_or("100000").parse().map_err(|_| bad())?;
    if quota == "max" {
        return Ok(None);
    }
    let q: f64 = quota.parse().map_err(|_| bad())?;
    if period <= 0.0 {
        return Err(bad());
    }
    Ok(Some(q / period))
}

/// `io.stat`: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0` per device.
pub fn parse_io_stat(text: &str) -> BTreeMap<String, IoCounters> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let Some(dev) = w.next().filter(|d| d.contains(':')) else { continue };
        let mut c = IoCounters::default();
        for kv in w {
            let Some((k, v)) = kv.split_once('=') else { continue };
            let Ok(v) = v.parse::<u64>() else { continue };
            match k {
                "rbytes" => c.read_bytes = v,
                "wbytes" => c.write_bytes = v,
                "rios" => c.read_ops = v,
                "wios" => c.write_ops = v,
                _ => {}
            }
        }
        out.insert(dev.to_string(), c);
    }
    out
}

/// v1 `blkio.throttle.io_service_bytes_recursive` / `io_serviced_recursive`:
/// `8:0 Read 4096` lines (and `Total`) -> device -> (read, write).
pub fn parse_blkio(text: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(dev), Some(op), Some(v), None) = (w.next(), w.next(), w.next(), w.next()) else { continue };
        let Ok(v) = v.parse::<u64>() else { continue };
        // The device's entry exists after its first line: no key allocated per line.
        if !out.contains_key(dev) {
            out.insert(dev.to_string(), (0, 0));
        }
        let Some(e) = out.get_mut(dev) else { continue };
        match op {
            "Read" => e.0 += v,
            "Write" => e.1 += v,
            _ => {}
        }
    }
    out
}

/// Every cgroup file this module reads, by name: its slot among a cgroup's held files.
const FILES: &[&str] = &[
    "cpu.stat",
    "cpuacct.stat",
    "cpu.max",
    "cpu.cfs_quota_us",
    "cpu.cfs_period_us",
    "memory.current",
    "memory.stat",
    "memory.swap.current",
    "memory.max",
    "memory.swap.max",
    "memory.events",
    "memory.usage_in_bytes",
    "memory.kmem.usage_in_bytes",
    "memory.limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "memory.oom_control",
    "io.stat",
    "blkio.throttle.io_service_bytes_recursive",
    "blkio.throttle.io_serviced_recursive",
    "pids.current",
    "cpu.pressure",
    "memory.pressure",
    "io.pressure",
    "ns/cgroup.procs",
    "ns/cgroup.events",
    "ns/freezer.state",
];

/// A cgroup file by name, with its slot among a cgroup's held files found when the daemon is
/// compiled ([`cg!`]): a read does not search [`FILES`] for it.
#[derive(Debug, Clone, Copy)]
pub struct CgroupFile {
    name: &'static str,
    slot: usize,
}

/// The slot of `file` in [`FILES`]; a name not listed there does not compile.
const fn slot_of(file: &str) -> usize {
    let mut i = 0;
    while i < FILES.len() {
        let (a, b) = (FILES[i].as_bytes(), file.as_bytes());
        if a.len() == b.len() {
            let mut j = 0;
            while j < a.len() && a[j] == b[j] {
                j += 1;
            }
            if j == a.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("a cgroup file missing from FILES")
}

/// `cg!("memory.stat")`: that file, its slot found at compile time.
macro_rules! cg {
    ($name:literal) => {
        CgroupFile { name: $name, slot: const { slot_of($name) } }
    };
}

/// How cgroup files are read: by path each time, or through descriptors held between scrapes
/// (a cgroup file read through its open descriptor costs no path walk through kernfs, which
/// is most of the cost of reading a container's ~20 files).
pub struct CgroupFiles<'a> {
    host: &'a HostRoot,
    held: Option<&'a mut HeldFiles<CgroupKey>>,
    /// The text of the last file read by path (or of a held file that was not UTF-8).
    buf: String,
}

/// A held cgroup's key: (its hierarchy's mount, hashed; the container's or VM's id).
pub type CgroupKey = (u64, u32);

/// The key of cgroup `rel` (`lxc/<ctid>`, `qemu.slice/<vmid>.scope`) below `mount`.
fn key_of(mount: &Path, rel: &str) -> CgroupKey {
    // FNV-1a: some thousand keys per scrape, of a dozen distinct mounts; SipHash's resistance
    // to chosen keys buys nothing for paths the host's mountinfo names.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mount.as_os_str().as_encoded_bytes().iter().chain([&0u8]).chain(rel.as_bytes()) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h, id_of(rel))
}

/// The numeric id in a cgroup path (`lxc/101` -> 101, `qemu.slice/100.scope` -> 100).
pub fn id_of(rel: &str) -> u32 {
    rel.bytes()
        .skip_while(|b| !b.is_ascii_digit())
        .take_while(|b| b.is_ascii_digit())
        .fold(0u32, |n, b| n.wrapping_mul(10).wrapping_add(u32::from(b - b'0')))
}

impl<'a> CgroupFiles<'a> {
    pub fn by_path(host: &'a HostRoot) -> Self {
        Self { host, held: None, buf: String::new() }
    }

    pub fn held(host: &'a HostRoot, held: &'a mut HeldFiles<CgroupKey>) -> Self {
        Self { host, held: Some(held), buf: String::new() }
    }

    /// File `file` of cgroup `rel` below `mount`, borrowed until the next read: a held file's
    /// text is its read buffer's, so reading one allocates nothing. `key` is `rel`'s key below
    /// `mount` where the caller has it.
    fn text(&mut self, key: Option<CgroupKey>, mount: &Path, rel: &str, file: CgroupFile) -> io::Result<&str> {
        let host = self.host;
        let raw = match &mut self.held {
            Some(held) => {
                // One key per (mount, cgroup): a controller's files live in its own hierarchy.
                let key = key.unwrap_or_else(|| key_of(mount, rel));
                // The path only when the file is opened.
                held.read(&key, file.slot, || host.path(mount.join(rel).join(file.name)))?
            }
            None => {
                self.buf = host.read_to_string(mount.join(rel).join(file.name))?;
                return Ok(&self.buf);
            }
        };
        match std::str::from_utf8(raw) {
            Ok(t) => Ok(t),
            Err(_) => {
                self.buf = String::from_utf8_lossy(raw).into_owned();
                Ok(&self.buf)
            }
        }
    }
}

/// Read container `ctid`'s cgroups (`lxc/<ctid>` of each hierarchy). A file that cannot be
/// read or parsed costs its own value (in `errors`); a cgroup that is gone (the container
/// stopped mid-scrape) gives None.
pub fn read_container(
    files: &mut CgroupFiles,
    h: &Hierarchies,
    ctid: &str,
    errors: &mut Vec<SourceError>,
    known: Known,
) -> Option<CgroupStats> {
    read_cgroup(files, h, &format!("lxc/{ctid}"), errors, known)
}

/// What a caller already knows of a cgroup, taken as read ([`read_cgroup`]): those files are
/// not read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'a> {
    /// Its limits.
    pub limits: Option<&'a Limits>,
    /// Its OOM kill count (`memory.events` / `memory.oom_control` `oom_kill`), known unchanged.
    pub oom_kills: Option<u64>,
    /// Its cpu, memory, io pressure, known unchanged.
    pub pressure: [Option<Pressure>; 3],
}

/// The cgroup PVE starts VM `vmid` in (`qemu.slice/<vmid>.scope`).
pub fn vm_cgroup(vmid: &str) -> String {
    format!("qemu.slice/{vmid}.scope")
}

/// Read the cgroup `rel` (below each hierarchy's mount) as [`read_container`] does. With
/// `known` limits, the limit files (`cpu.max`, `memory.max`, `memory.swap.max`; on cgroup v1
/// `cpu.cfs_quota_us`, `cpu.cfs_period_us`, `memory.limit_in_bytes`,
/// `memory.memsw.limit_in_bytes`) are not read: those are the figures; so with a known OOM
/// kill count.
pub fn read_cgroup(
    files: &mut CgroupFiles,
    h: &Hierarchies,
    rel: &str,
    errors: &mut Vec<SourceError>,
    known: Known,
) -> Option<CgroupStats> {
    let Known { limits: known, oom_kills: known_oom, pressure: known_pressure } = known;
    let ctid = rel; // the cgroup's path below each mount
    let mut r = CgroupReader { host: files.host, files, rel, gone: false, errors, keys: Default::default() };
    let mut st = CgroupStats::default();
    let mut parse_err = Vec::new();
    // CPU.
    if let Some((m, v2)) = h.find("cpu", "cpuacct") {
        if v2 {
            if let Some([u, s]) = r.keyed(m, cg!("cpu.stat"), ["user_usec", "system_usec"]) {
                st.cpu_user_seconds = u.map(|u| u as f64 / 1e6);
                st.cpu_system_seconds = s.map(|s| s as f64 / 1e6);
            }
        } else if let Some([u, s]) = r.keyed(m, cg!("cpuacct.stat"), ["user", "system"]) {
            // One file, as pve-common's `get_cpu_stat` reads it, not `cpuacct.usage_user` and
            // `_sys`: those split the time by the same tick samples, in ns (no finer), and
            // cost a second read per container. cpuacct.stat scales the split to the exact
            // run time (the kernel's cputime_adjust), in clock ticks.
            let hz = ticks_per_second();
            st.cpu_user_seconds = u.map(|u| u as f64 / hz);
            st.cpu_system_seconds = s.map(|s| s as f64 / hz);
        }
    } else if let Some(m) = &h.v2 {
        // cgroup2 has cpu.stat's usage lines without the cpu controller.
        if let Some([u, s]) = r.keyed(m, cg!("cpu.stat"), ["user_usec", "system_usec"]) {
            st.cpu_user_seconds = u.map(|u| u as f64 / 1e6);
            st.cpu_system_seconds = s.map(|s| s as f64 / 1e6);
        }
    }
    if let Some((m, v2)) = h.find("cpu", "cpu")
        && known.is_none()
    {
        if v2 {
            if let Some(t) = r.text(m, cg!("cpu.max")) {
                match parse_cpu_max(t) {
                    Ok(c) => st.limits.cpu_max_cores = Some(c),
                    Err(e) => parse_err.push(e.input(format!("{ctid}/cpu.max"))),
                }
            }
        } else if let (Some(q), Some(p)) =
            (r.value::<i64>(m, cg!("cpu.cfs_quota_us")), r.value::<f64>(m, cg!("cpu.cfs_period_us")))
        {
            // A quota of -1: no limit.
            st.limits.cpu_max_cores = Some((q > 0 && p > 0.0).then(|| q as f64 / p));
        }
    }
    // Memory.
    if let Some((m, v2)) = h.find("memory", "memory") {
        if v2 {
            st.memory_bytes = r.value(m, cg!("memory.current"));
            if let Some([anon, file, kernel, parts @ ..]) = r.keyed(
                m,
                cg!("memory.stat"),
                ["anon", "file", "kernel", "kernel_stack", "pagetables", "percpu", "sock", "slab", "vmalloc"],
            ) {
                st.memory_anon = anon;
                st.memory_file = file;
                // `kernel` since 5.18; before, its parts (the six keys after it).
                st.memory_kernel =
                    kernel.or_else(|| parts.iter().any(Option::is_some).then(|| parts.iter().flatten().sum()));
            }
            st.swap_bytes = r.value(m, cg!("memory.swap.current"));
            if known.is_none() {
                for (file, slot) in
                    [(cg!("memory.max"), &mut st.limits.memory_max), (cg!("memory.swap.max"), &mut st.limits.swap_max)]
                {
                    if let Some(t) = r.text(m, file) {
                        match parse_limit(t) {
                            Ok(l) => *slot = Some(l),
                            Err(e) => parse_err.push(e.input(format!("{ctid}/{}", file.name))),
                        }
                    }
                }
            }
            st.oom_kills = known_oom.or_else(|| r.keyed(m, cg!("memory.events"), ["oom_kill"]).and_then(|[k]| k));
        } else {
            st.memory_bytes = r.value(m, cg!("memory.usage_in_bytes"));
            // total_swap is there only with swap accounting (swapaccount=1): missing is no
            // error. It is the swap the memsw counter charges on top of usage (both count
            // the cgroup's swapped-out pages), without a read of memory.memsw.usage_in_bytes.
            if let Some([rss, cache, swap]) = r.keyed(m, cg!("memory.stat"), ["total_rss", "total_cache", "total_swap"])
            {
                st.memory_anon = rss;
                st.memory_file = cache;
                st.swap_bytes = swap;
            }
            st.memory_kernel = r.value(m, cg!("memory.kmem.usage_in_bytes"));
            if known.is_none() {
                let limit: Option<u64> = r.value(m, cg!("memory.limit_in_bytes"));
                st.limits.memory_max = limit.map(v1_limit);
                let swlimit: Option<u64> = r.value(m, cg!("memory.memsw.limit_in_bytes"));
                st.limits.swap_max = swlimit.zip(limit).map(|(sw, l)| v1_limit(sw).map(|sw| sw.saturating_sub(l)));
            }
            st.oom_kills = known_oom.or_else(|| r.keyed(m, cg!("memory.oom_control"), ["oom_kill"]).and_then(|[k]| k));
        }
    }
    // Block I/O.
    if let Some((m, v2)) = h.find("io", "blkio") {
        if v2 {
            if let Some(t) = r.text(m, cg!("io.stat")) {
                st.io = parse_io_stat(t);
            }
        } else if let Some(b) = r.text(m, cg!("blkio.throttle.io_service_bytes_recursive")).map(parse_blkio) {
            let ops = r.text(m, cg!("blkio.throttle.io_serviced_recursive")).map(parse_blkio).unwrap_or_default();
            for (dev, (rd, wr)) in b {
                let (ro, wo) = ops.get(&dev).copied().unwrap_or_default();
                st.io.insert(dev, IoCounters { read_bytes: rd, write_bytes: wr, read_ops: ro, write_ops: wo });
            }
        }
    }
    if let Some((m, _)) = h.find("pids", "pids") {
        st.pids = r.value(m, cg!("pids.current"));
    }
    // Pressure: cgroup2 only (it is there without any controller enabled).
    if let Some(m) = &h.v2 {
        for (i, (res, file)) in
            [("cpu", cg!("cpu.pressure")), ("memory", cg!("memory.pressure")), ("io", cg!("io.pressure"))]
                .iter()
                .enumerate()
        {
            if let Some(p) = known_pressure[i] {
                st.pressure[i] = Some(p);
            } else if let Some(t) = r.text(m, *file) {
                match parse_pressure(t) {
                    Ok(p) => st.pressure[i] = Some(p),
                    Err(e) => parse_err.push(e.input(format!("{ctid}/{res}.pressure"))),
                }
            }
        }
    }
    if r.gone {
        return None;
    }
    if let Some(l) = known {
        st.limits = *l;
    }
    r.errors.extend(parse_err.into_iter().map(SourceError::from));
    Some(st)
}

/// [`read_cgroup`]'s reads of one cgroup: each file's text borrowed in turn, what failed in
/// `errors`, whether the cgroup is gone (the container stopped mid-scrape).
struct CgroupReader<'r, 'a> {
    host: &'a HostRoot,
    files: &'r mut CgroupFiles<'a>,
    rel: &'r str,
    gone: bool,
    errors: &'r mut Vec<SourceError>,
    /// The cgroup's key below each mount read so far (a handful), not hashed again per file.
    keys: smallvec::SmallVec<[(&'r Path, CgroupKey); 8]>,
}

impl<'r> CgroupReader<'r, '_> {
    fn key(&mut self, mount: &'r Path) -> CgroupKey {
        if let Some((_, k)) = self.keys.iter().find(|(m, _)| std::ptr::eq(*m, mount)) {
            return *k;
        }
        let k = key_of(mount, self.rel);
        self.keys.push((mount, k));
        k
    }

    /// The text of `file` below `mount`; None: missing (the cgroup may be gone) or unreadable
    /// (in `errors`).
    fn text(&mut self, mount: &'r Path, file: CgroupFile) -> Option<&str> {
        let key = self.key(mount);
        let e = match self.files.text(Some(key), mount, self.rel, file) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let host = self.host;
        if e.kind() == io::ErrorKind::NotFound {
            if !host.path(mount.join(self.rel)).exists() {
                self.gone = true;
            }
        } else if e.raw_os_error() == Some(libc::ENODEV) {
            // The cgroup was removed while its file was open.
            self.gone = true;
        } else {
            self.errors.push(SourceError::io(host.path(mount.join(self.rel).join(file.name)), e));
        }
        None
    }

    /// A file holding one number.
    fn value<T: std::str::FromStr>(&mut self, mount: &'r Path, file: CgroupFile) -> Option<T> {
        self.text(mount, file)?.trim().parse().ok()
    }

    /// `keys` of a flat-keyed file.
    fn keyed<const N: usize>(
        &mut self,
        mount: &'r Path,
        file: CgroupFile,
        keys: [&str; N],
    ) -> Option<[Option<u64>; N]> {
        Some(parse_flat_keyed(self.text(mount, file)?).get_many(keys))
    }
}

/// Memory a cgroup uses as PVE counts it (charged memory less page cache), reading only the
/// memory controller's files: the `ppe` collector's VM memory (`qemu.slice/<vmid>.scope`).
pub fn memory_used(files: &mut CgroupFiles, h: &Hierarchies, rel: &str) -> Option<u64> {
    let (m, v2) = h.find("memory", "memory")?;
    let (cur, cache_key) =
        if v2 { (cg!("memory.current"), "file") } else { (cg!("memory.usage_in_bytes"), "total_cache") };
    let current: u64 = files.text(None, m, rel, cur).ok()?.trim().parse().ok()?;
    let cache = parse_flat_keyed(files.text(None, m, rel, cg!("memory.stat")).ok()?).get(cache_key).unwrap_or(0);
    Some(current.saturating_sub(cache))
}

/// Whether container `ctid` is frozen (`lxc-freeze`, a suspended container): cgroup2's
/// `cgroup.events` of its payload says `frozen 1`, or v1's `freezer.state` says `FROZEN`
/// (both give the effective state: a frozen `lxc/<ctid>` freezes its `ns` too).
pub fn frozen(files: &mut CgroupFiles, h: &Hierarchies, ctid: &str) -> bool {
    let rel = format!("lxc/{ctid}");
    if let Some(m) = h.v1.get("freezer") {
        return files.text(None, m, &rel, cg!("ns/freezer.state")).is_ok_and(|t| t.trim() == "FROZEN");
    }
    if let Some(m) = &h.v2 {
        return files
            .text(None, m, &rel, cg!("ns/cgroup.events"))
            .is_ok_and(|t| parse_flat_keyed(t).get("frozen") == Some(1));
    }
    false
}

fn ticks_per_second() -> f64 {
    procfs::ticks_per_second().max(1) as f64
}

/// The processes of container `ctid`'s payload (`lxc/<ctid>/ns`, else its sub-cgroups, where
/// a systemd inside puts them; two levels deep), from the first hierarchy that has it.
pub fn container_pids(files: &mut CgroupFiles, h: &Hierarchies, ctid: &str) -> Vec<u32> {
    let rel = format!("lxc/{ctid}");
    for m in h.v2.iter().chain(h.v1.values()) {
        let mut pids: Vec<u32> = match files.text(None, m, &rel, cg!("ns/cgroup.procs")) {
            Ok(t) => t.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            Err(_) => continue,
        };
        if pids.is_empty() {
            collect_pids(&files.host.path(m.join(&rel).join("ns")), 2, &mut pids);
        }
        if !pids.is_empty() {
            pids.sort_unstable();
            return pids;
        }
    }
    Vec::new()
}

/// The pids of `dir`'s `cgroup.procs`, else of its sub-cgroups', `depth` levels down.
fn collect_pids(dir: &Path, depth: u32, out: &mut Vec<u32>) {
    if let Ok(t) = crate::host::read_string_capped(&dir.join("cgroup.procs"), crate::host::MAX_FILE) {
        out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if depth == 0 || !out.is_empty() {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), depth - 1, out);
            }
        }
    }
}

/// Container ids with a cgroup `lxc/<ctid>` (numeric names; `lxc.monitor`, `lxc.pivot` are
/// LXC's own).
pub fn container_ids(host: &HostRoot, h: &Hierarchies) -> io::Result<Vec<String>> {
    let mut ids = Vec::new();
    for dir in h.lxc_dirs() {
        let rd = match std::fs::read_dir(host.path(&dir)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", host.path(&dir).display()))),
        };
        for e in rd.flatten() {
            if let Ok(n) = e.file_name().into_string()
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
            {
                ids.push(n);
            }
        }
        // The first hierarchy with an lxc/ directory lists them all.
        if !ids.is_empty() {
            break;
        }
    }
    ids.sort_unstable_by(|a, b| id_order(a, b));
    ids.dedup();
    Ok(ids)
}

/// Numeric order of container ids without parsing them (they have no leading zeros): the
/// order of [`container_ids`], which callers search with it.
pub fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The pid in the container's own PID namespace (the last `NSpid:` field of
/// /proc/<pid>/status); the container's init has 1.
pub fn ns_pid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's kind: hybrid (memory, cpu, blkio, pids on v1; cgroup2 at .../unified).
    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
        38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio\n\
        39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
        40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n\
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
    /// PVE 7+ default: one cgroup2 at /sys/fs/cgroup.
    const UNIFIED: &str = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";

    #[test]
    fn mounts_of_hybrid_and_unified_hosts() {
        let (v2, v1) = parse_cgroup_mounts(HYBRID);
        assert_eq!(v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(v1.get("cpuacct").map(PathBuf::as_path), Some(Path::new("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(v1.get("memory").map(PathBuf::as_path), Some(Path::new("/sys/fs/cgroup/memory")));
        assert!(!v1.contains_key("systemd") && !v1.contains_key("name=systemd"));
        let (v2, v1) = parse_cgroup_mounts(UNIFIED);
        assert_eq!(v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert!(v1.is_empty());
        let h = Hierarchies { v2, v2_controllers: vec!["cpu".into(), "memory".into()], v1 };
        assert_eq!(h.find("memory", "memory"), Some((Path::new("/sys/fs/cgroup"), true)));
        assert_eq!(h.find("io", "blkio"), None);
    }

    /// In a fixture tree mountinfo is a plain file, which signals nothing: read on every call.
    #[test]
    fn a_fixture_mountinfo_is_read_every_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        std::fs::write(dir.path().join("proc/self/mountinfo"), UNIFIED).unwrap();
        let host = HostRoot::new(dir.path());
        let mut w = HierarchyWatch::default();
        assert_eq!(w.get(&host).unwrap().v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        std::fs::write(dir.path().join("proc/self/mountinfo"), HYBRID).unwrap();
        assert_eq!(w.get(&host).unwrap().v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
    }

    /// The host's own mountinfo is kept until the kernel reports a mount change: a tmpfs
    /// mounted and unmounted here (root only, as the daemon runs; `cargo xtask test` is).
    #[test]
    fn the_hosts_mountinfo_is_read_again_after_a_mount() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: mounting is not allowed, skipped");
            return;
        }
        let host = HostRoot::new("/");
        let mut w = HierarchyWatch::default();
        let first = w.get(&host).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &w.get(&host).unwrap()), "no mount changed: kept");
        let dir = tempfile::tempdir().unwrap();
        let target = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let mount = |on: bool| {
            // SAFETY: C strings that outlive the calls.
            let r = unsafe {
                if on {
                    libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null())
                } else {
                    libc::umount(target.as_ptr())
                }
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
        };
        mount(true);
        let second = w.get(&host).unwrap();
        mount(false);
        assert!(!std::sync::Arc::ptr_eq(&first, &second), "a mount happened: read again");
        let third = w.get(&host).unwrap();
        assert!(!std::sync::Arc::ptr_eq(&second, &third), "an unmount happened: read again");
        assert!(std::sync::Arc::ptr_eq(&third, &w.get(&host).unwrap()));
        assert_eq!(*first, *third);
    }

    #[test]
    fn v2_files() {
        assert_eq!(parse_cpu_max("max 100000\n").unwrap(), None);
        assert_eq!(parse_cpu_max("150000 100000\n").unwrap(), Some(1.5));
        assert!(parse_cpu_max("").is_err() && parse_cpu_max("x y").is_err() && parse_cpu_max("1 0").is_err());
        assert_eq!(parse_limit("max\n").unwrap(), None);
        assert_eq!(parse_limit("536870912\n").unwrap(), Some(512 << 20));
        assert!(parse_limit("-1").is_err());
        let io = parse_io_stat(
            "8:0 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n253:1 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
        );
        assert_eq!(
            io["8:0"],
            IoCounters { read_bytes: 1_459_200, write_bytes: 314_773_504, read_ops: 192, write_ops: 353 }
        );
        assert_eq!(io.len(), 2);
        let k = parse_flat_keyed("anon 100\nfile 50\nbad\nx y\n");
        assert_eq!((k.get("anon"), k.get("file"), k.get("x"), k.len()), (Some(100), Some(50), None, 2));
    }

    #[test]
    fn v1_blkio() {
        let b = parse_blkio("8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\n8:16 Read 1\nTotal 12289\n");
        assert_eq!(b["8:0"], (4096, 8192));
        assert_eq!(b["8:16"], (1, 0));
        assert_eq!(v1_limit(9_223_372_036_854_771_712), None);
        assert_eq!(v1_limit(1 << 30), Some(1 << 30));
    }

    #[test]
    fn nspid() {
        assert_eq!(ns_pid("Name:\tinit\nNSpid:\t4242\t1\n"), Some(1));
        assert_eq!(ns_pid("NSpid:\t4242\n"), Some(4242));
        assert_eq!(ns_pid("Name: x\n"), None);
    }

    /// A container's cgroup tree on a unified host, as files.
    #[test]
    fn reads_a_unified_container() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("sys/fs/cgroup/lxc/101");
        std::fs::create_dir_all(cg.join("ns")).unwrap();
        for (f, t) in [
            ("cpu.stat", "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\n"),
            ("memory.current", "104857600\n"),
            ("memory.stat", "anon 52428800\nfile 41943040\nkernel 10485760\n"),
            ("memory.swap.current", "0\n"),
            ("memory.max", "536870912\n"),
            ("memory.swap.max", "max\n"),
            ("cpu.max", "200000 100000\n"),
            ("io.stat", "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n"),
            ("pids.current", "7\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            (
                "cpu.pressure",
                "some avg10=1.00 avg60=0.00 avg300=0.00 total=5\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            ),
            ("memory.pressure", "garbage\n"),
        ] {
            std::fs::write(cg.join(f), t).unwrap();
        }
        std::fs::write(cg.join("ns/cgroup.procs"), "4242\n4243\n").unwrap();
        let host = HostRoot::new(dir.path());
        let h = Hierarchies {
            v2: Some("/sys/fs/cgroup".into()),
            v2_controllers: ["cpu", "memory", "io", "pids"].map(String::from).to_vec(),
            v1: BTreeMap::new(),
        };
        let mut errors = Vec::new();
        let st = read_container(&mut CgroupFiles::by_path(&host), &h, "101", &mut errors, Known::default()).unwrap();
        assert_eq!(st.cpu_user_seconds, Some(2.0));
        assert_eq!(st.memory_used(), Some(104_857_600 - 41_943_040));
        assert_eq!(st.memory_kernel, Some(10_485_760));
        assert_eq!(
            (st.limits.memory_max, st.limits.swap_max, st.limits.cpu_max_cores),
            (Some(Some(512 << 20)), Some(None), Some(Some(2.0)))
        );
        assert_eq!((st.pids, st.oom_kills), (Some(7), Some(1)));
        assert_eq!(st.io["8:0"].write_ops, 2);
        assert!(st.pressure[0].is_some() && st.pressure[1].is_none());
        assert_eq!(errors.len(), 1, "the bad pressure file is its own error: {errors:?}");
        assert_eq!(container_ids(&host, &h).unwrap(), vec!["101".to_string()]);
        assert_eq!(container_pids(&mut CgroupFiles::by_path(&host), &h, "101"), vec![4242, 4243]);
        // Stopped mid-scrape: gone, not an error.
        std::fs::remove_dir_all(&cg).unwrap();
        let mut errors = Vec::new();
        assert!(read_container(&mut CgroupFiles::by_path(&host), &h, "101", &mut errors, Known::default()).is_none());
        assert!(errors.is_empty());
    }

    /// This machine's layout: memory, CPU, block I/O and pids on v1, pressure on cgroup2; the
    /// files in the kernel's formats (memory.stat and oom_control as 6.x writes them).
    #[test]
    fn reads_a_hybrid_container() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("sys/fs/cgroup");
        let mut stat = String::new();
        for (k, v) in [("cache", 0u64), ("rss", 0), ("swap", 0), ("hierarchical_memory_limit", 536_870_912)] {
            stat += &format!("{k} {v}\n");
        }
        for (k, v) in [("cache", 41_943_040u64), ("rss", 52_428_800), ("rss_huge", 0), ("swap", 8_388_608)] {
            stat += &format!("total_{k} {v}\n");
        }
        for (ctl, files) in [
            (
                "memory",
                vec![
                    ("memory.usage_in_bytes", "104857600\n".to_string()),
                    ("memory.stat", stat),
                    ("memory.kmem.usage_in_bytes", "10485760\n".into()),
                    ("memory.limit_in_bytes", "536870912\n".into()),
                    ("memory.memsw.limit_in_bytes", "671088640\n".into()),
                    ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n".into()),
                ],
            ),
            (
                "cpu,cpuacct",
                vec![
                    ("cpuacct.stat", "user 200\nsystem 100\n".into()),
                    ("cpu.cfs_quota_us", "150000\n".into()),
                    ("cpu.cfs_period_us", "100000\n".into()),
                ],
            ),
            (
                "blkio",
                vec![
                    ("blkio.throttle.io_service_bytes_recursive", "8:0 Read 10\n8:0 Write 20\nTotal 30\n".into()),
                    ("blkio.throttle.io_serviced_recursive", "8:0 Read 1\n8:0 Write 2\nTotal 3\n".into()),
                ],
            ),
            ("pids", vec![("pids.current", "7\n".into())]),
            (
                "unified",
                vec![(
                    "cpu.pressure",
                    "some avg10=1.00 avg60=0.00 avg300=0.00 total=5\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                        .into(),
                )],
            ),
        ] {
            let cg = base.join(ctl).join("lxc/101");
            std::fs::create_dir_all(&cg).unwrap();
            for (f, t) in files {
                std::fs::write(cg.join(f), t).unwrap();
            }
        }
        let host = HostRoot::new(dir.path());
        let (v2, v1) = parse_cgroup_mounts(HYBRID);
        let h = Hierarchies { v2, v2_controllers: Vec::new(), v1 };
        let mut errors = Vec::new();
        let st = read_container(&mut CgroupFiles::by_path(&host), &h, "101", &mut errors, Known::default()).unwrap();
        assert_eq!((st.cpu_user_seconds, st.cpu_system_seconds), (Some(2.0), Some(1.0)));
        assert_eq!(st.memory_bytes, Some(104_857_600));
        assert_eq!((st.memory_anon, st.memory_file), (Some(52_428_800), Some(41_943_040)));
        assert_eq!(st.memory_kernel, Some(10_485_760));
        // Swap: memory.stat's total_swap (the hierarchy's, as usage is).
        assert_eq!(st.swap_bytes, Some(8_388_608));
        assert_eq!(
            (st.limits.memory_max, st.limits.swap_max, st.limits.cpu_max_cores),
            (Some(Some(512 << 20)), Some(Some(128 << 20)), Some(Some(1.5)))
        );
        assert_eq!((st.pids, st.oom_kills), (Some(7), Some(2)));
        assert_eq!((st.io["8:0"].read_bytes, st.io["8:0"].write_ops), (10, 2));
        assert!(st.pressure[0].is_some());
        // The missing memory and io pressure files of this tree are missing files, errors.
        assert!(errors.iter().all(|e| e.to_string().contains("pressure")), "{errors:?}");
        // Without swap accounting memory.stat has no swap lines: no swap figure, no error.
        let cg = base.join("memory/lxc/101");
        std::fs::write(cg.join("memory.stat"), "total_cache 0\ntotal_rss 8192\n").unwrap();
        let st =
            read_container(&mut CgroupFiles::by_path(&host), &h, "101", &mut Vec::new(), Known::default()).unwrap();
        assert_eq!((st.memory_anon, st.swap_bytes), (Some(8192), None));
        // An OOM kill count and pressure the caller knows are unchanged: taken, their files
        // not read.
        std::fs::remove_file(cg.join("memory.oom_control")).unwrap();
        std::fs::remove_file(base.join("unified/lxc/101/cpu.pressure")).unwrap();
        let mut errors = Vec::new();
        let p = Pressure { some: Some(Default::default()), full: None };
        let known = Known { limits: None, oom_kills: Some(9), pressure: [Some(p), Some(p), Some(p)] };
        let st = read_container(&mut CgroupFiles::by_path(&host), &h, "101", &mut errors, known).unwrap();
        assert_eq!((st.oom_kills, st.pressure), (Some(9), [Some(p); 3]));
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// Random text for every parser of cgroup files: none panics.
    #[test]
    fn random_input_never_panics() {
        const ALPHABET: &[u8] = b"0189:= max\nrbytesios-_ReadWriteTotal\t8:0 \xff";
        for t in crate::sources::testing::random_texts(ALPHABET, 0x2545_f491_4f6c_dd1d, 3000, 120) {
            let k = parse_flat_keyed(&t);
            let _ = (parse_cpu_max(&t), parse_limit(&t), parse_io_stat(&t), parse_blkio(&t), k.get("max"), k.len());
            let _ = k.get_many(["max", "8:0", "rbytes"]);
            let _ = (ns_pid(&t), parse_cgroup_mounts(&t));
        }
    }
}

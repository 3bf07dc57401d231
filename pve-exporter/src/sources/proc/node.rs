//! The node's own status, as PVE's API reports it in `/nodes/<node>/status`, read from the
//! node's files: `/proc/loadavg`, swap from `/proc/meminfo`, statvfs of `/`, KSM's
//! `/sys/kernel/mm/ksm/pages_sharing`, and the boot mode and Secure Boot state from
//! `/sys/firmware/efi`. Each value is computed the way PVE computes it (pve-manager's node
//! status, pve-common's ProcFSTools and `df`), so both sources agree.

use std::{io, time::Duration};

use crate::{
    host::{BlockingGate, HostRoot, ScrapeFiles},
    sources::error::{ParseError, SourceError},
    sources::storage::statvfs,
};

/// What the node status collector exports; every part is optional (the API may leave one
/// out, a local file may be unreadable).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeStatus {
    /// 1, 5 and 15 minute load averages.
    pub load: Option<[f64; 3]>,
    pub swap: Option<Swap>,
    pub rootfs: Option<Rootfs>,
    /// Memory KSM saves by sharing pages, in bytes.
    pub ksm_shared: Option<u64>,
    pub boot: Option<BootInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swap {
    pub total: u64,
    pub used: u64,
    pub free: u64,
}

/// The root file system as `df` shows it: `avail` is what unprivileged writers can still use
/// (blocks reserved for root excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rootfs {
    pub total: u64,
    pub used: u64,
    pub avail: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// `efi` or `legacy-bios` (PVE's names).
    pub mode: String,
    pub secureboot: bool,
}

/// `/proc/loadavg`: `0.52 0.58 0.59 2/1234 56789`.
pub fn parse_loadavg(text: &str) -> Result<[f64; 3], ParseError> {
    let mut it = text.split_whitespace();
    let mut out = [0.0; 3];
    for v in &mut out {
        let w = it.next().ok_or_else(|| ParseError::new("/proc/loadavg", format!("too short: {text:?}")))?;
        *v = w
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| ParseError::new("/proc/loadavg", format!("bad {w:?}")))?;
    }
    Ok(out)
}

/// One line of `/proc/meminfo` (`Key:   <n> kB`, or a bare count), in bytes; saturating.
/// Our own reader, not procfs': that one wants every line a kernel may lack and panicked on
/// a number too large for its kB multiplication (found by the `proc_files` fuzz target).
pub fn meminfo_bytes(text: &[u8], key: &str) -> Result<u64, ParseError> {
    let bad = |why: String| ParseError::new("/proc/meminfo", why);
    let text = std::str::from_utf8(text).map_err(|_| bad("not text".into()))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .ok_or_else(|| bad(format!("no {key}")))?;
    let mut words = line.split_whitespace();
    let n: u64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(|| bad(format!("{key}: not a number")))?;
    Ok(match words.next() {
        Some("kB") => n.saturating_mul(1024),
        None => n,
        Some(unit) => return Err(bad(format!("{key}: unknown unit {unit:?}"))),
    })
}

/// One counter of `/proc/vmstat` (`<name> <n>` lines), e.g. `oom_kill`: the kernel's OOM
/// kills since boot, counted where each kill also counts in the victim's memory cgroup
/// (mm/oom_kill.c `__oom_kill_process`). None: no such line (before 4.13) or not a number.
pub fn vmstat_value(text: &[u8], key: &str) -> Option<u64> {
    text.split(|b| *b == b'\n').find_map(|l| {
        let rest = l.strip_prefix(key.as_bytes())?.strip_prefix(b" ")?;
        std::str::from_utf8(rest).ok()?.trim().parse().ok()
    })
}

/// Swap of `/proc/meminfo`; used = total - free, as PVE computes it.
pub fn swap_from_meminfo(text: &[u8]) -> Result<Swap, ParseError> {
    let (total, free) = (meminfo_bytes(text, "SwapTotal")?, meminfo_bytes(text, "SwapFree")?);
    Ok(Swap { total, free, used: total.saturating_sub(free) })
}

/// Memory of `/proc/meminfo` as pvestatd reports the node's: (total, used = total -
/// available), in bytes.
pub fn memory_from_meminfo(text: &[u8]) -> Result<(u64, u64), ParseError> {
    let (total, avail) = (meminfo_bytes(text, "MemTotal")?, meminfo_bytes(text, "MemAvailable")?);
    Ok((total, total.saturating_sub(avail)))
}

/// Busy CPU seconds of all CPUs from /proc/stat's `cpu` line (everything but idle and iowait).
pub fn busy_cpu_seconds(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest, guest_nice are in user, nice).
    let busy: u64 =
        v.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).fold(0u64, |a, (_, x)| a.saturating_add(*x));
    Some(busy as f64 / procfs::ticks_per_second().max(1) as f64)
}

/// `/sys/kernel/mm/ksm/pages_sharing`: one number.
pub fn parse_pages_sharing(text: &str) -> Result<u64, ParseError> {
    text.trim().parse().map_err(|_| ParseError::new("pages_sharing", format!("bad {:?}", text.trim())))
}

/// The efivarfs file of the `SecureBoot` variable: 4 bytes of attributes, then the value
/// (1 = on).
pub fn secure_boot_from_efivar(raw: &[u8]) -> Result<bool, ParseError> {
    match raw {
        [_, _, _, _, v, ..] => Ok(*v == 1),
        _ => Err(ParseError::new("SecureBoot variable", format!("{} bytes, expected at least 5", raw.len()))),
    }
}

/// efivarfs name of the SecureBoot variable (EFI global variable GUID).
pub const SECURE_BOOT_VAR: &str = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// The page size KSM counts in.
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

/// Read the node's status below `host`. The statvfs of `/` goes through `gate` with
/// `timeout` (a file system call that can block); each part that fails is left out and
/// reported in `errors`.
pub fn read_node_status(
    host: &HostRoot,
    files: &ScrapeFiles,
    gate: &BlockingGate,
    timeout: Duration,
    errors: &mut Vec<SourceError>,
) -> NodeStatus {
    let mut st = NodeStatus::default();
    match host.read_to_string("proc/loadavg") {
        Ok(t) => st.load = parse_loadavg(&t).map_err(|e| errors.push(e.into())).ok(),
        Err(e) => errors.push(SourceError::io(host.path("proc/loadavg"), e)),
    }
    match files.read("proc/meminfo") {
        Ok(t) => st.swap = swap_from_meminfo(&t).map_err(|e| errors.push(e.into())).ok(),
        Err(e) => errors.push(SourceError::io(host.path("proc/meminfo"), e)),
    }
    let root = host.path("/");
    match gate.call("statvfs-root", timeout, move || statvfs::statvfs(&root)).and_then(|r| r) {
        Ok(u) => st.rootfs = Some(Rootfs { total: u.size, used: u.used, avail: u.free }),
        Err(e) => errors.push(SourceError::io(host.path("/"), e)),
    }
    // No KSM in the kernel: nothing shared (PVE reports 0 too).
    st.ksm_shared = match host.read_to_string("sys/kernel/mm/ksm/pages_sharing") {
        Ok(t) => parse_pages_sharing(&t).map(|p| p.saturating_mul(page_size())).map_err(|e| errors.push(e.into())).ok(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(0),
        Err(e) => {
            errors.push(SourceError::io(host.path("sys/kernel/mm/ksm/pages_sharing"), e));
            None
        }
    };
    st.boot = Some(if host.path("sys/firmware/efi").is_dir() {
        // An EFI boot without the variable (efivarfs not mounted) says nothing about Secure
        // Boot; PVE reports it as off then, and so do we.
        let secureboot = match host.read(SECURE_BOOT_VAR) {
            Ok(raw) => secure_boot_from_efivar(&raw).unwrap_or_else(|e| {
                errors.push(e.into());
                false
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                errors.push(SourceError::io(host.path(SECURE_BOOT_VAR), e));
                false
            }
        };
        BootInfo { mode: "efi".into(), secureboot }
    } else {
        BootInfo { mode: "legacy-bios".into(), secureboot: false }
    });
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_cpu_seconds_of_proc_stat() {
        let hz = procfs::ticks_per_second() as f64;
        let b = busy_cpu_seconds("cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 1 1 1\n").unwrap();
        assert!((b - 161.0 / hz).abs() < 1e-9);
        assert_eq!(busy_cpu_seconds("intr 1\n"), None);
    }

    #[test]
    fn node_memory_as_pvestatd() {
        // The complete meminfo of the pve-cluster fixture host.
        let mi = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/hosts/pve-cluster/proc/meminfo"));
        let (total, used) = memory_from_meminfo(mi).unwrap();
        assert_eq!((total, used), (65_536_000 * 1024, (65_536_000 - 49_152_000) * 1024));
        assert!(memory_from_meminfo(b"MemTotal: 1 kB\n").is_err());
        // Only the lines needed: a kernel's meminfo without some other line is fine.
        assert_eq!(memory_from_meminfo(b"MemTotal: 4 kB\nMemAvailable: 1 kB\n").unwrap(), (4096, 3072));
    }

    /// Found by the `proc_files` fuzz target: procfs' meminfo parser panicked on a number too
    /// large for its kB multiplication. Ours saturates, and rejects what is not a count.
    #[test]
    fn meminfo_hostile_numbers() {
        let crash = include_bytes!("../../../../fixtures/fuzz/proc_files-crash-ccead2de");
        let _ = memory_from_meminfo(crash);
        let _ = swap_from_meminfo(crash);
        assert_eq!(meminfo_bytes(b"MemTotal: 18446744073709551615 kB\n", "MemTotal").unwrap(), u64::MAX);
        assert_eq!(meminfo_bytes(b"HugePages_Total:       7\n", "HugePages_Total").unwrap(), 7);
        for bad in [&b"MemTotal: x kB\n"[..], b"MemTotal: 1 MB\n", b"MemTotal 1 kB\n", b"\xff"] {
            assert!(meminfo_bytes(bad, "MemTotal").is_err(), "{bad:?}");
        }
        assert_eq!(
            busy_cpu_seconds(&format!("cpu  {0} {0} {0} 0 0 {0} {0} {0}\n", u64::MAX)).map(|b| b > 0.0),
            Some(true)
        );
    }

    #[test]
    fn vmstat_counters() {
        let text = b"nr_free_pages 123\noom_kill_x 9\noom_kill 4\npgfault 77\n";
        assert_eq!(vmstat_value(text, "oom_kill"), Some(4), "the whole name, not a prefix of another");
        assert_eq!(vmstat_value(text, "pgfault"), Some(77));
        assert_eq!(vmstat_value(b"nr_free_pages 1\n", "oom_kill"), None, "before 4.13");
        assert_eq!(vmstat_value(b"oom_kill -1\noom_kill \xff\n", "oom_kill"), None);
        // A whole /proc/vmstat of a 6.18 kernel (this machine's, after six OOM kills).
        let real = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/hosts/pve-cluster/proc/vmstat"));
        assert_eq!(vmstat_value(real, "oom_kill"), Some(6));
    }

    #[test]
    fn loadavg() {
        assert_eq!(parse_loadavg("3.12 2.88 2.79 2/1234 56789\n").unwrap(), [3.12, 2.88, 2.79]);
        assert_eq!(parse_loadavg("0.00 0.00 0.00").unwrap(), [0.0; 3]);
        for bad in ["", "1.0 2.0", "a b c", "1 2 -3", "1 2 inf", "\u{0}"] {
            assert!(parse_loadavg(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn swap() {
        // The complete meminfo of the pve-cluster fixture host.
        let mi = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/hosts/pve-cluster/proc/meminfo"));
        let s = swap_from_meminfo(mi).unwrap();
        assert_eq!(s, Swap { total: 8_388_604 * 1024, free: 8_126_460 * 1024, used: 262_144 * 1024 });
        // No swap configured.
        let text = String::from_utf8_lossy(mi)
            .lines()
            .map(|l| {
                if l.starts_with("Swap") {
                    format!("{}: 0 kB", l.split(':').next().unwrap_or(""))
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(swap_from_meminfo(text.as_bytes()).unwrap(), Swap { total: 0, used: 0, free: 0 });
        assert!(swap_from_meminfo(b"garbage").is_err());
        assert!(swap_from_meminfo(b"MemTotal: 1 kB\nSwapTotal: 1 kB\n").is_err(), "incomplete");
    }

    #[test]
    fn ksm_and_secure_boot() {
        assert_eq!(parse_pages_sharing("262144\n").unwrap(), 262_144);
        assert!(parse_pages_sharing("-1").is_err());
        assert_eq!(secure_boot_from_efivar(&[6, 0, 0, 0, 1]), Ok(true));
        assert_eq!(secure_boot_from_efivar(&[6, 0, 0, 0, 0]), Ok(false));
        assert!(secure_boot_from_efivar(&[6, 0, 0]).is_err());
    }

    #[test]
    fn a_legacy_bios_host_without_ksm() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("proc/loadavg"), "1.00 0.50 0.25 1/100 42\n").unwrap();
        let host = HostRoot::new(dir.path());
        let mut errors = Vec::new();
        let st = read_node_status(
            &host,
            &ScrapeFiles::new(&host),
            &BlockingGate::default(),
            Duration::from_secs(5),
            &mut errors,
        );
        assert_eq!(st.load, Some([1.0, 0.5, 0.25]));
        assert_eq!(st.swap, None, "no meminfo");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(st.rootfs.is_some_and(|r| r.total > 0));
        assert_eq!(st.ksm_shared, Some(0));
        assert_eq!(st.boot, Some(BootInfo { mode: "legacy-bios".into(), secureboot: false }));
    }
}

//! KVM debugfs (`/sys/kernel/debug/kvm/`): one directory per VM named `<qemu pid>-<vm fd>`
//! holding the VM's statistics (vCPU statistics summed by the kernel), and `vcpu<N>/`
//! subdirectories with a few per-vCPU values. The stat names differ between kernels, so they
//! are taken from the directory listings, never from a list of our own. Parsers are pure; the
//! readers do one read per file.

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::{
    host::HostRoot,
    sources::{error::SourceError, kernel::tracefs},
};

/// `<pid>-<fd>` of a VM directory: both decimal, nothing else. (`110-3` is pid 110; it has
/// nothing to do with pid 1100, whose directories read `1100-<fd>`.)
pub fn parse_vm_dir_name(name: &str) -> Option<(u32, u32)> {
    let (pid, fd) = name.split_once('-')?;
    Some((decimal(pid)?, decimal(fd)?))
}

/// N of a `vcpu<N>` directory.
pub fn parse_vcpu_dir_name(name: &str) -> Option<u32> {
    decimal(name.strip_prefix("vcpu")?)
}

fn decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether a file name is exported as a `stat` label. Kernel stat names are lowercase words
/// with `_` (x86's per-vCPU files use `-`: `tsc-offset`); anything else (hidden files, names
/// with spaces or control characters) is not a stat. `pid` (a vCPU directory's thread id)
/// identifies a thread, it does not measure anything.
fn is_stat_name(name: &str) -> bool {
    !name.is_empty()
        && name != "pid"
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What a debugfs directory holds, sorted by name (files) and number (directories).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Stat files.
    pub stats: Vec<String>,
    /// `(pid, fd, name)` of `<pid>-<fd>` directories (in `kvm/` itself).
    pub vms: Vec<(u32, u32, String)>,
    /// `(N, name)` of `vcpu<N>` directories (in a VM directory).
    pub vcpus: Vec<(u32, String)>,
}

/// Sort `(name, is_dir)` entries of a debugfs directory into stats, VM and vCPU directories;
/// everything else is ignored.
pub fn classify<I, S>(entries: I) -> Listing
where
    I: IntoIterator<Item = (S, bool)>,
    S: AsRef<str>,
{
    let mut l = Listing::default();
    for (name, is_dir) in entries {
        let name = name.as_ref();
        if !is_dir {
            if is_stat_name(name) {
                l.stats.push(name.to_string());
            }
        } else if let Some((pid, fd)) = parse_vm_dir_name(name) {
            l.vms.push((pid, fd, name.to_string()));
        } else if let Some(n) = parse_vcpu_dir_name(name) {
            l.vcpus.push((n, name.to_string()));
        }
    }
    l.stats.sort_unstable();
    l.vms.sort_unstable();
    l.vcpus.sort_unstable();
    l
}

/// List a debugfs directory (names that are not UTF-8 are not stats of ours).
pub fn list_dir(dir: &Path) -> io::Result<Listing> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Ok(name) = e.file_name().into_string() else { continue };
        entries.push((name, e.file_type()?.is_dir()));
    }
    Ok(classify(entries))
}

/// A stat file's value: one decimal number, signed on some files (`tsc-offset`), so wider
/// than both u64 and i64. None when the file is not a single number (x86's `mmu_rmaps_stat`
/// is a table).
pub fn parse_stat_value(text: &str) -> Option<i128> {
    let t = text.trim();
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: i128 = t.parse().ok()?;
    (i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(&v).then_some(v)
}

/// Why a read error means the stats cannot be read at all, for as long as the kernel runs:
/// kernel lockdown (Secure Boot) makes debugfs answer EPERM for every file with a write bit,
/// which is every counter; EACCES means we lack the rights. None for any other error.
pub fn refusal(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(libc::EPERM) => Some("kernel lockdown (reads answer EPERM)"),
        Some(libc::EACCES) => Some("permission denied (EACCES)"),
        _ => None,
    }
}

/// The debugfs mount below `host`: `/sys/kernel/debug` when something is mounted there (a
/// non-empty directory), else debugfs is mounted on that empty directory. Err says why there
/// is none. Its `kvm/` appears only while the kvm module is loaded: callers look each time.
pub fn find_or_mount(host: &HostRoot) -> Result<PathBuf, SourceError> {
    let dir = host.path("sys/kernel/debug");
    let mut entries = std::fs::read_dir(&dir).map_err(|e| SourceError::io(&dir, e))?;
    if entries.next().is_some() {
        return Ok(dir);
    }
    tracefs::mount_pseudo_fs("debugfs", &dir).map_err(|e| SourceError::io(&dir, e))?;
    log::info!("mounted debugfs at {}", dir.display());
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_and_vcpu_directory_names() {
        assert_eq!(parse_vm_dir_name("1100-11"), Some((1100, 11)));
        assert_eq!(parse_vm_dir_name("110-3"), Some((110, 3)));
        for bad in ["1100", "1100-", "-11", "1100-11-2", "1100-x", "a-1", "1100_11", " 1100-11", "1100-+1", ""] {
            assert_eq!(parse_vm_dir_name(bad), None, "{bad:?}");
        }
        assert_eq!(parse_vm_dir_name("99999999999-1"), None);
        assert_eq!(parse_vcpu_dir_name("vcpu0"), Some(0));
        assert_eq!(parse_vcpu_dir_name("vcpu17"), Some(17));
        for bad in ["vcpu", "vcpu-1", "vcpux", "VCPU0", "vcpu0x", "cpu0"] {
            assert_eq!(parse_vcpu_dir_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn listing_sorts_out_odd_names() {
        let l = classify([
            ("halt_exits", false),
            ("exits", false),
            ("tsc-offset", false),
            ("pid", false),
            (".hidden", false),
            ("with space", false),
            ("new\nline", false),
            ("-dash", false),
            ("", false),
            ("1100-11", true),
            ("110-3", true),
            ("1100-11", false), // a file with a VM directory's name: a stat of that name
            ("vcpu1", true),
            ("vcpu0", true),
            ("vcpu", true),
            ("xen", true),
            ("exits_dir", true),
        ]);
        assert_eq!(l.stats, ["1100-11", "exits", "halt_exits", "tsc-offset"]);
        assert_eq!(l.vms, [(110, 3, "110-3".to_string()), (1100, 11, "1100-11".to_string())]);
        assert_eq!(l.vcpus, [(0, "vcpu0".to_string()), (1, "vcpu1".to_string())]);
        assert_eq!(classify(Vec::<(String, bool)>::new()), Listing::default());
    }

    #[test]
    fn stat_values() {
        assert_eq!(parse_stat_value("123\n"), Some(123));
        assert_eq!(parse_stat_value("0"), Some(0));
        assert_eq!(parse_stat_value("18446744073709551615\n"), Some(u64::MAX.into()));
        assert_eq!(parse_stat_value("-64921693680401860\n"), Some(-64_921_693_680_401_860));
        for bad in [
            "",
            "\n",
            "-",
            "+5",
            "1 2",
            "0x10",
            "1.5",
            "18446744073709551616",
            "-9223372036854775809",
            "Rmap_Count:  0  1  2-3\nLevel=4K:  3  4  5\n",
        ] {
            assert_eq!(parse_stat_value(bad), None, "{bad:?}");
        }
    }

    /// EPERM cannot be produced by a fixture file when the tests run as root (root reads any
    /// file of a normal file system), so the classification is tested on the errors
    /// themselves; the collector's handling of it is tested with an injected reader.
    #[test]
    fn eperm_and_eacces_refuse_other_errors_do_not() {
        assert!(refusal(&io::Error::from_raw_os_error(libc::EPERM)).is_some_and(|r| r.contains("lockdown")));
        assert!(refusal(&io::Error::from_raw_os_error(libc::EACCES)).is_some());
        for other in [libc::ENOENT, libc::EIO, libc::ENODEV, libc::ESRCH] {
            assert_eq!(refusal(&io::Error::from_raw_os_error(other)), None, "{other}");
        }
        assert_eq!(refusal(&io::Error::new(io::ErrorKind::PermissionDenied, "no errno")), None);
    }

    #[test]
    fn debugfs_is_found_where_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        // No /sys/kernel/debug at all: nothing to mount on.
        assert!(find_or_mount(&host).unwrap_err().to_string().contains("sys/kernel/debug"));
        std::fs::create_dir_all(dir.path().join("sys/kernel/debug/kvm")).unwrap();
        assert_eq!(find_or_mount(&host).unwrap(), dir.path().join("sys/kernel/debug"));
    }
}

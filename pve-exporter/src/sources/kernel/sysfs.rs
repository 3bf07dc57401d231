//! /sys and image files: network interface statistics and the sizes of disks as the guest
//! sees them. Every path is read below the host root.

use std::{
    io::{self, Read},
    os::unix::fs::{FileTypeExt, MetadataExt},
};

use crate::host::HostRoot;

/// The counter files of `/sys/class/net/<if>/statistics/` (Linux's `netstat_attrs`), in the
/// kernel's order. Each is exported as `pve_kvm_nic_<name>_total`.
/// A counter file holds one number and a newline; sysfs answers at most a page.
const COUNTER_FILE: u64 = 4096;

pub const NET_STATISTICS: [&str; 24] = [
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
    "multicast",
    "collisions",
    "rx_length_errors",
    "rx_over_errors",
    "rx_crc_errors",
    "rx_frame_errors",
    "rx_fifo_errors",
    "rx_missed_errors",
    "tx_aborted_errors",
    "tx_carrier_errors",
    "tx_fifo_errors",
    "tx_heartbeat_errors",
    "tx_window_errors",
    "rx_compressed",
    "tx_compressed",
    "rx_nohandler",
];

/// A counter file's content: one decimal number.
pub fn parse_counter(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// How many CPUs a kernel CPU list names (`/sys/devices/system/cpu/online`: `0-63`,
/// `0,2-5,8`; the kernel's `%*pbl`, ascending ranges joined by commas). None when it is not
/// one (empty, a range backwards, not numbers).
pub fn parse_cpulist(text: &str) -> Option<u64> {
    let mut n: u64 = 0;
    for part in text.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
        n = n.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
    }
    Some(n)
}

/// The statistics of interface `ifname`, as (index into [`NET_STATISTICS`], value), for every
/// known file that exists. Err(NotFound) when the interface is gone; a single unreadable file
/// is an error too (with the file named).
pub fn net_statistics(host: &HostRoot, ifname: &str) -> io::Result<Vec<(usize, u64)>> {
    if ifname.is_empty() || ifname.contains('/') || ifname.starts_with('.') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {ifname:?}")));
    }
    let dir = host.path(format!("sys/class/net/{ifname}/statistics"));
    let mut out = Vec::with_capacity(NET_STATISTICS.len());
    for (i, name) in NET_STATISTICS.iter().enumerate() {
        match crate::host::read_string_capped(&dir.join(name), COUNTER_FILE) {
            Ok(t) => match parse_counter(&t) {
                Some(v) => out.push((i, v)),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: not a number: {:?}", dir.join(name).display(), t.trim()),
                    ));
                }
            },
            // Older kernels lack some files (rx_nohandler came with 4.6).
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir.exists() => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.join(name).display()))),
        }
    }
    Ok(out)
}

/// Some counters of `/sys/class/net/<ifname>/statistics/`, in the order of `names` (None: a
/// file the kernel lacks). An interface that does not exist is NotFound.
pub fn net_counters(host: &HostRoot, ifname: &str, names: &[&str]) -> io::Result<Vec<Option<u64>>> {
    if ifname.is_empty() || ifname.contains('/') || ifname.starts_with('.') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {ifname:?}")));
    }
    let dir = host.path(format!("sys/class/net/{ifname}/statistics"));
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match crate::host::read_string_capped(&dir.join(name), COUNTER_FILE) {
            Ok(t) => out.push(parse_counter(&t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir.exists() => out.push(None),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.join(name).display()))),
        }
    }
    Ok(out)
}

/// Virtual size of a qcow2 image from its header: magic `QFI\xfb`, then the size as a
/// big-endian u64 at offset 24. None when `header` is not a qcow2 header.
pub fn qcow2_virtual_size(header: &[u8]) -> Option<u64> {
    if header.len() < 32 || &header[..4] != b"QFI\xfb" {
        return None;
    }
    Some(u64::from_be_bytes(header[24..32].try_into().ok()?))
}

/// The size of a disk as the guest sees it, from the host:
/// - qcow2 (file or device): the virtual size in the image header;
/// - a block device: its size in `/sys/dev/block/<major>:<minor>/size` (512-byte sectors);
/// - a regular file (raw): its length.
///
/// Anything else (a FIFO, a socket, a character device, a directory) is an error, found by
/// `stat` before anything is opened: opening a FIFO without writer blocks, and opening a
/// character device can act (a tape rewinds, a watchdog arms). See [`open_image`].
pub fn disk_size(host: &HostRoot, path: &str, format: &str) -> io::Result<u64> {
    let p = host.path(path);
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    if format == "qcow2" {
        let mut header = [0u8; 32];
        let (mut f, _) = open_image(&p).map_err(ctx)?;
        f.read_exact(&mut header).map_err(ctx)?;
        return qcow2_virtual_size(&header)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{}: no qcow2 header", p.display())));
    }
    let meta = std::fs::metadata(&p).map_err(ctx)?;
    check_image_type(&meta).map_err(ctx)?;
    if meta.file_type().is_block_device() {
        let dev = meta.rdev();
        let rel = format!("sys/dev/block/{}:{}/size", libc::major(dev), libc::minor(dev));
        let text = host.read_to_string(&rel).map_err(|e| io::Error::new(e.kind(), format!("{rel}: {e}")))?;
        let sectors = parse_counter(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{rel}: not a number")))?;
        return Ok(sectors.saturating_mul(512));
    }
    Ok(meta.len())
}

/// Ok for a regular file or a block device, the only things a disk image can be read from.
fn check_image_type(meta: &std::fs::Metadata) -> io::Result<()> {
    let t = meta.file_type();
    if t.is_file() || t.is_block_device() {
        return Ok(());
    }
    let what = if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a file"
    };
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{what}, not a regular file or block device")))
}

/// Open an image for reading its header. The path (symlinks followed: PVE's `/dev/zvol/...`
/// and `/dev/rbd-pve/...` are links to devices) must name a regular file or a block device
/// before it is opened; it is opened with `O_NONBLOCK` (a FIFO swapped in after the `stat`
/// cannot block the open or the read) and `O_NOCTTY` (a terminal never becomes the daemon's
/// controlling terminal), close-on-exec; and the opened file must be the one that was checked
/// (same device and inode, per `fstat` of the descriptor).
pub fn open_image(p: &std::path::Path) -> io::Result<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let before = std::fs::metadata(p)?;
    check_image_type(&before)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(p)?;
    let meta = f.metadata()?;
    check_image_type(&meta)?;
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "replaced while it was opened"));
    }
    Ok((f, meta))
}

/// The kernel name of the block device behind a `/dev` path (`zd16` for
/// `/dev/zvol/rpool/data/vm-100-disk-0`, `dm-3` for an LVM volume); None for other paths or
/// when it does not resolve.
pub fn device_name(host: &HostRoot, path: &str) -> Option<String> {
    if !path.starts_with("/dev/") {
        return None;
    }
    let real = std::fs::canonicalize(host.path(path)).ok()?;
    real.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Whether a disk's `/dev` path still resolves (a moved disk's old device link is gone).
/// Paths outside /dev always count as resolving: only device links are checked.
pub fn dev_path_resolves(host: &HostRoot, path: &str) -> bool {
    !path.starts_with("/dev/") || host.path(path).exists()
}

#[cfg(test)]
mod tests {

    #[test]
    fn cpu_lists_as_the_kernel_writes_them() {
        assert_eq!(parse_cpulist("0-1\n"), Some(2));
        assert_eq!(parse_cpulist("0\n"), Some(1));
        assert_eq!(parse_cpulist("0-63\n"), Some(64));
        // CPUs taken offline leave holes.
        assert_eq!(parse_cpulist("0,2-5,8,10-11\n"), Some(8));
        for bad in ["", "\n", "a", "3-1", "0-", "-1", "0,,1", "1-2-3", "0-18446744073709551615"] {
            assert_eq!(parse_cpulist(bad), None, "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn qcow2_headers() {
        let mut h = b"QFI\xfb\x00\x00\x00\x03".to_vec();
        h.extend_from_slice(&[0; 16]);
        h.extend_from_slice(&(2u64 << 30).to_be_bytes());
        assert_eq!(qcow2_virtual_size(&h), Some(2 << 30));
        assert_eq!(qcow2_virtual_size(&h[..31]), None);
        h[0] = b'X';
        assert_eq!(qcow2_virtual_size(&h), None);
        assert_eq!(qcow2_virtual_size(b""), None);
    }

    #[test]
    fn counters() {
        assert_eq!(parse_counter("123\n"), Some(123));
        assert_eq!(parse_counter("-1"), None);
        assert_eq!(parse_counter(""), None);
    }

    #[test]
    fn statistics_and_sizes_below_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let stats = dir.path().join("sys/class/net/tap100i0/statistics");
        std::fs::create_dir_all(&stats).unwrap();
        for (i, n) in NET_STATISTICS.iter().enumerate().take(23) {
            std::fs::write(stats.join(n), format!("{}\n", i * 10)).unwrap();
        }
        let got = net_statistics(&host, "tap100i0").unwrap();
        assert_eq!(got.len(), 23, "a missing file is skipped");
        assert_eq!(got[2], (2, 20));
        assert_eq!(net_statistics(&host, "tap999i0").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(net_statistics(&host, "../x").is_err());
        std::fs::write(stats.join("rx_bytes"), "lots\n").unwrap();
        assert_eq!(net_statistics(&host, "tap100i0").unwrap_err().kind(), io::ErrorKind::InvalidData);

        // A raw file, a qcow2 header, a /dev link that resolves and one that does not.
        std::fs::create_dir_all(dir.path().join("img")).unwrap();
        std::fs::write(dir.path().join("img/a.raw"), vec![0u8; 4096]).unwrap();
        let mut q = b"QFI\xfb".to_vec();
        q.resize(24, 0);
        q.extend_from_slice(&(1u64 << 30).to_be_bytes());
        std::fs::write(dir.path().join("img/b.qcow2"), &q).unwrap();
        assert_eq!(disk_size(&host, "/img/a.raw", "raw").unwrap(), 4096);
        assert_eq!(disk_size(&host, "/img/b.qcow2", "qcow2").unwrap(), 1 << 30);
        assert_eq!(disk_size(&host, "/img/a.raw", "qcow2").unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(disk_size(&host, "/img/gone", "raw").unwrap_err().kind(), io::ErrorKind::NotFound);
        // What is no image is an error, and neither blocks nor is opened: a FIFO without writer
        // (open(2) would wait for one), a character device, a symlink to one, a directory.
        let fifo = std::ffi::CString::new(dir.path().join("img/fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink("/dev/null", dir.path().join("img/null")).unwrap();
        std::os::unix::fs::symlink("fifo", dir.path().join("img/link-to-fifo")).unwrap();
        for (path, what) in [
            ("/img/fifo", "a FIFO"),
            ("/img/link-to-fifo", "a FIFO"),
            ("/img/null", "a character device"),
            ("/img", "a directory"),
        ] {
            for format in ["raw", "qcow2"] {
                let e = disk_size(&host, path, format).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{path} {format}: {e}");
                assert!(e.to_string().contains(what), "{path} {format}: {e}");
            }
        }
        std::fs::create_dir_all(dir.path().join("dev/zvol/rpool/data")).unwrap();
        std::fs::write(dir.path().join("dev/zd0"), "").unwrap();
        std::os::unix::fs::symlink("../../../zd0", dir.path().join("dev/zvol/rpool/data/vm-1-disk-0")).unwrap();
        assert_eq!(device_name(&host, "/dev/zvol/rpool/data/vm-1-disk-0").as_deref(), Some("zd0"));
        assert!(dev_path_resolves(&host, "/dev/zvol/rpool/data/vm-1-disk-0"));
        assert!(!dev_path_resolves(&host, "/dev/zvol/rpool/data/vm-1-disk-9"));
        assert!(dev_path_resolves(&host, "/img/whatever"));
        assert_eq!(device_name(&host, "/img/a.raw"), None);
        std::fs::remove_file(dir.path().join("dev/zd0")).unwrap();
        assert!(!dev_path_resolves(&host, "/dev/zvol/rpool/data/vm-1-disk-0"), "dangling link");
    }
}

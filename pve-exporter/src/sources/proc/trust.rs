//! Whose word the daemon takes. It runs as root and acts on what it reads: it opens the paths a
//! VM's drives name, connects to sockets named after a vmid, reports what a command line says.
//! So the files that say which process is a VM (PVE's pid files, libvirt's pid files and status
//! XML) count only when root wrote them, and QEMU processes only when their owner is allowed
//! (`vm.rs`). docs/operations.md, section Trust rules, has the whole list.

use std::{
    io::{self, Read},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

use crate::sources::error::SourceError;

/// Largest file read by [`read_owned_file`]: pid files are a line.
const MAX_SMALL_FILE: u64 = 4096;

/// Whether a file owned by `uid` is believed: root's, or the daemon's own user's (only root
/// can write where the real files are; a daemon run by a developer reads fixture trees that
/// user owns, which are as trusted as the daemon itself).
pub fn trusted_file_owner(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// Err(PermissionDenied) naming the owner when `meta` is not a trusted owner's.
pub fn check_owner(path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    if trusted_file_owner(meta.uid()) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: owned by uid {}, not root: ignored", path.display(), meta.uid()),
        ))
    }
}

/// The text of a small file (a pid file) that a trusted owner wrote: opened without following
/// a symlink as its last component and without blocking (a FIFO does not hang the read), and
/// read only when the opened file is a regular file of root (or the daemon's user).
pub fn read_owned_file(path: &Path) -> io::Result<String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}: not a regular file", path.display())));
    }
    check_owner(path, &meta)?;
    let mut text = String::new();
    f.take(MAX_SMALL_FILE).read_to_string(&mut text)?;
    Ok(text)
}

/// Whether `id` is a PVE vmid: digits only (PVE's range is 100 to 999999999). Anything else
/// is never a VM: the vmid becomes part of socket paths (`/var/run/qemu-server/<vmid>.qmp`)
/// and of `qm monitor <vmid>`.
pub fn is_vmid(id: &str) -> bool {
    (1..=9).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// A user name or uid of `--qemu-allowed-users`: digits are a uid, a name is looked up in the
/// host's user database (the daemon's, not below `--root`).
pub fn parse_user(s: &str) -> Result<u32, SourceError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(SourceError::invalid("user", "empty user name"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u32>().map_err(|e| SourceError::invalid(format!("{s:?}"), e));
    }
    // Without a lookup: the default must parse on a host whose user database is unreachable.
    if s == "root" {
        return Ok(0);
    }
    lookup_user(s)?.ok_or_else(|| SourceError::invalid(format!("{s:?}"), "no such user"))
}

fn lookup_user(name: &str) -> Result<Option<u32>, SourceError> {
    let c = std::ffi::CString::new(name).map_err(|_| SourceError::invalid(format!("{name:?}"), "not a user name"))?;
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: passwd is plain data; zeroed is valid, and getpwnam_r fills it.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: a NUL-terminated name, a valid out struct, a buffer of the given length, and the
    // result pointer; nothing of them is kept beyond this call but pw_uid, copied out below.
    let rc = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    if rc != 0 {
        return Err(SourceError::invalid(
            format!("{name:?}"),
            format!("user lookup failed: {}", io::Error::from_raw_os_error(rc)),
        ));
    }
    Ok((!result.is_null()).then_some(pw.pw_uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmids_are_digits() {
        for ok in ["100", "999999999", "1"] {
            assert!(is_vmid(ok), "{ok}");
        }
        for bad in ["", "../x", "100/../../x", "1000000000", "10 0", "-100", "100\n", "１００", "abc", "100.qmp"] {
            assert!(!is_vmid(bad), "{bad:?}");
        }
    }

    #[test]
    fn users_by_name_or_uid() {
        assert_eq!(parse_user("root").unwrap(), 0);
        assert_eq!(parse_user("0").unwrap(), 0);
        assert_eq!(parse_user(" 64055 ").unwrap(), 64055);
        // `nobody` exists on every Debian system (uid 65534).
        assert_eq!(parse_user("nobody").unwrap(), 65534);
        assert!(parse_user("no-such-user-here").unwrap_err().to_string().contains("no such user"));
        assert!(parse_user("").is_err());
        assert!(parse_user("99999999999").is_err());
        assert!(parse_user("a\0b").is_err());
    }

    #[test]
    fn small_files_of_trusted_owners_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("100.pid");
        std::fs::write(&p, "4242\n").unwrap();
        assert_eq!(read_owned_file(&p).unwrap(), "4242\n");
        // A symlink as the last component is not followed; a FIFO is refused without blocking.
        std::os::unix::fs::symlink(&p, dir.path().join("link.pid")).unwrap();
        assert!(read_owned_file(&dir.path().join("link.pid")).is_err());
        let fifo = std::ffi::CString::new(dir.path().join("fifo.pid").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(read_owned_file(&dir.path().join("fifo.pid")).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        // Another user's file (root can hand one over): ignored.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
            let e = read_owned_file(&p).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
    }
}

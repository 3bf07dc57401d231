//! A FUSE file system that can stall: read-only files from a map, served by a real FUSE
//! session (the `fuser` crate, mounted with mount(2) as root), whose every operation (lookup,
//! getattr, readdir, open, read, statfs) blocks while the test says so: pmxcfs hung on a lost
//! quorum, an NFS server gone, as the kernel shows them to the daemon.

#![allow(dead_code)] // each test crate uses its own part of the helpers

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEntry, ReplyStatfs, Request,
};

/// Inode n+1 is `paths[n]`; the root ("") is inode 1.
struct Tree {
    paths: Vec<String>,
    files: BTreeMap<String, Vec<u8>>,
    stall: Arc<AtomicBool>,
    /// Operations that waited because of a stall (to tell that the daemon really met it).
    stalled_ops: Arc<AtomicU64>,
}

impl Tree {
    fn wait(&self) {
        let mut counted = false;
        while self.stall.load(Ordering::Acquire) {
            if !counted {
                self.stalled_ops.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ino(&self, path: &str) -> Option<INodeNo> {
        self.paths.iter().position(|p| p == path).map(|i| INodeNo(i as u64 + 1))
    }

    fn path(&self, ino: INodeNo) -> Option<&str> {
        self.paths.get(usize::try_from(u64::from(ino)).ok()?.checked_sub(1)?).map(String::as_str)
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let path = self.path(ino)?;
        let (kind, size, perm) = match self.files.get(path) {
            Some(data) => (FileType::RegularFile, data.len() as u64, 0o640),
            None => (FileType::Directory, 0, 0o755),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    fn children(&self, dir: &str) -> Vec<(INodeNo, FileType, String)> {
        self.paths
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty() && parent(p) == dir)
            .map(|(i, p)| {
                let kind = if self.files.contains_key(p) { FileType::RegularFile } else { FileType::Directory };
                (INodeNo(i as u64 + 1), kind, p.rsplit('/').next().unwrap_or(p).to_string())
            })
            .collect()
    }
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

/// No caching in the kernel: every access reaches the file system (and stalls with it).
const TTL: Duration = Duration::ZERO;

impl Filesystem for Tree {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.wait();
        let Some(dir) = self.path(parent) else { return reply.error(Errno::ENOENT) };
        let path = if dir.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{dir}/{}", name.to_string_lossy())
        };
        match self.ino(&path).and_then(|i| self.attr(i)) {
            Some(a) => reply.entry(&TTL, &a, fuser::Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.wait();
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.wait();
        let Some(data) = self.path(ino).and_then(|p| self.files.get(p)) else { return reply.error(Errno::ENOENT) };
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.wait();
        let Some(dir) = self.path(ino) else { return reply.error(Errno::ENOENT) };
        let mut entries =
            vec![(ino, FileType::Directory, ".".to_string()), (ino, FileType::Directory, "..".to_string())];
        entries.extend(self.children(dir));
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.wait();
        // 1000 blocks of 4 KiB, 400 free.
        reply.statfs(1000, 400, 400, 100, 50, 4096, 255, 4096);
    }
}

/// A mounted stallable tree; unmounted when dropped (after the stall is lifted).
pub struct StallFs {
    stall: Arc<AtomicBool>,
    stalled_ops: Arc<AtomicU64>,
    session: Option<fuser::BackgroundSession>,
}

impl StallFs {
    /// Mount `files` (path below the mount point -> contents; directories follow from the
    /// paths, and `dirs` adds empty ones) at `at`.
    pub fn mount(at: &Path, files: &[(&str, &str)], dirs: &[&str]) -> StallFs {
        let mut paths = vec![String::new()];
        let mut map = BTreeMap::new();
        for d in dirs {
            paths.push(d.to_string());
        }
        for (p, data) in files {
            let mut dir = parent(p);
            while !dir.is_empty() {
                if !paths.iter().any(|x| x == dir) {
                    paths.push(dir.to_string());
                }
                dir = parent(dir);
            }
            paths.push(p.to_string());
            map.insert(p.to_string(), data.as_bytes().to_vec());
        }
        let stall = Arc::new(AtomicBool::new(false));
        let stalled_ops = Arc::new(AtomicU64::new(0));
        let tree = Tree { paths, files: map, stall: stall.clone(), stalled_ops: stalled_ops.clone() };
        let mut cfg = fuser::Config::default();
        cfg.mount_options.extend([MountOption::RO, MountOption::FSName("stallfs".into())]);
        std::fs::create_dir_all(at).expect("mount point");
        let session =
            fuser::spawn_mount(tree, at, &cfg).unwrap_or_else(|e| panic!("mount FUSE at {}: {e}", at.display()));
        StallFs { stall, stalled_ops, session: Some(session) }
    }

    pub fn stall(&self, on: bool) {
        self.stall.store(on, Ordering::Release);
    }

    /// A guard that lifts the stall when dropped. Declare it after the daemon: should the test
    /// fail, it is dropped first, and the daemon (whose threads wait for the file system, and
    /// which cannot exit before they are answered) can then be killed.
    pub fn release_on_drop(&self) -> Release {
        Release(self.stall.clone())
    }

    /// Operations that met a stall so far.
    pub fn stalled_ops(&self) -> u64 {
        self.stalled_ops.load(Ordering::Relaxed)
    }
}

pub struct Release(Arc<AtomicBool>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Drop for StallFs {
    fn drop(&mut self) {
        self.stall(false);
        drop(self.session.take());
    }
}

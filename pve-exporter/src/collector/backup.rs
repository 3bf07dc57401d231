//! The `backup` collector: each guest of this node's backups, from what the node itself has
//! (no API, no credentials):
//!
//! - the last backup of each guest, its result and duration, and the last successful one, from
//!   PVE's task list (`/var/log/pve/tasks/index`, `index.1`, `active`): a task of one guest
//!   names it in its UPID; a job of several guests is one task whose per-guest results are only
//!   in its log, read once per task (cached by UPID: a finished task's log does not change);
//! - whether a backup runs now (running vzdump tasks of `active`);
//! - the newest archive per guest and storage on this node's file storages with backup content
//!   (`<path>/dump`): its time (from its name), size, age, and how many there are. Each dump
//!   directory is listed on a gate of its own within `--storage-timeout` (a hung NFS share
//!   costs its own series only), and listed again only when its modification time changed;
//! - whether an enabled backup job of `/etc/pve/jobs.cfg` includes the guest.
//!
//! Times in vzdump's logs and archive names are the node's local time (docs/metrics.md, Backups).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use super::{Collector, Context, Error, Group, Need, Setup};
use crate::{
    catalog::*,
    fasthash::FastMap,
    host::{BlockingGate, HostRoot},
    metrics::MetricSet,
    sources::pve::{
        calendar::SystemLocal,
        guest_config::GuestType,
        storage_cfg::{StorageCfgReader, read_node_name},
        tasks::{self, StatusKind, Task},
        vzdump::{self, GuestRun},
    },
};

/// Largest task log or index read (a job of a thousand guests logs some hundred KiB).
const MAX_FILE: u64 = 8 << 20;

pub fn new(setup: &Setup) -> Box<dyn Collector> {
    Box::new(BackupCollector {
        pmxcfs: setup.stages.pve_config.gate().clone(),
        storage_cfg: StorageCfgReader::default(),
        logs: Mutex::default(),
        dirs: Mutex::default(),
        timeout: setup.config.storage_timeout,
        pmxcfs_timeout: setup.config.pmxcfs_timeout,
        malformed: Mutex::default(),
    })
}

struct BackupCollector {
    pmxcfs: BlockingGate,
    storage_cfg: StorageCfgReader,
    /// Per-guest results of finished vzdump tasks, by UPID.
    logs: Mutex<HashMap<String, Arc<Vec<GuestRun>>>>,
    /// Per dump directory: its gate and its last listing.
    dirs: Mutex<HashMap<PathBuf, DumpDir>>,
    timeout: std::time::Duration,
    pmxcfs_timeout: std::time::Duration,
    /// Lines skipped as malformed, per file, as last logged.
    malformed: Mutex<HashMap<&'static str, usize>>,
}

#[derive(Default)]
struct DumpDir {
    gate: BlockingGate,
    listing: Option<Arc<Listing>>,
}

/// A dump directory's archives: (name, size), as of the directory's modification time.
struct Listing {
    mtime: Option<SystemTime>,
    files: Vec<(vzdump::Archive, u64)>,
}

/// One guest's backup, as the collector reports it.
#[derive(Debug, Clone)]
struct Outcome {
    /// When it started (seconds since the epoch).
    at: i64,
    ok: bool,
    duration: Option<f64>,
    error: Option<String>,
}

impl Collector for BackupCollector {
    fn name(&self) -> &'static str {
        "backup"
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        FAMILIES
    }
    fn group(&self) -> Group {
        Group::Storage
    }
    fn needs(&self) -> &'static [Need] {
        &[Need::Guests]
    }
    fn stuck(&self) -> Vec<(String, std::time::Duration)> {
        let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        dirs.iter().filter_map(|(p, d)| Some((p.display().to_string(), d.gate.hung()?))).collect()
    }
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error> {
        let list = super::guest::node_guests(cx)?;
        let node = if list.guests.node.is_empty() { read_node_name(cx.host) } else { Some(list.guests.node.clone()) };
        let guests: Vec<(&str, GuestType)> = list.guests.guests.iter().map(|g| (g.vmid.as_str(), g.ty)).collect();
        let mut errors = Vec::new();

        self.tasks(cx, &guests, out, &mut errors);
        self.files(cx, node.as_deref(), &guests, out, &mut errors);
        self.coverage(cx, node.as_deref().unwrap_or_default(), &guests, out, &mut errors);
        Error::all(errors)
    }
}

/// A guest's labels, borrowed: written as they are (no copy per line).
fn labels(vmid: &str, ty: GuestType) -> [(&'static str, &str); 2] {
    [("id", vmid), ("type", ty.as_str())]
}

impl BackupCollector {
    /// Log the lines of `file` that were skipped, once per change of their number (not on
    /// every scrape): they cost only themselves.
    fn note_malformed(&self, file: &'static str, n: usize) {
        let mut seen = self.malformed.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(file, n).unwrap_or(0) != n && n > 0 {
            log::warn!("{file}: {n} malformed line(s) skipped (what PVE's own reader skips too)");
        }
    }

    /// Last and last successful backup per guest, and the running ones, from the task list.
    fn tasks(&self, cx: &Context, guests: &[(&str, GuestType)], out: &mut MetricSet, errors: &mut Vec<Error>) {
        let mut finished: Vec<Task> = Vec::new();
        for f in ["var/log/pve/tasks/index.1", "var/log/pve/tasks/index"] {
            match read_capped(cx.host, f) {
                Ok(Some(text)) => {
                    let (list, bad) = tasks::parse_index(&text);
                    self.note_malformed(f, bad);
                    finished.extend(list.into_iter().filter(is_vzdump));
                }
                Ok(None) => {}
                Err(e) => errors.push(Error::io(cx.host.path(f), e)),
            }
        }
        let mut running: Vec<Task> = Vec::new();
        match read_capped(cx.host, "var/log/pve/tasks/active") {
            Ok(Some(text)) => {
                let (list, bad) = tasks::parse_active(&text);
                self.note_malformed("var/log/pve/tasks/active", bad);
                for (t, saved) in list {
                    if !is_vzdump(&t) {
                        continue;
                    }
                    match t.end {
                        None => running.push(t),
                        // Finished, not yet in the index.
                        Some(_) if !saved => finished.push(t),
                        Some(_) => {}
                    }
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(Error::io(cx.host.path("var/log/pve/tasks/active"), e)),
        }
        finished.sort_by_key(|t| t.info.starttime);
        finished.dedup_by(|a, b| a.upid == b.upid);

        let mine: FastMap<&str, GuestType> = guests.iter().copied().collect();
        let mut last: FastMap<String, Outcome> = FastMap::default();
        let mut last_ok: FastMap<String, i64> = FastMap::default();
        {
            let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
            let seen: HashSet<&str> = finished.iter().map(|t| t.upid.as_str()).collect();
            logs.retain(|u, _| seen.contains(u.as_str()));
            for t in &finished {
                let runs = logs.entry(t.upid.clone()).or_insert_with(|| Arc::new(read_runs(cx.host, &t.upid))).clone();
                for (vmid, o) in outcomes(t, &runs) {
                    if !mine.contains_key(vmid.as_str()) {
                        continue;
                    }
                    if o.ok {
                        last_ok.insert(vmid.clone(), o.at);
                    }
                    // Tasks in start order: a later one's result replaces an earlier one's.
                    if last.get(&vmid).is_none_or(|p| p.at <= o.at) {
                        last.insert(vmid, o);
                    }
                }
            }
        }
        let mut now_running: HashSet<String> = HashSet::new();
        for t in &running {
            if vzdump::is_vmid(&t.info.id) {
                now_running.insert(t.info.id.clone());
            } else {
                // A job of several guests: the guest whose part of the log has no verdict yet.
                now_running.extend(read_runs(cx.host, &t.upid).into_iter().filter(|r| r.ok.is_none()).map(|r| r.vmid));
            }
        }
        for &(vmid, ty) in guests {
            if let Some(o) = last.get(vmid) {
                out.family(&GUEST_BACKUP_LAST_RUN_TIMESTAMP).push_ref(&labels(vmid, ty), o.at as f64);
                out.family(&GUEST_BACKUP_LAST_RUN_SUCCESS).push_ref(&labels(vmid, ty), u64::from(o.ok));
                if let Some(d) = o.duration {
                    out.family(&GUEST_BACKUP_LAST_RUN_DURATION).push_ref(&labels(vmid, ty), d);
                }
                if let Some(e) = o.error.as_ref().filter(|_| !o.ok) {
                    let [id, ty] = labels(vmid, ty);
                    out.family(&GUEST_BACKUP_LAST_ERROR_INFO).push_ref(&[id, ty, ("error", e)], 1u64);
                }
            }
            if let Some(at) = last_ok.get(vmid) {
                out.family(&GUEST_BACKUP_LAST_SUCCESS_TIMESTAMP).push_ref(&labels(vmid, ty), *at as f64);
            }
            out.family(&GUEST_BACKUP_RUNNING).push_ref(&labels(vmid, ty), u64::from(now_running.contains(vmid)));
        }
    }

    /// The newest archive per guest and storage on this node's file storages.
    fn files(
        &self,
        cx: &Context,
        node: Option<&str>,
        guests: &[(&str, GuestType)],
        out: &mut MetricSet,
        errors: &mut Vec<Error>,
    ) {
        let cfg = match self.storage_cfg.read(cx.host, &self.pmxcfs, self.pmxcfs_timeout) {
            Ok(Some(cfg)) => cfg,
            Ok(None) => return,
            Err(e) => {
                errors.push(Error::io(cx.host.path("etc/pve/storage.cfg"), e));
                return;
            }
        };
        // (storage, dump directory) of the enabled file storages of this node with backups.
        let dumps: Vec<(String, PathBuf)> = cfg
            .storages
            .iter()
            .filter(|s| !s.disabled() && s.on_node(node) && s.content().split(',').any(|c| c.trim() == "backup"))
            .filter_map(|s| {
                let path = s.path()?;
                let sub = s
                    .get("content-dirs")
                    .and_then(|d| d.split(',').find_map(|kv| kv.trim().strip_prefix("backup=")))
                    .unwrap_or("dump");
                let dir = if sub.starts_with('/') { sub.to_string() } else { format!("{path}/{sub}") };
                Some((s.name.clone(), cx.host.path(dir)))
            })
            .collect();
        let pending: Vec<_> = {
            let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
            let wanted: HashSet<&PathBuf> = dumps.iter().map(|(_, d)| d).collect();
            dirs.retain(|p, d| wanted.contains(p) || d.gate.busy());
            dumps
                .iter()
                .map(|(_, dir)| {
                    let d = dirs.entry(dir.clone()).or_default();
                    let (target, prev) = (dir.clone(), d.listing.clone());
                    d.gate.start("list", self.timeout, move || list_dump_dir(&target, prev))
                })
                .collect()
        };
        let deadline = Instant::now() + crate::deadline::cap(self.timeout);
        let mine: FastMap<&str, GuestType> = guests.iter().copied().collect();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        for ((storage, dir), p) in dumps.iter().zip(pending) {
            let listing = match p.and_then(|p| p.wait(deadline)).and_then(|r| r) {
                Ok(l) => l,
                // The share is not mounted, the disk unplugged: no backups there now (the
                // storage collector reports the storage inactive).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    errors.push(Error::source(format!("{storage}: list {}", dir.display()), e));
                    continue;
                }
            };
            if let Some(d) = self.dirs.lock().unwrap_or_else(|p| p.into_inner()).get_mut(dir) {
                d.listing = Some(listing.clone());
            }
            // Per guest: (newest time, its size, count).
            let mut per: FastMap<&str, (i64, u64, u64)> = FastMap::default();
            for (a, size) in &listing.files {
                let Some(&ty) = mine.get(a.vmid.as_str()) else { continue };
                // A vmid reused by a guest of the other type: its archives are not this guest's.
                if (ty == GuestType::Qemu) != (a.kind == "qemu") {
                    continue;
                }
                let Some(at) = a.time.to_unix(&SystemLocal) else { continue };
                let e = per.entry(a.vmid.as_str()).or_insert((i64::MIN, 0, 0));
                if at > e.0 {
                    (e.0, e.1) = (at, *size);
                }
                e.2 += 1;
            }
            for &(vmid, ty) in guests {
                let Some(&(at, size, count)) = per.get(vmid) else { continue };
                let [id, ty] = labels(vmid, ty);
                let l = [id, ty, ("storage", storage.as_str())];
                out.family(&GUEST_BACKUP_FILE_NEWEST_TIMESTAMP).push_ref(&l, at as f64);
                out.family(&GUEST_BACKUP_FILE_NEWEST_AGE).push_ref(&l, (now - at as f64).max(0.0));
                out.family(&GUEST_BACKUP_FILE_NEWEST_SIZE).push_ref(&l, size);
                out.family(&GUEST_BACKUP_FILES).push_ref(&l, count);
            }
        }
    }

    /// Whether an enabled vzdump job of jobs.cfg includes each guest.
    fn coverage(
        &self,
        cx: &Context,
        node: &str,
        guests: &[(&str, GuestType)],
        out: &mut MetricSet,
        errors: &mut Vec<Error>,
    ) {
        let host = cx.host.clone();
        let r = self.pmxcfs.call("pmxcfs", self.pmxcfs_timeout, move || host.read_to_string("etc/pve/jobs.cfg"));
        let text = match r.and_then(|r| r) {
            Ok(t) => t,
            // No jobs.cfg: no job, no guest is covered.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                errors.push(Error::io(cx.host.path("etc/pve/jobs.cfg"), e));
                return;
            }
        };
        let (jobs, bad) = vzdump::parse_jobs_cfg(&text);
        self.note_malformed("etc/pve/jobs.cfg", bad);
        let pools = match cx.stage_state().pve_config.read_pools(cx.host, self.pmxcfs_timeout) {
            Ok(p) => p,
            Err(e) => {
                errors.push(Error::io(cx.host.path("etc/pve/user.cfg"), e));
                return;
            }
        };
        for &(vmid, ty) in guests {
            let pool = pools.get(vmid).map(|p| p.name.as_str());
            let covered = jobs.iter().filter(|j| j.enabled).any(|j| j.includes(vmid, node, pool));
            out.family(&GUEST_BACKUP_COVERED).push_ref(&labels(vmid, ty), u64::from(covered));
        }
    }
}

fn is_vzdump(t: &Task) -> bool {
    t.info.kind == "vzdump"
}

/// A file below the root, at most [`MAX_FILE`] bytes; None when it does not exist.
fn read_capped(host: &HostRoot, rel: &str) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let f = match std::fs::File::open(host.path(rel)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    f.take(MAX_FILE).read_to_end(&mut buf)?;
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The per-guest results of a vzdump task's log (none when the log is gone: old logs are not
/// kept as long as the index).
fn read_runs(host: &HostRoot, upid: &str) -> Vec<GuestRun> {
    let Some(path) = tasks::log_path(upid) else { return Vec::new() };
    match read_capped(host, &path) {
        Ok(Some(text)) => vzdump::parse_task_log(&text),
        Ok(None) => Vec::new(),
        Err(e) => {
            log::debug!("{path}: {e}");
            Vec::new()
        }
    }
}

/// What a finished vzdump task tells of each guest: from its log where the log has the guest,
/// else, for a task of one guest, from the task's own status and times.
fn outcomes(t: &Task, runs: &[GuestRun]) -> Vec<(String, Outcome)> {
    let status = t.status.as_deref().unwrap_or("");
    let kind = tasks::status_kind(status);
    let task_error = matches!(kind, StatusKind::Error | StatusKind::Unknown).then(|| status.to_string());
    let mut out: Vec<(String, Outcome)> = runs
        .iter()
        .map(|r| {
            let started = r.started.and_then(|s| s.to_unix(&SystemLocal));
            let ended = r.ended.and_then(|s| s.to_unix(&SystemLocal));
            let at = started.unwrap_or(t.info.starttime);
            // No verdict in the log of a finished task: it ended without reaching this guest's
            // end (killed, crashed); the task's status says how.
            let ok = r.ok.unwrap_or(false);
            let error = match r.ok {
                Some(false) => r.error.clone(),
                Some(true) => None,
                None => Some(task_error.clone().unwrap_or_else(|| "no result in the task log".into())),
            };
            let duration = r.duration.map(|d| d as f64).or_else(|| Some((ended? - started?).max(0) as f64));
            (r.vmid.clone(), Outcome { at, ok, duration, error })
        })
        .collect();
    if out.is_empty() && vzdump::is_vmid(&t.info.id) {
        let ok = matches!(kind, StatusKind::Ok | StatusKind::Warning);
        let duration = t.end.map(|e| (e - t.info.starttime).max(0) as f64);
        out.push((t.info.id.clone(), Outcome { at: t.info.starttime, ok, duration, error: task_error }));
    }
    out
}

/// List a dump directory's archives, unless it did not change since `prev`.
fn list_dump_dir(dir: &std::path::Path, prev: Option<Arc<Listing>>) -> std::io::Result<Arc<Listing>> {
    let mtime = std::fs::metadata(dir)?.modified().ok();
    if let Some(p) = prev
        && p.mtime.is_some()
        && p.mtime == mtime
    {
        return Ok(p);
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        let Some(a) = vzdump::parse_archive_name(&name) else { continue };
        // A directory (a running backup's `.tmp/`) or a file gone meanwhile is no archive.
        let Ok(m) = e.metadata() else { continue };
        if m.is_file() {
            files.push((a, m.len()));
        }
    }
    Ok(Arc::new(Listing { mtime, files }))
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&Def]] = &[GUEST_BACKUP];

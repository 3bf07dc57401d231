//! Backups as PVE's vzdump leaves them on a node: the per-guest results in a vzdump task's
//! log, the backup archives' names on file storages, and the backup jobs of
//! `/etc/pve/jobs.cfg`. Formats from pve-manager (PVE/VZDump.pm's log lines, PVE/Jobs.pm),
//! pve-storage (`archive_info`'s file name regex) and pve-guest-common (the job schema);
//! docs/metrics.md, section Backups, and docs/formats/backups-and-replication.md quote them.
//!
//! Times in vzdump's logs and archive names are the node's local time: the callers convert
//! them (`local` arguments), so these parsers stay pure.

use std::collections::{HashMap, HashSet};

use crate::sources::pve::{
    calendar::{DateTime, LocalTime},
    config::split_list,
    storage_cfg::{parse_header, parse_property},
};

/// Longest error text kept from a log line (it becomes a label).
pub const MAX_ERROR: usize = 256;

/// A local date and time, `YYYY-MM-DD HH:MM:SS` as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalDateTime {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl LocalDateTime {
    fn new(year: &str, month: &str, day: &str, hour: &str, minute: &str, second: &str) -> Option<Self> {
        let n =
            |s: &str, len: usize| (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?;
        let t = LocalDateTime {
            year: n(year, 4)? as i32,
            month: n(month, 2)?,
            day: n(day, 2)?,
            hour: n(hour, 2)?,
            minute: n(minute, 2)?,
            second: n(second, 2)?,
        };
        ((1..=12).contains(&t.month) && (1..=31).contains(&t.day) && t.hour < 24 && t.minute < 60 && t.second < 61)
            .then_some(t)
    }

    /// Seconds since the epoch of this time in `tz` (the node's: [`SystemLocal`] when the
    /// exporter runs on it), by the calendar module's conversion.
    ///
    /// [`SystemLocal`]: crate::sources::pve::calendar::SystemLocal
    pub fn to_unix(&self, tz: &dyn LocalTime) -> Option<i64> {
        tz.to_unix(&DateTime {
            year: i64::from(self.year),
            month: i64::from(self.month),
            day: i64::from(self.day),
            hour: i64::from(self.hour),
            minute: i64::from(self.minute),
            second: i64::from(self.second),
            weekday: 0,
        })
    }

    /// `YYYY-MM-DD HH:MM:SS` (vzdump's `%F %T` of the log).
    pub fn parse_log(s: &str) -> Option<Self> {
        let (d, t) = s.split_once(' ')?;
        let d: Vec<&str> = d.split('-').collect();
        let t: Vec<&str> = t.split(':').collect();
        match (&d[..], &t[..]) {
            ([y, mo, da], [h, mi, se]) => Self::new(y, mo, da, h, mi, se),
            _ => None,
        }
    }
}

/// What became of one guest in a vzdump task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRun {
    pub vmid: String,
    /// `qemu` or `lxc` (from `Starting Backup of VM <vmid> (<type>)`; None when it failed before).
    pub kind: Option<String>,
    /// `Backup started at` (local time).
    pub started: Option<LocalDateTime>,
    /// `Backup finished at` or `Failed at` (local time).
    pub ended: Option<LocalDateTime>,
    /// `Finished Backup of VM <vmid> (HH:MM:SS)`: how long it took, in seconds.
    pub duration: Option<u64>,
    /// Some(true): finished; Some(false): failed; None: no verdict in the log (still running,
    /// or the task died).
    pub ok: Option<bool>,
    /// The error of `ERROR: Backup of VM <vmid> failed - <error>`.
    pub error: Option<String>,
    /// `WARN:` lines within its part of the log.
    pub warnings: u32,
}

/// The per-guest results of a vzdump task's log, in log order. Guests are backed up one after
/// the other, so a guest's part of the log runs from its `Starting Backup` (or its `ERROR:
/// Backup of VM` when it failed before starting) to the next guest's.
pub fn parse_task_log(text: &str) -> Vec<GuestRun> {
    let mut runs: Vec<GuestRun> = Vec::new();
    let mut current: Option<usize> = None;
    // The run of `vmid`: the current one when it is that guest's, else a new one.
    fn run_of(runs: &mut Vec<GuestRun>, current: &mut Option<usize>, vmid: &str) -> usize {
        if let Some(i) = *current
            && runs[i].vmid == vmid
        {
            return i;
        }
        runs.push(GuestRun {
            vmid: vmid.to_string(),
            kind: None,
            started: None,
            ended: None,
            duration: None,
            ok: None,
            error: None,
            warnings: 0,
        });
        *current = Some(runs.len() - 1);
        runs.len() - 1
    }
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("INFO: Starting Backup of VM ") {
            let Some((vmid, kind)) = rest.split_once(' ') else { continue };
            let Some(kind) = kind.strip_prefix('(').and_then(|k| k.strip_suffix(')')) else { continue };
            if !is_vmid(vmid) {
                continue;
            }
            current = None;
            let i = run_of(&mut runs, &mut current, vmid);
            runs[i].kind = Some(kind.to_string());
        } else if let Some(t) = line.strip_prefix("INFO: Backup started at ") {
            if let Some(i) = current {
                runs[i].started = LocalDateTime::parse_log(t);
            }
        } else if let Some(rest) = line.strip_prefix("INFO: Finished Backup of VM ") {
            let Some((vmid, d)) = rest.split_once(' ') else { continue };
            let Some(d) = d.strip_prefix('(').and_then(|d| d.strip_suffix(')')) else { continue };
            if !is_vmid(vmid) {
                continue;
            }
            let i = run_of(&mut runs, &mut current, vmid);
            runs[i].ok = Some(true);
            runs[i].duration = parse_hms(d);
        } else if let Some(rest) = line.strip_prefix("ERROR: Backup of VM ") {
            let Some((vmid, err)) = rest.split_once(" failed - ") else { continue };
            if !is_vmid(vmid) {
                continue;
            }
            let i = run_of(&mut runs, &mut current, vmid);
            runs[i].ok = Some(false);
            runs[i].error = Some(clip(err).to_string());
        } else if let Some(t) =
            line.strip_prefix("INFO: Backup finished at ").or_else(|| line.strip_prefix("INFO: Failed at "))
        {
            if let Some(i) = current {
                runs[i].ended = LocalDateTime::parse_log(t);
            }
        } else if line.starts_with("WARN: ") {
            if let Some(i) = current {
                runs[i].warnings = runs[i].warnings.saturating_add(1);
            }
        } else if line.starts_with("INFO: Backup job finished") || line.starts_with("TASK ") {
            current = None;
        }
    }
    runs
}

/// `HH:MM:SS` of vzdump's `format_time` (hours may pass 99).
fn parse_hms(s: &str) -> Option<u64> {
    let mut it = s.split(':');
    let (h, m, sec) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || m.len() != 2 || sec.len() != 2 {
        return None;
    }
    let n = |t: &str| {
        (!t.is_empty() && t.len() <= 12 && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse::<u64>().ok())?
    };
    let (h, m, sec) = (n(h)?, n(m)?, n(sec)?);
    (m < 60 && sec < 60).then(|| h * 3600 + m * 60 + sec)
}

/// PVE's vmid: 100 to 999999999 (`[1-9][0-9]{2,8}`).
pub fn is_vmid(s: &str) -> bool {
    (3..=9).contains(&s.len()) && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit())
}

/// `s` cut to [`MAX_ERROR`] bytes.
fn clip(s: &str) -> &str {
    crate::sources::clip(s, MAX_ERROR)
}

/// A backup archive with PVE's standard name (pve-storage `archive_info`):
/// `vzdump-(lxc|openvz|qemu)-<vmid>-YYYY_MM_DD-HH_MM_SS.(tgz|(tar|vma)[.(gz|lzo|zst|bz2)])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// `qemu`, `lxc` or `openvz`.
    pub kind: String,
    pub vmid: String,
    /// When the guest's backup started, in the node's local time.
    pub time: LocalDateTime,
}

pub fn parse_archive_name(name: &str) -> Option<Archive> {
    let rest = name.strip_prefix("vzdump-")?;
    let (kind, rest) = rest.split_once('-')?;
    if !matches!(kind, "qemu" | "lxc" | "openvz") {
        return None;
    }
    let (vmid, rest) = rest.split_once('-')?;
    if !is_vmid(vmid) || rest.len() < 19 || !rest.is_char_boundary(19) {
        return None;
    }
    let (stamp, ext) = rest.split_at(19);
    let ext = ext.strip_prefix('.')?;
    let ext_ok = ext == "tgz"
        || ["tar", "vma"].iter().any(|base| {
            ext == *base
                || ext
                    .strip_prefix(base)
                    .and_then(|c| c.strip_prefix('.'))
                    .is_some_and(|c| matches!(c, "gz" | "lzo" | "zst" | "bz2"))
        });
    if !ext_ok {
        return None;
    }
    let b = stamp.as_bytes();
    if b[4] != b'_' || b[7] != b'_' || b[10] != b'-' || b[13] != b'_' || b[16] != b'_' {
        return None;
    }
    let time =
        LocalDateTime::new(&stamp[0..4], &stamp[5..7], &stamp[8..10], &stamp[11..13], &stamp[14..16], &stamp[17..19])?;
    Some(Archive { kind: kind.to_string(), vmid: vmid.to_string(), time })
}

/// A `vzdump:` job of jobs.cfg: what it selects and whether it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupJob {
    pub id: String,
    /// `enabled` (default 1; PVE's booleans are exactly `0` or `1`, anything else is dropped:
    /// the default then).
    pub enabled: bool,
    pub schedule: String,
    pub storage: Option<String>,
    /// The node the job is restricted to (`node`).
    pub node: Option<String>,
    pub selection: Selection,
}

/// Which guests a job backs up, in PVE's precedence: `pool` over `vmid` over `all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The pool's direct members.
    Pool(String),
    Vmids(Vec<String>),
    /// Every guest but the excluded.
    All {
        exclude: HashSet<String>,
    },
    /// None of them: the job backs up nothing.
    Nothing,
}

impl BackupJob {
    /// Whether the job backs up guest `vmid`, which is on `guest_node` in pool `pool` (PVE's
    /// `get_included_guests`: the `node` restriction applies to every selection).
    pub fn includes(&self, vmid: &str, guest_node: &str, pool: Option<&str>) -> bool {
        if self.node.as_deref().is_some_and(|n| n != guest_node) {
            return false;
        }
        match &self.selection {
            Selection::Pool(p) => pool == Some(p.as_str()),
            Selection::Vmids(ids) => ids.iter().any(|i| i == vmid),
            Selection::All { exclude } => !exclude.contains(vmid),
            Selection::Nothing => false,
        }
    }
}

/// vmids of a pve-vmid-list as PVE's `check_vmids` takes them (leading zeros dropped; what is
/// not a number is left out: PVE refuses the job's run then).
fn vmid_list(v: &str) -> Vec<String> {
    split_list(v)
        .into_iter()
        .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|w| w.parse::<u64>().ok())
        .filter(|n| *n != 0)
        .map(|n| n.to_string())
        .collect()
}

/// The `vzdump:` jobs of jobs.cfg (other job types are skipped), and how many lines PVE's
/// section config reader would ignore.
pub fn parse_jobs_cfg(text: &str) -> (Vec<BackupJob>, usize) {
    let mut bad = 0;
    // (type, id, properties) of each section, in order; a repeated id replaces the earlier one.
    let mut sections: Vec<(String, String, HashMap<String, String>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim_start().starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            current = None;
            continue;
        }
        match current {
            Some(i) => match parse_property(line) {
                Some((k, v)) => {
                    sections[i].2.entry(k.to_string()).or_insert_with(|| v.unwrap_or("1").to_string());
                }
                None => bad += 1,
            },
            None => match parse_header(line) {
                Some((kind, id)) => {
                    let key = format!("{kind}:{id}");
                    if let Some(old) = at.insert(key, sections.len()) {
                        sections[old].0.clear();
                    }
                    sections.push((kind, id.to_string(), HashMap::new()));
                    current = Some(sections.len() - 1);
                }
                None => bad += 1,
            },
        }
    }
    let jobs = sections
        .into_iter()
        .filter(|(kind, _, _)| kind == "vzdump")
        .map(|(_, id, p)| {
            let get = |k: &str| p.get(k).map(String::as_str).filter(|v| !v.is_empty());
            let flag = |k: &str| match get(k) {
                Some("1") => Some(true),
                Some("0") => Some(false),
                _ => None,
            };
            let selection = if let Some(pool) = get("pool") {
                Selection::Pool(pool.to_string())
            } else if let Some(ids) = get("vmid") {
                Selection::Vmids(vmid_list(ids))
            } else if flag("all") == Some(true) {
                Selection::All { exclude: get("exclude").map(vmid_list).unwrap_or_default().into_iter().collect() }
            } else {
                Selection::Nothing
            };
            BackupJob {
                enabled: flag("enabled").unwrap_or(true),
                schedule: get("schedule").unwrap_or_default().to_string(),
                storage: get("storage").map(str::to_string),
                node: get("node").map(str::to_string),
                selection,
                id,
            }
        })
        .collect();
    (jobs, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/hosts/pve-backup/");

    fn read(rel: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURE}{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn at(s: &str) -> Option<LocalDateTime> {
        LocalDateTime::parse_log(s)
    }

    #[test]
    fn a_job_with_a_failed_and_a_finished_guest() {
        let runs = parse_task_log(&read("var/log/pve/tasks/0/UPID:pve1:0002AD10:00A71E02:69A38F90:vzdump::root@pam:"));
        assert_eq!(runs.len(), 2, "{runs:?}");
        let (r101, r102) = (&runs[0], &runs[1]);
        assert_eq!((r101.vmid.as_str(), r101.kind.as_deref(), r101.ok), ("101", Some("qemu"), Some(false)));
        // The earlier `ERROR: job failed …` line is not the guest's result; its own is.
        assert_eq!(r101.error.as_deref(), Some("job failed with err -5 - Input/output error"));
        assert_eq!((r101.started, r101.ended), (at("2026-03-01 01:00:02"), at("2026-03-01 01:00:09")));
        assert_eq!(r101.duration, None);
        assert_eq!((r102.ok, r102.duration, r102.started), (Some(true), Some(41), at("2026-03-01 01:00:09")));
        assert_eq!(r102.ended, at("2026-03-01 01:00:50"));
    }

    #[test]
    fn warnings_belong_to_their_guest_and_a_running_task_has_no_verdict() {
        let runs = parse_task_log(&read("var/log/pve/tasks/0/UPID:pve1:0002AB3D:00A6C3D1:69A35750:vzdump::root@pam:"));
        let v: Vec<_> = runs.iter().map(|r| (r.vmid.as_str(), r.ok, r.duration, r.warnings)).collect();
        assert_eq!(
            v,
            [("100", Some(true), Some(68), 0), ("101", Some(true), Some(150), 0), ("102", Some(true), Some(35), 1)]
        );
        let running =
            parse_task_log(&read("var/log/pve/tasks/0/UPID:pve1:0002BD7B:00AE0000:69A55FA0:vzdump:100:alice@pve:"));
        assert_eq!(running.len(), 1);
        assert_eq!((running[0].vmid.as_str(), running[0].ok), ("100", None));
    }

    #[test]
    fn a_guest_that_fails_before_it_starts() {
        let log = "INFO: starting new backup job: vzdump 100 999 --storage local\n\
                   ERROR: Backup of VM 999 failed - unable to find VM '999'\n\
                   INFO: Failed at 2026-03-01 01:00:00\n\
                   INFO: Starting Backup of VM 100 (qemu)\n\
                   INFO: Backup started at 2026-03-01 01:00:00\n\
                   INFO: Finished Backup of VM 100 (100:00:05)\n\
                   INFO: Backup job finished with errors\n\
                   TASK ERROR: job errors\n";
        let runs = parse_task_log(log);
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].vmid.as_str(), runs[0].ok, runs[0].kind.as_deref()), ("999", Some(false), None));
        assert_eq!(runs[0].ended, at("2026-03-01 01:00:00"));
        assert_eq!((runs[1].ok, runs[1].duration), (Some(true), Some(360_005)));
    }

    #[test]
    fn hostile_logs() {
        for log in [
            "INFO: Starting Backup of VM 100 (qemu\nINFO: Finished Backup of VM 100 (1:2:3)\n",
            "INFO: Finished Backup of VM 99 (00:00:01)\nERROR: Backup of VM abc failed - x\n",
            "INFO: Backup started at 2026-13-01 00:00:00\nINFO: Failed at \u{e9}\nWARN: \n",
            "INFO: Finished Backup of VM 100 (99999999999999999999:00:00)\n",
        ] {
            let runs = parse_task_log(log);
            assert!(runs.iter().all(|r| r.duration.is_none() || r.duration.is_some_and(|d| d < u64::MAX)), "{runs:?}");
        }
        let long = format!("ERROR: Backup of VM 100 failed - {}\n", "é".repeat(500));
        assert!(parse_task_log(&long)[0].error.as_ref().unwrap().len() <= MAX_ERROR);
    }

    #[test]
    fn times() {
        use crate::sources::pve::calendar::{SystemLocal, Utc};
        let t = at("2026-03-02 02:30:02").unwrap();
        assert_eq!(t.to_unix(&Utc), Some(1772418602));
        assert_eq!(at("1970-01-01 00:00:00").unwrap().to_unix(&Utc), Some(0));
        assert_eq!(at("2000-02-29 12:00:00").unwrap().to_unix(&Utc), Some(951825600));
        // This machine (and CI) run in UTC: local is UTC here.
        let utc = std::fs::read_link("/etc/localtime").map_or(true, |l| l.ends_with("UTC"));
        if std::env::var_os("TZ").is_none() && utc {
            assert_eq!(t.to_unix(&SystemLocal), Some(1772418602));
        }
    }

    #[test]
    fn archive_names() {
        let a = parse_archive_name("vzdump-qemu-100-2026_03_02-02_30_02.vma.zst").unwrap();
        assert_eq!((a.kind.as_str(), a.vmid.as_str()), ("qemu", "100"));
        assert_eq!(a.time, at("2026-03-02 02:30:02").unwrap());
        for ok in [
            "vzdump-lxc-102-2026_02_28-21_03_40.tar.zst",
            "vzdump-qemu-300-2025_12_24-03_00_00.vma.gz",
            "vzdump-openvz-110-2015_06_01-12_00_00.tgz",
            "vzdump-qemu-100-2026_02_21-21_00_02.vma",
            "vzdump-lxc-999999999-2026_02_21-21_00_02.tar.bz2",
        ] {
            assert!(parse_archive_name(ok).is_some(), "{ok}");
        }
        for no in [
            "vzdump-qemu-101-manual-copy.vma",
            "vzdump-lxc-102-2026_02_28-21_03_40.tar.zst.bak",
            "vzdump-qemu-100-2026_03_02-10_00_01.vma.dat",
            "vzdump-qemu-100-2026_03_02-10_00_01.log",
            "vzdump-qemu-100-2026_02_28-21_00_02.vma.zst.notes",
            "vzdump-qemu-100-2026_03_02-10_00_01.tmp",
            "vzdump-qemu-99-2026_03_02-10_00_01.vma",
            "vzdump-pbs-100-2026_03_02-10_00_01.vma",
            "vzdump-qemu-100-2026_13_02-10_00_01.vma",
            "vzdump-qemu-100-2026_03_02-10_00_0é.vma",
            "vzdump-qemu-100-2026-03-02-10_00_01.vma",
            "README.txt",
        ] {
            assert_eq!(parse_archive_name(no), None, "{no}");
        }
    }

    #[test]
    fn jobs_of_the_fixture() {
        let (jobs, bad) = parse_jobs_cfg(&read("etc/pve/jobs.cfg"));
        assert_eq!(bad, 0);
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "backup-3f9c2a1e-7b4d",
                "backup-5e8d1c7a-2f60",
                "backup-9a7b3c2d-1e4f",
                "backup-0c1d2e3f-4a5b",
                "backup-7f6e5d4c-3b2a"
            ]
        );
        let pools: HashMap<&str, &str> =
            [("100", "production"), ("105", "production"), ("200", "production"), ("103", "lab"), ("104", "lab")]
                .into();
        // Covered by an enabled job (the rule), for the guests of pve1.
        let covered =
            |vmid: &str| jobs.iter().filter(|j| j.enabled).any(|j| j.includes(vmid, "pve1", pools.get(vmid).copied()));
        let got: Vec<(&str, bool)> =
            ["100", "101", "102", "103", "104", "105"].iter().map(|v| (*v, covered(v))).collect();
        assert_eq!(got, [("100", true), ("101", true), ("102", true), ("103", false), ("104", false), ("105", true)]);
        // PVE's own rule counts the disabled job too: 103 is covered then.
        assert!(jobs.iter().any(|j| j.includes("103", "pve1", Some("lab"))));
        assert!(!jobs[4].includes("104", "pve1", Some("lab")), "restricted to pve2");
        assert!(jobs[4].includes("104", "pve2", Some("lab")));
    }

    #[test]
    fn odd_jobs() {
        let (jobs, bad) = parse_jobs_cfg(
            "vzdump: a\n\tschedule daily\n\tenabled false\n\tvmid 0100;0,x 7\n\tall 1\nnot a line\n\nvzdump: b\n\tall\n\texclude 100\n\nvzdump: c\n\tschedule x\n\nvzdump: a\n\tpool p\n",
        );
        assert_eq!(bad, 1);
        assert_eq!(jobs.len(), 3);
        let b = &jobs[0];
        // `all` without value is 1 (a flag).
        assert!(b.includes("101", "n", None) && !b.includes("100", "n", None));
        assert_eq!(jobs[1].selection, Selection::Nothing);
        // The repeated id replaces the first, in its place.
        assert_eq!((jobs[2].id.as_str(), jobs[2].enabled), ("a", true));
        assert_eq!(jobs[2].selection, Selection::Pool("p".into()));
        let (jobs, _) = parse_jobs_cfg("vzdump: a\n\tenabled false\n\tvmid 0100;0,x 7\n");
        assert!(jobs[0].enabled, "an invalid boolean is dropped: enabled by default");
        assert_eq!(jobs[0].selection, Selection::Vmids(vec!["100".into(), "7".into()]));
    }
}

//! PVE's task list of this node: `/var/log/pve/tasks/index` (finished tasks; `index.1` is the
//! older half once it passed 50 kB), `/var/log/pve/tasks/active` (running tasks and the newest
//! finished ones) and each task's log `/var/log/pve/tasks/<X>/<UPID>`. Formats as pve-common
//! writes them (PVE/UPID.pm, PVE/RESTEnvironment.pm `active_workers`, PVE/INotify.pm
//! `read_active_workers`); docs/metrics.md, section Backups, quotes them.
//!
//! Parsing never fails: a line that is not a task is skipped and counted, as PVE's own readers
//! skip it.

/// A task id: `UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:` (hex numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upid {
    pub node: String,
    pub pid: u32,
    pub pstart: u64,
    /// When the task started (seconds since the epoch).
    pub starttime: i64,
    /// The worker type (`vzdump`, `qmstart`, ...).
    pub kind: String,
    /// What the task is about: a vmid for most guest tasks; empty for a backup of several guests.
    pub id: String,
    pub user: String,
}

/// pve-common's decoder: `^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):
/// ([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):([^:\s/]+):([^:\s/]*):([^:\s/]+):$` (pstart may have 9
/// digits after 497 days of uptime). No `/` anywhere: the UPID is also a file name.
pub fn parse_upid(s: &str) -> Option<Upid> {
    let rest = s.strip_prefix("UPID:")?.strip_suffix(':')?;
    let parts: Vec<&str> = rest.split(':').collect();
    let [node, pid, pstart, start, kind, id, user] = parts[..] else { return None };
    let hex = |t: &str, lens: &[usize]| {
        (lens.contains(&t.len()) && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(t, 16).ok())?
    };
    let word = |t: &str| !t.bytes().any(|b| b.is_ascii_whitespace() || b == b'/');
    let node_ok = !node.is_empty()
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !node.starts_with('-')
        && !node.ends_with('-');
    if !node_ok || kind.is_empty() || user.is_empty() || !word(kind) || !word(id) || !word(user) {
        return None;
    }
    Some(Upid {
        node: node.to_string(),
        pid: u32::try_from(hex(pid, &[8])?).ok()?,
        pstart: hex(pstart, &[8, 9])?,
        starttime: i64::try_from(hex(start, &[8])?).ok()?,
        kind: kind.to_string(),
        id: id.to_string(),
        user: user.to_string(),
    })
}

/// Where a task's log is, below the host root: `var/log/pve/tasks/<last character of the start
/// time field>/<UPID>` (pve-common: `substr($5, 7, 8)`).
pub fn log_path(upid: &str) -> Option<String> {
    parse_upid(upid)?;
    let start = upid.split(':').nth(4)?;
    let dir = start.chars().last()?;
    Some(format!("var/log/pve/tasks/{dir}/{upid}"))
}

/// A task of the index or of `active`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub upid: String,
    pub info: Upid,
    /// When it ended; None while it runs.
    pub end: Option<i64>,
    /// `OK`, `WARNINGS: <n>`, `unexpected status` or the error text; None while it runs.
    pub status: Option<String>,
}

/// How PVE classes a task status (pve-common `normalize_status_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    Ok,
    Warning,
    /// `unexpected status` or nothing: the task's end is unknown (killed, log lost).
    Unknown,
    Error,
}

pub fn status_kind(status: &str) -> StatusKind {
    if status == "OK" {
        StatusKind::Ok
    } else if status.strip_prefix("WARNINGS: ").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        StatusKind::Warning
    } else if status.is_empty() || status == "unexpected status" {
        StatusKind::Unknown
    } else {
        StatusKind::Error
    }
}

/// One `index` line: `UPID ENDTIME STATUS` (pve-manager's reader: `^(\S+)(\s([0-9A-Za-z]{8})(\s(\S.*))?)?$`).
fn parse_index_line(line: &str) -> Option<Task> {
    let (upid, rest) = line.split_once(' ').unwrap_or((line, ""));
    let info = parse_upid(upid)?;
    let (end, status) = match rest {
        "" => (None, None),
        r => {
            let (end, status) = r.split_once(' ').unwrap_or((r, ""));
            if end.len() != 8 {
                return None;
            }
            let end = i64::from_str_radix(end, 16).ok()?;
            (Some(end), (!status.trim().is_empty()).then(|| status.trim_end().to_string()))
        }
    };
    Some(Task { upid: upid.to_string(), info, end, status })
}

/// The index (finished tasks, oldest first): the tasks and how many lines were not tasks.
pub fn parse_index(text: &str) -> (Vec<Task>, usize) {
    let mut bad = 0;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_index_line(line) {
            Some(t) if t.end.is_some() => out.push(t),
            _ => bad += 1,
        }
    }
    (out, bad)
}

/// `active`: `UPID SAVED [ENDTIME [STATUS]]` (INotify.pm: `^(\S+)\s(0|1)(\s([0-9A-Za-z]{8})(\s(\s*\S.*))?)?$`).
/// Returns the tasks with whether each was already written to the index (`saved` 1), and how
/// many lines were not tasks. A task without an end time runs.
pub fn parse_active(text: &str) -> (Vec<(Task, bool)>, usize) {
    let mut bad = 0;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.splitn(3, ' ');
        let (Some(upid), Some(saved)) = (it.next(), it.next()) else {
            bad += 1;
            continue;
        };
        let saved = match saved {
            "0" => false,
            "1" => true,
            _ => {
                bad += 1;
                continue;
            }
        };
        let rest = it.next().unwrap_or("");
        let joined = if rest.is_empty() { upid.to_string() } else { format!("{upid} {rest}") };
        match parse_index_line(&joined) {
            Some(t) => out.push((t, saved)),
            None => bad += 1,
        }
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upids_as_pve_writes_them() {
        let u = parse_upid("UPID:pve1:0002B0B6:00A8F1A0:69A411A4:vzdump:103:alice@pve:").unwrap();
        assert_eq!((u.node.as_str(), u.pid, u.starttime), ("pve1", 0x2b0b6, 0x69a411a4));
        assert_eq!((u.kind.as_str(), u.id.as_str(), u.user.as_str()), ("vzdump", "103", "alice@pve"));
        // A backup of several guests names none; a token user; a 9-digit pstart.
        assert_eq!(parse_upid("UPID:pve1:0002B9D5:00AC3300:69A4F628:vzdump::root@pam:").unwrap().id, "");
        assert!(parse_upid("UPID:pve1:0002B9D5:00AC3300:69A4F628:vzdump::root@pam!backup:").is_some());
        assert_eq!(
            parse_upid("UPID:pve1:0002AEE3:1A0B2C3D4:69A41078:qmstart:103:alice@pve:").unwrap().pstart,
            0x1a0b2c3d4
        );
        for bad in [
            "UPID:pve1:0002B9D5:00AC3300:69A4F628:vzdump::root@pam", // no trailing colon
            "UPID:pve1:0002B9D:00AC3300:69A4F628:vzdump::root@pam:", // short pid
            "UPID:pve1:XYZ0B9D5:00AC3300:69A4F628:vzdump::root@pam:", // not hex
            "UPID:-pve:0002B9D5:00AC3300:69A4F628:vzdump::root@pam:",
            "UPID:pve1:0002B9D5:00AC3300:69A4F628:vzdump:../x:root@pam:", // a path
            "UPID:pve1:0002B9D5:00AC3300:69A4F628::100:root@pam:",
            "UPID:pve1:0002B9D5:00AC3300:69A4F628:vzdump:100::",
            "UPID:pvé:0002B9D5:00AC3300:69A4F628:vzdump:100:root@pam:",
            "",
            "UPID:",
        ] {
            assert_eq!(parse_upid(bad), None, "{bad}");
        }
        assert_eq!(
            log_path("UPID:pve1:0002B0B6:00A8F1A0:69A411A4:vzdump:103:alice@pve:").as_deref(),
            Some("var/log/pve/tasks/4/UPID:pve1:0002B0B6:00A8F1A0:69A411A4:vzdump:103:alice@pve:")
        );
        assert_eq!(log_path("UPID:../../etc"), None);
    }

    #[test]
    fn index_and_active_of_the_fixture() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/hosts/pve-backup/var/log/pve/tasks/");
        let read = |f: &str| std::fs::read_to_string(format!("{root}{f}")).unwrap();
        let (tasks, bad) = parse_index(&read("index"));
        assert_eq!(bad, 4, "the malformed lines of the fixture");
        let t3 = tasks.iter().find(|t| t.upid.contains(":69A38F90:")).unwrap();
        assert_eq!(
            (t3.info.starttime, t3.end, t3.status.as_deref()),
            (1772326800, Some(1772326851), Some("job errors"))
        );
        let t2 = tasks.iter().find(|t| t.upid.contains(":69A35750:")).unwrap();
        assert_eq!(t2.status.as_deref(), Some("WARNINGS: 1"));
        let (older, bad) = parse_index(&read("index.1"));
        assert_eq!((older.len(), bad), (2, 0));
        let (active, bad) = parse_active(&read("active"));
        assert_eq!(bad, 0);
        let running: Vec<_> = active.iter().filter(|(t, _)| t.end.is_none()).collect();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].0.info.id, "100");
        assert!(!running[0].1);
        assert!(active.iter().filter(|(t, _)| t.end.is_some()).all(|(_, saved)| *saved));
    }

    #[test]
    fn statuses() {
        assert_eq!(status_kind("OK"), StatusKind::Ok);
        assert_eq!(status_kind("WARNINGS: 3"), StatusKind::Warning);
        assert_eq!(status_kind("WARNINGS: x"), StatusKind::Error);
        assert_eq!(status_kind("unexpected status"), StatusKind::Unknown);
        assert_eq!(status_kind("job errors"), StatusKind::Error);
    }

    #[test]
    fn odd_lines() {
        let (t, bad) = parse_index("UPID:pve1:0002B9D5:00AC3300:69A4F628:vzdump::root@pam: 69A4F66\nx y z\n\u{0}\n");
        assert_eq!((t.len(), bad), (0, 3));
        let (t, bad) = parse_active("UPID:pve1:0002B9D5:00AC3300:69A4F628:vzdump::root@pam: 2\nUPID:a 1\n1\n");
        assert_eq!((t.len(), bad), (0, 3));
        let (t, _) = parse_index("UPID:pve1:0002B9D5:00AC3300:69A4F628:vzdump::root@pam: 69A4F66C \n");
        assert_eq!(t[0].status, None);
    }
}

//! A PVE VM's QEMU guest agent (`/var/run/qemu-server/<vmid>.qga`): the guest's file systems
//! (`guest-get-fsinfo`).
//!
//! The socket is PVE's too: backups freeze the guest's file systems through it, and QEMU serves
//! one client at a time. So one short exchange per query, within one time limit, and the
//! connection is closed right after:
//!
//! 1. `0xFF` and `guest-sync-delimited` with a fresh id. The agent answers `0xFF` and the id;
//!    whatever comes before (a late answer to an earlier client's request, the parse error the
//!    `0xFF` itself may cause) is skipped, so a stale answer is never read as ours.
//! 2. `guest-fsfreeze-status`: a frozen guest is not asked more (its agent refuses most
//!    commands while frozen, and a backup is under way).
//! 3. `guest-get-fsinfo`.
//!
//! What the agent says comes from inside the guest: untrusted. Answers are capped in size,
//! file systems in number, and their texts in length.

use std::{
    collections::HashSet,
    io::{self, Read, Write},
    os::fd::AsFd,
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::sources::{
    error::ParseError,
    qemu::{
        qmp,
        wait::{Wait, wait_fd},
    },
};

/// Largest answer read from an agent (all of one exchange): a guest with hundreds of mounts
/// answers tens of KiB.
pub const MAX_ANSWER: usize = 4 << 20;
/// File systems kept per guest (the rest are dropped: a guest must not blow up the scrape).
pub const MAX_FILESYSTEMS: usize = 128;
/// Longest text kept from the guest (mount point, device name, type, serial), in bytes.
pub const MAX_TEXT: usize = 256;

/// One file system of the guest, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFs {
    /// The guest's device name (`vda1`, `dm-0`; on Windows a volume GUID path).
    pub name: String,
    pub mountpoint: String,
    pub fstype: String,
    /// Size as an unprivileged user sees it (`total-bytes`: used + available).
    pub total_bytes: Option<u64>,
    pub used_bytes: Option<u64>,
    /// Serial numbers of the disks under it (PVE's `serial=` of a drive, where set).
    pub serials: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    Thawed,
    Frozen,
    /// The agent does not tell (an error answer: no such command in this agent).
    Unknown,
}

/// What one exchange told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub freeze: Freeze,
    /// None: not asked (the guest is frozen).
    pub filesystems: Option<Vec<GuestFs>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The VM has no agent socket (its agent was switched on after it started).
    #[error("no agent socket")]
    NoSocket,
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("{what}: no answer within {limit:?}")]
    Timeout { what: &'static str, limit: Duration },
    #[error("{what}: the agent closed the connection")]
    Closed { what: &'static str },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what}: answer longer than {MAX_ANSWER} bytes")]
    TooLong { what: &'static str },
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The agent answered an error.
    #[error("{command}: {class}: {desc}")]
    Command { command: &'static str, class: String, desc: String },
}

const SYNC: &str = "guest-sync-delimited";
const FREEZE_STATUS: &str = "guest-fsfreeze-status";
const FSINFO: &str = "guest-get-fsinfo";

/// Ask the agent at `path` for the guest's file systems, all within `limit`. `sync_id` must
/// differ between exchanges (it tells our answer from stale ones).
pub fn query(path: &Path, limit: Duration, sync_id: u64) -> Result<Answer, AgentError> {
    let deadline = Instant::now() + limit;
    let stream = qmp::connect(path, deadline, limit).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => AgentError::NoSocket,
        io::ErrorKind::TimedOut => AgentError::Timeout { what: "connect", limit },
        _ => AgentError::Connect(e),
    })?;
    let mut c = Conn { stream, buf: Vec::new(), read: 0, deadline, limit };
    let mut sync = vec![0xff];
    sync.extend_from_slice(format!("{{\"execute\":\"{SYNC}\",\"arguments\":{{\"id\":{sync_id}}}}}\n").as_bytes());
    c.write(&sync, SYNC)?;
    c.read_sync(sync_id)?;
    c.write(format!("{{\"execute\":\"{FREEZE_STATUS}\"}}\n").as_bytes(), FREEZE_STATUS)?;
    let freeze = match c.read_reply(FREEZE_STATUS)? {
        Ok(Value::String(s)) if s == "thawed" => Freeze::Thawed,
        Ok(Value::String(s)) if s == "frozen" => Freeze::Frozen,
        _ => Freeze::Unknown,
    };
    if freeze == Freeze::Frozen {
        return Ok(Answer { freeze, filesystems: None });
    }
    c.write(format!("{{\"execute\":\"{FSINFO}\"}}\n").as_bytes(), FSINFO)?;
    match c.read_reply(FSINFO)? {
        Ok(v) => Ok(Answer { freeze, filesystems: Some(parse_fsinfo(&v)?) }),
        Err((class, desc)) => Err(AgentError::Command { command: FSINFO, class, desc }),
    }
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Bytes read in all, for the size cap.
    read: usize,
    deadline: Instant,
    limit: Duration,
}

impl Conn {
    fn write(&mut self, mut data: &[u8], what: &'static str) -> Result<(), AgentError> {
        while !data.is_empty() {
            match self.stream.write(data) {
                Ok(0) => return Err(AgentError::Closed { what }),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(Wait::Write, what)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(AgentError::Closed { what }),
                Err(source) => return Err(AgentError::Io { what, source }),
            }
        }
        Ok(())
    }

    fn wait(&self, how: Wait, what: &'static str) -> Result<(), AgentError> {
        wait_fd(self.stream.as_fd(), how, self.deadline).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => AgentError::Timeout { what, limit: self.limit },
            _ => AgentError::Io { what, source: e },
        })
    }

    /// Read more into the buffer.
    fn fill(&mut self, what: &'static str) -> Result<(), AgentError> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(AgentError::Closed { what }),
                Ok(n) => {
                    self.read += n;
                    if self.read > MAX_ANSWER {
                        return Err(AgentError::TooLong { what });
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(Wait::Read, what)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(AgentError::Closed { what }),
                Err(source) => return Err(AgentError::Io { what, source }),
            }
        }
    }

    fn read_sync(&mut self, id: u64) -> Result<(), AgentError> {
        loop {
            match find_sync(&self.buf, id) {
                SyncScan::Found(end) => {
                    self.buf.drain(..end);
                    return Ok(());
                }
                SyncScan::More(skip) => {
                    self.buf.drain(..skip);
                }
            }
            // What is kept starts at a delimiter whose line has not ended: a sync answer is a
            // few bytes, so a longer one is no answer of ours (a flood is not searched again
            // and again).
            if self.buf.len() > 64 {
                self.buf.drain(..1);
                continue;
            }
            self.fill(SYNC)?;
        }
    }

    fn read_reply(&mut self, what: &'static str) -> Result<Result<Value, (String, String)>, AgentError> {
        // Bytes already searched for the end of the line: each byte is looked at once, so a
        // flood costs linear time up to the cap.
        let mut searched = 0;
        loop {
            while let Some(nl) = self.buf[searched..].iter().position(|b| *b == b'\n').map(|p| p + searched) {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                searched = 0;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(parse_reply(&line, what)?);
            }
            searched = self.buf.len();
            self.fill(what)?;
        }
    }
}

/// Where the answer to our `guest-sync-delimited` ends in what was read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncScan {
    /// The answer with our id ends before this offset: what follows answers our next commands.
    Found(usize),
    /// Not yet: the bytes before this offset can be dropped, read more.
    More(usize),
}

/// Find the agent's `0xFF` delimiter followed by `{"return": <id>}` with our id. JSON text
/// never holds a raw 0xFF byte, so each one starts an answer to some sync request: one with
/// another id (an earlier client's) is skipped like any other stale text.
pub fn find_sync(buf: &[u8], id: u64) -> SyncScan {
    let mut from = 0;
    while let Some(p) = buf[from..].iter().position(|b| *b == 0xff).map(|p| p + from) {
        let rest = &buf[p + 1..];
        match rest.iter().position(|b| *b == b'\n' || *b == 0xff) {
            None => return SyncScan::More(p),
            Some(e) if rest[e] == 0xff => from = p + 1 + e,
            Some(e) => {
                let ours = serde_json::from_slice::<Value>(&rest[..e])
                    .ok()
                    .is_some_and(|v| v.get("return").and_then(Value::as_u64) == Some(id));
                if ours {
                    return SyncScan::Found(p + 1 + e + 1);
                }
                from = p + 1 + e + 1;
            }
        }
    }
    SyncScan::More(buf.len())
}

/// One answer line: `{"return": ...}`, or `{"error": {"class", "desc"}}` as Err((class, desc)).
pub fn parse_reply(line: &[u8], what: &'static str) -> Result<Result<Value, (String, String)>, ParseError> {
    let bad = |msg: String| ParseError::new(format!("guest agent answer to {what}"), msg);
    let mut v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    if let Some(r) = v.get_mut("return") {
        return Ok(Ok(r.take()));
    }
    if let Some(e) = v.get("error") {
        let text = |k: &str| e.get(k).and_then(Value::as_str).map(|s| clip(s).to_string()).unwrap_or_default();
        return Ok(Err((text("class"), text("desc"))));
    }
    Err(bad("neither a return nor an error".to_string()))
}

/// `guest-get-fsinfo`'s return: the file systems, one per mount point (the first where a
/// guest repeats one), at most [`MAX_FILESYSTEMS`]. Entries without a mount point are skipped.
pub fn parse_fsinfo(v: &Value) -> Result<Vec<GuestFs>, ParseError> {
    let list = v.as_array().ok_or_else(|| ParseError::new("guest-get-fsinfo", "not a list"))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for fs in list {
        if out.len() == MAX_FILESYSTEMS {
            break;
        }
        let text = |k: &str| fs.get(k).and_then(Value::as_str).map(|s| clip(s).to_string());
        let Some(mountpoint) = text("mountpoint") else { continue };
        if !seen.insert(mountpoint.clone()) {
            continue;
        }
        let serials = fs
            .get("disk")
            .and_then(Value::as_array)
            .map(|disks| {
                let mut s: Vec<String> = disks
                    .iter()
                    .filter_map(|d| d.get("serial").and_then(Value::as_str))
                    .filter(|s| !s.is_empty())
                    .take(16)
                    .map(|s| clip(s).to_string())
                    .collect();
                s.sort();
                s.dedup();
                s
            })
            .unwrap_or_default();
        out.push(GuestFs {
            name: text("name").unwrap_or_default(),
            mountpoint,
            fstype: text("type").unwrap_or_default(),
            total_bytes: fs.get("total-bytes").and_then(Value::as_u64),
            used_bytes: fs.get("used-bytes").and_then(Value::as_u64),
            serials,
        });
    }
    Ok(out)
}

/// `s` cut to [`MAX_TEXT`] bytes.
fn clip(s: &str) -> &str {
    crate::sources::clip(s, MAX_TEXT)
}

/// Whether a PVE VM config's `agent` property switches the agent on: `[enabled=]<bool>` first,
/// options after (`agent: 1`, `agent: enabled=1,fstrim_cloned_disks=1`, `agent: 0,type=isa`).
pub fn agent_enabled(value: &str) -> bool {
    value.split(',').any(|part| {
        let v = part.trim().strip_prefix("enabled=").unwrap_or(part.trim());
        !v.contains('=') && pve_bool(v) == Some(true)
    })
}

/// A PVE boolean (PVE::JSONSchema: 1/0, yes/no, on/off, true/false, any case).
fn pve_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "on" | "true" => Some(true),
        "0" | "no" | "off" | "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sync_skips_stale_answers_and_other_ids() {
        let ours = b"{\"return\": 7}\n";
        // What qemu-ga 7.2 answers to `0xFF` + sync: a parse error for the stray byte first.
        let mut buf =
            b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n".to_vec();
        buf.push(0xff);
        buf.extend_from_slice(ours);
        buf.extend_from_slice(b"{\"return\": \"thawed\"}\n");
        let SyncScan::Found(end) = find_sync(&buf, 7) else { panic!("not found") };
        assert_eq!(&buf[end..], b"{\"return\": \"thawed\"}\n");

        // A stale sync answer (another id) and a stale fsinfo before ours.
        let mut buf = vec![0xff];
        buf.extend_from_slice(b"{\"return\": 6}\n{\"return\": [{\"mountpoint\": \"/stale\"}]}\n");
        buf.push(0xff);
        buf.extend_from_slice(ours);
        assert_eq!(find_sync(&buf, 7), SyncScan::Found(buf.len()));
        assert_eq!(find_sync(&buf, 8), SyncScan::More(buf.len()));

        // A delimiter whose line is cut short by another delimiter.
        let mut buf = vec![0xff, b'{', 0xff];
        buf.extend_from_slice(ours);
        assert_eq!(find_sync(&buf, 7), SyncScan::Found(buf.len()));

        // Incomplete: keep from the delimiter.
        let buf = [b'x', b'y', 0xff, b'{', b'"'];
        assert_eq!(find_sync(&buf, 7), SyncScan::More(2));
        assert_eq!(find_sync(b"no delimiter", 7), SyncScan::More(12));
        assert_eq!(find_sync(&[], 7), SyncScan::More(0));
    }

    #[test]
    fn replies() {
        assert_eq!(parse_reply(b"{\"return\": 3}\n", "x").unwrap(), Ok(json!(3)));
        assert_eq!(
            parse_reply(br#"{"error": {"class": "CommandNotFound", "desc": "no such command"}}"#, "x").unwrap(),
            Err(("CommandNotFound".to_string(), "no such command".to_string()))
        );
        assert!(parse_reply(b"{}", "x").is_err());
        assert!(parse_reply(b"\xff\xfe", "x").is_err());
        assert!(parse_reply(b"[1,2", "x").is_err());
    }

    /// Shaped as QEMU's qga-qapi-schema.json documents GuestFilesystemInfo, and as the real
    /// qemu-ga 7.2 of Debian 12 answered on this machine (tests/agent.rs asks a real one).
    #[test]
    fn fsinfo_of_linux_and_windows_guests() {
        let v = json!([
            {"name": "vda", "total-bytes": 97572749312u64, "mountpoint": "/",
             "disk": [{"bus-type": "virtio", "bus": 0, "unit": 0,
                       "pci-controller": {"bus": 0, "slot": 2, "domain": 0, "function": 0},
                       "dev": "/dev/vda", "target": 0}],
             "used-bytes": 62114426880u64, "type": "ext4"},
            {"name": "sda1", "mountpoint": "/boot/efi", "type": "vfat", "total-bytes": 535805952, "used-bytes": 6139904,
             "disk": [{"serial": "drive-scsi0", "bus-type": "scsi", "bus": 0, "unit": 0, "target": 0,
                       "pci-controller": {"bus": 0, "slot": 5, "domain": 0, "function": 0}},
                      {"serial": "drive-scsi0", "bus-type": "scsi", "bus": 0, "unit": 0, "target": 0,
                       "pci-controller": {"bus": 0, "slot": 5, "domain": 0, "function": 0}}]},
            {"name": "\\\\?\\Volume{4c1b02c1-d990-11dc-99ae-806e6f6e6963}\\", "mountpoint": "C:\\",
             "type": "NTFS", "total-bytes": 34340859904u64, "used-bytes": 21436944384u64, "disk": []},
            {"name": "sr0", "mountpoint": "/", "type": "iso9660"},
            {"name": "nomount", "type": "ext4"},
            {"name": "odd", "mountpoint": "/odd", "type": 5, "total-bytes": -1, "used-bytes": 1.5},
            "not an object",
        ]);
        let fs = parse_fsinfo(&v).unwrap();
        assert_eq!(fs.len(), 4);
        assert_eq!(
            fs[0],
            GuestFs {
                name: "vda".into(),
                mountpoint: "/".into(),
                fstype: "ext4".into(),
                total_bytes: Some(97572749312),
                used_bytes: Some(62114426880),
                serials: vec![],
            }
        );
        assert_eq!(fs[1].serials, vec!["drive-scsi0".to_string()]);
        assert_eq!(fs[2].mountpoint, "C:\\");
        assert_eq!(fs[2].fstype, "NTFS");
        assert_eq!((fs[3].fstype.as_str(), fs[3].total_bytes, fs[3].used_bytes), ("", None, None));
        assert!(parse_fsinfo(&json!({"mountpoint": "/"})).is_err());
    }

    #[test]
    fn a_hostile_guest_is_bounded() {
        let long = "é".repeat(1000);
        let many: Vec<Value> =
            (0..1000).map(|i| json!({"mountpoint": format!("/m{i}{long}"), "name": long, "type": long})).collect();
        let fs = parse_fsinfo(&Value::Array(many)).unwrap();
        assert_eq!(fs.len(), MAX_FILESYSTEMS);
        assert!(fs.iter().all(|f| f.mountpoint.len() <= MAX_TEXT && f.name.len() <= MAX_TEXT));
        assert!(fs[0].name.chars().all(|c| c == 'é'));
    }

    #[test]
    fn agent_property() {
        for on in ["1", "enabled=1", "1,fstrim_cloned_disks=1", "enabled=1,type=isa", "yes", "on", "True"] {
            assert!(agent_enabled(on), "{on}");
        }
        for off in ["0", "enabled=0", "0,type=virtio", "type=virtio", "", "2", "fstrim_cloned_disks=1"] {
            assert!(!agent_enabled(off), "{off}");
        }
    }

    #[test]
    fn a_missing_socket_is_no_socket() {
        let dir = tempfile::tempdir().unwrap();
        let r = query(&dir.path().join("1.qga"), Duration::from_secs(2), 1);
        assert!(matches!(r, Err(AgentError::NoSocket)), "{r:?}");
    }
}

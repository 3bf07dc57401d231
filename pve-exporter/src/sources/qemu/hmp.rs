//! QEMU human monitor (HMP) text: `info network`, `info block` and `info blockstats`, as `qm
//! monitor` prints them and QMP's `human-monitor-command` returns them. Pure functions from
//! text to types: garbage gives no NIC or drive, never an error or a panic.
//!
//! Formats (QEMU's `hmp_info_network`, `print_block_info`, `hmp_info_blockstats`; real
//! captures in fixtures/qemu/):
//!
//! ```text
//! net0: index=0,type=nic,model=virtio-net-pci,macaddr=bc:24:11:00:09:00
//!  \ net0: index=0,type=tap,ifname=tap900i0,script=no,downscript=no
//! drive-scsi0 (#block509): /var/lib/vz/images/900/vm-900-disk-0.qcow2 (qcow2)
//!     Attached to:      scsi0
//! drive-scsi2: json:{"driver": "throttle", "file": {...}} (throttle, read-only)
//! drive-ide2: [not inserted]
//! drive-scsi0: rd_bytes=65536 wr_bytes=12288 rd_operations=1 ...
//! ```

use std::collections::HashMap;

/// A guest NIC: the `netN` NIC line and its backend lines, merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nic {
    /// The backend's name (`-netdev id=`): `net0` on PVE, which names the NIC device alike;
    /// the NIC device's name when no backend line follows.
    pub netdev: String,
    /// Host interface of a tap backend (`tap100i0`); empty for other backends (user, ...).
    pub ifname: String,
    /// Queues: highest `index` + 1 (a multiqueue NIC prints one NIC and one backend line per queue).
    pub queues: u32,
    /// `type` of the last line: `tap` for a tap-backed NIC, `user`, ...
    pub kind: String,
    pub model: String,
    pub macaddr: String,
}

/// The NICs of `info network`, in the order QEMU lists them. QEMU prints each NIC device
/// (`type=nic`: model, MAC) at the left and its backend (`type=tap`: ifname) on the next line
/// after ` \ `, once per queue (`index`). PVE names device and backend alike (`net0`); plain
/// QEMU and libvirt need not (`net0x` over `hostnet0`, an unnamed `e1000.0` over `n1`), so a
/// backend line belongs to the NIC line above it. Lines are merged per NIC name, later keys
/// winning; other clients (`hub 0`, a hub's ports, backends without a NIC) are ignored unless
/// named `netN`.
pub fn parse_info_network(text: &str) -> Vec<Nic> {
    let mut nics: Vec<Nic> = Vec::new();
    // Where each NIC is (a map: linear in lines, whatever the text holds).
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    // The NIC the next backend line belongs to.
    let mut above: Option<usize> = None;
    for line in text.lines() {
        let line = line.trim();
        let (backend, line) = match line.strip_prefix('\\') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line),
        };
        let Some((name, rest)) = line.split_once(": ") else {
            above = None;
            continue;
        };
        let fields: Vec<(&str, &str)> = rest.trim().split(',').filter_map(|kv| kv.split_once('=')).collect();
        let is_nic = fields.iter().any(|&(k, v)| k == "type" && v == "nic");
        let i = match (backend, above) {
            (true, Some(i)) => {
                nics[i].netdev = name.to_string();
                i
            }
            _ if is_netn(name) || (is_nic && !backend) => *at.entry(name.to_string()).or_insert_with(|| {
                nics.push(Nic { netdev: name.to_string(), ..Nic::default() });
                nics.len() - 1
            }),
            _ => {
                above = None;
                continue;
            }
        };
        if !backend {
            above = Some(i);
        }
        let nic = &mut nics[i];
        for (k, v) in fields {
            match k {
                "index" => {
                    if let Ok(idx) = v.parse::<u32>() {
                        nic.queues = nic.queues.max(idx.saturating_add(1));
                    }
                }
                "type" => nic.kind = v.to_string(),
                "ifname" => nic.ifname = v.to_string(),
                "model" => nic.model = v.to_string(),
                "macaddr" => nic.macaddr = v.to_string(),
                _ => {}
            }
        }
        nic.queues = nic.queues.max(1);
    }
    nics
}

/// `net` followed by digits only.
fn is_netn(name: &str) -> bool {
    name.strip_prefix("net").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// One drive of `info block`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drive {
    /// As QEMU names it: `drive-scsi0` (the BlockBackend, or the top node of a `-blockdev`).
    pub name: String,
    /// The node name in parentheses of the PVE 8 form: `#block147`.
    pub node: String,
    /// The image: a file or device path, resolved from a `json:{...}` description. None for a
    /// drive without medium (`[not inserted]`).
    pub path: Option<String>,
    /// The driver QEMU prints after the path (`qcow2`, `raw`, `throttle`).
    pub driver: String,
    /// The image format: `driver`, or for a `json:` description the first format driver below
    /// the filters (`throttle`, `copy-on-read`).
    pub format: String,
    pub read_only: bool,
    pub encrypted: bool,
    pub attached_to: String,
    pub cache_mode: String,
    pub detect_zeroes: String,
    pub removable: String,
    pub backing_file: String,
    pub io_status: String,
    pub io_throttling: String,
}

impl Drive {
    /// The disk name of the labels: `scsi0` for `drive-scsi0`.
    pub fn disk_name(&self) -> &str {
        self.name.strip_prefix("drive-").unwrap_or(&self.name)
    }

    /// Digits of a `#blockN` node name, else empty.
    pub fn block_id(&self) -> &str {
        self.node.strip_prefix("#block").filter(|n| n.bytes().all(|b| b.is_ascii_digit())).unwrap_or("")
    }

    /// `Attached to` as a device id: the QOM path `/machine/peripheral/virtio0/virtio-backend`
    /// gives `virtio0`; a plain id (`scsi0`, `ide2`) stays.
    pub fn attached_device(&self) -> &str {
        let a = self.attached_to.as_str();
        if a.starts_with('/') { a.split('/').nth(3).unwrap_or(a) } else { a }
    }
}

/// Every drive of `info block` in QEMU's order, drives without medium included (their
/// position matters for [`assign_blockstats`]). A drive whose header cannot be parsed is left
/// out; a repeated name keeps its first drive.
pub fn parse_info_block(text: &str) -> Vec<Drive> {
    let mut drives: Vec<Drive> = Vec::new();
    // Names already taken (a set: linear in drives, whatever the text holds).
    let mut seen = std::collections::HashSet::new();
    let mut current: Option<Drive> = None;
    let mut skipping = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            if let Some(d) = current.take()
                && seen.insert(d.name.clone())
            {
                drives.push(d);
            }
            current = parse_header(line);
            skipping = current.is_none();
            continue;
        }
        if skipping {
            continue;
        }
        let Some(d) = current.as_mut() else { continue };
        let Some((key, value)) = line.trim().split_once(':') else { continue };
        let value = value.trim().to_string();
        match key.trim() {
            "Attached to" => d.attached_to = value,
            "Cache mode" => d.cache_mode = value,
            "Detect zeroes" => d.detect_zeroes = value,
            "Removable device" => d.removable = value,
            "Backing file" => d.backing_file = value.split(" (chain depth").next().unwrap_or("").to_string(),
            "I/O status" => d.io_status = value,
            "I/O throttling" => d.io_throttling = value,
            _ => {}
        }
    }
    if let Some(d) = current.take()
        && seen.insert(d.name.clone())
    {
        drives.push(d);
    }
    drives
}

/// `NAME[ (NODE)]: PATH (DRIVER[, read-only][, encrypted])` or `NAME[ (NODE)]: [not inserted]`.
fn parse_header(line: &str) -> Option<Drive> {
    let (head, rest) = line.split_once(": ")?;
    let (name, node) = match head.split_once(" (") {
        Some((n, node)) => (n, node.strip_suffix(')')?),
        None => (head, ""),
    };
    if name.is_empty() || name.contains(char::is_whitespace) || node.contains(char::is_whitespace) {
        return None;
    }
    let mut d = Drive { name: name.to_string(), node: node.to_string(), ..Drive::default() };
    let rest = rest.trim();
    if rest == "[not inserted]" {
        return Some(d);
    }
    let (path, flags) = rest.strip_suffix(')')?.rsplit_once(" (")?;
    let mut flags = flags.split(", ");
    let driver = flags.next().filter(|f| is_word(f))?;
    for f in flags {
        match f {
            "read-only" => d.read_only = true,
            "encrypted" => d.encrypted = true,
            "read-write" => {}
            _ => return None,
        }
    }
    d.driver = driver.to_string();
    if let Some(json) = path.strip_prefix("json:") {
        // A drive is never dropped for its description: it is attached to a guest device, and
        // its place in the list names the unnamed blockstats rows.
        let (file, format) = resolve_json_path(json).unwrap_or_else(|| (driver.to_string(), driver.to_string()));
        d.path = Some(file);
        d.format = format;
    } else {
        if path.is_empty() {
            return None;
        }
        d.path = Some(path.to_string());
        d.format = driver.to_string();
    }
    Some(d)
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Filter drivers that sit above the format driver and say nothing about the image.
const FILTER_DRIVERS: &[&str] = &["throttle", "copy-on-read", "compress", "preallocate"];

/// The image of a `json:{...}` node description (PVE 9's `-blockdev` drives) and the first
/// format driver below the filters. The image is the best identity the protocol node at the
/// bottom of the `file` chain gives: its file name (`file`, `host_device`, ...); `rbd:<pool>/
/// [<namespace>/]<image>` for librbd; `iscsi://<portal>/<target>/<lun>` (`iscsidirect`, ZFS
/// over iSCSI); `nbd://<host>:<port>/<export>` or `nbd+unix:///<export>?socket=<path>`;
/// `gluster://<host>/<volume>/<path>`; a `url`; else the driver's name (`null-co`). None only
/// when the JSON does not parse or has no node.
pub fn resolve_json_path(json: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let mut node = &v;
    let mut format = None;
    for _ in 0..16 {
        let driver = node.get("driver").and_then(|d| d.as_str()).unwrap_or("");
        let Some(child) = node.get("file").filter(|f| f.is_object()) else {
            let path = protocol_identity(node, driver);
            return Some((path, format.unwrap_or(driver).to_string()));
        };
        if format.is_none() && !FILTER_DRIVERS.contains(&driver) && !driver.is_empty() {
            format = Some(driver);
        }
        node = child;
    }
    None
}

/// The identity of a protocol node (see [`resolve_json_path`]); never credentials (iSCSI's
/// `user`, `password-secret` and the like are left out).
fn protocol_identity(node: &serde_json::Value, driver: &str) -> String {
    let s = |k: &str| node.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let n = |k: &str| match node.get(k) {
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::String(t)) => t.clone(),
        _ => String::new(),
    };
    let server = |v: &serde_json::Value| -> (String, String, String) {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        (s("type"), s("host"), if s("type") == "unix" { s("path") } else { s("port") })
    };
    if !s("filename").is_empty() {
        return s("filename").to_string();
    }
    match driver {
        "rbd" if !s("pool").is_empty() && !s("image").is_empty() => {
            let ns = if s("namespace").is_empty() { String::new() } else { format!("{}/", s("namespace")) };
            format!("rbd:{}/{ns}{}", s("pool"), s("image"))
        }
        "iscsi" if !s("portal").is_empty() => format!("iscsi://{}/{}/{}", s("portal"), s("target"), n("lun")),
        "nbd" => match node.get("server").map(server) {
            Some((t, _, path)) if t == "unix" => format!("nbd+unix:///{}?socket={path}", s("export")),
            Some((_, host, port)) if !host.is_empty() => format!("nbd://{host}:{port}/{}", s("export")),
            _ => driver.to_string(),
        },
        "gluster" => {
            let host = node.get("server").and_then(|v| v.get(0)).map(server).map(|(_, h, _)| h).unwrap_or_default();
            format!("gluster://{host}/{}/{}", s("volume"), s("path"))
        }
        _ if !s("url").is_empty() => s("url").to_string(),
        _ => driver.to_string(),
    }
}

/// What the path of a disk tells about its storage (the labels of `pve_kvm_disk_info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskKind {
    /// `zvol`, `rbd`, `lvm`, else the image format (`qcow2`, `raw`, ...).
    pub disk_type: String,
    pub vol_name: String,
    pub pool: String,
    /// rbd only, the same as `pool` (kept for pvemon's dashboards).
    pub pool_name: String,
    pub cluster_id: String,
    pub vg_name: String,
}

/// Classify a disk by its path (PVE's storage layouts):
/// - `/dev/zvol/<pool...>/<vol>`: zvol, pool `rpool/data`;
/// - `/dev/rbd-pve/<cluster_id>/<pool>/<vol>` (krbd) or `rbd:<pool>/<vol>[:...]` (librbd): rbd;
/// - `/dev/<vg>/vm-<id>-disk-<n>`: lvm;
/// - any other path: the format, with the file name up to its first `.` as the volume.
pub fn classify(path: &str, format: &str) -> DiskKind {
    let parts: Vec<&str> = path.split('/').collect();
    if let Some(rest) = path.strip_prefix("/dev/zvol/")
        && let Some((pool, vol)) = rest.rsplit_once('/')
    {
        return DiskKind { disk_type: "zvol".into(), vol_name: vol.into(), pool: pool.into(), ..DiskKind::default() };
    }
    if path.starts_with("/dev/rbd-pve/") && parts.len() >= 6 {
        let n = parts.len();
        let (cluster, pool, vol) = (parts[n - 3], parts[n - 2], parts[n - 1]);
        return DiskKind {
            disk_type: "rbd".into(),
            vol_name: vol.into(),
            pool: pool.into(),
            pool_name: pool.into(),
            cluster_id: cluster.into(),
            ..DiskKind::default()
        };
    }
    if let Some(spec) = path.strip_prefix("rbd:") {
        let spec = spec.split(':').next().unwrap_or("");
        if let Some((pool, vol)) = spec.split_once('/') {
            let vol = vol.rsplit('/').next().unwrap_or(vol);
            return DiskKind {
                disk_type: "rbd".into(),
                vol_name: vol.into(),
                pool: pool.into(),
                pool_name: pool.into(),
                ..DiskKind::default()
            };
        }
    }
    if parts.len() == 4 && parts[0].is_empty() && parts[1] == "dev" && !parts[2].is_empty() && is_pve_volume(parts[3]) {
        return DiskKind {
            disk_type: "lvm".into(),
            vol_name: parts[3].into(),
            vg_name: parts[2].into(),
            ..DiskKind::default()
        };
    }
    let file = parts.last().copied().unwrap_or("");
    DiskKind {
        disk_type: format.to_string(),
        vol_name: file.split('.').next().unwrap_or("").to_string(),
        ..DiskKind::default()
    }
}

/// `vm-<digits>-disk-<digits>` (PVE's volume names on LVM).
fn is_pve_volume(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("vm-").and_then(|r| r.split_once("-disk-")).is_some_and(|(id, n)| digits(id) && digits(n))
}

/// I/O counters of one drive (QMP `query-blockstats` / HMP `info blockstats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
    pub flush_operations: u64,
    pub rd_total_time_ns: u64,
    pub wr_total_time_ns: u64,
    pub flush_total_time_ns: u64,
}

impl BlockStats {
    /// Set a counter by its QEMU name; false for a name we do not export.
    pub fn set(&mut self, key: &str, v: u64) -> bool {
        let slot = match key {
            "rd_bytes" => &mut self.rd_bytes,
            "wr_bytes" => &mut self.wr_bytes,
            "rd_operations" => &mut self.rd_operations,
            "wr_operations" => &mut self.wr_operations,
            "flush_operations" => &mut self.flush_operations,
            "rd_total_time_ns" => &mut self.rd_total_time_ns,
            "wr_total_time_ns" => &mut self.wr_total_time_ns,
            "flush_total_time_ns" => &mut self.flush_total_time_ns,
            _ => return false,
        };
        *slot = v;
        true
    }
}

/// Rows of `info blockstats`: (drive name, counters) in QEMU's order. A `-blockdev` drive
/// (PVE 9) has no BlockBackend name and prints an empty one; [`assign_blockstats`] names it.
pub fn parse_info_blockstats(text: &str) -> Vec<(String, BlockStats)> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let Some((name, rest)) = line.split_once(':') else { continue };
        if name.contains(char::is_whitespace) {
            continue;
        }
        let mut st = BlockStats::default();
        let mut known = 0;
        for (k, v) in rest.split_whitespace().filter_map(|kv| kv.split_once('=')) {
            if let Ok(v) = v.parse::<u64>()
                && st.set(k, v)
            {
                known += 1;
            }
        }
        if known > 0 {
            rows.push((name.to_string(), st));
        }
    }
    rows
}

/// Name the rows of `info blockstats` after the drives of `info block`. Named rows keep their
/// name. Unnamed rows (`-blockdev` drives) are matched by position: QEMU lists both in the same
/// order (every BlockBackend with a name or a device). None when the two lists disagree (the
/// topology changed since `drives` was read): the caller reads `info block` again.
pub fn assign_blockstats(rows: Vec<(String, BlockStats)>, drives: &[Drive]) -> Option<Vec<(String, BlockStats)>> {
    if rows.iter().all(|(n, _)| !n.is_empty()) {
        return Some(rows);
    }
    // The unnamed rows are the drives without a BlockBackend name: `info block` prints those
    // by their node name alone (no `(#blockN)` after it), with a medium. Matched in order
    // among themselves, the named rows by name: a drive added or dropped elsewhere in the
    // list costs no other drive its row.
    let anonymous: Vec<&Drive> = drives.iter().filter(|d| d.node.is_empty() && d.path.is_some()).collect();
    let unnamed = rows.iter().filter(|(n, _)| n.is_empty()).count();
    let names: std::collections::HashSet<&str> = drives.iter().map(|d| d.name.as_str()).collect();
    if unnamed == anonymous.len() && rows.iter().all(|(n, _)| n.is_empty() || names.contains(n.as_str())) {
        let mut anon = anonymous.into_iter();
        return rows
            .into_iter()
            .map(|(n, st)| if n.is_empty() { anon.next().map(|d| (d.name.clone(), st)) } else { Some((n, st)) })
            .collect();
    }
    // Else the whole list, position by position (a QEMU that prints no node names).
    if rows.len() != drives.len() || rows.iter().zip(drives).any(|((n, _), d)| !n.is_empty() && *n != d.name) {
        return None;
    }
    Some(rows.into_iter().zip(drives).map(|((n, st), d)| (if n.is_empty() { d.name.clone() } else { n }, st)).collect())
}

/// Look up counters by drive name.
pub fn stats_by_name(rows: &[(String, BlockStats)]) -> HashMap<&str, &BlockStats> {
    let mut m = HashMap::new();
    for (n, s) in rows {
        m.entry(n.as_str()).or_insert(s);
    }
    m
}

/// QEMU's run state from `info status` (`hmp_info_status`): `VM status: running`,
/// `VM status: paused`, or `VM status: paused (<state>)` for every other state
/// (`prelaunch`, `inmigrate`, `postmigrate`, `suspended`, `io-error`, ...), as QMP's
/// `query-status` names them. A ` (single step mode)` suffix is not a state.
pub fn parse_info_status(text: &str) -> Option<String> {
    let rest = text.lines().find_map(|l| l.trim().strip_prefix("VM status: "))?;
    let rest = rest.replace(" (single step mode)", "");
    let (head, detail) = match rest.split_once(" (") {
        Some((h, d)) => (h, Some(d.strip_suffix(')')?)),
        None => (rest.as_str(), None),
    };
    match (head.trim(), detail) {
        ("running", None) => Some("running".into()),
        ("paused", None) => Some("paused".into()),
        (_, Some(d)) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') => Some(d.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_entries_parse_in_one_pass() {
        // 40 000 NICs and drives (each named twice): de-duplication by a walk over the list
        // took 8-46 s here in a debug build.
        let net: String = (0..40_000)
            .map(|i| {
                format!("net{i}: index=0,type=nic,model=virtio-net-pci\n \\ net{i}: index=0,type=tap,ifname=tap{i}\n")
            })
            .collect();
        let nics = parse_info_network(&net);
        assert_eq!(nics.len(), 40_000);
        assert_eq!((nics[39_999].netdev.as_str(), nics[39_999].ifname.as_str()), ("net39999", "tap39999"));
        let block: String = (0..80_000)
            .map(|i| format!("drive-scsi{} (#block{i}): /x.raw (raw)\n    Attached to:      scsi0\n", i % 40_000))
            .collect();
        let drives = parse_info_block(&block);
        assert_eq!(drives.len(), 40_000);
        assert_eq!(drives[0].node, "#block0", "a repeated name keeps its first drive");
    }

    #[test]
    fn info_status_states() {
        assert_eq!(parse_info_status("VM status: running\r\n").as_deref(), Some("running"));
        assert_eq!(parse_info_status("VM status: paused\n").as_deref(), Some("paused"));
        assert_eq!(parse_info_status("VM status: paused (prelaunch)\n").as_deref(), Some("prelaunch"));
        assert_eq!(parse_info_status("VM status: paused (postmigrate)").as_deref(), Some("postmigrate"));
        assert_eq!(parse_info_status("VM status: paused (io-error)").as_deref(), Some("io-error"));
        assert_eq!(parse_info_status("VM status: running (single step mode)").as_deref(), Some("running"));
        for bad in ["", "VM status:", "status: running", "VM status: paused (", "VM status: odd (X Y)"] {
            assert_eq!(parse_info_status(bad), None, "{bad:?}");
        }
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/qemu");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
    }

    fn nic(netdev: &str, ifname: &str, queues: u32, kind: &str, model: &str, mac: &str) -> Nic {
        Nic {
            netdev: netdev.into(),
            ifname: ifname.into(),
            queues,
            kind: kind.into(),
            model: model.into(),
            macaddr: mac.into(),
        }
    }

    #[test]
    fn network_of_real_qemu() {
        let nics = parse_info_network(&fixture("info-network.txt"));
        assert_eq!(
            nics,
            [
                nic("net0", "tap900i0", 1, "tap", "virtio-net-pci", "bc:24:11:00:09:00"),
                nic("net1", "tap900i1", 4, "tap", "virtio-net-pci", "bc:24:11:01:09:00"),
                nic("net2", "", 1, "user", "e1000", "bc:24:11:02:09:00"),
            ]
        );
    }

    #[test]
    fn network_reference_forms() {
        // A single line with tap and model (synthetic), and backend lines per queue.
        let nics = parse_info_network(
            "net0: index=0,type=tap,ifname=tap100i0,model=virtio-net-pci,macaddr=AA:BB:CC:DD:EE:FF\n \\ net0: index=1,type=tap,ifname=tap100i0\n \\ net0: index=2,type=tap,ifname=tap100i0\n \\ net0: index=3,type=tap,ifname=tap100i0\nnet1: index=0,type=tap,ifname=tap100i1,model=virtio-net-pci,macaddr=11:22:33:44:55:66\n",
        );
        assert_eq!(nics.iter().map(|n| (n.netdev.as_str(), n.queues)).collect::<Vec<_>>(), [("net0", 4), ("net1", 1)]);
        assert_eq!(nics[0].macaddr, "AA:BB:CC:DD:EE:FF");
        // Old PVE with a hub: only netN lines count.
        let nics = parse_info_network(
            "hub 0\r\n \\ virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=c2:8f:ba:90:44:78\r\nnet0: index=0,type=nic,model=e1000,macaddr=c6:76:bb:da:33:0c\r\n \\ net0: index=0,type=tap,ifname=tap129i0,script=/var/lib/qemu-server/pve-bridge,downscript=/etc/kvm/kvm-ifdown\r\n",
        );
        assert_eq!(nics, [nic("net0", "tap129i0", 1, "tap", "e1000", "c6:76:bb:da:33:0c")]);
        // The raw PTY capture of the Go tests, echo included.
        let nics = parse_info_network(
            "info network\r\nnet0: index=0,type=tap,ifname=tap100i0\r\nnet1: index=1,type=tap,ifname=tap100i1\r\n",
        );
        assert_eq!(
            nics.iter().map(|n| (n.ifname.as_str(), n.queues)).collect::<Vec<_>>(),
            [("tap100i0", 1), ("tap100i1", 2)]
        );
        let nics = parse_info_network("net0: index=0");
        assert_eq!(nics, [nic("net0", "", 1, "", "", "")]);
    }

    #[test]
    fn network_of_plain_qemu_whose_nics_are_not_named_net_n() {
        // Debian's QEMU 7.2 (recorded): a 2-queue tap NIC `net0x` over `hostnet0`, an e1000
        // without an id over `n1`, a `-nic` shorthand.
        let text = "rtl8139.0: index=0,type=nic,model=rtl8139,macaddr=52:54:00:00:00:03\r\n \\ #net092: index=0,type=user,net=10.0.2.0,restrict=off\r\nnet0x: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:00:00:01\r\n \\ hostnet0: index=0,type=tap,ifname=qtapmq,script=no,downscript=no\r\nnet0x: index=1,type=nic,\r\n \\ hostnet0: index=1,type=tap,ifname=qtapmq,script=no,downscript=no\r\ne1000.0: index=0,type=nic,model=e1000,macaddr=52:54:00:00:00:02\r\n \\ n1: index=0,type=user,net=10.0.2.0,restrict=off\r\n";
        assert_eq!(
            parse_info_network(text),
            [
                nic("#net092", "", 1, "user", "rtl8139", "52:54:00:00:00:03"),
                nic("hostnet0", "qtapmq", 2, "tap", "virtio-net-pci", "52:54:00:00:00:01"),
                nic("n1", "", 1, "user", "e1000", "52:54:00:00:00:02"),
            ]
        );
    }

    #[test]
    fn network_garbage() {
        assert!(parse_info_network("").is_empty());
        assert!(parse_info_network("this is garbage\nnotnet0: index=0,type=tap\nno-colon-here\n").is_empty());
        assert!(parse_info_network("net: index=0\nnetx: index=0\nnet0 index=0\n").is_empty());
        let n = parse_info_network("net0: index=99999999999999,=,,=x,index=,type\n");
        assert_eq!(n[0].queues, 1);
        let n = parse_info_network(&format!("net0: index={}\n", u32::MAX));
        assert_eq!(n[0].queues, u32::MAX);
    }

    #[test]
    fn block_of_real_qemu() {
        let drives = parse_info_block(&fixture("info-block.txt"));
        let names: Vec<&str> = drives.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "drive-scsi0",
                "drive-virtio0",
                "drive-scsi1",
                "drive-virtio1",
                "drive-ide2",
                "drive-ide0",
                "drive-scsi2",
                "drive-scsi3"
            ]
        );
        let d = &drives[0];
        assert_eq!((d.disk_name(), d.block_id(), d.node.as_str()), ("scsi0", "509", "#block509"));
        assert_eq!(d.path.as_deref(), Some("/tmp/pvecap/var/lib/vz/images/900/vm-900-disk-0.qcow2"));
        assert_eq!((d.driver.as_str(), d.format.as_str(), d.read_only), ("qcow2", "qcow2", false));
        assert_eq!(
            (d.attached_device(), d.cache_mode.as_str(), d.detect_zeroes.as_str()),
            ("scsi0", "writeback, direct", "unmap")
        );
        assert_eq!(d.backing_file, "/tmp/pvecap/var/lib/vz/images/900/base-900-disk-9.qcow2");
        let d = &drives[1];
        assert_eq!(
            (d.attached_to.as_str(), d.attached_device()),
            ("/machine/peripheral/virtio0/virtio-backend", "virtio0")
        );
        assert!(d.io_throttling.starts_with("bps=10485760 ") && d.io_throttling.ends_with("group=drive-virtio0"));
        assert_eq!(d.detect_zeroes, "on");
        let d = &drives[3];
        assert_eq!((d.path.as_deref(), d.read_only), (Some("/dev/zvol/rpool/data/vm-900-disk-4"), true));
        let d = &drives[4];
        assert_eq!(
            (d.path.as_deref(), d.attached_device(), d.removable.as_str()),
            (None, "ide2", "not locked, tray closed")
        );
        let d = &drives[5];
        assert_eq!((d.read_only, d.format.as_str()), (true, "raw"));
        // PVE 9 form: no node, json path, format below the throttle filter.
        let d = &drives[6];
        assert_eq!((d.block_id(), d.driver.as_str(), d.format.as_str()), ("", "throttle", "qcow2"));
        assert_eq!(d.path.as_deref(), Some("/tmp/pvecap/srv/vmdata/images/900/vm-900-disk-2.qcow2"));
        let d = &drives[7];
        assert_eq!(
            (d.path.as_deref(), d.format.as_str(), d.read_only),
            (Some("/dev/zvol/rpool/data/vm-900-disk-4"), "raw", true)
        );
    }

    #[test]
    fn block_reference_forms() {
        let one = |t: &str| {
            let d = parse_info_block(t);
            assert_eq!(d.len(), 1, "{t}");
            d.into_iter().next().unwrap()
        };
        let d = one(
            "drive-scsi0 (#block100): /mnt/storage/images/100/vm-100-disk-0.qcow2 (qcow2, read-write)\n    Attached to:      /machine/peripheral/virtioscsi0/virtio-backend\n    Cache mode:       writeback, direct\n    Detect zeroes:    on\n",
        );
        assert_eq!((d.block_id(), d.attached_device(), d.read_only), ("100", "virtioscsi0", false));
        let d = one("drive-scsi0 (#block100): /dev/zvol/rpool/data/vm-100-disk-0 (raw, read-only)\n");
        assert!(d.read_only);
        let d = one(
            "drive-scsi0: json:{\"driver\":\"raw\",\"file\":{\"driver\":\"host_device\",\"filename\":\"/dev/zvol/rpool/data/vm-100-disk-0\"}} (throttle, read-write)\n    Attached to:      /machine/peripheral/virtioscsi0/virtio-backend\n    Cache mode:       writeback, direct\n    Detect zeroes:    unmap\n",
        );
        assert_eq!(
            (d.path.as_deref(), d.format.as_str(), d.detect_zeroes.as_str()),
            (Some("/dev/zvol/rpool/data/vm-100-disk-0"), "raw", "unmap")
        );
        let d = one(
            "drive-scsi0 (#block1): json:{\"driver\":\"raw\",\"file\":{\"driver\":\"copy-on-read\",\"file\":{\"driver\":\"host_device\",\"filename\":\"/dev/rbd-pve/ceph/pool/vm-200-disk-0\"}}} (raw)\n",
        );
        assert_eq!(d.path.as_deref(), Some("/dev/rbd-pve/ceph/pool/vm-200-disk-0"));
        let d = one(
            "drive-scsi0 (#block1): json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"/tmp/test.img\"}} (raw)\n",
        );
        assert_eq!(d.path.as_deref(), Some("/tmp/test.img"));
        let d = one(
            "drive-virtio1: json:{\"driver\":\"throttle\",\"file\":{\"driver\":\"raw\",\"file\":{\"driver\":\"rbd\",\"pool\":\"pool1\",\"image\":\"vm-100-disk-1\"}}} (throttle)\n",
        );
        assert_eq!(d.path.as_deref(), Some("rbd:pool1/vm-100-disk-1"));
        // Protocol nodes without a file name: every drive is kept with the identity it has
        // (PVE 9's iscsidirect and ZFS over iSCSI, NBD, RBD namespaces, anything else).
        for (json, want) in [
            (
                r#"{"driver":"throttle","file":{"driver":"raw","file":{"driver":"iscsi","transport":"tcp","portal":"10.0.0.5:3260","target":"iqn.2003-01.org.linux-iscsi.san:disk1","lun":1,"user":"u","password-secret":"s"}}}"#,
                "iscsi://10.0.0.5:3260/iqn.2003-01.org.linux-iscsi.san:disk1/1",
            ),
            (
                r#"{"driver":"raw","file":{"driver":"nbd","server":{"type":"inet","host":"10.0.0.9","port":"10809"},"export":"vm-100-disk-0"}}"#,
                "nbd://10.0.0.9:10809/vm-100-disk-0",
            ),
            (
                r#"{"driver":"raw","file":{"driver":"nbd","server":{"type":"unix","path":"/run/qemu-server/100_nbd.migrate"},"export":"drive-scsi0"}}"#,
                "nbd+unix:///drive-scsi0?socket=/run/qemu-server/100_nbd.migrate",
            ),
            (
                r#"{"driver":"raw","file":{"driver":"rbd","pool":"p","namespace":"ns","image":"vm-1-disk-0"}}"#,
                "rbd:p/ns/vm-1-disk-0",
            ),
            (
                r#"{"driver":"qcow2","file":{"driver":"gluster","volume":"gv0","path":"images/100/vm-100-disk-0.qcow2","server":[{"type":"inet","host":"g1","port":"24007"}]}}"#,
                "gluster://g1/gv0/images/100/vm-100-disk-0.qcow2",
            ),
            (r#"{"driver":"throttle","file":{"driver":"raw","file":{"driver":"null-co","size":1048576}}}"#, "null-co"),
        ] {
            let d = one(&format!("drive-scsi5: json:{json} (throttle)\n"));
            assert_eq!(d.path.as_deref(), Some(want), "{json}");
            assert!(!d.path.as_deref().unwrap_or("").contains("password"), "no credentials");
        }
        // A description that is no JSON at all: kept, named by its driver.
        assert_eq!(one("drive-scsi6: json:{not json (raw)\n").path.as_deref(), Some("raw"));
        // Throttle JSON with "drive-" inside values, and the detail lines of both drives kept.
        let drives = parse_info_block(
            "drive-ide2: json:{\"throttle-group\": \"throttle-drive-ide2\", \"driver\": \"throttle\", \"file\": {\"driver\": \"raw\", \"file\": {\"driver\": \"host_device\", \"filename\": \"/dev/zvol/rpool/data/vm-100-cloudinit\"}}} (throttle, read-only)\n    Attached to:      ide2\n    Removable device: locked, tray closed\n    Cache mode:       writeback\n\ndrive-virtio0: json:{\"throttle-group\": \"throttle-drive-virtio0\", \"driver\": \"throttle\", \"file\": {\"driver\": \"raw\", \"file\": {\"driver\": \"host_device\", \"filename\": \"/dev/rbd-pve/00000000-0000-0000-0000-000000000001/pool1/vm-100-disk-0\"}}} (throttle)\n    Attached to:      /machine/peripheral/virtio0/virtio-backend\n    Cache mode:       writeback\n    Detect zeroes:    on\n",
        );
        assert_eq!(drives.len(), 2);
        assert_eq!(
            (drives[0].read_only, drives[0].removable.as_str(), drives[0].cache_mode.as_str()),
            (true, "locked, tray closed", "writeback")
        );
        assert_eq!((drives[1].attached_device(), drives[1].detect_zeroes.as_str()), ("virtio0", "on"));
        let d = one(
            "drive-virtio0 (#block109): /dev/zvol/data/vm-100-disk-0 (raw)\n    Attached to:      /machine/peripheral/virtio0/virtio-backend\n",
        );
        assert_eq!(d.block_id(), "109");
        // The last detail line counts (pvemon dropped it).
        let d = one(
            "drive-scsi0 (#block100): /dev/zvol/rpool/data/vm-100-disk-0 (raw, read-write)\n    Detect zeroes:    unmap",
        );
        assert_eq!(d.detect_zeroes, "unmap");
        let drives = parse_info_block(
            "drive-efidisk0 (#block500): /dev/zvol/rpool/data/vm-500-disk-1 (raw, read-write)\ndrive-scsi0 (#block501): /dev/zvol/rpool/data/vm-500-disk-0 (raw, read-write)\n",
        );
        assert_eq!(drives.len(), 2, "efidisk is skipped by the collector, not the parser (positions matter)");
        let d = one("drive-ide2 (#block100): /path/to/disk.iso (raw, read-only)\n    Attached to:      ide2\n");
        assert_eq!(d.attached_device(), "ide2");
    }

    #[test]
    fn block_garbage() {
        for bad in [
            "drive-scsi0: this is not a valid header",
            "drive-scsi0 (#block100):  (raw)",
            "drive-scsi0 (#block100): /x (raw, sideways)",
            "drive-scsi0 (#block100: /x (raw)",
            "drive scsi0: /x (raw)",
            "Images:",
            "image: /tmp/x.qcow2",
            "",
            "\u{0}\u{1}: (",
        ] {
            assert!(parse_info_block(bad).is_empty(), "{bad:?}");
        }
        // A description that says nothing about its image still is a drive (issue 19: PVE 9
        // drives were dropped for it), named by what it does say.
        for (odd, want) in [
            ("drive-scsi0 (#block100): json:{invalid json} (raw, read-write)", "raw"),
            ("drive-scsi0 (#block100): json:{\"driver\":\"raw\"} (raw)", "raw"),
        ] {
            assert_eq!(parse_info_block(odd)[0].path.as_deref(), Some(want), "{odd}");
        }
        // Detail lines of a bad header do not attach to the previous drive.
        let d = parse_info_block("drive-a: /a (raw)\ngarbage: here\n    Cache mode:       none\n");
        assert_eq!((d.len(), d[0].cache_mode.as_str()), (1, ""));
        // A name listed twice keeps the first drive: duplicate series would fail the scrape.
        let d = parse_info_block("drive-a: /a (raw)\ndrive-a: /b (raw)\n");
        assert_eq!((d.len(), d[0].path.as_deref()), (1, Some("/a")));
        // Deeply nested JSON is bounded: the walk stops, the drive stays (named by its driver).
        let deep = format!("drive-a: json:{}{}{} (raw)", "{\"file\":".repeat(40), "{}", "}".repeat(40));
        assert_eq!(parse_info_block(&deep)[0].path.as_deref(), Some("raw"));
    }

    /// Cut and corrupted captures: the parsers never panic (a cheap stand-in for a fuzzer).
    #[test]
    fn mutated_input_never_panics() {
        let texts = [fixture("info-network.txt"), fixture("info-block.txt"), fixture("info-blockstats.txt")];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let parse_all = |t: &str| {
            let _ = parse_info_network(t);
            for d in parse_info_block(t) {
                let _ = (d.disk_name(), d.block_id(), d.attached_device());
                let _ = classify(d.path.as_deref().unwrap_or(""), &d.format);
            }
            let rows = parse_info_blockstats(t);
            let _ = assign_blockstats(rows, &parse_info_block(t));
        };
        for t in &texts {
            for cut in (0..t.len()).filter(|i| t.is_char_boundary(*i)) {
                parse_all(&t[..cut]);
                parse_all(&t[cut..]);
            }
            for _ in 0..2000 {
                let mut b = t.as_bytes().to_vec();
                for _ in 0..(next() % 8 + 1) {
                    let i = (next() % b.len() as u64) as usize;
                    b[i] = match next() % 4 {
                        0 => b'\n',
                        1 => b':',
                        2 => b'(',
                        _ => next() as u8,
                    };
                }
                parse_all(&String::from_utf8_lossy(&b));
            }
        }
    }

    #[test]
    fn classification() {
        let k = classify("/dev/zvol/rpool/data/vm-200-disk-0", "raw");
        assert_eq!(
            (k.disk_type.as_str(), k.pool.as_str(), k.vol_name.as_str()),
            ("zvol", "rpool/data", "vm-200-disk-0")
        );
        let k = classify("/dev/rbd-pve/ceph1/pool1/vm-300-disk-0", "raw");
        assert_eq!(
            (k.disk_type.as_str(), k.cluster_id.as_str(), k.pool.as_str(), k.pool_name.as_str(), k.vol_name.as_str()),
            ("rbd", "ceph1", "pool1", "pool1", "vm-300-disk-0")
        );
        let k = classify("/dev/myvg/vm-400-disk-0", "raw");
        assert_eq!((k.disk_type.as_str(), k.vg_name.as_str(), k.vol_name.as_str()), ("lvm", "myvg", "vm-400-disk-0"));
        let k = classify("/mnt/storage/images/100/vm-100-disk-1.qcow2", "qcow2");
        assert_eq!((k.disk_type.as_str(), k.vol_name.as_str()), ("qcow2", "vm-100-disk-1"));
        let k = classify("rbd:pool1/vm-100-disk-1:conf=/etc/pve/ceph.conf:id=admin", "raw");
        assert_eq!((k.disk_type.as_str(), k.pool.as_str(), k.vol_name.as_str()), ("rbd", "pool1", "vm-100-disk-1"));
        // Not LVM: another name, or deeper.
        assert_eq!(classify("/dev/loop3", "raw").disk_type, "raw");
        assert_eq!(classify("/dev/mapper/vg-vm--1--disk--0", "raw").disk_type, "raw");
        assert_eq!(classify("/dev/a/b/vm-1-disk-0", "raw").disk_type, "raw");
        assert_eq!(classify("/dev/zvol/", "raw").disk_type, "raw");
        assert_eq!(classify("", "").disk_type, "");
    }

    #[test]
    fn blockstats_text_and_positions() {
        let rows = parse_info_blockstats(&fixture("info-blockstats.txt"));
        assert_eq!(rows.len(), 8);
        assert_eq!(rows[0].0, "drive-scsi0");
        assert_eq!(
            (rows[0].1.rd_bytes, rows[0].1.rd_operations, rows[0].1.wr_bytes, rows[0].1.wr_operations),
            (65536, 1, 12288, 1)
        );
        assert_eq!((rows[6].0.as_str(), rows[7].0.as_str()), ("", ""));
        let drives = parse_info_block(&fixture("info-block.txt"));
        let named = assign_blockstats(rows.clone(), &drives).unwrap();
        assert_eq!((named[6].0.as_str(), named[7].0.as_str()), ("drive-scsi2", "drive-scsi3"));
        // A drive that is not there (not in the rows) costs no other drive its row: the
        // unnamed rows still match the drives without a BlockBackend name, in order.
        let fewer: Vec<Drive> = drives.iter().filter(|d| d.name != "drive-scsi0").cloned().collect();
        let named_again = assign_blockstats(rows[1..].to_vec(), &fewer).unwrap();
        assert_eq!((named_again[5].0.as_str(), named_again[6].0.as_str()), ("drive-scsi2", "drive-scsi3"));
        // A different topology of the unnamed drives: no guessing.
        let one_anonymous_less: Vec<Drive> = drives.iter().filter(|d| d.name != "drive-scsi3").cloned().collect();
        assert!(assign_blockstats(rows.clone(), &one_anonymous_less).is_none());
        // Named rows go by their names, wherever the drives are listed.
        let mut swapped = drives.clone();
        swapped.swap(0, 1);
        assert_eq!(assign_blockstats(rows.clone(), &swapped), Some(named));
        assert!(parse_info_blockstats("garbage\nx y: rd_bytes=1\ndrive-a: nothing=1 rd_bytes=x\n").is_empty());
    }
}

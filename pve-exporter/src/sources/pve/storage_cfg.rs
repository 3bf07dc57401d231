//! `/etc/pve/storage.cfg`: which storages the cluster has, and how each one can be sized on
//! this node. The parser follows PVE's own reading of the file (SectionConfig and the storage
//! plugin), so the exporter describes the storages PVE uses, not a neighbour's guess:
//!
//! - a section starts with `<type>: <id>` at column 0, after the start of the file or an empty
//!   line; its properties are the following indented lines `<key> [<value>]` up to the next
//!   empty line; `#` lines are comments anywhere;
//! - a value is the rest of the line (it may hold spaces and colons: IPv6 servers, monitor
//!   lists); a key without value is a boolean flag (`disable`);
//! - a section whose id is not a valid storage id is skipped; a repeated key keeps its first
//!   value; a repeated id replaces the earlier section; any other line is ignored;
//! - PVE always has a `dir` storage `local` at `/var/lib/vz` (it is added or repaired when the
//!   file lacks it) and treats some types as shared whatever the file says.

use std::{collections::BTreeMap, io, path::PathBuf, sync::Arc, time::Duration};

use crate::{
    host::{BlockingGate, HostRoot},
    sources::pve::config::ParsedFile,
};

/// Types PVE always marks shared (`@SHARED_STORAGE` of its storage plugin).
const SHARED_TYPES: &[&str] =
    &["iscsi", "nfs", "cifs", "rbd", "cephfs", "iscsidirect", "glusterfs", "zfs", "drbd", "pbs"];

/// Network file systems PVE mounts itself below `/mnt/pve/<id>` unless `path` says otherwise.
const MOUNTED_TYPES: &[&str] = &["nfs", "cifs", "cephfs", "glusterfs"];

/// One storage section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// The storage id (`local-zfs`), as written.
    pub name: String,
    /// The plugin type, lowercased (`dir`, `zfspool`, `nfs`, ...).
    pub kind: String,
    /// Properties; `None` for a key written without value.
    pub props: BTreeMap<String, Option<String>>,
}

/// How a storage can be sized on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sizing {
    /// statvfs of `path` (a host path); when `mount` is set, only while that path is a mount
    /// point.
    Statvfs { path: String, mount: Option<String> },
    /// `zfs get used,available <dataset>`.
    ZfsDataset(String),
    /// `vgs`: the volume group's size and free space.
    LvmVg(String),
    /// `lvs`: the thin pool's size and data usage.
    LvmThin { vg: String, pool: String },
    /// Remote or opaque storage (rbd, iSCSI, PBS, ZFS over iSCSI, ESXi, plugins): described only.
    NotLocal,
    /// A sizable type whose section lacks what sizing needs (`zfspool` without `pool`, ...).
    Invalid(String),
}

impl Storage {
    /// A property's value; `Some("")` for a key without value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.props.get(key).map(|v| v.as_deref().unwrap_or(""))
    }

    /// A boolean property as PVE reads it: no value = true; 1/yes/on/true, 0/no/off/false
    /// (any case); anything else is invalid, which PVE drops: false.
    pub fn flag(&self, key: &str) -> bool {
        match self.props.get(key) {
            None => false,
            Some(None) => true,
            Some(Some(v)) => parse_bool(v).unwrap_or(false),
        }
    }

    pub fn disabled(&self) -> bool {
        self.flag("disable")
    }

    /// `shared 1`, or a type PVE always treats as shared.
    pub fn shared(&self) -> bool {
        self.flag("shared") || SHARED_TYPES.contains(&self.kind.as_str())
    }

    /// Content types, sorted (PVE writes them in hash order, which would churn series).
    pub fn content(&self) -> String {
        sorted_list(self.get("content").unwrap_or(""), |_| true)
    }

    /// The nodes the storage is restricted to, sorted; empty: all nodes.
    pub fn nodes(&self) -> Vec<String> {
        let list = sorted_list(self.get("nodes").unwrap_or(""), valid_node_name);
        list.split(',').filter(|n| !n.is_empty()).map(str::to_string).collect()
    }

    /// Whether PVE uses the storage on `node` (unknown node: assume it does).
    pub fn on_node(&self, node: Option<&str>) -> bool {
        let nodes = self.nodes();
        nodes.is_empty() || node.is_none_or(|n| nodes.iter().any(|x| x == n))
    }

    /// The storage's local path: `path`, or `/mnt/pve/<id>` for the network file systems PVE
    /// mounts itself.
    pub fn path(&self) -> Option<String> {
        match self.get("path").filter(|p| !p.is_empty()) {
            Some(p) => Some(p.to_string()),
            None if MOUNTED_TYPES.contains(&self.kind.as_str()) => Some(format!("/mnt/pve/{}", self.name)),
            None => None,
        }
    }

    pub fn sizing(&self) -> Sizing {
        let need = |key: &str| {
            self.get(key)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| Sizing::Invalid(format!("{} storage without {key}", self.kind)))
        };
        let absolute = |p: String| {
            if p.starts_with('/') { Ok(p) } else { Err(Sizing::Invalid(format!("path {p:?} is not absolute"))) }
        };
        let r = match self.kind.as_str() {
            "dir" | "btrfs" => need("path").and_then(absolute).map(|path| {
                // `is_mountpoint yes` (or a path): offline unless that path is mounted.
                let mount = match self.get("is_mountpoint") {
                    None => None,
                    Some(v) => match parse_bool(v) {
                        Some(true) => Some(path.clone()),
                        Some(false) => None,
                        None => Some(v.to_string()),
                    },
                };
                Sizing::Statvfs { path, mount }
            }),
            k if MOUNTED_TYPES.contains(&k) => self
                .path()
                .ok_or_else(|| Sizing::Invalid("no path".into()))
                .and_then(absolute)
                .map(|path| Sizing::Statvfs { mount: Some(path.clone()), path }),
            "zfspool" => need("pool").and_then(|ds| {
                // A leading '-' would reach zfs as an option.
                if valid_zfs_name(&ds) {
                    Ok(Sizing::ZfsDataset(ds))
                } else {
                    Err(Sizing::Invalid(format!("bad pool {ds:?}")))
                }
            }),
            "lvm" => need("vgname").and_then(|vg| {
                if valid_lvm_name(&vg) {
                    Ok(Sizing::LvmVg(vg))
                } else {
                    Err(Sizing::Invalid(format!("bad vgname {vg:?}")))
                }
            }),
            "lvmthin" => need("vgname").and_then(|vg| {
                let pool = need("thinpool")?;
                if valid_lvm_name(&vg) && valid_lvm_name(&pool) {
                    Ok(Sizing::LvmThin { vg, pool })
                } else {
                    Err(Sizing::Invalid(format!("bad vgname/thinpool {vg:?}/{pool:?}")))
                }
            }),
            _ => Ok(Sizing::NotLocal),
        };
        r.unwrap_or_else(|e| e)
    }
}

/// PVE's booleans: 1/on/yes/true and 0/off/no/false, any case.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// A PVE list (`a,b c;d`) sorted, deduplicated, joined with commas.
fn sorted_list(v: &str, keep: impl Fn(&str) -> bool) -> String {
    let mut items: Vec<&str> = v
        .split(|c: char| c == ',' || c == ';' || c == '\0' || c.is_ascii_whitespace())
        .filter(|s| !s.is_empty() && keep(s))
        .collect();
    items.sort_unstable();
    items.dedup();
    items.join(",")
}

/// Storage ids: `^[a-z][a-z0-9\-_.]*[a-z0-9]$`, any case (PVE's pve-storage-id).
pub fn valid_storage_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Node names: `^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$`.
fn valid_node_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// LVM names as PVE accepts them: `^[a-z0-9][a-z0-9\-_.]*[a-z0-9]$`, any case.
fn valid_lvm_name(n: &str) -> bool {
    let b = n.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// ZFS dataset names start with a letter or digit and hold no whitespace or control bytes.
fn valid_zfs_name(n: &str) -> bool {
    n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && !n.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A parsed storage.cfg.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageCfg {
    /// In file order, with PVE's forced `local` first when the file lacks it.
    pub storages: Vec<Storage>,
    /// Lines PVE would ignore or reject, as `line N: why` (logged when the file is parsed).
    pub ignored: Vec<String>,
}

impl StorageCfg {
    pub fn get(&self, name: &str) -> Option<&Storage> {
        self.storages.iter().find(|s| s.name == name)
    }
}

fn is_ws(b: u8) -> bool {
    b.is_ascii_whitespace()
}

/// `<type>: <id>` (PVE: `^(\S+):\s*(\S+)\s*$`, the type lowercased).
pub(crate) fn parse_header(line: &str) -> Option<(String, &str)> {
    if line.bytes().next().is_none_or(is_ws) {
        return None;
    }
    let line = line.trim_end_matches(|c: char| c.is_ascii_whitespace());
    let (ty, id) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
        // `dir: local`: the colon ends the first word.
        Some((first, rest)) => {
            let id = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
            if id.contains(|c: char| c.is_ascii_whitespace()) {
                return None;
            }
            (first.strip_suffix(':')?, id)
        }
        // `dir:local`: the last colon that has something on both sides.
        None => {
            // Without the last character (which may be more than one byte: a header of any
            // text must not slice off a character boundary).
            let last = line.chars().next_back().map_or(0, char::len_utf8);
            let i = line[..line.len() - last].rfind(':')?;
            (&line[..i], &line[i + 1..])
        }
    };
    (!ty.is_empty() && !id.is_empty()).then(|| (ty.to_ascii_lowercase(), id))
}

/// An indented `<key> [<value>]` line (PVE: `^\s+(\S+)(\s+(.*\S))?\s*$`).
pub(crate) fn parse_property(line: &str) -> Option<(&str, Option<&str>)> {
    if !line.bytes().next().is_some_and(is_ws) {
        return None;
    }
    let rest = line.trim_matches(|c: char| c.is_ascii_whitespace());
    if rest.is_empty() {
        return None;
    }
    Some(match rest.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((k, v)) => (k, Some(v.trim_start_matches(|c: char| c.is_ascii_whitespace()))),
        None => (rest, None),
    })
}

/// Parse storage.cfg. Pure and total: any input gives a result (bad lines are skipped and
/// listed in `ignored`).
pub fn parse_storage_cfg(text: &str) -> StorageCfg {
    let mut cfg = StorageCfg::default();
    // The section being read: None between sections; Some(None) for a skipped section.
    let mut current: Option<Option<Storage>> = None;
    // Sections in order, a replaced one left empty; where each id is (linear in sections:
    // a file of many thousand sections must not take quadratic time).
    let mut sections: Vec<Option<Storage>> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut finish = |s: Option<Storage>| {
        if let Some(s) = s {
            // A repeated id replaces the earlier section (PVE keeps the last one, in its place
            // of the last).
            if let Some(i) = at.insert(s.name.clone(), sections.len()) {
                sections[i] = None;
            }
            sections.push(Some(s));
        }
    };
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let no = i + 1;
        if line.trim_start().starts_with('#') {
            continue;
        }
        if line.is_empty() {
            if let Some(s) = current.take() {
                finish(s);
            }
            continue;
        }
        match current.as_mut() {
            Some(section) => match parse_property(line) {
                Some((k, v)) => {
                    if let Some(s) = section {
                        if s.props.contains_key(k) {
                            cfg.ignored.push(format!("line {no}: duplicate property {k:?} of {:?}", s.name));
                        } else {
                            s.props.insert(k.to_string(), v.map(str::to_string));
                        }
                    }
                }
                // Includes a header without the empty line before it: PVE ignores it too.
                None => cfg.ignored.push(format!("line {no}: not a property line")),
            },
            None => match parse_header(line) {
                Some((kind, id)) if valid_storage_id(id) => {
                    current = Some(Some(Storage { name: id.to_string(), kind, props: BTreeMap::new() }));
                }
                Some((_, id)) => {
                    cfg.ignored.push(format!("line {no}: invalid storage id {id:?}, section skipped"));
                    current = Some(None);
                }
                None => cfg.ignored.push(format!("line {no}: not a section header")),
            },
        }
    }
    if let Some(s) = current.take() {
        finish(s);
    }
    cfg.storages = sections.into_iter().flatten().collect();
    force_local(&mut cfg);
    cfg
}

/// PVE's rule: `local` is always a `dir` storage at /var/lib/vz on every node; a missing or
/// different `local` is replaced by the default one.
fn force_local(cfg: &mut StorageCfg) {
    const VZ: &str = "/var/lib/vz";
    let ok = cfg.get("local").is_some_and(|l| l.kind == "dir" && l.get("path").is_none_or(|p| p.is_empty() || p == VZ));
    if !ok {
        cfg.storages.retain(|s| s.name != "local");
        let props =
            [("path", VZ), ("content", "backup,images,iso,rootdir,snippets,vztmpl"), ("prune-backups", "keep-all=1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                .collect();
        cfg.storages.insert(0, Storage { name: "local".into(), kind: "dir".into(), props });
    }
    if let Some(l) = cfg.storages.iter_mut().find(|s| s.name == "local") {
        l.props.insert("path".into(), Some(VZ.into()));
        l.props.remove("nodes");
    }
}

/// Reads storage.cfg through the /etc/pve gate and parses it again only when it changed.
#[derive(Debug, Default)]
pub struct StorageCfgReader {
    file: Arc<ParsedFile<StorageCfg>>,
}

impl StorageCfgReader {
    /// None: the host has no storage.cfg (not a PVE host). Err: unreadable, or pmxcfs did not
    /// answer within `timeout` (or has not returned an earlier read yet).
    pub fn read(&self, host: &HostRoot, gate: &BlockingGate, timeout: Duration) -> io::Result<Option<Arc<StorageCfg>>> {
        let file = self.file.clone();
        let path: PathBuf = host.path("etc/pve/storage.cfg");
        gate.call("pmxcfs", timeout, move || {
            file.get(&path, |text| {
                let cfg = parse_storage_cfg(text);
                for w in &cfg.ignored {
                    log::debug!("{}: {w}", path.display());
                }
                cfg
            })
        })?
    }
}

/// This node's name as PVE uses it in `nodes` lists: the kernel host name up to the first dot.
pub fn read_node_name(host: &HostRoot) -> Option<String> {
    let raw = host.read_to_string("proc/sys/kernel/hostname").ok()?;
    let name = raw.trim().split('.').next().unwrap_or("");
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Go exporter's fixture (pveconfig/storage_test.go), with tabs.
    const GO_FIXTURE: &str = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n\tmaxfiles 3\n\n\
zfspool: local-zfs\n\tpool rpool/data\n\tcontent images,rootdir\n\tsparse 1\n\n\
nfs: nas-backup\n\texport /mnt/backup\n\tpath /mnt/pve/nas-backup\n\tserver 10.0.0.1\n\tcontent backup\n";

    fn names(c: &StorageCfg) -> Vec<&str> {
        c.storages.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn the_go_fixture() {
        let c = parse_storage_cfg(GO_FIXTURE);
        assert_eq!(names(&c), ["local", "local-zfs", "nas-backup"]);
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let local = c.get("local").unwrap();
        assert_eq!(local.kind, "dir");
        assert_eq!(local.content(), "backup,iso,vztmpl");
        assert_eq!(local.get("maxfiles"), Some("3"));
        assert_eq!(local.sizing(), Sizing::Statvfs { path: "/var/lib/vz".into(), mount: None });
        let zfs = c.get("local-zfs").unwrap();
        assert_eq!(zfs.name, "local-zfs", "names are kept as written, not sanitized");
        assert_eq!(zfs.sizing(), Sizing::ZfsDataset("rpool/data".into()));
        assert!(!zfs.shared());
        let nfs = c.get("nas-backup").unwrap();
        assert!(nfs.shared(), "nfs is always shared");
        assert_eq!(nfs.get("server"), Some("10.0.0.1"));
        assert_eq!(
            nfs.sizing(),
            Sizing::Statvfs { path: "/mnt/pve/nas-backup".into(), mount: Some("/mnt/pve/nas-backup".into()) }
        );
    }

    #[test]
    fn a_header_ending_in_a_multibyte_character_is_no_header_and_no_panic() {
        // Found by hostile input: the `type:id` form sliced off the last byte of `é`.
        for text in ["dir:é\n", "dir:localé\n\tpath /x\n", "é\n", "diré\n", "dir:\u{1F600}\n"] {
            let c = parse_storage_cfg(text);
            assert!(c.storages.iter().all(|s| s.name == "local" || valid_storage_id(&s.name)), "{text:?}");
        }
        let c = parse_storage_cfg("dir:local\u{e9}x\n");
        assert_eq!(names(&c), ["local"], "an invalid id is skipped");
    }

    #[test]
    fn repeated_ids_keep_the_last_section_in_linear_time() {
        let c = parse_storage_cfg("dir: a1\n\tpath /1\n\ndir: b1\n\tpath /2\n\ndir: a1\n\tpath /3\n");
        assert_eq!(names(&c), ["local", "b1", "a1"]);
        assert_eq!(c.get("a1").and_then(|s| s.get("path")), Some("/3"));
        // 40 000 sections, half of them repeats (quadratic de-duplication took seconds here;
        // the time is the bench's to watch, not this test's).
        let text: String = (0..40_000).map(|i| format!("dir: s{}\n\tpath /x\n\n", i % 20_000)).collect();
        let c = parse_storage_cfg(&text);
        assert_eq!(c.storages.len(), 20_001);
        assert_eq!(c.storages.last().map(|s| s.name.as_str()), Some("s19999"));
    }

    #[test]
    fn values_flags_comments_and_whitespace() {
        let c = parse_storage_cfg(
            "# comment\n\
             cifs: smb\n\
             \x20   server fd00::10\n\
             \tshare iso\n\
             \t# an indented comment does not end the section\n\
             \tdisable\n\
             \tcontent  iso , vztmpl;iso   \n\
             \toptions vers=3.0,seal\n\
             \n\
             rbd: ceph\r\n\
             \tmonhost 10.0.0.5 10.0.0.6;10.0.0.7\r\n\
             \tpool vm-pool\r\n\
             \tshared 0\r\n\
             \tdisable no\r\n",
        );
        assert_eq!(names(&c), ["local", "smb", "ceph"]);
        let smb = c.get("smb").unwrap();
        assert_eq!(smb.get("server"), Some("fd00::10"), "a value may hold colons");
        assert_eq!(smb.get("disable"), Some(""));
        assert!(smb.disabled(), "a key without value is a true flag");
        assert_eq!(smb.content(), "iso,vztmpl");
        assert_eq!(smb.get("options"), Some("vers=3.0,seal"));
        assert_eq!(smb.path().as_deref(), Some("/mnt/pve/smb"), "PVE's default mount point");
        let ceph = c.get("ceph").unwrap();
        assert_eq!(ceph.get("monhost"), Some("10.0.0.5 10.0.0.6;10.0.0.7"), "values keep inner spaces");
        assert!(!ceph.disabled());
        assert!(ceph.shared(), "rbd is shared whatever the file says");
        assert_eq!(ceph.sizing(), Sizing::NotLocal);
    }

    #[test]
    fn malformed_sections() {
        let c = parse_storage_cfg(
            "\tpath /orphan\n\
             nfs nas-typo\n\
             \tpath /x\n\
             \n\
             dir: 1bad\n\
             \tpath /bad\n\
             \n\
             dir: two words here\n\
             \n\
             dir: good\n\
             \tpath /srv/good\n\
             \tpath /srv/second\n\
             dir: glued\n\
             \tcontent iso\n\
             \n\
             lvmthin: thin\n\
             \tvgname pve\n\
             \n\
             zfspool: zz\n\
             \tpool -o\n\
             \n\
             mystery: custom-plugin\n\
             \tfoo bar\n\
             \n\
             dir: good\n\
             \tpath /srv/again\n",
        );
        // The repeated `good` replaces the first one.
        assert_eq!(names(&c), ["local", "thin", "zz", "custom-plugin", "good"]);
        assert_eq!(c.get("good").unwrap().get("path"), Some("/srv/again"));
        assert_eq!(c.get("thin").unwrap().sizing(), Sizing::Invalid("lvmthin storage without thinpool".into()));
        assert!(matches!(c.get("zz").unwrap().sizing(), Sizing::Invalid(_)));
        let custom = c.get("custom-plugin").unwrap();
        assert_eq!((custom.kind.as_str(), custom.sizing()), ("mystery", Sizing::NotLocal));
        assert_eq!(
            c.ignored,
            [
                "line 1: not a section header",
                "line 2: not a section header",
                "line 3: not a section header",
                "line 5: invalid storage id \"1bad\", section skipped",
                "line 8: not a section header",
                "line 12: duplicate property \"path\" of \"good\"",
                "line 13: not a property line",
            ]
        );
        // `dir: glued` had no empty line before it: PVE ignores the header, and the content
        // line lands in the section above (the first `good`, replaced later anyway).
        let c = parse_storage_cfg("dir: a1\n\tpath /a\ndir: b1\n\tcontent iso\n");
        assert_eq!(names(&c), ["local", "a1"]);
        assert_eq!(c.get("a1").unwrap().content(), "iso");
    }

    #[test]
    fn header_forms() {
        assert_eq!(parse_header("dir: local"), Some(("dir".into(), "local")));
        assert_eq!(parse_header("DIR:local  "), Some(("dir".into(), "local")));
        assert_eq!(parse_header("dir:\tlocal"), Some(("dir".into(), "local")));
        assert_eq!(parse_header("a:b: c"), Some(("a:b".into(), "c")));
        assert_eq!(parse_header("a:b:"), Some(("a".into(), "b:")));
        for bad in ["dir local", " dir: local", "dir:", ":local", "dir: a b", "", ":", "::"] {
            assert_eq!(parse_header(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pve_defaults_for_local() {
        // No local: PVE adds it, first.
        let c = parse_storage_cfg("nfs: n1\n\tserver s\n");
        assert_eq!(names(&c), ["local", "n1"]);
        assert_eq!(c.get("local").unwrap().content(), "backup,images,iso,rootdir,snippets,vztmpl");
        // A local of another type or path is replaced; one without path gets the default path;
        // nodes restrictions are dropped.
        let c = parse_storage_cfg("zfspool: local\n\tpool rpool\n");
        assert_eq!(c.get("local").unwrap().kind, "dir");
        let c = parse_storage_cfg("dir: local\n\tcontent iso\n\tnodes a,b\n\tdisable\n");
        let l = c.get("local").unwrap();
        assert_eq!((l.get("path"), l.content().as_str(), l.nodes().len()), (Some("/var/lib/vz"), "iso", 0));
        assert!(l.disabled(), "an existing local keeps its own settings");
        assert_eq!(parse_storage_cfg("").storages.len(), 1);
    }

    #[test]
    fn nodes_and_mount_rules() {
        let c = parse_storage_cfg(
            "dir: usb\n\tpath /mnt/usb\n\tis_mountpoint yes\n\tnodes pve2, pve1,bad_name\n\n\
             dir: usb2\n\tpath /mnt/usb2/data\n\tis_mountpoint /mnt/usb2\n\n\
             dir: plain\n\tpath /srv\n\tis_mountpoint no\n\n\
             btrfs: bb\n\tpath rel/path\n\n\
             glusterfs: gl\n\tserver 10.0.0.3\n\tvolume gv0\n",
        );
        let usb = c.get("usb").unwrap();
        assert_eq!(usb.nodes(), ["pve1", "pve2"]);
        assert!(usb.on_node(Some("pve1")) && !usb.on_node(Some("pve3")) && usb.on_node(None));
        assert!(c.get("plain").unwrap().on_node(Some("anything")));
        assert_eq!(usb.sizing(), Sizing::Statvfs { path: "/mnt/usb".into(), mount: Some("/mnt/usb".into()) });
        assert_eq!(
            c.get("usb2").unwrap().sizing(),
            Sizing::Statvfs { path: "/mnt/usb2/data".into(), mount: Some("/mnt/usb2".into()) }
        );
        assert_eq!(c.get("plain").unwrap().sizing(), Sizing::Statvfs { path: "/srv".into(), mount: None });
        assert!(matches!(c.get("bb").unwrap().sizing(), Sizing::Invalid(_)));
        assert_eq!(
            c.get("gl").unwrap().sizing(),
            Sizing::Statvfs { path: "/mnt/pve/gl".into(), mount: Some("/mnt/pve/gl".into()) }
        );
    }

    #[test]
    fn lvm_sizing() {
        let c = parse_storage_cfg(
            "lvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\n\
             lvm: san\n\tvgname vg_san\n\tshared 1\n\n\
             lvm: bad\n\tvgname -x\n",
        );
        assert_eq!(c.get("local-lvm").unwrap().sizing(), Sizing::LvmThin { vg: "pve".into(), pool: "data".into() });
        let san = c.get("san").unwrap();
        assert_eq!(san.sizing(), Sizing::LvmVg("vg_san".into()));
        assert!(san.shared());
        assert!(matches!(c.get("bad").unwrap().sizing(), Sizing::Invalid(_)));
    }

    #[test]
    fn booleans() {
        for (v, b) in [("1", Some(true)), ("YES", Some(true)), ("on", Some(true)), ("True", Some(true))] {
            assert_eq!(parse_bool(v), b);
        }
        for v in ["0", "no", "OFF", "false"] {
            assert_eq!(parse_bool(v), Some(false));
        }
        assert_eq!(parse_bool("2"), None);
        let c = parse_storage_cfg("dir: d1\n\tpath /d\n\tdisable maybe\n");
        assert!(!c.get("d1").unwrap().disabled(), "an invalid boolean is dropped, as PVE does");
    }

    #[test]
    fn ids() {
        for ok in ["local", "local-zfs", "a1", "Nas.Backup_2"] {
            assert!(valid_storage_id(ok), "{ok}");
        }
        for bad in ["a", "1a", "a-", "a b", "", "a/b", "ä1"] {
            assert!(!valid_storage_id(bad), "{bad}");
        }
    }

    /// Fuzz-style: random bytes and mutated real files never panic, and every storage that
    /// comes out has a valid id and a type.
    #[test]
    fn never_panics_on_garbage() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"dir: \t\n\r#,:-_.a1/\\\0";
        let base = GO_FIXTURE.as_bytes();
        for round in 0..3000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                (0..next() % 200).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect()
            } else {
                let mut b = base.to_vec();
                for _ in 0..(next() % 8) {
                    let i = (next() % b.len() as u64) as usize;
                    b[i] = alphabet[(next() % alphabet.len() as u64) as usize];
                }
                b.truncate((next() % (b.len() as u64 + 1)) as usize);
                b
            };
            let text = String::from_utf8_lossy(&bytes);
            let c = parse_storage_cfg(&text);
            for s in &c.storages {
                assert!(valid_storage_id(&s.name) && !s.kind.is_empty(), "{s:?} from {text:?}");
                let _ = (s.sizing(), s.content(), s.nodes(), s.path(), s.shared());
            }
        }
    }

    #[test]
    fn reader_parses_again_only_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let gate = BlockingGate::default();
        let r = StorageCfgReader::default();
        let t = Duration::from_secs(5);
        assert!(r.read(&host, &gate, t).unwrap().is_none(), "no storage.cfg: not a PVE host");
        std::fs::create_dir_all(dir.path().join("etc/pve")).unwrap();
        std::fs::write(dir.path().join("etc/pve/storage.cfg"), GO_FIXTURE).unwrap();
        let a = r.read(&host, &gate, t).unwrap().unwrap();
        let b = r.read(&host, &gate, t).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        std::fs::write(dir.path().join("etc/pve/storage.cfg"), "dir: other\n\tpath /o\n").unwrap();
        let c = r.read(&host, &gate, t).unwrap().unwrap();
        assert_eq!(names(&c), ["local", "other"]);
    }

    #[test]
    fn node_name() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        assert_eq!(read_node_name(&host), None);
        std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
        std::fs::write(dir.path().join("proc/sys/kernel/hostname"), "pve1.example.com\n").unwrap();
        assert_eq!(read_node_name(&host).as_deref(), Some("pve1"));
    }
}

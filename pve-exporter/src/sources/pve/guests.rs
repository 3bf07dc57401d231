//! Every guest configured on this node, running or not: `/etc/pve/.vmlist` says which guests
//! are this node's and of which type, each `qemu-server/<vmid>.conf` or `lxc/<ctid>.conf` what
//! they are, `.members` the node's and cluster's names, and `ha/manager_status` each HA
//! guest's state. Every file is parsed again only when it changed (mtime, size, inode).
//!
//! /etc/pve is pmxcfs: the caller runs [`GuestReader::read`] behind the timed pmxcfs gate.

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex},
};

use super::{
    cluster::{Members, Vmlist, parse_members, parse_vmlist},
    config::{HeldDir, ParsedFile},
    guest_config::{GuestConfig, GuestType, parse_guest_config},
    ha::{ManagerStatus, parse_manager_status},
    storage_cfg::read_node_name,
};
use crate::{
    host::{HostRoot, is_gone},
    sources::error::{ParseError, SourceError},
};

/// One configured guest of this node.
#[derive(Debug, Clone)]
pub struct ConfiguredGuest {
    pub vmid: String,
    pub ty: GuestType,
    pub config: Arc<GuestConfig>,
    /// The HA manager's state of the guest (`started`, `stopped`, ...), when HA manages it.
    pub ha_state: Option<String>,
}

/// What a scrape knows of this node's guests.
#[derive(Debug, Default)]
pub struct Guests {
    /// This node's name (`.members`' nodename, else the kernel's host name).
    pub node: String,
    pub members: Option<Members>,
    /// Sorted by vmid.
    pub guests: Vec<ConfiguredGuest>,
    /// Nodes' HA states (`online`, `maintenance`, ...) of the manager status.
    pub ha_nodes: BTreeMap<String, String>,
}

/// One read of the guests: what could be read, and what could not (the guests it concerns
/// are missing, the rest are there).
pub type GuestsRead = (Arc<Guests>, Vec<SourceError>);

/// (type, vmid).
type GuestKey = (GuestType, String);

/// A guest's config file: its path, its name in its directory and its last parse.
type ConfigFile = (std::path::PathBuf, std::ffi::CString, Arc<ParsedFile<GuestConfig>>);

/// Keeps each parsed file between scrapes.
#[derive(Debug, Default)]
pub struct GuestReader {
    vmlist: ParsedFile<Result<Vmlist, ParseError>>,
    members: ParsedFile<Result<Members, ParseError>>,
    manager: ParsedFile<Result<ManagerStatus, ParseError>>,
    /// Each listed guest's config file (its path, made once, not per scrape, and its last
    /// parse), in the order of the list they were arranged for.
    configs: Mutex<(Option<GuestKeys>, Vec<ConfigFile>)>,
    /// `qemu-server/` and `lxc/`, held open: each config is looked up by its name there.
    dirs: Mutex<[Option<HeldDir>; 2]>,
    /// This node's guests of the last `.vmlist` parse, for the node they were listed for.
    listed: Mutex<Option<Listed>>,
    /// The last read, given again while its files are unchanged.
    last: Mutex<Option<LastRead>>,
}

type VmlistParse = Result<Vmlist, ParseError>;
/// This node's guests, in vmid order.
type GuestKeys = Arc<[GuestKey]>;
/// A `.vmlist` parse, the node its guests were taken for, and those guests.
type Listed = (Arc<VmlistParse>, String, GuestKeys);
type MembersParse = Result<Members, ParseError>;
type ManagerParse = Result<ManagerStatus, ParseError>;

/// A read's guests and the parses they were made from, each held (so that no other parse can
/// be at its address since, and a pointer comparison says "unchanged").
#[derive(Debug)]
struct LastRead {
    members: Option<Arc<MembersParse>>,
    manager: Option<Arc<ManagerParse>>,
    ids: Arc<[GuestKey]>,
    guests: Arc<Guests>,
}

impl LastRead {
    /// Whether a read of these parses, this node name and these configs (by their place in
    /// `ids`) makes the same guests as this one.
    fn made_of(
        &self,
        members: &Option<Arc<MembersParse>>,
        manager: &Option<Arc<ManagerParse>>,
        ids: &Arc<[GuestKey]>,
        node: &str,
        found: &[(usize, Arc<GuestConfig>)],
    ) -> bool {
        fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        same(&self.members, members)
            && same(&self.manager, manager)
            && (Arc::ptr_eq(&self.ids, ids) || self.ids == *ids)
            && self.guests.node == node
            && self.guests.guests.len() == found.len()
            && self.guests.guests.iter().zip(found).all(|(g, (i, c))| Arc::ptr_eq(&g.config, c) && g.vmid == ids[*i].1)
    }
}

impl GuestReader {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Read /etc/pve (blocking: run it behind the pmxcfs gate). Fails only when /etc/pve
    /// cannot be listed at all; a file that cannot be read costs what it concerns. When every
    /// file is as the last read found it, that read's guests are given again (the same `Arc`):
    /// what is built from them can be kept by it (the `guest` collector's lines).
    pub fn read(&self, host: &HostRoot) -> io::Result<GuestsRead> {
        let mut errors = Vec::new();
        let members_file = match self.members.get(&host.path("etc/pve/.members"), parse_members) {
            Ok(m) => m,
            Err(e) => {
                errors.push(SourceError::io(host.path("etc/pve/.members"), e));
                None
            }
        };
        let members = match members_file.as_deref() {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                errors.push(e.clone().input("/etc/pve/.members").into());
                None
            }
            None => None,
        };
        let node = match members.map(|m| m.nodename.as_str()).filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => read_node_name(host).unwrap_or_default(),
        };
        let ids = self.ids(host, &node, &mut errors)?;
        let manager_file = match self.manager.get(&host.path("etc/pve/ha/manager_status"), parse_manager_status) {
            Ok(m) => m,
            Err(e) => {
                errors.push(SourceError::io(host.path("etc/pve/ha/manager_status"), e));
                None
            }
        };
        let default_ha = ManagerStatus::default();
        let ha = match manager_file.as_deref() {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                errors.push(e.clone().input("/etc/pve/ha/manager_status").into());
                &default_ha
            }
            None => &default_ha,
        };
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if !configs.0.as_ref().is_some_and(|listed| Arc::ptr_eq(listed, &ids)) {
            // Another list: each config file is kept where its guest still is, in the new
            // list's order (one lookup per guest when the list changed, none otherwise).
            let (listed, files) = &mut *configs;
            let mut had: crate::fasthash::FastMap<GuestKey, ConfigFile> =
                listed.take().map(|l| l.iter().cloned().zip(files.drain(..)).collect()).unwrap_or_default();
            *files = ids.iter().map(|key| had.remove(key).unwrap_or_else(|| config_file(host, key))).collect();
            *listed = Some(ids.clone());
        }
        // One walk of each config directory's path per scrape, to check that the directory
        // held is still the one there (else it is opened again), instead of one per config.
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        for ty in [GuestType::Qemu, GuestType::Lxc] {
            let path = host.path(ty.config_dir());
            let held = &mut dirs[ty as usize];
            if !held.as_ref().is_some_and(|d| d.is_at(&path)) {
                *held = HeldDir::open(&path).ok();
            }
        }
        // Each listed guest's parsed config, by its place in `ids`.
        let mut found: Vec<(usize, Arc<GuestConfig>)> = Vec::with_capacity(ids.len());
        for (i, (key, (path, name, file))) in ids.iter().zip(&configs.1).enumerate() {
            let read = match &dirs[key.0 as usize] {
                Some(dir) => file.get_in(dir, name, path, parse_guest_config),
                None => file.get(path, parse_guest_config),
            };
            match read {
                Ok(Some(c)) => {
                    if c.malformed > 0 {
                        log::debug!("{}: {} malformed line(s) skipped", path.display(), c.malformed);
                    }
                    found.push((i, c));
                }
                // Deleted or moved to another node since the list was written: not ours now.
                Ok(None) => {}
                Err(e) if is_gone(&e) => {}
                Err(e) => errors.push(SourceError::io(path.clone(), e)),
            }
        }
        drop((configs, dirs));
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if errors.is_empty()
            && let Some(l) = last.as_ref()
            && l.made_of(&members_file, &manager_file, &ids, &node, &found)
        {
            return Ok((l.guests.clone(), errors));
        }
        let guests = found
            .into_iter()
            .map(|(i, config)| {
                let (ty, vmid) = ids[i].clone();
                let ha_state = if ha.service_status.is_empty() {
                    None
                } else {
                    let sid = format!("{}:{vmid}", if ty == GuestType::Qemu { "vm" } else { "ct" });
                    ha.service_status.get(&sid).map(|s| s.state.clone())
                };
                ConfiguredGuest { vmid, ty, config, ha_state }
            })
            .collect();
        let out = Arc::new(Guests { node, members: members.cloned(), guests, ha_nodes: ha.node_status.clone() });
        // A read with errors is not given again: a file that failed may answer next time.
        *last = errors.is_empty().then(|| LastRead {
            members: members_file,
            manager: manager_file,
            ids,
            guests: out.clone(),
        });
        Ok((out, errors))
    }

    /// (type, vmid) of this node's guests, sorted: from `.vmlist`, else (no pmxcfs status
    /// file: a fixture tree, a node whose pmxcfs has not written it) from the config
    /// directories.
    fn ids(&self, host: &HostRoot, node: &str, errors: &mut Vec<SourceError>) -> io::Result<Arc<[GuestKey]>> {
        let path = host.path("etc/pve/.vmlist");
        let from_list = match self.vmlist.get(&path, parse_vmlist) {
            Ok(Some(file)) => match file.as_ref() {
                Ok(l) => {
                    // The same parse on the same node: the same list (held with the parse it
                    // was made from), not some hundred vmids copied again.
                    let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
                    match listed.as_ref() {
                        Some((f, n, ids)) if Arc::ptr_eq(f, &file) && n == node => Some(ids.clone()),
                        _ => {
                            if !l.unknown.is_empty() {
                                log::debug!("/etc/pve/.vmlist: entries of unknown type skipped: {:?}", l.unknown);
                            }
                            let ids: Arc<[GuestKey]> =
                                l.on_node(node).into_iter().map(|g| (g.ty, g.vmid.clone())).collect();
                            *listed = Some((file.clone(), node.to_string(), ids.clone()));
                            Some(ids)
                        }
                    }
                }
                Err(e) => {
                    errors.push(e.clone().input("/etc/pve/.vmlist").into());
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                errors.push(SourceError::io(path, e));
                None
            }
        };
        if let Some(ids) = from_list {
            return Ok(ids);
        }
        let mut ids = Vec::new();
        for ty in [GuestType::Qemu, GuestType::Lxc] {
            let dir = host.path(ty.config_dir());
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
            };
            let names = rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok());
            ids.extend(super::config::vmids_from_listing(names).into_iter().map(|id| (ty, id)));
        }
        ids.sort_by(|a, b| (a.1.len(), &a.1, a.0).cmp(&(b.1.len(), &b.1, b.0)));
        Ok(ids.into())
    }
}

/// Guest `key`'s config file, not read yet.
fn config_file(host: &HostRoot, key: &GuestKey) -> ConfigFile {
    let name = format!("{}.conf", key.1);
    let path = host.path(format!("{}/{name}", key.0.config_dir()));
    // A vmid from .vmlist is digits: no NUL in the name.
    let name = std::ffi::CString::new(name).unwrap_or_default();
    (path, name, Arc::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for dir in ["etc/pve/qemu-server", "etc/pve/lxc", "etc/pve/ha", "proc/sys/kernel"] {
            std::fs::create_dir_all(p.join(dir)).unwrap();
        }
        std::fs::write(p.join("proc/sys/kernel/hostname"), "pve1.example.com\n").unwrap();
        std::fs::write(p.join("etc/pve/qemu-server/100.conf"), "name: web\nmemory: 1024\n").unwrap();
        std::fs::write(p.join("etc/pve/lxc/101.conf"), "hostname: ct\n").unwrap();
        d
    }

    #[test]
    fn from_config_directories_without_vmlist() {
        let d = tree();
        let (g, errors) = GuestReader::new().read(&HostRoot::new(d.path())).unwrap();
        assert_eq!(g.node, "pve1");
        let ids: Vec<(&str, GuestType)> = g.guests.iter().map(|g| (g.vmid.as_str(), g.ty)).collect();
        assert_eq!(ids, vec![("100", GuestType::Qemu), ("101", GuestType::Lxc)]);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn vmlist_selects_this_nodes_guests_and_ha_states() {
        let d = tree();
        let p = d.path();
        std::fs::write(
            p.join("etc/pve/.vmlist"),
            "{\n\"version\": 3,\n\"ids\": {\n\"100\": { \"node\": \"pve1\", \"type\": \"qemu\", \"version\": 1 },\n\
             \"101\": { \"node\": \"pve1\", \"type\": \"lxc\", \"version\": 1 },\n\
             \"102\": { \"node\": \"pve1\", \"type\": \"qemu\", \"version\": 1 },\n\
             \"200\": { \"node\": \"pve2\", \"type\": \"qemu\", \"version\": 1 }}\n\n}\n",
        )
        .unwrap();
        std::fs::write(p.join("etc/pve/.members"), "{\n\"nodename\": \"pve1\",\n\"version\": 0\n}\n").unwrap();
        std::fs::write(
            p.join("etc/pve/ha/manager_status"),
            r#"{"master_node":"pve1","node_status":{"pve1":"online"},"service_status":{"vm:100":{"node":"pve1","state":"started","uid":"x"}}}"#,
        )
        .unwrap();
        let r = GuestReader::new();
        let (g, errors) = r.read(&HostRoot::new(p)).unwrap();
        // 102 is listed but its config is gone (deleted since): not a failure.
        let ids: Vec<&str> = g.guests.iter().map(|g| g.vmid.as_str()).collect();
        assert_eq!(ids, vec!["100", "101"]);
        assert_eq!(g.guests[0].ha_state.as_deref(), Some("started"));
        assert_eq!(g.guests[1].ha_state, None);
        assert_eq!(g.ha_nodes.get("pve1").map(String::as_str), Some("online"));
        assert!(errors.is_empty(), "{errors:?}");
        // A .vmlist that does not parse: the config directories, and the error said.
        std::fs::write(p.join("etc/pve/.vmlist"), "{ not json").unwrap();
        let (g, errors) = r.read(&HostRoot::new(p)).unwrap();
        assert_eq!(g.guests.len(), 2);
        assert_eq!(errors.len(), 1);
    }

    /// Configs are looked up by name in their held directory; a directory replaced since (or a
    /// link to it pointed elsewhere, as pmxcfs's `qemu-server` into `nodes/<node>/`) is opened
    /// again, never read stale; a config rewritten in place is parsed again.
    #[test]
    fn configs_through_held_directories_follow_changes() {
        let d = tree();
        let p = d.path();
        let host = HostRoot::new(p);
        let r = GuestReader::new();
        let name = |g: &Guests| g.guests.iter().map(|g| g.config.name(g.ty, &g.vmid).into_owned()).collect::<Vec<_>>();
        let first = r.read(&host).unwrap().0;
        assert_eq!(name(&first), vec!["web", "ct"]);
        // Nothing changed: the same guests, not a copy (what the `guest` collector keeps by).
        assert!(Arc::ptr_eq(&first, &r.read(&host).unwrap().0));
        // Rewritten in place (a new size; pmxcfs writes in place).
        std::fs::write(
            p.join("etc/pve/qemu-server/100.conf"),
            "name: web-renamed
memory: 1024
",
        )
        .unwrap();
        let renamed = r.read(&host).unwrap().0;
        assert_eq!(name(&renamed), vec!["web-renamed", "ct"]);
        assert!(!Arc::ptr_eq(&first, &renamed));
        // The directory replaced by another one: the new one's config, not the held one's.
        std::fs::rename(p.join("etc/pve/qemu-server"), p.join("etc/pve/old-qemu-server")).unwrap();
        std::fs::create_dir(p.join("etc/pve/qemu-server")).unwrap();
        std::fs::write(
            p.join("etc/pve/qemu-server/100.conf"),
            "name: new-dir
",
        )
        .unwrap();
        assert_eq!(name(&r.read(&host).unwrap().0), vec!["new-dir", "ct"]);
        // A link (as pmxcfs's) pointed to another directory.
        std::fs::create_dir_all(p.join("etc/pve/nodes/pve1/lxc")).unwrap();
        std::fs::write(
            p.join("etc/pve/nodes/pve1/lxc/101.conf"),
            "hostname: linked
",
        )
        .unwrap();
        std::fs::remove_dir_all(p.join("etc/pve/lxc")).unwrap();
        std::os::unix::fs::symlink("nodes/pve1/lxc", p.join("etc/pve/lxc")).unwrap();
        assert_eq!(name(&r.read(&host).unwrap().0), vec!["new-dir", "linked"]);
        // A config removed: its guest is gone, no error; the directory gone: no guests of it.
        std::fs::remove_file(p.join("etc/pve/qemu-server/100.conf")).unwrap();
        let (g, errors) = r.read(&host).unwrap();
        assert_eq!((name(&g), errors.len()), (vec!["linked".to_string()], 0));
        std::fs::remove_file(p.join("etc/pve/lxc")).unwrap();
        assert!(r.read(&host).unwrap().0.guests.is_empty());
    }
}

//! pmxcfs's status files: `/etc/pve/.vmlist` (every guest of the cluster, the node it is on)
//! and `/etc/pve/.members` (the cluster and its nodes), as pve-cluster's `status.c` writes
//! them (`cfs_create_vmlist_msg`, `cfs_create_memberlist_msg`):
//!
//! ```text
//! {
//! "version": 12,
//! "ids": {
//! "100": { "node": "pve1", "type": "qemu", "version": 3 },
//! "101": { "node": "pve1", "type": "lxc", "version": 5 }}
//!
//! }
//! ```
//!
//! ```text
//! {
//! "nodename": "pve1",
//! "version": 7,
//! "cluster": { "name": "prod", "version": 3, "nodes": 2, "quorate": 1 },
//! "nodelist": {
//!   "pve1": { "id": 1, "online": 1, "ip": "192.0.2.1"},
//!   "pve2": { "id": 2, "online": 0, "ip": "192.0.2.2"}
//!   }
//! }
//! ```
//!
//! A node without a cluster has `.members` = `{ "nodename": "pve1", "version": 0 }` and no
//! `ids` in a `.vmlist` without guests.

use serde_json::Value;

use super::{
    guest_config::GuestType,
    ha::{json_string, json_u64},
};
use crate::sources::error::ParseError;

/// One guest of `.vmlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmlistEntry {
    pub vmid: String,
    pub node: String,
    pub ty: GuestType,
}

/// `.vmlist`: every guest of the cluster, with entries of unknown types set apart (logged by
/// the reader, never a failure).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vmlist {
    pub guests: Vec<VmlistEntry>,
    /// (vmid, type) of entries whose type this exporter does not know.
    pub unknown: Vec<(String, String)>,
}

impl Vmlist {
    /// The guests on `node`, sorted by vmid (numerically).
    pub fn on_node(&self, node: &str) -> Vec<&VmlistEntry> {
        let mut v: Vec<&VmlistEntry> = self.guests.iter().filter(|g| g.node == node).collect();
        // Compared in place: a key of (length, clone) was two allocations per comparison,
        // some hundreds per scrape.
        v.sort_by(|a, b| (a.vmid.len(), &a.vmid).cmp(&(b.vmid.len(), &b.vmid)));
        v
    }
}

pub fn parse_vmlist(text: &str) -> Result<Vmlist, ParseError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ParseError::new(".vmlist", &e).at(e.line()))?;
    let obj = v.as_object().ok_or_else(|| ParseError::new(".vmlist", "not a JSON object"))?;
    let mut out = Vmlist::default();
    let Some(ids) = obj.get("ids") else {
        // No guest in the cluster.
        return Ok(out);
    };
    let ids = ids.as_object().ok_or_else(|| ParseError::new(".vmlist", "\"ids\" is not an object"))?;
    for (vmid, e) in ids {
        if vmid.is_empty() || !vmid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let node = e.get("node").and_then(json_string).unwrap_or_default();
        let ty = e.get("type").and_then(json_string).unwrap_or_default();
        match GuestType::from_name(&ty) {
            Some(ty) if !node.is_empty() => out.guests.push(VmlistEntry { vmid: vmid.clone(), node, ty }),
            _ => out.unknown.push((vmid.clone(), ty)),
        }
    }
    out.guests.sort_by_key(|g| (g.vmid.len(), g.vmid.clone()));
    Ok(out)
}

/// A node of `.members`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub id: u64,
    pub online: bool,
}

/// `.members`: this node's name and, in a cluster, the cluster and its nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    pub nodename: String,
    pub cluster: Option<ClusterInfo>,
    pub nodes: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub name: String,
    /// The corosync config version.
    pub version: u64,
    pub nodes: u64,
    pub quorate: bool,
}

pub fn parse_members(text: &str) -> Result<Members, ParseError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ParseError::new(".members", &e).at(e.line()))?;
    let obj = v.as_object().ok_or_else(|| ParseError::new(".members", "not a JSON object"))?;
    let mut out =
        Members { nodename: obj.get("nodename").and_then(json_string).unwrap_or_default(), ..Members::default() };
    if let Some(c) = obj.get("cluster").and_then(Value::as_object) {
        out.cluster = Some(ClusterInfo {
            name: c.get("name").and_then(json_string).unwrap_or_default(),
            version: c.get("version").and_then(json_u64).unwrap_or(0),
            nodes: c.get("nodes").and_then(json_u64).unwrap_or(0),
            quorate: c.get("quorate").and_then(json_u64).unwrap_or(0) != 0,
        });
    }
    if let Some(list) = obj.get("nodelist").and_then(Value::as_object) {
        for (name, n) in list {
            out.nodes.push(Member {
                name: name.clone(),
                id: n.get("id").and_then(json_u64).unwrap_or(0),
                online: n.get("online").and_then(json_u64).unwrap_or(0) != 0,
            });
        }
        out.nodes.sort_by_key(|n| n.id);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As status.c prints it (note the lone newline before the closing brace).
    const VMLIST: &str = "{\n\"version\": 12,\n\"ids\": {\n\"100\": { \"node\": \"pve1\", \"type\": \"qemu\", \"version\": 3 },\n\
        \"1000\": { \"node\": \"pve1\", \"type\": \"qemu\", \"version\": 9 },\n\
        \"101\": { \"node\": \"pve1\", \"type\": \"lxc\", \"version\": 5 },\n\
        \"200\": { \"node\": \"pve2\", \"type\": \"qemu\", \"version\": 4 },\n\
        \"300\": { \"node\": \"pve1\", \"type\": \"openvz\", \"version\": 1 }}\n\n}\n";

    #[test]
    fn vmlist_of_pmxcfs() {
        let l = parse_vmlist(VMLIST).unwrap();
        let mine: Vec<(&str, GuestType)> = l.on_node("pve1").iter().map(|g| (g.vmid.as_str(), g.ty)).collect();
        assert_eq!(mine, vec![("100", GuestType::Qemu), ("101", GuestType::Lxc), ("1000", GuestType::Qemu)]);
        assert_eq!(l.on_node("pve2").len(), 1);
        assert_eq!(l.unknown, vec![("300".to_string(), "openvz".to_string())]);
        assert!(parse_vmlist("{\n\"version\": 1\n\n}\n").unwrap().guests.is_empty(), "no guests: no ids");
        for bad in ["", "[]", "{\"ids\": 3}", "{\"ids\": {\"1\": 5}}", "{"] {
            if let Ok(l) = parse_vmlist(bad) {
                assert!(l.guests.is_empty(), "{bad:?}");
            }
        }
    }

    #[test]
    fn members_of_pmxcfs() {
        let m = parse_members(
            "{\n\"nodename\": \"pve1\",\n\"version\": 7,\n\"cluster\": { \"name\": \"prod\", \"version\": 3, \"nodes\": 2, \"quorate\": 1 },\n\
             \"nodelist\": {\n  \"pve2\": { \"id\": 2, \"online\": 0, \"ip\": \"192.0.2.2\"},\n  \"pve1\": { \"id\": 1, \"online\": 1, \"ip\": \"192.0.2.1\"}\n  }\n}\n",
        )
        .unwrap();
        assert_eq!(m.nodename, "pve1");
        assert_eq!(m.cluster, Some(ClusterInfo { name: "prod".into(), version: 3, nodes: 2, quorate: true }));
        assert_eq!(
            m.nodes.iter().map(|n| (n.name.as_str(), n.online)).collect::<Vec<_>>(),
            vec![("pve1", true), ("pve2", false)]
        );
        let single = parse_members("{\n\"nodename\": \"pve1\",\n\"version\": 0\n}\n").unwrap();
        assert_eq!((single.nodename.as_str(), single.cluster, single.nodes.len()), ("pve1", None, 0));
        assert!(parse_members("nope").is_err());
    }
}

//! PVE's HA state, from the pmxcfs files the HA stack writes and its API serves:
//!
//! - `/etc/pve/ha/manager_status` (JSON, written by the CRM master): `master_node`,
//!   `node_status` (every cluster node and its HA state), `service_status` (each resource's
//!   node and runtime state);
//! - `/etc/pve/nodes/<node>/lrm_status` (JSON, written by each node's LRM): `mode`, `state`,
//!   `timestamp`;
//! - `/etc/pve/ha/resources.cfg` (section config): the configured resources
//!   (`vm: 100` / `ct: 101` with `state`, `max_restart`, `max_relocate`, `failback`, ...).
//!
//! `GET /cluster/ha/status/manager_status` returns the first file plus the second of every node
//! of `node_status`, `GET /cluster/ha/resources` the third: the same types serve both sources.
//! Parsers are lenient about JSON types (PVE writes some numbers as strings) and never panic.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;

use crate::{
    host::{BlockingGate, HostRoot},
    sources::{
        error::{ParseError, SourceError},
        pve::config::ParsedFile,
    },
};

/// The CRM's view of the cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ManagerStatus {
    /// The current CRM master; None while no CRM is master (HA idle or failing over).
    pub master_node: Option<String>,
    /// node -> HA state of the node (`online`, `maintenance`, `unknown`, `fence`, `gone`).
    pub node_status: BTreeMap<String, String>,
    /// sid (`vm:100`) -> where and how the resource runs.
    pub service_status: BTreeMap<String, ServiceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceStatus {
    pub node: String,
    /// Runtime state: `started`, `stopped`, `migrate`, `relocate`, `fence`, `recovery`, `error`, ...
    pub state: String,
}

/// One node's LRM, as it last wrote its status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LrmStatus {
    /// `active`, `restart`, `maintenance`, `shutdown`, ...
    pub mode: Option<String>,
    /// Unix time of the LRM's last status write.
    pub timestamp: Option<f64>,
}

/// A configured HA resource. Values the configuration leaves out are PVE's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaResource {
    pub sid: String,
    /// `vm` or `ct`.
    pub kind: String,
    pub max_restart: u64,
    pub max_relocate: u64,
    pub failback: bool,
}

/// PVE's defaults for resource properties left out of resources.cfg.
pub const DEFAULT_MAX_RESTART: u64 = 1;
pub const DEFAULT_MAX_RELOCATE: u64 = 1;
pub const DEFAULT_FAILBACK: bool = true;

/// Everything the HA collector exports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HaState {
    pub manager: ManagerStatus,
    /// node -> its LRM status (nodes of `node_status` whose LRM has written one).
    pub lrm: BTreeMap<String, LrmStatus>,
    pub resources: Vec<HaResource>,
}

// ---- Lenient JSON values (shared with the API parsers) ----------------------------------------

/// A string, or a number written as one.
pub fn json_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A finite number, or a string holding one.
pub fn json_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

/// A non-negative integer, or a string holding one.
pub fn json_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A boolean as PVE writes them: `true`/`false`, `1`/`0`, `"1"`/`"0"`.
pub fn json_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        other => json_u64(other).and_then(|n| match n {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }),
    }
}

// ---- From JSON values (both sources) -----------------------------------------------------------

/// The manager status object. A missing or empty object (HA never used) is the default.
pub fn manager_status_from_json(v: &Value) -> Result<ManagerStatus, ParseError> {
    let obj = match v {
        Value::Null => return Ok(ManagerStatus::default()),
        Value::Object(o) => o,
        other => return Err(ParseError::new("manager_status", format!("expected an object, got {}", kind(other)))),
    };
    let mut m = ManagerStatus {
        master_node: obj.get("master_node").and_then(json_string).filter(|s| !s.is_empty()),
        ..Default::default()
    };
    if let Some(Value::Object(ns)) = obj.get("node_status") {
        for (node, st) in ns {
            m.node_status.insert(node.clone(), json_string(st).unwrap_or_default());
        }
    }
    if let Some(Value::Object(ss)) = obj.get("service_status") {
        for (sid, st) in ss {
            let field = |k: &str| st.get(k).and_then(json_string).unwrap_or_default();
            m.service_status.insert(sid.clone(), ServiceStatus { node: field("node"), state: field("state") });
        }
    }
    Ok(m)
}

/// One node's LRM status object.
pub fn lrm_status_from_json(v: &Value) -> LrmStatus {
    LrmStatus {
        mode: v.get("mode").and_then(json_string).filter(|s| !s.is_empty()),
        timestamp: v.get("timestamp").and_then(json_f64),
    }
}

/// One resource of `/cluster/ha/resources`; None without a usable `sid`.
pub fn resource_from_json(v: &Value) -> Option<HaResource> {
    let sid = v.get("sid").and_then(json_string).filter(|s| !s.is_empty())?;
    let kind = v
        .get("type")
        .and_then(json_string)
        .or_else(|| sid.split_once(':').map(|(t, _)| t.to_string()))
        .unwrap_or_default();
    Some(HaResource {
        kind,
        max_restart: v.get("max_restart").and_then(json_u64).unwrap_or(DEFAULT_MAX_RESTART),
        max_relocate: v.get("max_relocate").and_then(json_u64).unwrap_or(DEFAULT_MAX_RELOCATE),
        failback: v.get("failback").and_then(json_bool).unwrap_or(DEFAULT_FAILBACK),
        sid,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---- The pmxcfs files --------------------------------------------------------------------------

/// `/etc/pve/ha/manager_status`. pmxcfs files can be empty (written, never filled): that is
/// the default, not an error.
pub fn parse_manager_status(text: &str) -> Result<ManagerStatus, ParseError> {
    if text.trim().is_empty() {
        return Ok(ManagerStatus::default());
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ParseError::new("manager_status", format!("not JSON: {e}")).at(e.line()))?;
    manager_status_from_json(&v)
}

/// `/etc/pve/nodes/<node>/lrm_status`.
pub fn parse_lrm_status(text: &str) -> Result<LrmStatus, ParseError> {
    if text.trim().is_empty() {
        return Ok(LrmStatus::default());
    }
    let v: Value =
        serde_json::from_str(text).map_err(|e| ParseError::new("lrm_status", format!("not JSON: {e}")).at(e.line()))?;
    if !v.is_object() {
        return Err(ParseError::new("lrm_status", format!("expected an object, got {}", kind(&v))));
    }
    Ok(lrm_status_from_json(&v))
}

/// `/etc/pve/ha/resources.cfg`: sections `<type>: <name>` at column 0, properties indented
/// `<key> <value>`, `#` comments. Lines that fit nowhere are ignored; a repeated sid keeps the
/// last section (as PVE's section config does).
pub fn parse_resources_cfg(text: &str) -> Vec<HaResource> {
    // Sections in order, a replaced one left empty, and where each sid is: linear in sections.
    let mut out: Vec<Option<HaResource>> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            current = None;
            continue;
        }
        if line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            current = None;
            let Some((kind, name)) = line.split_once(':') else { continue };
            let (kind, name) = (kind.trim(), name.trim());
            let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid(kind) || !valid(name) {
                continue;
            }
            let sid = format!("{kind}:{name}");
            if let Some(i) = at.insert(sid.clone(), out.len()) {
                out[i] = None;
            }
            out.push(Some(HaResource {
                sid,
                kind: kind.to_string(),
                max_restart: DEFAULT_MAX_RESTART,
                max_relocate: DEFAULT_MAX_RELOCATE,
                failback: DEFAULT_FAILBACK,
            }));
            current = Some(out.len() - 1);
            continue;
        }
        let Some(r) = current.and_then(|i| out.get_mut(i)).and_then(Option::as_mut) else { continue };
        let mut kv = line.trim().splitn(2, char::is_whitespace);
        let (key, value) = (kv.next().unwrap_or(""), kv.next().unwrap_or("").trim());
        let v = Value::String(value.to_string());
        match key {
            "max_restart" => r.max_restart = json_u64(&v).unwrap_or(r.max_restart),
            "max_relocate" => r.max_relocate = json_u64(&v).unwrap_or(r.max_relocate),
            "failback" => r.failback = json_bool(&v).unwrap_or(r.failback),
            _ => {}
        }
    }
    out.into_iter().flatten().collect()
}

/// One node's lrm_status, parsed again only when it changes.
type LrmFile = Arc<ParsedFile<Result<LrmStatus, ParseError>>>;

/// Reads the HA files through the pmxcfs gate, parsing each again only when it changes.
#[derive(Debug, Default)]
pub struct HaReader {
    manager: ParsedFile<Result<ManagerStatus, ParseError>>,
    resources: ParsedFile<Vec<HaResource>>,
    lrm: Mutex<HashMap<String, LrmFile>>,
}

impl HaReader {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The HA state below `host`, within `timeout`. Ok(None): no manager_status (HA has never
    /// run in this cluster, or /etc/pve is not a PVE cluster file system). A node whose
    /// lrm_status cannot be read or parsed is left out of `lrm` and named in the errors.
    pub fn read(
        self: &Arc<Self>,
        host: &HostRoot,
        gate: &BlockingGate,
        timeout: Duration,
    ) -> io::Result<(Option<HaState>, Vec<SourceError>)> {
        let me = self.clone();
        let host = host.clone();
        gate.call("pmxcfs", timeout, move || me.read_blocking(&host))?
    }

    fn read_blocking(&self, host: &HostRoot) -> io::Result<(Option<HaState>, Vec<SourceError>)> {
        let mut errors = Vec::new();
        let manager = match self.manager.get(&host.path("etc/pve/ha/manager_status"), parse_manager_status)? {
            None => return Ok((None, errors)),
            Some(m) => match m.as_ref() {
                Ok(m) => m.clone(),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("ha/manager_status: {e}"))),
            },
        };
        let resources = self
            .resources
            .get(&host.path("etc/pve/ha/resources.cfg"), parse_resources_cfg)?
            .map(|r| r.as_ref().clone())
            .unwrap_or_default();
        let mut lrm = BTreeMap::new();
        let files: Vec<(String, LrmFile)> = {
            let mut map = self.lrm.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|node, _| manager.node_status.contains_key(node));
            manager.node_status.keys().map(|n| (n.clone(), map.entry(n.clone()).or_default().clone())).collect()
        };
        for (node, file) in files {
            if !valid_node_name(&node) {
                errors.push(SourceError::invalid(
                    format!("node name {node:?} in manager_status"),
                    "not a valid node name",
                ));
                continue;
            }
            let path = host.path(Path::new("etc/pve/nodes").join(&node).join("lrm_status"));
            match file.get(&path, parse_lrm_status) {
                // Not written (yet): the LRM of that node has never run.
                Ok(None) => {}
                Ok(Some(st)) => match st.as_ref() {
                    Ok(st) => {
                        lrm.insert(node, st.clone());
                    }
                    Err(e) => errors.push(e.clone().input(format!("nodes/{node}/lrm_status")).into()),
                },
                Err(e) => errors.push(SourceError::io(path, e)),
            }
        }
        Ok((Some(HaState { manager, lrm, resources }), errors))
    }
}

/// PVE node names are host names: letters, digits, `-` (and we allow `.`, `_`); nothing that
/// could leave a directory or a URL path segment.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANAGER: &str = r#"{"master_node":"node03","node_status":{"node01":"online","node02":"online","node03":"online","node04":"maintenance","node05":"online"},"service_status":{"vm:106":{"node":"node04","running":1,"state":"started","uid":"abc"},"ct:107":{"node":"node01","state":"stopped"}},"timestamp":1774016351}"#;

    #[test]
    fn many_resources_parse_in_one_pass() {
        let text: String =
            (0..40_000).map(|i| format!("vm: {}\n\tmax_restart {}\n\n", i % 20_000, i / 20_000)).collect();
        let r = parse_resources_cfg(&text);
        assert_eq!(r.len(), 20_000);
        assert!(r.iter().all(|r| r.max_restart == 1), "the last section of a repeated sid wins");
        assert_eq!(r[0].sid, "vm:0");
    }

    #[test]
    fn manager_status_of_the_spec() {
        let m = parse_manager_status(MANAGER).unwrap();
        assert_eq!(m.master_node.as_deref(), Some("node03"));
        assert_eq!(m.node_status.len(), 5);
        assert_eq!(m.node_status["node04"], "maintenance");
        assert_eq!(m.service_status["vm:106"], ServiceStatus { node: "node04".into(), state: "started".into() });
        assert_eq!(m.service_status["ct:107"].state, "stopped");
    }

    #[test]
    fn manager_status_edge_cases() {
        assert_eq!(parse_manager_status("").unwrap(), ManagerStatus::default());
        assert_eq!(parse_manager_status("{}").unwrap(), ManagerStatus::default());
        let m =
            parse_manager_status(r#"{"master_node":"","node_status":{"a":7},"service_status":{"vm:1":5}}"#).unwrap();
        assert_eq!(m.master_node, None);
        assert_eq!(m.node_status["a"], "7");
        assert_eq!(m.service_status["vm:1"], ServiceStatus::default());
        for bad in ["[", "[]", "42", "\"x\"", "{\"master_node\":"] {
            assert!(parse_manager_status(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lrm_status() {
        let l = parse_lrm_status(r#"{"mode":"active","results":{},"state":"active","timestamp":1774016350}"#).unwrap();
        assert_eq!(l, LrmStatus { mode: Some("active".into()), timestamp: Some(1_774_016_350.0) });
        let l = parse_lrm_status(r#"{"mode":"maintenance","timestamp":"1774016351"}"#).unwrap();
        assert_eq!(l.timestamp, Some(1_774_016_351.0));
        assert_eq!(parse_lrm_status(" \n").unwrap(), LrmStatus::default());
        assert!(parse_lrm_status("[1]").is_err());
        assert!(parse_lrm_status("{").is_err());
    }

    #[test]
    fn resources_cfg() {
        let r = parse_resources_cfg(
            "# HA resources\nvm: 106\n\tstate started\n\tmax_restart 2\n\tmax_relocate 2\n\tfailback 1\n\n\
             ct: 107\n\tgroup prefer-node01\n\tstate stopped\n\tfailback 0\n\nvm: 108\n\tmax_restart x\n\tcomment a: b\n\n\
             garbage line\nvm: \n\tmax_restart 5\nvm: 106\n\tmax_restart 3\n",
        );
        let sids: Vec<&str> = r.iter().map(|r| r.sid.as_str()).collect();
        assert_eq!(sids, ["ct:107", "vm:108", "vm:106"]);
        assert_eq!(
            r[0],
            HaResource { sid: "ct:107".into(), kind: "ct".into(), max_restart: 1, max_relocate: 1, failback: false }
        );
        assert_eq!((r[1].max_restart, r[1].max_relocate, r[1].failback), (1, 1, true), "defaults");
        assert_eq!((r[2].max_restart, r[2].max_relocate), (3, 1), "the last section of a repeated sid wins");
        assert!(parse_resources_cfg("").is_empty());
        assert!(parse_resources_cfg("\u{0}:\u{1}\n\t\t\n:\n").is_empty());
    }

    #[test]
    fn resources_from_the_api() {
        let v: Value = serde_json::from_str(
            r#"[{"sid":"vm:106","type":"vm","state":"started","max_restart":2,"max_relocate":"2","failback":1,"digest":"x"},
                {"sid":"ct:107","failback":false},{"type":"vm"},{"sid":""}]"#,
        )
        .unwrap();
        let r: Vec<HaResource> = v.as_array().unwrap().iter().filter_map(resource_from_json).collect();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            HaResource { sid: "vm:106".into(), kind: "vm".into(), max_restart: 2, max_relocate: 2, failback: true }
        );
        assert_eq!((r[1].kind.as_str(), r[1].failback, r[1].max_restart), ("ct", false, 1));
    }

    #[test]
    fn lenient_values() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(json_f64(&v("\"3.12\"")), Some(3.12));
        assert_eq!(json_f64(&v("\"N/A\"")), None);
        assert_eq!(json_f64(&v("null")), None);
        assert_eq!(json_u64(&v("-1")), None);
        assert_eq!(json_bool(&v("\"1\"")), Some(true));
        assert_eq!(json_bool(&v("2")), None);
        assert_eq!(json_string(&v("8")).as_deref(), Some("8"));
    }

    #[test]
    fn node_names() {
        assert!(valid_node_name("pve-1") && valid_node_name("node01"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", "a%2f"] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn reader_of_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("etc/pve/ha")).unwrap();
        for n in ["node01", "node02", "node03"] {
            std::fs::create_dir_all(p.join("etc/pve/nodes").join(n)).unwrap();
        }
        let host = HostRoot::new(p);
        let r = HaReader::new();
        let gate = BlockingGate::default();
        let t = Duration::from_secs(5);
        // No manager_status: HA never ran.
        let (st, errors) = r.read(&host, &gate, t).unwrap();
        assert!(st.is_none() && errors.is_empty());
        std::fs::write(
            p.join("etc/pve/ha/manager_status"),
            r#"{"master_node":"node01","node_status":{"node01":"online","node02":"online","node03":"online","../x":"online"}}"#,
        )
        .unwrap();
        std::fs::write(p.join("etc/pve/nodes/node01/lrm_status"), r#"{"mode":"active","timestamp":100}"#).unwrap();
        std::fs::write(p.join("etc/pve/nodes/node02/lrm_status"), "garbage").unwrap();
        let (st, errors) = r.read(&host, &gate, t).unwrap();
        let st = st.unwrap();
        assert_eq!(st.lrm.keys().collect::<Vec<_>>(), ["node01"]);
        assert!(st.resources.is_empty(), "no resources.cfg");
        assert_eq!(errors.len(), 2, "{errors:?}");
        // A broken manager_status fails the whole read.
        std::fs::write(p.join("etc/pve/ha/manager_status"), "{").unwrap();
        assert!(r.read(&host, &gate, t).is_err());
    }
}

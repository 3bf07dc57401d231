//! Storage metrics: every storage of /etc/pve/storage.cfg is described
//! (`node_storage_info`, `node_storage_enabled`), and every one that can be sized on this host
//! is sized honestly (`node_storage_{size,free,used}_bytes`):
//!
//! - `dir`, `btrfs`, `nfs`, `cifs`, `cephfs`, `glusterfs`: statvfs of the path below `--root`;
//!   the network file systems (and `dir` with `is_mountpoint`) only while the path is a mount
//!   point, since an unmounted path would report the file system below it;
//! - `zfspool`: `zfs get used,available <dataset>`, plus the whole pool (`zpool list`);
//! - `lvm`: `vgs`; `lvmthin`: `lvs` of the thin pool.
//!
//! Disabled storages and storages restricted to other nodes are described, not sized.
//! Three collectors, so operators see which part failed: `storage` (storage.cfg and statvfs),
//! `storage_zfs` and `storage_lvm` (their commands; they run only when such storages exist).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{Collector, Context, Error, Group, Setup};
use crate::{
    catalog::*,
    config::Config,
    host::{BlockingGate, HostRoot},
    metrics::MetricSet,
    sources::{
        pve::storage_cfg::{Sizing, Storage, StorageCfg, StorageCfgReader, read_node_name},
        storage::command::{Slot, Tools},
        storage::lvm,
        storage::statvfs::{self, MountTable, Usage},
        storage::zfs::{self, PoolSpace},
    },
};

/// Long-lived state of the storage collectors.
pub struct StorageState {
    cfg: StorageCfgReader,
    /// The /etc/pve gate, shared with `pve_config`.
    pmxcfs: BlockingGate,
    /// One gate per statvfs path: a hung mount holds one thread, and later scrapes fail fast
    /// on it instead of starting another.
    statvfs_gates: Mutex<HashMap<PathBuf, BlockingGate>>,
    tools: Tools,
    zfs: Slot,
    zpool: Slot,
    vgs: Slot,
    lvs: Slot,
    timeout: Duration,
}

impl StorageState {
    pub fn new(config: &Config, pmxcfs: BlockingGate) -> Self {
        Self::with_tools(Tools::new(config.command_path.as_deref()), config.storage_timeout, pmxcfs)
    }

    fn with_tools(tools: Tools, timeout: Duration, pmxcfs: BlockingGate) -> Self {
        Self {
            cfg: StorageCfgReader::default(),
            pmxcfs,
            statvfs_gates: Mutex::default(),
            tools,
            zfs: Slot::default(),
            zpool: Slot::default(),
            vgs: Slot::default(),
            lvs: Slot::default(),
            timeout,
        }
    }
}

impl StorageState {
    /// Storage paths whose statvfs hangs: (path, for how long).
    fn hung(&self) -> Vec<(String, Duration)> {
        let gates = self.statvfs_gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.iter().filter_map(|(p, g)| Some((p.display().to_string(), g.hung()?))).collect()
    }
}

/// What this scrape knows about each storage.
struct Plan {
    cfg: Arc<StorageCfg>,
    /// Parallel to `cfg.storages`.
    entries: Vec<Entry>,
    pools: BTreeMap<String, PoolSpace>,
}

struct Entry {
    /// Enabled and meant for this node: the only storages that are sized.
    enabled: bool,
    sizing: Sizing,
    usage: Option<Usage>,
    /// Not active on this node, and why (as PVE would not activate it: its path is missing,
    /// its file system is not mounted, its thin pool is inactive). Not a failure.
    inactive: Option<String>,
}

impl Plan {
    fn new(cfg: Arc<StorageCfg>, node: Option<&str>) -> Self {
        let entries = cfg
            .storages
            .iter()
            .map(|s| Entry {
                enabled: !s.disabled() && s.on_node(node),
                sizing: s.sizing(),
                usage: None,
                inactive: None,
            })
            .collect();
        Self { cfg, entries, pools: BTreeMap::new() }
    }

    /// (storage, entry) of the enabled storages.
    fn enabled(&mut self) -> impl Iterator<Item = (&Storage, &mut Entry)> {
        self.cfg.storages.iter().zip(self.entries.iter_mut()).filter(|(_, e)| e.enabled)
    }

    /// The sizings of the enabled storages (owned: sizing then updates the entries).
    fn wanted(&self) -> Vec<Sizing> {
        self.entries.iter().filter(|e| e.enabled).map(|e| e.sizing.clone()).collect()
    }

    fn wants(&self, f: impl Fn(&Sizing) -> bool) -> bool {
        self.entries.iter().any(|e| e.enabled && f(&e.sizing))
    }
}

pub fn new(setup: &Setup) -> Box<dyn Collector> {
    Box::new(StorageCollector { st: StorageState::new(setup.config, setup.stages.pve_config.gate().clone()) })
}

/// The `storage` collector, with its parts `storage_zfs` and `storage_lvm` (they run only when
/// such storages exist).
struct StorageCollector {
    st: StorageState,
}

impl Collector for StorageCollector {
    fn name(&self) -> &'static str {
        "storage"
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        FAMILIES
    }
    fn group(&self) -> Group {
        Group::Storage
    }
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error> {
        let st = &self.st;
        let cfg = st
            .cfg
            .read(cx.host, &st.pmxcfs, cx.config.pmxcfs_timeout)
            .map_err(|err| Error::io(cx.host.path("etc/pve/storage.cfg"), err))?;
        // No storage.cfg: not a PVE host (or not yet), nothing to report and nothing wrong.
        let Some(cfg) = cfg else { return Ok(()) };
        let node = read_node_name(cx.host);
        let mut plan = Plan::new(cfg, node.as_deref());
        let r = size_by_statvfs(st, cx.host, &mut plan);
        // The parts report their own runs, after this one's: so the run is recorded first.
        let (zfs, lvm) = (
            plan.wants(|s| matches!(s, Sizing::ZfsDataset(_))),
            plan.wants(|s| matches!(s, Sizing::LvmVg(_) | Sizing::LvmThin { .. })),
        );
        let mut parts: Vec<(&'static str, std::time::Duration, Result<(), Error>)> = Vec::new();
        if zfs && cx.enabled("storage_zfs") {
            let (d, r) = super::error::run_timed(|| size_zfs(st, &mut plan));
            parts.push(("storage_zfs", d, r));
        }
        if lvm && cx.enabled("storage_lvm") {
            let (d, r) = super::error::run_timed(|| size_lvm(st, &mut plan));
            parts.push(("storage_lvm", d, r));
        }
        emit(&plan, out);
        if cx.enabled("ppe") {
            emit_ppe(&plan, node.as_deref().unwrap_or(""), out);
        }
        cx.after(parts);
        r
    }
    fn stuck(&self) -> Vec<(String, Duration)> {
        self.st.hung().into_iter().map(|(p, t)| (format!("statvfs of storage path {p}"), t)).collect()
    }
}

/// statvfs of the enabled path storages, all at once (each limited to the storage timeout,
/// so a hung NFS server delays the scrape by one timeout at most).
fn size_by_statvfs(st: &StorageState, host: &HostRoot, plan: &mut Plan) -> Result<(), Error> {
    let mut errors = Vec::new();
    let needs_mounts =
        plan.entries.iter().any(|e| e.enabled && matches!(&e.sizing, Sizing::Statvfs { mount: Some(_), .. }));
    let mounts = if needs_mounts {
        host.read_to_string("proc/self/mountinfo")
            .map(|t| MountTable::new(&statvfs::parse_mountinfo(&t)))
            .map_err(|err| errors.push(Error::io(host.path("proc/self/mountinfo"), err)))
            .ok()
    } else {
        None
    };
    let root = std::fs::canonicalize(host.root()).unwrap_or_else(|_| host.root().to_path_buf());

    // (entry index, host path, path below the root)
    let mut jobs: Vec<(usize, String, PathBuf)> = Vec::new();
    for (i, (s, entry)) in plan.cfg.storages.iter().zip(plan.entries.iter_mut()).enumerate() {
        match &entry.sizing {
            Sizing::Invalid(why) if entry.enabled => {
                errors.push(Error::Missing { what: s.name.clone(), why: why.clone() })
            }
            Sizing::Statvfs { path, mount } if entry.enabled => {
                if let Some(m) = mount {
                    let Some(table) = &mounts else { continue };
                    if !table.is_mount_point(Path::new(m), &root) {
                        log::debug!("storage {}: {m} is not mounted: not sized", s.name);
                        entry.inactive = Some(format!("{m} is not mounted"));
                        continue;
                    }
                }
                jobs.push((i, path.clone(), host.path(path)));
            }
            _ => {}
        }
    }
    // One statvfs per distinct path (several storages may share one; a second call on the
    // same gate would find it busy).
    let mut paths: Vec<PathBuf> = jobs.iter().map(|(_, _, full)| full.clone()).collect();
    paths.sort_unstable();
    paths.dedup();
    let gates: Vec<BlockingGate> = {
        let mut map = st.statvfs_gates.lock().unwrap_or_else(|p| p.into_inner());
        // Forget gates of paths no longer configured (idle ones only: a hung call keeps its own).
        map.retain(|p, _| paths.contains(p));
        paths.iter().map(|full| map.entry(full.clone()).or_default().clone()).collect()
    };
    // Every path asked at once on its own gate's worker, each answer waited for until one
    // deadline: a hung mount costs the timeout once, not once per path.
    let timeout = st.timeout;
    let deadline = Instant::now() + crate::deadline::cap(timeout);
    let pending: Vec<_> = paths
        .iter()
        .zip(&gates)
        .map(|(full, gate)| {
            let target = full.clone();
            gate.start("statvfs", timeout, move || statvfs::statvfs(&target))
        })
        .collect();
    // Shared: several storages may have the same path, and so the same answer.
    let results: Vec<Result<Usage, Arc<std::io::Error>>> =
        pending.into_iter().map(|p| p.and_then(|p| p.wait(deadline)).and_then(|r| r).map_err(Arc::new)).collect();
    for (i, path, full) in &jobs {
        let Ok(k) = paths.binary_search(full) else { continue };
        match &results[k] {
            Ok(u) => plan.entries[*i].usage = Some(*u),
            // An unplugged disk, a share's mount point not there: PVE cannot activate the
            // storage either ("directory does not exist"). The storage is inactive, the
            // collector is fine.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                plan.entries[*i].inactive = Some(format!("{path} does not exist"));
            }
            Err(err) => {
                errors.push(Error::source(format!("{}: statvfs {path}", plan.cfg.storages[*i].name), err.clone()))
            }
        }
    }
    Error::all(errors)
}

/// Distinct values in first-seen order.
fn distinct<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    it.filter(|x| seen.insert(*x)).collect()
}

/// `zfs get` of every enabled zfspool storage's dataset and `zpool list` of their pools, one
/// run each.
fn size_zfs(st: &StorageState, plan: &mut Plan) -> Result<(), Error> {
    let wanted = plan.wanted();
    let datasets = distinct(wanted.iter().filter_map(|s| match s {
        Sizing::ZfsDataset(ds) => Some(ds.as_str()),
        _ => None,
    }));
    let mut errors = Vec::new();
    match zfs::dataset_space(&st.tools, &st.zfs, &datasets, st.timeout) {
        Err(err) => errors.push(Error::Command(err)),
        Ok(report) => {
            for (s, entry) in plan.enabled() {
                let Sizing::ZfsDataset(ds) = &entry.sizing else { continue };
                match report.found.get(ds) {
                    Some(zfs::DatasetSpace { used: Some(used), available: Some(avail) }) => {
                        entry.usage = Some(Usage { size: used.saturating_add(*avail), free: *avail, used: *used });
                    }
                    _ => errors.push(Error::Missing { what: s.name.clone(), why: report.missing(ds) }),
                }
            }
        }
    }
    let pools = distinct(datasets.iter().map(|d| zfs::pool_of(d)));
    match zfs::pool_space(&st.tools, &st.zpool, &pools, st.timeout) {
        Err(err) => errors.push(Error::Command(err)),
        Ok(report) => {
            for p in pools {
                match report.found.get(p) {
                    Some(space) => {
                        plan.pools.insert(p.to_string(), *space);
                    }
                    None => errors.push(Error::Missing { what: "zpool".into(), why: report.missing(p) }),
                }
            }
        }
    }
    Error::all(errors)
}

/// `vgs` of the enabled lvm storages' volume groups and `lvs` of the lvmthin storages' thin
/// pools, one run each.
fn size_lvm(st: &StorageState, plan: &mut Plan) -> Result<(), Error> {
    let mut errors = Vec::new();
    let wanted = plan.wanted();
    let vgs = distinct(wanted.iter().filter_map(|s| match s {
        Sizing::LvmVg(vg) => Some(vg.as_str()),
        _ => None,
    }));
    let thin: Vec<String> = wanted
        .iter()
        .filter_map(|s| match s {
            Sizing::LvmThin { vg, pool } => Some(format!("{vg}/{pool}")),
            _ => None,
        })
        .collect();
    let thin = distinct(thin.iter().map(String::as_str));

    if !vgs.is_empty() {
        match lvm::vg_space(&st.tools, &st.vgs, &vgs, st.timeout) {
            Err(err) => errors.push(Error::Command(err)),
            Ok(report) => {
                for (s, entry) in plan.enabled() {
                    let Sizing::LvmVg(vg) = &entry.sizing else { continue };
                    match report.found.get(vg) {
                        Some(v) => {
                            entry.usage =
                                Some(Usage { size: v.size, free: v.free, used: v.size.saturating_sub(v.free) })
                        }
                        None => errors.push(Error::Missing { what: s.name.clone(), why: report.missing(vg) }),
                    }
                }
            }
        }
    }
    if !thin.is_empty() {
        match lvm::lv_space(&st.tools, &st.lvs, &thin, st.timeout) {
            Err(err) => errors.push(Error::Command(err)),
            Ok(report) => {
                for (s, entry) in plan.enabled() {
                    let Sizing::LvmThin { vg, pool } = &entry.sizing else { continue };
                    let name = format!("{vg}/{pool}");
                    match report.found.get(&name) {
                        Some(lv) if !lv.thin_pool => errors
                            .push(Error::Missing { what: s.name.clone(), why: format!("{name} is not a thin pool") }),
                        Some(lv) => match lv.thin_usage() {
                            Some((used, free)) => entry.usage = Some(Usage { size: lv.size, free, used }),
                            // Not a failure: LVM says the pool is not active; PVE would activate it.
                            None => {
                                log::debug!("storage {}: thin pool {name} is not active: not sized", s.name);
                                entry.inactive = Some(format!("thin pool {name} is not active"));
                            }
                        },
                        None => errors.push(Error::Missing { what: s.name.clone(), why: report.missing(&name) }),
                    }
                }
            }
        }
    }
    Error::all(errors)
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

fn emit(plan: &Plan, out: &mut MetricSet) {
    let name_type = |s: &Storage| [("name", s.name.clone()), ("type", s.kind.clone())];
    let f = out.family(&NODE_STORAGE_INFO);
    for s in &plan.cfg.storages {
        let get = |k: &str| s.get(k).unwrap_or("").to_string();
        f.push(
            [
                ("name", s.name.clone()),
                ("type", s.kind.clone()),
                ("content", s.content()),
                ("path", s.path().unwrap_or_default()),
                ("pool", get("pool")),
                ("vgname", get("vgname")),
                ("thinpool", get("thinpool")),
                ("server", get("server")),
                ("export", get("export")),
                ("nodes", s.nodes().join(",")),
                ("shared", flag(s.shared())),
                ("disabled", flag(s.disabled())),
            ],
            1u64,
        );
    }
    let f = out.family(&NODE_STORAGE_ENABLED);
    for (s, e) in plan.cfg.storages.iter().zip(&plan.entries) {
        f.push(name_type(s), e.enabled);
    }
    let f = out.family(&NODE_STORAGE_ACTIVE);
    for (s, e) in plan.cfg.storages.iter().zip(&plan.entries).filter(|(_, e)| e.enabled) {
        match (&e.usage, &e.inactive) {
            (Some(_), _) => f.push(name_type(s), 1u64),
            (None, Some(_)) => f.push(name_type(s), 0u64),
            // Sizing failed (an error the collector reports) or was not asked: unknown.
            (None, None) => {}
        }
    }
    let f = out.family(&NODE_STORAGE_INACTIVE_INFO);
    for (s, e) in plan.cfg.storages.iter().zip(&plan.entries).filter(|(_, e)| e.enabled && e.usage.is_none()) {
        if let Some(why) = &e.inactive {
            f.push([("name", s.name.clone()), ("type", s.kind.clone()), ("reason", why.clone())], 1u64);
        }
    }
    let sized: Vec<(&Storage, Usage)> =
        plan.cfg.storages.iter().zip(&plan.entries).filter_map(|(s, e)| e.usage.map(|u| (s, u))).collect();
    for (def, pick) in [
        (&NODE_STORAGE_SIZE_BYTES, (|u: &Usage| u.size) as fn(&Usage) -> u64),
        (&NODE_STORAGE_FREE_BYTES, |u: &Usage| u.free),
        (&NODE_STORAGE_USED_BYTES, |u: &Usage| u.used),
    ] {
        let f = out.family(def);
        for (s, u) in &sized {
            f.push(name_type(s), pick(u));
        }
    }
    if !plan.pools.is_empty() {
        let f = out.family(&NODE_ZPOOL_SIZE_BYTES);
        for (p, space) in &plan.pools {
            f.push([("pool", p.clone())], space.size);
        }
        let f = out.family(&NODE_ZPOOL_FREE_BYTES);
        for (p, space) in &plan.pools {
            f.push([("pool", p.clone())], space.free);
        }
    }
}

/// prometheus-pve-exporter's storage series (`/cluster/resources` type `storage`): the
/// storages enabled for this node, `id="storage/<node>/<name>"`, up when sized ("available").
fn emit_ppe(plan: &Plan, node: &str, out: &mut MetricSet) {
    for (s, e) in plan.cfg.storages.iter().zip(&plan.entries) {
        if !e.enabled {
            continue;
        }
        let id = format!("storage/{node}/{}", s.name);
        let one = || [("id", id.clone())];
        let mut content: Vec<String> = s.content().split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
        content.sort();
        out.family(&PPE_STORAGE_INFO).push(
            [
                ("id", id.clone()),
                ("node", node.to_string()),
                ("storage", s.name.clone()),
                ("plugintype", s.kind.clone()),
                ("content", content.join(",")),
            ],
            1u64,
        );
        out.family(&PPE_STORAGE_SHARED).push(one(), s.shared());
        out.family(&PPE_UP).push(one(), e.usage.is_some());
        if let Some(u) = e.usage {
            out.family(&PPE_DISK_SIZE).push(one(), u.size);
            out.family(&PPE_DISK_USAGE).push(one(), u.used);
        }
    }
}

/// The catalogue sections this collector fills (PPE's storage series when `ppe` is on).
static FAMILIES: &[&[&crate::catalog::Def]] = &[NODE_STORAGE, PPE_STORAGE, PPE_FAMILIES];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::pve::storage_cfg::parse_storage_cfg;

    fn plan(text: &str, node: Option<&str>) -> Plan {
        Plan::new(Arc::new(parse_storage_cfg(text)), node)
    }

    /// A directory of test doubles; `scripts` are (name, shell script body).
    fn doubles(scripts: &[(&str, &str)]) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in scripts {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    fn state(dir: &Path) -> StorageState {
        StorageState::with_tools(
            Tools::in_dirs(vec![dir.to_path_buf()]),
            Duration::from_secs(10),
            BlockingGate::default(),
        )
    }

    const ZFS_CFG: &str = "zfspool: local-zfs\n\tpool rpool/data\n\nzfspool: tank\n\tpool tank\n\n\
                           zfspool: off\n\tpool gone\n\tdisable\n\nzfspool: elsewhere\n\tpool other\n\tnodes pve2\n";

    #[test]
    fn a_missing_zfs_costs_only_the_zfs_sizes() {
        let dir = doubles(&[]);
        let mut p = plan(ZFS_CFG, Some("pve1"));
        let err = size_zfs(&state(dir.path()), &mut p).unwrap_err().to_string();
        assert_eq!(err, "zfs: not found (not installed?); zpool: not found (not installed?)");
        assert!(p.entries.iter().all(|e| e.usage.is_none()) && p.pools.is_empty());
        // Described all the same.
        let mut out = MetricSet::new("pve");
        emit(&p, &mut out);
        assert_eq!(out.get("pve_node_storage_info").unwrap().samples.len(), 5);
        assert!(out.get("pve_node_storage_size_bytes").unwrap().samples.is_empty());
    }

    #[test]
    fn zfs_sizes_the_datasets_of_enabled_storages_on_this_node() {
        // The doubles check their exact arguments: disabled and other-node storages are not asked for.
        let dir = doubles(&[
            (
                "zfs",
                r#"[ "$*" = "get -Hp -o name,property,value used,available rpool/data tank" ] || { echo "bad args: $*" >&2; exit 2; }
printf 'rpool/data\tused\t100\nrpool/data\tavailable\t900\n'
echo "cannot open 'tank': dataset does not exist" >&2; exit 1"#,
            ),
            ("zpool", r#"[ "$*" = "list -Hp -o name,size,free rpool tank" ] || exit 2; printf 'rpool\t2000\t1500\n'"#),
        ]);
        let mut p = plan(ZFS_CFG, Some("pve1"));
        let err = size_zfs(&state(dir.path()), &mut p).unwrap_err().to_string();
        assert_eq!(
            err,
            "tank: tank: not in the output (exit status: 1: cannot open 'tank': dataset does not exist); \
             zpool: tank: not in the output"
        );
        let u = |name: &str| p.cfg.storages.iter().position(|s| s.name == name).and_then(|i| p.entries[i].usage);
        assert_eq!(u("local-zfs"), Some(Usage { size: 1000, free: 900, used: 100 }));
        assert_eq!(u("tank"), None);
        assert_eq!(p.pools.get("rpool"), Some(&PoolSpace { size: 2000, free: 1500 }));
    }

    #[test]
    fn lvm_sizes_volume_groups_and_thin_pools() {
        let dir = doubles(&[
            (
                "vgs",
                r#"[ "$LVM_SUPPRESS_FD_WARNINGS" = 1 ] || exit 3
echo '{"report":[{"vg":[{"vg_name":"vg_san","vg_size":"1000","vg_free":"250"}]}]}'"#,
            ),
            (
                "lvs",
                r#"echo '{"report":[{"lv":[
{"vg_name":"pve","lv_name":"data","lv_size":"10000","data_percent":"12.50","lv_attr":"twi-aotz--"},
{"vg_name":"pve","lv_name":"idle","lv_size":"10000","data_percent":"","lv_attr":"twi---tz--"},
{"vg_name":"pve","lv_name":"root","lv_size":"10000","data_percent":"","lv_attr":"-wi-ao----"}]}]}'
echo '  Failed to find logical volume "pve/gone"' >&2; exit 5"#,
            ),
        ]);
        let mut p = plan(
            "lvm: san\n\tvgname vg_san\n\nlvmthin: local-lvm\n\tvgname pve\n\tthinpool data\n\n\
             lvmthin: idle\n\tvgname pve\n\tthinpool idle\n\nlvmthin: notthin\n\tvgname pve\n\tthinpool root\n\n\
             lvmthin: gone\n\tvgname pve\n\tthinpool gone\n",
            None,
        );
        let err = size_lvm(&state(dir.path()), &mut p).unwrap_err().to_string();
        assert_eq!(
            err,
            "notthin: pve/root is not a thin pool; gone: pve/gone: not in the output \
             (exit status: 5: Failed to find logical volume \"pve/gone\")"
        );
        let u = |name: &str| p.cfg.storages.iter().position(|s| s.name == name).and_then(|i| p.entries[i].usage);
        assert_eq!(u("san"), Some(Usage { size: 1000, free: 250, used: 750 }));
        assert_eq!(u("local-lvm"), Some(Usage { size: 10000, free: 8750, used: 1250 }));
        assert_eq!(u("idle"), None, "inactive thin pool: not sized, not an error");
    }

    #[test]
    fn lvm_garbage_output_fails_cleanly() {
        let dir = doubles(&[("vgs", "echo 'not json'")]);
        let mut p = plan("lvm: san\n\tvgname vg_san\n", None);
        let err = size_lvm(&state(dir.path()), &mut p).unwrap_err().to_string();
        assert!(err.starts_with("vgs output") && err.contains("not JSON"), "{err}");
    }

    #[test]
    fn statvfs_sizes_local_paths_and_only_mounted_network_paths() {
        let root = tempfile::tempdir().unwrap();
        for d in ["srv/data", "mnt/pve/nas", "mnt/pve/gone", "proc/self"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        std::fs::write(
            root.path().join("proc/self/mountinfo"),
            "27 1 254:0 / / rw - ext4 /dev/vda rw\n40 27 0:45 / /mnt/pve/nas rw - nfs4 10.0.0.1:/e rw\n",
        )
        .unwrap();
        let host = HostRoot::new(root.path());
        let mut p = plan(
            "dir: data\n\tpath /srv/data\n\ndir: data-too\n\tpath /srv//data/\n\nnfs: nas\n\tpath /mnt/pve/nas\n\tserver s\n\texport /e\n\n\
             nfs: gone\n\tpath /mnt/pve/gone\n\tserver s\n\texport /g\n\n\
             dir: missing\n\tpath /srv/missing\n\ncifs: nopath\n\tserver s\n\tshare x\n",
            None,
        );
        let dir = doubles(&[]);
        // A missing path (`local`'s /var/lib/vz and /srv/missing here) is an inactive storage,
        // as for PVE, not a failure; the others are sized.
        size_by_statvfs(&state(dir.path()), &host, &mut p).unwrap();
        let why =
            |name: &str| p.cfg.storages.iter().position(|s| s.name == name).and_then(|i| p.entries[i].inactive.clone());
        assert_eq!(why("missing").as_deref(), Some("/srv/missing does not exist"));
        assert_eq!(why("gone").as_deref(), Some("/mnt/pve/gone is not mounted"));
        assert_eq!(why("data"), None);
        let mut out = MetricSet::new("pve");
        emit(&p, &mut out);
        let text = crate::exposition::render(Arc::new(out), crate::exposition::Format::Text);
        assert!(text.contains("pve_node_storage_active{name=\"missing\",type=\"dir\"} 0"), "{text}");
        assert!(text.contains("pve_node_storage_active{name=\"data\",type=\"dir\"} 1"), "{text}");
        assert!(
            text.contains(
                "pve_node_storage_inactive_info{name=\"gone\",type=\"nfs\",reason=\"/mnt/pve/gone is not mounted\"} 1"
            ),
            "{text}"
        );
        let u = |name: &str| p.cfg.storages.iter().position(|s| s.name == name).and_then(|i| p.entries[i].usage);
        let real = statvfs::statvfs(root.path()).unwrap();
        assert_eq!(u("data").map(|u| u.size), Some(real.size));
        assert_eq!(u("data-too").map(|u| u.size), Some(real.size), "two storages on one path");
        assert_eq!(u("nas").map(|u| u.size), Some(real.size));
        assert_eq!(u("gone"), None, "unmounted nfs is not sized");
        assert_eq!(u("nopath"), None, "cifs at its default /mnt/pve/nopath is not mounted");
    }

    #[test]
    fn without_mountinfo_network_storages_fail_but_local_ones_are_sized() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("var/lib/vz")).unwrap();
        let host = HostRoot::new(root.path());
        let mut p = plan("nfs: nas\n\tserver s\n\texport /e\n", None);
        let dir = doubles(&[]);
        let err = size_by_statvfs(&state(dir.path()), &host, &mut p).unwrap_err().to_string();
        assert!(err.contains("proc/self/mountinfo: "), "{err}");
        assert!(p.entries[0].usage.is_some(), "local is sized");
        assert!(p.entries[1].usage.is_none());
    }

    #[test]
    fn labels_of_the_info_family() {
        let p = plan(
            "nfs: nas\n\tserver fd00::1\n\texport /e\n\tcontent iso,backup\n\tnodes b,a\n\tdisable\n\n\
             lvmthin: tt\n\tvgname pve\n\tthinpool data\n",
            Some("c"),
        );
        let mut out = MetricSet::new("pve");
        emit(&p, &mut out);
        let info = out.get("pve_node_storage_info").unwrap();
        let labels: Vec<String> = info.samples[1].labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            labels,
            [
                "name=nas",
                "type=nfs",
                "content=backup,iso",
                "path=/mnt/pve/nas",
                "pool=",
                "vgname=",
                "thinpool=",
                "server=fd00::1",
                "export=/e",
                "nodes=a,b",
                "shared=1",
                "disabled=1"
            ]
        );
        let t = &info.samples[2].labels;
        assert_eq!((t[5].1.as_str(), t[6].1.as_str(), t[10].1.as_str()), ("pve", "data", "0"));
        let enabled = out.get("pve_node_storage_enabled").unwrap();
        let v: Vec<(&str, &crate::metrics::Value)> =
            enabled.samples.iter().map(|s| (s.labels[0].1.as_str(), &s.value)).collect();
        use crate::metrics::Value::Int;
        // local: enabled; nas: disabled (and on other nodes); tt: enabled.
        assert_eq!(v, [("local", &Int(1)), ("nas", &Int(0)), ("tt", &Int(1))]);
    }
}

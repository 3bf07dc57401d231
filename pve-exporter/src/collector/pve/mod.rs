//! The PVE collectors of node status, VM pressure, HA status and physical disks, each served
//! from one of two sources with the same families and labels:
//!
//! - `local`: the node's own files (/proc, /sys, statvfs, pmxcfs), no credentials; this node
//!   only (HA is cluster-wide anyway: pmxcfs holds every node's LRM status);
//! - `api`: the PVE API with a token; this node (`--pve-scope local`) or every node of the
//!   cluster (`--pve-scope cluster`, one central exporter), fanned out per node.
//!
//! Every collector registers in [`REGISTRY`]; `--collector.<name>` / `--no-collector.<name>`
//! switch each one. Failures are per part: in cluster scope each (collector, node) pair is its
//! own `pve_exporter_collector_success{collector="<collector>/<node>"}`, so one node that fails
//! or hangs costs only its own series.

mod ha_status;
mod node_status;
mod physical_disk;
mod vm_pressure;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Collector, Context, Error, Group, Need, Setup, error::panic_message};
use crate::{
    catalog::Def,
    catalog::PVE_COLLECTOR_INFO,
    config::{Config, PveScope, PveSource},
    deadline::{Backoff, Verdict},
    heldfile::{FdBudget, HeldFiles, OnStale},
    host::{BlockingGate, HostRoot, ScrapeFiles, call_with_timeout},
    metrics::MetricSet,
    sources::{
        pve::api::{self, ApiError, ApiSettings, PveApi, Session, Trust},
        pve::config::vmids_from_listing,
        pve::ha::{HaReader, ManagerStatus, valid_node_name},
        pve::storage_cfg::read_node_name,
    },
};

/// A PVE collector. Node-aware collectors (`per_node`) are asked once per node of the node
/// list; the others once per scrape.
trait PveCollector: Sync {
    fn name(&self) -> &'static str;
    /// Its families, as sections of the catalogue.
    fn families(&self) -> &'static [&'static [&'static Def]];
    fn per_node(&self) -> bool;
    /// Whether the node's own files can serve it (physical_disk: no, PVE runs smartctl).
    fn has_local_source(&self) -> bool {
        true
    }
    /// Err(why) when the host root lacks what the local source reads (checked once at start:
    /// a fixture tree without /proc/loadavg, a host that is not a PVE node).
    fn local_applies(&self, host: &HostRoot, node: Option<&str>, pve_node: bool) -> Result<(), Error>;
    fn local(&self, ctx: &LocalCtx, out: &mut MetricSet) -> Result<(), Error>;
    /// Whether its local source reads the VMs (vm_pressure: each VM process's cgroup): it then
    /// runs in the `vms` group, on the discovery the other per-VM collectors share.
    fn local_reads_vms(&self) -> bool {
        false
    }
    /// `node` is Some for node-aware collectors.
    fn api(&self, ctx: &ApiCtx, node: Option<&str>, out: &mut MetricSet) -> Result<(), Error>;
}

/// Every PVE collector, the one registry: flags, plans and runs all come from here.
static REGISTRY: [&dyn PveCollector; 4] = [
    &node_status::NodeStatusCollector,
    &vm_pressure::VmPressureCollector,
    &ha_status::HaStatusCollector,
    &physical_disk::PhysicalDiskCollector,
];

/// What the local collectors need.
struct LocalCtx<'a, 'c> {
    host: &'a HostRoot,
    /// Host-wide files shared with the other collectors of this collection.
    files: &'a ScrapeFiles,
    /// The /etc/pve gate shared with `pve_config` and `storage`.
    pmxcfs: &'a BlockingGate,
    pmxcfs_timeout: Duration,
    statvfs: &'a BlockingGate,
    statvfs_timeout: Duration,
    ha: &'a Arc<HaReader>,
    /// The VMs' pressure files and their /proc/<pid>/cgroup, held open by QEMU pid
    /// (vm_pressure).
    pressure_files: &'a Mutex<vm_pressure::PressureFiles>,
    emit: HaEmit<'a>,
    /// The collection's stages: the VMs and the cgroup mounts (collectors whose
    /// `local_reads_vms`).
    cx: &'a Context<'c>,
}

/// What the API collectors need.
struct ApiCtx<'a> {
    api: &'a Session<'a>,
    emit: HaEmit<'a>,
}

/// Who emits the cluster-wide HA families, and this node's name.
#[derive(Clone, Copy)]
struct HaEmit<'a> {
    scope: PveScope,
    node: Option<&'a str>,
    always: bool,
}

impl HaEmit<'_> {
    /// In local scope every node runs an exporter: only the CRM master emits the cluster-wide
    /// families (unless `--ha-always-emit`), so they are not duplicated per node.
    fn should_emit(&self, m: &ManagerStatus) -> bool {
        match self.scope {
            PveScope::Cluster => true,
            PveScope::Local => self.always || (self.node.is_some() && m.master_node.as_deref() == self.node),
        }
    }

    fn node(&self) -> Result<&str, Error> {
        self.node.ok_or(Error::Unavailable("cannot tell this node's name (/proc/sys/kernel/hostname)"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Local,
    Api,
}

/// Where one collector reads from; None: off.
struct Plan {
    collector: &'static dyn PveCollector,
    source: Option<Source>,
}

/// Long-lived state of the PVE collectors.
pub struct PveState {
    plans: Vec<Plan>,
    scope: PveScope,
    /// This node's name (kernel host name up to the first dot, as PVE names nodes).
    node: Option<String>,
    always_emit: bool,
    api: Option<PveApi>,
    /// The cluster's node list (cluster scope): guarded, replaced by every successful
    /// `/nodes`, and copied at the start of each update, so a failed `/nodes` keeps the last
    /// known nodes.
    nodes: Mutex<Vec<String>>,
    ha: Arc<HaReader>,
    pmxcfs: BlockingGate,
    statvfs: BlockingGate,
    workers: usize,
    pressure_files: Mutex<vm_pressure::PressureFiles>,
    /// API nodes that did not answer in time: their requests are not made again until the
    /// back-off says so (cluster scope, where one down node must not cost every scrape its
    /// time limit).
    node_backoff: Mutex<HashMap<String, Backoff>>,
    /// The same for the requests that are no node's (`/nodes`, the cluster's HA status): a
    /// slow API must not cost every scrape its time limit on them either.
    cluster_backoff: Mutex<Backoff>,
}

impl PveState {
    /// Make `request`, one of the API requests that are no node's, under their back-off: not
    /// made (and failed at once) while a try is not due; a timeout puts them under back-off, an
    /// answer (also an error answer) takes them out.
    fn cluster_request(&self, limit: Duration, request: impl FnOnce() -> Result<(), Error>) -> Result<(), Error> {
        let now = Instant::now();
        {
            let mut b = self.cluster_backoff.lock().unwrap_or_else(|p| p.into_inner());
            match b.verdict(now) {
                Verdict::Go => {}
                Verdict::Retry => b.trying(now, limit),
                Verdict::Wait(_) => return Err(Error::Stalled(format!("the API {}", b.describe(now)))),
            }
        }
        let r = request();
        let mut b = self.cluster_backoff.lock().unwrap_or_else(|p| p.into_inner());
        match &r {
            Err(Error::Api(ApiError::NoAnswer { .. })) => b.failed(Instant::now()),
            _ => b.recovered(),
        }
        r
    }

    pub fn new(config: &Config, host: &HostRoot, pmxcfs: BlockingGate, fds: Arc<FdBudget>) -> Self {
        let token = match &config.pve_api_token_file {
            // Within a time limit: operators keep secrets in /etc/pve/priv too, and pmxcfs can hang.
            Some(path) => {
                let p = path.clone();
                Some(
                    call_with_timeout("token-file", config.pmxcfs_timeout, move || api::read_token_file(&p))
                        .unwrap_or_else(|e| Err(ApiError::setup(format!("API token file {}", path.display()), e))),
                )
            }
            // main() took it out of the environment (no child process inherits it).
            None => config.api_token.clone().or_else(api::token_from_env),
        };
        if let Some(Err(e)) = &token {
            log::error!("{e}");
        }
        let both = match config.pve_source {
            PveSource::Local => Source::Local,
            PveSource::Api => Source::Api,
            PveSource::Auto if token.is_some() => Source::Api,
            PveSource::Auto => Source::Local,
        };
        let pve_node = is_pve_node(host, config.pmxcfs_timeout);
        // A central exporter is one with a token on a machine that is not a PVE node.
        let scope =
            config.pve_scope.unwrap_or(if !pve_node && token.is_some() { PveScope::Cluster } else { PveScope::Local });
        let node = read_node_name(host);
        let mut plans = Vec::new();
        for c in REGISTRY.iter().copied() {
            let source = if !config.collector_enabled(c.name()) {
                None
            } else if both == Source::Api {
                Some(Source::Api)
            } else if !c.has_local_source() {
                // The API serves what has no local source whenever there is a token.
                if token.is_none() {
                    log::info!(
                        "collector {}: off: it needs the PVE API (PVE runs smartctl for it); configure an API \
                         token (--pve-api-token-file or {}) to turn it on",
                        c.name(),
                        api::TOKEN_ENV
                    );
                }
                token.is_some().then_some(Source::Api)
            } else {
                match c.local_applies(host, node.as_deref(), pve_node) {
                    Ok(()) => Some(Source::Local),
                    Err(why) => {
                        log::info!("collector {}: off: {why}", c.name());
                        None
                    }
                }
            };
            plans.push(Plan { collector: c, source });
        }
        if scope == PveScope::Cluster && plans.iter().any(|p| p.source == Some(Source::Local)) {
            log::warn!(
                "--pve-scope cluster needs the PVE API (a token): the local sources serve this node only \
                 (node_status, vm_pressure); HA is cluster-wide from pmxcfs"
            );
        }
        let api = plans.iter().any(|p| p.source == Some(Source::Api)).then(|| {
            let trust = if config.pve_api_insecure {
                log::warn!("--pve-api-insecure: the PVE API's TLS certificate is not verified");
                Trust::Insecure
            } else if let Some(ca) = &config.pve_api_ca_file {
                Trust::CaFile(ca.clone())
            } else {
                Trust::PveRootCa
            };
            let api = PveApi::new(ApiSettings {
                url: config.pve_api_url.clone(),
                token: token.clone().unwrap_or_else(|| {
                    Err(ApiError::setup("no API token", format!("set --pve-api-token-file or {}", api::TOKEN_ENV)))
                }),
                trust,
                timeout: config.pve_api_timeout,
                max_concurrent: config.pve_api_max_concurrent.into(),
            });
            if let Some(e) = api.unusable() {
                log::error!("PVE API: {e}");
            }
            api
        });
        let describe: Vec<String> =
            plans.iter().map(|p| format!("{} {}", p.collector.name(), source_name(p.source))).collect();
        log::info!(
            "PVE collectors ({} scope, node {}): {}",
            scope_name(scope),
            node.as_deref().unwrap_or("unknown"),
            describe.join(", ")
        );
        Self {
            plans,
            scope,
            node,
            always_emit: config.ha_always_emit,
            api,
            nodes: Mutex::default(),
            ha: HaReader::new(),
            pmxcfs,
            statvfs: BlockingGate::default(),
            workers: config.pve_api_max_concurrent.into(),
            pressure_files: Mutex::new(vm_pressure::PressureFiles::new(HeldFiles::new(fds, OnStale::Reopen))),
            node_backoff: Mutex::default(),
            cluster_backoff: Mutex::default(),
        }
    }
}

impl PveState {
    /// statvfs of `/` when it hangs: for how long.
    pub fn hung(&self) -> Option<Duration> {
        self.statvfs.hung()
    }
}

/// Whether this host is a PVE node: /etc/pve exists (pmxcfs, or its mount point before pmxcfs
/// runs). pmxcfs may hang: a stat that does not return in time means pmxcfs is there.
fn is_pve_node(host: &HostRoot, timeout: Duration) -> bool {
    let path = host.path("etc/pve");
    call_with_timeout("pmxcfs", timeout, move || path.is_dir()).unwrap_or(true)
}

fn source_name(s: Option<Source>) -> &'static str {
    match s {
        Some(Source::Local) => "local",
        Some(Source::Api) => "api",
        None => "off",
    }
}

fn scope_name(s: PveScope) -> &'static str {
    match s {
        PveScope::Local => "local",
        PveScope::Cluster => "cluster",
    }
}

/// The PVE API of one scrape: its session (or why there is none) and the nodes to ask (the
/// `pve_nodes` stage: made on the first API collector of the scrape).
pub struct ApiStage<'a> {
    session: Result<Session<'a>, ApiError>,
    nodes: Vec<String>,
}

impl<'a> ApiStage<'a> {
    /// None when no collector reads the API.
    pub fn start(st: &'a PveState, config: &Config, host: &HostRoot, cx: &Context) -> Option<Self> {
        let remote: Vec<&'static dyn PveCollector> =
            st.plans.iter().filter(|p| p.source == Some(Source::Api)).map(|p| p.collector).collect();
        let api = st.api.as_ref().filter(|_| !remote.is_empty())?;
        let session = match api.session(host, &st.pmxcfs, config.pmxcfs_timeout) {
            Ok(s) => s,
            Err(err) => return Some(Self { session: Err(err), nodes: Vec::new() }),
        };
        // The nodes of this update: this node, or the cluster's (copied from the guarded list).
        let nodes: Vec<String> = match st.scope {
            PveScope::Local => st.node.clone().into_iter().collect(),
            PveScope::Cluster => {
                if remote.iter().any(|c| c.per_node()) && cx.enabled("pve_nodes") {
                    let (took, r) = super::error::run_timed(|| {
                        st.cluster_request(config.pve_api_timeout, || {
                            let list = api::parse_nodes(&session.get("/nodes")?).map_err(|e| e.input("/nodes"))?;
                            let mut online = Vec::new();
                            for n in list {
                                if !valid_node_name(&n.node) {
                                    log::warn!("/nodes: skipping node {:?}: not a valid node name", n.node);
                                } else if n.online {
                                    online.push(n.node);
                                } else {
                                    log::debug!("node {} is offline: not asked", n.node);
                                }
                            }
                            *st.nodes.lock().unwrap_or_else(|p| p.into_inner()) = online;
                            Ok(())
                        })
                    });
                    cx.report("pve_nodes", took, r);
                }
                st.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone()
            }
        };
        Some(Self { session: Ok(session), nodes })
    }
}

pub fn node_status(setup: &Setup) -> Box<dyn Collector> {
    adapter(setup, 0)
}
pub fn vm_pressure(setup: &Setup) -> Box<dyn Collector> {
    adapter(setup, 1)
}
pub fn ha_status(setup: &Setup) -> Box<dyn Collector> {
    adapter(setup, 2)
}
pub fn physical_disk(setup: &Setup) -> Box<dyn Collector> {
    adapter(setup, 3)
}

fn adapter(setup: &Setup, i: usize) -> Box<dyn Collector> {
    let st = &setup.stages.pve;
    Box::new(Adapter { collector: REGISTRY[i], source: st.plans[i].source, scope: st.scope })
}

/// One PVE collector in the collector registry: it runs from the source its plan chose.
struct Adapter {
    collector: &'static dyn PveCollector,
    source: Option<Source>,
    scope: PveScope,
}

impl Adapter {
    fn local_reads_vms(&self) -> bool {
        self.source == Some(Source::Local) && self.collector.local_reads_vms()
    }
}

impl Collector for Adapter {
    fn name(&self) -> &'static str {
        self.collector.name()
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        self.collector.families()
    }
    fn group(&self) -> Group {
        if self.local_reads_vms() { Group::Vms } else { Group::Pve }
    }
    fn needs(&self) -> &'static [Need] {
        if self.local_reads_vms() { &[Need::Vms] } else { &[Need::PveApi] }
    }
    /// Where it reads from (`pve_exporter_pve_collector_info`), also when it is off.
    fn describe(&self, _config: &Config, out: &mut MetricSet) {
        out.family(&PVE_COLLECTOR_INFO).push(
            [
                ("collector", self.collector.name().to_string()),
                ("source", source_name(self.source).to_string()),
                ("scope", scope_name(self.scope).to_string()),
            ],
            1u64,
        );
    }
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error> {
        let st = &cx.stage_state().pve;
        let emit = HaEmit { scope: st.scope, node: st.node.as_deref(), always: st.always_emit };
        match self.source {
            None => Err(Error::NotApplicable),
            Some(Source::Local) => {
                let local = LocalCtx {
                    host: cx.host,
                    files: cx.files,
                    pmxcfs: &st.pmxcfs,
                    pmxcfs_timeout: cx.config.pmxcfs_timeout,
                    statvfs: &st.statvfs,
                    statvfs_timeout: cx.config.storage_timeout,
                    ha: &st.ha,
                    pressure_files: &st.pressure_files,
                    emit,
                    cx,
                };
                self.collector.local(&local, out)
            }
            Some(Source::Api) => {
                let Some(stage) = cx.pve_api() else { return Err(Error::NotApplicable) };
                let session = stage.session.as_ref().map_err(|e| Error::Api(e.clone()))?;
                collect_api(self.collector, st, cx, session, &stage.nodes, emit, out)
            }
        }
    }
}

/// One API collector: once, or once per node (all nodes at once, at most
/// --pve-api-max-concurrent requests in flight). Its runs are reported per node in cluster scope.
fn collect_api(
    c: &'static dyn PveCollector,
    st: &PveState,
    cx: &Context,
    session: &Session,
    nodes: &[String],
    emit: HaEmit,
    out: &mut MetricSet,
) -> Result<(), Error> {
    let ctx = ApiCtx { api: session, emit };
    if !c.per_node() {
        return st.cluster_request(cx.config.pve_api_timeout, || c.api(&ctx, None, out));
    }
    if st.scope == PveScope::Local && nodes.is_empty() {
        return emit.node().map(|_| ());
    }
    // Nodes under back-off are not asked in this scrape (a due try is asked, within the deadline).
    let now = Instant::now();
    let skipped: HashMap<&str, String> = {
        let mut b = st.node_backoff.lock().unwrap_or_else(|p| p.into_inner());
        b.retain(|n, _| nodes.contains(n));
        nodes
            .iter()
            .filter_map(|n| {
                let bo = b.get_mut(n)?;
                match bo.verdict(now) {
                    Verdict::Go => None,
                    Verdict::Retry => {
                        bo.trying(now, cx.config.pve_api_timeout);
                        None
                    }
                    Verdict::Wait(_) => Some((n.as_str(), format!("node {n}: the API {}", bo.describe(now)))),
                }
            })
            .collect()
    };
    let name_of = |n: &str| match st.scope {
        PveScope::Cluster => intern(format!("{}/{n}", c.name())),
        PveScope::Local => c.name(),
    };
    // In node order: those skipped report at once, the others after their request.
    let jobs: Vec<&str> = nodes.iter().map(String::as_str).filter(|n| !skipped.contains_key(n)).collect();
    let prefix = cx.config.metrics_prefix.clone();
    let results = run_parallel(&jobs, st.workers, |node| {
        let mut part = MetricSet::new(&prefix);
        let t = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| c.api(&ctx, Some(node), &mut part)))
            .unwrap_or_else(|p| Err(Error::Panicked(panic_message(&p))));
        (t.elapsed(), r, part)
    });
    let mut results = jobs.iter().zip(results);
    for n in nodes {
        if let Some(why) = skipped.get(n.as_str()) {
            cx.report(name_of(n), Duration::ZERO, Err(Error::Stalled(why.clone())));
            continue;
        }
        let Some((node, res)) = results.next() else { break };
        let Some((took, r, part)) = res else {
            cx.report(name_of(node), Duration::ZERO, Err(Error::Stalled("not run (no worker thread)".into())));
            continue;
        };
        {
            let mut b = st.node_backoff.lock().unwrap_or_else(|p| p.into_inner());
            match &r {
                Err(Error::Api(ApiError::NoAnswer { .. })) => {
                    b.entry(node.to_string()).or_default().failed(Instant::now())
                }
                Err(_) => {}
                Ok(()) => {
                    b.remove(*node);
                }
            }
        }
        merge(out, &part);
        cx.report(name_of(node), took, r);
    }
    cx.reported_own_runs();
    Ok(())
}

/// Add the families of `part` to `out` (in the catalogue's order, after what `out` has).
fn merge(out: &mut MetricSet, part: &MetricSet) {
    for f in part.families() {
        out.family(f.def).append_ref(f);
    }
}

/// Run `f` over `jobs` on up to `workers` threads (this one included); results in job order
/// (None for a job no thread ran, which needs every thread to fail to start).
fn run_parallel<J: Sync, R: Send>(jobs: &[J], workers: usize, f: impl Fn(&J) -> R + Sync) -> Vec<Option<R>> {
    let next = AtomicUsize::new(0);
    // The helper threads work for the same collection as this one.
    let deadline = crate::deadline::current();
    let results: Mutex<Vec<Option<R>>> = Mutex::new(jobs.iter().map(|_| None).collect());
    let work = || {
        let _d = deadline.map(crate::deadline::enter);
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i) else { break };
            let r = f(job);
            results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
        }
    };
    std::thread::scope(|s| {
        for _ in 1..workers.min(jobs.len()) {
            if let Err(err) = std::thread::Builder::new().name("pve-api".into()).spawn_scoped(s, work) {
                log::warn!("cannot start a PVE API worker thread: {err}");
                break;
            }
        }
        work();
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Collector names of per-node runs (`node_status/pve2`) as the `&'static str` runs carry.
/// Each distinct name is kept once: the set is bounded by the cluster's node names.
fn intern(name: String) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.get(name.as_str()) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

/// vmids with a config in /etc/pve/qemu-server (this node's VMs), through the pmxcfs gate;
/// None when the directory does not exist (not a PVE node: no filter).
fn vm_configs(ctx: &LocalCtx) -> io::Result<Option<HashSet<String>>> {
    let dir = ctx.host.path("etc/pve/qemu-server");
    ctx.pmxcfs.call("pmxcfs", ctx.pmxcfs_timeout, move || match std::fs::read_dir(&dir) {
        Ok(rd) => {
            Ok(Some(vmids_from_listing(rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()))))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io::Error::new(err.kind(), format!("etc/pve/qemu-server: {err}"))),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_matches_the_flags() {
        let names: Vec<&str> = REGISTRY.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["node_status", "vm_pressure", "ha_status", "physical_disk"]);
        let per_node: Vec<bool> = REGISTRY.iter().map(|c| c.per_node()).collect();
        assert_eq!(per_node, [true, true, false, true]);
    }

    #[test]
    fn parallel_jobs_keep_their_order() {
        let jobs: Vec<u32> = (0..50).collect();
        let r = run_parallel(&jobs, 4, |j| j * 2);
        assert_eq!(r, jobs.iter().map(|j| Some(j * 2)).collect::<Vec<_>>());
        assert!(run_parallel(&[] as &[u32], 4, |j| *j).is_empty());
        assert_eq!(run_parallel(&[7u32], 1, |j| *j), [Some(7)]);
    }

    #[test]
    fn interned_names_are_shared() {
        let a = intern("node_status/pve1".to_string());
        let b = intern("node_status/pve1".to_string());
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "node_status/pve1");
    }

    #[test]
    fn only_the_crm_master_emits_in_local_scope() {
        let m = ManagerStatus { master_node: Some("pve1".into()), ..Default::default() };
        let e = |scope, node, always| HaEmit { scope, node, always }.should_emit(&m);
        assert!(e(PveScope::Local, Some("pve1"), false));
        assert!(!e(PveScope::Local, Some("pve2"), false));
        assert!(e(PveScope::Local, Some("pve2"), true));
        assert!(!e(PveScope::Local, None, false));
        assert!(e(PveScope::Cluster, Some("pve2"), false));
        let idle = ManagerStatus::default();
        assert!(!HaEmit { scope: PveScope::Local, node: Some("pve1"), always: false }.should_emit(&idle));
    }
}

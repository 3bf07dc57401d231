//! Collection: one scrape runs every collector over the sources and fills one [`MetricSet`].
//! Each collector's failure is its own: it loses its series and reports
//! `pve_exporter_collector_success{collector} 0`; the scrape goes on.
//!
//! Time: a collection has a [`Deadline`]. Its collectors run in three groups, each on a kept
//! thread of its own: `vms` (discovery, per-VM files, eBPF maps, the monitors), `storage` and
//! `pve`. Every wait inside a group ends by the deadline; the collection waits for each group
//! until the deadline and no longer. A group that has not answered by then (it hangs where no
//! time limit reaches: a read of a process stuck in the kernel, say) contributes, collector by
//! collector, what its collectors finished in this collection (as fresh values) and, for the
//! others, their last good values while they are at most `--stale-max-age` old, else nothing,
//! with those collectors' success 0 and `pve_exporter_collector_data_age_seconds` telling the
//! age. A group still running from an earlier collection is not started again until it returns.

use std::{
    cell::{Cell, RefCell},
    collections::HashSet,
    ops::Deref,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use super::{
    Collector, Context, EntryKind, Error, Group, Need, REGISTRY, Setup,
    error::run_timed,
    position, selfmetrics,
    stages::{self, StageState, Stages},
};
use crate::{
    catalog::Def,
    config::{Config, VmSourceMode},
    deadline::{self, Deadline},
    heldfile::FdBudget,
    host::{HostRoot, ScrapeFiles, Worker},
    metrics::MetricSet,
    sources::kernel::ebpf::{self, EbpfStatus},
};

/// How one collector did in a scrape.
#[derive(Debug, Clone)]
pub struct CollectorRun {
    pub name: &'static str,
    pub duration: Duration,
    pub success: bool,
    /// Age of the values it contributed: zero when collected now, else the age of the last
    /// good values replayed because its group did not answer in time.
    pub age: Duration,
}

/// The time before the scrape's deadline at which the groups' own waits end (at most; 5 % of
/// the budget when that is less): room to finish, merge and send what they found.
const GROUP_RESERVE: Duration = Duration::from_millis(250);

fn index(g: Group) -> usize {
    g as usize
}

/// What one group produced in one collection.
struct GroupOutput {
    set: MetricSet,
    runs: Vec<CollectorRun>,
}

/// One collector's last good values: what it added to each family in its last run (sealed
/// chunks are shared with the collection they went out with, not copied), for a replay.
/// Kept per collector, not per collection, and replaced as soon as the collector has run
/// again: the text of the last collection is let go collector by collector while the next is
/// written, and the allocator gives the freed memory to the next collector's text instead of
/// taking fresh pages (holding the whole last collection until the next was done cost ~270
/// page faults per scrape at 100 VMs + 100 containers, ~180 since; docs/benchmarks.md).
struct Kept {
    chunks: Vec<(&'static Def, bytes::Bytes)>,
    /// Kept samples (a set that keeps them, [`Engine::collect`]); a serving set has none.
    samples: Vec<(&'static Def, crate::metrics::Sample)>,
    runs: Vec<CollectorRun>,
    /// When it was collected.
    at: Instant,
}

impl Kept {
    /// What was added to `set` since `marks` (each family's chunk and sample count, in the
    /// order of first use, [`marks`]).
    fn since(set: &MetricSet, marks: &[(usize, usize)], runs: Vec<CollectorRun>) -> Kept {
        let (mut chunks, mut samples) = (Vec::new(), Vec::new());
        for (i, f) in set.families_by_use().iter().enumerate() {
            let (c, n) = marks.get(i).copied().unwrap_or((0, 0));
            chunks.extend(f.chunks.get(c..).unwrap_or_default().iter().map(|b| (f.def, b.clone())));
            samples.extend(f.samples.get(n..).unwrap_or_default().iter().map(|s| (f.def, s.clone())));
        }
        Kept { chunks, samples, runs, at: Instant::now() }
    }

    /// Add its values to `out`.
    fn replay(&self, out: &mut MetricSet) {
        out.append_sealed(&self.chunks);
        for (def, s) in &self.samples {
            out.family(def).push_sample(s.clone());
        }
    }
}

/// Each family's chunk and sample count in `set`, in the order of first use (into `into`).
fn marks(set: &MetricSet, into: &mut Vec<(usize, usize)>) {
    into.clear();
    into.extend(set.families_by_use().iter().map(|f| (f.chunks.len(), f.samples.len())));
}

/// A group's thread and what the collections know of it.
#[derive(Default)]
struct GroupSlot {
    worker: Worker,
    /// The deadline of the collection the group works for, while it runs.
    running: Mutex<Option<Deadline>>,
    /// Each collector's last good values, in the group's run order ([`Engine::order`]); kept
    /// only while `--stale-max-age` is not zero. The group's thread replaces each as soon as
    /// its collector is done, also in a run that finishes after its collection went out.
    kept: Mutex<Vec<Option<Kept>>>,
    /// How long each family's text was in the group's last run: the room its next run
    /// reserves ([`MetricSet::with_hints`]).
    sizes: Mutex<Arc<crate::fasthash::FastMap<usize, usize>>>,
}

/// Long-lived state shared by all scrapes.
pub struct EngineState {
    pub config: Config,
    pub host: HostRoot,
    /// eBPF state; the lock is held only while a scrape reads the maps.
    pub ebpf: Mutex<EbpfStatus>,
    /// What the eBPF set-up reports (taken at start: reporting it never waits for `ebpf`).
    ebpf_summary: selfmetrics::EbpfSummary,
    /// Collectors that failed in the last scrape: failures are logged when they start and
    /// end, not on every scrape.
    failing: Mutex<HashSet<&'static str>>,
    /// What the stages keep between scrapes.
    pub stages: StageState,
    /// The registry's collectors, built at start, in registry order, each with whether it is
    /// switched on.
    collectors: Vec<(Box<dyn Collector>, bool)>,
    groups: [GroupSlot; 3],
}

/// The engine: shared by the HTTP side and the group threads.
#[derive(Clone)]
pub struct Engine(Arc<EngineState>);

impl Deref for Engine {
    type Target = EngineState;
    fn deref(&self) -> &EngineState {
        &self.0
    }
}

impl Engine {
    /// Build the engine; this loads and attaches the eBPF programs (Err: `--ebpf on` failed).
    pub fn new(config: Config) -> Result<Self, ebpf::EbpfError> {
        let host = HostRoot::new(&config.root);
        let ebpf = ebpf::start(
            &host,
            &ebpf::EbpfOptions {
                mode: config.ebpf,
                events: config.ebpf_events.clone(),
                btf_path: config.btf_path.clone(),
                stats: config.ebpf_stats,
            },
        )?;
        // One descriptor budget for every file held open between scrapes.
        let fds = FdBudget::from_rlimit();
        let stages = StageState::new(&config, &host, fds.clone());
        let setup =
            Setup { config: &config, host: &host, stages: &stages, ebpf_counting: ebpf.counters.is_some(), fds };
        let collectors = REGISTRY
            .iter()
            .filter_map(|e| match e.kind {
                EntryKind::Collector(new) => Some((new(&setup), config.collector_enabled(e.name))),
                _ => None,
            })
            .collect();
        Ok(Self(Arc::new(EngineState {
            host,
            ebpf_summary: selfmetrics::EbpfSummary::of(&ebpf),
            ebpf: Mutex::new(ebpf),
            failing: Mutex::default(),
            stages,
            collectors,
            groups: Default::default(),
            config,
        })))
    }

    /// The state, if no one else holds the engine (no collection is running).
    pub fn try_unwrap(self) -> Result<EngineState, Engine> {
        Arc::try_unwrap(self.0).map_err(Engine)
    }

    /// One whole scrape with the default deadline (`--scrape-timeout`). Blocking.
    /// Its samples are kept as they are (not frozen to text), for callers that look at them.
    pub fn collect(&self) -> MetricSet {
        (*self.collect_inner(Deadline::after(self.config.scrape_timeout), false)).clone()
    }

    /// One whole scrape, answered by `deadline`, its samples frozen to their exposition lines
    /// ([`crate::exposition::freeze`]): what is served. Blocking: call it from a blocking thread.
    pub fn collect_until(&self, deadline: Deadline) -> Arc<MetricSet> {
        self.collect_inner(deadline, true)
    }

    fn collect_inner(&self, deadline: Deadline, freeze: bool) -> Arc<MetricSet> {
        let start = Instant::now();
        let files = Arc::new(ScrapeFiles::new(&self.host));
        let shared = Arc::new(super::stages::Shared::default());
        // The groups' own waits end a little earlier, so that what they found is merged and
        // sent before the scrape's deadline.
        let reserve = deadline.left().div_f64(20.0).min(GROUP_RESERVE);
        let inner = Deadline::at(deadline.instant().checked_sub(reserve).unwrap_or(deadline.instant()));
        // Start every group that has a collector switched on first, then wait for each: they
        // run side by side.
        let started: Vec<(Group, Option<mpsc::Receiver<GroupOutput>>)> = Group::ALL
            .iter()
            .filter(|g| self.collectors.iter().any(|(c, on)| *on && c.group() == **g))
            .map(|&g| (g, self.start_group(g, inner, &files, &shared, freeze)))
            .collect();
        let mut out = if freeze {
            MetricSet::writing(&self.config.metrics_prefix, &crate::exposition::WRITER)
        } else {
            MetricSet::new(&self.config.metrics_prefix)
        };
        // What collectors say of themselves, switched on or not (never waits).
        for (c, _) in &self.collectors {
            c.describe(&self.config, &mut out);
        }
        let mut runs = Vec::new();
        // A group is waited for past its own deadline by half the reserve at most: the other
        // half is for replaying what did not answer and merging, so that the collection is
        // done before the scrape's deadline (the HTTP side answers then with whatever it has).
        let wait_until = Deadline::at(inner.instant() + reserve / 2);
        for (g, rx) in started {
            let answer = rx.and_then(|rx| rx.recv_timeout(wait_until.left()).ok());
            match answer {
                Some(o) => {
                    merge_owned(&mut out, o.set);
                    runs.extend(o.runs);
                }
                None => self.replay(g, start, &mut out, &mut runs),
            }
        }

        selfmetrics::collect(&self.ebpf_summary, &runs, start.elapsed(), &mut out);
        if freeze {
            crate::exposition::freeze(&mut out);
        }
        Arc::new(out)
    }

    /// Start group `g` on its thread for the collection of `deadline`; None when it is still
    /// running for an earlier collection (it is not started twice) or cannot be started.
    /// `freeze`: each collector's samples are written as text once it is done (see
    /// [`Engine::run_group`]).
    fn start_group(
        &self,
        g: Group,
        deadline: Deadline,
        files: &Arc<ScrapeFiles>,
        shared: &Arc<super::stages::Shared>,
        freeze: bool,
    ) -> Option<mpsc::Receiver<GroupOutput>> {
        let slot = &self.groups[index(g)];
        {
            let mut running = slot.running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(d) = *running {
                log::debug!(
                    "collector group {}: still running for a collection due {:?} ago",
                    g.name(),
                    d.instant().elapsed()
                );
                return None;
            }
            *running = Some(deadline);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let (me, files, shared) = (self.clone(), files.clone(), shared.clone());
        let job = Box::new(move || {
            let _d = deadline::enter(deadline);
            let slot = &me.groups[index(g)];
            let mut set = if freeze {
                let hints = slot.sizes.lock().unwrap_or_else(|p| p.into_inner()).clone();
                MetricSet::writing(&me.config.metrics_prefix, &crate::exposition::WRITER).with_hints(hints)
            } else {
                MetricSet::new(&me.config.metrics_prefix)
            };
            let runs = me.run_group(g, deadline, &files, &shared, &mut set, freeze);
            if freeze {
                *slot.sizes.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(set.sizes());
            }
            *slot.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if tx.try_send(GroupOutput { set, runs }).is_err() {
                // Its collection went out without it; each collector's values are kept already.
                log::debug!(
                    "collector group {}: answered {:?} after its deadline",
                    g.name(),
                    deadline.instant().elapsed()
                );
            }
        });
        match slot.worker.run(g.name(), job) {
            Ok(()) => Some(rx),
            Err(e) => {
                log::warn!("collector group {}: cannot start its thread: {e}", g.name());
                *slot.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
                None
            }
        }
    }

    /// Run the switched-on collectors of group `g`: those that wait for a background stage
    /// (the monitors) after the others, so that it runs while they do. Runs are reported in
    /// registry order, each after the stages and parts its collector started.
    /// With `freeze`, each collector's samples become their exposition lines as soon as it is
    /// done ([`crate::exposition::freeze`]), on the group's thread: the samples of one
    /// collector, not of the whole collection, are alive at a time (fewer fresh pages per
    /// collection: the allocator hands freed memory back between collections), and the groups
    /// write their text side by side.
    fn run_group(
        &self,
        g: Group,
        deadline: Deadline,
        files: &ScrapeFiles,
        shared: &super::stages::Shared,
        out: &mut MetricSet,
        freeze: bool,
    ) -> Vec<CollectorRun> {
        let order = self.order(g);
        let background = order.iter().any(|c| c.needs().contains(&Need::Monitor));
        let stages = Stages::new(&self.stages, &self.config, &self.host, deadline, background, shared);
        let keep = !self.config.stale_max_age.is_zero();
        let mut before = Vec::new();
        let mut runs: Vec<(usize, CollectorRun)> = Vec::new();
        for (i, c) in order.into_iter().enumerate() {
            let cx = Context {
                engine: self,
                config: &self.config,
                host: &self.host,
                files,
                deadline,
                stages: &stages,
                runs: RefCell::new(Vec::new()),
                after: RefCell::new(Vec::new()),
                own_run: Cell::new(true),
            };
            if keep {
                marks(out, &mut before);
            }
            #[cfg(debug_assertions)]
            let had = counts(out);
            let (duration, r) = run_timed(|| c.collect(&cx, out));
            #[cfg(debug_assertions)]
            check_families(c, &had, out);
            if freeze {
                crate::exposition::freeze(out);
            }
            let at = position(c.name());
            let mut mine = cx.runs.take();
            if cx.own_run.get()
                && let Some(run) = self.record(c.name(), duration, r)
            {
                mine.push(run);
            }
            mine.extend(cx.after.take());
            if keep {
                let kept = Kept::since(out, &before, mine.clone());
                let mut all = self.groups[index(g)].kept.lock().unwrap_or_else(|p| p.into_inner());
                if all.len() <= i {
                    all.resize_with(i + 1, || None);
                }
                // The values it replaces are let go here, while the collection is written.
                all[i] = Some(kept);
            }
            runs.extend(mine.into_iter().map(|r| (at, r)));
        }
        runs.sort_by_key(|(at, _)| *at);
        runs.into_iter().map(|(_, r)| r).collect()
    }

    /// The switched-on collectors of group `g` in the order they run: those that wait for a
    /// background stage (the monitors) after the others, so that it runs while they do.
    fn order(&self, g: Group) -> Vec<&dyn Collector> {
        let mine = || self.collectors.iter().filter(move |(c, on)| *on && c.group() == g).map(|(c, _)| c.as_ref());
        let background = |c: &&dyn Collector| c.needs().contains(&Need::Monitor);
        mine().filter(|c| !background(c)).chain(mine().filter(background)).collect()
    }

    /// Group `g` did not answer by the deadline of the collection started at `start`: what
    /// its collectors finished in this collection, as it is; for the others, their last good
    /// values if recent enough, else nothing, and a failure in this collection either way.
    fn replay(&self, g: Group, start: Instant, out: &mut MetricSet, runs: &mut Vec<CollectorRun>) {
        let now = Instant::now();
        let kept = self.groups[index(g)].kept.lock().unwrap_or_else(|p| p.into_inner());
        let why = format!("collector group {} did not answer before the scrape's deadline", g.name());
        let mut mine: Vec<(usize, CollectorRun)> = Vec::new();
        let mut failed = |at: usize, name: &'static str, age: Duration| {
            mine.push((at, CollectorRun { name, duration: Duration::ZERO, success: false, age }));
            self.note_failure(name, &why);
        };
        let mut fresh = Vec::new();
        for (i, c) in self.order(g).into_iter().enumerate() {
            let at = position(c.name());
            match kept.get(i).and_then(Option::as_ref) {
                // Done in this collection: fresh values, its runs as they went.
                Some(k) if k.at >= start => {
                    k.replay(out);
                    fresh.extend(k.runs.iter().map(|r| (at, r.clone())));
                }
                Some(k) => {
                    let age = now.saturating_duration_since(k.at);
                    let fresh_enough = age <= self.config.stale_max_age;
                    if fresh_enough {
                        k.replay(out);
                    }
                    for r in &k.runs {
                        failed(at, r.name, if fresh_enough { age } else { Duration::ZERO });
                    }
                }
                // Never done since the daemon started, or nothing is kept (`--stale-max-age 0`).
                None => failed(at, c.name(), Duration::ZERO),
            }
        }
        mine.extend(fresh);
        mine.sort_by_key(|(at, _)| *at);
        runs.extend(mine.into_iter().map(|(_, r)| r));
    }

    /// What `/healthz` reports: collector groups running past their collection's deadline by
    /// more than `grace`, and sources whose call runs past its own limit (a hung pmxcfs, a hung
    /// storage mount). Each as (what, for how long).
    pub fn stuck(&self, grace: Duration) -> Vec<(String, Duration)> {
        let mut out: Vec<(String, Duration)> = Group::ALL
            .iter()
            .filter_map(|g| {
                let d = (*self.groups[index(*g)].running.lock().unwrap_or_else(|p| p.into_inner()))?;
                let past = d.instant().elapsed();
                (past > grace).then(|| (format!("collector group {} past its deadline", g.name()), past))
            })
            .collect();
        out.extend(self.stages.stuck());
        out.extend(self.collectors.iter().flat_map(|(c, _)| c.stuck()));
        out
    }
}

/// Sample counts per family (debug builds: which families a collector added to).
#[cfg(debug_assertions)]
fn counts(set: &MetricSet) -> Vec<(&'static Def, usize)> {
    set.families().iter().map(|f| (f.def, f.pushed())).collect()
}

/// A collector emits only the families it declares (debug builds; the golden tests run them).
#[cfg(debug_assertions)]
fn check_families(c: &dyn Collector, before: &[(&'static Def, usize)], after: &MetricSet) {
    for f in after.families() {
        let had = before.iter().find(|(d, _)| std::ptr::eq(*d, f.def)).map_or(0, |(_, n)| *n);
        if f.pushed() > had && !c.families().iter().flat_map(|s| s.iter()).any(|d| std::ptr::eq(*d, f.def)) {
            panic!("collector {} emitted {} without declaring it", c.name(), f.def.name);
        }
    }
}

/// Move the families of `part` into `out` (a family only `part` has is moved whole, text
/// and all, not copied).
fn merge_owned(out: &mut MetricSet, part: MetricSet) {
    for f in part.into_families() {
        out.family(f.def).append(f);
    }
}

impl EngineState {
    /// The collectors that failed in the last collection, by name.
    pub fn failing_collectors(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.failing.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn ebpf_mode(&self) -> (String, String) {
        (self.ebpf_summary.mode.clone(), self.ebpf_summary.reason.clone())
    }

    /// The VM source a collection now would use.
    pub fn vm_source(&self) -> VmSourceMode {
        stages::vm_source(&self.stages, &self.config, &self.host)
    }

    /// Note a run, logging when a collector starts or stops failing. None: nothing to report
    /// (the collector does not apply here).
    pub(super) fn record(&self, name: &'static str, duration: Duration, r: Result<(), Error>) -> Option<CollectorRun> {
        let success = match &r {
            Err(Error::NotApplicable) => return None,
            Err(e) if e.is_failure() => {
                self.note_failure(name, &e.to_string());
                false
            }
            _ => {
                if self.failing.lock().unwrap_or_else(|p| p.into_inner()).remove(name) {
                    log::info!("collector {name} works again");
                }
                true
            }
        };
        Some(CollectorRun { name, duration, success, age: Duration::ZERO })
    }

    fn note_failure(&self, name: &'static str, e: &str) {
        if self.failing.lock().unwrap_or_else(|p| p.into_inner()).insert(name) {
            log::warn!("collector {name} failed: {e}");
        } else {
            log::debug!("collector {name} still failing: {e}");
        }
    }
}

/// Shared handle.
pub type SharedEngine = Engine;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_collector_costs_only_itself() {
        let (d, r) = run_timed(|| panic!("bad input"));
        assert!(matches!(r, Err(Error::Panicked(m)) if m == "bad input"), "{d:?}");
        // A whole collection over a root without /proc: kvm fails, the scrape still answers.
        let cfg = Config::from_args(["pve-exporter", "--ebpf", "off", "--root", "/nonexistent"]).unwrap();
        let engine = Engine::new(cfg).unwrap();
        let set = engine.collect();
        let ok = set.get("pve_exporter_collector_success").unwrap();
        assert!(ok.samples.iter().any(|s| s.labels[0].1 == "kvm" && s.value == crate::metrics::Value::Int(0)));
    }

    #[test]
    fn gone_is_no_failure_and_not_applicable_no_run() {
        let cfg = Config::from_args(["pve-exporter", "--ebpf", "off", "--root", "/nonexistent"]).unwrap();
        let engine = Engine::new(cfg).unwrap();
        let run = |r| engine.record("x", Duration::ZERO, r);
        assert!(run(Err(Error::Gone("pid 5".into()))).unwrap().success);
        assert!(run(Err(Error::NotApplicable)).is_none());
        assert!(!run(Err(Error::io("/p", std::io::ErrorKind::InvalidData.into()))).unwrap().success);
        assert!(run(Ok(())).unwrap().success);
    }

    #[test]
    fn every_registry_line_has_its_switch() {
        for e in REGISTRY {
            let on = Config::from_args(["pve-exporter"]).unwrap();
            assert_eq!(on.collector_enabled(e.name), e.default_on, "{}", e.name);
            let off = Config::from_args(["pve-exporter", &format!("--no-collector.{}", e.name)]).unwrap();
            assert!(!off.collector_enabled(e.name), "{}", e.name);
            let again = Config::from_args([
                "pve-exporter".to_string(),
                format!("--no-collector.{}", e.name),
                format!("--collector.{}", e.name),
            ])
            .unwrap();
            assert!(again.collector_enabled(e.name), "{}: the last one given wins", e.name);
        }
        // A --collector flag wins over the deprecated alias.
        let c = Config::from_args(["pve-exporter", "--collect-storage", "false", "--collector.storage_zfs"]).unwrap();
        assert!(!c.collector_enabled("storage") && c.collector_enabled("storage_zfs"));
    }

    /// Two collectors' parts of one set, kept one by one and replayed in order, give the same
    /// exposition: sealed text (what is served) and kept samples alike.
    #[test]
    fn kept_parts_replay_to_the_same_exposition() {
        use crate::{
            catalog::{KVM_CPU_SECONDS, KVM_THREADS, KVM_VCORES},
            exposition::{Format, WRITER, freeze, render},
        };
        for writing in [true, false] {
            let new = || if writing { MetricSet::writing("pve", &WRITER) } else { MetricSet::new("pve") };
            let (mut set, mut before) = (new(), Vec::new());
            // The first collector: two families.
            marks(&set, &mut before);
            set.family(&KVM_THREADS).push([("id", "100")], 3u64);
            set.family(&KVM_VCORES).push([("id", "100")], 2u64);
            freeze(&mut set);
            let first = Kept::since(&set, &before, Vec::new());
            // The second: one of the same families and a new one.
            marks(&set, &mut before);
            set.family(&KVM_THREADS).push([("id", "101")], 5u64);
            set.family(&KVM_CPU_SECONDS).push([("id", "101"), ("mode", "user")], 1.5);
            freeze(&mut set);
            let second = Kept::since(&set, &before, Vec::new());
            assert_eq!(first.chunks.len() + first.samples.len(), 2, "one part per family");
            let mut again = new();
            first.replay(&mut again);
            second.replay(&mut again);
            freeze(&mut again);
            let (want, got) = (render(Arc::new(set), Format::Text), render(Arc::new(again), Format::Text));
            assert!(want.contains(r#"pve_kvm_threads{id="101"} 5"#), "{want}");
            assert_eq!(got, want);
        }
    }

    /// A group that did not answer: a collector done in this collection serves its values as
    /// fresh; one done before, its last values with their age and a failure; one whose values
    /// are older than `--stale-max-age`, nothing and a failure without an age; one never done,
    /// a failure.
    #[test]
    fn a_group_that_did_not_answer_replays_collector_by_collector() {
        use crate::catalog::{KVM_THREADS, KVM_VCORES};
        let cfg = Config::from_args(["pve-exporter", "--ebpf", "off", "--root", "/nonexistent"]).unwrap();
        let engine = Engine::new(cfg).unwrap();
        let order: Vec<&'static str> = engine.order(Group::Vms).iter().map(|c| c.name()).collect();
        assert!(order.len() >= 4, "{order:?}");
        let part = |def: &'static Def, v: u64, name: &'static str, success: bool, at: Instant| {
            let mut set = MetricSet::new("pve");
            set.family(def).push([("id", "100")], v);
            let run = CollectorRun { name, duration: Duration::from_millis(1), success, age: Duration::ZERO };
            Kept { at, ..Kept::since(&set, &[], vec![run]) }
        };
        let now = Instant::now();
        let (old, too_old) = (now - Duration::from_secs(30), now - Duration::from_secs(200));
        let start = now - Duration::from_secs(1);
        *engine.groups[index(Group::Vms)].kept.lock().unwrap() = vec![
            Some(part(&KVM_THREADS, 7, order[0], true, now)),
            Some(part(&KVM_VCORES, 2, order[1], true, old)),
            Some(part(&KVM_THREADS, 9, order[2], true, too_old)),
        ];
        let (mut out, mut runs) = (MetricSet::new("pve"), Vec::new());
        engine.replay(Group::Vms, start, &mut out, &mut runs);
        let values = |name: &str| -> Vec<String> {
            out.get(name).map(|f| f.samples.iter().map(|s| format!("{:?}", s.value)).collect()).unwrap_or_default()
        };
        assert_eq!(values("pve_kvm_threads"), ["Int(7)"], "fresh values only, not the too old ones");
        assert_eq!(values("pve_kvm_vcores"), ["Int(2)"]);
        let run = |name: &str| runs.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("{name}: {runs:?}"));
        assert!(run(order[0]).success && run(order[0]).age.is_zero());
        assert!(!run(order[1]).success && run(order[1]).age >= Duration::from_secs(30));
        assert!(!run(order[2]).success && run(order[2]).age.is_zero());
        for name in &order[3..] {
            assert!(!run(name).success && run(name).age.is_zero(), "{name}");
        }
        assert_eq!(runs.len(), order.len(), "{runs:?}");
    }

    /// A switched-off collector is not run and not reported; the others are, in registry order.
    #[test]
    fn switched_off_collectors_are_not_run() {
        let cfg = Config::from_args(["pve-exporter", "--ebpf", "off", "--root", "/nonexistent", "--no-collector.vcpu"])
            .unwrap();
        let set = Engine::new(cfg).unwrap().collect();
        let names: Vec<String> = set
            .get("pve_exporter_collector_success")
            .unwrap()
            .samples
            .iter()
            .map(|s| s.labels[0].1.to_string())
            .collect();
        assert!(!names.iter().any(|n| n == "vcpu"), "{names:?}");
        let at = |n: &str| names.iter().position(|x| x == n);
        assert!(at("kvm").is_some() && at("kvm") < at("nic") && at("nic") < at("disk"), "{names:?}");
    }
}

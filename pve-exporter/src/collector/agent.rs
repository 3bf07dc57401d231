//! The `agent` collector: each running PVE VM's file systems as its guest sees them, from the
//! QEMU guest agent (`agent: 1` in the VM's config; the socket `/var/run/qemu-server/<vmid>.qga`).
//!
//! The agent's socket is PVE's too (backups freeze the guest through it), so it is asked
//! rarely and briefly:
//! - at most once per `--agent-interval` per VM (file systems change slowly); the answer, or
//!   the failure, is kept and reported until the next query: an agent that does not answer
//!   costs its VM's series and one `--agent-timeout`, once per interval;
//! - never while PVE has the guest locked (`lock:` in its config: a backup, a snapshot, a
//!   migration...) nor, within an exchange, once the agent says the guest is frozen;
//! - at most `--agent-max-concurrent` exchanges at once, each on a thread of its own within
//!   `--agent-timeout` (connect, handshake and answers together); the connection is closed at
//!   the end of each.
//!
//! A scrape waits only for the first query of a VM (nothing is known of it yet), until the
//! agent time limit or its own deadline, whichever comes first; one not done by then is
//! reported by a later scrape. The refresh of a known answer runs in the background: the
//! scrape reports the answer it has.
//!
//! `pve_kvm_agent_up` tells per VM whether its agent answered; an agent that does not answer is
//! its VM's state (no agent installed in the guest, say), not the collector's failure.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use super::{Collector, Context, Error, Group, Need, Setup};
use crate::{
    catalog::*,
    metrics::{LabelValue, MetricSet},
    sources::{
        pve::guest_config::GuestType,
        qemu::agent::{self, Answer, GuestFs},
    },
};

/// Past the agent time limit, how long a scrape still waits for a query to report its timeout.
const GRACE: Duration = Duration::from_millis(250);

pub fn new(setup: &Setup) -> Box<dyn Collector> {
    let c = setup.config;
    Box::new(AgentCollector {
        timeout: c.agent_timeout,
        interval: c.agent_interval,
        max_concurrent: usize::from(c.agent_max_concurrent).max(1),
        shared: Arc::new(Shared::default()),
    })
}

struct AgentCollector {
    timeout: Duration,
    interval: Duration,
    max_concurrent: usize,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    vms: Mutex<HashMap<String, Entry>>,
    queue: Mutex<Queue>,
    /// The next `guest-sync-delimited` id.
    next_id: AtomicU64,
}

#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    /// Worker threads running (each takes jobs until none is left).
    workers: usize,
}

/// One VM's agent: the last query's result and when the next is due.
struct Entry {
    /// The QEMU process asked: a new one (a restart) is asked afresh.
    pid: u32,
    last: Option<Done>,
    in_flight: bool,
    due: Instant,
}

struct Done {
    /// When the answer came (seconds since the epoch).
    at: f64,
    result: Result<Answer, agent::AgentError>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep a query's result (of process `pid`; dropped when the VM has another process now).
    fn store(&self, vmid: &str, pid: u32, result: Result<Answer, agent::AgentError>, interval: Duration) {
        let at = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut vms = self.lock();
        let Some(e) = vms.get_mut(vmid) else { return };
        if e.pid != pid {
            return;
        }
        let was_up = e.last.as_ref().map(|d| d.result.is_ok());
        let result = match result {
            // A frozen guest was not asked for its file systems: what it said before still holds.
            Ok(Answer { freeze, filesystems: None }) => Ok(Answer {
                freeze,
                filesystems: e.last.take().and_then(|d| d.result.ok()).and_then(|a| a.filesystems),
            }),
            Ok(a) => Ok(a),
            Err(err) => Err(err),
        };
        match (&result, was_up) {
            (Err(why), Some(true) | None) => log::info!("VM {vmid}: guest agent did not answer: {why}"),
            (Ok(_), Some(false)) => log::info!("VM {vmid}: guest agent answers again"),
            _ => {}
        }
        e.last = Some(Done { at, result });
        e.in_flight = false;
        e.due = Instant::now() + interval;
    }
}

impl Collector for AgentCollector {
    fn name(&self) -> &'static str {
        "agent"
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        FAMILIES
    }
    fn group(&self) -> Group {
        Group::Vms
    }
    fn needs(&self) -> &'static [Need] {
        &[Need::Guests, Need::Vms]
    }
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error> {
        let list = super::guest::node_guests(cx)?;
        let configs: crate::fasthash::FastMap<&str, _> = list
            .guests
            .guests
            .iter()
            .filter(|g| g.ty == GuestType::Qemu)
            .map(|g| (g.vmid.as_str(), &g.config))
            .collect();
        // VMs whose agent is on, with their process: (vmid, pid, locked).
        let targets: Vec<(&str, u32, bool)> = cx
            .vms()
            .vms
            .iter()
            .filter(|vm| vm.source == crate::vm::PVE)
            .filter_map(|vm| {
                let c = configs.get(vm.id.as_str())?;
                c.get("agent")
                    .is_some_and(agent::agent_enabled)
                    .then(|| (vm.id.as_str(), vm.pid, c.get("lock").is_some()))
            })
            .collect();

        let started = self.start_due(cx, &targets);
        if started.count > 0 {
            let until = cx.deadline.cap_instant(self.timeout + GRACE);
            for _ in 0..started.count {
                let left = until.saturating_duration_since(Instant::now());
                if started.done.recv_timeout(left).is_err() {
                    break;
                }
            }
        }

        let vms = self.shared.lock();
        for (vmid, _, _) in &targets {
            let Some(Done { at, result }) = vms.get(*vmid).and_then(|e| e.last.as_ref()) else { continue };
            let id = LabelValue::Shared((*vmid).into());
            out.family(&KVM_AGENT_UP).push([("id", id.clone())], u64::from(result.is_ok()));
            let Ok(answer) = result else { continue };
            out.family(&KVM_AGENT_LAST_ANSWER).push([("id", id.clone())], *at);
            for fs in answer.filesystems.iter().flatten() {
                push_fs(out, &id, fs);
            }
        }
        Ok(())
    }
}

/// A query waiting for a worker.
struct Job {
    vmid: String,
    pid: u32,
    path: std::path::PathBuf,
    /// Told when done, when the scrape that queued it waits for it (a VM without an answer
    /// yet); a refresh of a known answer runs in the background, outside the scrape.
    done: Option<mpsc::Sender<()>>,
}

struct Started {
    count: usize,
    done: mpsc::Receiver<()>,
}

impl AgentCollector {
    /// Queue the queries that are due (not locked, not running, not asked within the
    /// interval) and start workers for them, at most `--agent-max-concurrent` over all
    /// scrapes; forget VMs that are no longer targets.
    fn start_due(&self, cx: &Context, targets: &[(&str, u32, bool)]) -> Started {
        let (tx, done) = mpsc::channel();
        let now = Instant::now();
        let mut jobs = Vec::new();
        {
            let mut vms = self.shared.lock();
            let keep: HashSet<&str> = targets.iter().map(|t| t.0).collect();
            vms.retain(|id, _| keep.contains(id.as_str()));
            for &(vmid, pid, locked) in targets {
                let e = vms.entry(vmid.to_string()).or_insert_with(|| Entry {
                    pid,
                    last: None,
                    in_flight: false,
                    due: now,
                });
                if e.pid != pid {
                    *e = Entry { pid, last: None, in_flight: false, due: now };
                }
                if locked || e.in_flight || now < e.due {
                    continue;
                }
                e.in_flight = true;
                let path = cx.host.path(format!("var/run/qemu-server/{vmid}.qga"));
                let done = e.last.is_none().then(|| tx.clone());
                jobs.push(Job { vmid: vmid.to_string(), pid, path, done });
            }
        }
        let count = jobs.iter().filter(|j| j.done.is_some()).count();
        let mut q = self.shared.queue();
        q.jobs.extend(jobs);
        while q.workers < self.max_concurrent && q.workers < q.jobs.len() {
            let (shared, limit, interval) = (self.shared.clone(), self.timeout, self.interval);
            let spawned = thread::Builder::new().name("agent".into()).spawn(move || shared.work(limit, interval));
            match spawned {
                Ok(_) => q.workers += 1,
                Err(err) => {
                    log::warn!("cannot start a thread for the guest agents: {err}");
                    break;
                }
            }
        }
        if q.workers == 0 {
            // No worker at all: the queued VMs are due again next scrape.
            let mut vms = self.shared.lock();
            for job in q.jobs.drain(..) {
                if let Some(e) = vms.get_mut(&job.vmid) {
                    e.in_flight = false;
                }
            }
        }
        Started { count, done }
    }
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker: queries until the queue is empty.
    fn work(&self, limit: Duration, interval: Duration) {
        loop {
            let job = {
                let mut q = self.queue();
                match q.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        q.workers -= 1;
                        return;
                    }
                }
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) + sync_base();
            let r = agent::query(&job.path, limit, id);
            self.store(&job.vmid, job.pid, r, interval);
            if let Some(done) = job.done {
                let _ = done.send(());
            }
        }
    }
}

/// Sync ids differ between daemon runs too (a stale answer may outlive a restart): start from
/// the clock, kept within 31 bits (an agent's `int` of any width holds it).
fn sync_base() -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        (t.as_secs() ^ u64::from(t.subsec_nanos())) & 0x3fff_ffff
    }) + 1
}

fn push_fs(out: &mut MetricSet, id: &LabelValue, fs: &GuestFs) {
    let mp = LabelValue::Shared(fs.mountpoint.as_str().into());
    out.family(&KVM_GUEST_FS_INFO).push(
        [
            ("id", id.clone()),
            ("mountpoint", mp.clone()),
            ("name", fs.name.clone().into()),
            ("type", fs.fstype.clone().into()),
            ("serial", fs.serials.join(",").into()),
        ],
        1u64,
    );
    if let Some(v) = fs.total_bytes {
        out.family(&KVM_GUEST_FS_SIZE_BYTES).push([("id", id.clone()), ("mountpoint", mp.clone())], v);
    }
    if let Some(v) = fs.used_bytes {
        out.family(&KVM_GUEST_FS_USED_BYTES).push([("id", id.clone()), ("mountpoint", mp)], v);
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&Def]] = &[KVM_AGENT];

//! The `replication` collector: each storage replication job of this node's guests, as PVE's
//! own job status lists it (`pvesr status`, the API's replication status), from local files:
//! `/etc/pve/replication.cfg` (through the pmxcfs gate) and the state PVE keeps in
//! `/var/lib/pve-manager/pve-replication-state.json`. The next sync is computed as PVE does
//! (pve-guest-common's `ReplicationState::job_status`): after failures a back-off from the
//! last try, else the job's schedule (a calendar event, in the node's time zone) after it.

use super::{Collector, Context, Error, Group, Need, Setup};
use crate::{
    catalog::*,
    host::BlockingGate,
    metrics::{LabelValue, MetricSet},
    sources::pve::{
        calendar::SystemLocal,
        replication::{self, ReplicationState},
    },
};

const STATE: &str = "var/lib/pve-manager/pve-replication-state.json";

pub fn new(setup: &Setup) -> Box<dyn Collector> {
    Box::new(Replication {
        pmxcfs: setup.stages.pve_config.gate().clone(),
        timeout: setup.config.pmxcfs_timeout,
        skipped: std::sync::Mutex::new((0, 0)),
    })
}

struct Replication {
    pmxcfs: BlockingGate,
    timeout: std::time::Duration,
    /// (sections, lines) of replication.cfg skipped, as last logged.
    skipped: std::sync::Mutex<(usize, usize)>,
}

impl Collector for Replication {
    fn name(&self) -> &'static str {
        "replication"
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        FAMILIES
    }
    fn group(&self) -> Group {
        Group::Pve
    }
    fn needs(&self) -> &'static [Need] {
        &[Need::Guests]
    }
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error> {
        let list = super::guest::node_guests(cx)?;
        let host = cx.host.clone();
        let r = self.pmxcfs.call("pmxcfs", self.timeout, move || host.read_to_string("etc/pve/replication.cfg"));
        let text = match r.and_then(|r| r) {
            Ok(t) => t,
            // No replication.cfg: no job (replication never configured), or not a PVE host.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotApplicable),
            Err(e) => return Err(Error::io(cx.host.path("etc/pve/replication.cfg"), e)),
        };
        let cfg = replication::parse_config(&text);
        // Logged once per change, not on every scrape: what PVE skips costs only itself.
        let skipped = (cfg.skipped_sections, cfg.skipped_lines);
        let mut last = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        if *last != skipped && skipped != (0, 0) {
            log::warn!(
                "replication.cfg: {} section(s) and {} line(s) skipped, as PVE skips them",
                skipped.0,
                skipped.1
            );
        }
        *last = skipped;
        drop(last);
        let node = list.guests.node.as_str();
        // The state PVE keeps: a job that never ran has none. A state file that does not parse
        // fails the collector, as it fails PVE's own status; the jobs are still described.
        let mut errors = Vec::new();
        let state = match cx.host.read_to_string(STATE) {
            Ok(t) => match replication::parse_state(&t) {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(Error::Parse(e));
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(ReplicationState::default()),
            Err(e) => {
                errors.push(Error::io(cx.host.path(STATE), e));
                None
            }
        };
        let online = |target: &str| {
            let m = list.guests.members.as_ref()?;
            // Not a member of the cluster: PVE's job_status treats it as offline.
            Some(m.nodes.iter().any(|n| n.name == target && n.online))
        };
        let guests: std::collections::HashMap<u32, _> =
            list.guests.guests.iter().filter_map(|g| Some((g.vmid.parse::<u32>().ok()?, g.ty))).collect();
        for j in &cfg.jobs {
            let Some(&ty) = guests.get(&j.guest) else { continue };
            let Some(j) = replication::local_job(j, node, Some(node)) else { continue };
            let labels = || {
                [
                    ("id", LabelValue::from(j.guest.to_string())),
                    ("type", ty.as_str().into()),
                    ("job", j.id.clone().into()),
                    ("target", j.target.clone().into()),
                ]
            };
            let [id, ty_l, job, target] = labels();
            out.family(&REPLICATION_INFO).push(
                [
                    id,
                    ty_l,
                    job,
                    target,
                    ("schedule", j.schedule().to_string().into()),
                    ("comment", j.comment.clone().unwrap_or_default().into()),
                ],
                1u64,
            );
            out.family(&REPLICATION_ENABLED).push(labels(), u64::from(!j.disabled));
            let Some(state) = &state else { continue };
            let s = state.job(&j);
            if let Some(s) = s {
                if s.last_sync > 0 {
                    out.family(&REPLICATION_LAST_SYNC).push(labels(), s.last_sync as f64);
                }
                if s.last_try > 0 {
                    out.family(&REPLICATION_LAST_TRY).push(labels(), s.last_try as f64);
                }
                if let Some(d) = s.duration {
                    out.family(&REPLICATION_DURATION).push(labels(), d);
                }
                out.family(&REPLICATION_FAIL_COUNT).push(labels(), s.fail_count.max(0) as f64);
                if let Some(e) = s.error.as_ref().filter(|_| s.fail_count > 0) {
                    let [id, ty_l, job, target] = labels();
                    out.family(&REPLICATION_ERROR_INFO)
                        .push([id, ty_l, job, target, ("error", e.clone().into())], 1u64);
                }
            } else {
                out.family(&REPLICATION_FAIL_COUNT).push(labels(), 0u64);
            }
            if let Some(next) = replication::next_sync(&j, s, online(&j.target), &SystemLocal) {
                out.family(&REPLICATION_NEXT_SYNC).push(labels(), next as f64);
            }
        }
        Error::all(errors)
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&Def]] = &[REPLICATION];

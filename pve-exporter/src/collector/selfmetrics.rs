//! The exporter's own metrics: build, mode, and how each collector did.

use std::time::Duration;

use super::CollectorRun;
use crate::{
    catalog::*,
    metrics::MetricSet,
    sources::kernel::ebpf::{EBPF_OBJECT, EbpfStatus},
};

const NO_LABELS: [(&str, String); 0] = [];

/// The eBPF side as it was set up at start (it does not change while running): taken once, so
/// that reporting it never waits for the lock a collection holds while it reads the maps.
#[derive(Debug, Clone)]
pub struct EbpfSummary {
    pub mode: String,
    pub reason: String,
    pub enabled: bool,
    /// (tracepoint spec, attached)
    pub events: Vec<(String, bool)>,
    /// (program, attached)
    pub programs: Vec<(&'static str, bool)>,
}

impl EbpfSummary {
    pub fn of(st: &EbpfStatus) -> Self {
        let c = st.counters.as_ref();
        Self {
            mode: st.mode.to_string(),
            reason: st.reason.clone(),
            enabled: c.is_some(),
            events: c.map(|c| c.events.iter().map(|e| (e.spec.clone(), e.attached)).collect()).unwrap_or_default(),
            programs: c.map(|c| c.programs.iter().map(|p| (p.program, p.attached)).collect()).unwrap_or_default(),
        }
    }
}

pub fn collect(ebpf: &EbpfSummary, runs: &[CollectorRun], elapsed: Duration, out: &mut MetricSet) {
    let programs = if EBPF_OBJECT.is_some() { "built" } else { "absent" };
    out.family(&BUILD_INFO)
        .push([("version", env!("CARGO_PKG_VERSION").to_string()), ("ebpf_programs", programs.to_string())], 1u64);
    out.family(&EBPF_ENABLED).push(NO_LABELS, ebpf.enabled);
    out.family(&EBPF_INFO).push([("mode", ebpf.mode.clone()), ("reason", ebpf.reason.clone())], 1u64);
    if ebpf.enabled {
        let f = out.family(&EBPF_TRACEPOINT_ATTACHED);
        for (spec, attached) in &ebpf.events {
            f.push([("event", spec.clone())], *attached);
        }
        let f = out.family(&EBPF_PROGRAM_ATTACHED);
        for (program, attached) in &ebpf.programs {
            f.push([("program", program.to_string())], *attached);
        }
    }
    let f = out.family(&COLLECTOR_DURATION);
    for r in runs {
        f.push([("collector", r.name.to_string())], r.duration.as_secs_f64());
    }
    let f = out.family(&COLLECTOR_SUCCESS);
    for r in runs {
        f.push([("collector", r.name.to_string())], r.success);
    }
    let f = out.family(&COLLECTOR_DATA_AGE);
    for r in runs {
        f.push([("collector", r.name.to_string())], r.age.as_secs_f64());
    }
    out.family(&SCRAPE_DURATION).push(NO_LABELS, elapsed.as_secs_f64());
}

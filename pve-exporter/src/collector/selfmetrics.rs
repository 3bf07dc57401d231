//! The exporter's own metrics: build, mode, and how each collector did.

use std::time::Duration;

use super::CollectorRun;
use crate::{
    catalog::*,
    metrics::MetricSet,
    sources::ebpf::{EBPF_OBJECT, EbpfStatus},
};

const NO_LABELS: [(&str, String); 0] = [];

pub fn collect(ebpf: &EbpfStatus, runs: &[CollectorRun], elapsed: Duration, out: &mut MetricSet) {
    let programs = if EBPF_OBJECT.is_some() { "built" } else { "absent" };
    out.family(&BUILD_INFO)
        .push([("version", env!("CARGO_PKG_VERSION").to_string()), ("ebpf_programs", programs.to_string())], 1u64);
    out.family(&EBPF_ENABLED).push(NO_LABELS, ebpf.counters.is_some());
    out.family(&EBPF_INFO).push([("mode", ebpf.mode.to_string()), ("reason", ebpf.reason.clone())], 1u64);
    if let Some(c) = &ebpf.counters {
        let f = out.family(&EBPF_TRACEPOINT_ATTACHED);
        for e in &c.events {
            f.push([("event", e.spec.clone())], e.attached);
        }
        let f = out.family(&EBPF_PROGRAM_ATTACHED);
        for p in &c.programs {
            f.push([("program", p.program.to_string())], p.attached);
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

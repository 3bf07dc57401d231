//! The exporter's own metrics: build, mode, and how each collector did.

use std::time::Duration;

use super::CollectorRun;
use crate::{metrics::MetricSet, sources::ebpf::EbpfStatus};

pub fn collect(ebpf: &EbpfStatus, runs: &[CollectorRun], elapsed: Duration, out: &mut MetricSet) {
    out.gauge("exporter_build_info", "pve-exporter build (1)")
        .push(
            [
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                (
                    "ebpf_programs",
                    if crate::sources::ebpf::EBPF_OBJECT.is_some() {
                        "built"
                    } else {
                        "absent"
                    }
                    .to_string(),
                ),
            ],
            1u64,
        );
    out.gauge(
        "exporter_ebpf_enabled",
        "1 when eBPF programs are attached, 0 in procfs mode",
    )
    .push(Vec::<(&str, String)>::new(), ebpf.counters.is_some());
    out.gauge(
        "exporter_ebpf_info",
        "eBPF mode (ebpf or procfs) and the reason (1)",
    )
    .push(
        [
            ("mode", ebpf.mode.to_string()),
            ("reason", ebpf.reason.clone()),
        ],
        1u64,
    );
    if let Some(c) = &ebpf.counters {
        let f = out.gauge(
            "exporter_ebpf_tracepoint_attached",
            "1 when the tracepoint is counted, 0 when it was skipped",
        );
        for e in &c.events {
            f.push([("event", e.spec.clone())], e.attached);
        }
    }
    let f = out.gauge(
        "exporter_collector_duration_seconds",
        "Time each collector took in this scrape",
    );
    for r in runs {
        f.push(
            [("collector", r.name.to_string())],
            r.duration.as_secs_f64(),
        );
    }
    let f = out.gauge(
        "exporter_collector_success",
        "1 when the collector worked in this scrape, 0 when it failed",
    );
    for r in runs {
        f.push([("collector", r.name.to_string())], r.success);
    }
    out.gauge(
        "scrape_duration_seconds",
        "Time this scrape's collection took",
    )
    .push(Vec::<(&str, String)>::new(), elapsed.as_secs_f64());
}

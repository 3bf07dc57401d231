//! Per-VM guest memory as the guest sees it: the balloon's size and the balloon driver's
//! statistics, asked in the scrape's monitor exchange (the `qm` stage: `query-balloon` and the
//! device's `guest-stats` in the same pipelined QMP request as the disk counters; `info
//! balloon` and HMP `qom-get` in a `qm monitor` session). No second connection per VM.

use super::{Collector, Context, Error, Group, Need, Setup};
use crate::{
    catalog::*,
    metrics::{LabelValue, MetricSet},
};

pub fn new(_: &Setup) -> Box<dyn Collector> {
    Box::new(BalloonCollector)
}

struct BalloonCollector;

impl Collector for BalloonCollector {
    fn name(&self) -> &'static str {
        "balloon"
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        FAMILIES
    }
    fn group(&self) -> Group {
        Group::Vms
    }
    fn needs(&self) -> &'static [Need] {
        &[Need::Vms, Need::Monitor]
    }
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error> {
        // The monitor's own failures are the `qm` stage's to report; a VM without a balloon
        // device, or whose guest has not reported, has fewer series, not an error.
        for d in cx.devices() {
            let Some(Some(b)) = &d.balloon else { continue };
            let id = LabelValue::Shared(d.id.as_str().into());
            let one = || [("id", id.clone())];
            if let Some(actual) = b.actual {
                out.family(&KVM_BALLOON_ACTUAL_BYTES).push(one(), actual);
            }
            let Some(s) = &b.stats else { continue };
            out.family(&KVM_GUEST_MEMORY_STATS_TIMESTAMP).push(one(), s.last_update);
            for (kind, v) in [
                ("total", s.total_bytes),
                ("free", s.free_bytes),
                ("available", s.available_bytes),
                ("cache", s.disk_caches_bytes),
            ] {
                if let Some(v) = v {
                    out.family(&KVM_GUEST_MEMORY_BYTES).push([("id", id.clone()), ("type", kind.into())], v);
                }
            }
            if let Some(v) = s.used_bytes() {
                out.family(&KVM_GUEST_MEMORY_USED_BYTES).push(one(), v);
            }
            if let Some(v) = s.swap_in_bytes {
                out.family(&KVM_GUEST_SWAP_IN_BYTES).push(one(), v);
            }
            if let Some(v) = s.swap_out_bytes {
                out.family(&KVM_GUEST_SWAP_OUT_BYTES).push(one(), v);
            }
            for (kind, v) in [("major", s.major_faults), ("minor", s.minor_faults)] {
                if let Some(v) = v {
                    out.family(&KVM_GUEST_PAGE_FAULTS).push([("id", id.clone()), ("type", kind.into())], v);
                }
            }
        }
        Ok(())
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&Def]] = &[KVM_BALLOON];

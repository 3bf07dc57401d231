//! Per-VM families from the eBPF maps, and the programs' own overhead. The maps are keyed by
//! QEMU pid; this is where pids become VMs.

use std::collections::HashSet;

use pve_exporter_common::{
    HALT_INVALID, HALT_POLLED, HALT_WAITED, HIST_EXIT_HANDLING, HIST_RUNQUEUE_WAIT, Hist, programs,
};

use crate::{
    catalog::*,
    host::HostRoot,
    metrics::{HistogramValue, LabelValue, MetricSet},
    sources::kernel::ebpf::{EbpfCounters, EbpfError, exported_buckets, userspace_exit_label},
    vm::Vm,
};

/// Read the maps and add the per-VM eBPF families. `vcpus` are (QEMU pid, thread id) of every
/// vCPU thread of the VMs (for the run-queue program). Counters of processes that exited are
/// removed from the maps.
pub fn collect(
    host: &HostRoot,
    counters: &mut EbpfCounters,
    vms: &[Vm],
    vcpus: &[(u32, u32)],
    out: &mut MetricSet,
) -> Result<(), EbpfError> {
    counters.sync_vcpus(vcpus);
    let pids: Vec<u32> = vms.iter().map(|v| v.pid).collect();
    // VM processes that exited since the last scrape: their counters go now, before a new
    // process on the same pid is registered and counted (it would otherwise carry them on).
    // The keys to remove come from a read of the maps, needed only then.
    let exited = counters.exited(&pids);
    if !exited.is_empty() {
        let snap = counters.read()?;
        counters.forget(&exited, &snap);
    }
    counters.sync_vms(&pids);
    let snap = counters.read()?;
    // One shared `id` value per VM: the rows below clone it, not the string.
    let by_pid: crate::fasthash::FastMap<u32, LabelValue> =
        vms.iter().map(|v| (v.pid, super::kvm::shared_id(v))).collect();
    let id = |tgid: u32| by_pid.get(&tgid).cloned();

    // (id, label value, value) rows sorted for a stable output.
    fn sorted<T>(mut rows: Vec<(LabelValue, String, T)>) -> Vec<(LabelValue, String, T)> {
        rows.sort_by(|a, b| (a.0.len(), a.0.as_str(), &a.1).cmp(&(b.0.len(), b.0.as_str(), &b.1)));
        rows
    }

    let rows = snap
        .event_totals(&counters.events)
        .into_iter()
        .filter_map(|((tgid, event), n)| Some((id(tgid)?, event, n)))
        .collect();
    let f = out.family(&KVM_TRACEPOINT_EVENTS);
    for (vm, event, n) in sorted(rows) {
        f.push([("id", vm), ("event", event.into())], n);
    }

    let rows = snap
        .userspace_exits
        .iter()
        .filter_map(|(&(tgid, r), &n)| Some((id(tgid)?, userspace_exit_label(&counters.userspace_exit_names, r), n)))
        .collect();
    let f = out.family(&KVM_USERSPACE_EXITS);
    for (vm, reason, n) in sorted(rows) {
        f.push([("id", vm), ("reason", reason.into())], n);
    }

    // Several raw reasons can share a label (an unknown isa); merge them.
    let mut exits: crate::fasthash::FastMap<(LabelValue, String), (u64, u64)> = Default::default();
    for (&(tgid, isa, reason), v) in &snap.exits {
        if let Some(vm) = id(tgid) {
            let e = exits.entry((vm, counters.exit_reasons.label(isa, reason))).or_default();
            e.0 += v.count;
            e.1 += v.ns;
        }
    }
    let rows: Vec<_> = exits.into_iter().map(|((vm, r), v)| (vm, r, v)).collect();
    let rows = sorted(rows);
    let f = out.family(&KVM_EXITS);
    for (vm, reason, (count, _)) in &rows {
        f.push([("id", vm.clone()), ("reason", reason.clone().into())], *count);
    }
    let f = out.family(&KVM_EXIT_HANDLING_SECONDS_BY_REASON);
    for (vm, reason, (_, ns)) in &rows {
        f.push([("id", vm.clone()), ("reason", reason.clone().into())], *ns as f64 / 1e9);
    }

    // Each VM's histogram from the scrape that first sees it, at zero until its first
    // observation (as client libraries do for a known label set: rate() and
    // histogram_quantile() work from the start), wherever the program that observes is
    // attached: the exit time is recorded by kvm_entry's, the run-queue wait by sched_switch's.
    let zero = Hist::default();
    for (kind, def, program) in [
        (HIST_EXIT_HANDLING, &KVM_EXIT_HANDLING_SECONDS, programs::KVM_ENTRY),
        (HIST_RUNQUEUE_WAIT, &KVM_RUNQUEUE_WAIT_SECONDS, programs::SCHED_SWITCH),
    ] {
        let mut rows: Vec<(LabelValue, String, &Hist)> = snap
            .hists
            .iter()
            .filter(|(k, _)| k.1 == kind)
            .filter_map(|(&(tgid, _), h)| Some((id(tgid)?, String::new(), h)))
            .collect();
        if counters.program_attached(program) {
            let seen: HashSet<u32> = snap.hists.keys().filter(|k| k.1 == kind).map(|k| k.0).collect();
            rows.extend(
                by_pid
                    .iter()
                    .filter(|(tgid, _)| !seen.contains(tgid))
                    .map(|(_, vm)| (vm.clone(), String::new(), &zero)),
            );
        }
        let f = out.family(def);
        for (vm, _, h) in sorted(rows) {
            let (buckets, count) = exported_buckets(h);
            f.push([("id", vm)], HistogramValue { buckets, sum: h.sum_ns as f64 / 1e9, count });
        }
    }

    let outcome = |o: u32| match o {
        HALT_POLLED => "polled",
        HALT_WAITED => "waited",
        HALT_INVALID => "invalid",
        _ => "unknown",
    };
    let rows = snap.halt.iter().filter_map(|(&(tgid, o), v)| Some((id(tgid)?, outcome(o).to_string(), *v))).collect();
    let rows = sorted(rows);
    let f = out.family(&KVM_HALT_WAKEUPS);
    for (vm, o, v) in &rows {
        f.push([("id", vm.clone()), ("outcome", o.clone().into())], v.count);
    }
    let f = out.family(&KVM_HALT_SECONDS);
    for (vm, o, v) in &rows {
        f.push([("id", vm.clone()), ("outcome", o.clone().into())], v.ns as f64 / 1e9);
    }

    // The programs' own cost.
    for (program, runs, time) in &snap.prog_stats {
        out.family(&EBPF_PROGRAM_RUNS).push([("program", program.clone())], *runs);
        out.family(&EBPF_PROGRAM_RUN_SECONDS).push([("program", program.clone())], time.as_secs_f64());
    }
    for (map, entries, cap) in &snap.maps {
        out.family(&EBPF_MAP_ENTRIES).push([("map", map.to_string())], *entries as u64);
        out.family(&EBPF_MAP_CAPACITY).push([("map", map.to_string())], *cap);
    }
    let f = out.family(&EBPF_UNCOUNTED);
    for (cause, n) in &snap.errors {
        f.push([("cause", cause.to_string())], *n);
    }

    // Processes gone from the host (not merely not VMs): forget their counters.
    let dead: HashSet<u32> = snap
        .tgids()
        .into_iter()
        .filter(|tgid| !by_pid.contains_key(tgid) && !host.path(format!("proc/{tgid}")).exists())
        .collect();
    if !dead.is_empty() {
        counters.forget(&dead, &snap);
    }
    Ok(())
}

pub fn new(_: &super::Setup) -> Box<dyn super::Collector> {
    Box::new(EbpfMaps)
}

/// The eBPF programs' own figures this collector reads from the maps.
static EBPF_SELF: &[&Def] =
    &[&EBPF_PROGRAM_RUNS, &EBPF_PROGRAM_RUN_SECONDS, &EBPF_MAP_ENTRIES, &EBPF_MAP_CAPACITY, &EBPF_UNCOUNTED];

/// The `ebpf` collector: not applicable in procfs mode.
struct EbpfMaps;

impl super::Collector for EbpfMaps {
    fn name(&self) -> &'static str {
        "ebpf"
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        FAMILIES
    }
    fn group(&self) -> super::Group {
        super::Group::Vms
    }
    fn needs(&self) -> &'static [super::Need] {
        &[super::Need::Vms]
    }
    fn collect(&self, cx: &super::Context, out: &mut MetricSet) -> Result<(), super::Error> {
        let mut st = cx.engine.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        let Some(counters) = st.counters.as_mut() else { return Err(super::Error::NotApplicable) };
        let vms = &cx.vms().vms;
        // vCPU threads of the VMs, for the run-queue program (as the vcpu collector listed
        // and checked them just now).
        let threads = &cx.stage_state().vcpu_threads;
        let vcpus = threads.listed(vms.iter().map(|vm| vm.pid));
        collect(cx.host, counters, vms, &vcpus, out).map_err(|e| super::Error::source("eBPF maps", e))
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&crate::catalog::Def]] = &[KVM_EBPF, EBPF_SELF];

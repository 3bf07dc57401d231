//! `kvm_exit` / `kvm_entry`: exits per (process, isa, reason), and the time from a vCPU's exit
//! to its next entry (exit handling time) as a histogram and per reason; `kvm_entry` also
//! counts entries per process (the kvm_entry event). The daemon's side:
//! pve-exporter/src/sources/kernel/ebpf/exits.rs.

use aya_ebpf::{
    Global,
    bindings::BPF_F_NO_PREALLOC,
    macros::{map, tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::TracePointContext,
};
use pve_exporter_common::{
    CountNs, ERR_NEGATIVE_DELTA, ERR_UNMATCHED_ENTRY, ExitKey, ExitSlot, HIST_EXIT_HANDLING, ISA_SVM, ISA_UNKNOWN,
    MAX_EXIT_KEYS, SLOT_KVM_ENTRY,
};

use crate::{
    events::count,
    shared::{add_count_ns, anomaly, ids, now, read, record_hist},
};

/// Exits and nanoseconds from each exit to the vCPU's next entry, per (process, isa, reason).
#[map]
static EXITS: PerCpuHashMap<ExitKey, CountNs> = PerCpuHashMap::with_max_entries(MAX_EXIT_KEYS, BPF_F_NO_PREALLOC);
/// The exit pending on this CPU.
#[map]
static EXIT_SLOT: PerCpuArray<ExitSlot> = PerCpuArray::with_max_entries(1, 0);

// Field offsets, set by the loader from the format file.
#[unsafe(no_mangle)]
static EXIT_REASON_OFFSET: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static EXIT_ISA_OFFSET: Global<u32> = Global::new(24);

#[tracepoint]
pub fn kvm_exit(ctx: TracePointContext) -> u32 {
    let Some(reason) = read::<u32>(&ctx, &EXIT_REASON_OFFSET) else { return 0 };
    let isa =
        if EXIT_ISA_OFFSET.load() == u32::MAX { ISA_UNKNOWN } else { read::<u32>(&ctx, &EXIT_ISA_OFFSET).unwrap_or(0) };
    // VMX keeps flags (FAILED_VMENTRY, ...) in the high bits; SVM codes use them (VMGEXIT).
    let reason = if isa == ISA_SVM { reason } else { reason & 0xffff };
    let (tgid, tid) = ids();
    add_count_ns(&ctx, &EXITS, ExitKey { tgid, isa, reason }, 1, 0);
    if let Some(slot) = EXIT_SLOT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *slot = ExitSlot { tid, tgid, isa, reason, ts: now() } };
    }
    0
}

#[tracepoint]
pub fn kvm_entry(ctx: TracePointContext) -> u32 {
    // Runs in the vCPU thread. Every entry is counted here, so that the kvm_entry event
    // needs no counter program of its own on this tracepoint.
    let (tgid, tid) = ids();
    count(&ctx, tgid, SLOT_KVM_ENTRY as usize);
    let Some(slot) = EXIT_SLOT.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot.
    let s = unsafe { *slot };
    if s.tid == 0 {
        return 0; // first entry since attach, or already matched
    }
    if s.tid != tid {
        anomaly(&ctx, ERR_UNMATCHED_ENTRY);
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*slot).tid = 0 };
    let t = now();
    if t < s.ts {
        anomaly(&ctx, ERR_NEGATIVE_DELTA);
        return 0;
    }
    let ns = t - s.ts;
    record_hist(&ctx, s.tgid, HIST_EXIT_HANDLING, ns);
    add_count_ns(&ctx, &EXITS, ExitKey { tgid: s.tgid, isa: s.isa, reason: s.reason }, 0, ns);
    0
}

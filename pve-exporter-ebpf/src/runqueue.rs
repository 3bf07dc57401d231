//! `sched_wakeup`, `sched_wakeup_new`, `sched_switch`: the run-queue wait of vCPU threads (from
//! becoming runnable to running), as a histogram per process. The daemon's side:
//! pve-exporter/src/sources/kernel/ebpf/runqueue.rs.

use aya_ebpf::{
    Global,
    bindings::BPF_F_NO_PREALLOC,
    macros::{map, tracepoint},
    maps::{Array, HashMap},
    programs::TracePointContext,
};
use pve_exporter_common::{
    ERR_NEGATIVE_DELTA, HIST_RUNQUEUE_WAIT, MAX_VCPU_THREADS, VCPU_FILTER_SIZE, preempted, vcpu_filter_slot,
};

use crate::shared::{anomaly, now, read, record_hist};

/// vCPU thread id -> its process. Written only by user space (from thread names,
/// `CPU n/KVM`), which also removes the entries of stopped VMs: exact, no scans.
#[map]
static VCPU_THREADS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_VCPU_THREADS, BPF_F_NO_PREALLOC);
/// Registered vCPU threads per `tid & 0xffff` (see `VCPU_FILTER_SIZE`); written by user space.
#[map]
static VCPU_FILTER: Array<u8> = Array::with_max_entries(VCPU_FILTER_SIZE, 0);
/// vCPU thread id -> when it became runnable (woken, or preempted while runnable).
#[map]
static WAIT_START: HashMap<u32, u64> = HashMap::with_max_entries(MAX_VCPU_THREADS, 0);

// Field offsets, set by the loader from the format files.
#[unsafe(no_mangle)]
static SCHED_WAKEUP_PID_OFFSET: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
static SCHED_WAKEUP_NEW_PID_OFFSET: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
static SWITCH_PREV_PID_OFFSET: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
static SWITCH_PREV_STATE_OFFSET: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
static SWITCH_NEXT_PID_OFFSET: Global<u32> = Global::new(56);

/// Whether `pid` may be a registered vCPU thread: false for almost every thread of the host
/// at the cost of an inlined array lookup.
#[inline(always)]
fn maybe_vcpu(pid: i32) -> bool {
    pid > 0 && VCPU_FILTER.get(vcpu_filter_slot(pid as u32)).is_some_and(|n| *n != 0)
}

/// The woken thread is in the record (this runs in the waker's context: never use the
/// current task for it).
#[inline(always)]
fn wakeup(ctx: &TracePointContext, pid_offset: &Global<u32>) -> u32 {
    let Some(pid) = read::<i32>(ctx, pid_offset) else { return 0 };
    if maybe_vcpu(pid) && VCPU_THREADS.get_ptr(pid as u32).is_some() {
        let _ = WAIT_START.insert(pid as u32, now(), 0);
    }
    0
}

#[tracepoint]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    wakeup(&ctx, &SCHED_WAKEUP_PID_OFFSET)
}

#[tracepoint]
pub fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    wakeup(&ctx, &SCHED_WAKEUP_NEW_PID_OFFSET)
}

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let (Some(prev), Some(next)) =
        (read::<i32>(&ctx, &SWITCH_PREV_PID_OFFSET), read::<i32>(&ctx, &SWITCH_NEXT_PID_OFFSET))
    else {
        return 0;
    };
    let (prev_vcpu, next_vcpu) = (maybe_vcpu(prev), maybe_vcpu(next));
    if !prev_vcpu && !next_vcpu {
        return 0; // the common case: two threads that are not vCPUs
    }
    // A vCPU thread switched out while still runnable waits on the run queue from now.
    if prev_vcpu
        && VCPU_THREADS.get_ptr(prev as u32).is_some()
        && read::<u64>(&ctx, &SWITCH_PREV_STATE_OFFSET).is_some_and(preempted)
    {
        let _ = WAIT_START.insert(prev as u32, now(), 0);
    }
    if !next_vcpu {
        return 0;
    }
    let next = next as u32;
    let Some(tgid) = VCPU_THREADS.get_ptr(next) else { return 0 };
    // SAFETY: a value pointer of this map, read once.
    let tgid = unsafe { *tgid };
    let Some(start) = WAIT_START.get_ptr(next) else { return 0 };
    // SAFETY: as above.
    let start = unsafe { *start };
    let _ = WAIT_START.remove(next);
    let t = now();
    // Timestamps taken on different CPUs can be slightly out of order.
    if t < start {
        anomaly(&ctx, ERR_NEGATIVE_DELTA);
        return 0;
    }
    record_hist(&ctx, tgid, HIST_RUNQUEUE_WAIT, t - start);
    0
}

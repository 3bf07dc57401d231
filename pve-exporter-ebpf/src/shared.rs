//! What several programs share: the registry of VMs (`VM_INDEX`), the histograms (exit
//! handling and run-queue wait), the anomaly counters, and the helpers.

use aya_ebpf::{
    EbpfContext, Global,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use pve_exporter_common::{
    CountNs, ERR_MAP_FULL, ERR_SLOTS, HIST_BUCKETS, Hist, MAX_HIST_KEYS, TgidKey, VM_INDEX_SIZE, VmSlot, hist_bucket,
    vm_index_slot,
};

/// Registered VMs: `tgid & 0xffff` -> (tgid, index in the counter arrays). Written by user
/// space only, which zeroes an index's counters before it hands the index out.
#[map]
static VM_INDEX: Array<VmSlot> = Array::with_max_entries(VM_INDEX_SIZE, 0);
/// Histograms: (process, kind) -> buckets and sum.
#[map]
static HIST: PerCpuHashMap<TgidKey, Hist> = PerCpuHashMap::with_max_entries(MAX_HIST_KEYS, 0);
/// A zeroed Hist to insert from (keeps it off the programs' 512-byte stack). Never written.
#[map]
static HIST_ZERO: Array<Hist> = Array::with_max_entries(1, 0);
#[map]
static COUNTER_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ERR_SLOTS, 0);

/// Count an anomaly; log it the first time it happens on this CPU (never per event).
#[inline(always)]
pub fn anomaly<C: EbpfContext>(ctx: &C, slot: u32) {
    if let Some(p) = COUNTER_ERRORS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot; tracepoint programs do not nest on one CPU.
        let n = unsafe {
            *p += 1;
            *p
        };
        if n == 1 {
            warn!(ctx, "pve-exporter: anomaly {} seen on this CPU (counted from now on)", slot);
        }
    }
}

#[inline(always)]
pub fn ids() -> (u32, u32) {
    let v = bpf_get_current_pid_tgid();
    ((v >> 32) as u32, v as u32)
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn read<T>(ctx: &TracePointContext, offset: &Global<u32>) -> Option<T> {
    // SAFETY: a read within the record at an offset the loader validated against the
    // format file, through bpf_probe_read_kernel.
    unsafe { ctx.read_at::<T>(offset.load() as usize) }.ok()
}

#[inline(always)]
pub fn record_hist(ctx: &TracePointContext, tgid: u32, kind: u32, ns: u64) {
    let key = TgidKey { tgid, sub: kind };
    let mut p = HIST.get_ptr_mut(key);
    if p.is_none() {
        if let Some(zero) = HIST_ZERO.get(0) {
            // NOEXIST: never reset a histogram another CPU just created.
            let _ = HIST.insert(key, zero, BPF_NOEXIST as u64);
        }
        p = HIST.get_ptr_mut(key);
    }
    let Some(p) = p else {
        anomaly(ctx, ERR_MAP_FULL);
        return;
    };
    let b = (hist_bucket(ns) as usize).min(HIST_BUCKETS - 1);
    // SAFETY: this CPU's value; tracepoint programs do not nest on one CPU.
    unsafe {
        if let Some(c) = (*p).buckets.get_mut(b) {
            *c += 1;
        }
        (*p).sum_ns += ns;
    }
}

/// Add to a per-CPU CountNs value.
#[inline(always)]
pub fn add_count_ns<K>(ctx: &TracePointContext, map: &PerCpuHashMap<K, CountNs>, key: K, count: u64, ns: u64) {
    if let Some(p) = map.get_ptr_mut(&key) {
        // SAFETY: this CPU's value.
        unsafe {
            (*p).count += count;
            (*p).ns += ns;
        }
    } else if map.insert(&key, CountNs { count, ns }, BPF_NOEXIST as u64).is_err() {
        match map.get_ptr_mut(&key) {
            // SAFETY: as above.
            Some(p) => unsafe {
                (*p).count += count;
                (*p).ns += ns;
            },
            None => anomaly(ctx, ERR_MAP_FULL),
        }
    }
}

/// The counter-array index of a registered VM.
#[inline(always)]
pub fn vm_index(tgid: u32) -> Option<u32> {
    let s = VM_INDEX.get(vm_index_slot(tgid))?;
    // tgid 0 (the idle task) must not match a free slot.
    (s.tgid == tgid && tgid != 0).then_some(s.index)
}

/// Add `n` to `key` of a per-CPU u64 counter map.
macro_rules! add {
    ($ctx:expr, $map:expr, $key:expr, $n:expr) => {{
        let key = $key;
        let n: u64 = $n;
        if let Some(p) = $map.get_ptr_mut(key) {
            // SAFETY: this CPU's value; tracepoint programs do not nest on one CPU.
            unsafe { *p += n };
        } else if $map.insert(key, n, aya_ebpf::bindings::BPF_NOEXIST as u64).is_err() {
            // First event of this key on any CPU: NOEXIST so that a concurrent first insert
            // from another CPU is not overwritten; on EEXIST the element exists now.
            match $map.get_ptr_mut(key) {
                // SAFETY: as above.
                Some(p) => unsafe { *p += n },
                None => $crate::shared::anomaly($ctx, pve_exporter_common::ERR_MAP_FULL),
            }
        }
    }};
}

//! `count_event_<slot>`: one raw-tracepoint program per counted tracepoint, counting per
//! (process, slot); registered VMs in a per-CPU array, other processes in a hash. (Why a
//! program per slot: `pve_exporter_common::EVENT_SLOTS`.) The daemon's side:
//! pve-exporter/src/sources/kernel/ebpf/events.rs.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_NO_PREALLOC,
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use pve_exporter_common::{EventCounts, MAX_EVENT_KEYS, MAX_INDEXED_VMS, TgidKey};

use crate::shared::{ids, vm_index};

/// Per registered VM: events of each tracepoint slot.
#[map]
static EVENT_ARRAY: PerCpuArray<EventCounts> = PerCpuArray::with_max_entries(MAX_INDEXED_VMS, 0);
// Not preallocated (NO_PREALLOC): hash maps that only KVM tracepoints write (in the vCPU
// thread, never under a scheduler lock, where allocating could deadlock) or only user space
// writes. A preallocated per-CPU hash reserves max_entries values on every possible CPU up
// front (EXITS: 16 B x 16384 keys = 256 KiB per CPU, 32 MiB at 128 CPUs), yet these hold a
// few keys per running VM, each allocated at its first event.
/// The same counters for processes not registered.
#[map]
static EVENT_COUNTS: PerCpuHashMap<TgidKey, u64> = PerCpuHashMap::with_max_entries(MAX_EVENT_KEYS, BPF_F_NO_PREALLOC);

/// +1 in `slot` of the process's counters: its array value when registered, else the hash.
#[inline(always)]
pub fn count<C: EbpfContext>(ctx: &C, tgid: u32, slot: usize) {
    if let Some(i) = vm_index(tgid)
        && let Some(c) = EVENT_ARRAY.get_ptr_mut(i)
    {
        // SAFETY: this CPU's value; programs do not nest on one CPU. `slot` is a constant
        // below EVENT_COUNT_SLOTS.
        unsafe { (*c).n[slot] += 1 };
        return;
    }
    add!(ctx, EVENT_COUNTS, TgidKey { tgid, sub: slot as u32 }, 1);
}

macro_rules! slot_programs {
    ($($name:ident = $slot:literal),* $(,)?) => {$(
        #[raw_tracepoint]
        pub fn $name(ctx: RawTracePointContext) -> u32 {
            count(&ctx, ids().0, $slot);
            0
        }
    )*};
}

// Keep in step with pve_exporter_common::EVENT_SLOTS.
slot_programs!(
    count_event_0 = 0,
    count_event_1 = 1,
    count_event_2 = 2,
    count_event_3 = 3,
    count_event_4 = 4,
    count_event_5 = 5,
    count_event_6 = 6,
    count_event_7 = 7,
    count_event_8 = 8,
    count_event_9 = 9,
    count_event_10 = 10,
    count_event_11 = 11,
    count_event_12 = 12,
    count_event_13 = 13,
    count_event_14 = 14,
    count_event_15 = 15,
    count_event_16 = 16,
    count_event_17 = 17,
    count_event_18 = 18,
    count_event_19 = 19,
    count_event_20 = 20,
    count_event_21 = 21,
    count_event_22 = 22,
    count_event_23 = 23,
);

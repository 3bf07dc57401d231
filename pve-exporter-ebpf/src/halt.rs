//! `vcpu_wakeup`: halt-polling outcome (polled, waited, invalid) and time halted, per process.
//! The daemon's side: pve-exporter/src/sources/kernel/ebpf/halt.rs.

use aya_ebpf::{
    Global,
    bindings::BPF_F_NO_PREALLOC,
    macros::{map, tracepoint},
    maps::PerCpuHashMap,
    programs::TracePointContext,
};
use pve_exporter_common::{CountNs, HALT_INVALID, HALT_POLLED, HALT_WAITED, MAX_HALT_KEYS, TgidKey};

use crate::shared::{add_count_ns, ids, read};

#[map]
static HALT: PerCpuHashMap<TgidKey, CountNs> = PerCpuHashMap::with_max_entries(MAX_HALT_KEYS, BPF_F_NO_PREALLOC);

// Field offsets, set by the loader from the format file.
#[unsafe(no_mangle)]
static WAKEUP_NS_OFFSET: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static WAKEUP_WAITED_OFFSET: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static WAKEUP_VALID_OFFSET: Global<u32> = Global::new(17);

/// Halt polling: `waited` false means polling caught the wakeup (no sleep).
#[tracepoint]
pub fn vcpu_wakeup(ctx: TracePointContext) -> u32 {
    let (Some(ns), Some(waited), Some(valid)) = (
        read::<u64>(&ctx, &WAKEUP_NS_OFFSET),
        read::<u8>(&ctx, &WAKEUP_WAITED_OFFSET),
        read::<u8>(&ctx, &WAKEUP_VALID_OFFSET),
    ) else {
        return 0;
    };
    let outcome = match (valid != 0, waited != 0) {
        (false, _) => HALT_INVALID,
        (true, false) => HALT_POLLED,
        (true, true) => HALT_WAITED,
    };
    add_count_ns(&ctx, &HALT, TgidKey { tgid: ids().0, sub: outcome }, 1, ns);
    0
}

//! `count_userspace_exit`: kvm_userspace_exit per (process, reason), a raw tracepoint. The
//! daemon's side: pve-exporter/src/sources/kernel/ebpf/userspace_exits.rs.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use pve_exporter_common::{
    MAX_INDEXED_VMS, MAX_REASON_KEYS, REASON_ERROR, REASON_RESTART, TgidKey, UexitCounts, uexit_slot,
};

use crate::shared::{ids, vm_index};

/// Per registered VM: exits to user space by reason.
#[map]
static UEXIT_ARRAY: PerCpuArray<UexitCounts> = PerCpuArray::with_max_entries(MAX_INDEXED_VMS, 0);
#[map]
static USERSPACE_EXITS: PerCpuHashMap<TgidKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_REASON_KEYS, BPF_F_NO_PREALLOC);

/// kvm_userspace_exit by reason. As the kernel prints it, a negative errno makes the exit
/// a restart (-EINTR) or an error rather than an exit with a reason. A raw tracepoint:
/// `TP_PROTO(__u32 reason, int errno)`, unchanged since the tracepoint exists (the loader
/// still checks the format file has both fields).
#[raw_tracepoint]
pub fn count_userspace_exit(ctx: RawTracePointContext) -> u32 {
    let reason = ctx.arg::<u64>(0) as u32;
    let errno = ctx.arg::<u64>(1) as i32;
    let reason = match errno {
        0.. => reason,
        -4 => REASON_RESTART,
        _ => REASON_ERROR,
    };
    let tgid = ids().0;
    if let Some(i) = vm_index(tgid)
        && let Some(s) = uexit_slot(reason)
        && let Some(c) = UEXIT_ARRAY.get_ptr_mut(i)
    {
        // SAFETY: this CPU's value; programs do not nest on one CPU.
        if let Some(n) = unsafe { (*c).n.get_mut(s as usize) } {
            *n += 1;
            return 0;
        }
    }
    add!(&ctx, USERSPACE_EXITS, TgidKey { tgid, sub: reason }, 1);
    0
}

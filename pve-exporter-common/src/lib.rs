//! Types shared by the eBPF programs (kernel side) and the daemon (user side).
//!
//! Everything here is `#[repr(C)]` plain data without padding: the same bytes are written by
//! the BPF programs and read back by aya, so a layout change is made on both sides at once
//! (it is, because both sides compile this crate).
#![no_std]

/// Key of the per-process counter maps: a process (the QEMU pid) and a sub-key whose meaning
/// depends on the map (tracepoint slot, exit reason, halt outcome, histogram bucket, ...).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TgidKey {
    /// Thread group id (the QEMU process id) of the vCPU thread.
    pub tgid: u32,
    pub sub: u32,
}

/// Key of `EXITS`: kvm_exit per process, instruction set and reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ExitKey {
    pub tgid: u32,
    /// `isa` of the record: 1 = VMX (Intel), 2 = SVM (AMD), [`ISA_UNKNOWN`] when the kernel's
    /// kvm_exit has no isa field (user space then decides by CPU vendor).
    pub isa: u32,
    /// The exit reason as recorded (VMX: low 16 bits only; the high bits are flags).
    pub reason: u32,
}

pub const ISA_VMX: u32 = 1;
pub const ISA_SVM: u32 = 2;
pub const ISA_UNKNOWN: u32 = 0;

/// Per-CPU state between a vCPU thread's kvm_exit and its next kvm_entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitSlot {
    /// The thread that exited (0: no exit pending on this CPU).
    pub tid: u32,
    pub tgid: u32,
    pub isa: u32,
    pub reason: u32,
    /// bpf_ktime_get_ns() at the exit.
    pub ts: u64,
}

/// Sub-keys of `HIST`: which histogram.
pub const HIST_RUNQUEUE_WAIT: u32 = 0;
pub const HIST_EXIT_HANDLING: u32 = 1;
/// Buckets of a [`Hist`]: exactly the exported ones (see [`hist_bucket`]): below 2^10 ns, then
/// one per factor of four up to 2^30 ns (~1.07 s), and one above. Bucketing in the program at
/// the exported resolution (rather than per power of two, 40 buckets) keeps each value at 104
/// bytes instead of 328: `HIST` is a per-CPU map, so every byte is paid once per possible CPU
/// and key.
pub const HIST_BUCKETS: usize = 12;
/// The lowest exported bucket boundary is 2^HIST_FIRST_BIT ns; each next one is 4 times higher.
pub const HIST_FIRST_BIT: u32 = 10;

/// The [`Hist`] bucket of a duration: 0 for [0, 2^10) ns, i for [2^(8+2i), 2^(10+2i)) ns
/// (i = 1..=10), 11 from 2^30 ns up. Each exported `le` boundary is a bucket boundary, so
/// the exported cumulative counts are exact.
#[inline(always)]
pub const fn hist_bucket(ns: u64) -> u32 {
    let b = log2_bucket(ns);
    if b < HIST_FIRST_BIT {
        0
    } else {
        let i = (b - HIST_FIRST_BIT) / 2 + 1;
        if i > HIST_BUCKETS as u32 - 1 { HIST_BUCKETS as u32 - 1 } else { i }
    }
}

/// Value of `HIST`: one histogram of durations per (process, kind), so a scrape reads one
/// map entry per VM and kind rather than one per bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hist {
    pub buckets: [u64; HIST_BUCKETS],
    pub sum_ns: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self { buckets: [0; HIST_BUCKETS], sum_ns: 0 }
    }
}

/// Sub-keys of `HALT`: the outcome of a vCPU wakeup from halt.
pub const HALT_POLLED: u32 = 0;
pub const HALT_WAITED: u32 = 1;
pub const HALT_INVALID: u32 = 2;

/// Value of `HALT` (wakeups, nanoseconds halted) and of `EXITS` (exits, nanoseconds from the
/// exit to the vCPU's next entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountNs {
    pub count: u64,
    pub ns: u64,
}

/// Counter programs in the object (`count_event_0` .. `count_event_<EVENT_SLOTS-1>`), so at
/// most this many tracepoints can be counted at once.
///
/// Why one program per tracepoint and not one program telling events apart by the record's
/// `common_type`: before a tracepoint's BPF programs run, the kernel overwrites the first 8
/// bytes of the record (common_type, flags, preempt_count, pid) with a `pt_regs` pointer
/// (`perf_trace_run_bpf_submit`), so the event id cannot be read there; and aya 0.14 does
/// not attach tracepoints with a BPF cookie.
pub const EVENT_SLOTS: u32 = 24;

/// `kvm_userspace_exit` with errno -EINTR (the run was interrupted and is restarted).
pub const REASON_RESTART: u32 = u32::MAX - 1;
/// `kvm_userspace_exit` with another negative errno.
pub const REASON_ERROR: u32 = u32::MAX;

// ---- registered VMs: counters in arrays -------------------------------------------------------
//
// The hot counters (every tracepoint slot, every exit to user space) of a VM that user space
// registered are counted in per-CPU arrays: one direct-mapped array lookup finds the VM's index,
// one per-CPU array lookup its counters, both inlined by the verifier, no hashing. Events of
// processes not registered (a VM started since the last scrape, more VMs than
// `MAX_INDEXED_VMS`, a `VM_INDEX` slot taken by another VM) go to the per-(tgid, key) hash maps
// as before, so nothing is lost; user space adds both.

/// VMs counted in the arrays; further VMs use the hash maps.
pub const MAX_INDEXED_VMS: u32 = 512;
/// Entries of `VM_INDEX`, direct-mapped by `tgid & (size - 1)`.
pub const VM_INDEX_SIZE: u32 = 65536;

pub const fn vm_index_slot(tgid: u32) -> u32 {
    tgid & (VM_INDEX_SIZE - 1)
}

/// Value of `VM_INDEX`: the registered process in this slot and its index in the counter
/// arrays. `tgid` 0: the slot is free (no VM has tgid 0; the idle task does, and must not match).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmSlot {
    pub tgid: u32,
    pub index: u32,
}

/// The slot of [`EventCounts`] (and sub-key of `EVENT_COUNTS`) where the `kvm_entry` program
/// counts entries, after the counter programs' slots: the kvm_entry event is then counted
/// without a second program on that tracepoint.
pub const SLOT_KVM_ENTRY: u32 = EVENT_SLOTS;
/// Slots of [`EventCounts`]: the counter programs' and [`SLOT_KVM_ENTRY`].
pub const EVENT_COUNT_SLOTS: u32 = EVENT_SLOTS + 1;

/// Value of `EVENT_ARRAY` (per VM index, per CPU): events of each tracepoint slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventCounts {
    pub n: [u64; EVENT_COUNT_SLOTS as usize],
}

impl Default for EventCounts {
    fn default() -> Self {
        Self { n: [0; EVENT_COUNT_SLOTS as usize] }
    }
}

/// Slots of [`UexitCounts`]: KVM_EXIT_* reasons 0..`UEXIT_SLOTS - 2` (io, mmio, hlt, shutdown,
/// system_event, hyperv, rdmsr, ...), one for restarts and one for errors; a larger reason
/// (wrmsr, memory_fault, ...) takes the hash map. A power of two: the compiler bounds the index
/// with a mask, which the verifier must find within the value.
pub const UEXIT_SLOTS: u32 = 32;
pub const UEXIT_SLOT_RESTART: u32 = UEXIT_SLOTS - 2;
pub const UEXIT_SLOT_ERROR: u32 = UEXIT_SLOTS - 1;

/// The array slot of a user-space exit reason (`REASON_*` included), if it has one.
pub const fn uexit_slot(reason: u32) -> Option<u32> {
    match reason {
        REASON_RESTART => Some(UEXIT_SLOT_RESTART),
        REASON_ERROR => Some(UEXIT_SLOT_ERROR),
        r if r < UEXIT_SLOT_RESTART => Some(r),
        _ => None,
    }
}

/// The reason of an array slot (inverse of [`uexit_slot`]).
pub const fn uexit_reason(slot: u32) -> u32 {
    match slot {
        UEXIT_SLOT_RESTART => REASON_RESTART,
        UEXIT_SLOT_ERROR => REASON_ERROR,
        s => s,
    }
}

/// Value of `UEXIT_ARRAY` (per VM index, per CPU): exits to user space per [`uexit_slot`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UexitCounts {
    pub n: [u64; UEXIT_SLOTS as usize],
}

impl Default for UexitCounts {
    fn default() -> Self {
        Self { n: [0; UEXIT_SLOTS as usize] }
    }
}

/// Map sizes as compiled; the loader lowers those of the preallocated per-CPU maps
/// (`EVENT_ARRAY`, `UEXIT_ARRAY`: `MAX_INDEXED_VMS`; `HIST`) for hosts with many possible CPUs
/// (pve-exporter's `sources::kernel::ebpf::MapSizes`). Every map is bounded; user space removes the
/// entries of processes that exited. The two counter hashes hold only processes not in the
/// arrays (see `MAX_INDEXED_VMS`).
pub const MAX_EVENT_KEYS: u32 = 8192; // 341 unregistered VMs x 24 tracepoints
pub const MAX_REASON_KEYS: u32 = 4096; // user-space exit reasons x unregistered VMs
pub const MAX_EXIT_KEYS: u32 = 16384; // exit reasons x VMs
pub const MAX_VCPU_THREADS: u32 = 32768;
pub const MAX_HIST_KEYS: u32 = 2048; // 2 kinds x VMs
pub const MAX_HALT_KEYS: u32 = 4096; // 3 outcomes x VMs

/// Entries of `VCPU_FILTER`: a count of registered vCPU threads per `tid & (size - 1)`. The
/// scheduler programs run on every context switch of the host; the filter (an array lookup
/// the verifier inlines) answers "not a vCPU" for almost all of them before any hash lookup.
pub const VCPU_FILTER_SIZE: u32 = 65536;

pub const fn vcpu_filter_slot(tid: u32) -> u32 {
    tid & (VCPU_FILTER_SIZE - 1)
}

/// Slots of the `COUNTER_ERRORS` per-CPU array.
/// A map was full: an event could not be counted.
pub const ERR_MAP_FULL: u32 = 0;
/// A run-queue wait or exit handling time came out negative (timestamps out of order across
/// CPUs) and was discarded.
pub const ERR_NEGATIVE_DELTA: u32 = 1;
/// A kvm_entry found the per-CPU exit slot empty or holding another thread (the vCPU migrated
/// or was preempted by another vCPU between exit and entry): no handling time for that exit.
pub const ERR_UNMATCHED_ENTRY: u32 = 2;
pub const ERR_SLOTS: u32 = 3;

/// Names of the globals the loader sets from the tracepoints' format files.
pub mod globals {
    pub const EXIT_REASON: &str = "EXIT_REASON_OFFSET";
    /// u32::MAX when the kernel's kvm_exit has no isa field.
    pub const EXIT_ISA: &str = "EXIT_ISA_OFFSET";
    pub const WAKEUP_NS: &str = "WAKEUP_NS_OFFSET";
    pub const WAKEUP_WAITED: &str = "WAKEUP_WAITED_OFFSET";
    pub const WAKEUP_VALID: &str = "WAKEUP_VALID_OFFSET";
    pub const SCHED_WAKEUP_PID: &str = "SCHED_WAKEUP_PID_OFFSET";
    pub const SCHED_WAKEUP_NEW_PID: &str = "SCHED_WAKEUP_NEW_PID_OFFSET";
    pub const SWITCH_PREV_PID: &str = "SWITCH_PREV_PID_OFFSET";
    pub const SWITCH_PREV_STATE: &str = "SWITCH_PREV_STATE_OFFSET";
    pub const SWITCH_NEXT_PID: &str = "SWITCH_NEXT_PID_OFFSET";
}

/// `prev_state` of sched_switch: the task is still runnable (it was preempted) when the state
/// is TASK_RUNNING (0) or carries the preemption marker (TASK_REPORT_MAX, 0x100, since 4.14).
pub const fn preempted(prev_state: u64) -> bool {
    prev_state == 0 || prev_state & 0x100 != 0
}

/// floor(log2(ns)), 0 for 0: the histogram bucket of a duration. Branch-only, no loop, so the
/// verifier accepts it and it costs a handful of instructions.
#[inline(always)]
pub const fn log2_bucket(mut v: u64) -> u32 {
    let mut b = 0;
    if v >= 1 << 32 {
        v >>= 32;
        b += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        b += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        b += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        b += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        b += 2;
    }
    if v >= 1 << 1 {
        b += 1;
    }
    b
}

/// The names of the eBPF maps, as the programs define them (`#[map]` takes the static's name:
/// the eBPF crate's statics carry exactly these names, and the daemon names maps only through
/// these constants; its test `every_map_and_program_name_is_in_the_object` checks both sides
/// against the built object).
pub mod maps {
    // Shared by several programs (pve-exporter-ebpf/src/shared.rs).
    pub const VM_INDEX: &str = "VM_INDEX";
    pub const COUNTER_ERRORS: &str = "COUNTER_ERRORS";
    pub const HIST: &str = "HIST";
    pub const HIST_ZERO: &str = "HIST_ZERO";
    // events.rs
    pub const EVENT_ARRAY: &str = "EVENT_ARRAY";
    pub const EVENT_COUNTS: &str = "EVENT_COUNTS";
    // userspace_exits.rs
    pub const UEXIT_ARRAY: &str = "UEXIT_ARRAY";
    pub const USERSPACE_EXITS: &str = "USERSPACE_EXITS";
    // exits.rs
    pub const EXITS: &str = "EXITS";
    pub const EXIT_SLOT: &str = "EXIT_SLOT";
    // halt.rs
    pub const HALT: &str = "HALT";
    // runqueue.rs
    pub const VCPU_THREADS: &str = "VCPU_THREADS";
    pub const VCPU_FILTER: &str = "VCPU_FILTER";
    pub const WAIT_START: &str = "WAIT_START";

    /// Every map of the object.
    pub const ALL: &[&str] = &[
        VM_INDEX,
        COUNTER_ERRORS,
        HIST,
        HIST_ZERO,
        EVENT_ARRAY,
        EVENT_COUNTS,
        UEXIT_ARRAY,
        USERSPACE_EXITS,
        EXITS,
        EXIT_SLOT,
        HALT,
        VCPU_THREADS,
        VCPU_FILTER,
        WAIT_START,
    ];
}

/// The names of the eBPF programs (their functions' names in pve-exporter-ebpf), besides the
/// per-slot counters of [`event_program_name`].
pub mod programs {
    pub const COUNT_USERSPACE_EXIT: &str = "count_userspace_exit";
    pub const KVM_EXIT: &str = "kvm_exit";
    pub const KVM_ENTRY: &str = "kvm_entry";
    pub const VCPU_WAKEUP: &str = "vcpu_wakeup";
    pub const SCHED_SWITCH: &str = "sched_switch";
    pub const SCHED_WAKEUP: &str = "sched_wakeup";
    pub const SCHED_WAKEUP_NEW: &str = "sched_wakeup_new";

    /// Every program of the object but the per-slot counters.
    pub const ALL: &[&str] =
        &[COUNT_USERSPACE_EXIT, KVM_EXIT, KVM_ENTRY, VCPU_WAKEUP, SCHED_SWITCH, SCHED_WAKEUP, SCHED_WAKEUP_NEW];
}

/// Name of the counter program of `slot`.
pub fn event_program_name(slot: u32, buf: &mut [u8; 16]) -> &str {
    // "count_event_" + up to 2 digits, without alloc (no_std).
    const PREFIX: &[u8] = b"count_event_";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut n = PREFIX.len();
    if slot >= 10 {
        buf[n] = b'0' + (slot / 10 % 10) as u8;
        n += 1;
    }
    buf[n] = b'0' + (slot % 10) as u8;
    n += 1;
    core::str::from_utf8(&buf[..n]).unwrap_or("count_event_0")
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all): repr(C) plain data of u32/u64 fields without padding.
    unsafe impl aya::Pod for super::TgidKey {}
    unsafe impl aya::Pod for super::ExitKey {}
    unsafe impl aya::Pod for super::ExitSlot {}
    unsafe impl aya::Pod for super::CountNs {}
    unsafe impl aya::Pod for super::Hist {}
    unsafe impl aya::Pod for super::VmSlot {}
    unsafe impl aya::Pod for super::EventCounts {}
    unsafe impl aya::Pod for super::UexitCounts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 0);
        assert_eq!(log2_bucket(2), 1);
        assert_eq!(log2_bucket(3), 1);
        assert_eq!(log2_bucket(1023), 9);
        assert_eq!(log2_bucket(1024), 10);
        assert_eq!(log2_bucket(u64::MAX), 63);
        for b in 0..64 {
            assert_eq!(log2_bucket(1 << b), b);
        }
    }

    #[test]
    fn hist_buckets_are_the_exported_ones() {
        assert_eq!(hist_bucket(0), 0);
        assert_eq!(hist_bucket(1023), 0);
        assert_eq!(hist_bucket(1024), 1);
        assert_eq!(hist_bucket(4095), 1);
        assert_eq!(hist_bucket(4096), 2);
        assert_eq!(hist_bucket((1 << 30) - 1), 10);
        assert_eq!(hist_bucket(1 << 30), 11);
        assert_eq!(hist_bucket(u64::MAX), 11);
        // Bucket i (1..=10) holds exactly [2^(8+2i), 2^(10+2i)) ns.
        for i in 1..=10u32 {
            assert_eq!(hist_bucket(1 << (8 + 2 * i)), i);
            assert_eq!(hist_bucket((1 << (10 + 2 * i)) - 1), i);
        }
        assert_eq!(core::mem::size_of::<Hist>(), 104);
    }

    #[test]
    fn preemption() {
        assert!(preempted(0));
        assert!(preempted(0x100));
        assert!(preempted(0x101));
        assert!(!preempted(1)); // TASK_INTERRUPTIBLE: went to sleep
        assert!(!preempted(2));
    }

    #[test]
    fn uexit_slots() {
        assert_eq!(uexit_slot(2), Some(2));
        assert_eq!(uexit_slot(REASON_RESTART), Some(UEXIT_SLOT_RESTART));
        assert_eq!(uexit_slot(REASON_ERROR), Some(UEXIT_SLOT_ERROR));
        assert_eq!(uexit_slot(30), None); // a reason that large: the hash map
        assert!(UEXIT_SLOTS.is_power_of_two());
        for r in [0, 2, 29, REASON_RESTART, REASON_ERROR] {
            assert_eq!(uexit_reason(uexit_slot(r).unwrap()), r);
        }
        assert_eq!(vm_index_slot(65536 + 7), 7);
    }

    #[test]
    fn program_names() {
        let mut b = [0u8; 16];
        assert_eq!(event_program_name(0, &mut b), "count_event_0");
        assert_eq!(event_program_name(23, &mut b), "count_event_23");
    }
}

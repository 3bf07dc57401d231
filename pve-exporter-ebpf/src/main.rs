//! eBPF programs of pve-exporter. docs/ebpf.md explains each program, its maps and its cost.
//!
//! - `count_event_<slot>`: one tiny raw-tracepoint program per counted tracepoint; counts per
//!   (process, slot). (Why a slot per program: see `pve_exporter_common::EVENT_SLOTS`.)
//! - `count_userspace_exit`: kvm_userspace_exit per (process, reason), a raw tracepoint.
//! - `kvm_exit` / `kvm_entry`: exits per (process, isa, reason), and the time from a vCPU's
//!   exit to its next entry (exit handling time) as a histogram and per reason; `kvm_entry`
//!   also counts entries per process (the kvm_entry event).
//! - `vcpu_wakeup`: halt-polling outcome (polled, waited) and time halted.
//! - `sched_wakeup`, `sched_wakeup_new`, `sched_switch`: run-queue wait of vCPU threads.
//!
//! Rules: VM identity is the thread's tgid (user space maps it to a vmid); state is per CPU
//! where the event pair stays on one CPU (exit -> entry) and keyed by thread where it does not
//! (wakeup on one CPU, switch-in on another); counters live in per-CPU maps (no locks, no
//! atomics); every map is bounded; no program sleeps or loops. The hot counters of registered
//! VMs are per-CPU arrays (see `pve_exporter_common::MAX_INDEXED_VMS`), with the hash maps as
//! the fallback. Field offsets of the perf-tracepoint programs are globals the loader sets from
//! the tracepoints' format files; the raw-tracepoint programs take the tracepoint's arguments.
//! aya-log reports rare anomalies (a full map, out-of-order timestamps) once per CPU, never per
//! event.
//!
//! Why raw tracepoints for the counters: a perf tracepoint with a BPF program first fills the
//! trace record (buffer, every field), which costs the guest more than the program itself
//! (docs/ebpf.md, Cost); a raw tracepoint hands the program the tracepoint's arguments.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        EbpfContext, Global,
        bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
        helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
        macros::{map, raw_tracepoint, tracepoint},
        maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
        programs::{RawTracePointContext, TracePointContext},
    };
    use aya_log_ebpf::warn;
    use pve_exporter_common::{
        CountNs, ERR_MAP_FULL, ERR_NEGATIVE_DELTA, ERR_SLOTS, ERR_UNMATCHED_ENTRY, EventCounts, ExitKey, ExitSlot,
        HALT_INVALID, HALT_POLLED, HALT_WAITED, HIST_BUCKETS, HIST_EXIT_HANDLING, HIST_RUNQUEUE_WAIT, Hist, ISA_SVM,
        ISA_UNKNOWN, MAX_EVENT_KEYS, MAX_EXIT_KEYS, MAX_HALT_KEYS, MAX_HIST_KEYS, MAX_INDEXED_VMS, MAX_REASON_KEYS,
        MAX_VCPU_THREADS, REASON_ERROR, REASON_RESTART, SLOT_KVM_ENTRY, TgidKey, UexitCounts, VCPU_FILTER_SIZE,
        VM_INDEX_SIZE, VmSlot, hist_bucket, preempted, uexit_slot, vcpu_filter_slot, vm_index_slot,
    };

    // ---- maps ------------------------------------------------------------------------------

    /// Registered VMs: `tgid & 0xffff` -> (tgid, index in the counter arrays). Written by user
    /// space only, which zeroes an index's counters before it hands the index out.
    #[map]
    static VM_INDEX: Array<VmSlot> = Array::with_max_entries(VM_INDEX_SIZE, 0);
    /// Per registered VM: events of each tracepoint slot.
    #[map]
    static EVENT_ARRAY: PerCpuArray<EventCounts> = PerCpuArray::with_max_entries(MAX_INDEXED_VMS, 0);
    /// Per registered VM: exits to user space by reason.
    #[map]
    static UEXIT_ARRAY: PerCpuArray<UexitCounts> = PerCpuArray::with_max_entries(MAX_INDEXED_VMS, 0);
    // Not preallocated (NO_PREALLOC): the hash maps that only KVM tracepoints write (in the vCPU
    // thread, never under a scheduler lock, where allocating could deadlock) or only user space
    // writes. A preallocated per-CPU hash reserves max_entries values on every possible CPU up
    // front (EXITS: 16 B x 16384 keys = 256 KiB per CPU, 32 MiB at 128 CPUs), yet these hold a
    // few keys per running VM, each allocated at its first event. HIST and WAIT_START are
    // written from the scheduler tracepoints and stay preallocated (sized by the loader).
    /// The same counters for processes not registered.
    #[map]
    static EVENT_COUNTS: PerCpuHashMap<TgidKey, u64> =
        PerCpuHashMap::with_max_entries(MAX_EVENT_KEYS, BPF_F_NO_PREALLOC);
    #[map]
    static USERSPACE_EXITS: PerCpuHashMap<TgidKey, u64> =
        PerCpuHashMap::with_max_entries(MAX_REASON_KEYS, BPF_F_NO_PREALLOC);
    /// Exits and nanoseconds from each exit to the vCPU's next entry, per (process, isa, reason).
    #[map]
    static EXITS: PerCpuHashMap<ExitKey, CountNs> = PerCpuHashMap::with_max_entries(MAX_EXIT_KEYS, BPF_F_NO_PREALLOC);
    /// The exit pending on this CPU.
    #[map]
    static EXIT_SLOT: PerCpuArray<ExitSlot> = PerCpuArray::with_max_entries(1, 0);
    /// Histograms: (process, kind) -> buckets and sum.
    #[map]
    static HIST: PerCpuHashMap<TgidKey, Hist> = PerCpuHashMap::with_max_entries(MAX_HIST_KEYS, 0);
    /// A zeroed Hist to insert from (keeps it off the programs' 512-byte stack). Never written.
    #[map]
    static HIST_ZERO: Array<Hist> = Array::with_max_entries(1, 0);
    #[map]
    static HALT: PerCpuHashMap<TgidKey, CountNs> = PerCpuHashMap::with_max_entries(MAX_HALT_KEYS, BPF_F_NO_PREALLOC);
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
    #[map]
    static COUNTER_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ERR_SLOTS, 0);

    // ---- field offsets, set by the loader from the format files -----------------------------

    #[unsafe(no_mangle)]
    static EXIT_REASON_OFFSET: Global<u32> = Global::new(8);
    #[unsafe(no_mangle)]
    static EXIT_ISA_OFFSET: Global<u32> = Global::new(24);
    #[unsafe(no_mangle)]
    static WAKEUP_NS_OFFSET: Global<u32> = Global::new(8);
    #[unsafe(no_mangle)]
    static WAKEUP_WAITED_OFFSET: Global<u32> = Global::new(16);
    #[unsafe(no_mangle)]
    static WAKEUP_VALID_OFFSET: Global<u32> = Global::new(17);
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

    // ---- helpers ----------------------------------------------------------------------------

    /// Count an anomaly; log it the first time it happens on this CPU (never per event).
    #[inline(always)]
    fn anomaly<C: EbpfContext>(ctx: &C, slot: u32) {
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

    /// Add `n` to `key` of a per-CPU u64 counter map.
    macro_rules! add {
        ($ctx:expr, $map:expr, $key:expr, $n:expr) => {{
            let key = $key;
            let n: u64 = $n;
            if let Some(p) = $map.get_ptr_mut(key) {
                // SAFETY: this CPU's value; tracepoint programs do not nest on one CPU.
                unsafe { *p += n };
            } else if $map.insert(key, n, BPF_NOEXIST as u64).is_err() {
                // First event of this key on any CPU: NOEXIST so that a concurrent first insert
                // from another CPU is not overwritten; on EEXIST the element exists now.
                match $map.get_ptr_mut(key) {
                    // SAFETY: as above.
                    Some(p) => unsafe { *p += n },
                    None => anomaly($ctx, ERR_MAP_FULL),
                }
            }
        }};
    }

    #[inline(always)]
    fn ids() -> (u32, u32) {
        let v = bpf_get_current_pid_tgid();
        ((v >> 32) as u32, v as u32)
    }

    #[inline(always)]
    fn now() -> u64 {
        // SAFETY: helper without preconditions.
        unsafe { bpf_ktime_get_ns() }
    }

    #[inline(always)]
    fn read<T>(ctx: &TracePointContext, offset: &Global<u32>) -> Option<T> {
        // SAFETY: a read within the record at an offset the loader validated against the
        // format file, through bpf_probe_read_kernel.
        unsafe { ctx.read_at::<T>(offset.load() as usize) }.ok()
    }

    #[inline(always)]
    fn record_hist(ctx: &TracePointContext, tgid: u32, kind: u32, ns: u64) {
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
    fn add_count_ns<K>(ctx: &TracePointContext, map: &PerCpuHashMap<K, CountNs>, key: K, count: u64, ns: u64) {
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
    fn vm_index(tgid: u32) -> Option<u32> {
        let s = VM_INDEX.get(vm_index_slot(tgid))?;
        // tgid 0 (the idle task) must not match a free slot.
        (s.tgid == tgid && tgid != 0).then_some(s.index)
    }

    // ---- per-tracepoint counters ------------------------------------------------------------

    /// +1 in `slot` of the process's counters: its array value when registered, else the hash.
    #[inline(always)]
    fn count<C: EbpfContext>(ctx: &C, tgid: u32, slot: usize) {
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

    // ---- KVM --------------------------------------------------------------------------------

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

    #[tracepoint]
    pub fn kvm_exit(ctx: TracePointContext) -> u32 {
        let Some(reason) = read::<u32>(&ctx, &EXIT_REASON_OFFSET) else { return 0 };
        let isa = if EXIT_ISA_OFFSET.load() == u32::MAX {
            ISA_UNKNOWN
        } else {
            read::<u32>(&ctx, &EXIT_ISA_OFFSET).unwrap_or(0)
        };
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

    // ---- scheduler: run-queue wait of vCPU threads -------------------------------------------

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

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

// On the host (`cargo clippy --workspace`), the crate is an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

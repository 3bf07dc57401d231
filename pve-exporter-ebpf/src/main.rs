//! eBPF programs of pve-exporter.
//!
//! - `count_event_<slot>`: one tiny program per counted tracepoint (kvm_pio,
//!   kvm_userspace_exit, ...). Each counts events per (process, slot); user space attaches
//!   slot N to the N-th requested tracepoint. (Why a slot per program: see
//!   `pve_exporter_common::EVENT_SLOTS`.)
//! - `count_userspace_exit`: kvm_userspace_exit per (process, reason), reading the record at
//!   the offsets user space found in the tracepoint's format file.
//!
//! Counters live in per-CPU hash maps, so the hot path takes no lock and no atomic; user
//! space sums the per-CPU values and maps the process (the QEMU pid) to a VM.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        Global,
        bindings::BPF_NOEXIST,
        helpers::bpf_get_current_pid_tgid,
        macros::{map, tracepoint},
        maps::{PerCpuArray, PerCpuHashMap},
        programs::TracePointContext,
    };
    use pve_exporter_common::{
        ERR_MAP_FULL, ERR_SLOTS, EventKey, MAX_EVENT_KEYS, MAX_REASON_KEYS, REASON_ERROR, REASON_RESTART, ReasonKey,
    };

    #[map]
    static EVENT_COUNTS: PerCpuHashMap<EventKey, u64> = PerCpuHashMap::with_max_entries(MAX_EVENT_KEYS, 0);

    #[map]
    static USERSPACE_EXITS: PerCpuHashMap<ReasonKey, u64> = PerCpuHashMap::with_max_entries(MAX_REASON_KEYS, 0);

    #[map]
    static COUNTER_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ERR_SLOTS, 0);

    /// Field offsets of `kvm_userspace_exit`, set by the loader from the tracepoint's format file.
    #[unsafe(no_mangle)]
    static UEXIT_REASON_OFFSET: Global<u32> = Global::new(8);
    #[unsafe(no_mangle)]
    static UEXIT_ERRNO_OFFSET: Global<u32> = Global::new(12);

    /// Add 1 to `key` of a per-CPU counter map.
    macro_rules! bump {
        ($map:expr, $key:expr) => {{
            let key = $key;
            if let Some(p) = $map.get_ptr_mut(key) {
                // SAFETY: this CPU's value; tracepoint programs do not nest on one CPU.
                unsafe { *p += 1 };
            } else if $map.insert(key, 1u64, BPF_NOEXIST as u64).is_err() {
                // First event of this key on any CPU: NOEXIST so that a concurrent first insert
                // from another CPU is not overwritten; on EEXIST the element exists now.
                match $map.get_ptr_mut(key) {
                    // SAFETY: as above.
                    Some(p) => unsafe { *p += 1 },
                    None => {
                        if let Some(p) = COUNTER_ERRORS.get_ptr_mut(ERR_MAP_FULL) {
                            // SAFETY: this CPU's slot.
                            unsafe { *p += 1 };
                        }
                    }
                }
            }
        }};
    }

    #[inline(always)]
    fn tgid() -> u32 {
        (bpf_get_current_pid_tgid() >> 32) as u32
    }

    #[inline(always)]
    fn count(slot: u32) -> u32 {
        bump!(EVENT_COUNTS, EventKey { tgid: tgid(), slot });
        0
    }

    macro_rules! slot_programs {
        ($($name:ident = $slot:literal),* $(,)?) => {$(
            #[tracepoint]
            pub fn $name(_ctx: TracePointContext) -> u32 {
                count($slot)
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

    /// kvm_userspace_exit by reason. As the kernel prints it, a negative errno makes the exit
    /// a restart (-EINTR) or an error rather than an exit with a reason.
    #[tracepoint]
    pub fn count_userspace_exit(ctx: TracePointContext) -> u32 {
        // SAFETY: 4-byte reads within the record (offsets validated by the loader) through
        // bpf_probe_read_kernel.
        let reason = unsafe { ctx.read_at::<u32>(UEXIT_REASON_OFFSET.load() as usize) };
        // SAFETY: as above.
        let errno = unsafe { ctx.read_at::<i32>(UEXIT_ERRNO_OFFSET.load() as usize) };
        let (Ok(reason), Ok(errno)) = (reason, errno) else {
            return 0;
        };
        let reason = match errno {
            0.. => reason,
            -4 => REASON_RESTART,
            _ => REASON_ERROR,
        };
        bump!(USERSPACE_EXITS, ReasonKey { tgid: tgid(), reason });
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

//! Types shared by the eBPF programs (kernel side) and the daemon (user side).
//!
//! Everything here is `#[repr(C)]` plain data: the same bytes are written by the BPF
//! program and read back by aya, so layout changes must be made on both sides at once
//! (they are, because both sides compile this crate).
#![no_std]

/// Key of the per-process tracepoint event counter map (`EVENT_COUNTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EventKey {
    /// Thread group id (the QEMU process id) of the task the event fired in.
    pub tgid: u32,
    /// The counter slot of the tracepoint: program `count_event_<slot>` counts into it, and
    /// user space knows which tracepoint it attached that program to.
    pub slot: u32,
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

/// Key of `USERSPACE_EXITS`: exits to user space per process and reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ReasonKey {
    pub tgid: u32,
    /// KVM_EXIT_* number, or [`REASON_ERROR`] / [`REASON_RESTART`] when the exit carried an errno.
    pub reason: u32,
}

/// `kvm_userspace_exit` with errno -EINTR (the run was interrupted and is restarted).
pub const REASON_RESTART: u32 = u32::MAX - 1;
/// `kvm_userspace_exit` with another negative errno.
pub const REASON_ERROR: u32 = u32::MAX;

/// Globals the loader sets from the `kvm_userspace_exit` format file.
pub const GLOBAL_UEXIT_REASON_OFFSET: &str = "UEXIT_REASON_OFFSET";
pub const GLOBAL_UEXIT_ERRNO_OFFSET: &str = "UEXIT_ERRNO_OFFSET";

/// Upper bound of `USERSPACE_EXITS`.
pub const MAX_REASON_KEYS: u32 = 8192;

/// Upper bound of `EVENT_COUNTS`: processes x attached events (682 VMs x 24 events).
pub const MAX_EVENT_KEYS: u32 = 16384;

/// Slots of the `COUNTER_ERRORS` per-CPU array.
/// The map was full: an event could not be counted.
pub const ERR_MAP_FULL: u32 = 0;
pub const ERR_SLOTS: u32 = 1;

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
    // SAFETY: EventKey is repr(C), Copy, and has no padding (two u32).
    unsafe impl aya::Pod for super::EventKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ReasonKey {}
}

//! eBPF programs of pve-exporter, one file per program with the maps it owns (`shared.rs`:
//! the VM registry, histograms, anomaly counters and helpers several use). docs/ebpf.md
//! explains each program, its maps and its cost. Map and program names are the statics' and
//! functions' names; `pve_exporter_common::{maps, programs}` name them for the daemon.
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
#[macro_use]
mod shared;

#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod exits;
#[cfg(target_arch = "bpf")]
mod halt;
#[cfg(target_arch = "bpf")]
mod runqueue;
#[cfg(target_arch = "bpf")]
mod userspace_exits;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// On the host (`cargo clippy --workspace`), the crate is an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

//! Every metric family the exporter can emit: name (without prefix), type, label names and
//! help. Collectors create families only from here, and `tests/docs.rs` checks
//! docs/metrics.md against this list, so code and docs cannot drift apart.

use crate::metrics::Kind;

#[derive(Debug, PartialEq, Eq)]
pub struct Def {
    /// Name without the `--metrics-prefix` (`kvm_info` is exported as `pve_kvm_info`).
    pub name: &'static str,
    pub kind: Kind,
    /// Label names, in the order samples carry them.
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn gauge(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Def {
    Def { name, kind: Kind::Gauge, labels, help }
}
const fn counter(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Def {
    Def { name, kind: Kind::Counter, labels, help }
}

const ID: &[&str] = &["id"];

// Per-VM, from /proc and the QEMU command line.
pub static KVM_INFO: Def = gauge(
    "kvm_info",
    &["id", "name", "cpu", "pid", "pool", "pool_levels", "pool1", "pool2", "pool3"],
    "VM information (1 for every running VM); name and pool come from here",
);
pub static KVM_CPU_SECONDS: Def = counter(
    "kvm_cpu_seconds_total",
    &["id", "mode"],
    "CPU time of the VM's QEMU process by mode (user, system, iowait)",
);
pub static KVM_VCORES: Def = gauge("kvm_vcores", ID, "vCPUs allocated to the VM (-smp)");
pub static KVM_MAXMEM_BYTES: Def =
    gauge("kvm_maxmem_bytes", ID, "Memory allocated to the VM (-m, or the sum of its memory backends)");
pub static KVM_MEMORY_PERCENT: Def =
    gauge("kvm_memory_percent", ID, "Resident memory of the VM's QEMU process as a percentage of host memory");
pub static KVM_MEMORY_EXTENDED: Def = gauge(
    "kvm_memory_extended",
    &["id", "type"],
    "Memory figures of the VM's QEMU process from /proc/<pid>/status, in bytes, by type",
);
pub static KVM_THREADS: Def = gauge("kvm_threads", ID, "Threads of the VM's QEMU process");
pub static KVM_CTX_SWITCHES: Def = counter(
    "kvm_ctx_switches_total",
    &["id", "type"],
    "Context switches of the VM's QEMU process by type (voluntary, involuntary)",
);
pub static KVM_IO_READ_COUNT: Def =
    counter("kvm_io_read_count_total", ID, "Read system calls of the VM's QEMU process (syscr)");
pub static KVM_IO_READ_BYTES: Def =
    counter("kvm_io_read_bytes_total", ID, "Bytes the VM's QEMU process read from storage (read_bytes)");
pub static KVM_IO_READ_CHARS: Def =
    counter("kvm_io_read_chars_total", ID, "Bytes the VM's QEMU process read through system calls (rchar)");
pub static KVM_IO_WRITE_COUNT: Def =
    counter("kvm_io_write_count_total", ID, "Write system calls of the VM's QEMU process (syscw)");
pub static KVM_IO_WRITE_BYTES: Def =
    counter("kvm_io_write_bytes_total", ID, "Bytes the VM's QEMU process wrote to storage (write_bytes)");
pub static KVM_IO_WRITE_CHARS: Def =
    counter("kvm_io_write_chars_total", ID, "Bytes the VM's QEMU process wrote through system calls (wchar)");

// Per-VM, from the eBPF maps.
pub static KVM_TRACEPOINT_EVENTS: Def = counter(
    "kvm_tracepoint_events_total",
    &["id", "event"],
    "KVM tracepoint events that fired in the VM's threads, by tracepoint (eBPF)",
);
pub static KVM_USERSPACE_EXITS: Def = counter(
    "kvm_userspace_exits_total",
    &["id", "reason"],
    "Exits of the VM's vCPUs to user space (QEMU) by reason (io, mmio, hlt, shutdown, ...; eBPF)",
);

// The exporter itself.
pub static BUILD_INFO: Def = gauge("exporter_build_info", &["version", "ebpf_programs"], "pve-exporter build (1)");
pub static EBPF_ENABLED: Def =
    gauge("exporter_ebpf_enabled", &[], "1 when eBPF programs are attached, 0 in procfs mode");
pub static EBPF_INFO: Def =
    gauge("exporter_ebpf_info", &["mode", "reason"], "eBPF mode (ebpf or procfs) and the reason (1)");
pub static EBPF_TRACEPOINT_ATTACHED: Def = gauge(
    "exporter_ebpf_tracepoint_attached",
    &["event"],
    "1 when the tracepoint is counted, 0 when it was requested but skipped",
);
pub static EBPF_PROGRAM_ATTACHED: Def = gauge(
    "exporter_ebpf_program_attached",
    &["program"],
    "1 when the eBPF program is loaded and attached, 0 when it could not be (the log says why)",
);
pub static EBPF_UNCOUNTED: Def = counter(
    "exporter_ebpf_uncounted_events_total",
    &["cause"],
    "Events the eBPF programs saw but could not count, by cause",
);
pub static COLLECTOR_DURATION: Def =
    gauge("exporter_collector_duration_seconds", &["collector"], "Time each collector took in this scrape");
pub static COLLECTOR_SUCCESS: Def =
    gauge("exporter_collector_success", &["collector"], "1 when the collector worked in this scrape, 0 when it failed");
pub static SCRAPE_DURATION: Def = gauge("scrape_duration_seconds", &[], "Time this scrape's collection took");

/// The I/O counters of `/proc/<pid>/io`, in the order `collector::kvm` fills them.
pub static KVM_IO: &[&Def] = &[
    &KVM_IO_READ_COUNT,
    &KVM_IO_READ_BYTES,
    &KVM_IO_READ_CHARS,
    &KVM_IO_WRITE_COUNT,
    &KVM_IO_WRITE_BYTES,
    &KVM_IO_WRITE_CHARS,
];

static KVM_PROC: &[&Def] = &[
    &KVM_INFO,
    &KVM_CPU_SECONDS,
    &KVM_VCORES,
    &KVM_MAXMEM_BYTES,
    &KVM_MEMORY_PERCENT,
    &KVM_MEMORY_EXTENDED,
    &KVM_THREADS,
    &KVM_CTX_SWITCHES,
];

static KVM_EBPF: &[&Def] = &[&KVM_TRACEPOINT_EVENTS, &KVM_USERSPACE_EXITS];

static EXPORTER: &[&Def] = &[
    &BUILD_INFO,
    &EBPF_ENABLED,
    &EBPF_INFO,
    &EBPF_TRACEPOINT_ATTACHED,
    &EBPF_PROGRAM_ATTACHED,
    &EBPF_UNCOUNTED,
    &COLLECTOR_DURATION,
    &COLLECTOR_SUCCESS,
    &SCRAPE_DURATION,
];

/// Every family, in exposition order (a scrape prints its families in this order, whatever
/// order collectors fill them in).
pub fn all() -> impl Iterator<Item = &'static Def> {
    [KVM_PROC, KVM_IO, KVM_EBPF, EXPORTER].into_iter().flatten().copied()
}

/// Position of `def` in [`all`]; families not in the catalogue sort last. (By name, which is
/// unique: identity of a `Def` is its name.)
pub fn order(def: &Def) -> usize {
    all().position(|d| d.name == def.name).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for d in all() {
            assert!(seen.insert(d.name), "{} listed twice", d.name);
            assert_eq!(
                d.kind == Kind::Counter,
                d.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                d.name
            );
            assert!(d.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{}", d.name);
            assert!(!d.help.is_empty());
        }
    }
}

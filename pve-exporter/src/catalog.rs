//! Every metric family the exporter can emit: name (without prefix), type, label names and
//! help. Collectors create families only from here, and `tests/docs.rs` checks
//! docs/metrics.md against this list, so code and docs cannot drift apart.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

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
const fn histogram(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Def {
    Def { name, kind: Kind::Histogram, labels, help }
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
pub static KVM_MEMORY_UTILISATION: Def = gauge(
    "kvm_memory_utilisation_ratio",
    ID,
    "Resident memory of the VM's QEMU process divided by the memory allocated to the VM (kvm_maxmem_bytes)",
);
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
pub static KVM_EXITS: Def = counter(
    "kvm_exits_total",
    &["id", "reason"],
    "VM exits of the VM's vCPUs by reason (kvm_exit; VMX or SVM reason names of the kernel; eBPF)",
);
pub static KVM_EXIT_HANDLING_SECONDS_BY_REASON: Def = counter(
    "kvm_exit_handling_seconds_total",
    &["id", "reason"],
    "Time from each VM exit to the vCPU's next entry, by exit reason (eBPF)",
);
pub static KVM_EXIT_HANDLING_SECONDS: Def = histogram(
    "kvm_exit_handling_seconds",
    ID,
    "Time from a VM exit to the vCPU's next entry: what the host spends serving the VM (eBPF)",
);
pub static KVM_RUNQUEUE_WAIT_SECONDS: Def = histogram(
    "kvm_vcpu_runqueue_wait_seconds",
    ID,
    "Run-queue waits of the VM's vCPU threads, from wakeup or preemption to running again (host-side steal; eBPF)",
);
pub static KVM_HALT_WAKEUPS: Def = counter(
    "kvm_halt_wakeups_total",
    &["id", "outcome"],
    "Wakeups of the VM's halted vCPUs by outcome: polled (halt polling caught it), waited (the vCPU slept), invalid (eBPF)",
);
pub static KVM_HALT_SECONDS: Def =
    counter("kvm_halt_seconds_total", &["id", "outcome"], "Time the VM's vCPUs spent halted, by wakeup outcome (eBPF)");

// ---- vCPU schedstat and KVM debugfs (procfs side of issue 3) ------------------------------
// Per VM, from /proc/<pid>/task/<tid>/schedstat of the `CPU n/KVM` threads: in both modes, so
// dashboards work everywhere.
pub static KVM_VCPU_RUN_SECONDS: Def =
    counter("kvm_vcpu_run_seconds_total", ID, "Time the VM's vCPU threads ran on a host CPU (schedstat)");
pub static KVM_VCPU_WAIT_SECONDS: Def = counter(
    "kvm_vcpu_wait_seconds_total",
    ID,
    "Time the VM's vCPU threads waited on a host run queue: the steal time the guest sees (schedstat)",
);
pub static KVM_VCPU_TIMESLICES: Def =
    counter("kvm_vcpu_timeslices_total", ID, "Timeslices the VM's vCPU threads ran on a host CPU (schedstat)");
pub static KVM_VCPU_THREADS: Def = gauge("kvm_vcpu_threads", ID, "vCPU threads (CPU n/KVM) found in the VM's process");
// Per VM (and per vCPU), from /sys/kernel/debug/kvm/<pid>-<fd>/ (procfs mode by default).
pub static KVM_DEBUGFS_STAT: Def =
    gauge("kvm_debugfs_stat", &["id", "stat"], "KVM debugfs statistics of the VM (vCPU stats summed), as read");
pub static KVM_DEBUGFS_VCPU_STAT: Def =
    gauge("kvm_debugfs_vcpu_stat", &["id", "vcpu", "stat"], "KVM debugfs statistics of each vCPU of the VM, as read");
pub static KVM_DEBUGFS_AVAILABLE: Def = gauge(
    "exporter_kvm_debugfs_available",
    &[],
    "1 when the KVM debugfs stats can be read, 0 when not (not mounted, lockdown; the log says why)",
);

pub static KVM_VCPU: &[&Def] =
    &[&KVM_VCPU_RUN_SECONDS, &KVM_VCPU_WAIT_SECONDS, &KVM_VCPU_TIMESLICES, &KVM_VCPU_THREADS];
pub static KVM_DEBUGFS: &[&Def] = &[&KVM_DEBUGFS_STAT, &KVM_DEBUGFS_VCPU_STAT];
pub static EXPORTER_KVM_DEBUGFS: &[&Def] = &[&KVM_DEBUGFS_AVAILABLE];
// ---- end of vCPU schedstat and KVM debugfs ---------------------------------------------------

// ---- Storage (issue 6): /etc/pve/storage.cfg, sized by statvfs, zfs and LVM (collector::storage) ----
const NAME_TYPE: &[&str] = &["name", "type"];
pub static NODE_STORAGE_INFO: Def = gauge(
    "node_storage_info",
    &[
        "name", "type", "content", "path", "pool", "vgname", "thinpool", "server", "export", "nodes", "shared",
        "disabled",
    ],
    "Every storage of storage.cfg with its main properties (1)",
);
pub static NODE_STORAGE_ENABLED: Def =
    gauge("node_storage_enabled", NAME_TYPE, "1 when the storage is enabled and meant for this node, else 0");
pub static NODE_STORAGE_ACTIVE: Def = gauge(
    "node_storage_active",
    NAME_TYPE,
    "For enabled storages: 1 when it answered (sized), 0 when it is not active here (path missing, not mounted, thin pool inactive); no series when sizing failed",
);
pub static NODE_STORAGE_INACTIVE_INFO: Def = gauge(
    "node_storage_inactive_info",
    &["name", "type", "reason"],
    "Why an enabled storage is not active on this node (1; only for inactive storages)",
);
pub static NODE_STORAGE_SIZE_BYTES: Def =
    gauge("node_storage_size_bytes", NAME_TYPE, "Size of the storage (storages that can be sized on this node)");
pub static NODE_STORAGE_FREE_BYTES: Def =
    gauge("node_storage_free_bytes", NAME_TYPE, "Space of the storage still available for new data");
pub static NODE_STORAGE_USED_BYTES: Def = gauge("node_storage_used_bytes", NAME_TYPE, "Space of the storage in use");
pub static NODE_ZPOOL_SIZE_BYTES: Def =
    gauge("node_zpool_size_bytes", &["pool"], "Raw size of a ZFS pool holding a zfspool storage (zpool list SIZE)");
pub static NODE_ZPOOL_FREE_BYTES: Def = gauge(
    "node_zpool_free_bytes",
    &["pool"],
    "Raw free space of a ZFS pool holding a zfspool storage (zpool list FREE)",
);

pub static NODE_STORAGE: &[&Def] = &[
    &NODE_STORAGE_INFO,
    &NODE_STORAGE_ENABLED,
    &NODE_STORAGE_ACTIVE,
    &NODE_STORAGE_INACTIVE_INFO,
    &NODE_STORAGE_SIZE_BYTES,
    &NODE_STORAGE_FREE_BYTES,
    &NODE_STORAGE_USED_BYTES,
    &NODE_ZPOOL_SIZE_BYTES,
    &NODE_ZPOOL_FREE_BYTES,
];
// ---- end of storage ----

// ---- PVE node status, VM pressure, HA and physical disks (issue 5; collector/pve/) ----------
// The same families and labels whichever source serves them (local files or the PVE API).
const PVE_NODE: &[&str] = &["node"];
const PVE_VM: &[&str] = &["id", "node"];
const PVE_DISK: &[&str] = &["node", "devpath"];
pub static PVE_NODE_LOAD1: Def = gauge("node_load1", PVE_NODE, "1-minute load average");
pub static PVE_NODE_LOAD5: Def = gauge("node_load5", PVE_NODE, "5-minute load average");
pub static PVE_NODE_LOAD15: Def = gauge("node_load15", PVE_NODE, "15-minute load average");
pub static PVE_NODE_SWAP_TOTAL: Def = gauge("node_swap_total_bytes", PVE_NODE, "Total swap in bytes");
pub static PVE_NODE_SWAP_USED: Def = gauge("node_swap_used_bytes", PVE_NODE, "Used swap in bytes");
pub static PVE_NODE_SWAP_FREE: Def = gauge("node_swap_free_bytes", PVE_NODE, "Free swap in bytes");
pub static PVE_NODE_ROOTFS_TOTAL: Def = gauge("node_rootfs_total_bytes", PVE_NODE, "Root filesystem total in bytes");
pub static PVE_NODE_ROOTFS_USED: Def = gauge("node_rootfs_used_bytes", PVE_NODE, "Root filesystem used in bytes");
pub static PVE_NODE_ROOTFS_AVAILABLE: Def =
    gauge("node_rootfs_available_bytes", PVE_NODE, "Root filesystem available in bytes");
pub static PVE_NODE_KSM_SHARED: Def = gauge("node_ksm_shared_bytes", PVE_NODE, "KSM shared memory in bytes");
pub static PVE_NODE_BOOT_MODE_INFO: Def =
    gauge("node_boot_mode_info", &["node", "mode", "secureboot"], "Boot mode info (always 1)");
pub static PVE_VM_PRESSURE_CPU_SOME: Def = gauge("vm_pressure_cpu_some_ratio", PVE_VM, "CPU pressure (some)");
pub static PVE_VM_PRESSURE_CPU_FULL: Def = gauge("vm_pressure_cpu_full_ratio", PVE_VM, "CPU pressure (full)");
pub static PVE_VM_PRESSURE_MEMORY_SOME: Def = gauge("vm_pressure_memory_some_ratio", PVE_VM, "Memory pressure (some)");
pub static PVE_VM_PRESSURE_MEMORY_FULL: Def = gauge("vm_pressure_memory_full_ratio", PVE_VM, "Memory pressure (full)");
pub static PVE_VM_PRESSURE_IO_SOME: Def = gauge("vm_pressure_io_some_ratio", PVE_VM, "I/O pressure (some)");
pub static PVE_VM_PRESSURE_IO_FULL: Def = gauge("vm_pressure_io_full_ratio", PVE_VM, "I/O pressure (full)");
pub static PVE_HA_CRM_MASTER: Def =
    gauge("ha_crm_master", PVE_NODE, "1 if node is CRM master, 0 otherwise (all nodes)");
pub static PVE_HA_NODE_STATUS: Def = gauge("ha_node_status", &["node", "status"], "Per-node HA status (always 1)");
pub static PVE_HA_LRM_TIMESTAMP: Def =
    gauge("ha_lrm_timestamp_seconds", PVE_NODE, "Last LRM heartbeat as unix timestamp");
pub static PVE_HA_LRM_MODE: Def = gauge("ha_lrm_mode", &["node", "mode"], "LRM mode per node (always 1)");
pub static PVE_HA_SERVICE_CONFIG: Def = gauge(
    "ha_service_config",
    &["sid", "type", "max_restart", "max_relocate", "failback"],
    "Service config (always 1)",
);
pub static PVE_HA_SERVICE_STATUS: Def =
    gauge("ha_service_status", &["sid", "node", "state"], "Service runtime state (always 1)");
pub static PVE_PHYSICAL_DISK_HEALTH: Def = gauge(
    "physical_disk_health",
    &["node", "devpath", "model", "serial", "type"],
    "1 if SMART says healthy (PASSED, or OK for SAS), 0 if it says failing; no series without a verdict",
);
pub static PVE_PHYSICAL_DISK_SMART_STATUS: Def = gauge(
    "physical_disk_smart_status",
    &["node", "devpath", "status"],
    "SMART health text as PVE gives it (PASSED, OK, FAILED!, UNKNOWN, SMART Disabled, ...); always 1",
);
pub static PVE_PHYSICAL_DISK_WEAROUT: Def =
    gauge("physical_disk_wearout_remaining_ratio", PVE_DISK, "Wearout remaining 0.0-1.0");
pub static PVE_PHYSICAL_DISK_SIZE: Def = gauge("physical_disk_size_bytes", PVE_DISK, "Disk size in bytes");
pub static PVE_PHYSICAL_DISK_INFO: Def =
    gauge("physical_disk_info", &["node", "devpath", "model", "serial", "type", "used"], "Disk info (always 1)");
pub static PVE_PHYSICAL_DISK_OSD: Def =
    gauge("physical_disk_osd", &["node", "devpath", "osd"], "Disk-to-OSD mapping (always 1, one per OSD)");
pub static PVE_COLLECTOR_INFO: Def = gauge(
    "exporter_pve_collector_info",
    &["collector", "source", "scope"],
    "Where each PVE collector reads from: source local, api or off (always 1)",
);

pub static PVE_NODE_FAMILIES: &[&Def] = &[
    &PVE_NODE_LOAD1,
    &PVE_NODE_LOAD5,
    &PVE_NODE_LOAD15,
    &PVE_NODE_SWAP_TOTAL,
    &PVE_NODE_SWAP_USED,
    &PVE_NODE_SWAP_FREE,
    &PVE_NODE_ROOTFS_TOTAL,
    &PVE_NODE_ROOTFS_USED,
    &PVE_NODE_ROOTFS_AVAILABLE,
    &PVE_NODE_KSM_SHARED,
    &PVE_NODE_BOOT_MODE_INFO,
];

/// The VM pressure families, in the order the collector fills them (cpu, memory, io; some, full).
pub static PVE_VM_PRESSURE: &[&Def] = &[
    &PVE_VM_PRESSURE_CPU_SOME,
    &PVE_VM_PRESSURE_CPU_FULL,
    &PVE_VM_PRESSURE_MEMORY_SOME,
    &PVE_VM_PRESSURE_MEMORY_FULL,
    &PVE_VM_PRESSURE_IO_SOME,
    &PVE_VM_PRESSURE_IO_FULL,
];

pub static PVE_HA: &[&Def] = &[
    &PVE_HA_CRM_MASTER,
    &PVE_HA_NODE_STATUS,
    &PVE_HA_LRM_TIMESTAMP,
    &PVE_HA_LRM_MODE,
    &PVE_HA_SERVICE_CONFIG,
    &PVE_HA_SERVICE_STATUS,
];
pub static PVE_PHYSICAL_DISKS: &[&Def] = &[
    &PVE_PHYSICAL_DISK_HEALTH,
    &PVE_PHYSICAL_DISK_SMART_STATUS,
    &PVE_PHYSICAL_DISK_WEAROUT,
    &PVE_PHYSICAL_DISK_SIZE,
    &PVE_PHYSICAL_DISK_INFO,
    &PVE_PHYSICAL_DISK_OSD,
];
pub static EXPORTER_PVE: &[&Def] = &[&PVE_COLLECTOR_INFO];
// ---- end of PVE node status, VM pressure, HA and physical disks ------------------------------

// ---- VM NICs and disks, from the QEMU monitor (issue 4; collector/nic.rs, collector/disk.rs) ------------
const NIC: &[&str] = &["id", "ifname"];
const DISK: &[&str] = &["id", "disk_name"];
pub static KVM_NIC_INFO: Def = gauge(
    "kvm_nic_info",
    &["id", "ifname", "netdev", "queues", "type", "model", "macaddr"],
    "NIC of the VM (1), from the QEMU monitor's info network",
);
pub static KVM_NIC_QUEUES: Def = gauge("kvm_nic_queues", NIC, "Queues of the VM's NIC");
/// One counter per file of `/sys/class/net/<tap>/statistics/`.
macro_rules! nic_stat {
    ($($id:ident = $file:literal),* $(,)?) => {
        $(pub static $id: Def = counter(
            concat!("kvm_nic_", $file, "_total"),
            NIC,
            concat!("Counter ", $file, " of the tap device of the VM's NIC (host view: tx is what the guest receives)"),
        );)*
        /// The NIC counters, in the order of `sources::kernel::sysfs::NET_STATISTICS`.
        pub static KVM_NIC_STATS: &[&Def] = &[$(&$id),*];
    };
}
nic_stat!(
    KVM_NIC_RX_PACKETS = "rx_packets",
    KVM_NIC_TX_PACKETS = "tx_packets",
    KVM_NIC_RX_BYTES = "rx_bytes",
    KVM_NIC_TX_BYTES = "tx_bytes",
    KVM_NIC_RX_ERRORS = "rx_errors",
    KVM_NIC_TX_ERRORS = "tx_errors",
    KVM_NIC_RX_DROPPED = "rx_dropped",
    KVM_NIC_TX_DROPPED = "tx_dropped",
    KVM_NIC_MULTICAST = "multicast",
    KVM_NIC_COLLISIONS = "collisions",
    KVM_NIC_RX_LENGTH_ERRORS = "rx_length_errors",
    KVM_NIC_RX_OVER_ERRORS = "rx_over_errors",
    KVM_NIC_RX_CRC_ERRORS = "rx_crc_errors",
    KVM_NIC_RX_FRAME_ERRORS = "rx_frame_errors",
    KVM_NIC_RX_FIFO_ERRORS = "rx_fifo_errors",
    KVM_NIC_RX_MISSED_ERRORS = "rx_missed_errors",
    KVM_NIC_TX_ABORTED_ERRORS = "tx_aborted_errors",
    KVM_NIC_TX_CARRIER_ERRORS = "tx_carrier_errors",
    KVM_NIC_TX_FIFO_ERRORS = "tx_fifo_errors",
    KVM_NIC_TX_HEARTBEAT_ERRORS = "tx_heartbeat_errors",
    KVM_NIC_TX_WINDOW_ERRORS = "tx_window_errors",
    KVM_NIC_RX_COMPRESSED = "rx_compressed",
    KVM_NIC_TX_COMPRESSED = "tx_compressed",
    KVM_NIC_RX_NOHANDLER = "rx_nohandler",
);
pub static KVM_DISK_INFO: Def = gauge(
    "kvm_disk_info",
    &[
        "id",
        "disk_name",
        "block_id",
        "disk_path",
        "disk_type",
        "vol_name",
        "pool",
        "pool_name",
        "cluster_id",
        "vg_name",
        "device",
        "attached_to",
        "cache_mode",
        "detect_zeroes",
        "read_only",
    ],
    "Disk of the VM (1), from the QEMU monitor's info block; labels that do not apply are empty",
);
pub static KVM_DISK_SIZE_BYTES: Def = gauge("kvm_disk_size_bytes", DISK, "Size of the VM's disk as the guest sees it");
pub static KVM_DISK_READ_OPERATIONS: Def =
    counter("kvm_disk_read_operations_total", DISK, "Read requests of the VM's disk (QEMU blockstats)");
pub static KVM_DISK_READ_BYTES: Def =
    counter("kvm_disk_read_bytes_total", DISK, "Bytes read by the VM from the disk (QEMU blockstats)");
pub static KVM_DISK_READ_TIME: Def =
    counter("kvm_disk_read_time_seconds_total", DISK, "Time the VM's disk read requests took (QEMU blockstats)");
pub static KVM_DISK_WRITE_OPERATIONS: Def =
    counter("kvm_disk_write_operations_total", DISK, "Write requests of the VM's disk (QEMU blockstats)");
pub static KVM_DISK_WRITE_BYTES: Def =
    counter("kvm_disk_write_bytes_total", DISK, "Bytes written by the VM to the disk (QEMU blockstats)");
pub static KVM_DISK_WRITE_TIME: Def =
    counter("kvm_disk_write_time_seconds_total", DISK, "Time the VM's disk write requests took (QEMU blockstats)");
pub static KVM_DISK_FLUSH_OPERATIONS: Def =
    counter("kvm_disk_flush_operations_total", DISK, "Flush requests of the VM's disk (QEMU blockstats)");
pub static KVM_DISK_FLUSH_TIME: Def =
    counter("kvm_disk_flush_time_seconds_total", DISK, "Time the VM's disk flush requests took (QEMU blockstats)");

pub static KVM_NIC: &[&Def] = &[&KVM_NIC_INFO, &KVM_NIC_QUEUES];

// ---- Non-PVE VM sources and the guest's view (issue 7; vm.rs, sources/qemu/libvirt.rs) -----------
pub static KVM_LIBVIRT_INFO: Def = gauge(
    "kvm_libvirt_info",
    &["id", "name", "uuid", "nova_instance", "nova_project", "nova_project_id", "nova_flavor"],
    "libvirt domain of the VM (1), from its status XML; nova_* from OpenStack Nova's metadata, empty without it",
);
pub static KVM_GUEST_NETWORK_RECEIVE_BYTES: Def = counter(
    "kvm_guest_network_receive_bytes_total",
    NIC,
    "Bytes the guest received on the NIC (tx_bytes of its tap device)",
);
pub static KVM_GUEST_NETWORK_TRANSMIT_BYTES: Def = counter(
    "kvm_guest_network_transmit_bytes_total",
    NIC,
    "Bytes the guest sent on the NIC (rx_bytes of its tap device)",
);
pub static KVM_GUEST_NETWORK_RECEIVE_PACKETS: Def = counter(
    "kvm_guest_network_receive_packets_total",
    NIC,
    "Packets the guest received on the NIC (tx_packets of its tap device)",
);
pub static KVM_GUEST_NETWORK_TRANSMIT_PACKETS: Def = counter(
    "kvm_guest_network_transmit_packets_total",
    NIC,
    "Packets the guest sent on the NIC (rx_packets of its tap device)",
);
pub static KVM_LIBVIRT: &[&Def] = &[&KVM_LIBVIRT_INFO];
pub static KVM_GUEST: &[&Def] = &[
    &KVM_GUEST_NETWORK_RECEIVE_BYTES,
    &KVM_GUEST_NETWORK_TRANSMIT_BYTES,
    &KVM_GUEST_NETWORK_RECEIVE_PACKETS,
    &KVM_GUEST_NETWORK_TRANSMIT_PACKETS,
];
// Per-VM guest memory, from the balloon device over the monitor (the `balloon` collector).
pub static KVM_BALLOON_ACTUAL_BYTES: Def = gauge(
    "kvm_balloon_actual_bytes",
    ID,
    "Memory the guest has, the balloon taken out (query-balloon's actual); no series for a VM without a balloon device",
);
pub static KVM_GUEST_MEMORY_BYTES: Def = gauge(
    "kvm_guest_memory_bytes",
    &["id", "type"],
    "The guest's memory as its balloon driver reports it, by type (total, free, available, cache); no series before the guest reports or for values it does not report",
);
pub static KVM_GUEST_MEMORY_USED_BYTES: Def = gauge(
    "kvm_guest_memory_used_bytes",
    ID,
    "Memory the guest uses, as PVE counts it: its reported total less free (page cache included)",
);
pub static KVM_GUEST_SWAP_IN_BYTES: Def =
    counter("kvm_guest_swap_in_bytes_total", ID, "Bytes the guest swapped in, as its balloon driver reports it");
pub static KVM_GUEST_SWAP_OUT_BYTES: Def =
    counter("kvm_guest_swap_out_bytes_total", ID, "Bytes the guest swapped out, as its balloon driver reports it");
pub static KVM_GUEST_PAGE_FAULTS: Def = counter(
    "kvm_guest_page_faults_total",
    &["id", "type"],
    "Page faults in the guest by type (major, minor), as its balloon driver reports them",
);
pub static KVM_GUEST_MEMORY_STATS_TIMESTAMP: Def = gauge(
    "kvm_guest_memory_stats_timestamp_seconds",
    ID,
    "When the guest last reported its memory statistics (unix time; PVE has QEMU poll every 2 s)",
);
pub static KVM_BALLOON: &[&Def] = &[
    &KVM_BALLOON_ACTUAL_BYTES,
    &KVM_GUEST_MEMORY_BYTES,
    &KVM_GUEST_MEMORY_USED_BYTES,
    &KVM_GUEST_SWAP_IN_BYTES,
    &KVM_GUEST_SWAP_OUT_BYTES,
    &KVM_GUEST_PAGE_FAULTS,
    &KVM_GUEST_MEMORY_STATS_TIMESTAMP,
];
// Per-VM, from the QEMU guest agent (PVE VMs with `agent: 1`).
pub static KVM_AGENT_UP: Def = gauge(
    "kvm_agent_up",
    ID,
    "1 when the VM's guest agent answered its last query, 0 when it did not (asked at most once per --agent-interval); no series for VMs without `agent: 1` or before the first answer",
);
pub static KVM_AGENT_LAST_ANSWER: Def = gauge(
    "kvm_agent_last_answer_timestamp_seconds",
    ID,
    "When the guest agent's answer the file system series come from was read",
);
pub static KVM_GUEST_FS_INFO: Def = gauge(
    "kvm_guest_filesystem_info",
    &["id", "mountpoint", "name", "type", "serial"],
    "A file system mounted in the guest, as its agent reports it (guest-get-fsinfo): its device name, type and the serials of the disks under it (comma-separated)",
);
pub static KVM_GUEST_FS_SIZE_BYTES: Def = gauge(
    "kvm_guest_filesystem_size_bytes",
    &["id", "mountpoint"],
    "Size of a guest file system as an unprivileged user sees it (used + available; the agent's total-bytes)",
);
pub static KVM_GUEST_FS_USED_BYTES: Def = gauge(
    "kvm_guest_filesystem_used_bytes",
    &["id", "mountpoint"],
    "Bytes used on a guest file system (the agent's used-bytes)",
);
pub static KVM_AGENT: &[&Def] =
    &[&KVM_AGENT_UP, &KVM_AGENT_LAST_ANSWER, &KVM_GUEST_FS_INFO, &KVM_GUEST_FS_SIZE_BYTES, &KVM_GUEST_FS_USED_BYTES];
// Per guest of this node, from its backups (the task list, the dump directories, jobs.cfg).
const GUEST_LABELS: &[&str] = &["id", "type"];
const GUEST_STORAGE: &[&str] = &["id", "type", "storage"];
pub static GUEST_BACKUP_LAST_RUN_TIMESTAMP: Def = gauge(
    "guest_backup_last_run_timestamp_seconds",
    GUEST_LABELS,
    "When the guest's last finished backup started, successful or not (its vzdump task on this node)",
);
pub static GUEST_BACKUP_LAST_RUN_SUCCESS: Def = gauge(
    "guest_backup_last_run_success",
    GUEST_LABELS,
    "1 when the guest's last finished backup succeeded, 0 when it failed",
);
pub static GUEST_BACKUP_LAST_RUN_DURATION: Def = gauge(
    "guest_backup_last_run_duration_seconds",
    GUEST_LABELS,
    "How long the guest's last finished backup took (until it failed, for a failed one)",
);
pub static GUEST_BACKUP_LAST_ERROR_INFO: Def = gauge(
    "guest_backup_last_error_info",
    &["id", "type", "error"],
    "Why the guest's last backup failed (vzdump's error); only while the last backup failed",
);
pub static GUEST_BACKUP_LAST_SUCCESS_TIMESTAMP: Def = gauge(
    "guest_backup_last_success_timestamp_seconds",
    GUEST_LABELS,
    "When the guest's last successful backup started",
);
pub static GUEST_BACKUP_RUNNING: Def =
    gauge("guest_backup_running", GUEST_LABELS, "1 while a backup of the guest runs on this node");
pub static GUEST_BACKUP_COVERED: Def = gauge(
    "guest_backup_covered",
    GUEST_LABELS,
    "1 when an enabled backup job of /etc/pve/jobs.cfg includes the guest, 0 when none does",
);
pub static GUEST_BACKUP_FILE_NEWEST_TIMESTAMP: Def = gauge(
    "guest_backup_file_newest_timestamp_seconds",
    GUEST_STORAGE,
    "When the newest backup archive of the guest on a file storage of this node was made (from its name)",
);
pub static GUEST_BACKUP_FILE_NEWEST_AGE: Def = gauge(
    "guest_backup_file_newest_age_seconds",
    GUEST_STORAGE,
    "Age of the newest backup archive of the guest on the storage",
);
pub static GUEST_BACKUP_FILE_NEWEST_SIZE: Def = gauge(
    "guest_backup_file_newest_size_bytes",
    GUEST_STORAGE,
    "Size of the newest backup archive of the guest on the storage",
);
pub static GUEST_BACKUP_FILES: Def =
    gauge("guest_backup_files", GUEST_STORAGE, "Backup archives of the guest on the storage");
pub static GUEST_BACKUP: &[&Def] = &[
    &GUEST_BACKUP_LAST_RUN_TIMESTAMP,
    &GUEST_BACKUP_LAST_RUN_SUCCESS,
    &GUEST_BACKUP_LAST_RUN_DURATION,
    &GUEST_BACKUP_LAST_ERROR_INFO,
    &GUEST_BACKUP_LAST_SUCCESS_TIMESTAMP,
    &GUEST_BACKUP_RUNNING,
    &GUEST_BACKUP_COVERED,
    &GUEST_BACKUP_FILE_NEWEST_TIMESTAMP,
    &GUEST_BACKUP_FILE_NEWEST_AGE,
    &GUEST_BACKUP_FILE_NEWEST_SIZE,
    &GUEST_BACKUP_FILES,
];
// Per replication job of this node's guests (replication.cfg and PVE's replication state).
const REPL: &[&str] = &["id", "type", "job", "target"];
pub static REPLICATION_INFO: Def = gauge(
    "guest_replication_info",
    &["id", "type", "job", "target", "schedule", "comment"],
    "A storage replication job of a guest of this node (replication.cfg), with its schedule (1)",
);
pub static REPLICATION_ENABLED: Def =
    gauge("guest_replication_enabled", REPL, "1 when the replication job runs on its schedule, 0 when it is disabled");
pub static REPLICATION_LAST_SYNC: Def = gauge(
    "guest_replication_last_sync_timestamp_seconds",
    REPL,
    "When the job's last successful sync started; no series before the first",
);
pub static REPLICATION_LAST_TRY: Def = gauge(
    "guest_replication_last_try_timestamp_seconds",
    REPL,
    "When the job's last attempt started, successful or not; no series before the first",
);
pub static REPLICATION_NEXT_SYNC: Def = gauge(
    "guest_replication_next_sync_timestamp_seconds",
    REPL,
    "When the job runs next, as PVE computes it (0: not while its target is offline or its schedule has no next event; 1: the job is being removed)",
);
pub static REPLICATION_DURATION: Def =
    gauge("guest_replication_duration_seconds", REPL, "How long the job's last attempt took");
pub static REPLICATION_FAIL_COUNT: Def =
    gauge("guest_replication_fail_count", REPL, "Failed attempts of the job in a row (0 after a success)");
pub static REPLICATION_ERROR_INFO: Def = gauge(
    "guest_replication_error_info",
    &["id", "type", "job", "target", "error"],
    "The error of the job's last attempt; only while the job is failing",
);
pub static REPLICATION: &[&Def] = &[
    &REPLICATION_INFO,
    &REPLICATION_ENABLED,
    &REPLICATION_LAST_SYNC,
    &REPLICATION_LAST_TRY,
    &REPLICATION_NEXT_SYNC,
    &REPLICATION_DURATION,
    &REPLICATION_FAIL_COUNT,
    &REPLICATION_ERROR_INFO,
];
// ---- end of non-PVE VM sources ----
pub static KVM_DISK: &[&Def] = &[
    &KVM_DISK_INFO,
    &KVM_DISK_SIZE_BYTES,
    &KVM_DISK_READ_OPERATIONS,
    &KVM_DISK_READ_BYTES,
    &KVM_DISK_READ_TIME,
    &KVM_DISK_WRITE_OPERATIONS,
    &KVM_DISK_WRITE_BYTES,
    &KVM_DISK_WRITE_TIME,
    &KVM_DISK_FLUSH_OPERATIONS,
    &KVM_DISK_FLUSH_TIME,
];
// ---- end of VM NICs and disks ---------------------------------------------------------------

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
pub static EBPF_PROGRAM_RUNS: Def = counter(
    "exporter_ebpf_program_runs_total",
    &["program"],
    "Runs of each attached eBPF program (only with --ebpf-stats or kernel.bpf_stats_enabled=1)",
);
pub static EBPF_PROGRAM_RUN_SECONDS: Def = counter(
    "exporter_ebpf_program_run_seconds_total",
    &["program"],
    "Time spent in each attached eBPF program (only with --ebpf-stats or kernel.bpf_stats_enabled=1)",
);
pub static EBPF_MAP_ENTRIES: Def = gauge("exporter_ebpf_map_entries", &["map"], "Entries in use in each eBPF map");
pub static EBPF_MAP_CAPACITY: Def = gauge("exporter_ebpf_map_capacity", &["map"], "Entries each eBPF map can hold");
pub static EBPF_UNCOUNTED: Def = counter(
    "exporter_ebpf_uncounted_events_total",
    &["cause"],
    "Events the eBPF programs saw but could not count or time, by cause (map_full, negative_delta, unmatched_entry)",
);
pub static COLLECTOR_DURATION: Def =
    gauge("exporter_collector_duration_seconds", &["collector"], "Time each collector took in this scrape");
pub static COLLECTOR_SUCCESS: Def =
    gauge("exporter_collector_success", &["collector"], "1 when the collector worked in this scrape, 0 when it failed");
pub static COLLECTOR_DATA_AGE: Def = gauge(
    "exporter_collector_data_age_seconds",
    &["collector"],
    "Age of the values each collector contributed: 0 when collected in this scrape, else the age of its last good values, replayed because its group did not answer before the scrape's deadline",
);
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

pub static KVM_PROC: &[&Def] = &[
    &KVM_INFO,
    &KVM_CPU_SECONDS,
    &KVM_VCORES,
    &KVM_MAXMEM_BYTES,
    &KVM_MEMORY_UTILISATION,
    &KVM_MEMORY_PERCENT,
    &KVM_MEMORY_EXTENDED,
    &KVM_THREADS,
    &KVM_CTX_SWITCHES,
];

pub static KVM_EBPF: &[&Def] = &[
    &KVM_TRACEPOINT_EVENTS,
    &KVM_USERSPACE_EXITS,
    &KVM_EXITS,
    &KVM_EXIT_HANDLING_SECONDS_BY_REASON,
    &KVM_EXIT_HANDLING_SECONDS,
    &KVM_RUNQUEUE_WAIT_SECONDS,
    &KVM_HALT_WAKEUPS,
    &KVM_HALT_SECONDS,
];

// ---- Every configured guest, VMs and containers, running or not (issue 17; collector::guest) ----
const GUEST: &[&str] = &["id", "type"];
pub static GUEST_CONFIG_INFO: Def = gauge(
    "guest_config_info",
    &["id", "type", "name", "node", "ostype", "tags", "pool", "pool_levels", "pool1", "pool2", "pool3"],
    "Every guest configured on this node, running or not, with its name, OS type, tags and pool (1)",
);
pub static GUEST_UP: Def =
    gauge("guest_up", GUEST, "1 when the guest runs (its QEMU process or container init exists), else 0");
pub static GUEST_STATE: Def = gauge(
    "guest_state",
    &["id", "type", "state"],
    "The guest's run state (1): running, stopped; VMs also QEMU's status (paused, prelaunch, ...)",
);
pub static GUEST_UPTIME: Def = gauge(
    "guest_uptime_seconds",
    GUEST,
    "Seconds since the guest's process (QEMU or container init) started; 0 when stopped",
);
pub static GUEST_TEMPLATE: Def = gauge("guest_template", GUEST, "1 when the guest is a template");
pub static GUEST_ONBOOT: Def = gauge("guest_onboot", GUEST, "The config's onboot (1: started when the node boots)");
pub static GUEST_STARTUP_ORDER: Def =
    gauge("guest_startup_order", GUEST, "The config's startup order (guests with an order only)");
pub static GUEST_PROTECTION: Def = gauge("guest_protection", GUEST, "1 when the guest is protected against removal");
pub static GUEST_LOCK: Def = gauge(
    "guest_lock",
    &["id", "type", "lock"],
    "The config's lock (backup, migrate, snapshot, ...; locked guests only; 1)",
);
pub static GUEST_HA_STATE: Def = gauge(
    "guest_ha_state",
    &["id", "type", "state"],
    "The HA manager's state of the guest (HA-managed guests only; 1)",
);
pub static GUEST_CPUS: Def = gauge(
    "guest_cpus",
    GUEST,
    "CPUs configured as PVE counts them: a VM's vcpus or sockets x cores, a container's cores or cpulimit",
);
pub static GUEST_MEMORY_BYTES: Def = gauge("guest_memory_bytes", GUEST, "Memory configured (memory)");
pub static GUEST_BALLOON_MIN_BYTES: Def =
    gauge("guest_balloon_min_bytes", GUEST, "A VM's balloon minimum (balloon; VMs with ballooning only)");
pub static GUEST_SWAP_BYTES: Def = gauge("guest_swap_bytes", GUEST, "A container's swap configured (swap)");
pub static GUEST_DISK_SIZE_BYTES: Def = gauge(
    "guest_disk_size_bytes",
    &["id", "type", "disk", "volume"],
    "Size of each configured disk or mount point as the config gives it (size=)",
);
pub static GUEST_SNAPSHOTS: Def = gauge("guest_snapshots", GUEST, "Snapshots of the guest (config sections)");
pub static GUEST_SNAPSHOT_NEWEST: Def = gauge(
    "guest_snapshot_newest_timestamp_seconds",
    GUEST,
    "When the newest snapshot was taken (snaptime; guests with snapshots only)",
);
pub static GUEST_FAMILIES: &[&Def] = &[
    &GUEST_CONFIG_INFO,
    &GUEST_UP,
    &GUEST_STATE,
    &GUEST_UPTIME,
    &GUEST_TEMPLATE,
    &GUEST_ONBOOT,
    &GUEST_STARTUP_ORDER,
    &GUEST_PROTECTION,
    &GUEST_LOCK,
    &GUEST_HA_STATE,
    &GUEST_CPUS,
    &GUEST_MEMORY_BYTES,
    &GUEST_BALLOON_MIN_BYTES,
    &GUEST_SWAP_BYTES,
    &GUEST_DISK_SIZE_BYTES,
    &GUEST_SNAPSHOTS,
    &GUEST_SNAPSHOT_NEWEST,
];

// ---- LXC containers (issue 17; collector::lxc): running containers from their cgroups ----
pub static LXC_INFO: Def = gauge(
    "lxc_info",
    &["id", "name", "pid", "ostype", "arch", "unprivileged", "tags", "pool", "pool_levels", "pool1", "pool2", "pool3"],
    "Every running container (1): hostname, init pid, OS type, architecture, unprivileged, tags, pool",
);
pub static LXC_CPU_SECONDS: Def =
    counter("lxc_cpu_seconds_total", &["id", "mode"], "CPU time of the container by mode (user, system; cgroup)");
pub static LXC_MEMORY_BYTES: Def = gauge(
    "lxc_memory_bytes",
    &["id", "type"],
    "Memory charged to the container by type: current (all), anon, file (page cache), kernel (cgroup)",
);
pub static LXC_MEMORY_USED_BYTES: Def =
    gauge("lxc_memory_used_bytes", ID, "Memory the container uses as PVE shows it: charged memory less page cache");
pub static LXC_SWAP_BYTES: Def = gauge("lxc_swap_bytes", ID, "Swap the container uses (cgroup)");
pub static LXC_MEMORY_LIMIT_BYTES: Def =
    gauge("lxc_memory_limit_bytes", ID, "The container's memory limit (memory.max; containers with a limit only)");
pub static LXC_SWAP_LIMIT_BYTES: Def =
    gauge("lxc_swap_limit_bytes", ID, "The container's swap limit (memory.swap.max; containers with a limit only)");
pub static LXC_CPU_LIMIT_CORES: Def =
    gauge("lxc_cpu_limit_cores", ID, "The container's CPU limit in cores (cpu.max; containers with a limit only)");
pub static LXC_IO_BYTES: Def = counter(
    "lxc_io_bytes_total",
    &["id", "device", "direction"],
    "Block I/O bytes of the container by device (major:minor) and direction (read, write)",
);
pub static LXC_IO_OPERATIONS: Def = counter(
    "lxc_io_operations_total",
    &["id", "device", "direction"],
    "Block I/O operations of the container by device (major:minor) and direction (read, write)",
);
pub static LXC_PRESSURE_SECONDS: Def = counter(
    "lxc_pressure_stalled_seconds_total",
    &["id", "resource", "kind"],
    "Time the container stalled on cpu, memory or io (some, full; PSI total): rate() is the stall share",
);
pub static LXC_PROCESSES: Def = gauge("lxc_processes", ID, "Processes in the container (pids.current)");
pub static LXC_OOM_KILLS: Def =
    counter("lxc_oom_kills_total", ID, "Processes of the container killed by the OOM killer");
pub static LXC_NIC_RX_BYTES: Def = counter(
    "lxc_nic_rx_bytes_total",
    &["id", "ifname", "net"],
    "Bytes the container's veth received on the host side (what the container sent)",
);
pub static LXC_NIC_TX_BYTES: Def = counter(
    "lxc_nic_tx_bytes_total",
    &["id", "ifname", "net"],
    "Bytes the container's veth sent on the host side (what the container received)",
);
pub static LXC_NIC_RX_PACKETS: Def = counter(
    "lxc_nic_rx_packets_total",
    &["id", "ifname", "net"],
    "Packets the container's veth received on the host side",
);
pub static LXC_NIC_TX_PACKETS: Def =
    counter("lxc_nic_tx_packets_total", &["id", "ifname", "net"], "Packets the container's veth sent on the host side");
pub static LXC_NIC_RX_DROPPED: Def = counter(
    "lxc_nic_rx_dropped_total",
    &["id", "ifname", "net"],
    "Packets the container's veth dropped on receive (host side)",
);
pub static LXC_NIC_TX_DROPPED: Def = counter(
    "lxc_nic_tx_dropped_total",
    &["id", "ifname", "net"],
    "Packets the container's veth dropped on send (host side)",
);
pub static LXC_FS_SIZE_BYTES: Def = gauge(
    "lxc_fs_size_bytes",
    &["id", "disk", "mountpoint", "volume"],
    "Size of the container's root file system and mount points (statvfs in the container)",
);
pub static LXC_FS_USED_BYTES: Def = gauge(
    "lxc_fs_used_bytes",
    &["id", "disk", "mountpoint", "volume"],
    "Space used on the container's root file system and mount points (statvfs in the container)",
);
pub static LXC_FS_FREE_BYTES: Def = gauge(
    "lxc_fs_free_bytes",
    &["id", "disk", "mountpoint", "volume"],
    "Space available to the container's users on its file systems (statvfs f_bavail)",
);
/// The veth counter families, in the order of `collector::lxc`'s counter files.
pub static LXC_NIC: &[&Def] = &[
    &LXC_NIC_RX_BYTES,
    &LXC_NIC_TX_BYTES,
    &LXC_NIC_RX_PACKETS,
    &LXC_NIC_TX_PACKETS,
    &LXC_NIC_RX_DROPPED,
    &LXC_NIC_TX_DROPPED,
];
pub static LXC_FAMILIES: &[&Def] = &[
    &LXC_INFO,
    &LXC_CPU_SECONDS,
    &LXC_MEMORY_BYTES,
    &LXC_MEMORY_USED_BYTES,
    &LXC_SWAP_BYTES,
    &LXC_MEMORY_LIMIT_BYTES,
    &LXC_SWAP_LIMIT_BYTES,
    &LXC_CPU_LIMIT_CORES,
    &LXC_IO_BYTES,
    &LXC_IO_OPERATIONS,
    &LXC_PRESSURE_SECONDS,
    &LXC_PROCESSES,
    &LXC_OOM_KILLS,
    &LXC_FS_SIZE_BYTES,
    &LXC_FS_USED_BYTES,
    &LXC_FS_FREE_BYTES,
];

// ---- prometheus-pve-exporter's families from local data (issue 17; collector::ppe) ----
// Names, labels and meaning as prometheus-pve-exporter's ClusterResourcesCollector and
// StatusCollector emit them from /cluster/resources and /cluster/status: `id` is `qemu/100`,
// `lxc/101`, `node/pve1`, `storage/pve1/local` or `cluster/<name>`.
const PPE_ID: &[&str] = &["id"];
pub static PPE_UP: Def = gauge("up", PPE_ID, "Node/VM/CT-Status is online/running");
pub static PPE_GUEST_INFO: Def = gauge("guest_info", &["id", "node", "name", "type", "template", "tags"], "VM/CT info");
pub static PPE_NODE_INFO: Def = gauge("node_info", &["id", "level", "name", "nodeid"], "Node info");
pub static PPE_CLUSTER_INFO: Def = gauge("cluster_info", &["id", "nodes", "quorate", "version"], "Cluster info");
pub static PPE_CPU_USAGE_RATIO: Def =
    gauge("cpu_usage_ratio", PPE_ID, "CPU utilization (for types 'node', 'qemu' and 'lxc').");
pub static PPE_CPU_USAGE_LIMIT: Def =
    gauge("cpu_usage_limit", PPE_ID, "Number of available CPUs (for types 'node', 'qemu' and 'lxc').");
pub static PPE_MEMORY_USAGE: Def =
    gauge("memory_usage_bytes", PPE_ID, "Used memory in bytes (for types 'node', 'qemu' and 'lxc').");
pub static PPE_MEMORY_SIZE: Def =
    gauge("memory_size_bytes", PPE_ID, "Number of available memory in bytes (for types 'node', 'qemu' and 'lxc').");
pub static PPE_DISK_SIZE: Def = gauge(
    "disk_size_bytes",
    PPE_ID,
    "Storage size in bytes (for type 'storage'), root image size for VMs (for types 'qemu' and 'lxc').",
);
pub static PPE_DISK_USAGE: Def = gauge(
    "disk_usage_bytes",
    PPE_ID,
    "Used disk space in bytes (for type 'storage'), used root image space for VMs (for types 'qemu' and 'lxc').",
);
pub static PPE_DISK_READ: Def = gauge(
    "disk_read_bytes",
    PPE_ID,
    "The amount of bytes the guest read from its block devices since the guest was started. DEPRECATED: Use pve_disk_read_bytes_total instead.",
);
pub static PPE_DISK_WRITE: Def = gauge(
    "disk_write_bytes",
    PPE_ID,
    "The amount of bytes the guest wrote to its block devices since the guest was started. DEPRECATED: Use pve_disk_written_bytes_total instead.",
);
pub static PPE_DISK_READ_TOTAL: Def = counter(
    "disk_read_bytes_total",
    PPE_ID,
    "The amount of bytes the guest read from its block devices since the guest was started.",
);
pub static PPE_DISK_WRITTEN_TOTAL: Def = counter(
    "disk_written_bytes_total",
    PPE_ID,
    "The amount of bytes the guest wrote to its block devices since the guest was started.",
);
pub static PPE_NET_RECEIVE: Def = gauge(
    "network_receive_bytes",
    PPE_ID,
    "The amount of traffic in bytes that was sent to the guest over the network since it was started. DEPRECATED: Use pve_network_receive_bytes_total instead.",
);
pub static PPE_NET_TRANSMIT: Def = gauge(
    "network_transmit_bytes",
    PPE_ID,
    "The amount of traffic in bytes that was sent from the guest over the network since it was started. DEPRECATED: Use pve_network_transmit_bytes_total instead.",
);
pub static PPE_NET_RECEIVE_TOTAL: Def = counter(
    "network_receive_bytes_total",
    PPE_ID,
    "The amount of traffic in bytes that was sent to the guest over the network since it was started.",
);
pub static PPE_NET_TRANSMIT_TOTAL: Def = counter(
    "network_transmit_bytes_total",
    PPE_ID,
    "The amount of traffic in bytes that was sent from the guest over the network since it was started.",
);
pub static PPE_UPTIME: Def =
    gauge("uptime_seconds", PPE_ID, "Uptime of node or virtual guest in seconds (for types 'node', 'qemu' and 'lxc').");
pub static PPE_ONBOOT: Def = gauge("onboot_status", &["id", "node", "type"], "Proxmox vm config onboot value");
pub static PPE_LOCK_STATE: Def =
    gauge("lock_state", &["id", "state"], "The guest's current config lock (for types 'qemu' and 'lxc')");
pub static PPE_HA_STATE: Def = gauge("ha_state", &["id", "state"], "HA service status (for HA managed VMs).");
pub static PPE_STORAGE_INFO: Def =
    gauge("storage_info", &["id", "node", "storage", "plugintype", "content"], "Storage info");
pub static PPE_STORAGE_SHARED: Def =
    gauge("storage_shared", PPE_ID, "Whether or not the storage is shared among cluster nodes");
/// What the `ppe` collector emits; the storage families come from the `storage` collector.
pub static PPE_FAMILIES: &[&Def] = &[
    &PPE_UP,
    &PPE_GUEST_INFO,
    &PPE_NODE_INFO,
    &PPE_CLUSTER_INFO,
    &PPE_CPU_USAGE_RATIO,
    &PPE_CPU_USAGE_LIMIT,
    &PPE_MEMORY_USAGE,
    &PPE_MEMORY_SIZE,
    &PPE_DISK_SIZE,
    &PPE_DISK_USAGE,
    &PPE_DISK_READ,
    &PPE_DISK_WRITE,
    &PPE_DISK_READ_TOTAL,
    &PPE_DISK_WRITTEN_TOTAL,
    &PPE_NET_RECEIVE,
    &PPE_NET_TRANSMIT,
    &PPE_NET_RECEIVE_TOTAL,
    &PPE_NET_TRANSMIT_TOTAL,
    &PPE_UPTIME,
    &PPE_ONBOOT,
    &PPE_LOCK_STATE,
    &PPE_HA_STATE,
];
/// PPE's storage families (the `storage` collector, when `ppe` is on).
pub static PPE_STORAGE: &[&Def] = &[&PPE_STORAGE_INFO, &PPE_STORAGE_SHARED];

pub static EXPORTER: &[&Def] = &[
    &BUILD_INFO,
    &EBPF_ENABLED,
    &EBPF_INFO,
    &EBPF_TRACEPOINT_ATTACHED,
    &EBPF_PROGRAM_ATTACHED,
    &EBPF_PROGRAM_RUNS,
    &EBPF_PROGRAM_RUN_SECONDS,
    &EBPF_MAP_ENTRIES,
    &EBPF_MAP_CAPACITY,
    &EBPF_UNCOUNTED,
    &COLLECTOR_DURATION,
    &COLLECTOR_SUCCESS,
    &COLLECTOR_DATA_AGE,
    &SCRAPE_DURATION,
];

/// Every family, in exposition order (a scrape prints its families in this order, whatever
/// order collectors fill them in).
pub fn all() -> impl Iterator<Item = &'static Def> {
    [
        KVM_PROC,
        KVM_IO,
        KVM_NIC,
        KVM_NIC_STATS,
        KVM_LIBVIRT,
        KVM_GUEST,
        KVM_BALLOON,
        KVM_AGENT,
        GUEST_BACKUP,
        REPLICATION,
        KVM_DISK,
        KVM_EBPF,
        KVM_VCPU,
        KVM_DEBUGFS,
        NODE_STORAGE,
        PVE_NODE_FAMILIES,
        PVE_VM_PRESSURE,
        PVE_HA,
        PVE_PHYSICAL_DISKS,
        GUEST_FAMILIES,
        LXC_FAMILIES,
        LXC_NIC,
        PPE_FAMILIES,
        PPE_STORAGE,
        EXPORTER,
        EXPORTER_KVM_DEBUGFS,
        EXPORTER_PVE,
    ]
    .into_iter()
    .flatten()
    .copied()
}

/// Position of `def` in [`all`]; families not in the catalogue sort last. (By name, which is
/// unique: identity of a `Def` is its name.)
pub fn order(def: &Def) -> usize {
    static RANKS: std::sync::OnceLock<std::collections::HashMap<&'static str, usize>> = std::sync::OnceLock::new();
    let ranks = RANKS.get_or_init(|| all().enumerate().map(|(i, d)| (d.name, i)).collect());
    ranks.get(def.name).copied().unwrap_or(usize::MAX)
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

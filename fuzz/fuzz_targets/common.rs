//! What every fuzz target shares: the parsers' modules and how outside bytes become text.

#[allow(unused_imports)]
pub use pve_exporter::sources::{
    kernel::{cgroup, ebpf, kvm_debugfs, netlink, sysfs, tracefs},
    proc::{events, node, pressure, process},
    pve::{api, calendar, cluster, config, guest_config, ha, replication, storage_cfg, tasks, vzdump},
    qemu::{agent, balloon, hmp, libvirt, qm, qmp, redact},
    storage::{lvm, statvfs, zfs},
};

/// Outside text as the daemon reads it: bytes, lossily decoded where the parser takes text.
#[allow(dead_code)]
pub fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

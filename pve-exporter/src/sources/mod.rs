//! One module per data source.

pub mod bpf_batch;
pub mod command;
pub mod ebpf;
pub mod hmp;
pub mod kvm_debugfs;
pub mod libvirt;
pub mod lvm;
pub mod monitor;
pub mod netlink;
pub mod node;
pub mod pressure;
pub mod proc_events;
pub mod proc_scan;
pub mod procfs;
pub mod pve_api;
pub mod pve_config;
pub mod pve_ha;
pub mod qm;
pub mod qmp;
pub mod redact;
pub mod statvfs;
pub mod storage_cfg;
pub mod sysfs;
pub mod tracefs;
pub mod trust;
pub mod zfs;

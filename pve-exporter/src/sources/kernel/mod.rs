//! The kernel's own interfaces: tracefs, BPF programs and their maps, netlink, sysfs and
//! KVM's debugfs.

pub mod cgroup;
pub mod ebpf;
pub mod kvm_debugfs;
pub mod netlink;
pub mod sysfs;
pub mod tracefs;

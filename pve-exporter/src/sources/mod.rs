//! One module per data source.

pub mod ebpf;
pub mod procfs;
pub mod pve_config;
pub mod tracefs;

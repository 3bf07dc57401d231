//! Data sources, one folder per domain. Each module reads one source: pure parsers from text
//! to types, and thin readers with typed errors. Sources are leaves: they import no collector,
//! no configuration struct (they take plain parameters) and nothing of the scrape; they may use
//! the host plumbing (`host`, `heldfile`, `deadline`) and the public types of another domain.
//! `tests/architecture.rs` holds them to it.
//!
//! - `proc`: /proc (processes, their scan and events, pressure, node files, ownership rules)
//! - `qemu`: QEMU's monitors (QMP, HMP text, `qm monitor`, the monitor cache) and libvirt
//! - `pve`: /etc/pve (guest configs, HA, storage.cfg) and the PVE API
//! - `kernel`: tracefs, BPF programs and maps, netlink, sysfs, KVM debugfs
//! - `storage`: statvfs, zfs and lvm, and the time-limited commands they run

pub mod error;
pub mod kernel;
pub mod proc;
pub mod pve;
pub mod qemu;
pub mod storage;

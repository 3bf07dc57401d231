//! QEMU: its monitors (QMP, HMP text, PVE's `qm monitor`), its guest agent, the per-scrape monitor exchange
//! with its cache, redaction of what the monitors say, and libvirt's view of its domains.

pub mod agent;
pub mod balloon;
pub mod hmp;
pub mod libvirt;
pub mod monitor;
pub mod qm;
pub mod qmp;
pub mod redact;
pub mod wait;

//! Proxmox VE: /etc/pve (guest configs, HA state, storage.cfg, backup jobs), its task list and
//! backups, and the PVE API.

pub mod api;
pub mod calendar;
pub mod cluster;
pub mod config;
pub mod guest_config;
pub mod guests;
pub mod ha;
pub mod replication;
pub mod secret;
pub mod storage_cfg;
pub mod tasks;
pub mod vzdump;

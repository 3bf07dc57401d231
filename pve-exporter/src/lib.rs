//! pve-exporter: per-VM and per-host metrics of Proxmox VE / KVM hosts for Prometheus.
//!
//! Layout: `sources::*` read one data source each (pure parsers plus thin readers), `vm`
//! turns processes into VMs, `collector` turns sources into metric families, `exposition`
//! is the one path to the wire format, `server` is HTTP (`web`: its TLS and basic auth),
//! `service` the systemd side (notify, watchdog, journald log lines, the environment file).

pub mod catalog;
pub mod collector;
pub mod config;
pub mod deadline;
pub mod exposition;
pub mod fasthash;
pub mod heldfile;
pub mod host;
pub mod http_limits;
pub mod metrics;
pub mod server;
pub mod service;
pub mod sources;
pub mod vm;
pub mod web;

//! Fuzz target `pve_api` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz pve_api`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = api::data(data);
    let _ = api::parse_nodes(data);
    let _ = api::parse_node_status(data);
    let _ = api::parse_qemu_pressure(data);
    let _ = api::parse_ha_manager_status(data);
    let _ = api::parse_ha_resources(data);
    let _ = api::parse_disks(data);
});

//! Fuzz target `replication_cfg` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz replication_cfg`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::replication_cfg(data));

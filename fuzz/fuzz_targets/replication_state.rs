//! Fuzz target `replication_state` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz replication_state`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::replication_state(data));

//! Fuzz target `zfs_output` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz zfs_output`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::zfs_output(data));

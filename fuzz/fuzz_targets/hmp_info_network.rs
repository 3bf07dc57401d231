//! Fuzz target `hmp_info_network` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz hmp_info_network`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::hmp_info_network(data));

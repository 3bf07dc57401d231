//! Fuzz target `hmp_info_block` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz hmp_info_block`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::hmp_info_block(data));

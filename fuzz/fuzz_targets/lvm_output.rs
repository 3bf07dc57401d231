//! Fuzz target `lvm_output` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz lvm_output`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::lvm_output(data));

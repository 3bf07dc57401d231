//! Fuzz target `kernel_small_files` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz kernel_small_files`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::kernel_small_files(data));

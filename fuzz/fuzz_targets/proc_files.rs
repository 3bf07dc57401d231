//! Fuzz target `proc_files` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz proc_files`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::proc_files(data));

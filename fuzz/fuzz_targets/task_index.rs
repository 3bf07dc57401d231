//! Fuzz target `task_index` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz task_index`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::task_index(data));

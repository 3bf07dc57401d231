//! Fuzz target `task_log` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz task_log`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::task_log(data));

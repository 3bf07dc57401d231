//! Fuzz target `tracefs_format` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz tracefs_format`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::tracefs_format(data));

//! Fuzz target `ha_status` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz ha_status`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::ha_status(data));

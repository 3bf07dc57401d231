//! Fuzz target `mountinfo` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz mountinfo`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::mountinfo(data));

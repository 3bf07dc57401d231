//! Fuzz target `user_cfg` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz user_cfg`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::user_cfg(data));

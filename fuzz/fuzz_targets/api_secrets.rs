//! Fuzz target `api_secrets` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz api_secrets`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::api_secrets(data));

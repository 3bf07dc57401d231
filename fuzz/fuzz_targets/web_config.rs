//! Fuzz target `web_config` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz web_config`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::web_config(data));

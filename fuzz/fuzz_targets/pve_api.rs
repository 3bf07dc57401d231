//! Fuzz target `pve_api` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz pve_api`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::pve_api(data));

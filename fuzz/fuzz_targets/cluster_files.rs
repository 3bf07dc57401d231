//! Fuzz target `cluster_files` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz cluster_files`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::cluster_files(data));

//! Fuzz target `cgroup_files` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz cgroup_files`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::cgroup_files(data));

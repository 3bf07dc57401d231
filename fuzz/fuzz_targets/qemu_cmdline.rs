//! Fuzz target `qemu_cmdline` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz qemu_cmdline`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::qemu_cmdline(data));

//! Fuzz target `qemu_cmdline` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz qemu_cmdline`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let args = process::parse_cmdline(data);
    let _ = process::parse_qemu_cmdline(&args);
    for a in &args {
        let _ = process::parse_qemu_size(a, 1 << 20);
    }
});

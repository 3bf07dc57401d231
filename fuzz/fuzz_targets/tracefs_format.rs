//! Fuzz target `tracefs_format` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz tracefs_format`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    if let Ok(f) = tracefs::parse_format(&s) {
        let _ = tracefs::print_symbolic_tables(&f.print_fmt, "exit_reason");
        let _ = ebpf::ExitReasons::from_print_fmt(&f.print_fmt, 1);
    }
});

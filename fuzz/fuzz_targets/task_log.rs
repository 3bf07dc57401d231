//! Fuzz target `task_log` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz task_log`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = vzdump::parse_task_log(&s);
    for l in s.lines() {
        let _ = vzdump::parse_archive_name(l);
    }
});

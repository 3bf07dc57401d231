//! Fuzz target `task_index` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz task_index`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = tasks::parse_index(&s);
    let _ = tasks::parse_active(&s);
    for w in s.split_whitespace() {
        let _ = tasks::log_path(w);
    }
});

//! Fuzz target `qmp_replies` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz qmp_replies`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = qmp::blockstats_rows(&s);
    let _ = qmp::run_state(&s);
    let _ = qmp::virtual_sizes(&s);
    let _ = balloon::parse_query_balloon(&s);
    let _ = balloon::parse_guest_stats(&s);
});

//! Fuzz target `proc_events` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz proc_events`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut pids = std::collections::HashMap::new();
    events::parse_events(data, &mut pids);
});

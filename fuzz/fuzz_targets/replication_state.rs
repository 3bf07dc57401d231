//! Fuzz target `replication_state` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz replication_state`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = replication::parse_state(&text(data));
});

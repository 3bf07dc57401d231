//! Fuzz target `hmp_info_blockstats` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz hmp_info_blockstats`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = hmp::parse_info_blockstats(&s);
    let _ = hmp::parse_info_status(&s);
    let _ = balloon::parse_info_balloon(&s);
});

//! Fuzz target `hmp_info_network` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz hmp_info_network`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hmp::parse_info_network(&text(data));
});

//! Fuzz target `hmp_info_block` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz hmp_info_block`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for d in hmp::parse_info_block(&text(data)) {
        let _ = redact::drive_path(&format!("{d:?}"));
    }
});

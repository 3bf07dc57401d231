//! Fuzz target `lvm_output` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz lvm_output`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = lvm::parse_vgs_json(&s);
    let _ = lvm::parse_lvs_json(&s);
});

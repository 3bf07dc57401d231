//! Fuzz target `ha_status` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz ha_status`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = ha::parse_manager_status(&s);
    let _ = ha::parse_lrm_status(&s);
    let _ = ha::parse_resources_cfg(&s);
});

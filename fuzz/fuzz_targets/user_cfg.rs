//! Fuzz target `user_cfg` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz user_cfg`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = config::parse_user_cfg_pools(&s);
    let _ = config::split_list(&s);
});

//! Fuzz target `guest_config` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz guest_config`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let c = guest_config::parse_guest_config(&s);
    for (_, v) in &c.main {
        let _ = guest_config::parse_size(v);
    }
});

//! Fuzz target `netlink_dump` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz netlink_dump`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut dump = netlink::Dump::default();
    let _ = netlink::parse_part(data, 1, 0, &|_| true, &mut dump);
});

//! Fuzz target `zfs_output` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz zfs_output`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = zfs::parse_zfs_get(&s);
    let _ = zfs::parse_zpool_list(&s);
});

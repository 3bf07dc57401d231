//! Fuzz target `cluster_files` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz cluster_files`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = cluster::parse_vmlist(&s);
    let _ = cluster::parse_members(&s);
});

//! Fuzz target `mountinfo` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz mountinfo`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = cgroup::parse_cgroup_mounts(&s);
    let _ = statvfs::parse_mountinfo(&s);
});

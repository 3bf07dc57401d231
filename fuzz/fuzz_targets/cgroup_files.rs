//! Fuzz target `cgroup_files` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz cgroup_files`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = cgroup::parse_flat_keyed(&s);
    let _ = cgroup::parse_limit(&s);
    let _ = cgroup::parse_cpu_max(&s);
    let _ = cgroup::parse_io_stat(&s);
    let _ = cgroup::parse_blkio(&s);
    let _ = pressure::parse_pressure(&s);
});

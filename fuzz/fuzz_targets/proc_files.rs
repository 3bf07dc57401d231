//! Fuzz target `proc_files` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz proc_files`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = process::parse_stat(data, 100);
    let _ = process::parse_status(&s);
    let _ = process::parse_status_uids(&s);
    let _ = process::parse_io(data);
    let _ = process::parse_memtotal(data);
    let _ = process::parse_schedstat(&s);
    let _ = node::parse_loadavg(&s);
    let _ = node::swap_from_meminfo(data);
    let _ = node::memory_from_meminfo(data);
    let _ = node::parse_pages_sharing(&s);
    let _ = node::secure_boot_from_efivar(data);
});

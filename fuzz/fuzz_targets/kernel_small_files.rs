//! Fuzz target `kernel_small_files` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz kernel_small_files`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = kvm_debugfs::parse_vm_dir_name(&s);
    let _ = kvm_debugfs::parse_vcpu_dir_name(&s);
    let _ = kvm_debugfs::parse_stat_value(&s);
    let _ = sysfs::parse_counter(&s);
});

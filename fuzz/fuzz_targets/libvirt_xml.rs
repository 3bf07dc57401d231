//! Fuzz target `libvirt_xml` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz libvirt_xml`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::libvirt_xml(data));

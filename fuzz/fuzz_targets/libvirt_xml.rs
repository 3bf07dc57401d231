//! Fuzz target `libvirt_xml` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz libvirt_xml`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = libvirt::parse_domain_xml(&text(data));
});

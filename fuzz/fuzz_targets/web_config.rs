//! Fuzz target `web_config` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz web_config`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = pve_exporter::web::parse(&s, std::path::Path::new("/etc/pve-exporter"));
    let _ = pve_exporter::web::parse_basic(&s);
});

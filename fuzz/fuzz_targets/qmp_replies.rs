//! Fuzz target `qmp_replies` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz qmp_replies`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::qmp_replies(data));

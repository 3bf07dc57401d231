//! Fuzz target `calendar_event` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz calendar_event`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::calendar_event(data));

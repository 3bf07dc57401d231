//! Fuzz target `qm_transcript` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz qm_transcript`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::qm_transcript(data));

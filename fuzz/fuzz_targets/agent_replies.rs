//! Fuzz target `agent_replies` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz agent_replies`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::agent_replies(data));

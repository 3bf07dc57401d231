//! Fuzz target `qm_transcript` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz qm_transcript`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let cleaned = qm::clean_terminal_output(data);
    for c in ["info block", "info network", "info blockstats", "info status"] {
        let _ = qm::command_output(&cleaned, c);
    }
});

//! Fuzz target `agent_replies` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz agent_replies`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agent::find_sync(data, 7);
    for line in data.split(|b| *b == b'\n') {
        if let Ok(Ok(v)) = agent::parse_reply(line, "fuzz") {
            let _ = agent::parse_fsinfo(&v);
        }
    }
});

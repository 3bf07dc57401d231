//! Fuzz target `calendar_event` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz calendar_event`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(e) = calendar::parse(&text(data)) {
        let _ = e.next_after(1_772_445_900, &calendar::Utc);
    }
});

//! Fuzz target `jobs_cfg` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz jobs_cfg`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (jobs, _) = vzdump::parse_jobs_cfg(&text(data));
    for j in &jobs {
        let _ = j.includes("100", "pve1", Some("pool"));
    }
});

//! Fuzz target `replication_cfg` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz replication_cfg`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let cfg = replication::parse_config(&text(data));
    for j in &cfg.jobs {
        let _ = replication::local_job(j, "pve1", Some("pve1"));
        let _ = replication::next_sync(j, None, Some(true), &calendar::Utc);
    }
});

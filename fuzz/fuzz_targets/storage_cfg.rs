//! Fuzz target `storage_cfg` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz storage_cfg`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for st in storage_cfg::parse_storage_cfg(&text(data)).storages {
        let _ = st.sizing();
        let _ = (st.content(), st.nodes(), st.path());
    }
});

//! Fuzz target `api_secrets` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz api_secrets`.
#![no_main]

mod common;
#[allow(unused_imports)]
use common::*;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let _ = api::Token::parse(&s);
    let _ = api::parse_pem_certs(&s);
});

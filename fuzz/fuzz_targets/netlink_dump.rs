//! Fuzz target `netlink_dump` (issue 20): no input may panic, hang or abort. `cargo xtask fuzz netlink_dump`.
#![no_main]

mod common;
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::netlink_dump(data));

//! cargo-fuzz target: see `quorumd::fuzzing::frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quorumd::fuzzing::frames(data));

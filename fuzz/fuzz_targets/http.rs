//! cargo-fuzz target: see `quorumd::fuzzing::http`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quorumd::fuzzing::http(data));

//! cargo-fuzz target: see `quorumd::fuzzing::cluster_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quorumd::fuzzing::cluster_file(data));

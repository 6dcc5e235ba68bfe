//! cargo-fuzz target: see `quorumd::fuzzing::raft_step`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quorumd::fuzzing::raft_step(data));

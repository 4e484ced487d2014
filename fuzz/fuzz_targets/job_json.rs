//! Fuzz target `job_json`: see `nomadlet::fuzzing::job_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomadlet::fuzzing::job_json(data));

//! Fuzz target `safe_path`: see `nomadlet::fuzzing::safe_path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomadlet::fuzzing::safe_path(data));
